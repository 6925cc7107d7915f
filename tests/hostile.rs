//! The example servers against hostile clients, over loopback: bad input,
//! runaway `n`, clients that send nothing or leave early, floods of idle
//! connections. After each, the server is up and answers a valid request
//! right. `sumserver` is `Server::start_plain`, `ysumserver` is
//! `Server::start_yieldable` with its strategy: the very code the examples
//! run.

// The helpers of ythread's own tests (the watchdog, the worker processes).
#[path = "../ythread/tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ythread::{Exclusive, Pool};
use ythread_demo::server::{self, Limits, Server};
use ythread_demo::{MAX_SUMMABLE_N, expected_sum, request};

/// The servers under test, as the issue names them: `sumserver`, and
/// `ysumserver` with `pool` and `exclusive`.
const KINDS: [&str; 3] = ["plain", "pool(2)", "exclusive"];

/// Small limits, so that the tests run fast.
const LIMITS: Limits = Limits {
    max_n: 1_000_000,
    read_timeout: Duration::from_secs(1),
    max_connections: 4,
};

fn start(kind: &str, limits: Limits) -> Server {
    let listener = server::bind("127.0.0.1:0").unwrap();
    match kind {
        "plain" => Server::start_plain(listener, limits),
        "pool(2)" => Server::start_yieldable(listener, limits, Pool::new(2)),
        "exclusive" => Server::start_yieldable(listener, limits, Exclusive::new()),
        _ => unreachable!("unknown server kind {kind}"),
    }
    .unwrap()
}

/// Sends `bytes`, closes the write side, and returns what the server sent
/// back before closing (the client gives up after 10 s).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(bytes).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    answer(&mut stream).unwrap()
}

/// What the server sends on `stream` until it closes it (the client gives
/// up after 30 s).
fn answer(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map(|_| answer)
}

/// The server is up and right.
fn serves(addr: SocketAddr, kind: &str) {
    for n in [0, 1, 1000, LIMITS.max_n] {
        assert_eq!(
            request(addr, n).unwrap(),
            expected_sum(n),
            "{kind}, n = {n}"
        );
    }
}

/// Every connection ends (within 10 s), none is left holding a thread.
fn ends_every_connection(server: &Server, kind: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.connections() > 0 {
        assert!(Instant::now() < deadline, "{kind}: connections stay open");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn bad_requests_get_an_error_line_and_cost_no_cpu() {
    common::watchdog(Duration::from_secs(120), || {
        for kind in KINDS {
            let server = start(kind, LIMITS);
            let addr = server.addr();
            for (request, why) in [
                (&b"hello"[..], "not a decimal number"),
                (b"", "no request"),
                (b"   ", "not a decimal number"),
                (b"-5", "not a decimal number"),
                (b"+-1", "not a decimal number"),
                (b"1e6", "not a decimal number"),
                (b"\x00\xff\x12\x80", "not a decimal number"),
                (b"1000001", "this server takes n up to 1000000"),
                // Sixteen digits: the seed's protocol takes them; days of
                // work for `sumn`, refused before any.
                (b"9999999999999999", "this server takes n up to 1000000"),
                (b"12345678901234567890", "at most 16 bytes"),
                (&[b'7'; 4096], "at most 16 bytes"),
            ] {
                let answer = exchange(addr, request);
                assert!(
                    answer.starts_with("error: ") && answer.ends_with('\n') && answer.contains(why),
                    "{kind}, {:?}: {answer:?}",
                    String::from_utf8_lossy(&request[..request.len().min(20)])
                );
            }
            serves(addr, kind);
            server.stop();
        }
    });
}

#[test]
fn a_client_that_trickles_bytes_after_a_refused_request_is_closed() {
    common::watchdog(Duration::from_secs(60), || {
        for kind in KINDS {
            let server = start(kind, LIMITS);
            let mut trickler = TcpStream::connect(server.addr()).unwrap();
            trickler.write_all(b"x").unwrap();
            let writer = {
                let mut trickler = trickler.try_clone().unwrap();
                thread::spawn(move || {
                    // A byte every 50 ms, until the server closes (at most
                    // 30 s): each read of its drain would come in time.
                    let until = Instant::now() + Duration::from_secs(30);
                    while Instant::now() < until && trickler.write_all(b"7").is_ok() {
                        thread::sleep(Duration::from_millis(50));
                    }
                })
            };
            // (The server closes with the trickled bytes unread: a reset
            // may follow the error line.)
            let mut answer = String::new();
            trickler
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let _ = trickler.read_to_string(&mut answer);
            assert!(answer.starts_with("error: "), "{kind}: {answer:?}");
            // Closed by the server: its slot is free for others.
            ends_every_connection(&server, kind);
            serves(server.addr(), kind);
            drop(trickler);
            writer.join().unwrap();
            server.stop();
        }
    });
}

#[test]
fn a_sum_that_does_not_fit_64_bits_is_refused_whatever_the_limit() {
    common::watchdog(Duration::from_secs(60), || {
        let limits = Limits {
            max_n: u64::MAX,
            ..LIMITS
        };
        for kind in KINDS {
            let server = start(kind, limits);
            let over = (MAX_SUMMABLE_N + 1).to_string();
            let answer = exchange(server.addr(), over.as_bytes());
            assert!(
                answer.contains("does not fit in 64 bits"),
                "{kind}: {answer:?}"
            );
            serves(server.addr(), kind);
            server.stop();
        }
    });
}

#[test]
fn a_client_that_sends_nothing_is_timed_out() {
    common::watchdog(Duration::from_secs(60), || {
        for kind in KINDS {
            let server = start(kind, LIMITS);
            let mut silent = TcpStream::connect(server.addr()).unwrap();
            let answer = answer(&mut silent).unwrap();
            assert!(
                answer.starts_with("error: no request in time"),
                "{kind}: {answer:?}"
            );
            drop(silent);
            ends_every_connection(&server, kind);
            serves(server.addr(), kind);
            server.stop();
        }
    });
}

#[test]
fn clients_that_leave_before_the_answer_cost_nothing_more() {
    common::watchdog(Duration::from_secs(120), || {
        for kind in KINDS {
            let server = start(kind, LIMITS);
            let addr = server.addr();
            for _ in 0..20 {
                // Ask for the largest work allowed, then leave: the server
                // computes it, and its reply finds no one.
                let mut impatient = TcpStream::connect(addr).unwrap();
                impatient.write_all(b"1000000").unwrap();
                drop(impatient);
                // Connect and leave at once.
                drop(TcpStream::connect(addr).unwrap());
            }
            serves(addr, kind);
            ends_every_connection(&server, kind);
            server.stop();
        }
    });
}

#[test]
fn a_flood_of_idle_connections_waits_for_room_and_valid_requests_are_served() {
    common::watchdog(Duration::from_secs(120), || {
        for kind in KINDS {
            let server = Arc::new(start(kind, LIMITS));
            let addr = server.addr();
            // 24 clients connect and send nothing: the kernel queues them in
            // the listen backlog; the server takes 4 at a time, each until
            // its read time-out.
            let idle: Vec<TcpStream> = (0..24).map(|_| TcpStream::connect(addr).unwrap()).collect();
            let most = {
                let server = Arc::clone(&server);
                thread::spawn(move || {
                    let mut most = 0;
                    let until = Instant::now() + Duration::from_secs(2);
                    while Instant::now() < until {
                        most = most.max(server.connections());
                        thread::sleep(Duration::from_millis(5));
                    }
                    most
                })
            };
            // A valid client behind them is served once room is made.
            assert_eq!(request(addr, 1000).unwrap(), expected_sum(1000), "{kind}");
            let most = most.join().unwrap();
            assert!(
                (1..=LIMITS.max_connections).contains(&most),
                "{kind}: {most} at once"
            );
            // Each idle client was told why it was closed.
            for mut stream in idle {
                let answer = answer(&mut stream).unwrap();
                assert!(
                    answer.starts_with("error: no request in time"),
                    "{kind}: {answer:?}"
                );
            }
            serves(addr, kind);
            Arc::into_inner(server).unwrap().stop();
        }
    });
}

// --- a strategy with a deadline -------------------------------------------

#[test]
fn work_past_the_deadline_of_processes_is_an_error_line() {
    common::watchdog(Duration::from_secs(120), || {
        let processes = Arc::new(
            common::worker_processes(1)
                .deadline(Duration::from_secs(1))
                .build()
                .unwrap(),
        );
        // Any n is taken, so that only the deadline bounds the work.
        let limits = Limits {
            max_n: MAX_SUMMABLE_N,
            ..LIMITS
        };
        let listener = server::bind("127.0.0.1:0").unwrap();
        let server = Server::start_yieldable(listener, limits, Arc::clone(&processes)).unwrap();
        // About a second of work in a release build, several in the
        // tests' debug build: past the deadline; the small sums of
        // `serves` below stay far within it.
        let answer = exchange(server.addr(), b"4000000000");
        assert!(
            answer.starts_with("error: ") && answer.contains("deadline"),
            "{answer:?}"
        );
        assert_eq!(processes.restarts(), 1, "the runaway worker was replaced");
        serves(server.addr(), "processes");
        server.stop();
    });
}
