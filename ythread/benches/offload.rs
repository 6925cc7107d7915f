//! The cost of one `offload!` round trip, beside what it is built from.
//!
//! Run with: `cargo bench -p ythread --bench offload`

mod common;

use std::hint::black_box;

use corosensei::{Coroutine, CoroutineResult, Yielder};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ythread::{GeneratorState, Inline, Yieldable, yieldable};

use crate::common::{add_one, offload_forever, offload_times};

/// As `offload_forever`, through the function form, at the same depth.
#[yieldable]
fn offload_fn_forever() {
    let mut x = 0;
    loop {
        x = ythread::offload(move || add_one(black_box(x)));
    }
}

/// The function form called from a helper one call deep, what it exists
/// for. Suspending from deeper costs the return-address predictions of the
/// frames in between, whatever the form: this is the cost of depth.
#[yieldable]
fn offload_fn_from_helper_forever() {
    #[inline(never)]
    fn helper(x: u64) -> u64 {
        ythread::offload(move || add_one(x))
    }
    let mut x = 0;
    loop {
        x = helper(black_box(x));
    }
}

/// As `offload_times`, through the function form.
#[yieldable]
fn offload_fn_times(times: u64) -> u64 {
    let mut x = 0;
    for _ in 0..times {
        x = ythread::offload(move || add_one(black_box(x)));
    }
    x
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip");
    group.bench_function("direct_call", |b| {
        let mut x = 0;
        b.iter(|| x = black_box(add_one as fn(u64) -> u64)(black_box(x)));
    });
    group.bench_function("corosensei_suspend_resume", |b| {
        let mut coroutine = Coroutine::new(|yielder: &Yielder<u64, u64>, mut x: u64| {
            loop {
                x = yielder.suspend(add_one(x));
            }
        });
        let mut x = 0;
        b.iter(|| match coroutine.resume(black_box(x)) {
            CoroutineResult::Yield(y) => x = y,
            CoroutineResult::Return(()) => unreachable!(),
        });
    });
    group.bench_function("offload_inline", |b| {
        let mut generator = offload_forever().start();
        b.iter(|| match generator.resume() {
            GeneratorState::Yielded(job) => job.run(),
            GeneratorState::Complete(()) => unreachable!(),
        });
    });
    // The function form, `ythread::offload(|| ..)`, against `offload!`.
    group.bench_function("offload_fn_inline", |b| {
        let mut generator = offload_fn_forever().start();
        b.iter(|| match generator.resume() {
            GeneratorState::Yielded(job) => job.run(),
            GeneratorState::Complete(()) => unreachable!(),
        });
    });
    group.bench_function("offload_fn_from_helper_inline", |b| {
        let mut generator = offload_fn_from_helper_forever().start();
        b.iter(|| match generator.resume() {
            GeneratorState::Yielded(job) => job.run(),
            GeneratorState::Complete(()) => unreachable!(),
        });
    });
    group.finish();

    let mut group = c.benchmark_group("handler_of_1000_offloads");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("run_with_inline", |b| {
        b.iter(|| offload_times(black_box(1000)).run_with(&Inline));
    });
    group.bench_function("run_with_inline_fn_form", |b| {
        b.iter(|| offload_fn_times(black_box(1000)).run_with(&Inline));
    });
    group.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
