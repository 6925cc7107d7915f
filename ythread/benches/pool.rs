//! Handing tiny work to a `Pool` and back, against raw handoffs between two
//! threads and against a pool built on crossbeam-channel.
//!
//! Run with: `cargo bench -p ythread --bench pool`

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_channel::{Sender, bounded, unbounded};
use crossbeam_utils::CachePadded;
use ythread::{GeneratorState, Pool, Yieldable, YieldableThread};

use crate::common::{add_one, offload_forever, offload_times};

/// Baseline 1: a worker thread fed by a crossbeam channel, replying on
/// another.
struct CrossbeamWorker {
    requests: Sender<(u64, Sender<u64>)>,
}

impl CrossbeamWorker {
    fn pool(workers: usize) -> Self {
        let (requests, incoming) = unbounded::<(u64, Sender<u64>)>();
        for _ in 0..workers {
            let incoming = incoming.clone();
            thread::spawn(move || {
                for (x, reply) in incoming {
                    let _ = reply.send(add_one(x));
                }
            });
        }
        CrossbeamWorker { requests }
    }
}

/// Baseline 2: a one-slot handoff in both directions; each side spins on the
/// slot for a while and then parks.
///
/// Baseline 3, the same with the job "borrowed": the argument and the result
/// travel in a cache line of their own, as a `Pool` job's do (they live in
/// the caller's frame), and the slots carry only the signal. The floor of a
/// handoff whose work borrows the caller's data.
struct SpinPark {
    request: AtomicU64,
    response: AtomicU64,
    /// Baseline 3's job: its argument, then its result.
    job: Option<CachePadded<AtomicU64>>,
    worker_sleeping: AtomicBool,
    caller_sleeping: AtomicBool,
    worker: std::sync::OnceLock<Thread>,
    caller: Thread,
}

const EMPTY: u64 = u64::MAX;
const SPINS: u32 = 20_000;

fn wait_for(slot: &AtomicU64, sleeping: &AtomicBool) -> u64 {
    for _ in 0..SPINS {
        // Poll with a load, so that the slot's cache line is shared until
        // the other side writes it (a swap per poll would take the line from
        // the writer on every poll and make this baseline slower).
        if slot.load(Ordering::Relaxed) != EMPTY {
            return slot.swap(EMPTY, Ordering::Acquire);
        }
        std::hint::spin_loop();
    }
    loop {
        sleeping.store(true, Ordering::SeqCst);
        let value = slot.swap(EMPTY, Ordering::Acquire);
        if value != EMPTY {
            sleeping.store(false, Ordering::SeqCst);
            return value;
        }
        thread::park();
    }
}

fn post(slot: &AtomicU64, value: u64, sleeping: &AtomicBool, thread: &Thread) {
    slot.store(value, Ordering::Release);
    if sleeping.swap(false, Ordering::SeqCst) {
        thread.unpark();
    }
}

impl SpinPark {
    fn start(borrowed: bool) -> Arc<Self> {
        let shared = Arc::new(SpinPark {
            request: AtomicU64::new(EMPTY),
            response: AtomicU64::new(EMPTY),
            job: borrowed.then(|| CachePadded::new(AtomicU64::new(0))),
            worker_sleeping: AtomicBool::new(false),
            caller_sleeping: AtomicBool::new(false),
            worker: std::sync::OnceLock::new(),
            caller: thread::current(),
        });
        let worker_side = Arc::clone(&shared);
        let handle = thread::spawn(move || {
            loop {
                let x = wait_for(&worker_side.request, &worker_side.worker_sleeping);
                if x == EMPTY - 1 {
                    return;
                }
                let y = match &worker_side.job {
                    Some(job) => {
                        job.store(add_one(job.load(Ordering::Acquire)), Ordering::Release);
                        0
                    }
                    None => add_one(x),
                };
                post(
                    &worker_side.response,
                    y,
                    &worker_side.caller_sleeping,
                    &worker_side.caller,
                );
            }
        });
        let _ = shared.worker.set(handle.thread().clone());
        shared
    }

    fn call(&self, x: u64) -> u64 {
        if let Some(job) = &self.job {
            job.store(x, Ordering::Relaxed);
        }
        post(
            &self.request,
            x,
            &self.worker_sleeping,
            self.worker.get().unwrap(),
        );
        let y = wait_for(&self.response, &self.caller_sleeping);
        match &self.job {
            Some(job) => job.load(Ordering::Acquire),
            None => y,
        }
    }

    fn stop(&self) {
        post(
            &self.request,
            EMPTY - 1,
            &self.worker_sleeping,
            self.worker.get().unwrap(),
        );
    }
}

fn one_caller(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_caller_round_trip");
    group.bench_function("raw_crossbeam_channel", |b| {
        let worker = CrossbeamWorker::pool(1);
        let (reply, replies) = bounded(1);
        let mut x = 0;
        b.iter(|| {
            worker.requests.send((x, reply.clone())).unwrap();
            x = replies.recv().unwrap();
        });
    });
    group.bench_function("raw_spin_then_park", |b| {
        let handoff = SpinPark::start(false);
        let mut x = 0;
        b.iter(|| x = handoff.call(black_box(x)));
        handoff.stop();
    });
    group.bench_function("raw_spin_then_park_borrowed_job", |b| {
        let handoff = SpinPark::start(true);
        let mut x = 0;
        b.iter(|| x = handoff.call(black_box(x)));
        handoff.stop();
    });
    // Two threads polling an idle pool plus the caller are three threads
    // spinning on this 2-core machine; the raw handoff has one worker. The
    // one-thread pool is the like-for-like row.
    group.bench_function("ythread_pool_one_thread", |b| {
        let pool = Pool::new(1);
        let mut generator = offload_forever().start();
        b.iter(|| match generator.resume() {
            GeneratorState::Yielded(job) => ythread::Apply::apply(&pool, job),
            GeneratorState::Complete(()) => unreachable!(),
        });
    });
    group.bench_function("ythread_pool", |b| {
        let pool = Pool::new(2);
        let mut generator = offload_forever().start();
        b.iter(|| match generator.resume() {
            GeneratorState::Yielded(job) => ythread::Apply::apply(&pool, job),
            GeneratorState::Complete(()) => unreachable!(),
        });
    });
    group.finish();
}

const CALLERS: u64 = 8;
const CALLS_PER_CALLER: u64 = 5_000;

/// Times `iterations` rounds; each round starts the callers and waits for
/// all of them, checking that every caller made all its calls.
fn time_rounds(
    iterations: u64,
    mut start_callers: impl FnMut() -> Vec<JoinHandle<u64>>,
) -> Duration {
    let start = Instant::now();
    for _ in 0..iterations {
        for caller in start_callers() {
            assert_eq!(caller.join().unwrap(), CALLS_PER_CALLER);
        }
    }
    start.elapsed()
}

fn eight_callers(c: &mut Criterion) {
    let mut group = c.benchmark_group("eight_callers_two_workers");
    group.throughput(Throughput::Elements(CALLERS * CALLS_PER_CALLER));
    group.sample_size(10);
    group.bench_function("crossbeam_channel_pool", |b| {
        let workers = CrossbeamWorker::pool(2);
        b.iter_custom(|iterations| {
            time_rounds(iterations, || {
                (0..CALLERS)
                    .map(|_| {
                        let requests = workers.requests.clone();
                        thread::spawn(move || {
                            let (reply, replies) = bounded(1);
                            let mut x = 0;
                            for _ in 0..CALLS_PER_CALLER {
                                requests.send((x, reply.clone())).unwrap();
                                x = replies.recv().unwrap();
                            }
                            x
                        })
                    })
                    .collect()
            })
        });
    });
    group.bench_function("ythread_pool", |b| {
        let pool = Pool::new(2);
        b.iter_custom(|iterations| {
            time_rounds(iterations, || {
                (0..CALLERS)
                    .map(|_| {
                        YieldableThread::new()
                            .apply(pool.clone())
                            .spawn(offload_times(CALLS_PER_CALLER))
                            .unwrap()
                    })
                    .collect()
            })
        });
    });
    group.finish();
}

criterion_group!(benches, one_caller, eight_callers);
criterion_main!(benches);
