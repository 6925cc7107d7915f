//! [`ProcessesBuilder`]: a [`Processes`] strategy's settings, and `build`,
//! which starts the supervisor and the first workers.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::thread;
use std::time::Duration;

use super::Processes;
use super::checkout::{Idle, Shared};
use super::entry;
use super::output::WorkerOutput;
use super::process::Spec;
use super::supervise::{Request, supervise};
use crate::sync::Mutex;
use crate::sync::gate::Gate;

/// Builds a [`Processes`] strategy with settings of its own.
#[derive(Debug, Clone)]
pub struct ProcessesBuilder {
    /// How many worker processes to keep.
    workers: usize,
    /// How long one call may run; `None`: as long as it takes.
    deadline: Option<Duration>,
    /// `RLIMIT_AS` of each worker process, in bytes; `None`: no limit.
    memory_limit: Option<u64>,
    /// The largest frame either way, in bytes (at least `MIN_MAX_FRAME`).
    max_frame: usize,
    /// The deepest nesting decoded in arguments and results.
    max_depth: usize,
    /// How many more runs an idempotent call whose worker died gets.
    max_retries: u32,
    /// How many calls a worker serves before it is replaced.
    max_calls: Option<u64>,
    /// The program to start; `None`: this one, `/proc/self/exe`.
    program: Option<PathBuf>,
    /// Its arguments.
    args: Vec<OsString>,
    /// How long a worker process may take to say it is ready.
    start_timeout: Duration,
    /// Where the workers' lines go; `None`: this process's stderr.
    worker_output: Option<WorkerOutput>,
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

    /// The deepest nesting accepted in a call's arguments (decoded by the
    /// worker) and its result (decoded here): each sequence, map, struct,
    /// enum variant with data, `Some` and newtype is one level. A value
    /// nested deeper fails its call with
    /// [`Protocol`](crate::OffloadErrorKind::Protocol), naming this limit,
    /// and never overflows the stack of the side that decodes it.
    ///
    /// Default: 128. Decoding takes stack in proportion to the depth (a few
    /// hundred bytes a level; the default fits a thread's 2 MiB with room to
    /// spare): raise it with the stack of the threads that drive handlers in
    /// mind.
    pub fn max_depth(mut self, levels: usize) -> Self {
        self.max_depth = levels;
        self
    }

    /// How many more times a call of an
    /// [`#[offloadable(idempotent)]`](crate::offloadable) function is run,
    /// each on another worker, when the worker running it dies (default 2:
    /// three runs in all), within the call's
    /// [`deadline`](ProcessesBuilder::deadline). A function not so marked
    /// is run once: its call fails with
    /// [`WorkerDied`](crate::OffloadErrorKind::WorkerDied) when its worker
    /// dies, since it may have run in part (as Celery and Ray do it, unlike
    /// procspawn and anyio, which never run a call again). The error says how
    /// many runs it took ([`OffloadError::runs`](crate::OffloadError::runs));
    /// [`Processes::reruns`] counts the calls run again.
    ///
    /// A call is never run again for failing otherwise: a panic, a deadline,
    /// a refusal. (A call sent to a worker that was already dead did not run
    /// at all: it goes to another worker whatever the function.)
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// How many calls a worker serves before a fresh one replaces it
    /// (default: no limit). For work that leaks, or native code that a call
    /// may leave in a bad state (memory, threads, global state that the
    /// next call would meet): `max_calls(1)` gives every call a fresh
    /// worker, at the cost of a process start per call (milliseconds).
    /// Python's `multiprocessing` calls it `maxtasksperchild`. A call sent
    /// to a worker counts, whatever its outcome.
    ///
    /// # Panics
    ///
    /// Panics if `calls` is zero.
    pub fn max_calls(mut self, calls: u64) -> Self {
        assert!(
            calls > 0,
            "Processes: a worker must serve at least one call"
        );
        self.max_calls = Some(calls);
        self
    }

    /// The program to start as a worker (default: this program, through
    /// `/proc/self/exe`). It must call [`init`](super::init) first thing in `main` and
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

    /// Sends each line the worker processes print (their stdout and stderr,
    /// a panic's message, a crash's last words) to `sink` instead of this
    /// process's stderr: to a logger, to a test's own record, or nowhere
    /// (`|_| {}`). A line comes labelled as it would on stderr, `[ythread
    /// worker 1 pid 4242 app::digest call 7] text`, without its newline, control
    /// characters escaped; at most 64 KiB of a longer line, then the rest as
    /// further lines.
    ///
    /// `sink` runs on the thread that reads that worker's output, one line
    /// at a time per worker: a sink that blocks holds back that worker's
    /// output, and then the worker itself once its pipe is full. What a
    /// worker printed last is kept beside it either way, to explain a crash
    /// in [`OffloadError`](crate::OffloadError)'s message.
    pub fn worker_output(mut self, sink: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.worker_output = Some(WorkerOutput(Arc::new(sink)));
        self
    }

    /// Starts the workers and waits until each is ready.
    ///
    /// # Errors
    ///
    /// If a worker cannot be started or does not become ready: the program
    /// cannot be executed, or it does not call [`init`](super::init) first in `main` (the
    /// error says so), or it does not start within the start timeout.
    /// Workers already started are stopped. Also if this program ignores
    /// `SIGCHLD`: the kernel would reap the workers, and their deaths could
    /// not be told apart from another process's.
    pub fn build(self) -> io::Result<Processes> {
        // A worker whose `main` did not call `init()` first reaches this
        // line too: starting workers of its own would start copies of the
        // program without end.
        if children_are_reaped_by_the_kernel() {
            return Err(io::Error::other(
                "this program ignores `SIGCHLD` (or sets `SA_NOCLDWAIT`), so the kernel reaps \
                 its children itself: `Processes` could not learn how a worker ended, and a dead \
                 worker's pid could be another process's by the time it killed the worker's \
                 process group; restore `SIGCHLD`'s default action before building it",
            ));
        }
        if !entry::may_start_workers() {
            return Err(io::Error::other(
                "this process was started as a ythread worker to serve at \
                 `ythread::processes::init()`, but its `main` built a `Processes` before \
                 calling it: call `init()` first thing in `main`",
            ));
        }
        // The units and help texts of the series, for the recorder
        // installed now.
        #[cfg(feature = "metrics")]
        crate::meters::describe_to_current();
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
            max_depth: self.max_depth,
            start: entry::start_of_workers(),
            start_timeout: self.start_timeout,
            worker_output: self.worker_output.clone(),
        };
        let shared = Arc::new(Shared {
            idle: Mutex::new(Idle::default()),
            live: AtomicUsize::new(0),
            start_error: Mutex::new(None),
            restarts: AtomicU64::new(0),
            reruns: AtomicU64::new(0),
            calls: AtomicU64::new(0),
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
            max_depth: self.max_depth,
            max_retries: self.max_retries,
            max_calls: self.max_calls,
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

/// Whether `SIGCHLD` is ignored, or its action asks for no zombies: the
/// kernel then reaps this process's children.
fn children_are_reaped_by_the_kernel() -> bool {
    // SAFETY: queries the action into a zeroed `sigaction`; changes nothing.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut action) == 0
            && (action.sa_sigaction == libc::SIG_IGN || action.sa_flags & libc::SA_NOCLDWAIT != 0)
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
            max_depth: crate::codec::Limits::DEFAULT.max_depth,
            max_retries: 2,
            max_calls: None,
            program: None,
            args: Vec::new(),
            start_timeout: Duration::from_secs(10),
            worker_output: None,
        }
    }
}
