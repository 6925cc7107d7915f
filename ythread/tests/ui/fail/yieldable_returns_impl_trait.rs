use ythread::{offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
fn handler(n: u64) -> impl Iterator<Item = u64> {
    0..offload!(sumn, n)
}

fn main() {}
