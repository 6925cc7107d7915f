//! A hostile NATS peer against a `Worker` (features `remote`,
//! `tracing`, `metrics`): many `traceparent` values, a header near 1 MiB,
//! a non-UTF-8 header value (raw protocol), reply subjects of 3 KB, with
//! control characters, or whose last token has 17 hex digits. The worker
//! must answer each call as without them (or drop what it cannot parse,
//! and serve on), never panic, and never put the peer's text in a span.

mod common;
#[path = "common/metric_totals.rs"]
#[allow(dead_code, unreachable_pub)]
mod metric_totals;
#[path = "common/replay.rs"]
#[allow(dead_code, unreachable_pub)]
mod replay;
#[path = "common/spans.rs"]
#[allow(dead_code, unreachable_pub)]
mod spans;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common::nats::NatsServer;
use replay::Replay;
use ythread::remote::{Remote, Worker, async_nats};
use ythread::{OffloadError, Yieldable, offloadable, try_offload, yieldable};

#[offloadable]
fn sumn(n: u64) -> u64 {
    (1..=n).sum()
}

#[yieldable]
fn call_sumn(n: u64) -> Result<u64, OffloadError> {
    try_offload!(sumn, n)
}

#[test]
fn hostile_headers_and_reply_subjects_change_nothing_but_labels() {
    common::watchdog(Duration::from_secs(120), || {
        let spans = spans::recorder();
        let totals = metric_totals::Totals::global();
        let server = NatsServer::started(&[]);
        let namespace = "attack20";
        let ignored = || {
            totals.value(
                "ythread_remote_worker_traceparent_ignored_total",
                &[("namespace", namespace)],
            )
        };
        let worker = Worker::builder(server.url())
            .namespace(namespace)
            .threads(2)
            .start()
            .unwrap();
        let cpu = Arc::new(
            Remote::builder(server.url())
                .namespace(namespace)
                .connect()
                .unwrap(),
        );
        let requester = Arc::clone(&cpu);
        let (replay, called) = Replay::catch(server.url(), namespace, move || {
            call_sumn(10).run_with(&*requester)
        });
        assert_eq!(called.unwrap(), 55);
        let call = &replay.call;

        let request = |reply: String, headers: async_nats::HeaderMap| -> Option<Vec<u8>> {
            replay
                .request(reply, headers, Duration::from_secs(3))
                .expect("published")
        };
        let baseline = request(replay.inbox(), async_nats::HeaderMap::new()).expect("an answer");
        let ignored_before = ignored();

        // 5000 traceparent values, each valid.
        let valid = format!("00-{}-{}-01", "ab".repeat(16), "cd".repeat(8));
        let mut many = async_nats::HeaderMap::new();
        for _ in 0..5000 {
            many.append("traceparent", valid.as_str());
        }
        assert_eq!(
            request(replay.inbox(), many).as_ref(),
            Some(&baseline),
            "many"
        );

        // A header block near the server's 1 MiB max_payload.
        let mut big = async_nats::HeaderMap::new();
        big.insert("traceparent", "0".repeat(900 * 1024).as_str());
        assert_eq!(
            request(replay.inbox(), big).as_ref(),
            Some(&baseline),
            "1 MB header"
        );

        // Reply subjects: 3 KB; 17 hex digits; control characters.
        let long = format!("{}.{}", replay.inbox(), "a".repeat(3000));
        assert_eq!(
            request(long, async_nats::HeaderMap::new()).as_ref(),
            Some(&baseline),
            "3 KB (10 KB is over nats-server max_control_line 4096: the server drops the sender)"
        );
        let seventeen = format!("{}.{}", replay.inbox(), "1".repeat(17));
        assert_eq!(
            request(seventeen, async_nats::HeaderMap::new()).as_ref(),
            Some(&baseline),
            "17"
        );
        // (NATS may refuse to deliver to such a subject: no answer, or the
        // true one.)
        let control = format!("{}.\u{1b}[31mred\u{7}.beef", replay.inbox());
        let answer = replay
            .request(
                control,
                async_nats::HeaderMap::new(),
                Duration::from_secs(3),
            )
            .ok()
            .flatten();
        assert!(
            answer.is_none() || answer == Some(baseline.clone()),
            "control characters"
        );

        // A non-UTF-8 traceparent value, over the raw protocol.
        let mut tcp = std::net::TcpStream::connect(format!("127.0.0.1:{}", server.port())).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut hello = [0u8; 4096];
        let _ = tcp.read(&mut hello);
        tcp.write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n",
        )
        .unwrap();
        let headers: &[u8] = b"NATS/1.0\r\ntraceparent: \xff\xfe\x00\x80\r\n\r\n";
        let payload = &call.payload;
        let inbox = "_RAW.attack20.reply.1";
        tcp.write_all(format!("SUB {inbox} 1\r\n").as_bytes())
            .unwrap();
        tcp.write_all(
            format!(
                "HPUB {} {inbox} {} {}\r\n",
                call.subject,
                headers.len(),
                headers.len() + payload.len()
            )
            .as_bytes(),
        )
        .unwrap();
        tcp.write_all(headers).unwrap();
        tcp.write_all(payload).unwrap();
        tcp.write_all(b"\r\nPING\r\n").unwrap();
        // The true answer, or none: the worker's NATS client (async-nats)
        // may take the message for a broken connection, drop it and
        // reconnect (as it does here).
        let answer = raw_reply(&mut tcp, inbox);
        assert!(
            answer.is_none() || answer == Some(baseline.clone()),
            "a non-UTF-8 traceparent: {answer:?}"
        );
        // The worker serves on, after whatever reconnection that cost.
        common::eventually("the worker serves on", || {
            call_sumn(4).run_with(&*cpu).ok() == Some(10)
        });
        // Ignored: 5000 values (one is wanted), 900 KB, and the value not
        // UTF-8 if the worker got it, which it did if it answered (it may
        // have got it and answered late). Counted as each call is taken,
        // in order: the call just answered came after it on the same
        // connection.
        let ignored_here = ignored() - ignored_before;
        if answer.is_some() {
            assert_eq!(ignored_here, 3.0);
        } else {
            assert!([2.0, 3.0].contains(&ignored_here), "{ignored_here}");
        }
        assert_eq!(worker.ready(), Ok(()));

        // No span or event carries the peer's text: call ids are hex of at
        // most 16 digits or `?`.
        let records = spans.records();
        let served: Vec<_> = records
            .spans
            .iter()
            .filter(|s| s.name == "remote_call")
            .collect();
        assert!(served.len() >= 7, "{} remote_call spans", served.len());
        for span in served {
            let designation = &span.fields["call"];
            let call = designation
                .split(" call ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or_else(|| panic!("{span:?}"));
            assert!(
                call.len() <= 16 && call.bytes().all(|b| b.is_ascii_hexdigit()) || call == "?",
                "{span:?}"
            );
        }
        // (async_nats's own debug events repeat subjects: not ythread's words.)
        for event in records
            .events
            .iter()
            .filter(|e| e.target.starts_with("ythread"))
        {
            for value in event.fields.values() {
                assert!(
                    !value.contains('\u{1b}') && !value.contains("aaaaaaaaaaaaaaaaa"),
                    "{event:?}"
                );
                assert!(!value.contains("11111111111111111"), "{event:?}");
            }
        }
    });
}

/// The payload of the first message to `subject` read from `tcp`, a raw
/// NATS connection subscribed to it (`MSG` or `HMSG`, whose header block
/// is skipped); `None` if none comes in time (its read timeout).
fn raw_reply(tcp: &mut std::net::TcpStream, subject: &str) -> Option<Vec<u8>> {
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // A whole control line, then its message's bytes.
        while let Some(end) = read.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&read[..end]).into_owned();
            let words: Vec<&str> = line.split(' ').collect();
            let (header, total) = match words.as_slice() {
                ["MSG", to, _, total] if *to == subject => (0, total.parse::<usize>().ok()?),
                ["HMSG", to, _, header, total] if *to == subject => {
                    (header.parse::<usize>().ok()?, total.parse::<usize>().ok()?)
                }
                _ => {
                    read.drain(..end + 2);
                    continue;
                }
            };
            while read.len() < end + 2 + total {
                let n = tcp.read(&mut chunk).ok().filter(|&n| n > 0)?;
                read.extend_from_slice(&chunk[..n]);
            }
            return Some(read[end + 2 + header..end + 2 + total].to_vec());
        }
        let n = tcp.read(&mut chunk).ok().filter(|&n| n > 0)?;
        read.extend_from_slice(&chunk[..n]);
    }
}
