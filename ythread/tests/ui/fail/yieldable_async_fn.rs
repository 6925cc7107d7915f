use ythread::{offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

// One error, on `async`: the `offload!` in the body adds none.
#[yieldable]
async fn handler(n: u64) -> u64 {
    offload!(sumn, n) + 1
}

fn main() {}
