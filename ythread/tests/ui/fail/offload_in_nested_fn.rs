use ythread::{offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
fn handler(n: u64) -> u64 {
    // A nested item is not part of the running handler.
    fn helper(n: u64) -> u64 {
        offload!(sumn, n)
    }
    helper(n)
}

fn main() {
    let _ = handler(3);
}
