//! The strategies' guarantees: how many pieces of work run at once, where
//! they run, that the handler resumes only after its work has finished, and
//! that a pool survives panicking work.

mod common;

use std::panic;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use ythread::apply_fn;
use ythread::{
    Apply, Bounded, Exclusive, Inline, Pool, Yieldable, YieldableThread, offload, yieldable,
};

/// Tracks how many pieces of work are running and the most seen at once.
#[derive(Default)]
struct Concurrency {
    running: AtomicUsize,
    max: AtomicUsize,
}

impl Concurrency {
    /// A piece of work that overlaps with others for `hold`.
    fn work(&self, hold: Duration) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        thread::sleep(hold);
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[yieldable]
fn busy(concurrency: Arc<Concurrency>, pieces: usize) {
    for _ in 0..pieces {
        offload!(|| concurrency.work(Duration::from_millis(3)));
    }
}

/// Runs every handler at once, each on its own `YieldableThread` with its
/// own strategy, and returns their values in order.
fn run_together<A, H>(runs: impl IntoIterator<Item = (A, H)>) -> Vec<H::Output>
where
    A: Apply + Send + 'static,
    H: Yieldable + Send + 'static,
    H::Output: Send + 'static,
{
    let handles: Vec<_> = runs
        .into_iter()
        .map(|(apply, handler)| YieldableThread::new().apply(apply).spawn(handler).unwrap())
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Runs `threads` handler threads sharing clones of `apply`, each offloading
/// `pieces` pieces of work, and returns the most that ran at once.
fn max_concurrency<A: Apply + Clone + Send + 'static>(apply: A, threads: usize) -> usize {
    let concurrency = Arc::new(Concurrency::default());
    run_together((0..threads).map(|_| (apply.clone(), busy(Arc::clone(&concurrency), 8))));
    assert_eq!(concurrency.running.load(Ordering::SeqCst), 0);
    concurrency.max.load(Ordering::SeqCst)
}

#[test]
fn exclusive_runs_one_piece_of_work_at_a_time() {
    assert_eq!(max_concurrency(Exclusive::new(), 8), 1);
}

#[test]
fn bounded_runs_at_most_its_limit_at_once_and_reaches_it() {
    for limit in [1, 2, 3] {
        assert_eq!(
            max_concurrency(Bounded::new(limit), 8),
            limit,
            "limit {limit}"
        );
    }
}

#[test]
fn a_pool_runs_at_most_one_piece_per_worker_and_uses_them_all() {
    assert_eq!(max_concurrency(Pool::new(3), 8), 3);
}

#[test]
fn inline_does_not_limit_concurrency() {
    // Eight handler threads, each running its own work: nothing serialises
    // them, so more than one runs at once (how many depends on the OS).
    assert!(max_concurrency(Inline, 8) > 1);
}

#[test]
fn separately_created_locks_do_not_share_their_limit() {
    // `max_concurrency` shares clones of one lock; two `Exclusive::new()`
    // are two locks, so two pieces of work run at once.
    let concurrency = Arc::new(Concurrency::default());
    run_together((0..2).map(|_| (Exclusive::new(), busy(Arc::clone(&concurrency), 20))));
    assert_eq!(concurrency.max.load(Ordering::SeqCst), 2);
}

#[yieldable]
fn sees_the_work_finished(apply_delay: Duration) -> bool {
    let mut finished = false;
    offload!(|| {
        thread::sleep(apply_delay);
        finished = true;
    });
    finished
}

#[test]
fn the_handler_resumes_only_after_its_work_has_finished() {
    let strategies: Vec<Box<dyn Apply + Send>> = vec![
        Box::new(Inline),
        Box::new(Exclusive::new()),
        Box::new(Bounded::new(2)),
        Box::new(Pool::new(2)),
    ];
    for apply in strategies {
        let handler = sees_the_work_finished(Duration::from_millis(20));
        let t = YieldableThread::new()
            .apply(apply_fn(move |job| apply.apply(job)))
            .spawn(handler)
            .unwrap();
        assert!(t.join().unwrap());
    }
}

#[yieldable]
fn panics_n_times(times: usize) -> usize {
    let mut caught = 0;
    for i in 0..times {
        let result =
            panic::catch_unwind(|| offload!(|| common::quietly(|| panic!("work panic {i}"))));
        caught += usize::from(result.is_err());
    }
    caught
}

#[test]
fn a_pool_keeps_all_its_workers_after_panicking_work() {
    let pool = Pool::new(3);
    let caught = YieldableThread::new()
        .apply(pool.clone())
        .spawn(panics_n_times(30))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(caught, 30);
    assert_eq!(pool.threads(), 3);

    // All three workers must still be alive to hold three pieces of work at once.
    let arrived = Arc::new(AtomicUsize::new(0));
    let met = run_together((0..3).map(|_| (pool.clone(), common::meets(Arc::clone(&arrived), 3))));
    for met in met {
        assert!(met, "a worker is missing");
    }
}

#[test]
fn dropping_the_last_pool_clone_stops_its_workers() {
    let pool = Pool::new(2);
    let worker_alive = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&worker_alive);
    // A thread-local whose destructor runs when the worker thread exits.
    struct OnExit(Arc<AtomicBool>);
    impl Drop for OnExit {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }
    thread_local! {
        static ON_EXIT: std::cell::RefCell<Option<OnExit>> = const { std::cell::RefCell::new(None) };
    }
    #[yieldable]
    fn install(flag: Arc<AtomicBool>) {
        offload!(|| {
            flag.store(true, Ordering::SeqCst);
            ON_EXIT.with(|slot| *slot.borrow_mut() = Some(OnExit(flag)));
        });
    }
    YieldableThread::new()
        .apply(pool.clone())
        .spawn(install(flag))
        .unwrap()
        .join()
        .unwrap();
    assert!(worker_alive.load(Ordering::SeqCst));
    drop(pool);
    // `Drop` joins the workers, so the thread-local is gone by now.
    assert!(!worker_alive.load(Ordering::SeqCst));
}

#[test]
fn pool_and_bounded_report_their_size() {
    assert_eq!(Pool::new(3).threads(), 3);
    assert_eq!(Bounded::new(5).limit(), 5);
    assert!(Pool::default().threads() >= 1);
    assert!(Bounded::per_core().limit() >= 1);
}

#[test]
#[should_panic(expected = "at least 1")]
fn a_zero_limit_is_refused() {
    let _ = Bounded::new(0);
}

#[yieldable]
fn many_tiny_offloads(seed: u64, times: u64) -> u64 {
    let mut acc = seed;
    for i in 0..times {
        let local = [acc, i];
        acc = offload!(|| local[0].wrapping_mul(31).wrapping_add(local[1]));
    }
    acc
}

#[test]
fn many_threads_hammering_a_small_pool_get_their_own_results() {
    // Each result depends on every step before it, so a job run twice, run
    // for the wrong handler, or a handler resumed early would show up here.
    let expected =
        |seed: u64| (0..2_000u64).fold(seed, |acc, i| acc.wrapping_mul(31).wrapping_add(i));
    let pool = Pool::new(2);
    let results =
        run_together((0..8u64).map(|seed| (pool.clone(), many_tiny_offloads(seed, 2_000))));
    for (seed, result) in results.into_iter().enumerate() {
        assert_eq!(result, expected(seed as u64));
    }
}
