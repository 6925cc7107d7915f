//! Offloading from any call depth: `ythread::offload(|| work)` in helpers,
//! callbacks and `macro_rules!` wrappers called by a handler; `in_handler`;
//! and `run()` called inside a running handler, which joins it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use ythread::{
    Apply, Bounded, Exclusive, GeneratorState, Inline, Pool, Yieldable, YieldableThread, apply_fn,
    in_handler, yieldable,
};

fn thread_name() -> Option<String> {
    thread::current().name().map(str::to_owned)
}

/// A library helper that knows nothing of handlers.
fn helper_offloads(n: u64) -> (u64, Option<String>) {
    ythread::offload(move || ((1..=n).sum(), thread_name()))
}

/// A `macro_rules!` wrapper around the function form, timing the work.
macro_rules! timed {
    ($work:expr) => {{
        let start = std::time::Instant::now();
        let value = ythread::offload(|| $work);
        (value, start.elapsed())
    }};
}

#[yieldable]
fn deep(n: u64) -> (u64, Option<String>, u64, bool) {
    fn level_two(n: u64) -> (u64, Option<String>) {
        level_three(n)
    }
    fn level_three(n: u64) -> (u64, Option<String>) {
        helper_offloads(n)
    }
    let (sum, worker) = level_two(n);
    let (doubled, _) = timed!(sum * 2);
    let from_callback = [1u64, 2, 3]
        .iter()
        .map(|&x| ythread::offload(move || x * 10))
        .sum::<u64>();
    (doubled, worker, from_callback, in_handler())
}

/// Counts the jobs a strategy gets, then hands them to `inner`.
fn counting<A: Apply + Send + Sync + 'static>(
    inner: A,
) -> (Arc<AtomicUsize>, impl Apply + Send + Sync + 'static) {
    let jobs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&jobs);
    let apply = apply_fn(move |job| {
        counter.fetch_add(1, Ordering::SeqCst);
        inner.apply(job);
    });
    (jobs, apply)
}

#[test]
fn the_function_form_offloads_from_any_depth_to_the_running_strategy() {
    let strategies: Vec<(&str, Box<dyn Apply + Send + Sync>)> = vec![
        ("inline", Box::new(Inline)),
        ("exclusive", Box::new(Exclusive::new())),
        ("bounded", Box::new(Bounded::new(2))),
        ("pool", Box::new(Pool::new(1))),
    ];
    for (name, strategy) in strategies {
        let (jobs, apply) = counting(strategy);
        let thread = YieldableThread::new()
            .name("handler".into())
            .apply(apply)
            .spawn(deep(10))
            .unwrap();
        let (doubled, worker, from_callback, inside) = thread.join().unwrap();
        assert_eq!((doubled, from_callback, inside), (110, 60, true), "{name}");
        // Helper, wrapper, three callbacks.
        assert_eq!(jobs.load(Ordering::SeqCst), 5, "{name}");
        let expected_worker = if name == "pool" {
            "ythread-pool-0"
        } else {
            "handler"
        };
        assert_eq!(worker.as_deref(), Some(expected_worker), "{name}");
    }
}

#[test]
fn outside_a_handler_the_work_runs_in_place() {
    assert!(!in_handler());
    let here = thread_name();
    assert_eq!(helper_offloads(4), (10, here));
    let (value, _) = timed!(7);
    assert_eq!(value, 7);
}

#[yieldable]
fn asks_from_its_work() -> (bool, bool, Option<String>) {
    let (inside_work, worker) = ythread::offload(|| {
        // On the strategy, not in the handler: the nested call runs in place.
        let nested = ythread::offload(thread_name);
        (in_handler(), nested)
    });
    (in_handler(), inside_work, worker)
}

#[test]
fn work_running_on_a_strategy_is_not_inside_the_handler() {
    let (inside, inside_work, worker) = asks_from_its_work().run_with(&Pool::new(1));
    assert!(inside);
    assert!(!inside_work);
    assert_eq!(worker.as_deref(), Some("ythread-pool-0"));
    let (inside, inside_work, _) = asks_from_its_work().run();
    assert!(inside && !inside_work);
}

#[yieldable]
fn inner_names_its_worker() -> Option<String> {
    ythread::offload(thread_name)
}

#[yieldable]
fn steps_another_handler_by_hand() -> (Option<String>, usize, Option<String>) {
    // A generator stepped inside this handler: while it runs, its own body is
    // the innermost handler, so its work comes here as a job.
    let mut inner = inner_names_its_worker().start();
    let mut jobs = 0;
    let inner_worker = loop {
        match inner.resume() {
            GeneratorState::Yielded(job) => {
                jobs += 1;
                job.run();
            }
            GeneratorState::Complete(value) => break value,
        }
    };
    // And this handler's own work goes to its strategy.
    (inner_worker, jobs, ythread::offload(thread_name))
}

#[test]
fn the_innermost_running_handler_gets_the_work() {
    let thread = YieldableThread::new()
        .name("outer".into())
        .apply(Pool::new(1))
        .spawn(steps_another_handler_by_hand())
        .unwrap();
    let (inner_worker, jobs, outer_worker) = thread.join().unwrap();
    assert_eq!(jobs, 1);
    // The stepped generator's job was run right here, on the outer handler's
    // coroutine, on the thread "outer".
    assert_eq!(inner_worker.as_deref(), Some("outer"));
    assert_eq!(outer_worker.as_deref(), Some("ythread-pool-0"));
}

#[yieldable]
fn helper_runs_a_handler() -> (Option<String>, Option<String>) {
    fn helper() -> Option<String> {
        inner_names_its_worker().run()
    }
    let via_run = helper();
    (via_run, ythread::offload(thread_name))
}

#[test]
fn run_inside_a_handler_joins_it_and_uses_its_strategy() {
    let (jobs, apply) = counting(Pool::new(1));
    let (via_run, own) = helper_runs_a_handler().run_with(&apply);
    assert_eq!(via_run.as_deref(), Some("ythread-pool-0"));
    assert_eq!(own.as_deref(), Some("ythread-pool-0"));
    assert_eq!(jobs.load(Ordering::SeqCst), 2);
    // Outside a handler, `run` runs the work inline.
    assert_eq!(inner_names_its_worker().run(), thread_name());
}

/// A local whose destructor offloads: it runs while a dropped handler
/// unwinds, where the work must run in place.
struct OffloadsOnDrop(Arc<AtomicUsize>);

impl Drop for OffloadsOnDrop {
    fn drop(&mut self) {
        let ran = ythread::offload(|| 1);
        // Its work runs inline, here, whether the handler is unwinding or not.
        let also = inner_names_its_worker().run();
        self.0
            .fetch_add(ran + usize::from(also == thread_name()), Ordering::SeqCst);
    }
}

#[yieldable]
fn holds_an_offloading_local(count: Arc<AtomicUsize>) -> u64 {
    let _local = OffloadsOnDrop(count);
    ythread::offload(|| 5)
}

#[test]
fn destructors_of_a_dropped_handler_offload_in_place() {
    let count = Arc::new(AtomicUsize::new(0));
    let mut generator = holds_an_offloading_local(Arc::clone(&count)).start();
    assert!(matches!(generator.resume(), GeneratorState::Yielded(_)));
    drop(generator);
    assert_eq!(count.load(Ordering::SeqCst), 2);
    // Run to the end, the destructor runs inside the handler.
    let count = Arc::new(AtomicUsize::new(0));
    assert_eq!(holds_an_offloading_local(Arc::clone(&count)).run(), 5);
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[yieldable]
fn names_its_worker_after_others_started() -> Option<String> {
    ythread::offload(thread_name)
}

#[test]
fn the_handler_is_found_among_many_live_stacks() {
    // Many suspended handlers, each on its own stack, on this thread.
    let mut others: Vec<_> = (0..300).map(|_| inner_names_its_worker().start()).collect();
    for generator in &mut others {
        assert!(matches!(generator.resume(), GeneratorState::Yielded(_)));
    }
    let worker = names_its_worker_after_others_started().run_with(&Pool::new(1));
    assert_eq!(worker.as_deref(), Some("ythread-pool-0"));
    assert!(!in_handler());
    drop(others);
}
