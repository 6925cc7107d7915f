use ythread::{offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
const fn handler(n: u64) -> u64 {
    offload!(sumn, n)
}

fn main() {}
