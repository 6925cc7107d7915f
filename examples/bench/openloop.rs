//! The open-loop driver: requests arrive at a fixed mean rate, whatever the
//! server does with them.
//!
//! Arrivals are a Poisson process: exponential gaps, drawn up front from a
//! seeded generator, so every server sees the same arrival times. A
//! dispatcher thread sleeps until each arrival is due and hands it to an idle
//! sender thread; when none is idle it starts another, so a slow server never
//! holds back the arrival process. Latency is measured from the *scheduled*
//! arrival time, not from when a sender got round to it: a request delayed
//! by the client still counts its delay (no coordinated omission).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::Exp;
use ythread_demo::client::{LoadReport, latency_histogram, request_with_retries};
use ythread_demo::expected_sum;

/// Senders started before the first arrival; more start on demand. With 8,
/// at the seed's n = 25000 above about 14,000 arrivals/s, senders slow to
/// wake made the driver start a thread per arrival, 500-800 of them, whose
/// creation took the cores the server needed: it sent at 45-70% of the
/// asked rate. 64 held up to 20,000/s in two runs of three (BENCHMARKS.md,
/// issue 19); a driver without a thread per request would be the fix.
const INITIAL_SENDERS: usize = 64;

/// A sender only makes one request at a time; it needs little stack.
const SENDER_STACK: usize = 128 * 1024;

/// What an open-loop run measured beyond the [`LoadReport`].
#[derive(Debug, Clone)]
pub(crate) struct OpenStats {
    /// The mean arrival rate asked for, per second.
    pub(crate) offered_per_sec: f64,
    /// The rate the client really handed arrivals to its senders at, first
    /// to last, per second; `None` for fewer than two requests.
    pub(crate) sent_per_sec: Option<f64>,
    /// From an arrival's scheduled time to the moment a sender started its
    /// request, in µs: the client's own lateness, part of every latency.
    pub(crate) send_lag_us: Histogram<u64>,
    /// Sender threads in the end: the most requests that were outstanding
    /// at once, give or take the idle ones.
    pub(crate) senders: usize,
}

/// Arrival offsets from the start of the run: `requests` exponential gaps
/// with mean `1 / rate`, scaled so that the last arrival falls at
/// `requests / rate`: the schedule offers exactly `rate` on average. (A
/// sample of 200 gaps has a mean off by 7% either way, one time in three;
/// at 90% load that alone can make the offered load 97% or 83%.)
pub(crate) fn poisson_schedule(requests: u64, rate_per_sec: f64, seed: u64) -> Vec<Duration> {
    let gaps = Exp::new(rate_per_sec).expect("a positive, finite arrival rate");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut at = 0.0f64;
    let offsets: Vec<f64> = (0..requests)
        .map(|_| {
            at += rng.sample(gaps);
            at
        })
        .collect();
    let scale = requests as f64 / rate_per_sec / at;
    offsets
        .into_iter()
        .map(|at| Duration::from_secs_f64(at * scale))
        .collect()
}

/// Sends a request asking `sumn(n)` at each offset of `schedule` and checks
/// every answer. `wall` runs from the start to the last answer.
pub(crate) fn open_loop(
    addr: SocketAddr,
    n: u64,
    schedule: &[Duration],
    offered_per_sec: f64,
) -> (LoadReport, OpenStats) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            due: VecDeque::new(),
            idle: 0,
            done: false,
        }),
        wake: Condvar::new(),
    });
    let spawn = |shared: &Arc<Shared>| {
        let shared = Arc::clone(shared);
        thread::Builder::new()
            .name("open-loop-sender".into())
            .stack_size(SENDER_STACK)
            .spawn(move || sender(&shared, addr, n))
            .expect("cannot spawn an open-loop sender thread")
    };
    let mut senders: Vec<JoinHandle<Part>> = (0..INITIAL_SENDERS).map(|_| spawn(&shared)).collect();
    // Give the first senders time to park, so the first arrivals do not pay
    // for their start.
    let start = Instant::now() + Duration::from_millis(5);
    let mut dispatched = None;
    for &offset in schedule {
        let due = start + offset;
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        dispatched.get_or_insert_with(Instant::now);
        let mut state = shared.lock();
        state.due.push_back(due);
        if state.due.len() > state.idle {
            drop(state);
            senders.push(spawn(&shared));
        } else {
            drop(state);
            shared.wake.notify_one();
        }
    }
    // What the client really offered: arrivals handed to senders, first to
    // last, per second (`offered_per_sec` is the rate asked for).
    let sent_per_sec = dispatched.and_then(|first| {
        let span = first.elapsed().as_secs_f64();
        (schedule.len() > 1 && span > 0.0).then(|| (schedule.len() - 1) as f64 / span)
    });
    shared.lock().done = true;
    shared.wake.notify_all();
    let mut report = LoadReport::new();
    let mut stats = OpenStats {
        offered_per_sec,
        sent_per_sec,
        send_lag_us: latency_histogram(),
        senders: senders.len(),
    };
    let mut last_answer = start;
    for sender in senders {
        let part = sender.join().expect("an open-loop sender panicked");
        report.merge(&part.report);
        stats
            .send_lag_us
            .add(&part.send_lag_us)
            .expect("histograms with the same bounds");
        last_answer = last_answer.max(part.last_answer);
    }
    report.wall = last_answer.saturating_duration_since(start);
    (report, stats)
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    /// Scheduled times of arrivals no sender has taken yet.
    due: VecDeque<Instant>,
    /// Senders waiting for an arrival.
    idle: usize,
    /// No more arrivals will come.
    done: bool,
}

impl Shared {
    /// A sender panicking cannot leave the state half-updated (each change
    /// is one statement), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One sender's share of the run.
struct Part {
    report: LoadReport,
    send_lag_us: Histogram<u64>,
    last_answer: Instant,
}

fn sender(shared: &Shared, addr: SocketAddr, n: u64) -> Part {
    let expected = expected_sum(n);
    let mut part = Part {
        report: LoadReport::new(),
        send_lag_us: latency_histogram(),
        last_answer: Instant::now(),
    };
    loop {
        let due = {
            let mut state = shared.lock();
            loop {
                if let Some(due) = state.due.pop_front() {
                    break due;
                }
                if state.done {
                    return part;
                }
                state.idle += 1;
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                state.idle -= 1;
            }
        };
        part.send_lag_us
            .saturating_record(micros(due.elapsed()).max(1));
        let (answer, retries) = request_with_retries(addr, n);
        let answered = Instant::now();
        // Latency runs from the scheduled arrival, not from the send.
        part.report.record(
            &answer,
            retries,
            expected,
            answered.saturating_duration_since(due),
        );
        part.last_answer = part.last_answer.max(answered);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
