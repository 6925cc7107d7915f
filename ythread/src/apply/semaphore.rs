//! A first-come, first-served counting semaphore for `Bounded` and
//! `Exclusive`.
//!
//! Fairness is the point: a released permit is handed directly to the
//! longest-waiting thread, so a thread that releases and immediately asks
//! again goes to the back of the queue instead of barging ahead.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, Thread};

use parking_lot::Mutex;

pub(crate) struct FairSemaphore {
    /// Permits not held by anyone, and the queue of threads waiting for one.
    /// Invariant: `available > 0` only while `waiters` is empty.
    state: Mutex<State>,
    limit: usize,
}

struct State {
    available: usize,
    waiters: VecDeque<Arc<Waiter>>,
}

/// A thread waiting for a permit; the releasing thread sets `granted` and
/// unparks `thread`, handing its permit over.
struct Waiter {
    granted: AtomicBool,
    thread: Thread,
}

/// A held permit; dropping it releases the permit.
pub(crate) struct Permit<'a> {
    semaphore: &'a FairSemaphore,
}

impl FairSemaphore {
    pub(crate) fn new(limit: usize) -> Self {
        FairSemaphore {
            state: Mutex::new(State {
                available: limit,
                waiters: VecDeque::new(),
            }),
            limit,
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Waits, in arrival order, for a permit.
    pub(crate) fn acquire(&self) -> Permit<'_> {
        let waiter = {
            let mut state = self.state.lock();
            if state.available > 0 {
                state.available -= 1;
                return Permit { semaphore: self };
            }
            let waiter = Arc::new(Waiter {
                granted: AtomicBool::new(false),
                thread: thread::current(),
            });
            state.waiters.push_back(Arc::clone(&waiter));
            waiter
        };
        // `park` may wake spuriously, and other code on this thread may have
        // left an unpark token behind: only `granted` counts.
        while !waiter.granted.load(Ordering::Acquire) {
            thread::park();
        }
        Permit { semaphore: self }
    }

    fn release(&self) {
        let next = {
            let mut state = self.state.lock();
            match state.waiters.pop_front() {
                Some(next) => next,
                None => {
                    state.available += 1;
                    return;
                }
            }
        };
        // The permit goes straight to the next waiter; it is never "free"
        // for a newcomer to grab.
        next.granted.store(true, Ordering::Release);
        next.thread.unpark();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.semaphore.release();
    }
}

impl fmt::Debug for FairSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("FairSemaphore")
            .field("limit", &self.limit)
            .field("available", &state.available)
            .field("waiting", &state.waiters.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn waiters_are_served_in_arrival_order() {
        let semaphore = Arc::new(FairSemaphore::new(1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = semaphore.acquire();
        let mut threads = Vec::new();
        for i in 0..5 {
            let (shared, order) = (Arc::clone(&semaphore), Arc::clone(&order));
            threads.push(thread::spawn(move || {
                let _permit = shared.acquire();
                order.lock().push(i);
            }));
            // Wait until thread `i` is queued before starting the next one.
            while semaphore.state.lock().waiters.len() < i + 1 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        drop(held);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*order.lock(), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_released_permit_goes_to_the_waiter_not_back_to_the_pool() {
        let semaphore = Arc::new(FairSemaphore::new(1));
        let first = semaphore.acquire();
        let (release_waiter, until_released) = std::sync::mpsc::channel::<()>();
        let waiter = {
            let semaphore = Arc::clone(&semaphore);
            thread::spawn(move || {
                let _permit = semaphore.acquire();
                until_released.recv().unwrap();
            })
        };
        while semaphore.state.lock().waiters.is_empty() {
            thread::sleep(Duration::from_millis(1));
        }
        drop(first);
        // The permit now belongs to the waiter, whether or not it has woken:
        // a newcomer finds nothing available and must queue behind it.
        assert_eq!(semaphore.state.lock().available, 0);
        release_waiter.send(()).unwrap();
        waiter.join().unwrap();
        assert_eq!(semaphore.state.lock().available, 1);
    }
}
