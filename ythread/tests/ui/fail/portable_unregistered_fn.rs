use ythread::{Yieldable, offload, offloadable, yieldable};

#[offloadable]
fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

fn plain(n: u64) -> u64 {
    n + 1
}

// `sumn` is registered, `plain` is not: the error is at `plain`, also in a
// closure the handler calls.
#[yieldable(portable)]
fn handler(xs: Vec<u64>) -> u64 {
    let a = offload!(sumn, 3);
    let b: u64 = xs.iter().map(|x| offload!(plain, *x)).sum();
    a + b
}

fn main() {
    assert_eq!(handler(vec![1]).run(), 8);
}
