use ythread::{try_offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
fn handler(n: u64) -> u64 {
    // The call would run in the handler: the error names `try_offload!`.
    try_offload!(sumn(n)).unwrap_or(0)
}

fn main() {}
