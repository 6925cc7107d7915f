//! `YieldableThread`: the std-like builder and what `join` returns.

mod common;

use std::thread;

use ythread::apply_fn;
use ythread::{Pool, YieldableThread, offload, yieldable};

#[yieldable]
fn reports_its_thread() -> Option<String> {
    let name = thread::current().name().map(str::to_owned);
    let sum: u64 = offload!(|| (1..=10u64).sum());
    assert_eq!(sum, 55);
    name
}

#[test]
fn the_thread_gets_its_name_and_join_returns_the_handlers_value() {
    let handle = YieldableThread::new()
        .name("conn-7".into())
        .spawn(reports_its_thread())
        .unwrap();
    assert_eq!(handle.thread().name(), Some("conn-7"));
    assert_eq!(handle.join().unwrap().as_deref(), Some("conn-7"));
}

#[yieldable]
fn fails(message: &'static str) -> u32 {
    offload!(|| -> u32 { common::quietly(|| panic!("{message}")) })
}

#[test]
fn join_returns_the_panic_of_the_handler_or_its_work() {
    let handle = YieldableThread::new()
        .apply(Pool::new(1))
        .spawn(fails("work failed"))
        .unwrap();
    let payload = handle.join().unwrap_err();
    assert_eq!(
        payload.downcast_ref::<String>().map(String::as_str),
        Some("work failed")
    );
}

/// Recurses `depth` times with a 512-byte frame each; returns `depth`.
fn recurse_plainly(depth: u32) -> u32 {
    let frame = std::hint::black_box([0u8; 512]);
    if depth == 0 {
        u32::from(frame[0])
    } else {
        recurse_plainly(depth - 1) + 1
    }
}

#[yieldable]
fn recurse(depth: u32) -> u32 {
    // Recursion on the coroutine stack itself, then inside work.
    recurse_plainly(depth) + offload!(recurse_plainly, depth)
}

#[test]
fn stack_sizes_are_configurable() {
    // About 4 MiB of frames: more than the default coroutine stack, so this
    // only passes because the configured sizes are honoured.
    let depth = 8 * 1024;
    let handle = YieldableThread::new()
        .stack_size(16 << 20)
        .coroutine_stack_size(16 << 20)
        .spawn(recurse(depth))
        .unwrap();
    assert_eq!(handle.join().unwrap(), 2 * depth);
}

#[test]
fn a_plain_closure_runs_as_an_ordinary_thread() {
    let handle = YieldableThread::new()
        .name("plain".into())
        .spawn(|| thread::current().name().map(str::to_owned));
    assert_eq!(handle.unwrap().join().unwrap().as_deref(), Some("plain"));
}

#[test]
fn spawn_is_the_short_form_with_inline_work() {
    let handle = ythread::spawn(reports_its_thread());
    assert_eq!(handle.join().unwrap(), None);
}

#[test]
fn any_closure_taking_a_job_is_a_strategy() {
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&counted);
    let handle = YieldableThread::new()
        .apply(apply_fn(move |job| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            job.run();
        }))
        .spawn(reports_its_thread())
        .unwrap();
    handle.join().unwrap();
    assert_eq!(counted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_panic_in_one_thread_leaves_the_shared_pool_serving_others() {
    let pool = Pool::new(1);
    let failing = YieldableThread::new()
        .apply(pool.clone())
        .spawn(fails("boom"))
        .unwrap();
    assert!(failing.join().is_err());
    let ok = YieldableThread::new()
        .apply(pool)
        .spawn(reports_its_thread())
        .unwrap();
    assert_eq!(ok.join().unwrap(), None);
}

#[test]
fn a_plain_closure_runs_on_the_threads_own_stack_not_a_coroutine() {
    // At least 512 KiB of frames: more than the default coroutine stack, well
    // within the 8 MiB thread stack; a coroutine would overflow its guard page.
    let depth = 1024;
    let handle = YieldableThread::new()
        .stack_size(8 << 20)
        .spawn(move || recurse_plainly(depth))
        .unwrap();
    assert_eq!(handle.join().unwrap(), depth);
}
