//! Run with: `cargo run --release --example ysumserver -- --apply pool --port 10000`
//!
//! The seed's yieldable server: one `YieldableThread` per connection runs a
//! handler whose CPU step is `offload!(sumn, n)`. The handler never changes;
//! `--apply` picks where that step runs.

use std::io;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ythread::remote::Remote;
use ythread::{Bounded, Exclusive, Inline, Pool, Processes};
use ythread_demo::server::{self, Server};

/// The seed's yieldable sum server.
#[derive(Parser)]
struct Args {
    /// Where the handlers' CPU work runs.
    #[arg(long, value_enum, default_value_t = Strategy::Inline)]
    apply: Strategy,
    /// With `--apply bounded`: how many pieces of work may run at once
    /// [default: the number of cores].
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    limit: Option<usize>,
    /// With `--apply pool`: the number of worker threads [default: the number
    /// of cores].
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    threads: Option<usize>,
    /// With `--apply processes`: the number of worker processes [default:
    /// the number of cores].
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    workers: Option<usize>,
    /// With `--apply processes` or `remote`, in milliseconds: under
    /// `processes`, a call that runs longer fails and its worker is killed
    /// and replaced (the time it waits for a worker does not count); under
    /// `remote`, a call not answered within it, waiting included, fails.
    /// The request gets an error line.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    deadline_ms: u64,
    /// With `--apply processes`: the address space of each worker, in MiB.
    #[arg(long, value_name = "MIB")]
    memory_limit_mib: Option<u64>,
    /// With `--apply remote`: the NATS server the workers (`--example
    /// worker`) listen on.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// With `--apply remote`: the namespace shared with the workers.
    #[arg(long, default_value = ythread::remote::DEFAULT_NAMESPACE)]
    namespace: String,
    /// With `--apply remote`: a file holding the fleet's signing key (at
    /// least 32 random bytes, e.g. `head -c 32 /dev/urandom`), the workers'
    /// too: calls are signed, and only signed replies count.
    #[arg(long, value_name = "PATH")]
    signing_key_file: Option<std::path::PathBuf>,
    /// The port to listen on (127.0.0.1).
    #[arg(long, default_value_t = ythread_demo::DEFAULT_PORT)]
    port: u16,
    #[command(flatten)]
    limits: server::LimitArgs,
}

/// The seed's `cpu_apply` choices.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Strategy {
    /// On the connection's own thread, like plain threads (the seed's default).
    Inline,
    /// Under one lock: one piece of work at a time (`exclusive_apply`).
    Exclusive,
    /// On the connection's own thread, at most `--limit` at once.
    Bounded,
    /// On `--threads` worker threads (the seed's `Pool().apply`).
    Pool,
    /// In `--workers` worker processes: a crash or a runaway request costs
    /// only itself (the seed's `multiprocessing.Pool().apply`).
    Processes,
    /// On remote workers (`--example worker`) through the NATS server
    /// `--nats`: the seed's "send it out to the cloud".
    Remote,
}

fn main() -> ExitCode {
    // With `--apply processes`, the workers are this program started again:
    // this line turns such a process into a worker before anything else.
    ythread::processes::init();
    let args = Args::parse();
    ythread_demo::exit_code("ysumserver", serve(&args))
}

/// Starts the server, then serves until the process is killed.
fn serve(args: &Args) -> io::Result<()> {
    let listener = server::bind((Ipv4Addr::LOCALHOST, args.port))?;
    let limits = args.limits.into();
    let server = match args.apply {
        Strategy::Inline => Server::start_yieldable(listener, limits, Inline)?,
        Strategy::Exclusive => Server::start_yieldable(listener, limits, Exclusive::new())?,
        Strategy::Bounded => Server::start_yieldable(
            listener,
            limits,
            args.limit.map_or_else(Bounded::per_core, Bounded::new),
        )?,
        Strategy::Pool => Server::start_yieldable(
            listener,
            limits,
            args.threads.map_or_else(Pool::default, Pool::new),
        )?,
        Strategy::Processes => {
            let mut builder = Processes::builder();
            if let Some(workers) = args.workers {
                builder = builder.workers(workers);
            }
            builder = builder.deadline(Duration::from_millis(args.deadline_ms));
            if let Some(mib) = args.memory_limit_mib {
                builder = builder.memory_limit(mib << 20);
            }
            Server::start_yieldable(listener, limits, Arc::new(builder.build()?))?
        }
        Strategy::Remote => {
            let mut builder = Remote::builder(&args.nats)
                .namespace(&args.namespace)
                .deadline(Duration::from_millis(args.deadline_ms));
            if let Some(path) = &args.signing_key_file {
                builder = builder.signing_key(std::fs::read(path)?);
            }
            Server::start_yieldable(listener, limits, Arc::new(builder.connect()?))?
        }
    };
    println!(
        "ysumserver (apply {:?}) listening on {}",
        args.apply,
        server.addr()
    );
    // Serve until killed.
    loop {
        std::thread::park();
    }
}
