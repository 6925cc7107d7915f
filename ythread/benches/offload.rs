//! The cost of one `offload!` round trip, beside what it is built from.
//!
//! Run with: `cargo bench -p ythread --bench offload`

mod common;

use std::hint::black_box;

use corosensei::{Coroutine, CoroutineResult, Yielder};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ythread::{GeneratorState, Inline, Yieldable};

use crate::common::{add_one, offload_forever, offload_times};

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
    group.finish();

    let mut group = c.benchmark_group("handler_of_1000_offloads");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("run_with_inline", |b| {
        b.iter(|| offload_times(black_box(1000)).run_with(&Inline));
    });
    group.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
