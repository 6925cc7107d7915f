//! Worker processes: the [`Processes`] strategy, and [`init`], the line a
//! program that uses it puts first in `main`.
//!
//! Threads already use every core, so the reason to run work in another
//! process is **isolation**: work that may crash (native code, a decoder fed
//! untrusted input), abort, leak, or run away must not take the server down.
//! Under `Processes`, a worker that dies fails only the call it was running;
//! it is reaped and replaced, and every other call goes on.
//!
//! # When to pick `Processes` over `Pool`
//!
//! | | [`Pool`](crate::Pool) | `Processes` |
//! |---|---|---|
//! | a crash (SIGSEGV, abort, out of memory) in work | kills the server | fails that call; the worker is replaced |
//! | work that never ends | holds a thread forever | killed at the deadline |
//! | what can be offloaded | any `Send` work | `#[offloadable]` functions with serde arguments and results |
//! | round trip, measured on a 2-vCPU Linux VM | ~0.4 µs | 46-48 µs: a raw pipe round trip (two process wake-ups) and 1-4% more |
//!
//! Pick `Pool` for trusted work; pick `Processes` when one bad input must not
//! cost more than its own request, and the work is long enough (the seed's
//! is ~4.5 ms) that tens of microseconds do not matter.
//!
//! # Setting up
//!
//! Nothing to set up: a worker is this same program, started again
//! (`/proc/self/exe`, never `fork` without `exec`: the server is
//! multithreaded) with `YTHREAD_WORKER` set, and it serves calls from the
//! moment it is loaded, before `main` (ythread puts an entry in the
//! binary's initialisers), so nothing of the program's own code runs in a
//! worker.
//!
//! ```no_run
//! use ythread::{Processes, YieldableThread, offload, offloadable, yieldable};
//!
//! #[offloadable]
//! fn sumn(n: u64) -> u64 {
//!     (1..=n).sum()
//! }
//!
//! #[yieldable]
//! fn handle(n: u64) -> u64 {
//!     offload!(sumn, n) // unchanged: the same handler runs under any strategy
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let cpu = std::sync::Arc::new(Processes::new(2)?);
//!     let thread = YieldableThread::new().apply(cpu).spawn(handle(10))?;
//!     assert_eq!(thread.join().unwrap(), 55);
//!     Ok(())
//! }
//! ```
//!
//! A program whose workers need its static initialisers (a C++ library
//! linked in, whose constructors may run after ythread's entry) or a setup
//! of their own (logging) calls [`init`] or [`init_with`] first thing in
//! `main`: its workers then serve there instead, after the initialisers
//! and the setup. Code placed *before* that call runs in every worker too
//! (as code before `if __name__ == '__main__'` does in Python's
//! `multiprocessing`). Only a call from the main thread counts. (Under
//! `#[tokio::main]`, the runtime is built before the body runs: with `init`,
//! each worker would carry an idle runtime. Leave `init` out, or call it in
//! a plain `main` before building the runtime.)
//!
//! Work runs on a worker's main thread, whose stack is a program's main
//! stack (`RLIMIT_STACK`, `ulimit -s`: usually 8 MiB), not a spawned
//! thread's 2 MiB.
//!
//! A worker serving before `main` runs without what std sets up at `main`:
//! `std::env::args()` may be empty there, and the main thread is unnamed.
//! ythread itself ignores `SIGPIPE` in it and reports a stack overflow as
//! std would.
//!
//! # In tests
//!
//! Nothing either: `Processes::builder().build()` inside a `#[test]` starts
//! workers that are the test binary, serving before the test harness starts,
//! so no test ever runs in a worker. (A test that calls `init` does not
//! change that: only `main`'s call does.)
//!
//! # What can cross
//!
//! Functions marked [`#[offloadable]`](crate::offloadable), called as
//! `offload!(f, a, b)` with `f` named by its path. Their parameters are
//! encoded with serde (postcard) straight from the suspended handler's
//! stack, borrowed ones (`&str`, `&[u8]`) included; their result must be an
//! owned serde type. Anything else (a closure, an unmarked function, a
//! function value, arguments that are not `Serialize`) is
//! [`NotPortable`](crate::OffloadErrorKind::NotPortable) at its `offload!`
//! point, naming the function. postcard does not support
//! `deserialize_any`: `#[serde(flatten)]` and untagged enums cannot cross.
//! What a worker or a requester decodes is bounded: in size by
//! [`ProcessesBuilder::max_frame`], in depth by
//! [`ProcessesBuilder::max_depth`] (128 levels by default), and in the number
//! of sequence elements (no more than the input's bytes plus about a
//! million): a value beyond a bound fails its call with
//! [`Protocol`](crate::OffloadErrorKind::Protocol), naming it, and never
//! overflows the decoding side's stack.
//!
//! # Failures
//!
//! Each surfaces at the `offload!` point, as a panic whose payload is an
//! [`OffloadError`](crate::OffloadError) (or, for a panic in the work, the
//! panic's message as a `String`, as a panic in a thread gives), and with
//! `try_offload!` as `Err(OffloadError)`:
//! [`Panicked`](crate::OffloadErrorKind::Panicked) (message kept; the
//! worker lives on), [`WorkerDied`](crate::OffloadErrorKind::WorkerDied)
//! (the signal or exit status named), [`DeadlineExceeded`](crate::OffloadErrorKind::DeadlineExceeded),
//! [`NotPortable`](crate::OffloadErrorKind::NotPortable),
//! [`Protocol`](crate::OffloadErrorKind::Protocol) (what could not cross,
//! on which side, with serde's own message), and
//! [`Unavailable`](crate::OffloadErrorKind::Unavailable) (no worker can be
//! started). A worker's death is named by its signal or exit status and,
//! when it aborted saying why, by that: a stack overflow, a failed
//! allocation. A call whose worker was already dead when it was sent goes
//! to another worker; a call of an
//! [`#[offloadable(idempotent)]`](crate::offloadable) function whose worker
//! died running it runs again ([`ProcessesBuilder::max_retries`]).
//!
//! # Isolation
//!
//! Each worker leads a process group of its own: what its work starts is in
//! it, and the group is killed whole at a deadline, when the worker dies,
//! when the strategy stops, and when the program dies, even by `SIGKILL`
//! (the worker learns it from `PR_SET_PDEATHSIG` and from its channel
//! closing, and kills its group). Only processes the work moves out of the
//! group (`setsid`, a daemon's double fork) escape. What a worker prints
//! reaches the program's stderr, each line labelled with the worker and the
//! call it was running when it printed the line (see [`Processes`]'
//! "Observability").

// The files of this module. The parent side: `builder.rs` (the settings,
// and starting the first worker processes), `checkout.rs` (idle worker
// processes handed to calls, first come, first served), `call.rs` (one
// call: the parent half of the frame exchange, and reruns), `supervise.rs`
// (starting and replacing worker processes, with back-off, and noticing
// idle ones that died; stopping and reaping them), `process.rs` (the
// parent's handle on one worker process: spawn, channel, process group,
// reap) and `output.rs` (what a worker prints, relayed and labelled). The
// child side: `entry.rs` (how a process learns it is a worker, and where it
// starts serving) and `child.rs` (what a worker process runs). Between
// them: `handoff.rs` (what a parent hands a worker: its setting, its
// descriptors, its parent-death signal), `frame.rs` (the framing on the
// pipes), `events.rs` (a call's `tracing` events, sent by the worker and
// emitted again by the parent), `started.rs` (the word that says whether a
// call started), `sigpipe.rs` (writes that a reader's end cannot kill),
// `death.rs` (how a worker process ended, in words) and `meters.rs` (what
// the `metrics` feature reports).

mod builder;
mod call;
mod checkout;
mod child;
pub(crate) mod death;
mod entry;
mod events;
mod frame;
mod handoff;
pub(crate) mod meters;
mod output;
mod process;
mod sigpipe;
mod started;
mod supervise;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

pub use self::builder::ProcessesBuilder;

use self::checkout::Shared;
use self::process::Process;
use self::supervise::{MAX_BACKOFF, Request};

/// Makes this program's workers serve here, in `main`, rather than before
/// `main` (the default, which needs no call): call it first thing in `main`
/// when the work needs the program's static initialisers. See the
/// [module](self).
///
/// In a worker, it serves calls until its parent closes the channel (or
/// dies), then ends the process: it never returns. In the program, it
/// returns at once. Code before it runs in every worker too: with
/// `#[tokio::main]`, the runtime is built before `main`'s first line, so
/// every worker process would carry one (a thread per core) for nothing;
/// call `init` from a plain `fn main` and build the runtime after it.
///
/// ```
/// // The first line of `main`:
/// ythread::processes::init();
/// // then the program
/// ```
pub fn init() {
    entry::init_with(|| {});
}

/// [`init`], after running `setup` in this process, whether it is the
/// program or one of its workers: the place for what workers need too,
/// such as logging (which `init` would otherwise keep from them, since a
/// worker serves from `init` on). Call it first thing in `main`.
///
/// ```no_run
/// // First thing in `main`:
/// ythread::processes::init_with(|| {
///     // Every process: the program, and each worker before it serves. (A
///     // worker's stderr reaches the program's, each line labelled with the
///     // worker and the call it runs.)
///     eprintln!("logging set up in process {}", std::process::id());
/// });
/// // then the program
/// ```
///
/// In a test binary, workers serve before the harness starts, and `setup`
/// does not run in them (nor does anything else of the tests).
pub fn init_with(setup: impl FnOnce()) {
    entry::init_with(setup);
}

/// Runs offloaded work in worker processes: crash isolation for work that
/// may crash, abort, leak or run away. See the [module](self) for when to
/// pick it, how to set a program up, and what can cross.
///
/// Each call goes to one idle worker (first come, first served when all are
/// busy): the driving thread writes the call to the worker's channel and
/// waits for the reply, so a call costs two process wake-ups and no thread
/// hop. A worker runs one call at a time.
///
/// Dropping a `Processes` closes every worker's channel, gives the workers a
/// second to exit, kills those that have not, and reaps them all, with
/// whatever their work left running in their process groups: no zombie is
/// left. Workers also die with the program, even by `SIGKILL`, and take
/// their process groups with them (see the [module](self)'s "Isolation").
///
/// # Observability
///
/// A call is named the same way wherever ythread speaks of it: `app::digest
/// call 7`, 7 being its number among this strategy's calls (from 1; a call
/// run again keeps its number). Each line a worker prints is labelled with
/// the call it was running when it wrote the line, `[ythread worker 1 pid
/// 4242 app::digest call 7] text` (the parent notes where in the worker's
/// output each call starts and ends; lines printed between calls carry the
/// worker's label only), including a last line left without a newline and
/// what `print!` left in std's stdout buffer, flushed as the call ends.
///
/// With the `tracing` feature, the `tracing` events the work emits in the
/// worker (at the most verbose level the program's subscribers want at
/// all: their filters by target do not apply to the work's own targets,
/// which they see as `ythread::worker`)
/// reach this process's subscriber: each is emitted again on the thread
/// that waits for the call, inside its current span (the offload's span,
/// in the handler's), before the call returns, with the target
/// `ythread::worker`, its message followed by its other fields as
/// `key=value` text, and the fields `worker_id`, `worker_pid`,
/// `worker_call` (as above) and `worker_target` (its own target). Spans entered in the worker are not carried. The
/// worker is another process, so this is bounded: an event's message and
/// its fields at 4 KiB each, a call at 1000 events and 1 MiB of them;
/// events past the bounds are dropped, and one `WARN` event says how many
/// once the call is over. Text is escaped as printed lines are; an event
/// the parent cannot read, or past those bounds (a worker of this program
/// stops at them, so one that does not is not one), fails its call with
/// [`Protocol`](crate::OffloadErrorKind::Protocol), and the worker is
/// replaced. (A program whose [`init_with`] setup sets a global subscriber
/// keeps it in its workers: their events go there instead.) The target of
/// these events is ythread's, the work's own is a field: a filter such as
/// `ythread=warn` leaves out the work's `INFO` events from worker processes
/// too.
///
/// With the `metrics` feature: `ythread_worker_restarts_total` (a counter,
/// labelled `reason`: `crashed`, `died_idle`, `deadline`, `out_of_step`,
/// `abandoned`), `ythread_worker_processes` (a gauge: live worker
/// processes), `ythread_worker_processes_busy` (a gauge: those running a
/// call) and `ythread_worker_events_dropped_total` (a counter). Gauges of
/// several `Processes` add up.
///
/// # Example
///
/// ```no_run
/// use ythread::{OffloadErrorKind, Processes, Yieldable, try_offload, offloadable, yieldable};
///
/// #[offloadable]
/// fn parse_untrusted(input: &[u8]) -> u64 {
///     // imagine a C decoder here, which may crash on a bad input
///     input.len() as u64
/// }
///
/// #[yieldable]
/// fn handle(input: Vec<u8>) -> Option<u64> {
///     match try_offload!(parse_untrusted, &input) {
///         Ok(value) => Some(value),
///         Err(error) if error.kind() == OffloadErrorKind::WorkerDied => None,
///         Err(error) => panic!("{error}"),
///     }
/// }
///
/// fn main() -> std::io::Result<()> {
///     let cpu = Processes::builder()
///         .workers(2)
///         .deadline(std::time::Duration::from_secs(1))
///         .memory_limit(1 << 30)
///         .build()?;
///     assert_eq!(handle(b"abc".to_vec()).run_with(&cpu), Some(3));
///     Ok(())
/// }
/// ```
pub struct Processes {
    shared: Arc<Shared>,
    /// Starts workers; joined on drop.
    supervisor: Option<JoinHandle<()>>,
    /// Requests to the supervisor; dropped first on drop, which stops it.
    requests: Option<Sender<Request>>,
    /// How long one call may run before its worker process is killed.
    deadline: Option<Duration>,
    /// The largest frame either way, in bytes.
    max_frame: usize,
    /// The deepest nesting decoded in a result.
    max_depth: usize,
    /// How many more runs an idempotent call whose worker died gets.
    max_retries: u32,
    /// How many calls a worker serves before it is replaced.
    max_calls: Option<u64>,
    /// How many worker processes it keeps.
    workers: usize,
    /// How long a worker process may take to start.
    start_timeout: Duration,
}

impl Processes {
    /// The number of worker processes it keeps.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// How many workers have been replaced after they died or were killed.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// How many calls were run again because the worker running them died
    /// (calls of [`#[offloadable(idempotent)]`](crate::offloadable)
    /// functions; see [`ProcessesBuilder::max_retries`]).
    pub fn reruns(&self) -> u64 {
        self.shared.reruns.load(Ordering::Relaxed)
    }

    /// The process ids of the workers idle right now (for tests and
    /// diagnostics: a busy worker is not listed).
    pub fn idle_pids(&self) -> Vec<u32> {
        self.shared
            .idle
            .lock()
            .processes
            .iter()
            .map(Process::pid)
            .collect()
    }

    /// Shuts the strategy down: it takes no new calls (one made from now on
    /// fails with [`OffloadErrorKind::Unavailable`](crate::OffloadErrorKind::Unavailable)), lets the calls under
    /// way and those waiting for a worker run (a worker that dies meanwhile
    /// is still replaced for them), then stops every worker and reaps it.
    /// Returns once they are all gone. Dropping the strategy does the same
    /// without the wait (no call can be under way then).
    ///
    /// A call that never ends keeps this waiting, unless the strategy has a
    /// [`deadline`](ProcessesBuilder::deadline).
    pub fn shutdown(&self) {
        self.shared.gate.close();
        self.shared.gate.wait_empty();
        self.shared.stopping.store(true, Ordering::Release);
        // The supervisor may be starting a replacement: once it answers a
        // request made now (it takes them in order, and refuses this one),
        // every start it had under way has ended, its worker closed or idle.
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.request(Request::Start { reply: Some(reply) });
        let _ = answer.recv_timeout(
            self.start_timeout
                .saturating_add(MAX_BACKOFF)
                .saturating_add(Duration::from_secs(1)),
        );
        self.stop_idle_processes();
    }
}

impl fmt::Debug for Processes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Processes")
            .field("workers", &self.workers)
            .field("live", &self.shared.live.load(Ordering::Relaxed))
            .field("restarts", &self.restarts())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}
