use std::sync::Arc;

use super::Apply;
use crate::Job;
use crate::sync::semaphore::FairSemaphore;

/// Runs offloaded work on the driving thread, at most `limit` pieces at
/// once across every thread sharing it; the others wait their turn, first
/// come, first served.
///
/// With a limit equal to the number of cores, CPU work never oversubscribes
/// the machine however many I/O threads there are, and there is no handoff
/// to another thread: the work runs where its data already is. A limit of
/// one is [`Exclusive`](crate::Exclusive).
///
/// Clones share the same limit.
///
/// On Linux, a thread handed a permit by another is woken on the core that
/// thread is about to free: for that one wake-up its allowed cores are that
/// one core, and it restores its own set as soon as it runs (a thread
/// pinned to one core is left alone). Woken anywhere else, it would queue
/// behind other work while the freed core idled.
///
/// # Example
///
/// ```
/// use ythread::{Bounded, YieldableThread, offload, yieldable};
///
/// fn sumn(n: u64) -> u64 { (1..=n).sum() }
///
/// #[yieldable]
/// fn handle(n: u64) -> u64 { offload!(sumn, n) }
///
/// let cpu = Bounded::new(2);
/// let threads: Vec<_> = (1..=8)
///     .map(|n| YieldableThread::new().apply(cpu.clone()).spawn(handle(n)).unwrap())
///     .collect();
/// let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
/// assert_eq!(total, 120);
/// ```
///
/// # Nested work
///
/// Work running under a permit may itself drive a handler with this same
/// `Bounded` (or a clone of it). That handler's work runs in place: on the
/// same thread, under the permit the outer work holds, the way rayon runs a
/// nested `install` on the same pool. Queueing for a second permit instead
/// could wait forever, and with a limit of one always would: the only
/// permit is held by the work waiting for it. The outer work cannot go on
/// until the nested work is done, so nesting neither lets another thread in
/// nor counts twice against the limit. A thread may hold permits of several
/// `Bounded`s at once: when work under `A` drives a handler with `B`, whose
/// work drives one with `A` again, that innermost work runs in place too.
///
/// ```
/// use ythread::{Bounded, Yieldable, offload, yieldable};
///
/// #[yieldable]
/// fn inner() -> u32 { offload!(|| 1) }
///
/// #[yieldable]
/// fn outer(cpu: &Bounded) -> u32 {
///     // Holds the only permit while it drives `inner` with the same limit.
///     offload!(|| inner().run_with(cpu) + 1)
/// }
///
/// let cpu = Bounded::new(1);
/// assert_eq!(outer(&cpu).run_with(&cpu), 2);
/// ```
///
/// A permit belongs to the thread that took it, and only work on that
/// thread runs in place under it. These still deadlock:
///
/// - Work that hands nested work to *another* thread and waits for it, when
///   that thread drives a handler with this same `Bounded`: a spawned or
///   scoped thread, or a [`Pool`](crate::Pool)'s thread. The permit does not
///   travel with the work: the other thread queues for a permit of its own,
///   and once every permit is held by work waiting like this, none comes.
///   With a limit of one, a single such piece of work is enough.
/// - Two strategies nested in opposite orders on different threads, as with
///   any two locks: work holding [`Exclusive`](crate::Exclusive) `A` drives
///   a handler with `Exclusive` `B` on one thread, while work holding `B`
///   drives one with `A` on another; each waits for the lock the other
///   holds. Nesting them in the same order everywhere is safe.
#[derive(Debug, Clone)]
pub struct Bounded {
    semaphore: Arc<FairSemaphore>,
}

impl Bounded {
    /// Allows at most `limit` pieces of work to run at once.
    ///
    /// # Panics
    ///
    /// Panics if `limit` is zero.
    pub fn new(limit: usize) -> Self {
        assert!(limit > 0, "Bounded::new: the limit must be at least 1");
        Bounded {
            semaphore: Arc::new(FairSemaphore::new(limit)),
        }
    }

    /// A limit equal to the number of cores the process may use.
    pub fn per_core() -> Self {
        Bounded::new(super::cores())
    }

    /// The most pieces of work that may run at once.
    pub fn limit(&self) -> usize {
        self.semaphore.limit()
    }
}

impl Apply for Bounded {
    #[inline]
    fn apply(&self, job: Job<'_>) {
        self.semaphore.run(|| job.run());
    }

    fn name(&self) -> &'static str {
        "Bounded"
    }
}

impl Default for Bounded {
    /// [`Bounded::per_core`].
    fn default() -> Self {
        Bounded::per_core()
    }
}
