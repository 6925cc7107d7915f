use std::rc::Rc;
use ythread::{offload, yieldable};

#[yieldable]
fn handler(n: u64) -> u64 {
    let shared = Rc::new(n);
    let value = offload!(|| *shared + 1);
    value * 2
}

fn main() {}
