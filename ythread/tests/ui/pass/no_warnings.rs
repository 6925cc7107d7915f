//! Every form of the macros, under `deny(warnings)`: the expansion must not
//! make the user's code warn (unused imports, needless braces or parens,
//! unused variables, non-snake-case locals, ...).
#![deny(warnings)]

use ythread::{Yieldable, offload, yield_from, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn answer() -> u64 {
    42
}

#[yieldable]
fn inner(n: u64) -> u64 {
    offload!(sumn, n)
}

#[yieldable]
fn outer(n: u64) -> Result<String, std::num::ParseIntError> {
    let parsed: u64 = offload!(str::parse::<u64>, "7")?;
    let zero = offload!(answer) - 42;
    let nested = offload!(add, offload!(sumn, n), parsed);
    let closure = offload!(|| n * 2);
    let moved = offload!(move || n + zero);
    let from = yield_from!(inner(n));
    Ok(format!(
        "{nested} {closure} {moved} {from} {}",
        ythread::offload!(sumn, 1)
    ))
}

struct Service {
    base: u64,
}

impl Service {
    #[yieldable]
    fn handle(&self, n: u64) -> u64 {
        let base = self.base;
        offload!(add, base, n)
    }
}

fn main() {
    assert_eq!(outer(3).run().unwrap(), "13 6 3 6 1");
    assert_eq!(Service { base: 1 }.handle(2).run(), 3);
}
