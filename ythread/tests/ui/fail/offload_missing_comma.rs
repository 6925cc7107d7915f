use ythread::{offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
fn handler(a: u64) -> u64 {
    offload!(sumn a)
}

fn main() {}
