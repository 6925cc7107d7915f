#![deny(unused_must_use)]

use ythread::{offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
fn handler(n: u64) -> u64 {
    offload!(sumn, n)
}

fn main() {
    // Calling a handler does not run it: forgetting `.run()` is a mistake.
    handler(3);
}
