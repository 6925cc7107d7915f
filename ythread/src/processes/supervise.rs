//! Supervision of the worker processes: a thread that starts them on
//! request and replaces those that died or were killed, backing off while
//! starts keep failing; and the strategy's stop, which closes every worker
//! process's channel, gives it a second, kills it if need be and reaps it.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::Processes;
use super::checkout::Shared;
use super::meters::{self, Restart};
use super::output;
use super::process::{Process, Spec, StartError};

/// What the supervisor is asked to do.
pub(super) enum Request {
    /// Start a worker (after a back-off while starts keep failing), and
    /// report the outcome if asked.
    Start {
        reply: Option<Sender<Result<(), String>>>,
    },
    /// Stop a worker that served its calls (`ProcessesBuilder::max_calls`):
    /// close its channel and reap it (a replacement is asked for apart).
    Retire(Process),
}

/// The supervisor thread: starts workers on request, backing off while they
/// keep failing. It outlives the workers it starts, as `PR_SET_PDEATHSIG`
/// requires.
pub(super) fn supervise(spec: &Spec, shared: &Shared, requests: &Receiver<Request>) {
    // Starts asked for and not done yet.
    let mut queue = VecDeque::new();
    // Consecutive starts that failed. A program whose workers cannot start
    // must not turn into a fork loop. (A worker killed by the call it runs
    // is that call's failure: its replacement starts at once, so that one
    // bad input costs no more than its own request.)
    let mut failures: u32 = 0;
    // Workers started so far: each one's number, in the labels of what it
    // prints.
    let mut started = 0;
    loop {
        // Idle workers that died (the out-of-memory killer, an operator's
        // `kill`) are noticed here, within `WATCH_INTERVAL`, and replaced,
        // rather than by the next call that would take one.
        for mut dead in shared.take_dead_idle() {
            dead.reap(Duration::ZERO);
            shared.gone();
            shared.restarts.fetch_add(1, Ordering::Relaxed);
            meters::restarted(Restart::DiedIdle);
            queue.push_back(Request::Start { reply: None });
        }
        if queue.is_empty() {
            match requests.recv_timeout(WATCH_INTERVAL) {
                Ok(request) => queue.push_back(request),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let reply = match queue.pop_front() {
            Some(Request::Start { reply }) => reply,
            Some(Request::Retire(mut process)) => {
                process.close();
                process.reap(Duration::from_secs(1));
                continue;
            }
            None => continue,
        };
        if shared.stopping.load(Ordering::Acquire) {
            if let Some(reply) = reply {
                let _ = reply.send(Err("the strategy is shutting down".into()));
            }
            continue;
        }
        // `build` wants its answer at once; replacements wait 10 ms, 20 ms,
        // ... up to 2 s while failures go on. Dropping the strategy ends
        // the wait.
        if failures > 0 && reply.is_none() {
            let backoff = Duration::from_millis(10 << (failures - 1).min(8)).min(MAX_BACKOFF);
            let until = Instant::now() + backoff;
            loop {
                match requests.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(request) => queue.push_back(request),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
        started += 1;
        // A panic in a start (std's spawn, on a program whose descriptors
        // changed under it) must not end the supervisor: calls would wait
        // for workers no one starts.
        let start = panic::catch_unwind(AssertUnwindSafe(|| {
            Process::start(spec, started, &shared.stopping)
        }))
        .unwrap_or_else(|payload| {
            Err(StartError::from(format!(
                "starting it panicked: {}",
                crate::error::payload_text(&*payload).unwrap_or("Box<dyn Any>")
            )))
        });
        match start {
            // Shut down while it started: not wanted any more.
            Ok(mut process) if shared.stopping.load(Ordering::Acquire) => {
                process.close();
                process.reap(Duration::from_secs(1));
                if let Some(reply) = reply {
                    let _ = reply.send(Err("the strategy is shutting down".into()));
                }
            }
            Ok(process) => {
                failures = 0;
                *shared.start_error.lock() = None;
                shared.went_live();
                shared.give_back(process);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(StartError { message, transient }) => {
                failures = failures.saturating_add(1);
                // Calls waiting for a worker (and `build`) fail with it once
                // starts fail for the program's sake, or keep failing: a
                // start killed from outside is retried, and they wait.
                let retry = transient && failures < 3;
                if !retry {
                    *shared.start_error.lock() = Some(message.clone());
                }
                match reply {
                    Some(reply) if retry => queue.push_front(Request::Start { reply: Some(reply) }),
                    Some(reply) => {
                        let _ = reply.send(Err(message));
                    }
                    // Try again, after the back-off.
                    None => queue.push_front(Request::Start { reply: None }),
                }
            }
        }
    }
}

/// How often the supervisor looks for idle workers that died.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// The longest wait between two starts of a worker that keeps failing.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Processes {
    pub(super) fn request(&self, request: Request) {
        if let Some(requests) = &self.requests {
            let _ = requests.send(request);
        }
    }

    /// Stops every worker (a second's grace, then killed), then the
    /// supervisor; reaps them all. Workers go first: they die with the
    /// supervisor thread (`PR_SET_PDEATHSIG`), which would leave them no grace.
    pub(super) fn shut_down(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.stop_idle_processes();
        self.requests = None;
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.join();
        }
        // Any the supervisor started meanwhile.
        self.stop_idle_processes();
    }

    pub(super) fn stop_idle_processes(&self) {
        let mut processes = std::mem::take(&mut self.shared.idle.lock().processes);
        for process in &mut processes {
            process.close();
            self.shared.gone();
        }
        let grace_end = Instant::now() + Duration::from_secs(1);
        for process in &mut processes {
            process.reap(grace_end.saturating_duration_since(Instant::now()));
        }
        // What they printed last reaches stderr before the strategy is
        // gone (a program that ends right after would lose it), unless
        // stderr has stalled or something the work started holds a copy
        // of a worker's output. (2 s: the relay threads must be scheduled
        // to read it, which a loaded machine can put off past 500 ms.)
        let output_end = Instant::now() + Duration::from_secs(2);
        for process in &processes {
            process.output_ended(output_end.saturating_duration_since(Instant::now()));
        }
        output::drain(output_end.saturating_duration_since(Instant::now()));
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.shut_down();
    }
}
