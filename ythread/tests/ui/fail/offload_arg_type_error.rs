use ythread::{offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
fn handler() -> u64 {
    offload!(sumn, "x")
}

fn main() {}
