//! A first-come, first-served counting semaphore for `Bounded` and
//! `Exclusive`.
//!
//! (Over 500 lines with its tests: the semaphore itself is about 330, its
//! unit tests and loom models the rest, kept beside the code they check.)
//!
//! Fairness is the point: a released permit is handed directly to the
//! longest-waiting thread, so a thread that releases and immediately asks
//! again goes to the back of the queue instead of barging ahead.
//!
//! Each thread also knows the semaphores whose permits the work running on
//! it holds, so that work nested inside that work runs under the permit it
//! already has instead of waiting for a second one: see
//! [`FairSemaphore::run`].

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::ptr;

// Under `--cfg loom` (`scripts/loom`), loom's models of these, so that the
// model checker explores every interleaving of the admission.
use super::loom::thread::{self, Thread};
use super::loom::{Arc, AtomicBool, Mutex, Ordering};
use super::steer::Steer;

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
/// unparks `thread`, handing its permit over, and steers the wake-up to the
/// core it frees (see `steer.rs`).
struct Waiter {
    granted: AtomicBool,
    thread: Thread,
    steer: Steer,
}

/// A held permit; dropping it releases the permit.
pub(crate) struct Permit<'a> {
    semaphore: &'a FairSemaphore,
}

#[cfg(not(loom))]
thread_local! {
    /// The semaphores whose permits work running on this thread holds. No
    /// destructor, so it stays usable while other thread-locals are being
    /// destroyed (a handler may run from a thread-local's `Drop`).
    static HELD: HeldHere = const { HeldHere::new() };
}

#[cfg(loom)]
loom::thread_local! {
    static HELD: HeldHere = HeldHere::new();
}

/// How many semaphores a thread tracks at once. Work on one thread holding
/// permits of more different semaphores at once than this is not tracked
/// beyond it: nested work for those runs only after a permit of its own.
const CAPACITY: usize = 16;

/// A set of semaphores, by address, each entered by the `FairSemaphore::run`
/// call that took its permit and left when that call returns or unwinds.
///
/// Addresses are only compared, never dereferenced. Nothing here depends on
/// the calls nesting in order (a coroutine suspended inside work could break
/// that): an entry is found and removed by value.
struct HeldHere {
    /// How many semaphores are in the set, in `entries[..len]`.
    len: Cell<usize>,
    /// The entries; those from `len` on are stale.
    entries: [Cell<*const FairSemaphore>; CAPACITY],
}

/// Keeps a semaphore in this thread's set of held ones until dropped.
struct Held<'a> {
    /// The semaphore whose permit the work running on this thread holds, if
    /// the set had room for it.
    semaphore: Option<&'a FairSemaphore>,
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

    /// Runs `work` on this thread under a permit of this semaphore.
    ///
    /// If work running on this thread already holds one, `work` is nested
    /// inside it (the outer work waits for it, further up this thread's
    /// stack) and runs under that permit, in place: waiting for a second one
    /// could wait forever for the one held up there. Otherwise it waits its
    /// turn for a permit of its own.
    #[inline]
    pub(crate) fn run<R>(&self, work: impl FnOnce() -> R) -> R {
        if self.held_here() {
            return work();
        }
        // Dropped in reverse order, also when `work` unwinds: the permit
        // leaves the set before it is released.
        let _permit = self.acquire();
        let _held = Held::enter(self);
        work()
    }

    /// [`run`](FairSemaphore::run), if a permit comes before `deadline`;
    /// `None` (and `work` not run) if it does not.
    #[cfg(feature = "remote")]
    pub(crate) fn run_until<R>(
        &self,
        deadline: std::time::Instant,
        work: impl FnOnce() -> R,
    ) -> Option<R> {
        if self.held_here() {
            return Some(work());
        }
        let _permit = self.acquire_until(deadline)?;
        let _held = Held::enter(self);
        Some(work())
    }

    /// [`acquire`](FairSemaphore::acquire), giving up at `deadline`.
    #[cfg(feature = "remote")]
    fn acquire_until(&self, deadline: std::time::Instant) -> Option<Permit<'_>> {
        let waiter = match self.take_or_queue() {
            Ok(permit) => return Some(permit),
            Err(waiter) => waiter,
        };
        loop {
            if waiter.granted.load(Ordering::Acquire) {
                waiter.steer.running();
                return Some(Permit { semaphore: self });
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                // Leave the queue, unless the permit came meanwhile: it is
                // granted under the lock, so looking under it decides.
                let mut state = self.state.lock();
                let queued = state.waiters.len();
                state.waiters.retain(|queued| !Arc::ptr_eq(queued, &waiter));
                if state.waiters.len() < queued {
                    return None;
                }
                // No longer queued: a release took this waiter off the queue,
                // and granted it the permit under the lock. Take it, or it
                // would be lost.
                debug_assert!(waiter.granted.load(Ordering::Acquire));
                waiter.steer.running();
                return Some(Permit { semaphore: self });
            }
            thread::park_timeout(deadline - now);
        }
    }

    /// Whether work running on this thread holds a permit of this semaphore.
    #[inline]
    fn held_here(&self) -> bool {
        HELD.with(|held| held.contains(self))
    }

    /// Waits, in arrival order, for a permit.
    fn acquire(&self) -> Permit<'_> {
        let waiter = match self.take_or_queue() {
            Ok(permit) => return permit,
            Err(waiter) => waiter,
        };
        // `park` may wake spuriously, and other code on this thread may have
        // left an unpark token behind: only `granted` counts.
        while !waiter.granted.load(Ordering::Acquire) {
            thread::park();
        }
        waiter.steer.running();
        Permit { semaphore: self }
    }

    /// A permit if one is free and no one waits; else this thread, queued.
    fn take_or_queue(&self) -> Result<Permit<'_>, Arc<Waiter>> {
        if let Some(permit) = self.try_take() {
            return Ok(permit);
        }
        // Made outside the lock: it allocates, and `Steer` asks the system
        // which cores this thread may use.
        let waiter = Arc::new(Waiter {
            granted: AtomicBool::new(false),
            thread: thread::current(),
            steer: Steer::current(),
        });
        let mut state = self.state.lock();
        // A permit may have come back meanwhile.
        if state.available > 0 {
            state.available -= 1;
            return Ok(Permit { semaphore: self });
        }
        state.waiters.push_back(Arc::clone(&waiter));
        Err(waiter)
    }

    /// A permit if one is free (then no one waits).
    fn try_take(&self) -> Option<Permit<'_>> {
        let mut state = self.state.lock();
        if state.available == 0 {
            return None;
        }
        state.available -= 1;
        Some(Permit { semaphore: self })
    }

    fn release(&self) {
        let next = {
            let mut state = self.state.lock();
            match state.waiters.pop_front() {
                Some(next) => {
                    // The permit goes straight to the next waiter; it is
                    // never "free" for a newcomer to grab. Granted under the
                    // lock: a waiter that is no longer queued has its permit
                    // (see `acquire_until`).
                    next.granted.store(true, Ordering::Release);
                    next
                }
                None => {
                    state.available += 1;
                    return;
                }
            }
        };
        // Woken where this thread runs: the core it is about to free.
        next.steer.to_this_core();
        next.thread.unpark();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.semaphore.release();
    }
}

/// Forgets every permit this thread's record says its work holds: for a
/// thread about to run an unrelated handler (a `ThreadCache` thread). The
/// record is empty then unless a handler leaked a suspended one that held a
/// permit (`mem::forget`); that permit stays taken, but the next handler's
/// work must not run in place under it.
pub(crate) fn forget_held_here() {
    HELD.with(|held| held.len.set(0));
}

impl HeldHere {
    const fn new() -> Self {
        HeldHere {
            len: Cell::new(0),
            entries: [const { Cell::new(ptr::null()) }; CAPACITY],
        }
    }

    #[inline]
    fn contains(&self, semaphore: &FairSemaphore) -> bool {
        // Newest first: nested work most likely asks about the innermost.
        self.entries[..self.len.get()]
            .iter()
            .rev()
            .any(|entry| ptr::eq(entry.get(), semaphore))
    }

    /// Adds `semaphore`; false if the set is full.
    #[inline]
    fn insert(&self, semaphore: &FairSemaphore) -> bool {
        let len = self.len.get();
        let Some(entry) = self.entries.get(len) else {
            return false;
        };
        entry.set(semaphore);
        self.len.set(len + 1);
        true
    }

    /// Removes `semaphore` wherever it is; the last entry takes its place.
    #[inline]
    fn remove(&self, semaphore: &FairSemaphore) {
        let len = self.len.get();
        // Entered last, left first: what nested calls do.
        let Some(i) = (0..len)
            .rev()
            .find(|&i| ptr::eq(self.entries[i].get(), semaphore))
        else {
            return;
        };
        self.entries[i].set(self.entries[len - 1].get());
        self.len.set(len - 1);
    }
}

impl<'a> Held<'a> {
    #[inline]
    fn enter(semaphore: &'a FairSemaphore) -> Self {
        let recorded = HELD.with(|held| held.insert(semaphore));
        Held {
            semaphore: recorded.then_some(semaphore),
        }
    }
}

impl Drop for Held<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(semaphore) = self.semaphore {
            HELD.with(|held| held.remove(semaphore));
        }
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::panic::{self, AssertUnwindSafe};
    use std::sync::mpsc;
    use std::time::Duration;

    /// Runs `body` on its own thread; fails instead of hanging if it
    /// deadlocks.
    fn within_seconds<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, outcome) = mpsc::channel();
        thread::spawn(move || {
            let _ = done.send(panic::catch_unwind(AssertUnwindSafe(body)));
        });
        match outcome.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(value)) => value,
            Ok(Err(payload)) => panic::resume_unwind(payload),
            Err(_) => panic!("deadlock: no result after 20 s"),
        }
    }

    fn available(semaphore: &FairSemaphore) -> usize {
        semaphore.state.lock().available
    }

    /// Waits until `n` threads are queued for a permit of `semaphore`.
    fn until_queued(semaphore: &FairSemaphore, n: usize) {
        while semaphore.state.lock().waiters.len() < n {
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn work_nested_under_a_held_permit_runs_in_place_under_it() {
        within_seconds(|| {
            let semaphore = FairSemaphore::new(1);
            let value = semaphore.run(|| {
                semaphore.run(|| {
                    semaphore.run(|| {
                        assert!(semaphore.held_here());
                        // No second permit taken, nobody queued.
                        assert_eq!(available(&semaphore), 0);
                        assert!(semaphore.state.lock().waiters.is_empty());
                        3
                    })
                })
            });
            assert_eq!(value, 3);
            assert!(!semaphore.held_here());
            assert_eq!(available(&semaphore), 1);
        });
    }

    #[test]
    fn a_permit_of_one_semaphore_does_not_let_work_for_another_in_place() {
        within_seconds(|| {
            let (a, b) = (
                Arc::new(FairSemaphore::new(1)),
                Arc::new(FairSemaphore::new(1)),
            );
            let b_taken = b.acquire();
            let nested = {
                let (a, b) = (Arc::clone(&a), Arc::clone(&b));
                thread::spawn(move || a.run(|| b.run(|| b.held_here() && a.held_here())))
            };
            // Holding `a`, the thread still queues for `b`.
            until_queued(&b, 1);
            assert!(!nested.is_finished());
            drop(b_taken);
            assert!(nested.join().unwrap());
            assert_eq!((available(&a), available(&b)), (1, 1));
        });
    }

    #[test]
    fn a_thread_holding_permits_of_two_semaphores_runs_work_nested_in_either_in_place() {
        within_seconds(|| {
            let (a, b) = (FairSemaphore::new(1), FairSemaphore::new(1));
            a.run(|| {
                b.run(|| {
                    a.run(|| b.run(|| assert_eq!((available(&a), available(&b)), (0, 0))));
                    assert!(a.held_here() && b.held_here());
                });
                assert!(a.held_here() && !b.held_here());
                assert_eq!(available(&b), 1);
            });
            assert!(!a.held_here());
        });
    }

    #[test]
    fn a_permit_held_on_one_thread_lets_no_work_of_another_thread_in() {
        within_seconds(|| {
            let semaphore = FairSemaphore::new(1);
            thread::scope(|s| {
                semaphore.run(|| {
                    let other = s.spawn(|| semaphore.run(|| semaphore.held_here()));
                    until_queued(&semaphore, 1);
                    assert!(!other.is_finished());
                });
                // Released: the other thread gets its own permit.
            });
            assert_eq!(available(&semaphore), 1);
        });
    }

    #[test]
    fn work_that_panics_leaves_no_permit_held() {
        let (a, b) = (FairSemaphore::new(1), FairSemaphore::new(2));
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            a.run(|| b.run(|| a.run(|| panic!("work panicked"))))
        }));
        assert!(outcome.is_err());
        assert!(!a.held_here() && !b.held_here());
        assert_eq!((available(&a), available(&b)), (1, 2));
    }

    #[test]
    fn semaphores_are_tracked_up_to_the_capacity_and_left_in_any_order() {
        let semaphores: Vec<FairSemaphore> =
            (0..CAPACITY + 2).map(|_| FairSemaphore::new(1)).collect();
        let mut held: Vec<Option<Held<'_>>> =
            semaphores.iter().map(|s| Some(Held::enter(s))).collect();
        // Beyond the capacity, not tracked (nested work would wait instead).
        for (i, semaphore) in semaphores.iter().enumerate() {
            assert_eq!(semaphore.held_here(), i < CAPACITY, "{i}");
        }
        // Out of order.
        for i in [CAPACITY + 1, 0, CAPACITY - 1, 2, CAPACITY, 1, 3] {
            held[i] = None;
            for (j, semaphore) in semaphores.iter().enumerate() {
                assert_eq!(
                    semaphore.held_here(),
                    held[j].is_some() && j < CAPACITY,
                    "after leaving {i}: {j}"
                );
            }
        }
        drop(held);
        assert_eq!(HELD.with(|held| held.len.get()), 0);
    }

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

    /// Waiters that give up at their deadline while permits are released
    /// around them: no permit is lost (a waiter a release had already taken
    /// off the queue takes its permit), none is made up.
    #[cfg(feature = "remote")]
    #[test]
    fn giving_up_at_a_deadline_loses_no_permit() {
        use std::sync::atomic::AtomicUsize;
        use std::time::Instant;
        let semaphore = Arc::new(FairSemaphore::new(2));
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (semaphore, inside) = (Arc::clone(&semaphore), Arc::clone(&inside));
                thread::spawn(move || {
                    for i in 0..300u64 {
                        let deadline =
                            Instant::now() + Duration::from_micros((t * 37 + i * 13) % 200);
                        semaphore.run_until(deadline, || {
                            assert!(inside.fetch_add(1, Ordering::SeqCst) < 2, "over the limit");
                            std::hint::spin_loop();
                            inside.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let state = semaphore.state.lock();
        assert_eq!((state.available, state.waiters.len()), (2, 0));
    }
}

/// The admission of `Bounded` and `Exclusive`, model-checked: every
/// interleaving of the threads (with up to three preemptions) admits at
/// most `limit` at once, hands every released permit on, and leaves no
/// thread parked for good (loom fails a run that deadlocks). Run by
/// `scripts/loom`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;

    /// Explores the interleavings with at most three preemptions each (a
    /// bound loom recommends: bugs almost always show within two or three;
    /// without it, three threads take hours).
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    /// `threads` threads each run one piece of work under a semaphore of
    /// `limit`; the work checks how many are inside.
    fn admits_at_most(limit: usize, threads: usize) {
        model(move || {
            let semaphore = Arc::new(FairSemaphore::new(limit));
            let inside = Arc::new(AtomicUsize::new(0));
            let ran = Arc::new(AtomicUsize::new(0));
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let (semaphore, inside, ran) = (
                        Arc::clone(&semaphore),
                        Arc::clone(&inside),
                        Arc::clone(&ran),
                    );
                    thread::spawn(move || {
                        semaphore.run(|| {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(now <= limit, "{now} inside a semaphore of {limit}");
                            inside.fetch_sub(1, Ordering::SeqCst);
                            ran.fetch_add(1, Ordering::SeqCst);
                        });
                    })
                })
                .collect();
            for handle in handles {
                handle.join().unwrap();
            }
            assert_eq!(ran.load(Ordering::SeqCst), threads);
            // Every permit is back.
            assert_eq!(semaphore.state.lock().available, limit);
            assert!(semaphore.state.lock().waiters.is_empty());
        });
    }

    #[test]
    fn exclusive_two_threads() {
        admits_at_most(1, 2);
    }

    #[test]
    fn exclusive_three_threads() {
        admits_at_most(1, 3);
    }

    #[test]
    fn bounded_two_of_three() {
        admits_at_most(2, 3);
    }

    /// Work nested under a held permit runs in place, on the same thread,
    /// while another thread waits for the only permit.
    #[test]
    fn nested_work_runs_under_the_held_permit() {
        model(|| {
            let semaphore = Arc::new(FairSemaphore::new(1));
            let other = {
                let semaphore = Arc::clone(&semaphore);
                thread::spawn(move || semaphore.run(|| 1))
            };
            let nested = semaphore.run(|| semaphore.run(|| 2));
            assert_eq!(nested + other.join().unwrap(), 3);
        });
    }
}

/// The steering of a woken waiter (`steer.rs`), through the semaphore that
/// does it.
#[cfg(all(test, not(loom)))]
mod steering_tests {
    use super::*;
    use crate::sync::steer::cores_of_this_thread;
    use std::sync::atomic::AtomicUsize;

    /// A waiter steered to its releaser's core gets its own cores back once
    /// it runs, every time, while threads race through a semaphore of one:
    /// a restriction never outlives the wake-up it was made for.
    #[test]
    fn a_woken_waiter_runs_with_its_own_cores_again() {
        let semaphore = Arc::new(FairSemaphore::new(1));
        let own = cores_of_this_thread();
        let mismatches = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (semaphore, own, mismatches) =
                    (Arc::clone(&semaphore), own.clone(), Arc::clone(&mismatches));
                thread::spawn(move || {
                    for _ in 0..300 {
                        semaphore.run(|| {
                            if cores_of_this_thread() != own {
                                mismatches.fetch_add(1, Ordering::Relaxed);
                            }
                            std::hint::black_box((0..2_000u64).sum::<u64>());
                        });
                    }
                    // And after the permit is gone.
                    cores_of_this_thread() == own
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().unwrap());
        }
        assert_eq!(mismatches.load(Ordering::Relaxed), 0);
    }
}
