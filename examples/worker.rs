//! Run with: `cargo run --release --example worker -- --nats nats://127.0.0.1:4222`
//!
//! The worker of the seed's server under `ysumserver --apply remote`: it
//! serves `ythread_demo::sumn` (every `#[offloadable]` function this program
//! links) on NATS, and runs each call in a local worker process, so that a
//! crash on this machine fails only its call (or, with `--threads N`, on
//! threads of its own: a faster round trip, no isolation). Start one or more
//! on each machine that should take work; they share the calls (a NATS
//! queue group).

use std::io;
use std::process::ExitCode;
use std::time::Duration;

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
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    workers: Option<usize>,
    /// Run the calls on N threads of this process instead of local worker
    /// processes: no hop to a local process, but a crash in a call takes
    /// this worker down, and a call past the deadline runs on.
    #[arg(long, value_name = "N", conflicts_with = "workers",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    threads: Option<usize>,
    /// A call that runs longer than this, in milliseconds, fails, and its
    /// local worker process is killed and replaced (with --threads: it
    /// fails, and runs on until it returns).
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    deadline_ms: u64,
    /// A file holding the fleet's signing key (at least 32 random bytes,
    /// e.g. `head -c 32 /dev/urandom`), the servers' too: only calls signed
    /// with it run, and replies are signed.
    #[arg(long, value_name = "PATH")]
    signing_key_file: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    // The local worker processes are this program started again: this line
    // turns such a process into a worker process before anything else.
    ythread::processes::init();
    // Keep the `#[offloadable]` functions of the demo library linked in.
    let _ = ythread_demo::sumn;
    let args = Args::parse();
    ythread_demo::exit_code("worker", serve(&args))
}

/// Serves until SIGTERM or SIGINT, then stops taking calls and lets those
/// under way answer (a rolling restart loses no call while another worker is
/// up: calls this one put in the shared queue are left to the others).
fn serve(args: &Args) -> io::Result<()> {
    // Blocked here, so in every thread started from now on (the local
    // worker processes get a clean mask: std resets it before `exec`), and
    // taken below by `sigwait`.
    let stop_signals = StopSignals::block()?;
    let mut processes = Processes::builder();
    if let Some(workers) = args.workers {
        processes = processes.workers(workers);
    }
    let mut worker = Worker::builder(&args.nats)
        .namespace(&args.namespace)
        .processes(processes)
        .deadline(Duration::from_millis(args.deadline_ms));
    if let Some(threads) = args.threads {
        worker = worker.threads(threads);
    }
    if let Some(path) = &args.signing_key_file {
        worker = worker.signing_key(std::fs::read(path)?);
    }
    let worker = worker.start()?;
    // The URL may carry credentials (`nats://user:password@host`): not
    // printed.
    let server = args
        .nats
        .rsplit_once('@')
        .map_or(args.nats.as_str(), |(_, host)| host);
    let runs_on = match (worker.processes(), args.threads) {
        (Some(processes), _) => format!("{} local worker processes", processes.workers()),
        (None, threads) => format!("{} threads", threads.unwrap_or_default()),
    };
    println!(
        "worker serving namespace {:?} on {server} with {runs_on}",
        args.namespace
    );
    if let Err(why) = worker.shared_queue() {
        eprintln!(
            "worker: no shared queue ({why}): a call that finds this worker busy waits here, \
             even while another worker is idle; start nats-server with -js"
        );
    }
    let signal = stop_signals.wait();
    eprintln!(
        "worker: {signal}: stopping; the calls under way have {}s to answer",
        GRACE.as_secs()
    );
    let (forwarded, dequeued) = (worker.forwarded(), worker.dequeued());
    worker.stop(GRACE);
    eprintln!(
        "worker: stopped ({forwarded} calls put in the shared queue, {dequeued} taken from it)"
    );
    Ok(())
}

/// How long the calls under way may take to answer once a stop signal came.
const GRACE: Duration = Duration::from_secs(30);

/// SIGTERM and SIGINT, blocked, to be taken by [`StopSignals::wait`].
struct StopSignals(libc::sigset_t);

impl StopSignals {
    fn block() -> io::Result<StopSignals> {
        // SAFETY: `sigset_t` is plain data, initialised by `sigemptyset`
        // before any other use; the calls get valid pointers to it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
                0 => Ok(StopSignals(set)),
                error => Err(io::Error::from_raw_os_error(error)),
            }
        }
    }

    /// Waits for one of them; returns its name.
    fn wait(&self) -> &'static str {
        let mut signal = 0;
        // SAFETY: `self.0` is an initialised set, `signal` a valid place.
        while unsafe { libc::sigwait(&self.0, &mut signal) } != 0 {}
        if signal == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        }
    }
}
