//! A hostile worker process against its parent (feature
//! `tracing`): forged call marks in its output, lines cut at the 64 KiB
//! chunk boundary, a flood without newlines, raw `EVENT`/`DROPPED`/`DONE`
//! frames on its reply channel (descriptor 4), a death in the middle of an
//! event frame, restarts under load with events on.
//!

mod common;
#[path = "common/frames.rs"]
#[allow(dead_code, unreachable_pub)]
mod frames;
#[path = "common/metric_totals.rs"]
#[allow(dead_code, unreachable_pub)]
mod metric_totals;
#[path = "common/spans.rs"]
#[allow(dead_code, unreachable_pub)]
mod spans;

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use ythread::{
    OffloadError, OffloadErrorKind, Processes, Yieldable, offloadable, try_offload, yieldable,
};

use frames::{DONE, DROPPED, EVENT, raw, raw_event, reply_channel};

const LINE: usize = 64 * 1024;

// --- the work -------------------------------------------------------------

/// Writes `bytes` to stderr in one write each, as given.
#[offloadable]
fn write_err(chunks: Vec<Vec<u8>>) -> u64 {
    let mut stderr = std::io::stderr();
    for chunk in &chunks {
        let _ = stderr.write_all(chunk);
    }
    0
}

/// Writes `bytes` to the reply channel, then, if `then_abort`, aborts.
#[offloadable]
fn forge_then(bytes: Vec<u8>, then_abort: bool) -> u64 {
    let _ = reply_channel().write_all(&bytes);
    if then_abort {
        std::process::abort();
    }
    0
}

/// Leaves a thread behind that writes `bytes` to the reply channel once
/// the file `gate` exists (the test writes it after this call was
/// answered), or after 30 s.
#[offloadable]
fn forge_later(bytes: Vec<u8>, gate: String) -> u64 {
    thread::spawn(move || {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while !std::path::Path::new(&gate).exists() && std::time::Instant::now() < until {
            thread::sleep(Duration::from_millis(2));
        }
        let _ = reply_channel().write_all(&bytes);
    });
    0
}

/// Writes `total` bytes of `x` to stderr, no newline, in 64 KiB writes.
#[offloadable]
fn flood_err(total: usize) -> u64 {
    let chunk = vec![b'x'; 64 * 1024];
    let mut stderr = std::io::stderr();
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len());
        let _ = stderr.write_all(&chunk[..n]);
        left -= n;
    }
    total as u64
}

#[offloadable]
fn events_and_maybe_abort(n: u64, abort: bool) -> u64 {
    for i in 0..n {
        tracing::info!(i, "ev");
        eprintln!("line {i}");
    }
    if abort {
        std::process::abort();
    }
    n
}

#[offloadable]
fn plus_one(n: u64) -> u64 {
    n + 1
}

#[yieldable]
fn call_write_err(chunks: Vec<Vec<u8>>) -> Result<u64, OffloadError> {
    try_offload!(write_err, chunks)
}

#[yieldable]
fn call_forge_then(bytes: Vec<u8>, then_abort: bool) -> Result<u64, OffloadError> {
    try_offload!(forge_then, bytes, then_abort)
}

#[yieldable]
fn call_forge_later(bytes: Vec<u8>, gate: String) -> Result<u64, OffloadError> {
    try_offload!(forge_later, bytes, gate)
}

#[yieldable]
fn call_flood_err(total: usize) -> Result<u64, OffloadError> {
    try_offload!(flood_err, total)
}

#[yieldable]
fn call_events(n: u64, abort: bool) -> Result<u64, OffloadError> {
    try_offload!(events_and_maybe_abort, n, abort)
}

#[yieldable]
fn call_plus_one(n: u64) -> Result<u64, OffloadError> {
    try_offload!(plus_one, n)
}

fn designation(function: &str, n: u64) -> String {
    format!("{}::{function} call {n}", module_path!())
}

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    metric_totals::Totals::global();
    guard
}

/// Waits until the relay has relayed a line containing `text`.
fn wait_line(lines: &Mutex<Vec<String>>, text: &str) {
    let end = Instant::now() + Duration::from_secs(20);
    while !lines.lock().unwrap().iter().any(|l| l.contains(text)) {
        assert!(Instant::now() < end, "no line with {text:?}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// The label and the text of a relayed line.
fn split(line: &str) -> (&str, &str) {
    let end = line.find("] ").expect("a label");
    (&line[..end + 2], &line[end + 2..])
}

// --- lines, labels and text shaped like them ----------------------------------

/// Text left open at every offset around the 64 KiB chunk boundary (with a
/// NUL near its end on odd rounds, where call marks once started) when the
/// call ends: the text is relayed whole, escaped, under the call's label,
/// with nothing of ythread's among it, and the next call's line under its
/// own.
#[test]
fn open_lines_around_the_chunk_boundary_are_relayed_whole_under_their_call() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(240), || {
        let (cpu, lines) = common::one_worker_with_its_lines();
        let pid = cpu.idle_pids()[0];
        let mut call = 0;
        let mut sizes: Vec<usize> = (LINE - 70..=LINE + 2).collect();
        sizes.extend([
            2 * LINE - 48,
            2 * LINE - 47,
            2 * LINE - 1,
            2 * LINE,
            3 * LINE - 20,
        ]);
        for (i, &k) in sizes.iter().enumerate() {
            // An open line of `k` bytes, with a NUL near its end on odd
            // rounds (a NUL in the last 64 bytes of a chunk is where a
            // chunk is cut).
            let mut text = vec![b'a'; k];
            if i % 2 == 1 {
                text[k - 30] = 0;
            }
            assert_eq!(call_write_err(vec![text]).run_with(&cpu).unwrap(), 0);
            call += 1;
            let tag = format!("next-{i}");
            assert_eq!(
                call_write_err(vec![format!("{tag}\n").into_bytes()])
                    .run_with(&cpu)
                    .unwrap(),
                0
            );
            call += 1;
            wait_line(&lines, &tag);
            let got = std::mem::take(&mut *lines.lock().unwrap());
            let label = format!(
                "[ythread worker 1 pid {pid} {}] ",
                designation("write_err", call - 1)
            );
            let next_label = format!(
                "[ythread worker 1 pid {pid} {}] ",
                designation("write_err", call)
            );
            let mut relayed = String::new();
            for line in &got {
                assert!(
                    !line.contains("ythread-call"),
                    "a mark relayed at k={k}: {:.200}",
                    &line[line.len().saturating_sub(200)..]
                );
                if line.contains(&tag) {
                    assert_eq!(line, &format!("{next_label}{tag}"), "k={k}");
                } else {
                    assert!(line.starts_with(&label), "k={k}: {:.120}", line);
                    relayed.push_str(split(line).1);
                }
            }
            let expected = String::from_utf8(text_escaped(k, i)).unwrap();
            assert_eq!(relayed.len(), expected.len(), "k={k}");
            assert!(relayed == expected, "k={k}: text changed");
        }
        assert_eq!(cpu.restarts(), 0);
    });
}

fn text_escaped(k: usize, i: usize) -> Vec<u8> {
    let mut text = vec![b'a'; k];
    if i % 2 == 1 {
        text.splice(k - 30..k - 29, b"\\x00".iter().copied());
    }
    text
}

/// Call marks as earlier versions wrote them, NULs, a line that looks like
/// a label: plain text, escaped, under the call's own label.
#[test]
fn text_shaped_like_marks_is_text_under_the_calls_label() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(60), || {
        let (cpu, lines) = common::one_worker_with_its_lines();
        let pid = cpu.idle_pids()[0];
        let forged: Vec<Vec<u8>> = vec![
            b"\0ythread-call 0000000000000000 1 end\n".to_vec(),
            b"\0ythread-call ffffffffffffffff 1 start\n".to_vec(),
            b"\0ythread-call \n".to_vec(),
            b"\0\0\0ythread-call 1 start\n".to_vec(),
            b"] [ythread worker 9 pid 1 evil call 1] hi\r\n".to_vec(),
            b"after\n".to_vec(),
        ];
        assert_eq!(call_write_err(forged.clone()).run_with(&cpu).unwrap(), 0);
        wait_line(&lines, "after");
        let label = format!(
            "[ythread worker 1 pid {pid} {}] ",
            designation("write_err", 1)
        );
        let got = lines.lock().unwrap().clone();
        assert_eq!(got.len(), forged.len(), "{got:#?}");
        for line in &got {
            assert!(line.starts_with(&label), "{line:?}");
            assert!(
                !line[label.len()..].contains('\0') && !line.contains('\r'),
                "{line:?}"
            );
        }
        // Each line is the text written, its NULs and carriage returns
        // escaped.
        let expected: Vec<String> = forged
            .iter()
            .map(|text| {
                let text = String::from_utf8_lossy(&text[..text.len() - 1]);
                format!(
                    "{label}{}",
                    text.replace('\0', "\\x00").replace('\r', "\\x0d")
                )
            })
            .collect();
        assert_eq!(got, expected);
        assert_eq!(cpu.restarts(), 0);
    });
}

/// Work that writes call marks of every shape, split across writes or
/// left open: each of its lines carries its own call's label, never a text
/// of the worker's choosing, and the next calls' lines theirs.
#[test]
fn text_shaped_like_marks_never_moves_a_label() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(60), || {
        let (cpu, lines) = common::one_worker_with_its_lines();
        let pid = cpu.idle_pids()[0];
        // (`{N}`: a nonce, as marks carried.)
        let forged: Vec<String> = vec![
            "a\n".into(),
            "\0ythread-call {N} 1 end\n".into(),
            "b-after-forged-end\n".into(),
            "\0ythread-call {N} 999 start\n".into(),
            "c-after-unknown-start\n".into(),
            "\0ythread-call {N} 99999999999 start\n".into(),
            "\0ythread-call {N} +1 start\n".into(),
            "\0ythread-call {N} 1 start] evil\n".into(),
            "\0ythread-call {N} 2 start\n".into(),
            "d-after-next-start\n".into(),
            // A mark split across two writes.
            "\0ythread-call {N} ".into(),
            "1 start\n".into(),
            "e\n".into(),
            "open-line-with-mark-prefix \0ythread-call {N} ".into(),
        ];
        let forged = forged
            .iter()
            .map(|chunk| chunk.replace("{N}", "0123456789abcdef").into_bytes())
            .collect();
        assert_eq!(call_write_err(forged).run_with(&cpu).unwrap(), 0);
        assert_eq!(
            call_write_err(vec![b"second\n".to_vec()])
                .run_with(&cpu)
                .unwrap(),
            0
        );
        assert_eq!(
            call_write_err(vec![b"third\n".to_vec()])
                .run_with(&cpu)
                .unwrap(),
            0
        );
        wait_line(&lines, "third");
        let got = lines.lock().unwrap().clone();
        // (Nothing is written between calls: every line has a call's label.)
        let labels = [
            format!(
                "[ythread worker 1 pid {pid} {}] ",
                designation("write_err", 1)
            ),
            format!(
                "[ythread worker 1 pid {pid} {}] ",
                designation("write_err", 2)
            ),
            format!(
                "[ythread worker 1 pid {pid} {}] ",
                designation("write_err", 3)
            ),
        ];
        for line in &got {
            assert!(
                labels.iter().any(|label| line.starts_with(label.as_str())),
                "a label not the parent's: {line:?}\n{got:#?}"
            );
            assert!(!line.contains("evil]"), "{got:#?}");
        }
        // Every line each call wrote is labelled with it.
        for (label, text) in [
            (&labels[0], "a"),
            (&labels[0], "b-after-forged-end"),
            (&labels[0], "c-after-unknown-start"),
            (&labels[0], "d-after-next-start"),
            (&labels[0], "e"),
            (&labels[1], "second"),
            (&labels[2], "third"),
        ] {
            assert!(
                got.contains(&format!("{label}{text}")),
                "{label}{text} in {got:#?}"
            );
        }
        assert_eq!(cpu.restarts(), 0);
    });
}

/// A worker writes 64 MiB to stderr without a newline during a call:
/// relayed in chunks no longer than 64 KiB (escaped), the parent's memory
/// stays bounded, and the call answers.
#[test]
fn a_flood_without_newlines_is_relayed_in_bounded_chunks() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(240), || {
        let longest = Arc::new(Mutex::new((0usize, 0usize)));
        let sink = Arc::clone(&longest);
        let cpu = Processes::builder()
            .workers(1)
            .worker_output(move |line| {
                let mut l = sink.lock().unwrap();
                l.0 = l.0.max(line.len());
                l.1 += line.matches('x').count();
            })
            .build()
            .unwrap();
        let rss = || -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        let before = rss();
        let total = 64 << 20;
        assert_eq!(call_flood_err(total).run_with(&cpu).unwrap(), total as u64);
        let end = Instant::now() + Duration::from_secs(120);
        while longest.lock().unwrap().1 < total {
            assert!(
                Instant::now() < end,
                "relayed {:?}",
                longest.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(10));
        }
        let (max_line, _) = *longest.lock().unwrap();
        assert!(max_line <= LINE + 200, "a line of {max_line} bytes");
        let grown = rss().saturating_sub(before);
        assert!(grown < 32 << 10, "the parent grew by {grown} KiB");
    });
}

// --- frames -------------------------------------------------------------------

/// A worker that dies in the middle of an event frame (its header and
/// part of its body sent) fails its call `WorkerDied`: it ran.
#[test]
fn a_death_in_the_middle_of_an_event_frame_is_worker_died() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(60), || {
        let cpu = common::worker_processes(1).build().unwrap();
        let mut bytes = raw_event(1, "t", "a whole one");
        let partial = raw_event(1, "t", &"p".repeat(100));
        bytes.extend(&partial[..20]);
        let (outcome, _) = spans::observed(|| call_forge_then(bytes, true).run_with(&cpu));
        let error = outcome.unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::WorkerDied, "{error}");
        common::eventually("replaced", || cpu.restarts() == 1);
        assert_eq!(call_plus_one(1).run_with(&cpu).unwrap(), 2);
    });
}

/// Declared lengths: an event one byte over its bound, a frame of
/// `u32::MAX`, and a reply (DONE) just over `max_frame`: `Protocol`, the
/// set goes on.
#[test]
fn huge_declared_lengths_are_protocol_errors() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(120), || {
        let over_event = {
            let mut f = (16 * 1024 + 1u32).to_le_bytes().to_vec();
            f.push(EVENT);
            f.extend(1u32.to_le_bytes());
            f
        };
        let max = {
            let mut f = u32::MAX.to_le_bytes().to_vec();
            f.push(DONE);
            f.extend(1u32.to_le_bytes());
            f
        };
        let over_max_frame = {
            let mut f = ((1u32 << 20) + 1).to_le_bytes().to_vec();
            f.push(DONE);
            f.extend(1u32.to_le_bytes());
            f
        };
        for (what, bytes) in [
            ("event", over_event),
            ("u32::MAX", max),
            ("max_frame", over_max_frame),
        ] {
            let cpu = common::worker_processes(1)
                .max_frame(1 << 20)
                .build()
                .unwrap();
            let (outcome, _) = spans::observed(|| call_forge_then(bytes, false).run_with(&cpu));
            let error = outcome.expect_err(what);
            assert_eq!(error.kind(), OffloadErrorKind::Protocol, "{what}: {error}");
            assert_eq!(call_plus_one(1).run_with(&cpu).unwrap(), 2, "{what}");
        }
    });
}

/// A `DROPPED` frame before the events, then events: taken (the order is
/// free); a second `DROPPED`: `Protocol`.
#[test]
fn dropped_before_events_then_a_second_dropped() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(60), || {
        let cpu = common::worker_processes(1).build().unwrap();
        let dropped_total =
            || metric_totals::Totals::global().value("ythread_worker_events_dropped_total", &[]);
        let before = dropped_total();
        let dropped = raw(DROPPED, 1, &postcard::to_allocvec(&5u64).unwrap());
        let mut bytes = dropped.clone();
        bytes.extend(raw_event(1, "t", "after the drop count"));
        let (outcome, seen) = spans::observed(|| call_forge_then(bytes, false).run_with(&cpu));
        assert_eq!(outcome.unwrap(), 0);
        // (The series the next test reads to see a refused count add
        // nothing.)
        assert_eq!(dropped_total() - before, 5.0);
        let seen = seen.seen();
        assert!(seen.iter().any(|s| s.message == "after the drop count"));
        assert!(
            seen.iter()
                .any(|s| s.fields.get("dropped").map(String::as_str) == Some("5"))
        );
        // Call 2: two drop counts.
        let mut bytes = raw(DROPPED, 2, &postcard::to_allocvec(&1u64).unwrap());
        bytes.extend(raw(DROPPED, 2, &postcard::to_allocvec(&1u64).unwrap()));
        let (outcome, _) = spans::observed(|| call_forge_then(bytes, false).run_with(&cpu));
        assert_eq!(outcome.unwrap_err().kind(), OffloadErrorKind::Protocol);
        assert_eq!(call_plus_one(1).run_with(&cpu).unwrap(), 2);
    });
}

/// A `DROPPED` frame's count over what a call can reach (here `u64::MAX`)
/// is a worker out of step: taken as said, it made the parent's
/// `ythread_worker_events_dropped_total` jump by 1.8e19 (found by an
/// attack, fixed).
#[test]
fn a_forged_drop_count_past_any_real_one_fails_the_call_and_spares_the_metric() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(60), || {
        let cpu = common::worker_processes(1).build().unwrap();
        let before =
            metric_totals::Totals::global().value("ythread_worker_events_dropped_total", &[]);
        let bytes = raw(DROPPED, 1, &postcard::to_allocvec(&u64::MAX).unwrap());
        let (outcome, seen) = spans::observed(|| call_forge_then(bytes, false).run_with(&cpu));
        let after =
            metric_totals::Totals::global().value("ythread_worker_events_dropped_total", &[]);
        let seen = seen.seen();
        let said = seen
            .iter()
            .find_map(|s| s.fields.get("dropped").cloned())
            .unwrap_or_default();
        let error = outcome.expect_err("a drop count no worker reaches is out of step");
        assert_eq!(error.kind(), OffloadErrorKind::Protocol, "{error}");
        assert_eq!(
            after - before,
            0.0,
            "a refused DROPPED frame added to ythread_worker_events_dropped_total \
             (warning: dropped={said})"
        );
    });
}

/// A thread the work left behind writes an event of its (finished) call
/// while the worker is idle: the idle watch (a readable reply channel is
/// a worker out of step) replaces the worker, and the next call, of
/// another request, runs on a fresh one.
#[test]
fn an_event_written_while_idle_gets_the_worker_replaced() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(60), || {
        let cpu = common::worker_processes(1).build().unwrap();
        let gate = common::scratch("idle-event").join("gate");
        let (outcome, _) = spans::observed(|| {
            call_forge_later(raw_event(1, "t", "late"), gate.display().to_string()).run_with(&cpu)
        });
        assert_eq!(outcome.unwrap(), 0);
        std::fs::write(&gate, b"").unwrap();
        common::eventually("the idle watch replaces the worker", || cpu.restarts() == 1);
        let (outcome, _) = spans::observed(|| call_plus_one(1).run_with(&cpu));
        assert_eq!(outcome.unwrap(), 2);
        assert_eq!(cpu.restarts(), 1);
    });
}

/// A thread the work of call 1 left behind writes a well-formed `DONE`
/// for call 2 while the worker is idle: the idle watch replaces the worker
/// before call 2 is sent, which gets its true result.
#[test]
fn a_done_written_while_idle_never_answers_the_next_call() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(60), || {
        let cpu = common::worker_processes(1).build().unwrap();
        let forged = raw(DONE, 2, &postcard::to_allocvec(&777u64).unwrap());
        let gate = common::scratch("idle-done").join("gate");
        let forging = call_forge_later(forged, gate.display().to_string());
        assert_eq!(forging.run_with(&cpu).unwrap(), 0);
        std::fs::write(&gate, b"").unwrap();
        common::eventually("the idle watch replaces the worker", || cpu.restarts() == 1);
        let second = call_plus_one(41).run_with(&cpu);
        let third = call_plus_one(1).run_with(&cpu);
        assert_eq!(second.unwrap(), 42);
        assert_eq!(third.unwrap(), 2);
        assert_eq!(cpu.restarts(), 1);
    });
}

/// Restarts under load with events and printed lines on: every outcome is
/// the truth (`ok` with the right value, or `WorkerDied` for the calls that
/// abort), nothing hangs, a worker is replaced once for each abort, and
/// every line the work printed is labelled with one of its calls.
#[test]
fn restarts_under_load_with_events_on() {
    let _serial = serial();
    common::watchdog(Duration::from_secs(240), || {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = Arc::clone(&lines);
        let cpu = Arc::new(
            Processes::builder()
                .workers(2)
                .deadline(Duration::from_secs(30))
                .worker_output(move |line| sink.lock().unwrap().push(line.to_owned()))
                .build()
                .unwrap(),
        );
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cpu = Arc::clone(&cpu);
                thread::spawn(move || {
                    for i in 0..40u64 {
                        let abort = (i + t) % 7 == 3;
                        let (outcome, seen) =
                            spans::observed(|| call_events(5, abort).run_with(&*cpu));
                        match outcome {
                            Ok(n) => assert!(!abort && n == 5, "{t}/{i}: {n}"),
                            Err(error) => {
                                assert!(abort, "{t}/{i}: {error}");
                                assert_eq!(error.kind(), OffloadErrorKind::WorkerDied, "{error}");
                            }
                        }
                        let evs = seen.seen();
                        let worker: Vec<_> = evs
                            .iter()
                            .filter(|s| s.target == "ythread::worker")
                            .collect();
                        let calls: std::collections::BTreeSet<_> = worker
                            .iter()
                            .map(|s| s.fields["worker_call"].clone())
                            .collect();
                        assert!(calls.len() <= 1, "events of two calls in one: {calls:?}");
                        if !abort {
                            assert_eq!(worker.len(), 5, "{t}/{i}");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(cpu.restarts() > 0);
        // One restart for each call that aborts, no more.
        let aborts = (0..4u64)
            .flat_map(|t| (0..40u64).filter(move |i| (i + t) % 7 == 3))
            .count() as u64;
        common::eventually("a restart for each abort", || cpu.restarts() >= aborts);
        assert_eq!(cpu.restarts(), aborts);
        // Every relayed line of the work is labelled with one of its calls.
        common::eventually("the work's lines are relayed", || {
            lines.lock().unwrap().iter().any(|l| l.contains("] line "))
        });
        let got = lines.lock().unwrap().clone();
        for line in got.iter().filter(|l| l.contains("] line ")) {
            let (label, _) = split(line);
            assert!(
                label.contains(&format!("{}::events_and_maybe_abort call ", module_path!())),
                "unlabelled: {line:?}"
            );
        }
    });
}
