//! The runner: every server under every load, each cell as often as its
//! workload repeats, the closed loops' floors, and the capacity the open
//! loops are a share of.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use ythread_demo::client::{LoadReport, closed_loop};
use ythread_demo::{cores, expected_sum, sumn};

use crate::model::{Cell, Floor, Load, Workload};
use crate::openloop::{self, OpenStats};
use crate::sys::{self, CpuTimes};
use crate::variants::{self, Variant};

/// What [`measure`] found.
pub(crate) struct Measured {
    /// The arrival rate 100% stands for, per workload, requests/s; 0 if it
    /// could not be measured (then the workload has no open-loop cells).
    pub(crate) capacity: Vec<f64>,
    pub(crate) cells: Vec<Cell>,
    pub(crate) floors: Vec<Floor>,
    /// The client threads' nice value; `None` if it could not be set.
    pub(crate) client_nice: Option<i32>,
    pub(crate) warnings: Vec<String>,
}

/// Runs every workload against every variant: first the closed loops with
/// `closed_clients` client threads (and the floor of each), then open loops
/// at `open_percents` of the capacity those closed loops showed. Shows its
/// progress on the terminal.
///
/// `client_nice` is the scheduling priority of the client threads; `None`
/// runs them like the servers.
pub(crate) fn measure(
    workloads: &[Workload],
    closed_clients: &[usize],
    open_percents: &[u32],
    variants: &[Variant],
    client_nice: Option<i32>,
) -> Measured {
    // A run per server and load, plus the measured floor of each closed
    // loop; each as often as the workload repeats.
    let runs: u64 = workloads
        .iter()
        .map(|w| {
            let per_round = (closed_clients.len() + open_percents.len()) * variants.len()
                + closed_clients.len();
            (per_round * w.repeats) as u64
        })
        .sum();
    let progress = ProgressBar::new(runs).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid progress template")
            .progress_chars("=> "),
    );
    progress.enable_steady_tick(Duration::from_millis(250));

    let mut bench = Bench {
        variants,
        progress: &progress,
        cells: Vec::new(),
        floors: Vec::new(),
        warnings: Vec::new(),
        client_nice,
    };
    let mut capacity = Vec::new();
    for (w, workload) in workloads.iter().enumerate() {
        for &clients in closed_clients {
            bench.cell(w, workload, Load::Closed(clients), |addr| {
                (
                    closed_loop(addr, workload.n, workload.closed_requests, clients),
                    None,
                )
            });
        }
        let rate = bench.capacity(w);
        capacity.push(rate);
        if rate <= 0.0 {
            bench.warn(format!(
                "{}: no capacity measured; no open loop",
                workload.key
            ));
            continue;
        }
        for &percent in open_percents {
            let offered = rate * f64::from(percent) / 100.0;
            let schedule = openloop::poisson_schedule(
                workload.open_requests,
                offered,
                0x5eed ^ ((w as u64) << 32) ^ u64::from(percent),
            );
            bench.cell(w, workload, Load::Open(percent), |addr| {
                let (report, stats) = openloop::open_loop(addr, workload.n, &schedule, offered);
                (report, Some(stats))
            });
        }
    }
    progress.finish_and_clear();
    Measured {
        capacity,
        cells: bench.cells,
        floors: bench.floors,
        client_nice: bench.client_nice,
        warnings: bench.warnings,
    }
}

/// Runs the cells, keeps the results and reports progress.
struct Bench<'a> {
    variants: &'a [Variant],
    progress: &'a ProgressBar,
    cells: Vec<Cell>,
    floors: Vec<Floor>,
    warnings: Vec<String>,
    /// Nice value for the client threads; `None` once setting it failed.
    client_nice: Option<i32>,
}

impl Bench<'_> {
    /// Runs `drive` against every variant, `workload.repeats` times each,
    /// interleaving the variants so that a slow spell of the machine hits
    /// them all alike; keeps the median run of each.
    fn cell(
        &mut self,
        w: usize,
        workload: &Workload,
        load: Load,
        mut drive: impl FnMut(SocketAddr) -> (LoadReport, Option<OpenStats>) + Send,
    ) {
        let mut runs: Vec<Vec<Cell>> = vec![Vec::new(); self.variants.len()];
        let mut floors = Vec::new();
        for _ in 0..workload.repeats {
            for (v, variant) in self.variants.iter().enumerate() {
                self.progress.set_message(format!(
                    "{} n={} {} {}",
                    workload.key,
                    workload.n,
                    load.label(),
                    variant.name
                ));
                match self.run(w, workload, load, v, variant, &mut drive) {
                    Ok(cell) => runs[v].push(cell),
                    Err(e) => self.warn(format!(
                        "{} {} {}: cannot start the server: {e}",
                        workload.key,
                        load.label(),
                        variant.name
                    )),
                }
                self.progress.inc(1);
            }
            if let Load::Closed(clients) = load {
                self.progress.set_message(format!(
                    "{} n={} {} floor: sumn alone",
                    workload.key,
                    workload.n,
                    load.label()
                ));
                floors.push(cpu_only(
                    workload.n,
                    workload.closed_requests,
                    clients.min(cores()),
                ));
                self.progress.inc(1);
            }
        }
        if let Load::Closed(clients) = load {
            floors.sort();
            if let Some(&wall) = floors.get(floors.len() / 2) {
                self.floors.push(Floor {
                    workload: w,
                    clients,
                    wall,
                });
            }
        }
        for mut repeats in runs {
            // Closed loop: the wall time is the figure; open loop: the wall
            // time is set by the arrivals, the tail is the figure.
            repeats.sort_by_key(|c| match c.load {
                Load::Closed(_) => c.report.wall.as_micros() as u64,
                Load::Open(_) => c.report.p99_us(),
            });
            let median = repeats.len() / 2;
            if let Some(cell) = repeats.into_iter().nth(median) {
                self.cells.push(cell);
            }
        }
    }

    /// One run of one cell: starts the server, warms it up, drives it on a
    /// client thread of its own, measures the CPU use and the listen drops,
    /// stops it.
    fn run(
        &mut self,
        w: usize,
        workload: &Workload,
        load: Load,
        v: usize,
        variant: &Variant,
        drive: &mut (impl FnMut(SocketAddr) -> (LoadReport, Option<OpenStats>) + Send),
    ) -> std::io::Result<Cell> {
        let server = variant.start()?;
        let addr = server.addr();
        // Warm up: lazily started threads (tokio's blocking pool, rayon's
        // global pool) and the first connections should not count.
        let warm = (Duration::from_millis(50).as_secs_f64() / workload.work.as_secs_f64())
            .clamp(2.0 * cores() as f64, 50.0) as u64;
        let warm_up = closed_loop(addr, workload.n, warm, cores());
        if !warm_up.all_ok() {
            self.warn(format!(
                "{} {}: warm-up: {} wrong, {} errors",
                workload.key, variant.name, warm_up.wrong, warm_up.errors
            ));
        }
        let drops_before = sys::listen_drops();
        let before = CpuTimes::now();
        // The client runs on a thread of its own, whose priority its
        // threads inherit; the server's threads descend from this one.
        let nice = self.client_nice;
        let (reniced, (report, open)) = thread::scope(|s| {
            s.spawn(|| {
                let reniced = nice.map(sys::renice_this_thread);
                (reniced, drive(addr))
            })
            .join()
            .expect("the client panicked")
        });
        if let Some(Err(e)) = reniced {
            self.client_nice = None;
            self.warn(format!("the client runs at normal priority: {e}"));
        }
        let cpu = CpuTimes::now()
            .zip(before)
            .map(|(after, before)| after.since(&before, cores()));
        let listen_drops = sys::listen_drops()
            .zip(drops_before)
            .map(|(after, before)| after.saturating_sub(before));
        server.stop();
        if !report.all_ok() {
            self.warn(format!(
                "{} {} {}: {} wrong answers, {} requests failed",
                workload.key,
                load.label(),
                variant.name,
                report.wrong,
                report.errors
            ));
        }
        Ok(Cell {
            workload: w,
            load,
            variant: v,
            report,
            open,
            cpu,
            listen_drops,
        })
    }

    /// The rate 100% of an open loop stands for: what the seed's plain
    /// threaded server sustains, the median of its closed-loop throughputs
    /// in workload `w` from 2 to 64 clients (one client leaves a core idle;
    /// 256 overflow the listen queue). One cell alone is too noisy on a
    /// shared machine. Every server gets the same arrivals, so one that
    /// cannot sustain what plain threads can shows it. Without a plain row,
    /// every row's cells count; 0 if there are none.
    fn capacity(&self, w: usize) -> f64 {
        let plain = self.variants.iter().position(|v| v.name == variants::PLAIN);
        let mut rates: Vec<f64> = self
            .cells
            .iter()
            .filter(|c| c.workload == w && (plain.is_none() || Some(c.variant) == plain))
            .filter(|c| matches!(c.load, Load::Closed(2..=64)))
            .map(|c| c.report.requests_per_sec())
            .collect();
        rates.sort_by(f64::total_cmp);
        rates.get(rates.len() / 2).copied().unwrap_or(0.0)
    }

    fn warn(&mut self, warning: String) {
        self.progress.println(format!("warning: {warning}"));
        self.warnings.push(warning);
    }
}

/// The floor of a closed-loop cell, measured: the cell's CPU work alone,
/// `requests` calls of `sumn(n)` split across `threads` threads, no network.
fn cpu_only(n: u64, requests: u64, threads: usize) -> Duration {
    let expected = expected_sum(n);
    let threads = threads as u64;
    let start = Instant::now();
    thread::scope(|s| {
        for i in 0..threads {
            let share = requests / threads + u64::from(i < requests % threads);
            s.spawn(move || {
                for _ in 0..share {
                    assert_eq!(sumn(n), expected, "sumn({n}) is wrong");
                }
            });
        }
    });
    start.elapsed()
}
