use ythread::{offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
fn handler(n: u64) -> String {
    let text: String = offload!(sumn, n);
    text
}

fn main() {}
