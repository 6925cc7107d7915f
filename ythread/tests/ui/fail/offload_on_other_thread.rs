use ythread::{offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
fn handler(n: u64) -> u64 {
    // The handler's context belongs to the handler's thread.
    std::thread::scope(|s| s.spawn(|| offload!(sumn, n)).join().unwrap())
}

fn main() {}
