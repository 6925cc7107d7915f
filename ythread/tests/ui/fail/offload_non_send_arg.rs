use std::rc::Rc;
use ythread::{offload, yieldable};

fn get(x: Rc<u64>) -> u64 {
    *x
}

#[yieldable]
fn handler(n: u64) -> u64 {
    let before = n + 1;
    let value = offload!(get, Rc::new(before));
    value * 2
}

fn main() {}
