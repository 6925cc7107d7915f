use ythread::{offload, yield_from, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
fn inner(n: u64) -> u64 {
    offload!(sumn, n)
}

#[yieldable]
fn outer(n: u64) -> String {
    let text: String = yield_from!(inner(n));
    text
}

fn main() {}
