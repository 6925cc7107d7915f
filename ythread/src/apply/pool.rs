use std::cell::Cell;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use crossbeam_utils::Backoff;

use super::Apply;
use crate::Job;
use crate::job::ErasedJob;

/// Runs offloaded work on a fixed set of worker threads; the driving thread
/// waits for the result: the `multiprocessing.Pool().apply` of the 2009
/// "yieldable threads" post this crate comes from, with
/// threads instead of processes because Rust has no interpreter lock.
///
/// Work is taken first come, first served from one queue shared by all
/// workers, so however many handler threads there are, at most
/// [`threads`](Pool::threads) pieces of work compete for the cores. A panic
/// inside work goes back to the handler that offloaded it; the worker that
/// ran it keeps serving.
///
/// Clones share the same workers. The workers stop, and are joined, when the
/// last clone is dropped.
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
///     // a worker has finished with it.
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
/// Work running on one of this pool's workers may itself offload to this
/// same pool, by driving a handler with a clone of it. That work runs in
/// place, on the same worker, without going through the queue: rayon's rule
/// for a nested `install`. Queueing it instead would keep the worker waiting
/// for another one; with every worker waiting like that, none would be left
/// to run it. Only this pool's own workers run its work in place: work
/// offloaded from any other thread, another pool's workers included, queues
/// as usual.
///
/// ```
/// use ythread::{Pool, Yieldable, offload, yieldable};
///
/// fn worker() -> Option<String> {
///     std::thread::current().name().map(str::to_owned)
/// }
///
/// #[yieldable]
/// fn inner() -> Option<String> { offload!(worker) }
///
/// #[yieldable]
/// fn outer(pool: &Pool) -> (Option<String>, Option<String>) {
///     offload!(|| (worker(), inner().run_with(pool)))
/// }
///
/// // One worker, busy with the outer work, runs the nested work too.
/// let pool = Pool::new(1);
/// let (outer_worker, inner_worker) = outer(&pool).run_with(&pool);
/// assert_eq!(outer_worker.as_deref(), Some("ythread-pool-0"));
/// assert_eq!(inner_worker, outer_worker);
/// ```
///
/// These still deadlock, as with any fixed-size pool:
///
/// - Work on the pool that waits for *another* thread which offloads to this
///   same pool: a spawned or scoped thread, or the worker of another pool it
///   offloaded to. That thread is not one of ours, so its work queues; once
///   every worker is busy waiting like this, nothing is left to run it. With
///   one worker, a single such piece of work is enough.
/// - Cycles through another strategy: work on the pool that waits for an
///   [`Exclusive`](crate::Exclusive) lock (or a [`Bounded`](crate::Bounded)
///   permit) held by work on another thread that waits for this pool, once
///   every worker is busy waiting like that.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    /// Tells this pool's workers apart from every other thread: see
    /// `WORKER_OF`. Never 0; unique among the pools of a process (short of
    /// `usize::MAX` of them).
    id: usize,
    /// The work queue. Dropped before `workers` (fields drop in declaration
    /// order), which tells the workers to stop once the queue is empty.
    queue: Sender<Task>,
    /// Worker threads, joined when dropped, after the queue.
    workers: Workers,
}

/// A pool's worker threads; dropping joins them.
struct Workers(Vec<JoinHandle<()>>);

impl Drop for Workers {
    fn drop(&mut self) {
        let current = thread::current().id();
        for worker in self.0.drain(..) {
            // A job that owned the last clone of its own pool drops it on a
            // worker; that worker cannot join itself, and exits by itself.
            if worker.thread().id() != current {
                let _ = worker.join();
            }
        }
    }
}

thread_local! {
    /// The `id` of the pool this thread is a worker of; 0 on other threads.
    static WORKER_OF: Cell<usize> = const { Cell::new(0) };
}

/// Where pool ids come from. An id, unlike the address of the pool's
/// `Shared`, is not reused once the pool is gone: a worker that outlives its
/// pool (see `Drop for Shared`) never passes for one of a new pool.
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// A job on its way to a worker, and the latch its driving thread waits on.
struct Task {
    /// Borrowed for the duration of one `Pool::apply` call; see there.
    job: ErasedJob,
    /// The driving thread's latch, in its `Pool::apply` frame.
    latch: NonNull<Latch>,
}

// SAFETY: `job` points to `Send` work (an erased `Job`, which is `Send`);
// `latch` points to a `Latch`, which is `Sync`, owned by the `Pool::apply`
// frame that waits for this task and so outlives it.
unsafe impl Send for Task {}

/// Lives on the driving thread's stack while its job is in the pool.
struct Latch {
    /// Set by the worker once the job has run; the driving thread may then
    /// return (and the latch disappear).
    done: AtomicBool,
    /// The driving thread, unparked after `done` is set.
    waiter: Thread,
}

impl Pool {
    /// Starts a pool of `threads` workers, named `ythread-pool-<i>`.
    ///
    /// # Panics
    ///
    /// Panics if `threads` is zero or a worker thread cannot be spawned.
    pub fn new(threads: usize) -> Self {
        assert!(threads > 0, "Pool::new: a pool needs at least one thread");
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (queue, tasks) = crossbeam_channel::unbounded();
        let workers = (0..threads)
            .map(|i| {
                let tasks = tasks.clone();
                thread::Builder::new()
                    .name(format!("ythread-pool-{i}"))
                    .spawn(move || worker(id, tasks))
                    .expect("Pool::new: cannot spawn a worker thread")
            })
            .collect();
        Pool {
            shared: Arc::new(Shared {
                id,
                queue,
                workers: Workers(workers),
            }),
        }
    }

    /// A pool with one worker per core the process may use.
    ///
    /// # Panics
    ///
    /// Panics if a worker thread cannot be spawned.
    pub fn per_core() -> Self {
        Pool::new(super::cores())
    }

    /// The number of worker threads.
    pub fn threads(&self) -> usize {
        self.shared.workers.0.len()
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
        // Work nested in work running on one of our workers: queueing it
        // would keep this worker waiting for another, and with every worker
        // doing that, none would be left to run it.
        if WORKER_OF.get() == self.shared.id {
            job.run();
            return;
        }
        let latch = Latch {
            done: AtomicBool::new(false),
            waiter: thread::current(),
        };
        // The job's borrows must outlive its use on the worker: this function
        // does not return until the worker has set `latch.done`, which it does
        // after the job has run, and it cannot unwind in between (sending
        // cannot panic, waiting does not panic). If the send fails, the task
        // comes back in the error and the job is left unrun.
        let task = Task {
            job: job.erase(),
            latch: NonNull::from(&latch),
        };
        if self.shared.queue.send(task).is_err() {
            // Unreachable while `self` keeps the workers alive; the handler
            // then panics at its `offload!` point because the job did not run.
            return;
        }
        latch.wait();
    }
}

fn worker(pool: usize, tasks: Receiver<Task>) {
    WORKER_OF.set(pool);
    loop {
        // Parking costs the next task a wake-up of tens of microseconds on a
        // virtual machine, so look for more work for a little while first;
        // an idle pool still goes to sleep within `WORKER_SPIN`.
        let task = match spin_until(WORKER_SPIN, || tasks.try_recv().ok()) {
            Some(task) => task,
            None => match tasks.recv() {
                Ok(task) => task,
                // The pool was dropped and the queue is drained.
                Err(_) => return,
            },
        };
        // SAFETY: the driving thread is blocked in `Pool::apply` until `done`
        // is set below, so the job's slot is alive and no one else uses it.
        let job = unsafe { task.job.as_job() };
        // `Job::run` catches panics, so a panicking job never kills a worker.
        job.run();
        // SAFETY: the driving thread is still blocked in `Pool::apply`, which
        // owns the latch, until `done` is set below.
        let latch = unsafe { task.latch.as_ref() };
        // Clone the handle first: once `done` is set, the latch may be gone.
        let waiter = latch.waiter.clone();
        latch.done.store(true, Ordering::Release);
        waiter.unpark();
    }
}

impl Latch {
    /// Waits for the worker to set `done`: spins, then yields, then parks.
    ///
    /// Tiny work comes back within a microsecond, and a wake-up from `park`
    /// costs tens of microseconds on a virtual machine, so the caller first
    /// polls. It yields early (crossbeam's `Backoff`), because when callers
    /// outnumber cores a spinning caller takes a core from the workers.
    fn wait(&self) {
        let backoff = Backoff::new();
        while !backoff.is_completed() {
            if self.done.load(Ordering::Acquire) {
                return;
            }
            backoff.snooze();
        }
        while !self.done.load(Ordering::Acquire) {
            thread::park();
        }
    }
}

/// How long an idle worker polls the queue before parking.
const WORKER_SPIN: Duration = Duration::from_micros(50);

/// Polls `ready` until it returns `Some` or `budget` has passed.
#[inline]
fn spin_until<T>(budget: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        // Reading the clock costs more than a poll: check it now and then.
        for _ in 0..64 {
            if let Some(value) = ready() {
                return Some(value);
            }
            std::hint::spin_loop();
        }
        if start.elapsed() > budget {
            return None;
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads())
            .field("queued", &self.shared.queue.len())
            .finish()
    }
}
