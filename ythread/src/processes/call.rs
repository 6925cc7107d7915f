//! The parent side of a call: a call enters the strategy, takes a worker
//! process, goes out as a `CALL` frame and comes back as a `DONE`,
//! `PANICKED` or `REFUSED` one (`frame.rs`); a worker process that dies,
//! runs past the deadline or goes out of step is replaced. The child side
//! of the exchange is `child.rs`.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Processes;
use super::death::Death;
use super::events::{self, CallEvents};
use super::frame::{self, CALL, DONE, PANICKED, REFUSED, ReadError};
use super::meters::{self, Busy, Restart};
use super::output::Cause;
use super::process::Process;
use super::supervise::Request;
use crate::error::OffloadError;
use crate::offloadable::{DepthLimit, Registration};
use crate::portable::{WireCall, designation, portable_call};
use crate::{Apply, Job};

impl Apply for Processes {
    fn apply(&self, mut job: Job<'_>) {
        match portable_call(job.wire()) {
            Ok((call, registration)) => self.run(registration, call),
            Err(error) => job.fail(error),
        }
    }

    fn name(&self) -> &'static str {
        "Processes"
    }
}

impl Processes {
    /// Runs `call` of the registered function `registration` on a worker.
    pub(crate) fn run(&self, registration: &'static Registration, call: &mut dyn WireCall) {
        self.run_within(registration, call, None);
    }

    /// [`run`](Self::run), within `limit` as well as the strategy's own
    /// deadline (the sooner of the two): a remote worker's call carries its
    /// requester's.
    pub(crate) fn run_within(
        &self,
        registration: &'static Registration,
        call: &mut dyn WireCall,
        limit: Option<Duration>,
    ) {
        let budget = match (self.deadline, limit) {
            (Some(mine), Some(limit)) => Some(mine.min(limit)),
            (mine, limit) => mine.or(limit),
        };
        let Some(_inside) = self.shared.gate.enter() else {
            call.fail(OffloadError::shut_down("set of worker processes"));
            return;
        };
        // What names the call wherever ythread speaks of it (its worker's
        // lines, its events), the same on each of its runs.
        let number = self.shared.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let designation: Arc<str> = designation(registration.name, number).into();
        // Workers found dead when the call was sent to them: the call did
        // not reach them, and goes to another. (Bounded, in case workers
        // keep dying as they start.)
        let mut found_dead = 0;
        // Runs of the call on workers that died while running it.
        let mut runs = 0;
        // Workers that died, of the call's doing, before they started it.
        let mut crashed_taking_it = 0;
        // Set when the call is first sent: a call's deadline bounds all its
        // runs, not its wait for a worker.
        let mut deadline = None;
        // How the worker of the last run died, while a rerun waits.
        let mut last_death = None;
        loop {
            // A rerun out of time, before it waits for a worker or after:
            // the call fails with the last run's death, and the worker it
            // got is not sent anything (nor killed for it).
            let too_late = |deadline: Option<Option<Instant>>| {
                deadline
                    .flatten()
                    .is_some_and(|deadline| Instant::now() >= deadline)
            };
            if let Some(death) = last_death
                && too_late(deadline)
            {
                return call.fail(OffloadError::worker_died(registration.name, death, runs));
            }
            let process = match self.shared.checkout() {
                Ok(process) => process,
                Err(why) => {
                    call.fail(OffloadError::unavailable(registration.name, why));
                    return;
                }
            };
            if let Some(death) = last_death
                && too_late(deadline)
            {
                self.shared.give_back(process);
                return call.fail(OffloadError::worker_died(registration.name, death, runs));
            }
            // A panic in this process while the worker is out (a `Drop` of
            // the user's arguments, say) drops the worker inside `call`,
            // which kills it: it must still be replaced.
            let mut lost = Lost {
                processes: self,
                armed: true,
            };
            let busy = Busy::new();
            let after = self.call(
                process,
                registration,
                call,
                &designation,
                budget,
                &mut deadline,
            );
            drop(busy);
            lost.armed = false;
            match after {
                After::Keep(process)
                    if self.max_calls.is_some_and(|max| process.calls() >= max) =>
                {
                    return self.retire(process);
                }
                After::Keep(process) => return self.shared.give_back(process),
                After::Replace(reason) => return self.replace(reason),
                After::DeadBeforeCall => {
                    self.replace(Restart::DiedIdle);
                    found_dead += 1;
                    if found_dead > self.workers + 2 {
                        return call.fail(self.dead_before_start(registration, runs, found_dead));
                    }
                }
                After::DiedBeforeStart(death) => {
                    self.replace(Restart::Crashed);
                    // A worker that crashed taking the call in, or was killed
                    // taking in a large one (by an out-of-memory killer, say):
                    // once may be bad luck; twice is the call's doing.
                    crashed_taking_it += 1;
                    if crashed_taking_it >= 2 {
                        call.fail(OffloadError::worker_died(registration.name, death, runs));
                        return;
                    }
                }
                After::Died(death) => {
                    self.replace(Restart::Crashed);
                    runs += 1;
                    // (A stack overflow is the input's: it would overflow
                    // again.)
                    let rerun = registration.idempotent
                        && runs <= self.max_retries
                        && death.cause != Some(Cause::StackOverflow);
                    if !rerun {
                        call.fail(OffloadError::worker_died(registration.name, death, runs));
                        return;
                    }
                    last_death = Some(death);
                    self.shared.reruns.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The failure of a call whose workers kept dying before they started
    /// it, `found_dead` in a row, after `runs` runs.
    fn dead_before_start(
        &self,
        registration: &Registration,
        runs: u32,
        found_dead: usize,
    ) -> OffloadError {
        let ran = match runs {
            0 => "it did not run".to_owned(),
            runs => format!("it ran {runs} time(s) before, and each time its worker died"),
        };
        OffloadError::unavailable(
            registration.name,
            format_args!(
                "{found_dead} worker processes in a row died before they started the call ({ran})"
            ),
        )
    }

    /// The deepest nesting this strategy encodes and decodes.
    fn depth(&self) -> DepthLimit {
        DepthLimit {
            levels: self.max_depth,
            setting: "ProcessesBuilder::max_depth",
        }
    }

    /// A worker served its calls: the supervisor stops it, and another
    /// starts.
    fn retire(&self, process: Process) {
        self.shared.gone();
        self.request(Request::Retire(process));
        self.request(Request::Start { reply: None });
    }

    /// A worker died or was killed, for `reason`: it is no longer live, and
    /// another starts.
    fn replace(&self, reason: Restart) {
        self.shared.gone();
        self.shared.restarts.fetch_add(1, Ordering::Relaxed);
        meters::restarted(reason);
        self.request(Request::Start { reply: None });
    }

    /// Runs one call on `process`; `designation` names it (`f call 7`).
    ///
    /// `deadline` is the call's, `None` until it is first sent (then
    /// `Some(None)` for no deadline).
    fn call(
        &self,
        mut process: Process,
        registration: &'static Registration,
        call: &mut dyn WireCall,
        designation: &Arc<str>,
        budget: Option<Duration>,
        deadline: &mut Option<Option<Instant>>,
    ) -> After {
        let name = registration.name;
        let mut buf = std::mem::take(&mut process.buf);
        let number = process.next_call;
        process.next_call = number.wrapping_add(1);
        frame::begin(&mut buf, CALL, number);
        let header = (name, registration.fingerprint, events::wanted());
        let encoded = frame::put(&mut buf, &header)
            .map_err(|error| OffloadError::protocol(name, error))
            .and_then(|()| call.encode_args(registration, &mut buf, self.depth()));
        if let Err(error) = encoded {
            call.fail(error);
            process.buf = buf;
            return After::Keep(process);
        }
        if let Err(size) = frame::finish(&mut buf, self.max_frame) {
            call.fail(OffloadError::protocol(
                name,
                format_args!(
                    "its arguments take {size} bytes, over the maximum frame of {} bytes \
                     (`ProcessesBuilder::max_frame`)",
                    self.max_frame
                ),
            ));
            process.buf = buf;
            return After::Keep(process);
        }
        // (A deadline too far to add, `Duration::MAX`, is none.)
        let deadline =
            *deadline.get_or_insert_with(|| budget.and_then(|d| Instant::now().checked_add(d)));
        process.expect_call(number, designation);
        let large = buf.len() > LARGE_CALL;
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        crate::observe::sent();
        if let Err((error, written)) = process.send(&buf, deadline) {
            if error.kind() == io::ErrorKind::TimedOut && written == 0 {
                // Out of time before a byte went: the worker is as good as
                // it was, and its output from now on is no call's.
                process.call_ended(number);
                call.fail(OffloadError::no_answer_by(name, budget.unwrap_or_default()));
                process.buf = buf;
                return After::Keep(process);
            }
            if error.kind() == io::ErrorKind::TimedOut {
                process.kill();
                call.fail(OffloadError::deadline_exceeded(
                    name,
                    budget.unwrap_or_default(),
                ));
                return After::Replace(Restart::Deadline);
            }
            let death = process.reap(Duration::from_millis(200));
            process.buf = buf;
            return if written == 0 {
                // No reader at the other end: the worker had died before the
                // call was sent (while idle), and did not run it.
                After::DeadBeforeCall
            } else {
                // It died taking the call in (a worker needs the whole
                // frame before it starts).
                died_before_start(death, large)
            };
        }
        process.sent += 1;
        // The call's events, emitted again here as they come, in the span
        // the call runs in.
        let mut events = CallEvents::new(number, designation, process.number(), process.pid());
        let reply = process
            .receive(
                &mut buf,
                self.max_frame,
                deadline,
                &mut |kind, call, body| events.take(kind, call, body),
            )
            .and_then(|(kind, answered, body)| {
                if answered == number {
                    Ok((kind, body))
                } else {
                    Err(ReadError::Malformed(format!(
                        "a reply to call {answered}, where call {number} was asked"
                    )))
                }
            });
        process.call_ended(number);
        let keep = match reply {
            Ok((DONE, body)) => {
                if let Err(error) = call.finish(registration, body, self.depth()) {
                    call.fail(error);
                }
                Ok(())
            }
            Ok((PANICKED, body)) => {
                let message = frame::parse_panicked(body)
                    .unwrap_or_else(|_| "(the worker sent an unreadable panic message)".into());
                call.fail(OffloadError::remote_panic(name, message));
                Ok(())
            }
            Ok((REFUSED, body)) => {
                match frame::parse_refused(body) {
                    Ok((frame::REFUSED_UNREGISTERED | frame::REFUSED_FINGERPRINT, detail)) => {
                        call.fail(OffloadError::not_portable(name, &detail));
                    }
                    Ok((_, detail)) => call.fail(OffloadError::protocol(name, detail)),
                    Err(error) => call.fail(OffloadError::protocol(
                        name,
                        format_args!("an unreadable refusal: {error}"),
                    )),
                }
                Ok(())
            }
            Ok((kind, _)) => {
                process.kill();
                call.fail(OffloadError::protocol(
                    name,
                    format_args!("the worker sent a frame of unknown kind {kind}"),
                ));
                Err(Restart::OutOfStep)
            }
            Err(ReadError::TimedOut) => {
                process.kill();
                call.fail(OffloadError::deadline_exceeded(
                    name,
                    budget.unwrap_or_default(),
                ));
                Err(Restart::Deadline)
            }
            // The channel closed: the worker died, or closed it (native
            // code gone wrong), and is killed if it does not end. Only then
            // is its word read: a worker still alive could start the call.
            Err(ReadError::Closed) => {
                let (death, killed) = process.end(Duration::from_millis(200));
                process.buf = buf;
                if killed && process.started(number) {
                    // Alive, its channel closed under it (native code gone
                    // wrong): no reply can come.
                    call.fail(OffloadError::protocol(
                        name,
                        "the worker closed its channel while it ran the call, and was killed",
                    ));
                    events.finish();
                    return After::Replace(Restart::OutOfStep);
                }
                events.finish();
                return if process.started(number) {
                    // It died running the call (it may have run, in part).
                    After::Died(death)
                } else {
                    // It died before it started the call: killed while
                    // idle, say, just before the call was sent; or by the
                    // call itself, as it took it in (a frame too large for
                    // its memory).
                    died_before_start(death, large)
                };
            }
            Err(error @ (ReadError::Malformed(_) | ReadError::Io(_))) => {
                // Out of step with the worker: it cannot be trusted with
                // another call.
                process.kill();
                call.fail(OffloadError::protocol(
                    name,
                    format_args!("its reply was malformed: {error}"),
                ));
                Err(Restart::OutOfStep)
            }
        };
        events.finish();
        process.buf = buf;
        // A frame buffer grown for one large call is not kept.
        if process.buf.capacity() > 1 << 20 {
            process.buf = Vec::new();
        }
        match keep {
            Ok(()) => After::Keep(process),
            Err(reason) => After::Replace(reason),
        }
    }
}

/// Replaces the worker of a call that unwound, on drop.
struct Lost<'a> {
    processes: &'a Processes,
    armed: bool,
}

impl Drop for Lost<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.processes.replace(Restart::Abandoned);
        }
    }
}

/// A call this large (in bytes) can be what kills a worker taking it in,
/// even by `SIGKILL` (an out-of-memory killer).
const LARGE_CALL: usize = 1 << 20;

/// A worker that died after the call was sent, before it started it: of
/// the call's doing if it crashed taking it in, or was killed (by an
/// out-of-memory killer, say) taking in a large one; otherwise killed from
/// outside, as if it had been dead before the call was sent.
fn died_before_start(death: Death, large: bool) -> After {
    if death.self_inflicted() || large {
        After::DiedBeforeStart(death)
    } else {
        After::DeadBeforeCall
    }
}

/// What becomes of a worker after a call.
enum After {
    /// It can take more calls.
    Keep(Process),
    /// It died or was killed during the call, for the reason given:
    /// replace it.
    Replace(Restart),
    /// It was dead before the call was sent: replace it, and send the call
    /// to another.
    DeadBeforeCall,
    /// It died after the call was sent, before it started it, of the
    /// call's doing, it seems (see `died_before_start`): replace it, and
    /// send the call to another, once.
    DiedBeforeStart(Death),
    /// It died running the call, which is still to be failed (or, for an
    /// idempotent function, run again): replace it.
    Died(Death),
}
