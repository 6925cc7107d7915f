use super::{Apply, Bounded};
use crate::Job;

/// Runs offloaded work on the driving thread under one lock shared by every
/// clone, so at most one thread at a time runs CPU work: the 2009 post's
/// `exclusive_apply`.
///
/// The lock is fair: threads get it in the order they asked for it. With an
/// unfair lock, a thread that just released it tends to take it straight
/// back, and under load the others starve; fairness is what turns "one at a
/// time" into "first come, first served", and keeps the latency tail short.
///
/// `Exclusive` is [`Bounded`] with a limit of one. Clones share the lock;
/// [`Exclusive::new`] makes a new one.
///
/// # Example
///
/// ```
/// use ythread::{Exclusive, YieldableThread, offload, yieldable};
///
/// fn sumn(n: u64) -> u64 { (1..=n).sum() }
///
/// #[yieldable]
/// fn handle(n: u64) -> u64 { offload!(sumn, n) }
///
/// let exclusive = Exclusive::new();
/// let threads: Vec<_> = (0..4)
///     .map(|i| YieldableThread::new().apply(exclusive.clone()).spawn(handle(i)).unwrap())
///     .collect();
/// let sums: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
/// assert_eq!(sums, [0, 1, 3, 6]);
/// ```
///
/// # Nested work
///
/// Work running under the lock that drives a handler with this same
/// `Exclusive` (or a clone of it) runs that handler's work in place, on the
/// same thread, under the lock it already holds, instead of waiting forever
/// for itself. The rules are [`Bounded`'s](Bounded#nested-work) with a limit
/// of one, and so are the deadlocks nesting does not prevent: work that
/// waits for another thread (a spawned or scoped thread, a
/// [`Pool`](crate::Pool)'s thread) that takes this same lock, and two locks
/// taken in opposite orders on different threads.
#[derive(Debug, Clone)]
pub struct Exclusive {
    bounded: Bounded,
}

impl Exclusive {
    /// A new lock, not shared with any other `Exclusive`.
    pub fn new() -> Self {
        Exclusive {
            bounded: Bounded::new(1),
        }
    }
}

impl Default for Exclusive {
    fn default() -> Self {
        Exclusive::new()
    }
}

impl Apply for Exclusive {
    #[inline]
    fn apply(&self, job: Job<'_>) {
        self.bounded.apply(job);
    }

    fn name(&self) -> &'static str {
        "Exclusive"
    }
}
