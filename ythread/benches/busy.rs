//! How busy a strategy keeps the cores when CPU work outnumbers them: 16
//! handler threads each offload 20 pieces of about 4 ms of work to one shared
//! `Bounded(cores)` or `Pool(cores)` (or `Exclusive`, which should keep one
//! core busy), with no I/O at all. Prints the share of
//! the cores the process kept busy (CPU time / (wall time x cores)), the
//! share the machine sat idle, and the share other processes took (when
//! they run, they fill the gaps this process leaves, and "busy" reads low
//! for both strategies: read the rounds where others took little); and the
//! wall time of `Bounded` over `Pool`'s, run back to back. Linux only.
//!
//! Run with: `cargo bench -p ythread --bench busy`

use std::hint::black_box;
use std::time::Instant;

use ythread::{Apply, Bounded, Exclusive, Pool, YieldableThread, offload, yieldable};

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

/// Idle and total time of the whole machine, in ticks (`/proc/stat`).
fn machine_ticks() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("Linux /proc");
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap())
        .collect();
    // idle + iowait; the total of every field.
    (ticks[3] + ticks[4], ticks.iter().sum())
}

/// One run: the share of the cores this process kept busy, the share the
/// machine sat idle, the share other processes took, and the wall time.
struct Run {
    busy: f64,
    idle: f64,
    others: f64,
    wall: f64,
}

fn run<A: Apply + Clone + Send + 'static>(apply: A, n: u64, cores: usize) -> Run {
    let cpu = process_cpu_seconds();
    let (idle, total) = machine_ticks();
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
    let wall = start.elapsed().as_secs_f64();
    let busy = (process_cpu_seconds() - cpu) / (wall * cores as f64);
    let (idle_after, total_after) = machine_ticks();
    let idle = (idle_after - idle) / (total_after - total);
    Run {
        busy,
        idle,
        others: (1.0 - idle - busy).max(0.0),
        wall,
    }
}

fn main() {
    // The cores the process may use: the limit of `Bounded::per_core()`.
    let cores = Bounded::per_core().limit();
    // Calibrate each piece of work to about 4 ms on this machine.
    let probe = 1_000_000;
    let start = Instant::now();
    black_box(spin(probe));
    let n = (probe as f64 * 4e-3 / start.elapsed().as_secs_f64()) as u64;
    let rounds = std::env::args()
        .skip(1)
        .find_map(|a| a.strip_prefix("--rounds=")?.parse().ok())
        .unwrap_or(3);
    let pct = |x: f64| x * 100.0;
    for round in 1..=rounds {
        let bounded = run(Bounded::new(cores), n, cores);
        let pool = run(Pool::new(cores), n, cores);
        // One at a time: at best one core's worth of work, 1/cores busy.
        let exclusive = run(Exclusive::new(), n, cores);
        println!(
            "round {round}: Exclusive busy {:.0}% of its one core, idle {:.0}%, others {:.0}%",
            pct(exclusive.busy) * cores as f64,
            pct(exclusive.idle),
            pct(exclusive.others),
        );
        println!(
            "round {round}: Bounded({cores}) busy {:.0}% idle {:.0}% others {:.0}% | \
             Pool({cores}) busy {:.0}% idle {:.0}% others {:.0}% | wall Bounded/Pool {:.2}",
            pct(bounded.busy),
            pct(bounded.idle),
            pct(bounded.others),
            pct(pool.busy),
            pct(pool.idle),
            pct(pool.others),
            bounded.wall / pool.wall,
        );
    }
}
