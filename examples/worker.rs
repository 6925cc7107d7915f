//! Run with: `cargo run --release --example worker -- --nats nats://127.0.0.1:4222`
//!
//! The worker of the seed's server under `ysumserver --apply remote`: it
//! serves `ythread_demo::sumn` (every `#[offloadable]` function this program
//! links) on NATS, and runs each call in a local worker process, so that a
//! crash on this machine fails only its call. Start one or more on each
//! machine that should take work; they share the calls (a NATS queue group).

use std::io;

use clap::Parser;
use ythread::Processes;
use ythread::remote::Worker;

/// A remote worker for the seed's server.
#[derive(Parser)]
struct Args {
    /// The NATS server (or any node of a NATS cluster).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The namespace shared with the servers that send the calls.
    #[arg(long, default_value = ythread::remote::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Local worker processes [default: the number of cores].
    #[arg(long)]
    workers: Option<usize>,
    /// A call that runs longer than this, in milliseconds, fails, and its
    /// local worker process is killed and replaced.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    deadline_ms: u64,
}

fn main() -> io::Result<()> {
    // The local worker processes are this program started again: this line
    // turns such a process into a worker process before anything else.
    ythread::processes::init();
    // Keep the `#[offloadable]` functions of the demo library linked in.
    let _ = ythread_demo::sumn;
    let args = Args::parse();
    let mut processes =
        Processes::builder().deadline(std::time::Duration::from_millis(args.deadline_ms));
    if let Some(workers) = args.workers {
        processes = processes.workers(workers);
    }
    let worker = Worker::builder(&args.nats)
        .namespace(&args.namespace)
        .processes(processes)
        .start()?;
    // The URL may carry credentials (`nats://user:password@host`): not
    // printed.
    let server = args
        .nats
        .rsplit_once('@')
        .map_or(args.nats.as_str(), |(_, host)| host);
    println!(
        "worker serving namespace {:?} on {server} with {} local worker processes",
        args.namespace,
        worker.processes().workers()
    );
    if let Err(why) = worker.shared_queue() {
        eprintln!(
            "worker: no shared queue ({why}): a call that finds this worker busy waits here, \
             even while another worker is idle; start nats-server with -js"
        );
    }
    worker.wait()
}
