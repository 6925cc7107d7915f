//! The seed's client: a closed loop of requests, one fresh connection per
//! request, split across client threads, every answer checked.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::{expected_sum, request_on};

/// How many times a refused connection is retried before the request counts
/// as an error. A loaded server's listen queue can overflow; the seed's
/// client would simply have failed.
pub const CONNECT_RETRIES: u32 = 5;

/// The first wait before retrying a refused connection; it doubles at each
/// retry.
const FIRST_BACKOFF: Duration = Duration::from_millis(1);

/// The largest latency the histogram records, in µs (one minute); longer
/// ones are recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What a run of [`closed_loop`] measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Wall time of the whole run, from starting the first client thread to
    /// the end of the last one: the seed's figure.
    pub wall: Duration,
    /// Requests made, answered or not.
    pub requests: u64,
    /// Answers that were not `expected_sum(n)`.
    pub wrong: u64,
    /// Requests that got no answer: the connection failed (after
    /// [`CONNECT_RETRIES`] retries if it was refused), or the answer was not
    /// a number.
    pub errors: u64,
    /// Connections retried because they were refused, counted over all
    /// requests (including the ones that finally failed).
    pub retries: u64,
    /// Latency of each answered request, connect to close, in µs.
    pub latency_us: Histogram<u64>,
}

impl LoadReport {
    /// A report of no requests yet.
    pub fn new() -> Self {
        LoadReport {
            wall: Duration::ZERO,
            requests: 0,
            wrong: 0,
            errors: 0,
            retries: 0,
            latency_us: latency_histogram(),
        }
    }

    /// Counts one request: its answer (checked against `expected`), the
    /// connections it retried, and its latency if it was answered.
    pub fn record(
        &mut self,
        answer: &io::Result<u64>,
        retries: u32,
        expected: u64,
        latency: Duration,
    ) {
        self.requests += 1;
        self.retries += u64::from(retries);
        match answer {
            Ok(sum) => {
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.latency_us.saturating_record(us.max(1));
                self.wrong += u64::from(*sum != expected);
            }
            Err(_) => self.errors += 1,
        }
    }

    /// Adds another client thread's counts and latencies to this report
    /// (its `wall` is left alone: the caller knows the whole run's).
    pub fn merge(&mut self, other: &LoadReport) {
        self.requests += other.requests;
        self.wrong += other.wrong;
        self.errors += other.errors;
        self.retries += other.retries;
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds");
    }

    /// Requests answered (rightly or wrongly).
    pub fn answered(&self) -> u64 {
        self.requests - self.errors
    }

    /// Answered requests per second of wall time.
    pub fn requests_per_sec(&self) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            self.answered() as f64 / secs
        } else {
            0.0
        }
    }

    /// Mean latency in µs (0 if nothing was answered).
    pub fn mean_us(&self) -> f64 {
        self.latency_us.mean()
    }

    /// Median latency in µs.
    pub fn p50_us(&self) -> u64 {
        self.latency_us.value_at_quantile(0.50)
    }

    /// 99th percentile latency in µs.
    pub fn p99_us(&self) -> u64 {
        self.latency_us.value_at_quantile(0.99)
    }

    /// 99.9th percentile latency in µs.
    pub fn p999_us(&self) -> u64 {
        self.latency_us.value_at_quantile(0.999)
    }

    /// Largest latency in µs.
    pub fn max_us(&self) -> u64 {
        self.latency_us.max()
    }

    /// Whether every request got the right answer.
    pub fn all_ok(&self) -> bool {
        self.wrong == 0 && self.errors == 0
    }
}

impl Default for LoadReport {
    fn default() -> Self {
        LoadReport::new()
    }
}

/// An empty latency histogram with the range [`LoadReport`] uses.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Runs the seed's client: `requests` requests in total, split across
/// `clients` threads (the first `requests % clients` threads make one more,
/// so the split totals exactly `requests`), each request on a fresh
/// connection sending `n`, each answer checked against
/// [`expected_sum`]`(n)`.
///
/// Failures are counted in the report, never panics.
///
/// # Panics
///
/// Panics if `clients` is zero or a client thread cannot be spawned.
pub fn closed_loop(addr: SocketAddr, n: u64, requests: u64, clients: usize) -> LoadReport {
    assert!(clients > 0, "closed_loop: at least one client thread");
    let clients_u64 = clients as u64;
    let start = Instant::now();
    let threads: Vec<_> = (0..clients_u64)
        .map(|i| requests / clients_u64 + u64::from(i < requests % clients_u64))
        .filter(|&share| share > 0)
        .map(|share| {
            thread::Builder::new()
                .name("sumclient".into())
                .spawn(move || client_thread(addr, n, share))
                .expect("failed to spawn a client thread")
        })
        .collect();
    let mut report = LoadReport::new();
    for thread in threads {
        report.merge(&thread.join().expect("a client thread panicked"));
    }
    report.wall = start.elapsed();
    report
}

/// One client thread's share of [`closed_loop`]; its `wall` is unused.
fn client_thread(addr: SocketAddr, n: u64, requests: u64) -> LoadReport {
    let expected = expected_sum(n);
    let mut report = LoadReport::new();
    for _ in 0..requests {
        let start = Instant::now();
        let (answer, retries) = request_with_retries(addr, n);
        report.record(&answer, retries, expected, start.elapsed());
    }
    report
}

/// One request of the seed's client, retrying a refused connection up to
/// [`CONNECT_RETRIES`] times with a doubling backoff; returns the answer and
/// the number of retries.
///
/// Only the connect is retried: once `n` is sent the request is not repeated,
/// so a server is never asked twice for one request.
///
/// # Errors
///
/// Any I/O error, or `InvalidData` if the answer is not a number.
pub fn request_with_retries(addr: SocketAddr, n: u64) -> (io::Result<u64>, u32) {
    let mut backoff = FIRST_BACKOFF;
    let mut retries = 0;
    let mut stream = loop {
        match TcpStream::connect(addr) {
            Ok(stream) => break stream,
            Err(e) if retries < CONNECT_RETRIES && is_transient(&e) => {
                thread::sleep(backoff);
                backoff *= 2;
                retries += 1;
            }
            Err(e) => return (Err(e), retries),
        }
    };
    (request_on(&mut stream, n), retries)
}

/// Whether a failed connect may succeed if tried again.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::TimedOut
            | io::ErrorKind::AddrNotAvailable
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// A server answering `answer` to every request, for `count` requests.
    fn fake_server(answer: &'static str, count: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming().take(count) {
                let mut stream = stream.unwrap();
                let mut buf = [0; 16];
                let _ = stream.read(&mut buf).unwrap();
                stream.write_all(answer.as_bytes()).unwrap();
            }
        });
        addr
    }

    #[test]
    fn the_split_totals_exactly_the_requests() {
        let addr = fake_server("55", 10);
        let report = closed_loop(addr, 10, 10, 4);
        assert_eq!(report.requests, 10);
        assert_eq!(report.latency_us.len(), 10);
        assert!(report.all_ok(), "{report:?}");
    }

    #[test]
    fn wrong_answers_are_counted() {
        let addr = fake_server("56", 3);
        let report = closed_loop(addr, 10, 3, 2);
        assert_eq!((report.requests, report.wrong, report.errors), (3, 3, 0));
        assert!(!report.all_ok());
    }

    #[test]
    fn refused_connections_are_errors_not_panics() {
        // Bind then drop: nobody listens on this port any more.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let report = closed_loop(addr, 10, 2, 1);
        assert_eq!((report.requests, report.errors), (2, 2));
        assert_eq!(report.retries, 2 * u64::from(CONNECT_RETRIES));
        assert_eq!(report.latency_us.len(), 0);
    }
}
