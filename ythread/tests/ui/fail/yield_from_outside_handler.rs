use ythread::{offload, yield_from, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
fn inner(n: u64) -> u64 {
    offload!(sumn, n)
}

fn outer(n: u64) -> u64 {
    yield_from!(inner(n))
}

fn main() {
    let _ = outer(3);
}
