//! Starting handlers: a `YieldableThread` against a plain thread, and a
//! handler on the current thread (a coroutine on a recycled stack).
//!
//! Run with: `cargo bench -p ythread --bench spawn`

use std::hint::black_box;

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, Yielder};
use criterion::{Criterion, criterion_group, criterion_main};
use ythread::{Yieldable, YieldableThread, offload, yieldable};

#[yieldable]
fn trivial(x: u64) -> u64 {
    x + 1
}

#[yieldable]
fn one_offload(x: u64) -> u64 {
    offload!(|| x + 1)
}

fn spawn_join(c: &mut Criterion) {
    let mut group = c.benchmark_group("spawn_join");
    group.bench_function("std_thread", |b| {
        b.iter(|| std::thread::spawn(|| black_box(1u64) + 1).join().unwrap());
    });
    group.bench_function("yieldable_thread", |b| {
        b.iter(|| {
            YieldableThread::new()
                .spawn(one_offload(black_box(1)))
                .unwrap()
                .join()
                .unwrap()
        });
    });
    // The default stack (2 MiB, std's) against the earlier default, 256 KiB.
    group.bench_function("yieldable_thread_256k_stack", |b| {
        b.iter(|| {
            YieldableThread::new()
                .coroutine_stack_size(256 << 10)
                .spawn(one_offload(black_box(1)))
                .unwrap()
                .join()
                .unwrap()
        });
    });
    group.finish();

    let mut group = c.benchmark_group("handler_on_current_thread");
    group.bench_function("trivial_handler_warm_stack", |b| {
        b.iter(|| trivial(black_box(1)).run());
    });
    group.bench_function("trivial_handler_warm_256k_stack", |b| {
        b.iter(|| trivial(black_box(1)).with_stack_size(256 << 10).run());
    });
    group.bench_function("corosensei_fresh_stack", |b| {
        b.iter(|| {
            let stack = DefaultStack::new(256 * 1024).unwrap();
            let mut coroutine =
                Coroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| black_box(1u64) + 1);
            black_box(coroutine.resume(()));
        });
    });
    group.finish();
}

criterion_group!(benches, spawn_join);
criterion_main!(benches);
