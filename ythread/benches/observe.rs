//! What the `tracing` and `metrics` features cost an offload: 1000 offloads
//! of a handler run with `Inline` (the strategy that adds nothing of its
//! own), with nothing installed, with a subscriber that leaves ythread's
//! `DEBUG` spans out, and with one that takes them plus a Prometheus
//! recorder.
//!
//! Run with, side by side with the same handler built without the features:
//!
//! ```text
//! cargo bench -p ythread --bench offload -- handler_of_1000_offloads/run_with_inline
//! cargo bench -p ythread --features tracing,metrics --bench observe
//! ```

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::prelude::*;
use ythread::{Inline, Yieldable};

use crate::common::offload_times;

fn observed(c: &mut Criterion) {
    let mut group = c.benchmark_group("handler_of_1000_offloads_observed");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("nothing_installed", |b| {
        b.iter(|| offload_times(1000).run_with(&Inline));
    });
    group.bench_function("subscriber_at_info", |b| {
        let subscriber = tracing_subscriber::registry().with(LevelFilter::INFO);
        tracing::subscriber::with_default(subscriber, || {
            b.iter(|| offload_times(1000).run_with(&Inline));
        });
    });
    group.bench_function("subscriber_at_debug_and_recorder", |b| {
        let subscriber = tracing_subscriber::registry().with(LevelFilter::DEBUG);
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        tracing::subscriber::with_default(subscriber, || {
            metrics::with_local_recorder(&recorder, || {
                b.iter(|| offload_times(1000).run_with(&Inline));
            });
        });
    });
    group.finish();
}

criterion_group!(benches, observed);
criterion_main!(benches);
