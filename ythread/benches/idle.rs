//! How much CPU an idle `Pool` burns: its workers spin briefly after their
//! last job (a wake-up from sleep is slow on virtual machines), then must
//! park. Prints each worker's CPU time over one idle second, read from
//! `/proc/self/task/*/schedstat` (nanoseconds), and the pool's total as a
//! share of one core. Linux only.
//!
//! Run with: `cargo bench -p ythread --bench idle`

use std::fs;
use std::time::Duration;

use ythread::{Pool, Yieldable, offload, yieldable};

/// CPU time in nanoseconds of every thread named `ythread-pool-*`.
fn worker_cpu_ns() -> Vec<(String, u64)> {
    let mut workers = Vec::new();
    for entry in fs::read_dir("/proc/self/task").expect("Linux /proc") {
        let path = entry.unwrap().path();
        let name = fs::read_to_string(path.join("comm")).unwrap_or_default();
        let name = name.trim().to_owned();
        if !name.starts_with("ythread-pool") {
            continue;
        }
        let schedstat = fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let cpu_ns = schedstat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok());
        workers.push((name, cpu_ns.unwrap_or(0)));
    }
    workers.sort();
    workers
}

#[yieldable]
fn tiny_work(times: u32) -> u64 {
    (0..times).map(|i| offload!(|| u64::from(i) * 2)).sum()
}

fn main() {
    let threads = 2;
    let pool = Pool::new(threads);
    // Keep the workers busy, then stop and watch them go to sleep.
    for _ in 0..100 {
        std::hint::black_box(tiny_work(1000).run_with(&pool));
    }
    let before = worker_cpu_ns();
    std::thread::sleep(Duration::from_secs(1));
    let after = worker_cpu_ns();
    assert_eq!(before.len(), threads, "pool workers not found in /proc");
    let mut total = 0;
    for ((name, start), (_, end)) in before.iter().zip(&after) {
        let spent = end - start;
        total += spent;
        println!(
            "{name}: {:>8.1} us of CPU in the idle second",
            spent as f64 / 1e3
        );
    }
    println!(
        "idle pool of {threads}: {:.1} us of CPU over 1 s = {:.4}% of one core (target: under 1%)",
        total as f64 / 1e3,
        total as f64 / 1e9 * 100.0
    );
}
