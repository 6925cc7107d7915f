use ythread::{offload, yieldable};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
extern "C" fn handler(n: u64) -> u64 {
    offload!(sumn, n)
}

#[yieldable]
extern "system" fn both(n: u64) -> u64 {
    offload!(sumn, n)
}

#[yieldable]
#[track_caller]
const fn with_attribute_and_qualifier(n: u64) -> u64 {
    offload!(sumn, n)
}

fn main() {}
