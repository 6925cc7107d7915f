//! The project's benchmark: the seed's table, reproduced and extended.
//!
//! Starts each server variant (the seed's rows, ours, and the peers users
//! would pick instead) on a free loopback port, drives it with the seed's
//! client in a closed loop and with Poisson arrivals in an open loop, and
//! reports wall time, throughput and latency for each. The terminal shows a
//! verdict table, one line per target (met, missed, or not judged when the
//! machine was busy with other work); `report.md` holds the seed-shaped
//! table and every cell behind the verdicts. Writes `report.md`,
//! `results.csv` and `bench-p99.svg` to the output directory (the build's
//! `target/bench/` unless `--out` says otherwise).
//!
//! This file holds the command line and the order of things. The rest, by
//! file: `variants` lists the servers and `peers` writes the ones users would
//! pick instead; `calibrate` measures `sumn`'s speed; `run` runs every cell,
//! `openloop` drives the open ones and `sys` reads the machine; `model` holds
//! what was measured, which `verdict` checks against the targets, `report`
//! turns into `table`s and `plot` into a chart.
//!
//! ```text
//! cargo run --release --example bench            # quick: about a minute on 2 cores, once built
//! cargo run --release --example bench -- --full  # the whole matrix
//! ```

mod calibrate;
mod model;
mod openloop;
mod peers;
mod plot;
mod remote;
mod report;
mod run;
mod scale;
mod soak;
mod sys;
mod table;
mod variants;
mod verdict;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use ythread_demo::SEED_N;

use crate::calibrate::calibrate;
use crate::model::{Calibration, Results, Workload, ms};
use crate::sys::Machine;
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
    /// Instead of the benchmark: send this many requests through each of
    /// our servers (plain threads and every strategy; `--only` selects),
    /// checking every answer and the memory before and after; writes
    /// soak.md. Exits with 1 on a wrong answer, an error or 5% growth.
    #[arg(long, value_name = "REQUESTS")]
    soak: Option<u64>,
    /// Instead of the benchmark: serve with the one row whose name contains
    /// this (case-insensitive) on 127.0.0.1:`--port` until killed, for
    /// another client (the seed's: `python3 examples/sumclient.py CLIENTS
    /// PORT`) to measure, e.g. `--serve "tokio + spawn_blocking"`.
    #[arg(long, value_name = "ROW")]
    serve: Option<String>,
    /// Instead of the benchmark: hold 1,000, 4,000 and 10,000 connections
    /// open against plain threads, ythread and tokio, each in a fresh
    /// process, and measure resident memory per connection; then the tail
    /// at 1,024 closed-loop clients. Writes scale.md.
    #[arg(long)]
    scale: bool,
    /// (One cell of `--scale`, run in a process of its own.)
    #[arg(long, hide = true, value_name = "ROW", requires = "connections")]
    scale_cell: Option<String>,
    /// (The clients of a `--scale` cell, in a process of their own.)
    #[arg(long, hide = true, value_name = "ADDR", requires = "connections")]
    scale_client: Option<String>,
    /// (With `--scale-cell` and `--scale-client`: how many connections.)
    #[arg(long, hide = true)]
    connections: Option<usize>,
    /// With `--serve`: the port.
    #[arg(long, default_value_t = ythread_demo::DEFAULT_PORT)]
    port: u16,
}

fn main() {
    // The `Processes` row's workers are this program, started again.
    ythread::processes::init();
    let args = Args::parse();
    let began = Instant::now();
    let out = args.out.clone().unwrap_or_else(default_out_dir);
    let machine = Machine::detect();
    let load_before = sys::load_average();
    if let (Some(row), Some(count)) = (&args.scale_cell, args.connections) {
        scale::cell(row, count);
    }
    if let (Some(addr), Some(count)) = (&args.scale_client, args.connections) {
        scale::clients(addr, count);
    }
    if let Some(row) = &args.serve {
        serve(row, args.port);
    }
    if let Some(requests) = args.soak {
        let passed = soak::run(
            &selected_variants(&args.only),
            requests,
            &out,
            &command_line(),
        );
        // (The `Remote` rows' nats-server stops with the fleet.)
        remote::stop();
        std::process::exit(if passed { 0 } else { 1 });
    }

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

    if args.scale {
        let requests = args.requests.unwrap_or(4 * 1024);
        let text = format!(
            "# ythread benchmark: scale\n\n- date: {} (UTC)\n- command: `{}`\n- machine: {} cores, {}, Linux {}\n\n{}",
            sys::today(),
            command_line(),
            machine.cores,
            machine.cpu_model,
            machine.kernel,
            scale::run(
                calibration.n,
                requests,
                (args.client_nice != 0).then_some(args.client_nice)
            )
        );
        println!("{text}");
        let path = out.join("scale.md");
        if let Err(e) = std::fs::create_dir_all(&out).and_then(|()| std::fs::write(&path, &text)) {
            eprintln!("bench: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
        eprintln!("bench: wrote {}", path.display());
        return;
    }
    let workloads = workloads(&args, &calibration);
    let closed_clients = vec![1, 2, 4, 8, 64, 256];
    // The targets judge the tails at 70% and 90%.
    let open_percents = if args.full {
        vec![50, 70, 90]
    } else {
        vec![70, 90]
    };
    if ythread_demo::nats::binary().is_none() {
        eprintln!(
            "bench: no nats-server, so no `Remote` row: {}",
            ythread_demo::nats::HOW_TO_GET
        );
    }
    let variants = selected_variants(&args.only);
    let measured = run::measure(
        &workloads,
        &closed_clients,
        &open_percents,
        &variants,
        (args.client_nice != 0).then_some(args.client_nice),
    );

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
        capacity: measured.capacity,
        cells: measured.cells,
        floors: measured.floors,
        client_nice: measured.client_nice,
        load_before,
        load_after: sys::load_average(),
        elapsed: began.elapsed(),
        warnings: measured.warnings,
    };
    remote::stop();
    let text = report::render(&results);
    println!("{}", report::summary(&results));
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

/// Serves with the row named `row` on `port` until the process is killed;
/// exits with 2 if no single row or no server can be had. A name that is
/// part of several rows' names picks the row of exactly that name.
fn serve(row: &str, port: u16) -> ! {
    let mut rows = selected_variants(&[row.to_owned()]);
    if rows.len() > 1 {
        rows.retain(|v| v.name.eq_ignore_ascii_case(row));
    }
    let [variant] = rows.as_slice() else {
        eprintln!(
            "bench: --serve {row:?} names {} rows; one of: {}",
            rows.len(),
            variants::all()
                .iter()
                .map(|v| v.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::process::exit(2);
    };
    let server = ythread_demo::server::bind(("127.0.0.1", port))
        .and_then(|listener| variant.start_on(listener));
    match server {
        Ok(server) => {
            println!("bench: {} listening on {}", variant.name, server.addr());
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("bench: cannot serve {} on port {port}: {e}", variant.name);
            std::process::exit(2);
        }
    }
}

/// The two workloads: the seed's `n`, where the connection dominates, and
/// the calibrated `n`, where the work does.
fn workloads(args: &Args, calibration: &Calibration) -> Vec<Workload> {
    let work_requests = args.requests.unwrap_or(if args.full { 1000 } else { 200 });
    let repeats = if args.full { 3 } else { 1 };
    vec![
        Workload {
            key: "seed",
            title: format!("the seed's n = {SEED_N}: per-connection overhead dominates"),
            n: SEED_N,
            work: calibration.seed,
            closed_requests: 1000,
            open_requests: if args.full { 2000 } else { 1000 },
            repeats,
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
            repeats,
        },
    ]
}

/// The rows `--only` asks for (all of them if it is empty); exits listing
/// the rows if it matches none.
fn selected_variants(only: &[String]) -> Vec<Variant> {
    let variants: Vec<Variant> = variants::all()
        .into_iter()
        .filter(|v| {
            only.is_empty()
                || only
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
    variants
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
        "bench: the tables behind each verdict are in {}; also wrote {} and {}",
        out.join("report.md").display(),
        out.join("results.csv").display(),
        svg.display()
    );
    Ok(())
}
