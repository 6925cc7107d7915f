//! `--soak N`: N requests through each server of ours (the plain one and
//! every ythread strategy; not the peers), checking every answer, and the
//! process's resident memory after a warm-up and at the end: a leak per
//! request, or a queue that grows, shows as growth.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use ythread_demo::SEED_N;
use ythread_demo::client::closed_loop;

use crate::variants::{Family, Variant};

/// Requests that warm a server up (thread stacks, the allocator's arenas,
/// the workers' and NATS client's buffers) before the first memory reading,
/// in two rounds. With 20,000, the `Remote` rows still grew by about 9% in
/// the first quarter of a million requests, then stayed level (quarters
/// within 4% of each other, up and down).
const WARM_UP: u64 = 100_000;

/// Client threads: enough to keep both cores busy and every strategy's
/// queue non-empty.
const CLIENTS: usize = 16;

/// One server's soak.
struct Soak {
    name: &'static str,
    requests: u64,
    wrong: u64,
    errors: u64,
    /// After the warm-up.
    before: Memory,
    /// After each quarter of the requests: a leak grows from one to the
    /// next, a one-time step does not.
    quarters: Vec<Memory>,
    seconds: f64,
}

/// One reading of this process's memory, in KiB.
#[derive(Clone, Copy)]
struct Memory {
    /// Resident, after the allocator gave its free pages back.
    rss: u64,
    /// Handed out by the allocator and not freed.
    heap: u64,
}

impl Memory {
    /// Once the last connections' threads have ended (the clients have
    /// their answers before the server's threads are gone).
    fn settled() -> Memory {
        std::thread::sleep(std::time::Duration::from_millis(500));
        Memory {
            rss: trimmed_rss_kib(),
            heap: heap_in_use_kib(),
        }
    }
}

impl Soak {
    /// Resident memory at the end against after the warm-up, in percent.
    fn growth(&self) -> f64 {
        let after = self.quarters.last().map_or(0, |m| m.rss);
        (after as f64 / self.before.rss.max(1) as f64 - 1.0) * 100.0
    }

    fn passed(&self) -> bool {
        self.wrong == 0 && self.errors == 0 && self.growth() < 5.0
    }
}

/// Runs the soak on `variants` and writes `soak.md` in `out`; returns
/// whether every answer was right, none failed and no server grew by 5%.
///
/// # Panics
///
/// If a server cannot start, or the report cannot be written.
pub(crate) fn run(variants: &[Variant], requests: u64, out: &Path, command: &str) -> bool {
    let mut soaks = Vec::new();
    for variant in variants.iter().filter(|v| v.family != Family::Peer) {
        let server = variant
            .start()
            .unwrap_or_else(|error| panic!("{}: {error}", variant.name));
        let addr = server.addr();
        // Two rounds: the second generation of client and connection
        // threads still grew the process by about 2 MiB once (glibc's cache
        // of thread stacks and its arenas), the third and later did not.
        let mut report = closed_loop(addr, SEED_N, WARM_UP / 2, CLIENTS);
        report.merge(&closed_loop(addr, SEED_N, WARM_UP / 2, CLIENTS));
        let warm_up = report.requests;
        let before = Memory::settled();
        let began = Instant::now();
        let mut quarters = Vec::new();
        for quarter in 0..4 {
            // The last quarter takes what division left over.
            let share = requests / 4 + if quarter == 3 { requests % 4 } else { 0 };
            report.merge(&closed_loop(addr, SEED_N, share, CLIENTS));
            quarters.push(Memory::settled());
        }
        server.stop();
        let soak = Soak {
            name: variant.name,
            requests: report.requests - warm_up,
            wrong: report.wrong,
            errors: report.errors,
            before,
            quarters,
            seconds: began.elapsed().as_secs_f64(),
        };
        eprintln!(
            "soak: {}: {} requests in {:.0} s, {} wrong, {} errors, RSS {} -> {} KiB ({:+.1}%), \
             heap in use {} -> {} KiB",
            soak.name,
            soak.requests,
            soak.seconds,
            soak.wrong,
            soak.errors,
            soak.before.rss,
            listed(&soak.quarters, |m| m.rss),
            soak.growth(),
            soak.before.heap,
            listed(&soak.quarters, |m| m.heap),
        );
        soaks.push(soak);
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# ythread soak\n\n- date: {} (UTC)\n- command: `{command}`\n- {requests} requests \
         per server after {WARM_UP} to warm it up, n = {SEED_N}, {CLIENTS} client threads, \
         one connection per request (every answer checked; the warm-up's too)\n- memory: \
         this process's (servers and clients), after the warm-up and after each quarter: \
         resident (after `malloc_trim`), whose growth must stay under 5%, and the heap in \
         use (glibc's `mallinfo2`), which a leak grows quarter after quarter\n",
        crate::sys::today()
    );
    let _ = writeln!(
        text,
        "| server | requests | wrong | errors | seconds | RSS before (KiB) | after each quarter \
         (KiB) | growth | heap before (KiB) | after each quarter (KiB) |"
    );
    let _ = writeln!(text, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for soak in &soaks {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {:+.1}%{} | {} | {} |",
            soak.name,
            soak.requests,
            soak.wrong,
            soak.errors,
            soak.seconds,
            soak.before.rss,
            listed(&soak.quarters, |m| m.rss),
            soak.growth(),
            if soak.passed() { "" } else { " (!)" },
            soak.before.heap,
            listed(&soak.quarters, |m| m.heap),
        );
    }
    std::fs::create_dir_all(out).expect("cannot create the output directory");
    let path = out.join("soak.md");
    std::fs::write(&path, text).expect("cannot write soak.md");
    eprintln!("soak: wrote {}", path.display());
    let passed = soaks.iter().all(Soak::passed);
    if !passed {
        eprintln!("soak: FAILED (wrong answers, errors, or memory growth of 5% or more)");
    }
    passed
}

/// The readings' `field`s, comma-separated.
fn listed(readings: &[Memory], field: fn(&Memory) -> u64) -> String {
    readings
        .iter()
        .map(|m| field(m).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The resident set once the allocator has given its free pages back.
/// (Without the trim, glibc's per-thread arenas keep freed memory in an
/// amount that swung by up to 1 MiB, 8% of the `Remote` rows' process, from
/// one reading to the next.)
fn trimmed_rss_kib() -> u64 {
    // SAFETY: `malloc_trim` only returns free memory to the system; it has
    // no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
    rss_kib()
}

/// The bytes glibc's allocator has handed out and not had back, in KiB: the
/// heap in use, which a leak grows, unlike the allocator's and the threads'
/// reserves that RSS also counts.
fn heap_in_use_kib() -> u64 {
    // SAFETY: `mallinfo2` only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    ((info.uordblks + info.hblkhd) / 1024) as u64
}

/// This process's resident set, in KiB (`VmRSS` of `/proc/self/status`).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
