//! `Remote` and `ythread::remote::Worker` from a tokio application, against
//! a real `nats-server` (started here on a free port, with JetStream): what
//! a tokio user does with them. Both are made, used, stopped and dropped
//! inside async code (the future given to `Runtime::block_on`, and tasks
//! spawned on the runtime), on a multi-thread runtime and on a
//! current-thread one; handlers that offload to a `Remote` are driven from
//! `spawn_blocking` (the documented way), straight in async code (which
//! blocks the runtime's thread, but must still answer) and on
//! `YieldableThread`s spawned from async code.
//!
//! Each test builds its own runtime with `tokio::runtime::Builder` and uses
//! a namespace of its own (and a `nats-server` of its own). The local
//! worker processes of the `Worker`s are this test binary, as in the other
//! tests.
//!
//! `nats-server` must be installed (the README's test command,
//! `scripts/test`, installs it): without it these tests fail, naming it.

mod common;

use common::nats::NatsServer;
use common::worker_processes;

use std::panic;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Runtime};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet, spawn_blocking};

use ythread::remote::{Remote, Worker};
use ythread::{
    OffloadError, OffloadErrorKind, Yieldable, YieldableThread, offloadable, try_offload, yieldable,
};

/// The longest a test may take before it counts as a hang.
const LIMIT: Duration = Duration::from_secs(120);

// --- the work -------------------------------------------------------------

#[offloadable]
fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

/// `sumn`, slowly, after writing `marker`: the test waits for the file to
/// know that the call is running on the worker machine.
#[offloadable]
fn marked_slow_sum(marker: String, n: u64, ms: u64) -> u64 {
    std::fs::write(&marker, b"started").expect("the marker is written");
    std::thread::sleep(Duration::from_millis(ms));
    (1..=n).sum()
}

#[yieldable]
fn call_sumn(n: u64) -> Result<u64, OffloadError> {
    try_offload!(sumn, n)
}

/// Several offloaded calls in one handler, one after the other.
#[yieldable]
fn call_sumn_each(ns: Vec<u64>) -> Result<Vec<u64>, OffloadError> {
    let mut sums = Vec::new();
    for n in ns {
        sums.push(try_offload!(sumn, n)?);
    }
    Ok(sums)
}

#[yieldable]
fn call_marked_slow_sum(marker: String, n: u64, ms: u64) -> Result<u64, OffloadError> {
    try_offload!(marked_slow_sum, marker, n, ms)
}

/// A handler that hands its result to async code through a tokio channel.
#[yieldable]
fn sum_and_tell(n: u64, tell: oneshot::Sender<Result<u64, OffloadError>>) {
    let sum = try_offload!(sumn, n);
    let _ = tell.send(sum);
}

fn triangle(n: u64) -> u64 {
    n * (n + 1) / 2
}

// --- tokio ----------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Flavour {
    MultiThread,
    CurrentThread,
}

impl Flavour {
    fn tag(self) -> &'static str {
        match self {
            Flavour::MultiThread => "mt",
            Flavour::CurrentThread => "ct",
        }
    }
}

/// A runtime as a tokio application builds it (`#[tokio::main]` is this
/// builder), with every driver on.
fn runtime(flavour: Flavour) -> Runtime {
    match flavour {
        Flavour::MultiThread => Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        Flavour::CurrentThread => Builder::new_current_thread().enable_all().build(),
    }
    .expect("the tokio runtime builds")
}

/// The output of a task, or its panic resumed here (with its own message,
/// not a `JoinError`'s).
async fn joined<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(output) => output,
        Err(error) => match error.try_into_panic() {
            Ok(payload) => panic::resume_unwind(payload),
            Err(error) => panic!("the task did not finish: {error}"),
        },
    }
}

/// The value of a `YieldableThread`, joined without blocking the runtime:
/// through `spawn_blocking`. Its panic is resumed here.
async fn joined_thread<T: Send + 'static>(thread: std::thread::JoinHandle<T>) -> T {
    match joined(spawn_blocking(move || thread.join())).await {
        Ok(output) => output,
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// Waits, without blocking the runtime, until `condition` holds; fails with
/// `what` after 10 s.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// --- NATS -----------------------------------------------------------------

/// A `nats-server` with JetStream (the workers' shared queue) for one test.
fn nats() -> NatsServer {
    NatsServer::started(&["-js"])
}

/// The namespace of one test and flavour.
fn namespace(test: &str, flavour: Flavour) -> String {
    format!("tokio-{test}-{}", flavour.tag())
}

/// A worker of one local process, made wherever this is called.
fn start_worker(url: &str, namespace: &str) -> Worker {
    Worker::builder(url)
        .namespace(namespace)
        .processes(worker_processes(1))
        .start()
        .unwrap_or_else(|error| panic!("Worker::start: {error}"))
}

/// A requester, made wherever this is called.
fn connect(url: &str, namespace: &str) -> Remote {
    Remote::builder(url)
        .namespace(namespace)
        .connect()
        .unwrap_or_else(|error| panic!("Remote::connect: {error}"))
}

/// `call_sumn(n)` on `remote` from `spawn_blocking`, as a tokio application
/// calls a blocking handler.
async fn sumn_from_spawn_blocking(remote: &Arc<Remote>, n: u64) -> Result<u64, OffloadError> {
    let remote = Arc::clone(remote);
    joined(spawn_blocking(move || call_sumn(n).run_with(&*remote))).await
}

/// Asserts that `error` says no worker serves the call.
fn assert_no_worker(error: &OffloadError) {
    assert_eq!(error.kind(), OffloadErrorKind::Unavailable, "{error}");
    assert!(error.to_string().contains("no worker serves it"), "{error}");
}

// --- 1. made inside async code ---------------------------------------------

/// `Worker::builder(..).start()` and `Remote::builder(..).connect()` called
/// straight in async code (the `block_on` future, and a task spawned on the
/// runtime) neither panic nor fail, and what they make works: there, from
/// `spawn_blocking`, and after the runtime they were made in is gone.
fn made_in_async_code(flavour: Flavour) {
    common::watchdog(LIMIT, move || {
        let nats = nats();
        let url = nats.url().to_owned();
        let ns = namespace("made", flavour);
        let in_task = format!("{ns}-task");
        let rt = runtime(flavour);
        let (worker, remote) = rt.block_on(async {
            let worker = start_worker(&url, &ns);
            assert_eq!(worker.ready(), Ok(()));
            assert_eq!(worker.shared_queue(), Ok(()));
            let remote = Arc::new(connect(&url, &ns));
            assert_eq!(sumn_from_spawn_blocking(&remote, 10).await.unwrap(), 55);

            // Made in a task of the runtime (on one of its worker threads
            // for the multi-thread flavour), and used from outside it.
            let (task_worker, task_remote) = joined(tokio::spawn({
                let (url, in_task) = (url.clone(), in_task.clone());
                async move {
                    let worker = start_worker(&url, &in_task);
                    let remote = Arc::new(connect(&url, &in_task));
                    (worker, remote)
                }
            }))
            .await;
            assert_eq!(task_worker.ready(), Ok(()));
            assert_eq!(
                sumn_from_spawn_blocking(&task_remote, 20).await.unwrap(),
                210
            );
            assert_eq!(task_remote.calls(), 1);
            (worker, remote)
        });

        // The runtime they were made in is gone; they are not.
        drop(rt);
        assert_eq!(call_sumn(100).run_with(&*remote).unwrap(), 5050);
        // And another runtime uses them.
        let rt = runtime(flavour);
        rt.block_on(async {
            assert_eq!(sumn_from_spawn_blocking(&remote, 30).await.unwrap(), 465);
        });
        assert_eq!(remote.calls(), 3);
        assert_eq!(worker.ready(), Ok(()));
    });
}

#[test]
fn made_in_async_code_multi_thread() {
    made_in_async_code(Flavour::MultiThread);
}

#[test]
fn made_in_async_code_current_thread() {
    made_in_async_code(Flavour::CurrentThread);
}

// --- 2. calls from spawn_blocking -------------------------------------------

/// Handlers driven from `spawn_blocking` on an `Arc<Remote>` answer right:
/// one, then many at once (more than the worker's one process: some wait in
/// the shared queue), and a handler with several calls.
fn calls_from_spawn_blocking(flavour: Flavour) {
    common::watchdog(LIMIT, move || {
        let nats = nats();
        let url = nats.url().to_owned();
        let ns = namespace("blocking", flavour);
        runtime(flavour).block_on(async {
            let _worker = start_worker(&url, &ns);
            let remote = Arc::new(connect(&url, &ns));
            assert_eq!(sumn_from_spawn_blocking(&remote, 10).await.unwrap(), 55);

            let mut calls = JoinSet::new();
            for n in 1..=16u64 {
                let remote = Arc::clone(&remote);
                calls.spawn_blocking(move || (n, call_sumn(n).run_with(&*remote)));
            }
            let mut answered = Vec::new();
            while let Some(outcome) = calls.join_next().await {
                let (n, sum) = match outcome {
                    Ok(outcome) => outcome,
                    Err(error) => panic::resume_unwind(error.into_panic()),
                };
                let sum = sum.unwrap_or_else(|error| panic!("call_sumn({n}): {error}"));
                assert_eq!(sum, triangle(n), "call_sumn({n})");
                answered.push(n);
            }
            answered.sort_unstable();
            assert_eq!(answered, (1..=16).collect::<Vec<_>>());

            let each = {
                let remote = Arc::clone(&remote);
                joined(spawn_blocking(move || {
                    call_sumn_each(vec![1, 2, 3, 1000]).run_with(&*remote)
                }))
                .await
            };
            assert_eq!(each.unwrap(), vec![1, 3, 6, 500_500]);
            assert_eq!(remote.calls(), 1 + 16 + 4);
        });
    });
}

#[test]
fn calls_from_spawn_blocking_multi_thread() {
    calls_from_spawn_blocking(Flavour::MultiThread);
}

#[test]
fn calls_from_spawn_blocking_current_thread() {
    calls_from_spawn_blocking(Flavour::CurrentThread);
}

/// A handler run straight in async code (no `spawn_blocking`: it blocks the
/// runtime's thread meanwhile, which a tokio user should not do, but may)
/// still answers: the I/O runs on the `Remote`'s own runtime. Also in a
/// task spawned on the runtime.
fn a_call_straight_in_async_code(flavour: Flavour) {
    common::watchdog(LIMIT, move || {
        let nats = nats();
        let url = nats.url().to_owned();
        let ns = namespace("straight", flavour);
        runtime(flavour).block_on(async {
            let _worker = start_worker(&url, &ns);
            let remote = Arc::new(connect(&url, &ns));
            assert_eq!(call_sumn(10).run_with(&*remote).unwrap(), 55);
            let in_task = joined(tokio::spawn({
                let remote = Arc::clone(&remote);
                async move { call_sumn(11).run_with(&*remote) }
            }))
            .await;
            assert_eq!(in_task.unwrap(), 66);
        });
    });
}

#[test]
fn a_call_straight_in_async_code_multi_thread() {
    a_call_straight_in_async_code(Flavour::MultiThread);
}

#[test]
fn a_call_straight_in_async_code_current_thread() {
    a_call_straight_in_async_code(Flavour::CurrentThread);
}

// --- 3. stopped and dropped inside async code -------------------------------

/// `Worker::stop` called in async code while a call (from `spawn_blocking`)
/// runs on it: the call answers, later calls find no worker, and the
/// `Remote` is then dropped there too.
fn stopped_in_async_code(flavour: Flavour) {
    common::watchdog(LIMIT, move || {
        let nats = nats();
        let url = nats.url().to_owned();
        let ns = namespace("stop", flavour);
        let dir = common::scratch(&ns);
        let marker = dir.join("started");
        runtime(flavour).block_on(async {
            let worker = start_worker(&url, &ns);
            let remote = Arc::new(connect(&url, &ns));
            let in_flight = spawn_blocking({
                let remote = Arc::clone(&remote);
                let marker = marker.to_str().unwrap().to_owned();
                move || call_marked_slow_sum(marker, 5, 1_000).run_with(&*remote)
            });
            until("the call runs on the worker", || {
                Path::new(&marker).exists()
            })
            .await;
            // Returns once the call under way has answered and its pulls
            // from the shared queue have ended (within 2 s), not after the
            // whole grace.
            let stopping = std::time::Instant::now();
            worker.stop(Duration::from_secs(10));
            assert!(
                stopping.elapsed() < Duration::from_secs(5),
                "stop took {:?}",
                stopping.elapsed()
            );
            assert_eq!(joined(in_flight).await.unwrap(), 15);
            // Stopped: no one serves now.
            let error = sumn_from_spawn_blocking(&remote, 1).await.unwrap_err();
            assert_no_worker(&error);
            assert_eq!(Arc::strong_count(&remote), 1);
            drop(remote);
        });
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn stopped_in_async_code_multi_thread() {
    stopped_in_async_code(Flavour::MultiThread);
}

#[test]
fn stopped_in_async_code_current_thread() {
    stopped_in_async_code(Flavour::CurrentThread);
}

/// `Worker`s and `Remote`s dropped (not stopped) in async code, after they
/// served and made calls: straight in the `block_on` future and in a task
/// on the runtime. A dropped worker stops serving; the runtime then shuts
/// down cleanly.
fn dropped_in_async_code(flavour: Flavour) {
    common::watchdog(LIMIT, move || {
        let nats = nats();
        let url = nats.url().to_owned();
        let ns = namespace("drop", flavour);
        let rt = runtime(flavour);
        rt.block_on(async {
            let worker = start_worker(&url, &ns);
            let remote = Arc::new(
                Remote::builder(&url)
                    .namespace(&ns)
                    .deadline(Duration::from_secs(2))
                    .connect()
                    .unwrap(),
            );
            assert_eq!(sumn_from_spawn_blocking(&remote, 10).await.unwrap(), 55);

            // Dropped straight in async code.
            drop(worker);
            // It stops serving: once the server has seen its connection
            // close (dropping does not wait for that), calls find no worker.
            // Until then a call may reach it and find no one to answer.
            let started = Instant::now();
            loop {
                match sumn_from_spawn_blocking(&remote, 1).await {
                    Err(error) if error.kind() == OffloadErrorKind::Unavailable => {
                        assert_no_worker(&error);
                        break;
                    }
                    Err(error) if error.kind() == OffloadErrorKind::DeadlineExceeded => {
                        assert!(
                            started.elapsed() < Duration::from_secs(20),
                            "the dropped worker is still subscribed: {error}"
                        );
                    }
                    other => panic!("a call to a dropped worker: {other:?}"),
                }
            }

            // A worker and a requester dropped in a task on the runtime.
            let second = start_worker(&url, &ns);
            assert_eq!(sumn_from_spawn_blocking(&remote, 20).await.unwrap(), 210);
            let other = Arc::new(connect(&url, &ns));
            assert_eq!(sumn_from_spawn_blocking(&other, 30).await.unwrap(), 465);
            joined(tokio::spawn(async move {
                drop(second);
                drop(other);
            }))
            .await;

            // The last requester, dropped straight in async code.
            assert_eq!(Arc::strong_count(&remote), 1);
            drop(remote);

            // A requester and a worker that never did anything.
            drop(connect(&url, &ns));
            drop(start_worker(&url, &ns));
        });
        drop(rt);
    });
}

#[test]
fn dropped_in_async_code_multi_thread() {
    dropped_in_async_code(Flavour::MultiThread);
}

#[test]
fn dropped_in_async_code_current_thread() {
    dropped_in_async_code(Flavour::CurrentThread);
}

// --- 4. YieldableThreads spawned from async code ----------------------------

/// `YieldableThread`s spawned from async code with `.apply(remote)`: one
/// that owns its `Remote` (made in async code, dropped on that thread when
/// it ends), several that share an `Arc<Remote>`, and one whose handler
/// hands its result back through a tokio channel, awaited.
fn yieldable_threads_from_async_code(flavour: Flavour) {
    common::watchdog(LIMIT, move || {
        let nats = nats();
        let url = nats.url().to_owned();
        let ns = namespace("threads", flavour);
        runtime(flavour).block_on(async {
            let _worker = start_worker(&url, &ns);

            let owned = YieldableThread::new()
                .name("handler-owned".into())
                .apply(connect(&url, &ns))
                .spawn(call_sumn_each(vec![1, 2, 3, 100]))
                .unwrap();
            assert_eq!(joined_thread(owned).await.unwrap(), vec![1, 3, 6, 5050]);

            let remote = Arc::new(connect(&url, &ns));
            let threads: Vec<_> = (1..=4u64)
                .map(|i| {
                    let n = i * 100;
                    let thread = YieldableThread::new()
                        .name(format!("handler-{i}"))
                        .apply(Arc::clone(&remote))
                        .spawn(call_sumn(n))
                        .unwrap();
                    (n, thread)
                })
                .collect();
            for (n, thread) in threads {
                assert_eq!(joined_thread(thread).await.unwrap(), triangle(n));
            }
            assert_eq!(remote.calls(), 4);

            let (tell, told) = oneshot::channel();
            let thread = YieldableThread::new()
                .apply(Arc::clone(&remote))
                .spawn(sum_and_tell(1000, tell))
                .unwrap();
            let sum = told.await.expect("the handler sent its result");
            assert_eq!(sum.unwrap(), 500_500);
            joined_thread(thread).await;
            assert_eq!(remote.calls(), 5);
        });
    });
}

#[test]
fn yieldable_threads_from_async_code_multi_thread() {
    yieldable_threads_from_async_code(Flavour::MultiThread);
}

#[test]
fn yieldable_threads_from_async_code_current_thread() {
    yieldable_threads_from_async_code(Flavour::CurrentThread);
}
