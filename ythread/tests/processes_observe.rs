//! What a program sees of its worker processes (features `tracing` and
//! `metrics`), with real worker processes: this test binary started again
//! in worker mode, which serves before the test harness runs (no setup).
//!
//! - a worker's `tracing` events reach the test's subscriber inside the
//!   handler's span, bounded, and hostile event frames never hurt the
//!   parent;
//! - each line a worker prints carries the call it was running when it
//!   wrote it, however the relay lags;
//! - restarts, live and busy worker processes and dropped events read back
//!   from a real recorder.
//!
//! The recorder is this binary's global one, and its gauges are the sum of
//! every `Processes` in it: the tests take turns ([`serial`]).

mod common;
#[path = "common/frames.rs"]
#[allow(dead_code, unreachable_pub)]
mod frames;
/// What the recorder was given, added up.
#[path = "common/metric_totals.rs"]
#[allow(dead_code, unreachable_pub)] // Not every helper is used here.
mod metric_totals;
/// A `tracing` subscriber that keeps the span tree.
#[path = "common/spans.rs"]
#[allow(dead_code, unreachable_pub)] // Not every helper is used here.
mod spans;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use ythread::{OffloadError, OffloadErrorKind, Yieldable, offloadable, try_offload, yieldable};

use common::eventually;
use frames::{DROPPED, EVENT, raw, raw_event, reply_channel};
use metric_totals::Totals;
use spans::Seen;

// --- the work -------------------------------------------------------------

#[offloadable]
fn greet(n: u64) -> u64 {
    tracing::info!(n, "worker says hi");
    tracing::debug!(target: "greeting::detail", "and more");
    n + 1
}

#[offloadable]
fn flood(n: u64) -> u64 {
    for i in 0..n {
        tracing::info!(i, "flood");
    }
    n
}

#[offloadable]
fn long_event(bytes: usize) -> u64 {
    tracing::warn!(extra = "x".repeat(bytes), "{}", "y".repeat(bytes));
    0
}

/// Writes `bytes` as they are on the worker's reply channel (descriptor 4
/// in a worker): what a worker out of step, or hostile, could send.
#[offloadable]
fn forge(bytes: Vec<u8>) -> u64 {
    use std::io::Write;
    let _ = reply_channel().write_all(&bytes);
    0
}

#[offloadable]
fn chat(tag: String) -> u64 {
    println!("{tag} out");
    eprintln!("{tag} err");
    // Lines left open as the call ends: on stderr, written at once; on
    // stdout, in std's buffer until the worker flushes it at the call's end.
    eprint!("{tag} open-err");
    print!("{tag} open-out");
    0
}

#[offloadable]
fn abort() -> u64 {
    std::process::abort()
}

#[offloadable]
fn sleep_ms(ms: u64) -> u64 {
    thread::sleep(Duration::from_millis(ms));
    ms
}

#[yieldable]
fn request(id: u64, n: u64) -> u64 {
    let _span = tracing::info_span!("request", id).entered();
    ythread::offload!(greet, n)
}

#[yieldable]
fn flooding(n: u64) -> u64 {
    let _span = tracing::info_span!("request", id = 8).entered();
    ythread::offload!(flood, n)
}

#[yieldable]
fn try_forge(bytes: Vec<u8>) -> Result<u64, OffloadError> {
    let _span = tracing::info_span!("request", id = 9).entered();
    try_offload!(forge, bytes)
}

#[yieldable]
fn try_abort() -> Result<u64, OffloadError> {
    try_offload!(abort)
}

#[yieldable]
fn try_sleep(ms: u64) -> Result<u64, OffloadError> {
    try_offload!(sleep_ms, ms)
}

#[yieldable]
fn talk(tag: String) -> u64 {
    ythread::offload!(chat, tag)
}

#[yieldable]
fn say_long(bytes: usize) -> u64 {
    ythread::offload!(long_event, bytes)
}

/// The designation of call `n` of `function` of this file.
fn designation(function: &str, n: u64) -> String {
    format!("{}::{function} call {n}", module_path!())
}

// --- a subscriber that keeps the span tree --------------------------------

/// Runs `body` with a subscriber that keeps what it sees, on this thread.
fn observed<T>(body: impl FnOnce() -> T) -> (T, Vec<Seen>) {
    let (value, records) = spans::observed(body);
    (value, records.seen())
}

/// Checks that `seen` came from inside the `request` span of `id`, with or
/// without an `offload` span under it (the offload's own, where the
/// strategy-independent part of the feature makes one).
fn in_request(seen: &Seen, id: u64) {
    let (name, fields) = &seen.spans[0];
    assert_eq!(name, "request", "{seen:?}");
    assert_eq!(fields.get("id"), Some(&id.to_string()), "{seen:?}");
    match &seen.spans[1..] {
        [] => {}
        [(offload, _)] => assert_eq!(offload, "offload", "{seen:?}"),
        more => panic!("spans under the request: {more:?}"),
    }
}

// --- the recorder ----------------------------------------------------------

/// The value of the metric `name` with `labels`, added up since the start.
fn metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    Totals::global().value(name, labels)
}

/// The description the recorder has of the metric `name`.
fn description(name: &str) -> Option<String> {
    Totals::global().description(name)
}

/// Every test holds this while it runs: the recorder and the gauges are
/// the binary's, and the level the workers are asked for is the highest
/// of every subscriber alive.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    // Installed before any `Processes` is built: it gets their
    // descriptions.
    Totals::global();
    guard
}

// --- the tests ------------------------------------------------------------

#[test]
fn a_workers_event_reaches_the_subscriber_in_the_handlers_span_with_its_fields() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(60), || {
        let cpu = common::worker_processes(1).build().unwrap();
        let pid = cpu.idle_pids()[0];
        let (value, seen) = observed(|| request(7, 41).run_with(&cpu));
        assert_eq!(value, 42);
        let worker: Vec<_> = seen
            .iter()
            .filter(|seen| seen.target == "ythread::worker")
            .collect();
        let [hi, more] = &worker[..] else {
            panic!("two events of the worker's: {seen:#?}");
        };
        assert_eq!(hi.message, "worker says hi n=41");
        assert_eq!(hi.level, tracing::Level::INFO);
        in_request(hi, 7);
        let fields = |pairs: &[(&str, String)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        };
        assert_eq!(
            hi.fields,
            fields(&[
                ("worker_id", "1".into()),
                ("worker_pid", pid.to_string()),
                ("worker_call", designation("greet", 1)),
                ("worker_target", module_path!().into()),
            ])
        );
        assert_eq!(more.message, "and more");
        assert_eq!(more.level, tracing::Level::DEBUG);
        assert_eq!(more.fields["worker_target"], "greeting::detail");
        in_request(more, 7);
        // Every call counts, seen or not.
        assert_eq!(request(8, 1).run_with(&cpu), 2);
        let (_, seen) = observed(|| request(9, 2).run_with(&cpu));
        let hi = seen
            .iter()
            .find(|seen| seen.message.starts_with("worker says hi"))
            .unwrap();
        assert_eq!(hi.fields["worker_call"], designation("greet", 3));
        in_request(hi, 9);
    });
}

#[test]
fn a_flood_of_events_is_bounded_and_its_drop_reported() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(60), || {
        let cpu = common::worker_processes(1).build().unwrap();
        let dropped_before = metric("ythread_worker_events_dropped_total", &[]);
        let (value, seen) = observed(|| flooding(3000).run_with(&cpu));
        assert_eq!(value, 3000);
        let floods = seen
            .iter()
            .filter(|seen| seen.message.starts_with("flood"))
            .count();
        assert_eq!(floods, 1000, "a call's events are bounded at 1000");
        // Their order is kept: the first thousand.
        let last = seen
            .iter()
            .rfind(|seen| seen.message.starts_with("flood"))
            .unwrap();
        assert_eq!(last.message, "flood i=999");
        let summary = seen
            .iter()
            .find(|seen| seen.message.contains("dropped"))
            .unwrap_or_else(|| panic!("no summary: {:?}", seen.last()));
        assert_eq!(summary.level, tracing::Level::WARN);
        assert_eq!(summary.fields["dropped"], "2000");
        assert_eq!(summary.fields["worker_call"], designation("flood", 1));
        in_request(summary, 8);
        assert_eq!(
            metric("ythread_worker_events_dropped_total", &[]) - dropped_before,
            2000.0
        );
        // A long event is cut to its bound, and marked so.
        let (_, seen) = observed(|| say_long(100_000).run_with(&cpu));
        let long = seen
            .iter()
            .find(|seen| seen.target == "ythread::worker")
            .unwrap();
        assert!(
            long.message.len() < 2 * 4096 + 100,
            "{}",
            long.message.len()
        );
        assert!(long.message.starts_with("yyyy") && long.message.ends_with('…'));
        assert!(
            long.message.contains(" extra=\"xxx"),
            "{}",
            &long.message[4090..4110]
        );
    });
}

#[test]
fn hostile_event_frames_fail_their_call_and_never_the_parent() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(120), || {
        // Each on a fresh worker, whose first call is number 1 on its
        // channel.
        let hostile: [(&str, Vec<u8>); 5] = [
            ("garbage", raw(EVENT, 1, &[0xff; 40])),
            ("a level that is none", {
                let body = postcard::to_allocvec(&(9u8, "t", "m", "")).unwrap();
                raw(EVENT, 1, &body)
            }),
            ("another call's", raw_event(99, "t", "m")),
            ("over its bound", {
                let mut frame = (1u32 << 20).to_le_bytes().to_vec();
                frame.push(EVENT);
                frame
            }),
            ("an unreadable drop count", raw(DROPPED, 1, b"")),
        ];
        for (what, bytes) in hostile {
            let cpu = common::worker_processes(1).build().unwrap();
            let before = metric(
                "ythread_worker_restarts_total",
                &[("reason", "out_of_step")],
            );
            let (outcome, _) = observed(|| try_forge(bytes).run_with(&cpu));
            let error = outcome.expect_err(what);
            assert_eq!(error.kind(), OffloadErrorKind::Protocol, "{what}: {error}");
            assert_eq!(cpu.restarts(), 1, "{what}");
            assert_eq!(
                metric(
                    "ythread_worker_restarts_total",
                    &[("reason", "out_of_step")]
                ) - before,
                1.0,
                "{what}"
            );
            // The set goes on.
            let (value, _) = observed(|| request(1, 1).run_with(&cpu));
            assert_eq!(value, 2, "{what}");
        }
        // Well-formed but hostile text: escaped.
        let cpu = common::worker_processes(1).build().unwrap();
        let bytes = raw_event(1, "evil\x07\u{202e}", "\x1b[2Jgone\rfake");
        let (outcome, seen) = observed(|| try_forge(bytes).run_with(&cpu));
        assert_eq!(outcome.unwrap(), 0);
        let evil = &seen[0];
        assert_eq!(evil.message, "\\x1b[2Jgone\\x0dfake");
        assert_eq!(evil.fields["worker_target"], "evil\\x07\\u{202e}");
        in_request(evil, 9);
        assert_eq!(cpu.restarts(), 0);
        // A flood of frames no worker of ours sends (it stops at the
        // bounds): the worker is out of step, the call fails, and the
        // calling thread is not kept reading. (A set of its own: the frames
        // name call 1.)
        let cpu = common::worker_processes(1).build().unwrap();
        let mut bytes = Vec::new();
        for i in 0..3000 {
            bytes.extend(raw_event(1, "t", &format!("raw {i}")));
        }
        let (outcome, seen) = observed(|| try_forge(bytes).run_with(&cpu));
        let error = outcome.unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Protocol, "{error}");
        assert!(error.to_string().contains("past the bounds"), "{error}");
        let raw_events = seen
            .iter()
            .filter(|seen| seen.message.starts_with("raw "))
            .count();
        assert_eq!(
            raw_events, 1000,
            "the events within the bounds were emitted"
        );
        assert_eq!(cpu.restarts(), 1);
        // The set goes on.
        let (value, _) = observed(|| request(1, 1).run_with(&cpu));
        assert_eq!(value, 2);
    });
}

#[test]
fn every_line_carries_the_call_that_printed_it() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(60), || {
        let (cpu, lines) = common::one_worker_with_its_lines();
        let pid = cpu.idle_pids()[0];
        // Back to back, on one worker: the relay may read the first call's
        // lines after the second has started.
        assert_eq!(talk("first".into()).run_with(&cpu), 0);
        assert_eq!(talk("second".into()).run_with(&cpu), 0);
        // Three lines a call; the drop would wait for them only 500 ms.
        eventually("the relay passes on the six lines", || {
            let lines = lines.lock().unwrap();
            let count = |tag| lines.iter().filter(|line| line.contains(tag)).count();
            count("first") >= 3 && count("second") >= 3
        });
        drop(cpu);
        let lines = lines.lock().unwrap().clone();
        for (tag, call) in [("first", 1), ("second", 2)] {
            let label = format!(
                "[ythread worker 1 pid {pid} {}] ",
                designation("chat", call)
            );
            let mine: Vec<_> = lines.iter().filter(|line| line.contains(tag)).collect();
            for line in &mine {
                assert!(line.starts_with(&label), "{line:?} in {lines:#?}");
            }
            let text: Vec<_> = mine.iter().map(|line| &line[label.len()..]).collect();
            for expected in [
                format!("{tag} out"),
                format!("{tag} err"),
                format!("{tag} open-err{tag} open-out"),
            ] {
                assert!(
                    text.contains(&expected.as_str()),
                    "{expected:?} in {lines:#?}"
                );
            }
        }
        assert!(
            lines.iter().all(|line| !line.contains("ythread-call")),
            "no mark is relayed: {lines:#?}"
        );
    });
}

#[test]
fn restarts_live_and_busy_workers_read_back_from_the_recorder() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(120), || {
        let live = || metric("ythread_worker_processes", &[]);
        let busy = || metric("ythread_worker_processes_busy", &[]);
        let restarts = |reason| metric("ythread_worker_restarts_total", &[("reason", reason)]);
        let (live_before, busy_before) = (live(), busy());
        let cpu = Arc::new(
            common::worker_processes(2)
                .deadline(Duration::from_millis(1500))
                .build()
                .unwrap(),
        );
        assert_eq!(live() - live_before, 2.0);
        let crashed = restarts("crashed");
        let error = try_abort().run_with(&*cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::WorkerDied, "{error}");
        assert_eq!(restarts("crashed") - crashed, 1.0);
        eventually("the crashed worker replaced", || {
            live() - live_before == 2.0
        });
        let deadline = restarts("deadline");
        let error = try_sleep(60_000).run_with(&*cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded, "{error}");
        assert_eq!(restarts("deadline") - deadline, 1.0);
        eventually("the killed worker replaced", || live() - live_before == 2.0);
        // One call under way: one busy worker, then none.
        let running = {
            let cpu = Arc::clone(&cpu);
            thread::spawn(move || try_sleep(700).run_with(&*cpu))
        };
        eventually("a busy worker", || busy() - busy_before == 1.0);
        assert_eq!(running.join().unwrap().unwrap(), 700);
        assert_eq!(busy() - busy_before, 0.0);
        assert_eq!(cpu.restarts(), 2);
        drop(cpu);
        assert_eq!(live() - live_before, 0.0, "dropped, its workers are gone");
        assert!(
            description("ythread_worker_restarts_total").is_some_and(|d| d.contains("replaced")),
            "described"
        );
    });
}

/// A recorder installed after the first `Processes` was built is told what
/// the series are when the next one is built, with no call of
/// `describe_metrics`.
#[test]
fn a_recorder_installed_later_is_described_when_a_processes_is_built() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(60), || {
        let build = || common::worker_processes(1).build().unwrap();
        drop(build());
        let later = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = later.snapshotter();
        let names = [
            "ythread_worker_restarts_total",
            "ythread_worker_processes",
            "ythread_offloads_total",
        ];
        metrics::with_local_recorder(&later, || {
            drop(build());
            // (The debugging recorder shows a description only beside a
            // series it holds; the workers' series go to the global one.)
            for name in names {
                metrics::counter!(name).absolute(0);
            }
        });
        let described = Totals::new(snapshotter);
        for name in names {
            assert!(
                described.description(name).is_some(),
                "{name} is not described"
            );
        }
    });
}
