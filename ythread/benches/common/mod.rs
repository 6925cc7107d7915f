//! Handlers shared by the benches that time an `offload!` round trip
//! (`offload.rs`, `pool.rs`, `processes.rs`, `remote.rs`): each offloads the
//! smallest possible work, `add_one`, so that what is timed is the round
//! trip. (Each bench uses a part of this file.)

#![allow(dead_code)]

use std::hint::black_box;

use ythread::{offload, offloadable, yieldable};

/// The work: as little as a function can do. Registered for worker
/// processes (which changes nothing for the other strategies).
#[offloadable]
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
