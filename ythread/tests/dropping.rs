//! Dropping a suspended handler, including handlers that catch panics, and
//! recovering from failed work with `try_offload!`.
//!
//! Dropping a handler unwinds it from its `offload!` point with
//! `HandlerDropped`: it must never hang, never panic out of `drop`, and never
//! abort the process without saying why (the abort is tested in
//! `fatal.rs`, in a child process).

mod common;

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use ythread::apply_fn;
use ythread::{
    GeneratorState, HandlerDropped, OffloadError, OffloadErrorKind, Yieldable, offload,
    try_offload, yieldable,
};

/// Counts drops, to observe unwinding.
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

thread_local! {
    /// Panic hook calls on this thread (the hook is process-wide, the count
    /// per thread, so tests running in parallel do not see each other's).
    static HOOK_CALLS: Cell<usize> = const { Cell::new(0) };
}

/// Installs, once, a hook that counts calls per thread and stays quiet for
/// the panics these tests cause on purpose.
fn count_hook_calls() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            HOOK_CALLS.set(HOOK_CALLS.get() + 1);
            let text = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("");
            if !text.starts_with("expected:") {
                default(info);
            }
        }));
    });
}

/// Resumes `generator` once and drops the job unrun; the handler is then
/// suspended at its first `offload!`.
fn suspend_at_first_offload<T>(generator: &mut ythread::Generator<T>) {
    match generator.resume() {
        GeneratorState::Yielded(_unrun) => {}
        GeneratorState::Complete(_) => panic!("the handler finished without offloading"),
    }
}

#[yieldable]
fn retries_with_try_offload(attempts: Arc<AtomicUsize>, drops: Arc<AtomicUsize>) -> u64 {
    let _local = DropCounter(drops);
    loop {
        attempts.fetch_add(1, Ordering::SeqCst);
        // `try_offload!` returns the work's failures, but lets the unwind
        // that drops the handler through.
        if let Ok(value) = try_offload!(|| 42) {
            break value;
        }
    }
}

#[test]
fn a_handler_retrying_with_try_offload_is_dropped_at_once() {
    let (attempts, drops) = (counter(), counter());
    let mut generator = retries_with_try_offload(Arc::clone(&attempts), Arc::clone(&drops)).start();
    suspend_at_first_offload(&mut generator);
    drop(generator);
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "no retry while dropped");
    assert_eq!(drops.load(Ordering::SeqCst), 1, "the local was dropped");
}

#[test]
fn a_handler_retrying_with_try_offload_recovers_from_unrun_work() {
    // A strategy that drops the first job it gets and runs the others.
    let seen = AtomicUsize::new(0);
    let flaky = apply_fn(|job| {
        if seen.fetch_add(1, Ordering::SeqCst) > 0 {
            job.run();
        }
    });
    let (attempts, drops) = (counter(), counter());
    let value = retries_with_try_offload(Arc::clone(&attempts), drops).run_with(&flaky);
    assert_eq!((value, attempts.load(Ordering::SeqCst)), (42, 2));
}

#[yieldable]
fn catches_everything_and_retries(
    limit: usize,
    attempts: Arc<AtomicUsize>,
    drops: Arc<AtomicUsize>,
) -> Option<u64> {
    let _local = DropCounter(drops);
    for _ in 0..limit {
        attempts.fetch_add(1, Ordering::SeqCst);
        if let Ok(value) = panic::catch_unwind(|| offload!(|| 7)) {
            return Some(value);
        }
    }
    None
}

#[test]
fn a_handler_that_catches_the_drop_and_retries_a_few_times_ends_normally() {
    count_hook_calls();
    let (attempts, drops) = (counter(), counter());
    let mut generator =
        catches_everything_and_retries(3, Arc::clone(&attempts), Arc::clone(&drops)).start();
    suspend_at_first_offload(&mut generator);
    let hook_calls = HOOK_CALLS.get();
    drop(generator);
    // Each retry while dropped unwinds again at once, without running work.
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(HOOK_CALLS.get(), hook_calls, "dropping is silent");
}

#[yieldable]
fn turns_panics_into_its_own(drops: Arc<AtomicUsize>) -> u64 {
    let _local = DropCounter(drops);
    match panic::catch_unwind(|| offload!(|| 7)) {
        Ok(value) => value,
        Err(_) => panic!("expected: the handler's own panic"),
    }
}

#[test]
fn a_handler_that_panics_while_dropped_by_hand_does_not_make_drop_panic() {
    count_hook_calls();
    let drops = counter();
    let mut generator = turns_panics_into_its_own(Arc::clone(&drops)).start();
    suspend_at_first_offload(&mut generator);
    let dropped = panic::catch_unwind(AssertUnwindSafe(|| drop(generator)));
    assert!(dropped.is_ok(), "drop must not panic");
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn a_handler_that_panics_while_dropped_by_a_panicking_strategy_does_not_abort() {
    count_hook_calls();
    let drops = counter();
    let failing = apply_fn(|job| {
        let _unrun = job;
        panic!("expected: strategy failed");
    });
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        turns_panics_into_its_own(Arc::clone(&drops)).run_with(&failing)
    }));
    let payload = result.expect_err("the strategy's panic propagates");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"expected: strategy failed")
    );
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[yieldable]
fn recognises_the_drop(saw_drop: Arc<AtomicUsize>, drops: Arc<AtomicUsize>) -> u64 {
    let _local = DropCounter(drops);
    match panic::catch_unwind(|| offload!(|| 7)) {
        Ok(value) => value,
        Err(payload) => {
            if payload.is::<HandlerDropped>() {
                saw_drop.fetch_add(1, Ordering::SeqCst);
                panic::resume_unwind(payload);
            }
            0
        }
    }
}

#[test]
fn a_handler_can_recognise_the_drop_s_unwind_and_let_it_go_on() {
    let (saw_drop, drops) = (counter(), counter());
    let mut generator = recognises_the_drop(Arc::clone(&saw_drop), Arc::clone(&drops)).start();
    suspend_at_first_offload(&mut generator);
    drop(generator);
    assert_eq!(saw_drop.load(Ordering::SeqCst), 1);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    // Run to the end, it never sees `HandlerDropped`.
    assert_eq!(
        recognises_the_drop(Arc::clone(&saw_drop), counter()).run(),
        7
    );
    assert_eq!(saw_drop.load(Ordering::SeqCst), 1);
}

#[yieldable]
fn swallows_the_drop_and_returns(drops: Arc<AtomicUsize>) -> DropCounter {
    let _local = DropCounter(Arc::clone(&drops));
    let _ = panic::catch_unwind(|| offload!(|| 7));
    DropCounter(drops)
}

#[test]
fn a_handler_that_swallows_the_drop_and_returns_has_its_value_dropped() {
    let drops = counter();
    let mut generator = swallows_the_drop_and_returns(Arc::clone(&drops)).start();
    suspend_at_first_offload(&mut generator);
    drop(generator);
    assert_eq!(drops.load(Ordering::SeqCst), 2, "the local and the value");
}

#[test]
fn dropping_a_suspended_handler_does_not_call_the_panic_hook() {
    count_hook_calls();
    let drops = counter();
    let mut generator = turns_panics_into_its_own(Arc::clone(&drops)).start();
    let before = HOOK_CALLS.get();
    assert!(matches!(generator.resume(), GeneratorState::Yielded(_)));
    let mut plain = recognises_the_drop(counter(), Arc::clone(&drops)).start();
    suspend_at_first_offload(&mut plain);
    drop(plain);
    assert_eq!(HOOK_CALLS.get(), before);
    // While `turns_panics_into_its_own`, whose own panic is a real one, is
    // reported once.
    drop(generator);
    assert_eq!(HOOK_CALLS.get(), before + 1);
}

#[derive(Debug, PartialEq)]
struct Custom(u32);

fn fails(code: u32) -> u64 {
    if code == 0 {
        return 1;
    }
    if code == 1 {
        panic!("expected: work failed with {code}");
    }
    panic::panic_any(Custom(code))
}

#[yieldable]
fn three_outcomes() -> (u64, OffloadError, OffloadError) {
    let ok = try_offload!(fails, 0).expect("work 0 succeeds");
    let message = try_offload!(fails, 1).expect_err("work 1 panics");
    let custom = try_offload!(|| fails(2)).expect_err("work 2 panics");
    (ok, message, custom)
}

#[test]
fn try_offload_returns_the_work_s_panic_with_its_payload_with_every_strategy() {
    count_hook_calls();
    for (name, apply) in common::strategies() {
        let (ok, message, custom) = three_outcomes().run_with(&*apply);
        assert_eq!(ok, 1, "{name}");
        assert_eq!(message.kind(), OffloadErrorKind::Panicked, "{name}");
        assert!(message.is_panic());
        assert_eq!(
            message.panic_message(),
            Some("expected: work failed with 1"),
            "{name}"
        );
        assert_eq!(
            message.to_string(),
            "the offloaded work panicked: expected: work failed with 1"
        );
        assert_eq!(custom.panic_message(), None);
        assert_eq!(custom.to_string(), "the offloaded work panicked");
        let payload: Box<dyn Any + Send> = custom.try_into_panic().expect("a panic");
        assert_eq!(payload.downcast_ref::<Custom>(), Some(&Custom(2)), "{name}");
    }
}

#[yieldable]
fn one_try() -> Result<u64, OffloadError> {
    try_offload!(|| 5)
}

#[test]
fn try_offload_reports_work_the_strategy_did_not_run() {
    let dropping = apply_fn(|_unrun| {});
    let error = one_try().run_with(&dropping).expect_err("not run");
    assert_eq!(error.kind(), OffloadErrorKind::NotRun);
    assert!(!error.is_panic());
    assert!(
        error
            .to_string()
            .contains("without running the offloaded work"),
        "{error}"
    );
    let error = error.try_into_panic().expect_err("not a panic");
    assert_eq!(error.kind(), OffloadErrorKind::NotRun);
    assert_eq!(one_try().run().ok(), Some(5));
}

#[test]
fn resume_unwind_is_what_offload_does() {
    count_hook_calls();
    let (_, message, _) = three_outcomes().run();
    let payload = panic::catch_unwind(AssertUnwindSafe(|| message.resume_unwind()))
        .expect_err("resumes the work's panic");
    assert_eq!(
        payload.downcast_ref::<String>().map(String::as_str),
        Some("expected: work failed with 1")
    );
    let not_run = one_try().run_with(&apply_fn(|_unrun| {})).unwrap_err();
    let payload = panic::catch_unwind(AssertUnwindSafe(|| not_run.resume_unwind()))
        .expect_err("panics with the message");
    let text = common::panic_text(&*payload);
    assert!(
        text.contains("without running the offloaded work"),
        "{text}"
    );
}

#[test]
fn offload_error_can_cross_threads_and_be_boxed() {
    fn is_send_sync_error<E: std::error::Error + Send + Sync + 'static>() {}
    is_send_sync_error::<OffloadError>();
    is_send_sync_error::<HandlerDropped>();
    let boxed: Box<dyn std::error::Error + Send + Sync> = one_try()
        .run_with(&apply_fn(|_unrun| {}))
        .unwrap_err()
        .into();
    assert!(boxed.to_string().contains("without running"));
}

/// A value whose destructor panics.
struct PanicsOnDrop(&'static str);

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("expected: {} panicked on drop", self.0);
    }
}

#[yieldable]
fn result_panics_on_drop(drops: Arc<AtomicUsize>) -> u64 {
    let _local = DropCounter(drops);
    let value = offload!(|| PanicsOnDrop("result"));
    std::mem::forget(value);
    1
}

#[yieldable]
fn work_panics_on_drop(drops: Arc<AtomicUsize>) -> u64 {
    let _local = DropCounter(drops);
    let captured = PanicsOnDrop("work");
    offload!(move || {
        std::mem::forget(captured);
        1
    })
}

#[yieldable]
fn argument_panics_on_drop(_argument: PanicsOnDrop) -> u64 {
    offload!(|| 1)
}

#[test]
fn destructors_that_panic_while_a_handler_is_dropped_do_not_make_drop_panic() {
    count_hook_calls();
    // The unread result of work that ran, then the generator dropped.
    let drops = counter();
    let mut generator = result_panics_on_drop(Arc::clone(&drops)).start();
    match generator.resume() {
        GeneratorState::Yielded(job) => job.run(),
        GeneratorState::Complete(_) => panic!("finished early"),
    }
    assert!(panic::catch_unwind(AssertUnwindSafe(|| drop(generator))).is_ok());
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    // The unrun work.
    let drops = counter();
    let mut generator = work_panics_on_drop(Arc::clone(&drops)).start();
    suspend_at_first_offload(&mut generator);
    assert!(panic::catch_unwind(AssertUnwindSafe(|| drop(generator))).is_ok());
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    // The arguments of a handler that never started.
    let generator = argument_panics_on_drop(PanicsOnDrop("argument")).start();
    assert!(panic::catch_unwind(AssertUnwindSafe(|| drop(generator))).is_ok());
}

#[test]
fn destructors_that_panic_while_a_failing_strategy_unwinds_the_handler_do_not_abort() {
    count_hook_calls();
    let drops = counter();
    let runs_then_fails = apply_fn(|job| {
        job.run();
        panic!("expected: strategy failed");
    });
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        result_panics_on_drop(Arc::clone(&drops)).run_with(&runs_then_fails)
    }));
    let payload = result.expect_err("the strategy's panic propagates");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"expected: strategy failed")
    );
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

thread_local! {
    /// Runs a handler from its destructor, when the thread exits.
    static RUNS_A_HANDLER_ON_EXIT: RunsAHandlerOnDrop = const { RunsAHandlerOnDrop };
}

struct RunsAHandlerOnDrop;

impl Drop for RunsAHandlerOnDrop {
    fn drop(&mut self) {
        assert_eq!(one_try().run().ok(), Some(5));
    }
}

#[test]
fn a_handler_can_run_from_a_thread_local_destructor() {
    std::thread::spawn(|| {
        // Thread-locals are destroyed in the reverse order of their first
        // use: ythread's own, used by the handler after this one, are gone
        // by the time this one runs a handler.
        RUNS_A_HANDLER_ON_EXIT.with(|_| {});
        assert_eq!(one_try().run().ok(), Some(5));
    })
    .join()
    .expect("the handler ran during thread exit");
}
