//! What a coroutine stack costs: memory (resident and mapped) per idle
//! handler suspended at an `offload!` point, by stack size. The stack size
//! reserves address space; only the pages a handler touches are resident.
//! Spawn-and-join times by stack size are in the `spawn` bench.
//!
//! Reads `VmRSS` and `VmSize` from `/proc/self/status` (Linux only).
//!
//! Run with: `cargo bench -p ythread --bench stacks`

use std::fs;
use std::hint::black_box;

use ythread::{Generator, GeneratorState, Yieldable, offload, yieldable};

/// A handler that waits at its first `offload!`, holding a small local, as
/// a connection handler waiting for its CPU step does.
#[yieldable]
fn waits(n: u64) -> u64 {
    let buf = black_box([n as u8; 256]);
    offload!(|| u64::from(buf[0]) + 1)
}

/// `VmRSS` and `VmSize` of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmSize:"))
}

fn main() {
    const HANDLERS: usize = 2000;
    println!(
        "{HANDLERS} handlers, each suspended at its first offload! (per handler, KiB)\n\
         {:>12} {:>12} {:>12}",
        "stack size", "resident", "mapped"
    );
    for stack_size in [64 << 10, 256 << 10, 2 << 20, 8 << 20] {
        let (rss_before, size_before) = memory_kib();
        let mut suspended: Vec<Generator<u64>> = (0..HANDLERS)
            .map(|i| waits(i as u64).with_stack_size(stack_size).start())
            .collect();
        for generator in &mut suspended {
            assert!(matches!(generator.resume(), GeneratorState::Yielded(_)));
        }
        let (rss_after, size_after) = memory_kib();
        println!(
            "{:>9} KiB {:>12.1} {:>12.1}",
            stack_size >> 10,
            (rss_after - rss_before) as f64 / HANDLERS as f64,
            (size_after - size_before) as f64 / HANDLERS as f64,
        );
        drop(suspended);
    }
}
