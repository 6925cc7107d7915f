use ythread::{offload, yieldable};

#[yieldable]
fn handler() -> u64 {
    offload!()
}

fn main() {}
