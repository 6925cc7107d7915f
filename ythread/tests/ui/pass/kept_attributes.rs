// What a handler keeps with the same meaning: the Rust ABI spelled out,
// `unsafe fn` (calling it still needs `unsafe`), hints about the function's
// own calls, and the attributes that describe the item.
#![deny(warnings)]

use ythread::{Inline, Yieldable, offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
extern "Rust" fn rust_abi(n: u64) -> u64 {
    offload!(sumn, n)
}

/// # Safety
///
/// None needed; the qualifier is what is tested.
#[yieldable]
unsafe fn unsafe_handler(n: u64) -> u64 {
    offload!(sumn, n)
}

#[yieldable]
#[inline(always)]
#[cold]
#[must_use]
#[deprecated = "a kept attribute"]
fn hinted(n: u64) -> u64 {
    offload!(sumn, n)
}

#[allow(deprecated)]
fn main() {
    assert_eq!(rust_abi(3).run_with(&Inline), 6);
    // SAFETY: `unsafe_handler` has no precondition.
    assert_eq!(unsafe { unsafe_handler(4) }.run_with(&Inline), 10);
    assert_eq!(hinted(5).run_with(&Inline), 15);
}
