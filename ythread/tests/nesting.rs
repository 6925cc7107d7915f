//! Work running under a strategy that drives a handler with that same
//! strategy: the nested work runs in place, on the outer work's thread,
//! instead of waiting for the permit or the worker the outer work holds.
//!
//! Without that rule every test here with `Exclusive`, `Bounded(1)` or
//! `Pool(1)` deadlocks, so each one runs under a watchdog: a deadlock fails
//! the test instead of hanging it.

mod common;

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, Thread};
use std::time::Duration;

use ythread::{
    Apply, Bounded, Exclusive, Inline, Pool, Yieldable, YieldableThread, offload, yieldable,
};

/// How long a test body may take before it counts as deadlocked.
const DEADLOCK_AFTER: Duration = Duration::from_secs(20);

/// [`common::watchdog`] with [`DEADLOCK_AFTER`].
fn watchdog<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    common::watchdog(DEADLOCK_AFTER, body)
}

/// A strategy, as the level of a [`chain`] sees it.
type Level<'a> = &'a (dyn Apply + Sync);

/// One handler per level, the outermost driven with `levels[0]`: its work
/// drives the next level's handler with `levels[1]`, and so on. Returns each
/// level's depth counted from the innermost, as decimal digits, outermost
/// first (`321` for three levels), and the thread each level's work ran on.
#[yieldable]
fn chain(levels: &[Level<'_>]) -> (u64, Vec<Thread>) {
    let (inner, threads) = offload!(|| {
        let mut threads = vec![thread::current()];
        let mut inner = 0;
        if levels.len() > 1 {
            let (value, deeper) = run_chain(&levels[1..]);
            threads.extend(deeper);
            inner = value;
        }
        (inner, threads)
    });
    // Arithmetic after the `offload!`: the handler resumed with the result.
    let depth = levels.len() as u64;
    (depth * 10u64.pow(depth as u32 - 1) + inner, threads)
}

fn run_chain(levels: &[Level<'_>]) -> (u64, Vec<Thread>) {
    chain(levels).run_with(levels[0])
}

/// `depth` levels of the same strategy.
fn nest(apply: &(dyn Apply + Sync), depth: usize) -> (u64, Vec<Thread>) {
    run_chain(&vec![apply; depth])
}

#[yieldable]
fn panics() -> u64 {
    offload!(|| -> u64 { panic!("nested work panicked") })
}

/// A handler that catches the panic of its own work at its `offload!` point.
#[yieldable]
fn catches_its_work_s_panic() -> String {
    let caught = panic::catch_unwind(AssertUnwindSafe(|| {
        offload!(|| -> u64 { panic!("nested work panicked") })
    }));
    common::panic_text(&*caught.unwrap_err()).to_owned()
}

/// Drives a nested handler whose work panics, and that catches the panic at
/// its own `offload!` point.
#[yieldable]
fn catches_at_the_inner_offload(apply: &(dyn Apply + Sync)) -> String {
    offload!(|| catches_its_work_s_panic().run_with(apply))
}

/// Drives a nested handler whose work panics and that does not catch it:
/// the panic reaches this handler's `offload!` point, where it is caught.
#[yieldable]
fn catches_at_the_outer_offload(apply: &(dyn Apply + Sync)) -> String {
    let caught = panic::catch_unwind(AssertUnwindSafe(|| offload!(|| panics().run_with(apply))));
    common::panic_text(&*caught.unwrap_err()).to_owned()
}

/// Checks that `capacity` handler threads sharing `apply` run their work all
/// at once: no permit leaked, no worker lost.
fn serves_its_full_capacity<A: Apply + Clone + Send + 'static>(apply: &A, capacity: usize) {
    let arrived = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..capacity)
        .map(|_| {
            YieldableThread::new()
                .apply(apply.clone())
                .spawn(common::meets(Arc::clone(&arrived), capacity))
                .unwrap()
        })
        .collect();
    for t in threads {
        assert!(
            t.join().unwrap(),
            "fewer than {capacity} pieces of work ran at once"
        );
    }
}

/// Tracks how many pieces of work are running and the most seen at once.
#[derive(Default)]
struct Concurrency {
    running: AtomicUsize,
    max: AtomicUsize,
}

impl Concurrency {
    fn during<R>(&self, work: impl FnOnce() -> R) -> R {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        let value = work();
        self.running.fetch_sub(1, Ordering::SeqCst);
        value
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// Outer work that overlaps with other threads' for a while, then drives a
/// nested handler with the same strategy whose work does the same.
#[yieldable]
fn overlaps<A: Apply + Sync>(apply: A, outer: Arc<Concurrency>, inner: Arc<Concurrency>) -> u64 {
    #[yieldable]
    fn nested(inner: &Concurrency) -> u64 {
        offload!(|| inner.during(|| {
            thread::sleep(Duration::from_millis(1));
            2
        }))
    }
    let mut total = 0;
    for _ in 0..6 {
        total += offload!(|| outer.during(|| {
            thread::sleep(Duration::from_millis(2));
            1 + nested(&inner).run_with(&apply)
        }));
    }
    total
}

/// Runs 4 handler threads at once, all nesting with clones of `apply`;
/// returns the most outer and the most nested pieces of work seen at once.
fn concurrency_while_nesting<A: Apply + Clone + Send + Sync + 'static>(apply: A) -> (usize, usize) {
    let (outer, inner) = (Arc::default(), Arc::default());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let handler = overlaps(apply.clone(), Arc::clone(&outer), Arc::clone(&inner));
            YieldableThread::new()
                .apply(apply.clone())
                .spawn(handler)
                .unwrap()
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 6 * 3);
    }
    (outer.max(), inner.max())
}

/// Where a strategy runs its work, relative to the thread driving the
/// handler.
#[derive(Clone, Copy)]
enum RunsOn {
    /// On the driving thread itself.
    DrivingThread,
    /// On a worker of its pool.
    Worker,
}

/// The tests every strategy must pass, one module per strategy.
///
/// `limit` is the most pieces of work the strategy runs at once (`None`:
/// unlimited); `capacity` how many it can run at once.
macro_rules! nesting_tests {
    ($($strategy:ident: $make:expr, limit: $limit:expr, capacity: $capacity:expr, runs_on: $runs_on:expr;)*) => {$(
        mod $strategy {
            use super::*;

            #[test]
            fn work_nested_two_and_three_levels_deep_returns_the_right_value() {
                watchdog(|| {
                    let apply = $make;
                    assert_eq!(nest(&apply, 1).0, 1);
                    assert_eq!(nest(&apply, 2).0, 21);
                    assert_eq!(nest(&apply, 3).0, 321);
                });
            }

            #[test]
            fn nested_work_runs_on_the_outer_work_s_thread() {
                watchdog(|| {
                    let apply = $make;
                    let (_, threads) = nest(&apply, 3);
                    let outer = &threads[0];
                    for nested in &threads[1..] {
                        assert_eq!(nested.id(), outer.id(), "nested work changed threads");
                    }
                    match $runs_on {
                        RunsOn::DrivingThread => {
                            assert_eq!(outer.id(), thread::current().id());
                        }
                        RunsOn::Worker => {
                            assert_ne!(outer.id(), thread::current().id());
                            let name = outer.name().unwrap_or_default();
                            assert!(name.starts_with("ythread-pool-"), "ran on {name:?}");
                        }
                    }
                });
            }

            #[test]
            fn a_panic_in_nested_work_surfaces_at_the_inner_offload() {
                watchdog(|| {
                    let apply = $make;
                    let message = catches_at_the_inner_offload(&apply).run_with(&apply);
                    assert_eq!(message, "nested work panicked");
                    assert_eq!(nest(&apply, 3).0, 321);
                    serves_its_full_capacity(&apply, $capacity);
                });
            }

            #[test]
            fn an_uncaught_panic_in_nested_work_surfaces_at_the_outer_offload() {
                watchdog(|| {
                    let apply = $make;
                    let message = catches_at_the_outer_offload(&apply).run_with(&apply);
                    assert_eq!(message, "nested work panicked");
                    // Uncaught all the way out of the outermost handler.
                    let payload = panic::catch_unwind(AssertUnwindSafe(|| {
                        #[yieldable]
                        fn outer(apply: &(dyn Apply + Sync)) -> u64 {
                            offload!(|| panics().run_with(apply))
                        }
                        outer(&apply).run_with(&apply)
                    }))
                    .unwrap_err();
                    assert_eq!(common::panic_text(&*payload), "nested work panicked");
                    // The permit was released, the workers are all alive.
                    assert_eq!(nest(&apply, 3).0, 321);
                    serves_its_full_capacity(&apply, $capacity);
                });
            }

            #[test]
            fn nesting_on_several_threads_at_once_keeps_the_limit() {
                watchdog(|| {
                    let (outer, inner) = concurrency_while_nesting($make);
                    let limit: Option<usize> = $limit;
                    match limit {
                        // Nesting lets no other thread in, and takes no
                        // second permit or worker: the limit is reached,
                        // never exceeded.
                        Some(limit) => {
                            assert_eq!(outer, limit, "outer work at once");
                            assert!(inner <= limit, "{inner} pieces of nested work at once");
                        }
                        None => assert!(outer > 1, "inline work was serialised"),
                    }
                });
            }
        }
    )*};
}

nesting_tests! {
    inline: Inline, limit: None, capacity: 2, runs_on: RunsOn::DrivingThread;
    exclusive: Exclusive::new(), limit: Some(1), capacity: 1, runs_on: RunsOn::DrivingThread;
    bounded_1: Bounded::new(1), limit: Some(1), capacity: 1, runs_on: RunsOn::DrivingThread;
    bounded_2: Bounded::new(2), limit: Some(2), capacity: 2, runs_on: RunsOn::DrivingThread;
    pool_1: Pool::new(1), limit: Some(1), capacity: 1, runs_on: RunsOn::Worker;
    pool_2: Pool::new(2), limit: Some(2), capacity: 2, runs_on: RunsOn::Worker;
}

#[test]
fn different_strategies_nest_exclusive_inside_a_pool_inside_bounded() {
    watchdog(|| {
        let (bounded, pool, exclusive) = (Bounded::new(1), Pool::new(1), Exclusive::new());
        // Back into the pool from its own worker, and back into the lock
        // while holding it: both in place.
        let levels: [Level<'_>; 5] = [&bounded, &pool, &exclusive, &pool, &exclusive];
        let (value, threads) = run_chain(&levels);
        assert_eq!(value, 54321);
        assert_eq!(threads[0].id(), thread::current().id(), "bounded work");
        assert!(threads[1].name().unwrap().starts_with("ythread-pool-"));
        for (level, worker) in threads.iter().enumerate().skip(2) {
            assert_eq!(
                worker.id(),
                threads[1].id(),
                "level {level} left the worker"
            );
        }
    });
}

#[test]
fn a_pool_worker_runs_only_its_own_pool_s_work_in_place() {
    watchdog(|| {
        let (p, q) = (Pool::new(2), Pool::new(2));
        // Each level goes to the other pool, which must hand it to one of
        // its own workers: four different threads.
        let levels: [Level<'_>; 4] = [&p, &q, &p, &q];
        let (value, threads) = run_chain(&levels);
        assert_eq!(value, 4321);
        for (i, a) in threads.iter().enumerate() {
            for b in &threads[i + 1..] {
                assert_ne!(a.id(), b.id(), "ran on {:?} twice", a.name());
            }
        }
    });
}

#[test]
fn a_thread_holding_two_locks_runs_work_nested_in_either_in_place() {
    watchdog(|| {
        let (a, b) = (Exclusive::new(), Bounded::new(1));
        let levels: [Level<'_>; 5] = [&a, &b, &a, &b, &a];
        let (value, threads) = run_chain(&levels);
        assert_eq!(value, 54321);
        for worker in &threads {
            assert_eq!(worker.id(), thread::current().id());
        }
    });
}

#[test]
fn different_strategies_nest_on_several_threads_at_once() {
    watchdog(|| {
        let (bounded, pool, exclusive) = (Bounded::new(2), Pool::new(1), Exclusive::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (bounded, pool, exclusive) = (bounded.clone(), pool.clone(), exclusive.clone());
                thread::spawn(move || {
                    // Every thread takes the strategies in the same order,
                    // so no thread holds one while waiting for another
                    // that a waiter for the first holds.
                    let levels: [Level<'_>; 5] = [&bounded, &pool, &exclusive, &pool, &exclusive];
                    (0..5).map(|_| run_chain(&levels).0).collect::<Vec<_>>()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), [54321; 5]);
        }
    });
}
