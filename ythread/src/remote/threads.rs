//! A remote [`Worker`](super::Worker)'s calls on threads of its own process
//! ([`WorkerBuilder::threads`](super::WorkerBuilder::threads)): the step that
//! runs a call there, in place of the hop to a local worker process, and the
//! watch that answers for a call that runs past the worker's deadline.
//!
//! Everything before and after that step (signatures, replays, expiry,
//! cancellation, the byte budget, the bound on calls at once, the shared
//! queue) is `serve.rs`'s, the same for both modes.

use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::wire::{Reply, WireError};
use crate::error::OffloadError;
use crate::offloadable::Registration;
use crate::sync::Mutex;

/// The deepest nesting decoded in a call's arguments and encoded in its
/// result on threads: [`ProcessesBuilder::max_depth`](crate::ProcessesBuilder::max_depth)'s
/// default, so that a call is bounded as it is in a worker process.
const MAX_DEPTH: usize = crate::codec::Limits::DEFAULT.max_depth;

/// What an error of a value nested deeper than [`MAX_DEPTH`] names.
const DEPTH_SETTING: &str =
    "WorkerBuilder::threads: 128 levels, as ProcessesBuilder::max_depth by default";

/// The stack of the threads that run calls: a worker process runs them on
/// its main thread, whose stack is usually 8 MiB (`ulimit -s`), not a
/// spawned thread's 2 MiB; a call that fits there fits here.
pub(super) const STACK_SIZE: usize = 8 << 20;

/// The calls running on a worker's threads.
pub(super) struct Threads {
    /// How many run at once, at most: the worker's slots.
    pub(super) count: usize,
    /// The calls running now, for [`watch_overruns`](super::serve::watch_overruns).
    running: Mutex<Running>,
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threads")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Running {
    /// The number the next call gets.
    next: u64,
    /// Each call running now (at most [`Threads::count`] of them, plus those
    /// the watch answered for, which run on).
    calls: Vec<RunningCall>,
}

struct RunningCall {
    number: u64,
    started: Instant,
    reply_to: async_nats::Subject,
    /// The watch answered for it: it ran past the worker's deadline.
    answered: bool,
}

impl Threads {
    pub(super) fn new(count: usize) -> Threads {
        Threads {
            count,
            running: Mutex::new(Running::default()),
        }
    }

    /// Runs a call of `registration` with its encoded `args` on this thread;
    /// returns the encoded reply, or `None` if [`watch_overruns`](super::serve::watch_overruns) answered
    /// for it meanwhile (it ran past the worker's deadline).
    ///
    /// The arguments are decoded and the result encoded as a worker process
    /// does it (`processes/child.rs`), within the same depth, and each
    /// failure is the error the process mode gives: a requester cannot tell
    /// the modes apart by what comes back.
    pub(super) fn run(
        &self,
        registration: &'static Registration,
        args: &[u8],
        reply_to: &async_nats::Subject,
    ) -> Option<Vec<u8>> {
        let number = {
            let mut running = self.running.lock();
            let number = running.next;
            running.next += 1;
            running.calls.push(RunningCall {
                number,
                started: Instant::now(),
                reply_to: reply_to.clone(),
                answered: false,
            });
            number
        };
        let mut out = Vec::new();
        let invoked = panic::catch_unwind(AssertUnwindSafe(|| {
            (registration.invoke)(args, &mut out, MAX_DEPTH)
        }));
        let answered = {
            let mut running = self.running.lock();
            let at = running.calls.iter().position(|call| call.number == number);
            at.is_some_and(|at| running.calls.swap_remove(at).answered)
        };
        let name = registration.name;
        let reply = match invoked {
            Ok(Ok(())) => Reply::Done(&out).encode(),
            Ok(Err(error)) => failed(OffloadError::protocol(name, error.describe(DEPTH_SETTING))),
            Err(payload) => {
                // The panic hook has printed it, on this worker's stderr, as
                // a worker process's would; the requester gets its message.
                let message = crate::error::payload_text(&*payload)
                    .unwrap_or("Box<dyn Any>")
                    .to_owned();
                // Dropping the payload could panic again: keep it.
                std::mem::forget(payload);
                failed(OffloadError::remote_panic(name, message))
            }
        };
        (!answered).then_some(reply)
    }

    /// Marks the calls running since `deadline` before `now` as answered;
    /// returns where their answers go, and when the next one will be due
    /// (`None`: no call is running).
    pub(super) fn overdue(
        &self,
        now: Instant,
        deadline: Duration,
    ) -> (Vec<async_nats::Subject>, Option<Instant>) {
        let mut overdue = Vec::new();
        let mut next: Option<Instant> = None;
        for call in &mut self.running.lock().calls {
            if call.answered {
                continue;
            }
            // (A deadline too far to add, `Duration::MAX`, is never due.)
            let Some(due) = call.started.checked_add(deadline) else {
                continue;
            };
            if due <= now {
                call.answered = true;
                overdue.push(call.reply_to.clone());
            } else {
                next = Some(next.map_or(due, |next| next.min(due)));
            }
        }
        (overdue, next)
    }
}

fn failed(error: OffloadError) -> Vec<u8> {
    Reply::Failed(WireError::of(&error)).encode()
}
