use ythread::{offload, yieldable};

#[yieldable]
fn handler(n: u64) -> u64 {
    offload!(|x: u64| x + n)
}

fn main() {}
