//! Strategies and handlers as ordinary values: references, boxes and `Arc`s
//! of strategies (`dyn` included), closures through `apply_fn`, a rayon
//! pool, and boxed handlers of different types stored together.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use ythread::{
    Apply, BoxYieldable, Exclusive, Inline, Pool, Yieldable, YieldableThread, apply_fn, offload,
    yield_from, yieldable,
};

fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
fn handle(n: u64) -> u64 {
    offload!(sumn, n)
}

fn spawn_with<A: Apply + Send + 'static>(apply: A) -> u64 {
    YieldableThread::new()
        .apply(apply)
        .spawn(handle(10))
        .unwrap()
        .join()
        .unwrap()
}

static POOL: LazyLock<Pool> = LazyLock::new(|| Pool::new(1));

#[test]
fn references_boxes_and_arcs_of_strategies_are_strategies() {
    // Sized.
    assert_eq!(spawn_with(&*POOL), 55);
    assert_eq!(spawn_with(Box::new(Pool::new(1))), 55);
    assert_eq!(spawn_with(Arc::new(Exclusive::new())), 55);
    // Unsized.
    let boxed: Box<dyn Apply + Send> = Box::new(Pool::new(1));
    assert_eq!(spawn_with(boxed), 55);
    let shared: Arc<dyn Apply + Send + Sync> = Arc::new(Pool::new(1));
    assert_eq!(spawn_with(Arc::clone(&shared)), 55);
    assert_eq!(spawn_with(shared), 55);
    let by_ref: &dyn Apply = &Inline;
    assert_eq!(handle(10).run_with(by_ref), 55);
    assert_eq!(handle(10).run_with(&by_ref), 55);
}

/// What a command-line flag picks.
fn strategy(flag: &str) -> Arc<dyn Apply + Send + Sync> {
    match flag {
        "pool" => Arc::new(Pool::new(2)),
        "exclusive" => Arc::new(Exclusive::new()),
        _ => Arc::new(Inline),
    }
}

#[test]
fn a_strategy_picked_at_run_time_is_one_value_shared_by_threads() {
    for flag in ["pool", "exclusive", "inline"] {
        let cpu = strategy(flag);
        let threads: Vec<_> = (1..=4)
            .map(|n| {
                YieldableThread::new()
                    .apply(Arc::clone(&cpu))
                    .spawn(handle(n))
                    .unwrap()
            })
            .collect();
        let sums: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(sums, [1, 3, 6, 10], "{flag}");
    }
}

#[test]
fn closures_are_strategies_through_apply_fn_without_annotations() {
    let ran = AtomicUsize::new(0);
    let counting = apply_fn(|job| {
        ran.fetch_add(1, Ordering::SeqCst);
        job.run();
    });
    assert_eq!(handle(4).run_with(&counting), 10);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    // Moved into a thread, as a `Send` closure.
    let on_scoped_threads = apply_fn(|job| {
        std::thread::scope(|s| {
            s.spawn(move || job.run());
        });
    });
    assert_eq!(spawn_with(on_scoped_threads), 55);
}

#[cfg(feature = "rayon")]
#[test]
fn a_rayon_pool_is_a_strategy() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .thread_name(|i| format!("rayon-{i}"))
        .build()
        .unwrap();
    #[yieldable]
    fn where_it_runs() -> Option<String> {
        offload!(|| std::thread::current().name().map(str::to_owned))
    }
    let worker = where_it_runs()
        .run_with(&pool)
        .expect("a named rayon thread");
    assert!(worker.starts_with("rayon-"), "{worker}");
    assert_eq!(handle(10).run_with(&pool), 55);
    // Work that runs a handler with the same pool runs it in place (rayon's
    // `install` from one of its own threads).
    #[yieldable]
    fn nested(pool: &rayon::ThreadPool) -> u64 {
        offload!(|| handle(10).run_with(pool))
    }
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    assert_eq!(nested(&single).run_with(&single), 55);
    // Shared, behind an `Arc`.
    assert_eq!(spawn_with(Arc::new(pool)), 55);
}

#[yieldable]
fn doubled(inner: BoxYieldable<'static, u64>) -> u64 {
    2 * yield_from!(inner)
}

#[yieldable]
fn borrows(text: &str) -> usize {
    offload!(|| text.len())
}

#[test]
fn boxed_handlers_of_different_types_run_spawn_and_nest_like_any_other() {
    let handlers = || -> Vec<BoxYieldable<'static, u64>> {
        vec![
            handle(3).boxed(),
            doubled(handle(2).boxed()).boxed(),
            (|| 7).boxed(),
            handle(4).with_stack_size(64 * 1024).boxed(),
        ]
    };
    let expected = [6, 6, 7, 10];
    let ran: Vec<u64> = handlers().into_iter().map(Yieldable::run).collect();
    assert_eq!(ran, expected);
    let pool = Pool::new(2);
    let ran: Vec<u64> = handlers().into_iter().map(|h| h.run_with(&pool)).collect();
    assert_eq!(ran, expected);
    let threads: Vec<_> = handlers()
        .into_iter()
        .map(|h| YieldableThread::new().apply(pool.clone()).spawn(h).unwrap())
        .collect();
    let ran: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(ran, expected);
    // Stepped by hand.
    let value = common::run_by_hand(handle(5).boxed().start());
    assert_eq!(value, 15);
    // Borrowing, for a shorter lifetime.
    let text = String::from("four");
    let boxed: BoxYieldable<'_, usize> = borrows(&text).boxed();
    assert_eq!(boxed.run(), 4);
}

#[test]
fn a_boxed_closure_still_runs_on_the_thread_s_own_stack() {
    /// Deeper than a small coroutine stack allows.
    #[inline(never)]
    fn recurse(n: u32) -> u32 {
        let frame = std::hint::black_box([1u8; 512]);
        if n == 0 {
            0
        } else {
            std::hint::black_box(recurse(n - 1) + u32::from(frame[1]))
        }
    }
    let thread = YieldableThread::new()
        .coroutine_stack_size(16 * 1024)
        .spawn((|| recurse(1000)).boxed())
        .unwrap();
    assert_eq!(thread.join().unwrap(), 1000);
}
