//! A remote `Worker` on threads of its own (`WorkerBuilder::threads`),
//! against a real `nats-server` on 127.0.0.1: the same answers as a worker
//! on processes, a panic that leaves it serving, the worker's deadline kept
//! for the requester while the call runs on, a bound on the calls at once,
//! the byte budget, signatures and replays, and a crash that takes it down.
//!
//! The workers here run in this test process (their calls can then be
//! watched through statics), except the one that crashes.
//!
//! `nats-server` must be installed: the README's test command
//! (`scripts/test`) installs it. Without it these tests fail, naming it;
//! they never skip.

mod common;

use common::nats::NatsServer;
use common::{EntryProcess, eventually};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use ythread::remote::{Remote, Worker, WorkerBuilder, async_nats};
use ythread::{OffloadError, OffloadErrorKind, Yieldable, offloadable, try_offload, yieldable};

// --- the work -------------------------------------------------------------

#[offloadable]
fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[offloadable]
fn shout(words: Vec<String>) -> (String, usize) {
    (words.join(" ").to_uppercase(), words.len())
}

#[offloadable]
fn boom(message: String) -> u64 {
    panic!("{message}")
}

#[offloadable]
fn zeros(len: usize) -> Vec<u8> {
    vec![0; len]
}

/// The process that ran the call.
#[offloadable]
fn pid() -> u32 {
    std::process::id()
}

#[offloadable]
fn crash() -> u64 {
    std::process::abort()
}

/// As deep as `depth` says (each level is a sequence and a newtype: two
/// levels of the codec's).
#[offloadable]
fn nested(depth: u32) -> Vec<Nested> {
    let mut value = Vec::new();
    for _ in 0..depth {
        value = vec![Nested(value)];
    }
    value
}

#[offloadable]
fn depth_of(value: Vec<Nested>) -> u32 {
    let mut depth = 0;
    let mut level = &value;
    while let Some(Nested(inner)) = level.first() {
        depth += 1;
        level = inner;
    }
    depth
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Nested(Vec<Nested>);

/// What the calls of [`held`] through one gate did, for one test (the
/// tests run at once).
struct Gate {
    started: AtomicUsize,
    running: AtomicUsize,
    /// The most that ever ran at once.
    most: AtomicUsize,
    /// Lets every call through it return.
    released: AtomicBool,
}

impl Gate {
    const fn new() -> Gate {
        Gate {
            started: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            released: AtomicBool::new(false),
        }
    }
}

static GATES: [Gate; 2] = [Gate::new(), Gate::new()];
const OVERRUN: usize = 0;
const BOUND: usize = 1;

/// Runs until its gate is released (or a minute: a test that fails must
/// not leave it running for good).
#[offloadable]
fn held(gate: usize, n: u64) -> u64 {
    let gate = &GATES[gate];
    gate.started.fetch_add(1, Ordering::SeqCst);
    let now = gate.running.fetch_add(1, Ordering::SeqCst) + 1;
    gate.most.fetch_max(now, Ordering::SeqCst);
    for _ in 0..60_000 {
        if gate.released.load(Ordering::SeqCst) {
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    gate.running.fetch_sub(1, Ordering::SeqCst);
    n
}

/// Calls of [`counted`] that ran, one counter per test.
static COUNTED: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
const SIGNED: usize = 0;

#[offloadable]
fn counted(counter: usize, ms: u64) -> u64 {
    thread::sleep(Duration::from_millis(ms));
    COUNTED[counter].fetch_add(1, Ordering::SeqCst) as u64
}

#[yieldable]
fn call_counted(counter: usize, ms: u64) -> Result<u64, OffloadError> {
    try_offload!(counted, counter, ms)
}

#[yieldable]
fn call_sumn(n: u64) -> Result<u64, OffloadError> {
    try_offload!(sumn, n)
}

#[yieldable]
fn call_held(gate: usize, n: u64) -> Result<u64, OffloadError> {
    try_offload!(held, gate, n)
}

// --- setting up -------------------------------------------------------------

fn nats(extra: &[&str]) -> NatsServer {
    NatsServer::started(extra)
}

fn on_threads(url: &str, namespace: &str, threads: usize) -> WorkerBuilder {
    Worker::builder(url).namespace(namespace).threads(threads)
}

fn requester(url: &str, namespace: &str, deadline: Duration) -> Remote {
    Remote::builder(url)
        .namespace(namespace)
        .deadline(deadline)
        .connect()
        .unwrap()
}

// --- tests ------------------------------------------------------------------

/// Each call, answered or failed, comes back the same from a worker on
/// threads as from one on processes: results, and the errors of values
/// beyond the bounds (too deep either way, a result over the server's
/// `max_payload`).
#[test]
fn threads_answer_as_processes_do() {
    #[yieldable]
    fn call_shout(words: Vec<String>) -> Result<(String, usize), OffloadError> {
        try_offload!(shout, words)
    }
    #[yieldable]
    fn call_nested(depth: u32) -> Result<usize, OffloadError> {
        try_offload!(nested, depth).map(|value| value.len())
    }
    #[yieldable]
    fn call_depth_of(depth: u32) -> Result<u32, OffloadError> {
        try_offload!(depth_of, nested(depth))
    }
    #[yieldable]
    fn call_zeros(len: usize) -> Result<usize, OffloadError> {
        try_offload!(zeros, len).map(|zeros| zeros.len())
    }
    /// Each outcome, an error as its kind and its words, without what
    /// names the setting that bounds the depth (`ProcessesBuilder::max_depth`,
    /// or the thread mode's own words for it).
    fn all(cpu: &Remote) -> Vec<String> {
        fn seen<T: std::fmt::Debug>(outcome: Result<T, OffloadError>) -> String {
            match outcome {
                Ok(value) => format!("Ok({value:?})"),
                Err(error) => {
                    let text = error.to_string();
                    let text = text.split(" (`").next().unwrap_or_default().to_owned();
                    format!("{:?}: {text}", error.kind())
                }
            }
        }
        vec![
            seen(call_sumn(10).run_with(cpu)),
            seen(call_shout(vec!["a".to_owned(), "bc".to_owned()]).run_with(cpu)),
            seen(call_nested(20).run_with(cpu)),
            seen(call_depth_of(20).run_with(cpu)),
            // Arguments deeper than a worker decodes (400 levels): it does
            // not run.
            seen(call_depth_of(200).run_with(cpu)),
            // A result deeper than a worker encodes: it ran.
            seen(call_nested(5_000).run_with(cpu)),
            // Over the server's 1 MiB: it ran, and the result is not sent.
            seen(call_zeros(2 << 20).run_with(cpu)),
        ]
    }
    common::watchdog(Duration::from_secs(120), || {
        let server = nats(&[]);
        let url = server.url();
        let _threads = on_threads(url, "same-t", 2).start().unwrap();
        let _processes = Worker::builder(url)
            .namespace("same-p")
            .processes(common::worker_processes(2))
            .start()
            .unwrap();
        let outcomes = |namespace: &str| {
            let cpu = Remote::builder(url)
                .namespace(namespace)
                .max_depth(10_000)
                .connect()
                .unwrap();
            all(&cpu)
        };
        let (on_threads, on_processes) = (outcomes("same-t"), outcomes("same-p"));
        assert_eq!(on_threads, on_processes);
        // (What they agree on.)
        assert_eq!(on_threads[0], "Ok(55)");
        assert_eq!(on_threads[1], r#"Ok(("A BC", 2))"#);
        assert_eq!(on_threads[3], "Ok(20)");
        assert!(
            on_threads[4].starts_with("Protocol")
                && on_threads[4].contains("could not decode its arguments, so it did not run"),
            "{}",
            on_threads[4]
        );
        assert!(
            on_threads[5].contains("could not encode its result")
                && on_threads[5].contains("nested deeper than 128 levels"),
            "{}",
            on_threads[5]
        );
        assert!(
            on_threads[6].starts_with("Protocol") && on_threads[6].contains("maximum payload"),
            "{}",
            on_threads[6]
        );
    });
}

/// The calls run in the worker's own process, and a panic in one comes back
/// `Panicked` with its message while the worker goes on serving.
#[test]
fn a_panic_comes_back_and_the_worker_goes_on() {
    #[yieldable]
    fn call_boom(message: String) -> Result<u64, OffloadError> {
        try_offload!(boom, message)
    }
    #[yieldable]
    fn call_pid() -> Result<u32, OffloadError> {
        try_offload!(pid)
    }
    common::watchdog(Duration::from_secs(120), || {
        let server = nats(&[]);
        let url = server.url();
        let _worker = on_threads(url, "panics", 2).start().unwrap();
        let cpu = requester(url, "panics", Duration::from_secs(30));
        assert_eq!(call_pid().run_with(&cpu).unwrap(), std::process::id());
        common::quietly(|| {
            // Short calls, soon run on the runtime's thread, and long ones.
            for i in 0..20 {
                let error = call_boom(format!("trouble {i}"))
                    .run_with(&cpu)
                    .unwrap_err();
                assert_eq!(error.kind(), OffloadErrorKind::Panicked, "{error}");
                assert_eq!(error.panic_message(), Some(format!("trouble {i}").as_str()));
                assert_eq!(call_sumn(i).run_with(&cpu).unwrap(), i * (i + 1) / 2);
            }
        });
    });
}

/// A call that runs past the worker's deadline is answered
/// `DeadlineExceeded` at that deadline, saying that it runs on; it keeps
/// its thread until it returns, so a worker of one thread runs nothing else
/// meanwhile: a call that waits for it fails at its own requester's
/// deadline, unrun. Once the first returns, the worker serves again.
#[test]
fn a_call_past_the_workers_deadline_is_answered_and_keeps_its_thread() {
    common::watchdog(Duration::from_secs(120), || {
        let server = nats(&[]);
        let url = server.url();
        let worker = on_threads(url, "overrun", 1)
            .deadline(Duration::from_millis(1500))
            .start()
            .unwrap();
        let patient = requester(url, "overrun", Duration::from_secs(3600));
        let gate = &GATES[OVERRUN];
        let error = call_held(OVERRUN, 1).run_with(&patient).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded, "{error}");
        let text = error.to_string();
        assert!(text.contains("1.5s") && text.contains("runs on"), "{text}");
        assert!(!text.contains("killed and replaced"), "{text}");
        assert_eq!(gate.running.load(Ordering::SeqCst), 1, "it runs on");

        // It waits for the thread, past its requester's deadline.
        let impatient = requester(url, "overrun", Duration::from_secs(1));
        let error = call_sumn(3).run_with(&impatient).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded, "{error}");
        assert_eq!(gate.running.load(Ordering::SeqCst), 1);

        gate.released.store(true, Ordering::SeqCst);
        eventually("the held call returned", || {
            gate.running.load(Ordering::SeqCst) == 0
        });
        // The waiting call then had the thread, and was dropped unrun.
        eventually("the waiting call was dropped", || worker.dropped() >= 1);
        assert_eq!(call_sumn(3).run_with(&patient).unwrap(), 6);
        assert_eq!(gate.started.load(Ordering::SeqCst), 1);
    });
}

/// Held calls take the worker's threads: no more than `threads` run at
/// once, however many come, and past the byte budget the others are
/// refused "busy", unrun.
#[test]
fn calls_beyond_the_threads_wait_within_the_byte_budget() {
    common::watchdog(Duration::from_secs(120), || {
        let server = nats(&[]);
        let url = server.url();
        // Two held calls and two waiting ones fill the budget (1 KiB a call
        // and its few bytes of arguments).
        let worker = on_threads(url, "bound", 2)
            .max_pending_bytes((4 << 10) + 100)
            .start()
            .unwrap();
        let cpu = std::sync::Arc::new(requester(url, "bound", Duration::from_secs(3600)));
        let gate = &GATES[BOUND];
        // Four held calls: two run, two wait (within the budget).
        let held: Vec<_> = (0..4)
            .map(|n| {
                let cpu = std::sync::Arc::clone(&cpu);
                thread::spawn(move || call_held(BOUND, n).run_with(&*cpu))
            })
            .collect();
        eventually("both threads hold a call", || {
            gate.started.load(Ordering::SeqCst) == 2
        });
        // All four received: 4 KiB and their arguments (three take less).
        eventually("the worker holds four calls", || {
            worker.pending_bytes() >= 4 << 10
        });
        assert!(worker.pending_bytes() <= (4 << 10) + 100);
        // The fifth is over the budget.
        eventually("a call was refused", || {
            let refused = call_held(BOUND, 9).run_with(&*cpu).is_err_and(|error| {
                error.kind() == OffloadErrorKind::Unavailable
                    && error.to_string().contains("the worker is busy")
            });
            refused && worker.refused() >= 1
        });
        assert_eq!(gate.started.load(Ordering::SeqCst), 2, "nothing else ran");

        gate.released.store(true, Ordering::SeqCst);
        for (n, call) in held.into_iter().enumerate() {
            assert_eq!(call.join().unwrap().unwrap(), n as u64);
        }
        assert_eq!(gate.started.load(Ordering::SeqCst), 4);
        assert_eq!(gate.most.load(Ordering::SeqCst), 2, "never more than two");
        eventually("the answered calls' bytes are given back", || {
            worker.pending_bytes() == 0
        });
    });
}

/// With a signing key, a worker on threads runs only signed calls, and a
/// signed call sent again (a replay) runs once.
#[test]
fn signatures_and_replays_are_checked_on_threads_too() {
    const KEY: [u8; 32] = *b"the fleet's key, 32 bytes long!!";
    common::watchdog(Duration::from_secs(120), || {
        let server = nats(&[]);
        let url = server.url();
        let worker = on_threads(url, "signed", 1)
            .signing_key(KEY)
            .start()
            .unwrap();
        let unsigned = requester(url, "signed", Duration::from_secs(30));
        let error = call_sumn(3).run_with(&unsigned).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Unavailable, "{error}");
        assert!(error.to_string().contains("signing key"), "{error}");

        let signed = Remote::builder(url)
            .namespace("signed")
            .signing_key(KEY)
            .connect()
            .unwrap();
        // Every call the attacker sees, it sends again 50 times.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let attacker = runtime.block_on(async_nats::connect(url)).unwrap();
        let mut calls = runtime
            .block_on(attacker.subscribe("ythread.signed.>"))
            .unwrap();
        runtime.block_on(attacker.flush()).unwrap();
        let client = attacker.clone();
        runtime.spawn(async move {
            use futures_util::StreamExt;
            while let Some(call) = calls.next().await {
                let Some(reply) = call.reply.clone() else {
                    continue;
                };
                for _ in 0..50 {
                    let _ = client
                        .publish_with_reply_and_headers(
                            call.subject.clone(),
                            reply.clone(),
                            call.headers.clone().unwrap_or_default(),
                            call.payload.clone(),
                        )
                        .await;
                }
            }
        });
        call_counted(SIGNED, 300).run_with(&signed).unwrap();
        eventually("the copies were dropped", || worker.dropped() >= 50);
        assert_eq!(COUNTED[SIGNED].load(Ordering::SeqCst), 1, "a replay ran");
    });
}

// --- a crash takes a worker on threads down ----------------------------------

const CRASHING_WORKER_ENV: &str = "YTHREAD_TEST_THREADS_WORKER";

/// In a worker process on threads: serve the NATS server named by the
/// variable, print "ready", and serve until killed. A no-op in the test run.
#[test]
#[ignore = "an entry point of the processes other tests start, not a test"]
fn threads_worker_entry() {
    let Ok(url) = std::env::var(CRASHING_WORKER_ENV) else {
        return;
    };
    let worker = on_threads(&url, "crash", 2).start().unwrap();
    println!("ready {}", std::process::id());
    worker.wait();
}

/// What isolation buys: an abort in a call on threads ends the whole
/// worker. Its call fails at its requester's deadline, and the next call
/// finds no worker.
#[test]
fn a_crash_on_threads_takes_the_worker_down() {
    #[yieldable]
    fn call_crash() -> Result<u64, OffloadError> {
        try_offload!(crash)
    }
    common::watchdog(Duration::from_secs(120), || {
        let server = nats(&[]);
        let url = server.url();
        let mut worker = EntryProcess::start("threads_worker_entry", CRASHING_WORKER_ENV, url);
        let cpu = requester(url, "crash", Duration::from_secs(2));
        assert_eq!(call_sumn(4).run_with(&cpu).unwrap(), 10);
        let error = call_crash().run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded, "{error}");
        eventually(
            "the worker process ended",
            || !matches!(common::process_state(worker.pid()), Some(state) if state != 'Z'),
        );
        // (Once the server has seen its connection go.)
        eventually("no worker serves the next call", || {
            call_sumn(4).run_with(&cpu).is_err_and(|error| {
                error.kind() == OffloadErrorKind::Unavailable
                    && error.to_string().contains("no worker serves it")
            })
        });
        worker.kill();
    });
}
