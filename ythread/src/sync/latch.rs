//! How a `Pool`'s driving thread waits for its job: a state the pool's
//! thread sets once the job has run, and a wake-up if the driving thread
//! went to sleep.

use super::loom::thread::{self, Thread};
use super::loom::{AtomicU8, Ordering};

/// The job has not run yet; the driving thread polls.
const WAITING: u8 = 0;
/// The job has run (the driving thread was polling: it may leave at once).
const DONE: u8 = 1;
/// The driving thread has parked, or is about to: the pool's thread must
/// wake it, and it stays until told `WOKEN`.
const PARKED: u8 = 2;
/// The job has run and the pool's thread is done with the latch.
const WOKEN: u8 = 3;

/// Lives on the driving thread's stack while its job is in the pool.
pub(crate) struct Latch {
    /// `WAITING`, then `DONE` (set by the pool's thread; the driving thread
    /// may then return and the latch disappear); or `WAITING`, `PARKED` (by
    /// the driving thread), `WOKEN` (by the pool's thread, the last thing it
    /// does with the latch).
    state: AtomicU8,
    /// The driving thread, unparked if it parked. Touched by the pool's
    /// thread only then: the fast path moves no cache line but `state`'s.
    waiter: Thread,
}

impl Latch {
    /// A latch for the current thread to wait on.
    pub(crate) fn new() -> Self {
        Latch {
            state: AtomicU8::new(WAITING),
            waiter: thread::current(),
        }
    }

    /// The pool thread's side: the job has run. A driving thread that was
    /// polling may be gone, with the latch, as soon as `state` says `DONE`,
    /// so the latch is not touched after that; one that parked waits for
    /// `WOKEN`, so its handle is still there to wake it with.
    pub(crate) fn open(&self) {
        if self.state.swap(DONE, Ordering::AcqRel) == PARKED {
            let waiter = self.waiter.clone();
            self.state.store(WOKEN, Ordering::Release);
            waiter.unpark();
        }
    }

    /// Waits for the pool's thread to run the job: spins, then yields, then
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
                if self.state.load(Ordering::Acquire) == DONE {
                    return;
                }
                backoff.snooze();
            }
        }
        if self
            .state
            .compare_exchange(WAITING, PARKED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // `DONE` meanwhile.
            return;
        }
        // `park` may wake spuriously, and other code on this thread may
        // have left an unpark token behind: only `WOKEN` counts.
        while self.state.load(Ordering::Acquire) != WOKEN {
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
