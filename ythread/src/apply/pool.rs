//! [`Pool`]: offloaded work runs on a fixed set of threads of the pool's
//! own (`ythread-pool-<i>`), taken first come, first served from one queue.
//!
//! (Slightly over 500 lines: about 200 are the public documentation of
//! `Pool`, `PoolBuilder` and `WhenFull`, with their examples.)

use std::cell::Cell;
use std::fmt;
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::Apply;
use crate::Job;
use crate::error::OffloadError;
use crate::job::ErasedJob;
use crate::sync::Mutex;
use crate::sync::gate::Gate;
use crate::sync::latch::Latch;

/// Runs offloaded work on a fixed set of threads of its own; the driving
/// thread waits for the result: the `multiprocessing.Pool().apply` of the
/// 2009 "yieldable threads" post this crate comes from, with threads
/// instead of processes because Rust has no interpreter lock.
///
/// Work is taken first come, first served from one queue shared by all its
/// threads, so however many handler threads there are, at most
/// [`threads`](Pool::threads) pieces of work compete for the cores. A panic
/// inside work goes back to the handler that offloaded it; the thread that
/// ran it keeps serving.
///
/// Clones share the same threads. The threads stop, and are joined, when the
/// last clone is dropped or at [`shutdown`](Pool::shutdown); work queued by
/// then runs first.
///
/// The queue is unbounded unless built with [`PoolBuilder::queue_capacity`]:
/// then a driving thread that finds it full waits for room (back-pressure),
/// or, with [`WhenFull::Fail`], gets [`OffloadErrorKind::QueueFull`](crate::OffloadErrorKind::QueueFull) at
/// once.
///
/// # Example
///
/// ```
/// use ythread::{Pool, YieldableThread, offload, yieldable};
///
/// fn checksum(bytes: &[u8]) -> u32 {
///     bytes.iter().map(|&b| u32::from(b)).sum()
/// }
///
/// #[yieldable]
/// fn handle(buf: Vec<u8>) -> u32 {
///     // The work borrows the handler's local: the handler is frozen until
///     // a thread has finished with it.
///     offload!(checksum, &buf)
/// }
///
/// let pool = Pool::new(2);
/// let t = YieldableThread::new().apply(pool.clone()).spawn(handle(vec![1, 2, 3])).unwrap();
/// assert_eq!(t.join().unwrap(), 6);
/// ```
///
/// # Nested work
///
/// Work running on one of this pool's threads may itself offload to this
/// same pool, by driving a handler with a clone of it. That work runs in
/// place, on the same thread, without going through the queue: rayon's rule
/// for a nested `install`. Queueing it instead would keep the thread waiting
/// for another one; with every thread waiting like that, none would be left
/// to run it. Only this pool's own threads run its work in place: work
/// offloaded from any other thread, another pool's threads included, queues
/// as usual.
///
/// ```
/// use ythread::{Pool, Yieldable, offload, yieldable};
///
/// fn thread_name() -> Option<String> {
///     std::thread::current().name().map(str::to_owned)
/// }
///
/// #[yieldable]
/// fn inner() -> Option<String> { offload!(thread_name) }
///
/// #[yieldable]
/// fn outer(pool: &Pool) -> (Option<String>, Option<String>) {
///     offload!(|| (thread_name(), inner().run_with(pool)))
/// }
///
/// // One thread, busy with the outer work, runs the nested work too.
/// let pool = Pool::new(1);
/// let (outer_thread, inner_thread) = outer(&pool).run_with(&pool);
/// assert_eq!(outer_thread.as_deref(), Some("ythread-pool-0"));
/// assert_eq!(inner_thread, outer_thread);
/// ```
///
/// These still deadlock, as with any fixed-size pool:
///
/// - Work on the pool that waits for *another* thread which offloads to this
///   same pool: a spawned or scoped thread, or the thread of another pool it
///   offloaded to. That thread is not one of ours, so its work queues; once
///   every thread is busy waiting like this, nothing is left to run it. With
///   one thread, a single such piece of work is enough.
/// - Cycles through another strategy: work on the pool that waits for an
///   [`Exclusive`](crate::Exclusive) lock (or a [`Bounded`](crate::Bounded)
///   permit) held by work on another thread that waits for this pool, once
///   every thread is busy waiting like that.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    /// Tells this pool's threads apart from every other thread: see
    /// `POOL_OF`. Never 0; unique among the pools of a process (short of
    /// `usize::MAX` of them).
    id: usize,
    /// The work queue, and after it, one `Stop` per thread at shutdown.
    queue: Sender<Message>,
    /// What a full queue does to a driving thread; `None`: unbounded.
    bound: Option<(usize, WhenFull)>,
    /// Closed at shutdown; driving threads are inside while they send, so
    /// that no work lands behind the threads' `Stop`s.
    gate: Gate,
    threads: usize,
    /// The threads, joined at shutdown.
    handles: Mutex<Vec<JoinHandle<()>>>,
}

// A panic cannot leave a `Shared` half-changed: its one lock holds the
// threads' handles, which `join` takes out one at a time. So a `Pool` is
// `UnwindSafe` and `RefUnwindSafe`, as it was with std's (poisoning) lock.
impl std::panic::RefUnwindSafe for Shared {}

/// What the queue carries.
enum Message {
    Run(Task),
    /// The thread that takes it exits: every message before it has been
    /// taken already (the queue is first in, first out).
    Stop,
}

impl Shared {
    /// Takes no new work, lets the threads run what is queued, then stops
    /// and joins them. Idempotent; every caller returns once the threads
    /// have ended (but see below).
    fn shutdown(self: &Arc<Self>) {
        let first = self.gate.close();
        if POOL_OF.get() == self.id {
            // On one of our own threads, whose work may be what the queue
            // (or a driving thread blocked on a full one) waits for: closed
            // now, stopped from another thread, and this work returns.
            let shared = Arc::clone(self);
            if !first
                || thread::Builder::new()
                    .name("ythread-pool-shutdown".into())
                    .spawn(move || shared.stop_threads())
                    .is_ok()
            {
                return;
            }
        }
        self.finish(first);
    }

    /// After closing the gate: the first closer stops the threads, any
    /// other waits for them to end.
    fn finish(&self, first: bool) {
        if first {
            self.stop_threads();
        } else {
            self.join();
        }
    }

    /// Once the gate is closed: lets the senders inside finish (one may
    /// wait for room in a full queue), sends one `Stop` per thread behind
    /// the queued work, joins the threads.
    fn stop_threads(&self) {
        self.gate.wait_empty();
        for _ in 0..self.threads {
            // Fails only if every thread is gone already.
            let _ = self.queue.send(Message::Stop);
        }
        self.join();
    }

    /// Joins the threads; a second caller waits for the first to finish.
    fn join(&self) {
        let mut handles = self.handles.lock();
        let current = thread::current().id();
        for handle in handles.drain(..) {
            // Shut down from work running on one of its own threads (or the
            // last clone dropped there): that thread cannot join itself, and
            // exits by itself once the work returns.
            if handle.thread().id() != current {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last clone is gone: no one can be sending.
        let first = self.gate.close();
        self.finish(first);
    }
}

thread_local! {
    /// The `id` of the pool this thread belongs to; 0 on other threads.
    static POOL_OF: Cell<usize> = const { Cell::new(0) };
}

/// Where pool ids come from. An id, unlike the address of the pool's
/// `Shared`, is not reused once the pool is gone: a thread that outlives its
/// pool (see `Drop for Shared`) never passes for one of a new pool.
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// A job on its way to one of the pool's threads, and the latch its driving
/// thread waits on.
struct Task {
    /// Borrowed for the duration of one `Pool::apply` call; see there.
    job: ErasedJob,
    /// The driving thread's latch, in its `Pool::apply` frame.
    latch: NonNull<Latch>,
}

// SAFETY: `job` points to `Send` work (an erased `Job`, which is `Send`),
// and, with the `tracing` or `metrics` feature, to the job's probe, which is
// `Sync`, only shared, and borrowed for as long as the work; `latch` points
// to a `Latch`, which is `Sync`, owned by the `Pool::apply` frame that waits
// for this task and so outlives it.
unsafe impl Send for Task {}

/// What a [`Pool`] with a bounded queue does when the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// The driving thread waits for room: the callers slow down to the
    /// pool's pace (back-pressure).
    #[default]
    Wait,
    /// The call fails at once with
    /// [`OffloadErrorKind::QueueFull`](crate::OffloadErrorKind::QueueFull):
    /// `try_offload!` returns it, `offload!` panics with it. For servers
    /// that would rather answer "busy" than make a client wait.
    Fail,
}

/// Builds a [`Pool`]: the number of threads, a bound on its queue.
///
/// ```
/// use ythread::{Pool, WhenFull};
///
/// // Two threads; at most 64 calls wait for them, more fail at once.
/// let pool = Pool::builder()
///     .threads(2)
///     .queue_capacity(64)
///     .when_full(WhenFull::Fail)
///     .build()?;
/// # let _ = pool;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    threads: usize,
    capacity: Option<usize>,
    when_full: WhenFull,
}

impl PoolBuilder {
    /// The number of threads (default: one per core).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// At most `calls` calls wait in the queue for a thread (calls being
    /// run do not count); default: no bound.
    pub fn queue_capacity(mut self, calls: usize) -> Self {
        self.capacity = Some(calls);
        self
    }

    /// What a call that finds the queue full does (default
    /// [`WhenFull::Wait`]); only with a [`queue_capacity`](Self::queue_capacity).
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// Starts the threads, named `ythread-pool-<i>`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if there are no threads or the queue's capacity is
    /// zero; the error of spawning a thread (the threads spawned are
    /// stopped).
    pub fn build(self) -> io::Result<Pool> {
        let invalid = |why| Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        if self.threads == 0 {
            return invalid("a pool needs at least one thread");
        }
        if self.capacity == Some(0) {
            return invalid("a bounded queue needs room for at least one call");
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (queue, tasks) = match self.capacity {
            Some(capacity) => crossbeam_channel::bounded(capacity),
            None => crossbeam_channel::unbounded(),
        };
        let mut handles = Vec::with_capacity(self.threads);
        for i in 0..self.threads {
            let receiver = tasks.clone();
            match thread::Builder::new()
                .name(format!("ythread-pool-{i}"))
                .spawn(move || run_thread(id, receiver))
            {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    // Disconnected, the queue ends the threads started.
                    drop((queue, tasks));
                    for handle in handles {
                        let _ = handle.join();
                    }
                    return Err(error);
                }
            }
        }
        Ok(Pool {
            shared: Arc::new(Shared {
                id,
                queue,
                bound: self.capacity.map(|capacity| (capacity, self.when_full)),
                gate: Gate::default(),
                threads: self.threads,
                handles: Mutex::new(handles),
            }),
        })
    }
}

impl Pool {
    /// Starts a pool of `threads` threads, named `ythread-pool-<i>`, with
    /// an unbounded queue.
    ///
    /// # Panics
    ///
    /// Panics if `threads` is zero or a thread cannot be spawned.
    pub fn new(threads: usize) -> Self {
        assert!(threads > 0, "Pool::new: a pool needs at least one thread");
        Pool::builder()
            .threads(threads)
            .build()
            .expect("Pool::new: cannot spawn a worker thread")
    }

    /// A builder, for a bounded queue.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            threads: super::cores(),
            capacity: None,
            when_full: WhenFull::Wait,
        }
    }

    /// Stops the pool: it takes no new work (a call offloaded to it from
    /// now on fails with [`OffloadErrorKind::Unavailable`](crate::OffloadErrorKind::Unavailable)), runs the work
    /// already queued, and that of callers already waiting for room in a
    /// full queue, then stops its threads and joins them. Every clone sees
    /// it. Returns once the threads have ended; called from work on one of
    /// them, it returns at once (the pool is closed by then) and the threads
    /// are joined from another thread once that work returns. Work nested
    /// in work on a thread still runs in place.
    ///
    /// Work that never returns keeps its thread, and this call, waiting:
    /// see the crate's "Work that never ends".
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }

    /// Calls waiting in the queue now. (Once a shutdown has begun, the
    /// threads' stop messages, one per thread, count too, until each thread
    /// takes its own.)
    pub fn queued(&self) -> usize {
        self.shared.queue.len()
    }

    /// A pool with one thread per core the process may use.
    ///
    /// # Panics
    ///
    /// Panics if a thread cannot be spawned.
    pub fn per_core() -> Self {
        Pool::new(super::cores())
    }

    /// The number of threads.
    pub fn threads(&self) -> usize {
        self.shared.threads
    }
}

impl Default for Pool {
    /// [`Pool::per_core`].
    fn default() -> Self {
        Pool::per_core()
    }
}

impl Apply for Pool {
    fn apply(&self, job: Job<'_>) {
        // Work nested in work running on one of our threads: queueing it
        // would keep this thread waiting for another, and with every thread
        // doing that, none would be left to run it.
        if POOL_OF.get() == self.shared.id {
            job.run();
            return;
        }
        let shared = &*self.shared;
        let Some(pass) = shared.gate.enter() else {
            let mut job = job;
            job.fail(OffloadError::shut_down("pool"));
            return;
        };
        let latch = Latch::new();
        // The job's borrows must outlive its use on the pool's thread: this
        // function does not return until that thread has set `latch.done`,
        // which it does after the job has run, and it cannot unwind in
        // between (sending cannot panic, waiting does not panic). If the send
        // fails, the task comes back in the error and the job is left to fail
        // here.
        let task = Message::Run(Task {
            job: job.erase(),
            latch: NonNull::from(&latch),
        });
        let refused = match shared.bound {
            Some((capacity, WhenFull::Fail)) => match shared.queue.try_send(task) {
                Ok(()) => None,
                Err(TrySendError::Full(task)) => {
                    Some((task, OffloadError::queue_full("pool", capacity)))
                }
                Err(TrySendError::Disconnected(task)) => {
                    Some((task, OffloadError::shut_down("pool")))
                }
            },
            _ => shared
                .queue
                .send(task)
                .err()
                .map(|error| (error.0, OffloadError::shut_down("pool"))),
        };
        drop(pass);
        if let Some((Message::Run(task), error)) = refused {
            // SAFETY: the task never reached the pool's threads: its job
            // slot, in the handler suspended on this call, is alive and used
            // by no one else.
            let mut job = unsafe { task.job.as_job() };
            job.fail(error);
            return;
        }
        latch.wait();
    }

    fn name(&self) -> &'static str {
        "Pool"
    }
}

fn run_thread(pool: usize, tasks: Receiver<Message>) {
    POOL_OF.set(pool);
    loop {
        // No polling of our own before this: crossbeam's `recv` spins and
        // yields briefly before it parks, which catches a caller offloading
        // again at once. Polling 50 µs more (as this did) made a caller's
        // round trip slower, not faster, and under load took the cores from
        // the handlers: at the seed's n = 25000, `Pool`'s server took
        // 0.9-2.0x tokio's wall time with it, 0.9-1.2x without (measured in
        // turns; the repository's BENCHMARKS.md, "`Pool` handoffs").
        let Ok(message) = tasks.recv() else {
            // The queue is gone: `build` failed to start every thread.
            return;
        };
        let Message::Run(task) = message else {
            return;
        };
        // SAFETY: the driving thread is blocked in `Pool::apply` until `done`
        // is set below, so the job's slot is alive and no one else uses it.
        let job = unsafe { task.job.as_job() };
        // `Job::run` catches panics, so a panicking job never kills a thread.
        job.run();
        // SAFETY: the driving thread is still blocked in `Pool::apply`, which
        // owns the latch, until `done` is set below.
        let latch = unsafe { task.latch.as_ref() };
        latch.open();
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads())
            .field("queued", &self.queued())
            .field("bound", &self.shared.bound)
            .field("shut_down", &self.shared.gate.is_closed())
            .finish()
    }
}
