//! A handler's coroutine stack fits what the plain function fits on a std
//! thread (2 MiB by default), and every way of running a handler can choose
//! another size. Overflows are tested in `fatal.rs`, in a child process.

mod common;

use std::hint::black_box;

use ythread::{DEFAULT_STACK_SIZE, Pool, Yieldable, YieldableThread, offload, yieldable};

/// Recurses `depth` times through frames of about 512 bytes and returns the
/// depth reached.
#[inline(never)]
fn recurse(depth: u32) -> u32 {
    let frame = black_box([1u8; 512]);
    if depth == 0 {
        return 0;
    }
    black_box(recurse(depth - 1) + u32::from(frame[7]))
}

/// Touches every page of a local of `N` bytes; returns their sum.
#[inline(never)]
fn big_local<const N: usize>() -> u64 {
    let mut local = black_box([0u8; N]);
    for page in local.chunks_mut(4096) {
        page[0] = 1;
    }
    black_box(&local).iter().map(|&b| u64::from(b)).sum()
}

#[yieldable]
fn holds_512_kib_and_recurses(depth: u32) -> (u64, u32) {
    let sum = offload!(|| 1);
    (big_local::<{ 512 * 1024 }>() + sum, recurse(depth))
}

#[test]
fn the_default_is_std_s() {
    assert_eq!(DEFAULT_STACK_SIZE, 2 * 1024 * 1024);
}

#[test]
fn what_fits_on_a_std_thread_fits_in_a_handler_however_it_is_run() {
    let expected = (129, 300);
    let plain = std::thread::spawn(|| (big_local::<{ 512 * 1024 }>() + 1, recurse(300)));
    assert_eq!(plain.join().unwrap(), expected);

    assert_eq!(holds_512_kib_and_recurses(300).run(), expected);
    assert_eq!(
        holds_512_kib_and_recurses(300).run_with(&Pool::new(1)),
        expected
    );
    let value = common::run_by_hand(holds_512_kib_and_recurses(300).start());
    assert_eq!(value, expected);
    let thread = YieldableThread::new()
        .spawn(holds_512_kib_and_recurses(300))
        .unwrap();
    assert_eq!(thread.join().unwrap(), expected);
}

#[yieldable]
fn deep(depth: u32) -> u32 {
    offload!(|| ());
    recurse(depth)
}

/// About 6 MiB of frames in a release build, more in a debug one: beyond the
/// default, within 32 MiB.
const DEEP: u32 = 12_000;
const ROOMY: usize = 32 << 20;

#[test]
fn every_way_of_running_a_handler_can_choose_its_stack_size() {
    assert_eq!(deep(DEEP).with_stack_size(ROOMY).run(), DEEP);
    assert_eq!(
        deep(DEEP).with_stack_size(ROOMY).run_with(&Pool::new(1)),
        DEEP
    );
    let value = common::run_by_hand(deep(DEEP).with_stack_size(ROOMY).start());
    assert_eq!(value, DEEP);
    let thread = YieldableThread::new()
        .coroutine_stack_size(ROOMY)
        .spawn(deep(DEEP))
        .unwrap();
    assert_eq!(thread.join().unwrap(), DEEP);
}

#[test]
fn a_handler_s_own_size_takes_precedence_over_the_thread_s() {
    let thread = YieldableThread::new()
        .coroutine_stack_size(64 * 1024)
        .spawn(deep(DEEP).with_stack_size(ROOMY))
        .unwrap();
    assert_eq!(thread.join().unwrap(), DEEP);
}

#[test]
fn a_closure_given_a_stack_size_runs_on_a_coroutine_of_that_size() {
    // The closure's frames go beyond the thread's own 2 MiB stack.
    let thread = YieldableThread::new()
        .stack_size(256 * 1024)
        .spawn((|| recurse(DEEP)).with_stack_size(ROOMY))
        .unwrap();
    assert_eq!(thread.join().unwrap(), DEEP);
}
