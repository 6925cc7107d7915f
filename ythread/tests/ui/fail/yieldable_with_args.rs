use ythread::{Yieldable, offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

// The only error is the argument: the function still expands, so its
// `offload!` and its caller's `.run()` raise nothing more.
#[yieldable(pool = 4)]
fn handler(n: u64) -> u64 {
    offload!(sumn, n)
}

fn main() {
    assert_eq!(handler(3).run(), 6);
}
