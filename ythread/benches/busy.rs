//! How busy a strategy keeps the cores when CPU work outnumbers them: 16
//! handler threads each offload 20 pieces of about 4 ms of work to one shared
//! `Bounded(cores)` or `Pool(cores)`, with no I/O at all. Prints the share of
//! the cores the process kept busy (CPU time / (wall time x cores)); wall
//! times drift too much on a virtual machine to compare directly. Linux only.
//!
//! Run with: `cargo bench -p ythread --bench busy`

use std::hint::black_box;
use std::time::Instant;

use ythread::{Apply, Bounded, Pool, YieldableThread, offload, yieldable};

#[inline(never)]
fn spin(n: u64) -> u64 {
    (0..n).fold(0, |acc, i| acc.wrapping_add(black_box(i)))
}

#[yieldable]
fn handler(n: u64, pieces: u32) -> u64 {
    (0..pieces).map(|_| offload!(spin, n)).sum()
}

/// User plus system CPU time of the whole process, in seconds.
///
/// `examples/bench/sys.rs` (`process_cpu_seconds`) reads the same two fields
/// of `/proc/self/stat`. It stays a copy: that file belongs to the demo
/// package, which ythread's benches do not depend on.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn cores_busy<A: Apply + Clone + Send + 'static>(apply: A, n: u64, cores: usize) -> f64 {
    let cpu = process_cpu_seconds();
    let start = Instant::now();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            YieldableThread::new()
                .apply(apply.clone())
                .spawn(handler(n, 20))
                .unwrap()
        })
        .collect();
    for thread in threads {
        black_box(thread.join().unwrap());
    }
    (process_cpu_seconds() - cpu) / (start.elapsed().as_secs_f64() * cores as f64)
}

fn main() {
    // The cores the process may use: the limit of `Bounded::per_core()`.
    let cores = Bounded::per_core().limit();
    // Calibrate each piece of work to about 4 ms on this machine.
    let probe = 1_000_000;
    let start = Instant::now();
    black_box(spin(probe));
    let n = (probe as f64 * 4e-3 / start.elapsed().as_secs_f64()) as u64;
    for round in 1..=3 {
        let bounded = cores_busy(Bounded::new(cores), n, cores);
        let pool = cores_busy(Pool::new(cores), n, cores);
        println!(
            "round {round}: cores busy with Bounded({cores}) {:.0}%, with Pool({cores}) {:.0}%",
            bounded * 100.0,
            pool * 100.0
        );
    }
}
