//! A `Remote` round trip (requester → NATS → `Worker` → its local worker
//! process and back) against a raw async-nats request-reply through the same
//! server, to a responder that answers at once, in the same run.
//!
//! Needs `nats-server` (the README's test command installs it); run with:
//! `cargo bench -p ythread --features remote --bench remote`

mod common;
// The `nats-server` launcher of the `Remote` tests (std only).
#[path = "../tests/common/nats.rs"]
#[allow(dead_code, unreachable_pub)]
mod nats;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use futures_util::StreamExt;
use ythread::remote::{Remote, Worker, async_nats};
use ythread::{Processes, Yieldable};

use crate::common::offload_times;
use crate::nats::NatsServer;

fn round_trip(c: &mut Criterion, url: &str) {
    let mut group = c.benchmark_group("remote_round_trip");

    // Raw: a responder task that answers every request with its payload.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(async_nats::connect(url)).unwrap();
    let mut requests = runtime.block_on(client.subscribe("bench.echo")).unwrap();
    let responder = client.clone();
    runtime.spawn(async move {
        while let Some(message) = requests.next().await {
            if let Some(reply) = message.reply {
                let _ = responder.publish(reply, message.payload).await;
            }
        }
    });
    runtime.block_on(client.flush()).unwrap();
    group.bench_function("raw_async_nats_request_reply", |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            for i in 0..iterations {
                let payload = i.to_le_bytes().to_vec();
                let reply = runtime
                    .block_on(client.request("bench.echo", payload.into()))
                    .unwrap();
                black_box(reply);
            }
            started.elapsed()
        });
    });

    let worker = Worker::builder(url)
        .namespace("bench")
        .processes(Processes::builder().workers(1))
        .start()
        .unwrap();
    let remote = Remote::builder(url).namespace("bench").connect().unwrap();
    group.bench_function("remote_offload", |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            assert_eq!(offload_times(iterations).run_with(&remote), iterations);
            started.elapsed()
        });
    });
    // The local hop alone: the worker's process round trip.
    group.bench_function("processes_offload_for_reference", |b| {
        let local = worker.processes();
        b.iter_custom(|iterations| {
            let started = Instant::now();
            assert_eq!(offload_times(iterations).run_with(local), iterations);
            started.elapsed()
        });
    });
    group.finish();
    drop(remote);
    worker.stop(Duration::from_secs(5));
}

fn main() {
    // The worker's local processes are this program started again.
    ythread::processes::init();
    let server = NatsServer::start(&["-js"]).unwrap_or_else(|error| {
        eprintln!("the remote bench needs nats-server: {error}");
        std::process::exit(2);
    });
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    round_trip(&mut c, server.url());
    c.final_summary();
}
