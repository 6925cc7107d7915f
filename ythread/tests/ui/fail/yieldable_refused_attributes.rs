// Attributes whose meaning a handler cannot keep are refused, each by name,
// in both their plain and their `unsafe(..)` forms.
use ythread::{offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
#[track_caller]
fn located(n: u64) -> u64 {
    offload!(sumn, n)
}

#[yieldable]
#[target_feature(enable = "avx2")]
fn vectorised(n: u64) -> u64 {
    offload!(sumn, n)
}

#[yieldable]
#[unsafe(naked)]
fn naked(n: u64) -> u64 {
    offload!(sumn, n)
}

#[yieldable]
#[unsafe(no_mangle)]
fn exported(n: u64) -> u64 {
    offload!(sumn, n)
}

#[yieldable]
#[unsafe(export_name = "handler")]
#[inline]
#[unsafe(link_section = ".text.handler")]
fn renamed(n: u64) -> u64 {
    offload!(sumn, n)
}

#[track_caller]
#[yieldable]
fn attribute_before_yieldable(n: u64) -> u64 {
    offload!(sumn, n)
}

fn main() {}
