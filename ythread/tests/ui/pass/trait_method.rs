//! The way out that the error on a bodiless trait method suggests: the trait
//! declares the handler's type, each implementation is `#[yieldable]`.
#![deny(warnings)]

use ythread::{Yieldable, offload, yieldable};

fn double(n: u64) -> u64 {
    n * 2
}

trait Service {
    fn handle(&self, n: u64) -> impl Yieldable<Output = u64>;
}

struct Doubler {
    offset: u64,
}

impl Service for Doubler {
    #[yieldable]
    fn handle(&self, n: u64) -> u64 {
        offload!(double, n) + self.offset
    }
}

fn main() {
    assert_eq!(Doubler { offset: 1 }.handle(20).run(), 41);
}
