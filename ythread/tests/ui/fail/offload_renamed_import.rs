use ythread::offload as work;
use ythread::yieldable;

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
fn handler(n: u64) -> u64 {
    work!(sumn, n)
}

fn main() {}
