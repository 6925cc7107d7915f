use ythread::{yield_from, yieldable};

fn plain(n: u64) -> u64 {
    n + 1
}

#[yieldable]
fn handler(n: u64) -> u64 {
    yield_from!(plain(n))
}

fn main() {}
