//! The serving side of a remote [`Worker`](super::Worker): the tasks that
//! take calls (from NATS directly, or from the fleet's shared queue), run
//! each in a local worker process and send the reply.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::queue::{self, Backlog, Forwarded, Queue};
use super::wire::{Reply, WireError, deadline_of};
use crate::Processes;
use crate::error::OffloadError;
use crate::offloadable::{DepthLimit, Registration};
use crate::portable::WireCall;
use crate::sync::{Mutex, MutexGuard};

/// Calls being put in the shared queue at once, at most.
pub(super) const MAX_FORWARDING: usize = 256;

/// What serving calls needs, shared by every function's tasks.
pub(super) struct Serving {
    /// The connection to NATS.
    pub(super) client: async_nats::Client,
    /// The local worker processes that run the calls.
    pub(super) processes: Arc<Processes>,
    /// Which of them are free.
    pub(super) slots: Arc<Slots>,
    /// The server's largest payload: a larger reply is replaced by an error.
    pub(super) max_payload: usize,
    /// The fleet's shared queue; or why there is none (no JetStream on the
    /// server, or turned off).
    pub(super) queue: Result<Arc<Queue>, String>,
    /// Calls in flight to the queue at once, at most: while all are taken,
    /// the subscriptions are not read.
    pub(super) forwarding: Arc<Semaphore>,
    /// Calls put in the shared queue ([`Worker::forwarded`](super::Worker::forwarded)).
    pub(super) forwarded: AtomicU64,
    /// Calls taken from it ([`Worker::dequeued`](super::Worker::dequeued)).
    pub(super) dequeued: AtomicU64,
}

/// One function, as this worker serves it.
pub(super) struct Function {
    /// Its registration: what a call of it runs.
    pub(super) registration: &'static Registration,
    /// Whether the shared queue holds calls of it.
    pub(super) backlog: Backlog,
    /// How long its calls take here.
    pub(super) load: Load,
}

/// How long calls of a function take here. A call that finds every local
/// process busy goes to the shared queue, unless calls here are short: then
/// it waits for a process here, since the queue's round trip through the server would
/// cost more than the wait (and more of the server's CPU).
#[derive(Default)]
pub(super) struct Load {
    /// The mean run time of recent calls, in ns (a moving average); 0 until
    /// one has run.
    mean_ns: AtomicU64,
    /// When each call under way started.
    running: Mutex<Vec<Instant>>,
}

/// Calls are short when they run for less than this.
const SHORT: Duration = Duration::from_millis(1);

impl Load {
    fn short(&self) -> bool {
        let mean = self.mean_ns.load(Ordering::Relaxed);
        mean != 0
            && mean < SHORT.as_nanos() as u64
            && self
                .running()
                .iter()
                .all(|started| started.elapsed() < SHORT)
    }

    fn running(&self) -> MutexGuard<'_, Vec<Instant>> {
        // (No poisoning to handle: a push or a remove cannot leave the list
        // half-done.)
        self.running.lock()
    }

    fn started(&self) -> Instant {
        let now = Instant::now();
        self.running().push(now);
        now
    }

    fn finished(&self, started: Instant) {
        let mut running = self.running();
        if let Some(at) = running.iter().position(|&s| s == started) {
            running.swap_remove(at);
        }
        drop(running);
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // Weight 1/8 to the newest call.
        let _ = self
            .mean_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
                Some(if mean == 0 {
                    took.max(1)
                } else {
                    (mean - mean / 8).saturating_add(took / 8).max(1)
                })
            });
    }
}

/// Free local worker processes: a call runs once it holds a [`Slot`].
pub(super) struct Slots {
    /// One per local worker process; a call holds one while it runs.
    pub(super) permits: Arc<Semaphore>,
    /// How many are free, for the tasks that pull from the shared queue
    /// only while one is.
    free: watch::Sender<usize>,
}

/// A local worker process, taken for one call.
struct Slot {
    /// Released on drop (`None` once released).
    permit: Option<OwnedSemaphorePermit>,
    /// Where `free` is updated then.
    slots: Arc<Slots>,
}

impl Slots {
    pub(super) fn new(count: usize) -> Arc<Slots> {
        Arc::new(Slots {
            permits: Arc::new(Semaphore::new(count)),
            free: watch::Sender::new(count),
        })
    }

    /// Sets `free` from the permits, under the watch's lock, so that two
    /// changes at once cannot leave it with the older count.
    fn update_free(&self) {
        self.free
            .send_modify(|free| *free = self.permits.available_permits());
    }

    fn slot(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        self.update_free();
        Slot {
            permit: Some(permit),
            slots: Arc::clone(self),
        }
    }

    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        Some(self.slot(permit))
    }

    /// Waits for a free process, first come, first served.
    async fn take(self: &Arc<Self>) -> Slot {
        // The semaphore is never closed.
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the slots' semaphore is never closed");
        self.slot(permit)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        // Released to a waiting call, it is still taken.
        self.slots.update_free();
    }
}

/// A call as it arrived, directly or from the queue.
struct Call {
    function: Arc<Function>,
    args: Bytes,
    reply_to: async_nats::Subject,
    received: Instant,
    /// The requester's deadline, from `received`.
    deadline: Option<Duration>,
}

/// Answers the calls of one function that NATS gives this worker: runs each
/// at once if a local process is free, and otherwise puts it in the shared
/// queue, behind the calls that waited first. It waits here for a process
/// instead without a shared queue, when calls of the function are short
/// here, and once the worker is stopping (it would not take them back).
pub(super) async fn serve_function(
    serving: Arc<Serving>,
    function: Arc<Function>,
    mut calls: async_nats::Subscriber,
    mut stopping: watch::Receiver<bool>,
) {
    let mut draining = false;
    loop {
        let message = tokio::select! {
            biased;
            _ = stopping.changed(), if !draining => {
                // No more calls from NATS; those already received are
                // answered, then `next` ends.
                draining = true;
                let _ = calls.drain().await;
                continue;
            }
            message = calls.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        let Some(reply_to) = message.reply.clone() else {
            continue;
        };
        let call = Call {
            function: Arc::clone(&function),
            args: message.payload,
            reply_to,
            received: Instant::now(),
            // The requester's deadline: a call still waiting after it has
            // passed has no one to answer, and is dropped unrun.
            deadline: deadline_of(message.headers.as_ref()),
        };
        if !function.backlog.any()
            && let Some(slot) = serving.slots.try_take()
        {
            run(&serving, slot, call);
            continue;
        }
        let queue = serving
            .queue
            .as_ref()
            .ok()
            .filter(|_| !draining && !function.load.short())
            .cloned();
        let Some(queue) = queue else {
            // While this waits, the subscription is not read: a flood
            // cannot grow threads here; async-nats buffers up to 65,536
            // messages per subscription meanwhile, and drops more (a slow
            // consumer).
            let slot = serving.slots.take().await;
            run(&serving, slot, call);
            continue;
        };
        let Ok(forwarding) = Arc::clone(&serving.forwarding).acquire_owned().await else {
            return;
        };
        let serving = Arc::clone(&serving);
        tokio::spawn(async move {
            let _forwarding = forwarding;
            let left = call
                .deadline
                .map(|deadline| deadline.saturating_sub(call.received.elapsed()));
            let registration = call.function.registration;
            match queue
                .forward(registration, &call.reply_to, left, call.args.clone())
                .await
            {
                Forwarded::Stored => {
                    call.function.backlog.note_forwarded();
                    serving.forwarded.fetch_add(1, Ordering::Relaxed);
                }
                // The queue is full or gone: the call waits here.
                Forwarded::NotStored => {
                    let slot = serving.slots.take().await;
                    run(&serving, slot, call);
                }
                // It may be in the queue: running it here too could run it
                // twice. (If it is not, its requester's deadline fails it.)
                Forwarded::Unknown => {}
            }
        });
    }
}

/// Takes calls of one function from the shared queue, one each time a local
/// process is free, until the worker stops.
pub(super) async fn pull_calls(
    serving: Arc<Serving>,
    queue: Arc<Queue>,
    function: Arc<Function>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut free = serving.slots.free.subscribe();
    let mut consumer = None;
    let mut pause = Duration::from_millis(10);
    loop {
        tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => return,
            free = free.wait_for(|free| *free > 0) => if free.is_err() {
                return;
            },
        }
        // (A pull under way when the worker stops ends within
        // `PULL_EXPIRES`, and what it brings is run or put back.)
        let pulled = match &consumer {
            Some(consumer) => queue::pull(consumer, &function.backlog).await,
            None => queue.consumer(function.registration).await.map(|opened| {
                consumer = Some(opened);
                None
            }),
        };
        match pulled {
            Ok(None) => pause = Duration::from_millis(10),
            Ok(Some(pulled)) => {
                pause = Duration::from_millis(10);
                // A direct call may have taken the process meanwhile: then
                // the call goes back to the head of the line, for a worker
                // that is free. (This one pulls again only once it is.)
                let Some(slot) = serving.slots.try_take() else {
                    pulled.put_back().await;
                    continue;
                };
                let Some(queued) = pulled.take().await else {
                    continue;
                };
                serving.dequeued.fetch_add(1, Ordering::Relaxed);
                run(
                    &serving,
                    slot,
                    Call {
                        function: Arc::clone(&function),
                        args: queued.args,
                        reply_to: queued.reply_to,
                        received: Instant::now(),
                        deadline: queued.left,
                    },
                );
            }
            Err(_) => {
                // The consumer, the stream or the connection is gone: open
                // them again, backing off while that fails.
                consumer = None;
                tokio::select! {
                    _ = stopping.wait_for(|stop| *stop) => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Runs `call` in a local worker process and sends the reply, on a blocking
/// thread (handing the reply back to an async task first would cost one
/// more thread wake-up per call).
fn run(serving: &Arc<Serving>, slot: Slot, call: Call) {
    let serving = Arc::clone(serving);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let Call {
            function,
            args,
            reply_to,
            received,
            deadline,
        } = call;
        let registration = function.registration;
        if deadline.is_some_and(|deadline| received.elapsed() >= deadline) {
            return;
        }
        let started = function.load.started();
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_locally(&serving.processes, registration, &args)
        }));
        function.load.finished(started);
        let mut answer = answer.unwrap_or_else(|_| {
            Reply::Failed(WireError::of(&OffloadError::unavailable(
                registration.name,
                "the worker's call thread panicked",
            )))
            .encode()
        });
        if answer.len() > serving.max_payload {
            answer = Reply::Failed(WireError::of(&OffloadError::protocol(
                registration.name,
                format_args!(
                    "its result takes {} bytes, over the NATS server's maximum payload of \
                         {} bytes",
                    answer.len(),
                    serving.max_payload
                ),
            )))
            .encode();
        }
        // A requester that is gone (its deadline passed) is no error.
        let _ = runtime.block_on(serving.client.publish(reply_to, answer.into()));
    });
}

/// Runs one call in a local worker process; returns the encoded reply.
fn run_locally(processes: &Processes, registration: &'static Registration, args: &[u8]) -> Vec<u8> {
    let mut call = RawCall {
        args,
        outcome: None,
    };
    processes.run(registration, &mut call);
    match call.outcome {
        Some(Ok(result)) => Reply::Done(&result).encode(),
        Some(Err(error)) => Reply::Failed(WireError::of(&error)).encode(),
        None => Reply::Failed(WireError::of(&OffloadError::not_run())).encode(),
    }
}

/// A call that arrived as bytes and leaves as bytes.
struct RawCall<'a> {
    args: &'a [u8],
    outcome: Option<Result<Vec<u8>, OffloadError>>,
}

impl WireCall for RawCall<'_> {
    fn encode_args(
        &self,
        _registration: &Registration,
        out: &mut Vec<u8>,
        _depth: DepthLimit,
    ) -> Result<(), OffloadError> {
        // Encoded by the requester already.
        out.extend_from_slice(self.args);
        Ok(())
    }

    fn finish(
        &mut self,
        _registration: &Registration,
        result: &[u8],
        _depth: DepthLimit,
    ) -> Result<(), OffloadError> {
        // Passed on as it came, for the requester to decode.
        self.outcome = Some(Ok(result.to_vec()));
        Ok(())
    }

    fn fail(&mut self, error: OffloadError) {
        self.outcome = Some(Err(error));
    }
}
