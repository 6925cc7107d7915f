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
//! | round trip, this repository's 2-vCPU VM (BENCHMARKS.md) | ~0.4 µs | 46-48 µs: a raw pipe round trip (two process wake-ups) and 1-4% more |
//!
//! Pick `Pool` for trusted work; pick `Processes` when one bad input must not
//! cost more than its own request, and the work is long enough (the seed's
//! is ~4.5 ms) that tens of microseconds do not matter.
//!
//! # Setting up
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
//!     // First thing in `main`: in a worker process, this serves calls and
//!     // exits; in the program itself, it returns at once.
//!     ythread::processes::init();
//!
//!     let cpu = std::sync::Arc::new(Processes::new(2)?);
//!     let thread = YieldableThread::new().apply(cpu).spawn(handle(10))?;
//!     assert_eq!(thread.join().unwrap(), 55);
//!     Ok(())
//! }
//! ```
//!
//! A worker is this same program, started again (`/proc/self/exe`, never
//! `fork` without `exec`: the server is multithreaded) with `YTHREAD_WORKER`
//! set, so [`init`] turns it into a worker before `main` goes on. Code placed
//! *before* `init()` runs again in every worker (as code before
//! `if __name__ == '__main__'` does in Python's `multiprocessing`): keep it
//! free of side effects. A program that forgets `init()` gets a clear error
//! from [`Processes::new`] instead of copies of itself.
//!
//! # In tests
//!
//! A test binary has no `main` of yours: its harness runs every test in
//! every process. Start workers as the test binary running one ignored
//! test that calls [`init`], and nothing else (this repository's
//! `tests/processes.rs` does):
//!
//! ```no_run
//! # use ythread::{Processes, ProcessesBuilder};
//! #[test]
//! #[ignore = "the entry point of worker processes, not a test"]
//! fn worker_process_entry() {
//!     ythread::processes::init(); // serves, then ends the process
//! }
//!
//! fn workers(n: usize) -> ProcessesBuilder {
//!     Processes::builder().workers(n).args([
//!         "worker_process_entry", "--exact", "--ignored", "--quiet", "--test-threads=1",
//!     ])
//! }
//! # fn main() { let _ = workers(1); }
//! ```
//!
//! A worker that reaches [`ProcessesBuilder::build`] without having called `init`
//! (the harness ran another test first) fails at once instead of starting
//! workers of its own, and the parent's `build` reports that the worker
//! ended before it was ready.
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
//! A function is registered under its module's path and its name: two
//! `#[offloadable]` functions nested in different functions of one module
//! share a name, and neither can cross (the error says so); name them apart.
//!
//! # Failures
//!
//! Each surfaces at the `offload!` point, as a panic whose payload is an
//! [`OffloadError`] (or, for a panic in the work, the
//! panic's message as a `String`, as a panic in a thread gives), and with
//! `try_offload!` as `Err(OffloadError)`:
//! [`Panicked`](crate::OffloadErrorKind::Panicked) (message kept; the
//! worker lives on), [`WorkerDied`](crate::OffloadErrorKind::WorkerDied)
//! (the signal or exit status named), [`DeadlineExceeded`](crate::OffloadErrorKind::DeadlineExceeded),
//! [`NotPortable`](crate::OffloadErrorKind::NotPortable),
//! [`Protocol`](crate::OffloadErrorKind::Protocol) (a frame over
//! [`ProcessesBuilder::max_frame`], an encoding error), and
//! [`Unavailable`](crate::OffloadErrorKind::Unavailable) (no worker can be
//! started).

mod child;
mod frame;
mod process;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use self::process::{Spec, WORKER_ENV, Worker};
use self::frame::{CALL, DONE, PANICKED, REFUSED, ReadError};
use crate::error::OffloadError;
use crate::offloadable::Entry;
use crate::portable::{WireCall, portable_call};
use crate::sync::Mutex;
use crate::sync::gate::Gate;
use crate::{Apply, Job};

/// Turns this process into a worker if a [`Processes`] strategy started it,
/// and does nothing otherwise. Call it first thing in `main`.
///
/// In a worker, it serves calls until its parent closes the channel (or
/// dies), then exits the process: it never returns. Code before it runs in
/// every worker too.
///
/// ```
/// // The first line of `main`:
/// ythread::processes::init();
/// // then the program
/// ```
pub fn init() {
    let Some(setting) = std::env::var_os(WORKER_ENV) else {
        return;
    };
    // Once per process: the channel's descriptors have one owner. (A second
    // caller, say another test of a test binary started as a worker,
    // returns at once; the first serves and ends the process.)
    static SERVING: AtomicBool = AtomicBool::new(false);
    if SERVING.swap(true, Ordering::AcqRel) {
        return;
    }
    let code = child::serve(&setting.to_string_lossy());
    std::process::exit(code);
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
/// second to exit, kills those that have not, and reaps them all: no zombie
/// is left. Workers also die with the program (they are started with
/// `PR_SET_PDEATHSIG`, and exit when their channel closes).
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
///     ythread::processes::init();
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
    deadline: Option<Duration>,
    max_frame: usize,
    workers: usize,
    start_timeout: Duration,
}

/// What the driving threads and the supervisor share.
struct Shared {
    /// Idle workers, and the calls waiting for one.
    idle: Mutex<Idle>,
    /// Workers started and not known dead.
    live: AtomicUsize,
    /// Why the last start failed, while the supervisor has not started one
    /// since.
    start_error: Mutex<Option<String>>,
    /// Workers replaced after they died or were killed.
    restarts: AtomicU64,
    /// Set when the strategy is dropped or shut down (or `build` fails):
    /// the supervisor starts no more workers.
    stopping: AtomicBool,
    /// Closed by `shutdown`, which waits for the calls inside.
    gate: Gate,
}

/// Workers not running a call, and the calls that wait for a worker, first
/// come, first served: a worker coming back goes straight to the call that
/// has waited longest (a newly arrived call cannot take it first, which
/// would leave the longest waits unbounded under load).
#[derive(Default)]
struct Idle {
    workers: Vec<Worker>,
    waiters: VecDeque<Sender<Worker>>,
}

impl Shared {
    /// Takes an idle worker, or joins the queue of calls waiting for one.
    fn take_or_wait(&self) -> Result<Worker, (Sender<Worker>, Receiver<Worker>)> {
        let mut idle = self.idle.lock();
        if idle.waiters.is_empty()
            && let Some(worker) = idle.workers.pop()
        {
            return Ok(worker);
        }
        let (give, take) = crossbeam_channel::bounded(1);
        idle.waiters.push_back(give.clone());
        Err((give, take))
    }

    /// A worker is free: to the call that has waited longest, or idle.
    fn give_back(&self, mut worker: Worker) {
        let mut idle = self.idle.lock();
        while let Some(waiter) = idle.waiters.pop_front() {
            match waiter.try_send(worker) {
                Ok(()) => return,
                // A call that gave up waiting: the next one.
                Err(TrySendError::Full(back) | TrySendError::Disconnected(back)) => worker = back,
            }
        }
        idle.workers.push(worker);
    }

    /// Leaves the queue of waiting calls; returns a worker handed over in
    /// the meantime, if any.
    fn stop_waiting(&self, give: &Sender<Worker>, take: &Receiver<Worker>) -> Option<Worker> {
        let mut idle = self.idle.lock();
        idle.waiters.retain(|waiter| !waiter.same_channel(give));
        take.try_recv().ok()
    }
}

enum Request {
    /// Start a worker (after a back-off while starts keep failing), and
    /// report the outcome if asked.
    Start {
        reply: Option<Sender<Result<(), String>>>,
    },
}

/// Builds a [`Processes`] strategy with settings of its own.
#[derive(Debug, Clone)]
pub struct ProcessesBuilder {
    workers: usize,
    deadline: Option<Duration>,
    memory_limit: Option<u64>,
    max_frame: usize,
    program: Option<PathBuf>,
    args: Vec<OsString>,
    start_timeout: Duration,
}

/// The default maximum frame: 64 MiB.
const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// The smallest maximum frame: replies that explain a failure must fit.
const MIN_MAX_FRAME: usize = 4096;

impl ProcessesBuilder {
    /// The number of worker processes (default: the cores this process may
    /// use).
    ///
    /// # Panics
    ///
    /// Panics if `workers` is zero.
    pub fn workers(mut self, workers: usize) -> Self {
        assert!(workers > 0, "Processes: at least one worker is needed");
        self.workers = workers;
        self
    }

    /// How long one call may run. A worker still running a call at its
    /// deadline is killed (SIGKILL) and replaced, and the call fails with
    /// [`DeadlineExceeded`](crate::OffloadErrorKind::DeadlineExceeded).
    /// Default: none.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The address space each worker may use, in bytes (`RLIMIT_AS`). An
    /// allocation past it fails, and Rust aborts the worker (SIGABRT): the
    /// call fails with [`WorkerDied`](crate::OffloadErrorKind::WorkerDied),
    /// the machine keeps its memory. Default: none. Leave room for the
    /// program itself (its code, its thread stacks): a few hundred MiB at
    /// least.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The largest message, in bytes, that a call's arguments or its result
    /// may take (default 64 MiB; at least 4 KiB). A larger one fails that
    /// call with [`Protocol`](crate::OffloadErrorKind::Protocol) before it is
    /// sent (or, from the worker, before it is read).
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes.max(MIN_MAX_FRAME);
        self
    }

    /// The program to start as a worker (default: this program, through
    /// `/proc/self/exe`). It must call [`init`] first thing in `main` and
    /// register the same `#[offloadable]` functions: calls carry each
    /// function's path and a fingerprint of its signature, and a worker
    /// without them refuses the call.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// Arguments for the worker program (default: none; a worker does not
    /// see the parent's command line).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// How long a worker may take to start (default 10 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Starts the workers and waits until each is ready.
    ///
    /// # Errors
    ///
    /// If a worker cannot be started or does not become ready: the program
    /// cannot be executed, or it does not call [`init`] first in `main` (the
    /// error says so), or it does not start within the start timeout.
    /// Workers already started are stopped.
    pub fn build(self) -> io::Result<Processes> {
        // A worker whose `main` did not call `init()` first reaches this
        // line too: starting workers of its own would start copies of the
        // program without end.
        if std::env::var_os(WORKER_ENV).is_some() {
            return Err(io::Error::other(
                "this process was started as a ythread worker, but its `main` did not call \
                 `ythread::processes::init()` before building a `Processes`: call it first \
                 thing in `main`",
            ));
        }
        let spec = Spec {
            // This program's own name, so that `ps` shows the workers as
            // what they are rather than as `/proc/self/exe`.
            arg0: match self.program {
                None => std::env::args_os().next(),
                Some(_) => None,
            },
            program: self
                .program
                .clone()
                .unwrap_or_else(|| PathBuf::from("/proc/self/exe")),
            args: self.args.clone(),
            memory_limit: self.memory_limit,
            max_frame: self.max_frame,
            start_timeout: self.start_timeout,
        };
        let shared = Arc::new(Shared {
            idle: Mutex::new(Idle::default()),
            live: AtomicUsize::new(0),
            start_error: Mutex::new(None),
            restarts: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            gate: Gate::default(),
        });
        let (requests, incoming) = crossbeam_channel::unbounded();
        let supervisor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("ythread-processes".into())
                .spawn(move || supervise(&spec, &shared, &incoming))?
        };
        let mut processes = Processes {
            shared,
            supervisor: Some(supervisor),
            requests: Some(requests),
            deadline: self.deadline,
            max_frame: self.max_frame,
            workers: self.workers,
            start_timeout: self.start_timeout,
        };
        let (reply, outcomes) = crossbeam_channel::unbounded();
        for _ in 0..self.workers {
            processes.request(Request::Start {
                reply: Some(reply.clone()),
            });
        }
        for _ in 0..self.workers {
            match outcomes.recv() {
                Ok(Ok(())) => {}
                Ok(Err(why)) => {
                    processes.shut_down();
                    return Err(io::Error::other(why));
                }
                Err(_) => {
                    processes.shut_down();
                    return Err(io::Error::other("the supervisor thread stopped"));
                }
            }
        }
        Ok(processes)
    }
}

impl Processes {
    /// Starts `workers` worker processes with the default settings.
    ///
    /// # Errors
    ///
    /// As [`ProcessesBuilder::build`].
    ///
    /// # Panics
    ///
    /// Panics if `workers` is zero.
    pub fn new(workers: usize) -> io::Result<Processes> {
        Processes::builder().workers(workers).build()
    }

    /// A builder, for a deadline, a memory limit, another program, ...
    pub fn builder() -> ProcessesBuilder {
        ProcessesBuilder {
            workers: crate::apply::cores(),
            deadline: None,
            memory_limit: None,
            max_frame: DEFAULT_MAX_FRAME,
            program: None,
            args: Vec::new(),
            start_timeout: Duration::from_secs(10),
        }
    }

    /// The number of worker processes it keeps.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// How many workers have been replaced after they died or were killed.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// The process ids of the workers idle right now (for tests and
    /// diagnostics: a busy worker is not listed).
    pub fn idle_pids(&self) -> Vec<u32> {
        self.shared
            .idle
            .lock()
            .workers
            .iter()
            .map(Worker::pid)
            .collect()
    }

    fn request(&self, request: Request) {
        if let Some(requests) = &self.requests {
            let _ = requests.send(request);
        }
    }

    /// Takes an idle worker, waiting for one (first come, first served) if
    /// all are busy.
    fn checkout(&self) -> Result<Worker, String> {
        let (give, take) = match self.shared.take_or_wait() {
            Ok(worker) => return Ok(worker),
            Err(queued) => queued,
        };
        loop {
            match take.recv_timeout(Duration::from_millis(20)) {
                Ok(worker) => return Ok(worker),
                Err(RecvTimeoutError::Disconnected) => unreachable!("`give` is held here"),
                Err(RecvTimeoutError::Timeout) => {
                    // With no worker alive and the last start failed, waiting
                    // could be forever: fail the call, and let the supervisor
                    // keep trying (with back-off) for later ones.
                    if self.shared.live.load(Ordering::Acquire) == 0
                        && let Some(why) = self.shared.start_error.lock().clone()
                    {
                        return match self.shared.stop_waiting(&give, &take) {
                            Some(worker) => Ok(worker),
                            None => Err(why),
                        };
                    }
                }
            }
        }
    }

    /// Runs one call on `worker`. Returns the worker if it can take more.
    fn call(
        &self,
        mut worker: Worker,
        entry: &'static Entry,
        call: &mut dyn WireCall,
    ) -> Result<Worker, ()> {
        let name = entry.name;
        let mut buf = std::mem::take(&mut worker.buf);
        let number = worker.next_call;
        worker.next_call = number.wrapping_add(1);
        frame::begin(&mut buf, CALL, number);
        let encoded = frame::put(&mut buf, &(name, entry.fingerprint))
            .map_err(|error| OffloadError::protocol(name, error))
            .and_then(|()| call.encode_args(&mut buf));
        if let Err(error) = encoded {
            call.fail(error);
            worker.buf = buf;
            return Ok(worker);
        }
        if let Err(size) = frame::finish(&mut buf, self.max_frame) {
            call.fail(OffloadError::protocol(
                name,
                format_args!(
                    "its arguments take {size} bytes, over the maximum frame of {} bytes \
                     (`ProcessesBuilder::max_frame`)",
                    self.max_frame
                ),
            ));
            worker.buf = buf;
            return Ok(worker);
        }
        // (A deadline too far to add, `Duration::MAX`, is none.)
        let deadline = self.deadline.and_then(|d| Instant::now().checked_add(d));
        if let Err(error) = worker.send(&buf, deadline) {
            if error.kind() == io::ErrorKind::TimedOut {
                worker.kill();
                call.fail(OffloadError::deadline_exceeded(
                    name,
                    self.deadline.unwrap_or_default(),
                ));
                return Err(());
            }
            // The worker is gone: its channel is closed.
            let death = worker.reap(Duration::from_millis(200));
            call.fail(OffloadError::worker_died(name, death));
            return Err(());
        }
        let reply = frame::read(&mut worker.replies, &mut buf, self.max_frame, deadline).and_then(
            |(kind, answered, body)| {
                if answered == number {
                    Ok((kind, body))
                } else {
                    Err(ReadError::Malformed(format!(
                        "a reply to call {answered}, where call {number} was asked"
                    )))
                }
            },
        );
        let keep = match reply {
            Ok((DONE, body)) => {
                if let Err(error) = call.finish(entry, body) {
                    call.fail(error);
                }
                true
            }
            Ok((PANICKED, body)) => {
                let message = frame::parse_panicked(body)
                    .unwrap_or_else(|_| "(the worker sent an unreadable panic message)".into());
                call.fail(OffloadError::remote_panic(message));
                true
            }
            Ok((REFUSED, body)) => {
                match frame::parse_refused(body) {
                    Ok((frame::REFUSED_UNREGISTERED | frame::REFUSED_FINGERPRINT, detail)) => {
                        call.fail(OffloadError::not_portable(name, &detail));
                    }
                    Ok((_, detail)) => call.fail(OffloadError::protocol(name, detail)),
                    Err(error) => call.fail(OffloadError::protocol(
                        name,
                        format_args!("an unreadable refusal: {error}"),
                    )),
                }
                true
            }
            Ok((kind, _)) => {
                worker.kill();
                call.fail(OffloadError::protocol(
                    name,
                    format_args!("the worker sent a frame of unknown kind {kind}"),
                ));
                false
            }
            Err(ReadError::TimedOut) => {
                worker.kill();
                call.fail(OffloadError::deadline_exceeded(
                    name,
                    self.deadline.unwrap_or_default(),
                ));
                false
            }
            Err(ReadError::Closed) => {
                let death = worker.reap(Duration::from_millis(200));
                call.fail(OffloadError::worker_died(name, death));
                false
            }
            Err(error @ (ReadError::Malformed(_) | ReadError::Io(_))) => {
                // Out of step with the worker: it cannot be trusted with
                // another call.
                worker.kill();
                call.fail(OffloadError::protocol(
                    name,
                    format_args!("its reply was malformed: {error}"),
                ));
                false
            }
        };
        worker.buf = buf;
        // A frame buffer grown for one large call is not kept.
        if worker.buf.capacity() > 1 << 20 {
            worker.buf = Vec::new();
        }
        if keep { Ok(worker) } else { Err(()) }
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
        self.stop_idle_workers();
    }

    /// Stops every worker (a second's grace, then killed), then the
    /// supervisor; reaps them all. Workers go first: they die with the
    /// supervisor thread (`PR_SET_PDEATHSIG`), which would leave them no grace.
    fn shut_down(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.stop_idle_workers();
        self.requests = None;
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.join();
        }
        // Any the supervisor started meanwhile.
        self.stop_idle_workers();
    }

    fn stop_idle_workers(&self) {
        let mut workers = std::mem::take(&mut self.shared.idle.lock().workers);
        for worker in &mut workers {
            worker.close();
        }
        let grace_end = Instant::now() + Duration::from_secs(1);
        for mut worker in workers {
            worker.reap(grace_end.saturating_duration_since(Instant::now()));
        }
    }
}

impl Apply for Processes {
    fn apply(&self, mut job: Job<'_>) {
        match portable_call(job.wire()) {
            Ok((call, entry)) => self.run(entry, call),
            Err(error) => job.fail(error),
        }
    }
}

impl Processes {
    /// Runs `call` of the registered function `entry` on a worker.
    pub(crate) fn run(&self, entry: &'static Entry, call: &mut dyn WireCall) {
        let Some(_inside) = self.shared.gate.enter() else {
            call.fail(OffloadError::shut_down("set of worker processes"));
            return;
        };
        let worker = match self.checkout() {
            Ok(worker) => worker,
            Err(why) => {
                call.fail(OffloadError::unavailable(entry.name, why));
                return;
            }
        };
        match self.call(worker, entry, call) {
            Ok(worker) => self.shared.give_back(worker),
            Err(()) => {
                self.shared.live.fetch_sub(1, Ordering::AcqRel);
                self.shared.restarts.fetch_add(1, Ordering::Relaxed);
                self.request(Request::Start { reply: None });
            }
        }
    }
}

/// The supervisor thread: starts workers on request, backing off while they
/// keep failing. It outlives the workers it starts, as `PR_SET_PDEATHSIG`
/// requires.
fn supervise(spec: &Spec, shared: &Shared, requests: &Receiver<Request>) {
    // Starts asked for and not done yet.
    let mut queue = VecDeque::new();
    // Consecutive starts that failed. A program whose workers cannot start
    // must not turn into a fork loop. (A worker killed by the call it runs
    // is that call's failure: its replacement starts at once, so that one
    // bad input costs no more than its own request.)
    let mut failures: u32 = 0;
    loop {
        if queue.is_empty() {
            match requests.recv() {
                Ok(request) => queue.push_back(request),
                Err(_) => return,
            }
        }
        let Some(Request::Start { reply }) = queue.pop_front() else {
            continue;
        };
        if shared.stopping.load(Ordering::Acquire) {
            if let Some(reply) = reply {
                let _ = reply.send(Err("the strategy is shutting down".into()));
            }
            continue;
        }
        // `build` wants its answer at once; replacements wait 10 ms, 20 ms,
        // ... up to 2 s while failures go on. Dropping the strategy ends
        // the wait.
        if failures > 0 && reply.is_none() {
            let backoff = Duration::from_millis(10 << (failures - 1).min(8)).min(MAX_BACKOFF);
            let until = Instant::now() + backoff;
            loop {
                match requests.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(request) => queue.push_back(request),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
        match Worker::start(spec) {
            // Shut down while it started: not wanted any more.
            Ok(mut worker) if shared.stopping.load(Ordering::Acquire) => {
                worker.close();
                worker.reap(Duration::from_secs(1));
                if let Some(reply) = reply {
                    let _ = reply.send(Err("the strategy is shutting down".into()));
                }
            }
            Ok(worker) => {
                failures = 0;
                *shared.start_error.lock() = None;
                shared.live.fetch_add(1, Ordering::AcqRel);
                shared.give_back(worker);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(why) => {
                failures = failures.saturating_add(1);
                *shared.start_error.lock() = Some(why.clone());
                match reply {
                    Some(reply) => {
                        let _ = reply.send(Err(why));
                    }
                    // Try again, after the back-off.
                    None => queue.push_front(Request::Start { reply: None }),
                }
            }
        }
    }
}

/// The longest wait between two starts of a worker that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Drop for Processes {
    fn drop(&mut self) {
        self.shut_down();
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
