use std::sync::Arc;

use super::Apply;
use super::semaphore::FairSemaphore;
use crate::Job;

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
        Bounded::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The most pieces of work that may run at once.
    pub fn limit(&self) -> usize {
        self.semaphore.limit()
    }
}

impl Apply for Bounded {
    #[inline]
    fn apply(&self, job: Job<'_>) {
        // Released on drop; `Job::run` never unwinds, but a permit must not
        // leak even if it did.
        let _permit = self.semaphore.acquire();
        job.run();
    }
}
