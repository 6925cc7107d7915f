//! The project's benchmark: the seed's table, reproduced and extended.
//!
//! Starts each server variant (the seed's rows, ours, and the peers users
//! would pick instead) on a free loopback port, drives it with the seed's
//! client in a closed loop and with Poisson arrivals in an open loop, and
//! reports wall time, throughput and latency for each, the seed-shaped table
//! first. Writes `report.md`, `results.csv` and `bench-p99.svg` to the output
//! directory (the build's `target/bench/` unless `--out` says otherwise).
//!
//! ```text
//! cargo run --release --example bench            # quick, about two minutes on 2 cores
//! cargo run --release --example bench -- --full  # the whole matrix
//! ```

mod openloop;
mod peers;
mod plot;
mod report;
mod sys;
mod variants;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use ythread_demo::SEED_N;
use ythread_demo::client::{LoadReport, closed_loop};

use crate::openloop::OpenStats;
use crate::sys::{CpuTimes, CpuUse, Machine};
use crate::variants::Variant;

/// The seed's benchmark, reproduced and extended.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Run the whole matrix (1000 requests per closed-loop cell, a 70% open
    /// loop, repeated short cells) instead of the quick one.
    #[arg(long)]
    full: bool,
    /// Where to write report.md, results.csv and bench-p99.svg [default: the
    /// build's target/bench/].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// CPU time of one work-dominated `sumn`, in milliseconds; `n` is
    /// calibrated at start-up to take this long (the seed's 4.35 s for 1000
    /// requests is about 4.5 ms each).
    #[arg(long, default_value_t = 4.5, value_name = "MS")]
    work_ms: f64,
    /// Requests per work-dominated cell [default: 200 quick, 1000 full].
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// Only the rows whose name contains one of these (case-insensitive,
    /// comma-separated), e.g. `--only plain,pool`.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    only: Vec<String>,
    /// Scheduling priority (nice) of the client threads, so that the load
    /// generator is not starved by the server it measures, as it would not
    /// be on a machine of its own; 0 runs them like the servers. Negative
    /// values need root; without it the client runs at normal priority.
    #[arg(long, default_value_t = -10, allow_hyphen_values = true, value_name = "NICE")]
    client_nice: i32,
}

/// The number of cores the process may use: the machine the benchmark
/// measures, and the size of every pool in it.
pub(crate) fn cores() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// `ythread_demo::sumn`, always the same machine code.
///
/// The loop is so tight that its speed depends on where it lands in memory:
/// on this machine one copy ran twice as fast as another, depending only on
/// whether it crossed a 64-byte boundary. Called directly, `sumn` is inlined
/// into each caller and every caller gets its own copy, so the peers, the
/// calibration and the floor would each run their own lottery ticket.
/// Calling through an opaque pointer makes them share one out-of-line copy.
/// (The servers of `ythread_demo::server` call `sumn` themselves; the report
/// checks whether their copies run at the same speed.)
pub(crate) fn sumn(n: u64) -> u64 {
    let shared = std::hint::black_box(ythread_demo::sumn as fn(u64) -> u64);
    shared(n)
}

/// How a cell loads the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// The seed's client: this many threads, each waiting for its answer
    /// before sending the next request.
    Closed(usize),
    /// Poisson arrivals at this percentage of the workload's capacity.
    Open(u32),
}

impl Load {
    pub(crate) fn label(self) -> String {
        match self {
            Load::Closed(c) => format!("C={c}"),
            Load::Open(p) => format!("open {p}%"),
        }
    }
}

/// What the benchmark asks the servers to compute, and how often.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// Short name, used in the CSV.
    pub(crate) key: &'static str,
    pub(crate) title: String,
    pub(crate) n: u64,
    /// CPU time of one `sumn(n)` on an idle core.
    pub(crate) work: Duration,
    pub(crate) closed_requests: u64,
    pub(crate) open_requests: u64,
    /// Runs per cell; the report keeps the median one. Short cells are noisy
    /// on a shared machine.
    pub(crate) repeats: usize,
}

/// One measured cell: a workload, a load, a server.
#[derive(Debug, Clone)]
pub(crate) struct Cell {
    pub(crate) workload: usize,
    pub(crate) load: Load,
    pub(crate) variant: usize,
    pub(crate) report: LoadReport,
    pub(crate) open: Option<OpenStats>,
    pub(crate) cpu: Option<CpuUse>,
    /// Connections dropped because a listen queue was full (machine-wide).
    pub(crate) listen_drops: Option<u64>,
}

/// The start-up measurement of `sumn`'s speed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Calibration {
    /// The work-dominated `n`.
    pub(crate) n: u64,
    /// One `sumn(n)` alone on the machine, at the typical speed.
    pub(crate) single: Duration,
    /// One `sumn(n)` while every core runs one, at the typical speed: more
    /// than `single` if the cores share execution units or a power budget.
    pub(crate) parallel: Duration,
    /// One `sumn(SEED_N)`.
    pub(crate) seed: Duration,
    /// The fastest and slowest speed seen, ns per iteration of `sumn`: how
    /// much the machine's speed drifts.
    pub(crate) ns_per_iteration: (f64, f64),
}

/// The CPU work of a cell alone, no network, no server: `requests` calls
/// of `sumn(n)` split across `threads` threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Floor {
    pub(crate) workload: usize,
    pub(crate) clients: usize,
    pub(crate) wall: Duration,
}

/// Everything the report needs.
#[derive(Debug)]
pub(crate) struct Results {
    pub(crate) full: bool,
    pub(crate) command: String,
    pub(crate) date: String,
    pub(crate) machine: Machine,
    pub(crate) calibration: Calibration,
    pub(crate) workloads: Vec<Workload>,
    pub(crate) closed_clients: Vec<usize>,
    pub(crate) open_percents: Vec<u32>,
    pub(crate) variants: Vec<(&'static str, variants::Family)>,
    /// The arrival rate 100% stands for, per workload, requests/s.
    pub(crate) capacity: Vec<f64>,
    pub(crate) cells: Vec<Cell>,
    /// The measured floor of each closed-loop cell.
    pub(crate) floors: Vec<Floor>,
    /// The client threads' nice value, if it could be set.
    pub(crate) client_nice: Option<i32>,
    pub(crate) load_before: Option<f64>,
    pub(crate) load_after: Option<f64>,
    pub(crate) elapsed: Duration,
    pub(crate) warnings: Vec<String>,
}

impl Results {
    pub(crate) fn cell(&self, workload: usize, load: Load, variant: usize) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.workload == workload && c.load == load && c.variant == variant)
    }

    /// The measured floor of a closed-loop cell with `clients` clients.
    pub(crate) fn floor(&self, workload: usize, clients: usize) -> Option<Duration> {
        self.floors
            .iter()
            .find(|f| f.workload == workload && f.clients == clients)
            .map(|f| f.wall)
    }

    pub(crate) fn variant(&self, name: &str) -> Option<usize> {
        self.variants.iter().position(|&(n, _)| n == name)
    }

    pub(crate) fn loads(&self) -> Vec<Load> {
        self.closed_clients
            .iter()
            .map(|&c| Load::Closed(c))
            .chain(self.open_percents.iter().map(|&p| Load::Open(p)))
            .collect()
    }
}

fn main() {
    let args = Args::parse();
    let began = Instant::now();
    let out = args.out.clone().unwrap_or_else(default_out_dir);
    let machine = Machine::detect();
    let load_before = sys::load_average();

    eprintln!(
        "bench: {} mode, {} cores, calibrating sumn to {} ms...",
        if args.full { "full" } else { "quick" },
        machine.cores,
        args.work_ms
    );
    let calibration = calibrate(Duration::from_secs_f64(args.work_ms / 1000.0));
    eprintln!(
        "bench: n = {} takes {:.2} ms alone, {:.2} ms with every core busy ({:.2} to {:.2} ns per iteration)",
        calibration.n,
        ms(calibration.single),
        ms(calibration.parallel),
        calibration.ns_per_iteration.0,
        calibration.ns_per_iteration.1,
    );

    let work_requests = args.requests.unwrap_or(if args.full { 1000 } else { 200 });
    let workloads = vec![
        Workload {
            key: "seed",
            title: format!("the seed's n = {SEED_N}: per-connection overhead dominates"),
            n: SEED_N,
            work: calibration.seed,
            closed_requests: 1000,
            open_requests: if args.full { 2000 } else { 1000 },
            repeats: if args.full { 3 } else { 1 },
        },
        Workload {
            key: "work",
            title: format!(
                "work-dominated n = {}: one sumn takes {:.2} ms",
                calibration.n,
                ms(calibration.single)
            ),
            n: calibration.n,
            work: calibration.single,
            closed_requests: work_requests,
            open_requests: work_requests,
            repeats: if args.full { 3 } else { 1 },
        },
    ];
    let closed_clients = vec![1, 2, 4, 8, 64, 256];
    let open_percents = if args.full {
        vec![50, 70, 90]
    } else {
        vec![50, 90]
    };

    let variants: Vec<Variant> = variants::all()
        .into_iter()
        .filter(|v| {
            args.only.is_empty()
                || args
                    .only
                    .iter()
                    .any(|o| v.name.to_lowercase().contains(&o.to_lowercase()))
        })
        .collect();
    if variants.is_empty() {
        eprintln!("bench: --only matches no row; rows are:");
        for v in variants::all() {
            eprintln!("  {}", v.name);
        }
        std::process::exit(2);
    }

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
        variants: &variants,
        progress: &progress,
        cells: Vec::new(),
        floors: Vec::new(),
        warnings: Vec::new(),
        client_nice: (args.client_nice != 0).then_some(args.client_nice),
    };
    let mut capacity = Vec::new();
    for (w, workload) in workloads.iter().enumerate() {
        for &clients in &closed_clients {
            bench.cell(w, workload, Load::Closed(clients), |addr| {
                (
                    closed_loop(addr, workload.n, workload.closed_requests, clients),
                    None,
                )
            });
        }
        // 100% is what the seed's plain threaded server sustains: the
        // median of its closed-loop throughputs from 2 to 64 clients (one
        // client leaves a core idle; 256 overflow the listen queue). One
        // cell alone is too noisy on a shared machine. Every server gets the
        // same arrivals, so one that cannot sustain what plain threads can
        // shows it.
        let plain = variants.iter().position(|v| v.name == variants::PLAIN);
        let mut rates: Vec<f64> = bench
            .cells
            .iter()
            .filter(|c| c.workload == w && (plain.is_none() || Some(c.variant) == plain))
            .filter(|c| matches!(c.load, Load::Closed(2..=64)))
            .map(|c| c.report.requests_per_sec())
            .collect();
        rates.sort_by(f64::total_cmp);
        let rate = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
        if rate <= 0.0 {
            bench.warn(format!(
                "{}: no capacity measured; no open loop",
                workload.key
            ));
            capacity.push(0.0);
            continue;
        }
        capacity.push(rate);
        for &percent in &open_percents {
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

    let results = Results {
        full: args.full,
        command: command_line(),
        date: sys::today(),
        machine,
        calibration,
        workloads,
        closed_clients,
        open_percents,
        variants: variants.iter().map(|v| (v.name, v.family)).collect(),
        capacity,
        cells: bench.cells,
        floors: bench.floors,
        client_nice: bench.client_nice,
        load_before,
        load_after: sys::load_average(),
        elapsed: began.elapsed(),
        warnings: bench.warnings,
    };
    let text = report::render(&results);
    println!("{text}");
    if let Err(e) = write_outputs(&out, &results, &text) {
        eprintln!("bench: cannot write to {}: {e}", out.display());
        std::process::exit(1);
    }
    let wrong: u64 = results
        .cells
        .iter()
        .map(|c| c.report.wrong + c.report.errors)
        .sum();
    if wrong > 0 {
        eprintln!("bench: {wrong} requests were answered wrongly or not at all");
        std::process::exit(1);
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
        mut drive: impl FnMut(std::net::SocketAddr) -> (LoadReport, Option<OpenStats>) + Send,
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

    fn run(
        &mut self,
        w: usize,
        workload: &Workload,
        load: Load,
        v: usize,
        variant: &Variant,
        drive: &mut (impl FnMut(std::net::SocketAddr) -> (LoadReport, Option<OpenStats>) + Send),
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

    fn warn(&mut self, warning: String) {
        self.progress.println(format!("warning: {warning}"));
        self.warnings.push(warning);
    }
}

/// Finds `n` such that `sumn(n)` takes `target` of CPU time, and how long
/// it takes alone and with every core busy.
///
/// `sumn` costs the same per iteration whatever `n`, so its speed is
/// measured on short chunks (a fraction of a millisecond): the best chunk of
/// a short window is one nobody preempted. The speed of a virtual CPU also
/// drifts with what the host runs beside it, so windows are spread over
/// about half a second and the median window is the typical speed.
fn calibrate(target: Duration) -> Calibration {
    const CHUNK: u64 = 200_000;
    let window = || {
        (0..20)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(sumn(std::hint::black_box(CHUNK)));
                start.elapsed().as_secs_f64() / CHUNK as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    let windows = || -> Vec<f64> {
        (0..15)
            .map(|_| {
                let w = window();
                thread::sleep(Duration::from_millis(25));
                w
            })
            .collect()
    };
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let alone = windows();
    let busy: Vec<f64> = thread::scope(|s| {
        let threads: Vec<_> = (0..cores()).map(|_| s.spawn(windows)).collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("a calibration thread panicked"))
            .collect()
    });
    let range = alone
        .iter()
        .chain(&busy)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    let (alone, busy) = (median(alone), median(busy));
    let n = (target.as_secs_f64() / alone).clamp(1e3, 1e12) as u64;
    let cost = |n: u64, per: f64| Duration::from_secs_f64(n as f64 * per);
    Calibration {
        n,
        single: cost(n, alone),
        parallel: cost(n, busy),
        seed: cost(SEED_N, alone),
        ns_per_iteration: (range.0 * 1e9, range.1 * 1e9),
    }
}

/// The floor of a closed-loop cell, measured: the cell's CPU work alone,
/// `requests` calls of `sumn(n)` split across `threads` threads, no network.
fn cpu_only(n: u64, requests: u64, threads: usize) -> Duration {
    let expected = ythread_demo::expected_sum(n);
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

/// `target/bench` of the build that produced this binary: the example runs
/// from `<target>/<profile>/examples/`.
fn default_out_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let examples = exe.parent()?;
            (examples.file_name()? == "examples")
                .then(|| examples.parent()?.parent().map(|t| t.join("bench")))
                .flatten()
        })
        .unwrap_or_else(|| PathBuf::from("target/bench"))
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        "cargo run --release --example bench".into()
    } else {
        format!("cargo run --release --example bench -- {}", args.join(" "))
    }
}

fn write_outputs(out: &Path, results: &Results, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("report.md"), text)?;
    std::fs::write(out.join("results.csv"), report::csv(results))?;
    let svg = out.join("bench-p99.svg");
    plot::draw(results, &svg).map_err(std::io::Error::other)?;
    eprintln!(
        "bench: wrote {}, {} and {}",
        out.join("report.md").display(),
        out.join("results.csv").display(),
        svg.display()
    );
    Ok(())
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
