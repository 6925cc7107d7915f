//! How a `Pool`'s driving thread waits for its job: a flag the pool's
//! thread sets once the job has run, and a wake-up.

use super::loom::thread::{self, Thread};
use super::loom::{AtomicBool, Ordering};

/// Lives on the driving thread's stack while its job is in the pool.
pub(crate) struct Latch {
    /// Set by the pool's thread once the job has run; the driving thread may
    /// then return (and the latch disappear).
    done: AtomicBool,
    /// The driving thread, unparked after `done` is set.
    waiter: Thread,
}

impl Latch {
    /// A latch for the current thread to wait on.
    pub(crate) fn new() -> Self {
        Latch {
            done: AtomicBool::new(false),
            waiter: thread::current(),
        }
    }

    /// The pool thread's side: the job has run. The latch may be gone as
    /// soon as `done` is set, so the waiter's handle is cloned first.
    pub(crate) fn open(&self) {
        let waiter = self.waiter.clone();
        self.done.store(true, Ordering::Release);
        waiter.unpark();
    }

    /// Waits for the pool's thread to set `done`: spins, then yields, then
    /// parks.
    ///
    /// Tiny work comes back within a microsecond, and a wake-up from `park`
    /// costs tens of microseconds on a virtual machine, so the caller first
    /// polls. It yields early (crossbeam's `Backoff`), because when callers
    /// outnumber cores a spinning caller takes a core from the pool's threads.
    pub(crate) fn wait(&self) {
        #[cfg(not(loom))]
        {
            let backoff = crossbeam_utils::Backoff::new();
            while !backoff.is_completed() {
                if self.done.load(Ordering::Acquire) {
                    return;
                }
                backoff.snooze();
            }
        }
        // `park` may wake spuriously, and other code on this thread may
        // have left an unpark token behind: only `done` counts.
        while !self.done.load(Ordering::Acquire) {
            thread::park();
        }
    }
}

/// The handoff, model-checked: in every interleaving, the driving thread
/// returns from `wait` (no lost wake-up) and only after the pool thread's
/// `open`, seeing what the job wrote. Run by `scripts/loom`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    #[test]
    fn the_driving_thread_wakes_after_the_job_and_sees_its_result() {
        loom::model(|| {
            let latch = Arc::new(Latch::new());
            // The job's result slot, written by the pool's thread, read by the
            // driving thread after `wait`: loom reports a data race if the
            // latch does not order them.
            let slot = Arc::new(UnsafeCell::new(0u64));
            let pool_thread = {
                let (latch, slot) = (Arc::clone(&latch), Arc::clone(&slot));
                thread::spawn(move || {
                    // SAFETY: the driving thread reads the slot only after
                    // `wait`, which returns only after `open` below.
                    slot.with_mut(|value| unsafe { *value = 42 });
                    latch.open();
                })
            };
            latch.wait();
            // SAFETY: `wait` returned: the pool thread's write happened before.
            assert_eq!(slot.with(|value| unsafe { *value }), 42);
            pool_thread.join().unwrap();
        });
    }
}
