use std::fmt;
use std::mem::{self, ManuallyDrop};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle, Thread};

use crossbeam_channel::{Receiver, Sender};

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
    // Ends when the pool is dropped and the queue is drained.
    for task in tasks {
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
    /// Spins briefly (a wake-up from `park` costs tens of microseconds on a
    /// virtual machine), then parks until the worker sets `done`.
    fn wait(&self) {
        for _ in 0..SPIN_LIMIT {
            if self.done.load(Ordering::Acquire) {
                return;
            }
            std::hint::spin_loop();
        }
        while !self.done.load(Ordering::Acquire) {
            thread::park();
        }
    }
}

/// How many times a driving thread polls its latch before parking.
const SPIN_LIMIT: u32 = 1 << 12;

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
