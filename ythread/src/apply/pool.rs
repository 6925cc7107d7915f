use std::fmt;
use std::mem::{self, ManuallyDrop};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use crossbeam_utils::Backoff;

use super::Apply;
use crate::Job;

/// Runs offloaded work on a fixed set of worker threads; the driving thread
/// waits for the result: the seed's `multiprocessing.Pool().apply`, with
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
/// A worker blocked in work that itself waits for the same pool (work that
/// drives a handler with this pool, say) holds its worker the whole time: as
/// with any fixed-size pool, enough such work at once deadlocks it.
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
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    /// The work queue. Dropped first in `Drop`, which tells the workers to
    /// stop once the queue is empty.
    queue: ManuallyDrop<Sender<Task>>,
    /// Worker threads, joined on drop.
    workers: Vec<JoinHandle<()>>,
}

/// A job on its way to a worker, and the latch its driving thread waits on.
struct Task {
    /// Really borrowed for the duration of one `Pool::apply` call; see there.
    job: Job<'static>,
    latch: NonNull<Latch>,
}

// SAFETY: `Job` is `Send`; `latch` points to a `Latch`, which is `Sync`, owned
// by the `Pool::apply` frame that waits for this task and so outlives it.
unsafe impl Send for Task {}

/// Lives on the driving thread's stack while its job is in the pool.
struct Latch {
    done: AtomicBool,
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
        let (queue, tasks) = crossbeam_channel::unbounded();
        let workers = (0..threads)
            .map(|i| {
                let tasks = tasks.clone();
                thread::Builder::new()
                    .name(format!("ythread-pool-{i}"))
                    .spawn(move || worker(tasks))
                    .expect("Pool::new: cannot spawn a worker thread")
            })
            .collect();
        Pool {
            shared: Arc::new(Shared {
                queue: ManuallyDrop::new(queue),
                workers,
            }),
        }
    }

    /// The number of worker threads.
    pub fn threads(&self) -> usize {
        self.shared.workers.len()
    }
}

impl Default for Pool {
    /// A pool with one worker per core the process may use.
    fn default() -> Self {
        Pool::new(thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl Apply for Pool {
    fn apply(&self, job: Job<'_>) {
        let latch = Latch {
            done: AtomicBool::new(false),
            waiter: thread::current(),
        };
        // SAFETY: the job's borrows must outlive its use on the worker. This
        // function does not return until the worker has set `latch.done`,
        // which it does after `job.run()` has returned, and it cannot unwind
        // in between: sending cannot panic and waiting does not panic. If the
        // send fails, the task (and job) come back in the error and are
        // dropped here, unrun.
        let job = unsafe { mem::transmute::<Job<'_>, Job<'static>>(job) };
        let task = Task {
            job,
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

fn worker(tasks: Receiver<Task>) {
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
        // `Job::run` catches panics, so a panicking job never kills a worker.
        task.job.run();
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

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: `queue` is not used after this.
        unsafe { ManuallyDrop::drop(&mut self.queue) };
        let current = thread::current().id();
        for worker in self.workers.drain(..) {
            // A job that owned the last clone of its own pool drops it on a
            // worker; that worker cannot join itself, and exits by itself.
            if worker.thread().id() != current {
                let _ = worker.join();
            }
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
