use std::rc::Rc;
use ythread::{offload, yieldable};

fn make(n: u64) -> Rc<u64> {
    Rc::new(n)
}

#[yieldable]
fn handler(n: u64) -> u64 {
    let before = n + 1;
    let shared = offload!(make, before);
    *shared
}

fn main() {}
