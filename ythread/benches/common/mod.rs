//! Handlers shared by the benches that time an `offload!` round trip
//! (`offload.rs`, `pool.rs`): each offloads the smallest possible work,
//! `add_one`, so that what is timed is the round trip.

use std::hint::black_box;

use ythread::{offload, yieldable};

/// The work: as little as a function can do.
pub(crate) fn add_one(x: u64) -> u64 {
    x + 1
}

/// Offloads `add_one` forever: a generator to resume once per iteration.
#[yieldable]
pub(crate) fn offload_forever() {
    let mut x = 0;
    loop {
        x = offload!(add_one, black_box(x));
    }
}

/// Offloads `add_one` `times` times in a row; returns `times`.
#[yieldable]
pub(crate) fn offload_times(times: u64) -> u64 {
    let mut x = 0;
    for _ in 0..times {
        x = offload!(add_one, black_box(x));
    }
    x
}
