//! Run with: `cargo run --release --example sumclient -- --port 10000 --clients 4`
//!
//! The seed's client: `--requests` requests in total, split across
//! `--clients` threads, one fresh connection per request. Prints the wall
//! time like the seed, then throughput and latency. Exits with status 1 if
//! any answer is wrong or any request failed.

use std::process::ExitCode;

use clap::Parser;
use ythread_demo::client::closed_loop;

/// The seed's benchmark client.
#[derive(Parser)]
struct Args {
    /// The server's port (on 127.0.0.1).
    #[arg(long, default_value_t = ythread_demo::DEFAULT_PORT)]
    port: u16,
    /// Client threads, each making its share of the requests one after another.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    clients: u32,
    /// Requests in total.
    #[arg(long, default_value_t = 1000)]
    requests: u64,
    /// The `n` each request asks `sumn` of.
    #[arg(long, default_value_t = ythread_demo::SEED_N)]
    n: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let addr = ([127, 0, 0, 1], args.port).into();
    let report = closed_loop(addr, args.n, args.requests, args.clients as usize);
    println!("{:.3}", report.wall.as_secs_f64());
    println!(
        "{} requests, {} clients: {:.0} requests/s",
        report.requests,
        args.clients,
        report.requests_per_sec()
    );
    println!(
        "latency µs: mean {:.0}, p50 {}, p99 {}, max {}",
        report.mean_us(),
        report.p50_us(),
        report.p99_us(),
        report.max_us()
    );
    println!(
        "wrong answers: {}, failed requests: {}, refused connects retried: {}",
        report.wrong, report.errors, report.retries
    );
    if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
