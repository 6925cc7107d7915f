use ythread::{offload, yieldable};

#[yieldable]
fn handler() -> u64 {
    offload!(|| 1, 2)
}

fn main() {}
