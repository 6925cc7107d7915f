use ythread::{offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
fn handler(n: u64) -> Box<dyn Fn() -> u64> {
    // The closure would offload after the handler has returned.
    Box::new(move || offload!(sumn, n))
}

fn main() {}
