//! What a `Remote` call tells of itself, against a real `nats-server` on
//! 127.0.0.1 and a `Worker` on threads in this test process: the trace id
//! the requester sends in the `traceparent` header is the one of the
//! worker's `remote_call` span, in which the offloaded function's own events
//! are; malformed `traceparent` headers from a raw client change nothing of
//! a call but a counter; and the metrics add up.
//!
//! One subscriber and one metrics recorder serve every test of this file
//! (both are process-wide): each test has a namespace of its own, which
//! the metrics carry as a label, and a tag its events carry.
//!
//! `nats-server` must be installed: the README's test command
//! (`scripts/test`) installs it. Without it these tests fail, naming it;
//! they never skip.

mod common;
/// What the recorder was given, added up.
#[path = "common/metric_totals.rs"]
#[allow(dead_code, unreachable_pub)] // Not every helper is used here.
mod metric_totals;
#[path = "common/replay.rs"]
#[allow(dead_code, unreachable_pub)]
mod replay;
/// A `tracing` subscriber that keeps the span tree.
#[path = "common/spans.rs"]
#[allow(dead_code, unreachable_pub)] // Not every helper is used here.
mod spans;

use common::eventually;
use common::nats::NatsServer;
use metric_totals::Totals;
use replay::Replay;
use spans::SpanRecord;

use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ythread::remote::{Remote, Worker, async_nats};
use ythread::{OffloadError, OffloadErrorKind, Yieldable, offloadable, try_offload, yieldable};

// --- the work -------------------------------------------------------------

/// Says so, with `tag`, as an event of its own, and adds one.
#[offloadable]
fn traced(tag: String, n: u64) -> u64 {
    tracing::info!(tag = tag.as_str(), n, "inside the offloaded function");
    n + 1
}

#[offloadable]
fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[offloadable]
fn boom() -> u64 {
    common::quietly(|| panic!("boom, on purpose"))
}

#[offloadable]
fn slow(ms: u64) -> u64 {
    thread::sleep(Duration::from_millis(ms));
    ms
}

/// The requester a worker's function calls through (set by the one test
/// that serves it).
static RELAY: OnceLock<Remote> = OnceLock::new();

/// Calls `sumn(n)` on another worker, from a worker's thread.
#[offloadable]
fn relay(n: u64) -> u64 {
    let relay = RELAY.get().expect("the test sets the relay's requester");
    call_sumn(n).run_with(relay).expect("the relayed call")
}

#[yieldable]
fn call_relay(n: u64) -> Result<u64, OffloadError> {
    try_offload!(relay, n)
}

#[yieldable]
fn call_traced(tag: String, n: u64) -> Result<u64, OffloadError> {
    try_offload!(traced, tag, n)
}

#[yieldable]
fn call_sumn(n: u64) -> Result<u64, OffloadError> {
    try_offload!(sumn, n)
}

#[yieldable]
fn call_boom() -> Result<u64, OffloadError> {
    try_offload!(boom)
}

#[yieldable]
fn call_slow(ms: u64) -> Result<u64, OffloadError> {
    try_offload!(slow, ms)
}

// --- what the subscriber and the recorder saw -------------------------------

struct Observed {
    spans: &'static spans::Recorder,
    metrics: &'static Totals,
}

/// The process's subscriber and recorder, installed by the first test that
/// asks (before any `Remote` or `Worker`: the metrics are described once).
fn observed() -> Observed {
    Observed {
        spans: spans::recorder(),
        metrics: Totals::global(),
    }
}

fn nats() -> NatsServer {
    NatsServer::started(&[])
}

fn worker(url: &str, namespace: &str) -> Worker {
    Worker::builder(url)
        .namespace(namespace)
        .threads(2)
        .start()
        .unwrap()
}

fn is_trace_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && text != "0".repeat(32)
}

// --- 1. one trace, from the requester to the function ------------------------

/// The function's own event is inside the worker's `remote_call` span,
/// whose `trace_id` is the one the requester told its span, and whose
/// `parent_id` is the requester's span that sent the call.
#[test]
fn the_functions_events_are_in_the_remote_call_span_of_the_trace_sent() {
    common::watchdog(Duration::from_secs(60), || {
        let observed = observed();
        let server = nats();
        let _worker = worker(server.url(), "observe-trace");
        let cpu = Remote::builder(server.url())
            .namespace("observe-trace")
            .connect()
            .unwrap();
        let caller = tracing::info_span!("caller", test = "observe-trace");
        let answer = caller.in_scope(|| call_traced("observe-trace".to_owned(), 41).run_with(&cpu));
        assert_eq!(answer.unwrap(), 42);

        let seen = observed.spans.records();
        // The requester's side: the trace id, as a field of the current span
        // (the offload's, if it declares `trace_id`) or an event in it.
        let caller_seq = seen
            .spans
            .iter()
            .position(|span| {
                span.name == "caller"
                    && span.fields.get("test").map(String::as_str) == Some("observe-trace")
            })
            .expect("the caller's span");
        let within_caller = |seq: usize| seen.is_within(seq, caller_seq);
        let recorded = seen.spans.iter().enumerate().find_map(|(seq, span)| {
            let trace_id = span.fields.get("trace_id")?;
            (within_caller(seq) && span.name != "remote_call")
                .then(|| (trace_id.clone(), span.id, span.fields.get("call").cloned()))
        });
        let sent = seen.events.iter().find_map(|event| {
            let trace_id = event.fields.get("trace_id")?;
            let innermost = *event.scope.first()?;
            (event.target == "ythread::remote" && within_caller(innermost)).then(|| {
                (
                    trace_id.clone(),
                    seen.spans[innermost].id,
                    event.fields.get("call").cloned(),
                )
            })
        });
        let (trace_id, sender, call) = recorded
            .or(sent)
            .expect("the requester told its span the trace id it sent");
        assert!(is_trace_id(&trace_id), "{trace_id:?}");

        // The worker's side.
        let event = seen
            .events
            .iter()
            .find(|event| event.fields.get("tag").map(String::as_str) == Some("observe-trace"))
            .expect("the offloaded function's event");
        let remote_call = seen
            .scope(event)
            .into_iter()
            .find(|span| span.name == "remote_call")
            .unwrap_or_else(|| panic!("the function's event is in no remote_call span: {event:?}"));
        assert_eq!(remote_call.target, "ythread::remote");
        assert_eq!(remote_call.fields["trace_id"], trace_id);
        assert_eq!(remote_call.fields["parent_id"], format!("{sender:016x}"));
        let function = &remote_call.fields["function"];
        assert!(function.ends_with("::traced"), "{function}");
        // One name for the call, on both sides.
        let named = &remote_call.fields["call"];
        assert!(
            named.starts_with(&format!("{function} call "))
                && named.ends_with(&format!(" trace {trace_id}")),
            "{named}"
        );
        // (The name is on the requester's side when its offload span is
        // left out: see the next test.)
        assert_eq!(call, None, "the offload span has the trace id");
        let deadline: u64 = remote_call.fields["deadline_ms"].parse().unwrap();
        assert!((1..=30_000).contains(&deadline), "{deadline}");
        // A root on the worker's side: its parent is in the other process.
        assert_eq!(remote_call.parent, None);
    });
}

/// With ythread's spans left out on the requester's thread (`ythread=info`),
/// the requester says the call's trace id and name in an event, in the
/// caller's span; the worker's `remote_call` span has the same name.
#[test]
fn without_the_offload_span_the_requester_names_the_call_as_the_worker_does() {
    common::watchdog(Duration::from_secs(60), || {
        let observed = observed();
        let server = nats();
        let _worker = worker(server.url(), "observe-name");
        let cpu = Remote::builder(server.url())
            .namespace("observe-name")
            .connect()
            .unwrap();
        let caller = tracing::info_span!("caller", test = "observe-name");
        let answer = spans::hide_ythread_spans(|| {
            caller.in_scope(|| call_traced("observe-name".to_owned(), 1).run_with(&cpu))
        });
        assert_eq!(answer.unwrap(), 2);

        let seen = observed.spans.records();
        let caller_seq = seen
            .spans
            .iter()
            .position(|span| {
                span.name == "caller"
                    && span.fields.get("test").map(String::as_str) == Some("observe-name")
            })
            .expect("the caller's span");
        let sent = seen
            .events
            .iter()
            .find(|event| {
                event.target == "ythread::remote"
                    && event.fields.contains_key("call")
                    && event
                        .scope
                        .first()
                        .is_some_and(|&innermost| innermost == caller_seq)
            })
            .expect("the requester's event naming the call, in the caller's span");
        let trace_id = &sent.fields["trace_id"];
        assert!(is_trace_id(trace_id), "{trace_id:?}");
        let remote_call = seen
            .spans
            .iter()
            .find(|span| {
                span.name == "remote_call" && span.fields.get("trace_id") == Some(trace_id)
            })
            .expect("the worker's span of the call");
        assert_eq!(sent.fields["call"], remote_call.fields["call"]);
    });
}

/// A call a worker's function makes while it serves one continues the
/// trace it received: the second worker's span has the first's trace id,
/// and the first worker's span as its parent.
#[test]
fn a_call_made_while_serving_one_continues_its_trace() {
    common::watchdog(Duration::from_secs(60), || {
        let observed = observed();
        let server = nats();
        let _first = worker(server.url(), "observe-relay");
        let _second = worker(server.url(), "observe-relayed");
        RELAY
            .set(
                Remote::builder(server.url())
                    .namespace("observe-relayed")
                    .connect()
                    .unwrap(),
            )
            .unwrap_or_else(|_| panic!("the relay's requester is set once"));
        let cpu = Remote::builder(server.url())
            .namespace("observe-relay")
            .connect()
            .unwrap();
        assert_eq!(call_relay(10).run_with(&cpu).unwrap(), 55);

        let seen = observed.spans.records();
        let remote_calls = |function: &str| -> Vec<(usize, &SpanRecord)> {
            seen.spans
                .iter()
                .enumerate()
                .filter(|(_, span)| {
                    span.name == "remote_call" && span.fields["function"].ends_with(function)
                })
                .collect()
        };
        let [(first_seq, first)] = remote_calls("::relay")[..] else {
            panic!("one call of relay: {:?}", remote_calls("::relay"));
        };
        let relayed: Vec<_> = remote_calls("::sumn")
            .into_iter()
            .filter(|(_, span)| span.fields.get("trace_id") == first.fields.get("trace_id"))
            .collect();
        let [(_, second)] = relayed[..] else {
            panic!("no call of sumn in relay's trace: {first:?}");
        };
        assert!(is_trace_id(&second.fields["trace_id"]));
        // Sent from inside the first worker's span (itself, or a span within
        // it: the offload's). (`tracing` reuses the ids of closed spans: one
        // of the spans with that id is.)
        let parent_id = u64::from_str_radix(&second.fields["parent_id"], 16).unwrap();
        assert!(
            seen.spans
                .iter()
                .enumerate()
                .any(|(seq, span)| span.id == parent_id && seen.is_within(seq, first_seq)),
            "the relayed call's parent is not within {first:?}"
        );
    });
}

// --- 2. malformed trace contexts change nothing -------------------------------

/// A raw client sends calls with `traceparent` headers that are not one:
/// each runs and answers exactly as the same call without the header, the
/// one past its expiry is dropped as it would be, each header is counted
/// as ignored, and the worker goes on serving.
#[test]
fn malformed_traceparents_are_ignored_and_counted() {
    common::watchdog(Duration::from_secs(60), || {
        let observed = observed();
        let server = nats();
        let namespace = "observe-malformed";
        let worker = worker(server.url(), namespace);
        let cpu = Arc::new(
            Remote::builder(server.url())
                .namespace(namespace)
                .connect()
                .unwrap(),
        );
        // A call of the requester's, as it goes by: its subject, arguments
        // and headers.
        let requester = Arc::clone(&cpu);
        let (replay, called) = Replay::catch(server.url(), namespace, move || {
            call_sumn(10).run_with(&*requester)
        });
        assert_eq!(called.unwrap(), 55);
        let call = &replay.call;
        let header = call
            .headers
            .as_ref()
            .and_then(|headers| headers.get("traceparent"))
            .expect("the call carries a traceparent")
            .as_str()
            .to_owned();
        let parts: Vec<&str> = header.split('-').collect();
        assert!(
            parts.len() == 4
                && parts[0] == "00"
                && is_trace_id(parts[1])
                && parts[2].len() == 16
                && parts[3] == "01",
            "{header}"
        );

        let request = |headers: async_nats::HeaderMap| -> Option<Vec<u8>> {
            replay
                .request(replay.inbox(), headers, Duration::from_secs(2))
                .expect("published")
        };
        let ok = |outcome| {
            observed.metrics.value(
                "ythread_remote_worker_calls_total",
                &[("namespace", namespace), ("outcome", outcome)],
            )
        };
        let ignored = || {
            observed.metrics.value(
                "ythread_remote_worker_traceparent_ignored_total",
                &[("namespace", namespace)],
            )
        };
        let expired = || {
            observed.metrics.value(
                "ythread_remote_worker_rejected_total",
                &[("namespace", namespace), ("reason", "expired")],
            )
        };

        let baseline = request(async_nats::HeaderMap::new()).expect("an answer");
        let (ran, ignored_before) = (ok("ok"), ignored());
        let valid = format!("00-{}-{}-01", "ab".repeat(16), "cd".repeat(8));
        let malformed = [
            format!("{valid}-00"),
            valid.to_uppercase(),
            format!("00-{}-{}-01", "0".repeat(32), "cd".repeat(8)),
            format!("00-{}-{}-01", "ab".repeat(16), "0".repeat(16)),
            format!("00-{}-{}-01", "xy".repeat(16), "cd".repeat(8)),
            format!("ff-{}-{}-01", "ab".repeat(16), "cd".repeat(8)),
            valid.replace('-', "_"),
            String::new(),
            "a".repeat(64 << 10),
        ];
        for value in &malformed {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("traceparent", value.as_str());
            let answer = request(headers);
            assert_eq!(answer.as_ref(), Some(&baseline), "with {:.80}", value);
        }
        // Two of them, each valid: which would be the requester's?
        let mut twice = async_nats::HeaderMap::new();
        twice.insert("traceparent", valid.as_str());
        twice.append("traceparent", valid.as_str());
        assert_eq!(request(twice).as_ref(), Some(&baseline));
        let sent = malformed.len() + 1;
        eventually("each call counted as run", || ok("ok") - ran == sent as f64);
        assert_eq!(ignored() - ignored_before, sent as f64);

        // Past its expiry, with a malformed header: dropped unrun, as
        // without one, and the header counted.
        let (expired_before, ignored_before) = (expired(), ignored());
        let past = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
            - 1000;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Ythread-Expires", past.to_string().as_str());
        headers.insert("traceparent", "00-garbage");
        assert_eq!(request(headers), None);
        assert_eq!(expired() - expired_before, 1.0);
        assert_eq!(ignored() - ignored_before, 1.0);

        // A valid one from a raw client names its trace.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("traceparent", valid.as_str());
        assert_eq!(request(headers).as_ref(), Some(&baseline));
        let seen = observed.spans.records();
        assert!(
            seen.spans.iter().any(|span| span.name == "remote_call"
                && span.fields.get("trace_id") == Some(&"ab".repeat(16))
                && span.fields.get("parent_id") == Some(&"cd".repeat(8))),
            "no remote_call span of the raw client's trace"
        );
        drop(seen);

        // The worker serves on.
        assert_eq!(worker.ready(), Ok(()));
        assert_eq!(call_sumn(4).run_with(&*cpu).unwrap(), 10);
    });
}

// --- 3. the metrics add up ------------------------------------------------------

/// Calls in flight go back to zero, and each call is counted once, by
/// outcome, on both sides; every metric is described.
#[test]
fn the_metrics_count_calls_by_outcome_on_both_sides() {
    common::watchdog(Duration::from_secs(60), || {
        let observed = observed();
        let server = nats();
        let namespace = "observe-metrics";
        let _worker = worker(server.url(), namespace);
        let cpu = Arc::new(
            Remote::builder(server.url())
                .namespace(namespace)
                .deadline(Duration::from_millis(1500))
                .connect()
                .unwrap(),
        );
        let metric = |name: &str, labels: &[(&str, &str)]| {
            let mut all = vec![("namespace", namespace)];
            all.extend_from_slice(labels);
            observed.metrics.value(name, &all)
        };
        let replies = |outcome| metric("ythread_remote_replies_total", &[("outcome", outcome)]);
        let worker_calls =
            |outcome| metric("ythread_remote_worker_calls_total", &[("outcome", outcome)]);
        let in_flight = || metric("ythread_remote_calls_in_flight", &[]);

        for n in 0..5 {
            assert_eq!(call_sumn(n).run_with(&*cpu).unwrap(), n * (n + 1) / 2);
        }
        assert_eq!(
            call_boom().run_with(&*cpu).unwrap_err().kind(),
            OffloadErrorKind::Panicked
        );
        // One in flight while it runs; then out of time at the requester,
        // and run to the end at the worker.
        let requester = Arc::clone(&cpu);
        let slow_call = thread::spawn(move || call_slow(3000).run_with(&*requester));
        eventually("one call in flight", || in_flight() == 1.0);
        let late = slow_call.join().unwrap().unwrap_err();
        assert_eq!(late.kind(), OffloadErrorKind::DeadlineExceeded);
        // Its error names the call as the worker's span does.
        assert!(late.to_string().contains("::slow call "), "{late}");
        assert_eq!(in_flight(), 0.0);

        assert_eq!(replies("ok"), 5.0);
        assert_eq!(replies("panicked"), 1.0);
        assert_eq!(replies("deadline_exceeded"), 1.0);
        eventually("the slow call ran to its end at the worker", || {
            worker_calls("ok") == 6.0
        });
        assert_eq!(worker_calls("panicked"), 1.0);

        // A call no worker serves: the requester's count only.
        let nowhere = Remote::builder(server.url())
            .namespace("observe-nowhere")
            .connect()
            .unwrap();
        let unserved = call_sumn(3).run_with(&nowhere).unwrap_err();
        assert_eq!(unserved.kind(), OffloadErrorKind::Unavailable);
        assert!(unserved.to_string().contains("::sumn call 1"), "{unserved}");
        assert_eq!(
            observed.metrics.value(
                "ythread_remote_replies_total",
                &[("namespace", "observe-nowhere"), ("outcome", "unavailable")],
            ),
            1.0
        );

        for name in [
            "ythread_remote_calls_in_flight",
            "ythread_remote_replies_total",
            "ythread_remote_worker_calls_total",
        ] {
            assert!(
                observed.metrics.description(name).is_some(),
                "{name} is not described"
            );
        }
    });
}
