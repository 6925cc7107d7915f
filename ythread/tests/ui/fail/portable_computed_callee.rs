use ythread::{Yieldable, offload, offloadable, yieldable};

#[offloadable]
fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[offloadable]
fn twice(n: u64) -> u64 {
    n * 2
}

fn pick(fast: bool) -> fn(u64) -> u64 {
    if fast { twice } else { sumn }
}

// A value computed in the handler, a generic path, and a closure argument:
// none can name one registered function.
#[yieldable(portable)]
fn handler(n: u64) -> u64 {
    offload!(pick(true), n) + offload!(std::convert::identity::<u64>, n) + offload!(apply, n, |x| x)
}

fn apply(n: u64, f: impl Fn(u64) -> u64) -> u64 {
    f(n)
}

fn main() {
    assert_eq!(handler(3).run(), 12);
}
