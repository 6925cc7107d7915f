//! The serving side of a remote [`Worker`](super::Worker): the tasks that
//! take calls (from NATS directly, or from the fleet's shared queue), run
//! each in a local worker process (or on a thread, `threads.rs`) and send
//! the reply.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::SERVER_CAP;
use super::io::block_on;
use super::observe::{self, Incoming, Rejected, TraceParent};
use super::queue::{self, Backlog, Forwarded, Headed, Queue};
use super::signing::{Key, SIGNATURE_HEADER, Signed};
use super::threads::Threads;
use super::wire::{
    Reply, WireError, deadline_of, epoch_ms_in, expires_of, is_past, signature_of, signed_headers,
};
use crate::Processes;
use crate::error::OffloadError;
use crate::offloadable::{DepthLimit, Registration};
use crate::portable::WireCall;
use crate::sync::{Mutex, MutexGuard};

/// Calls being put in the shared queue at once, at most.
pub(super) const MAX_FORWARDING: usize = 256;

/// What a call received costs of [`Serving::pending`] beyond its payload,
/// in bytes: what keeps a flood of empty calls bounded too.
const CALL_COST: usize = 1024;

/// Whether a worker may answer on `reply_to`: not on the system's subjects
/// (`$JS.API...`, `$SYS...`), nor on ythread's own (calls, the shared
/// queue, cancellations), where a caller's made-up reply subject would have
/// the worker publish with its own permissions.
fn answerable(reply_to: &str) -> bool {
    !(reply_to.starts_with('$') || reply_to.starts_with("ythread"))
}

/// What serving calls needs, shared by every function's tasks.
pub(super) struct Serving {
    /// The connection to NATS.
    pub(super) client: async_nats::Client,
    /// The namespace it serves (its metrics' label).
    pub(super) namespace: String,
    /// What runs the calls.
    pub(super) runner: Runner,
    /// Which of its places are free.
    pub(super) slots: Arc<Slots>,
    /// The server's largest payload (as it said when this worker last
    /// connected): a larger reply is replaced by an error.
    pub(super) max_payload: AtomicUsize,
    /// The fleet's shared queue (`None` if turned off); whether it is usable
    /// now is its own state.
    pub(super) queue: Option<Arc<Queue>>,
    /// Calls in flight to the queue at once, at most.
    pub(super) forwarding: Arc<Semaphore>,
    /// The bytes of the calls received and not yet answered (waiting here,
    /// being put in the queue, running): a call that would take more than
    /// is left is refused, unrun.
    pub(super) pending: Arc<Semaphore>,
    /// [`WorkerBuilder::max_pending_bytes`](super::WorkerBuilder::max_pending_bytes).
    pub(super) max_pending_bytes: usize,
    /// The longest a call may run here, whatever its requester asks.
    pub(super) deadline: Duration,
    /// The fleet's signing key: calls must be signed with it, and replies
    /// are.
    pub(super) key: Option<Key>,
    /// Calls whose requesters cancelled them.
    pub(super) cancelled: ReplySubjects,
    /// Signed calls received (with a key): a second copy is a replay.
    pub(super) seen: ReplySubjects,
    /// Why this worker no longer serves (stopped, or NATS refused replies
    /// to verified calls), if so.
    pub(super) not_serving: Mutex<Option<String>>,
    /// What NATS refused of its replies, when it cannot tell whether the
    /// fault is its own (see [`Worker::ready`](super::Worker::ready)).
    pub(super) reply_trouble: Mutex<Option<String>>,
    /// Tells the tasks that take calls to stop.
    pub(super) stop: watch::Sender<bool>,
    /// Calls put in the shared queue ([`Worker::forwarded`](super::Worker::forwarded)).
    pub(super) forwarded: AtomicU64,
    /// Calls taken from it ([`Worker::dequeued`](super::Worker::dequeued)).
    pub(super) dequeued: AtomicU64,
    /// Calls refused, unrun ([`Worker::refused`](super::Worker::refused)).
    pub(super) refused: AtomicU64,
    /// Calls dropped unrun: expired or cancelled before they started
    /// ([`Worker::dropped`](super::Worker::dropped)).
    pub(super) dropped: AtomicU64,
    /// Whether a short call runs on a runtime thread now (see [`run`]).
    pub(super) running_here: AtomicBool,
    /// Where signed replies went lately.
    pub(super) signed_replies: SignedReplies,
    /// Replies NATS refused ([`Worker::refused_replies`](super::Worker::refused_replies)).
    pub(super) refused_replies: AtomicU64,
}

/// What runs a worker's calls: the one step in which the two modes
/// differ.
#[derive(Debug)]
pub(super) enum Runner {
    /// Local worker processes (the default): a call that crashes fails
    /// alone, and one past its deadline is killed.
    Processes(Arc<Processes>),
    /// Threads of the worker's own process
    /// ([`WorkerBuilder::threads`](super::WorkerBuilder::threads)).
    Threads(Arc<Threads>),
}

impl Runner {
    /// How many calls it runs at once.
    pub(super) fn capacity(&self) -> usize {
        match self {
            Runner::Processes(processes) => processes.workers(),
            Runner::Threads(threads) => threads.count,
        }
    }
}

impl Serving {
    /// Answers `reply_to` with `reply`, signed with the key if there is one
    /// (the call was verified with it).
    pub(super) async fn answer(&self, reply_to: async_nats::Subject, reply: Vec<u8>) {
        let headers = self.reply_headers(&reply_to, &reply);
        if self.key.is_some() {
            self.signed_replies.note(&reply_to);
        }
        // A requester that is gone (its deadline passed) is no error.
        let _ = self
            .client
            .publish_with_headers(reply_to, headers, reply.into())
            .await;
    }

    /// Counts a call not run, for `reason`, and tells of it naming it.
    fn rejected(
        &self,
        reason: Rejected,
        function: &Registration,
        reply_to: &str,
        trace: Option<&TraceParent>,
    ) {
        observe::rejected(&self.namespace, reason, || {
            observe::designation(function.name, observe::call_id(reply_to), trace)
        });
    }

    /// The trace context a call came with, if valid: anything else is
    /// ignored (and counted), and the call goes on without.
    fn trace_of(
        &self,
        incoming: Incoming,
        function: &Registration,
        reply_to: &str,
    ) -> Option<TraceParent> {
        match incoming {
            Incoming::Valid(trace) => Some(trace),
            Incoming::Absent => None,
            Incoming::Invalid => {
                observe::ignored_traceparent(&self.namespace, || {
                    observe::designation(function.name, observe::call_id(reply_to), None)
                });
                None
            }
        }
    }

    fn reply_headers(&self, reply_to: &str, reply: &[u8]) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(key) = &self.key {
            let signed = Signed::Reply {
                subject: reply_to,
                payload: reply,
            };
            headers.insert(SIGNATURE_HEADER, key.sign(&signed).as_str());
        }
        headers
    }

    /// Refuses a call, unrun, saying why: signed if the call verified
    /// (`signed`), unsigned otherwise. (A signed refusal sent to the reply
    /// subject an unverified call names would let anyone give another
    /// requester's call a valid "did not run" while it runs elsewhere.)
    async fn refuse(
        &self,
        function: &Registration,
        reply_to: async_nats::Subject,
        (reason, trace): (Rejected, Option<&TraceParent>),
        why: String,
        signed: bool,
    ) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.rejected(reason, function, &reply_to, trace);
        let reply = Reply::Failed(WireError::of(&OffloadError::unavailable(
            function.name,
            why,
        )));
        let reply = reply.encode();
        if signed {
            self.answer(reply_to, reply).await;
        } else {
            let _ = self.client.publish(reply_to, reply.into()).await;
        }
    }
}

/// The reply subjects of the latest signed replies (to calls that verified
/// with the key): NATS refusing one of them means this worker cannot answer
/// its requesters, where a refused reply to an unverified call may be a
/// stranger's made-up reply subject.
#[derive(Default)]
pub(super) struct SignedReplies(Mutex<std::collections::VecDeque<String>>);

impl SignedReplies {
    const KEPT: usize = 1024;

    fn note(&self, reply_to: &str) {
        let mut latest = self.0.lock();
        if latest.len() == Self::KEPT {
            latest.pop_front();
        }
        latest.push_back(reply_to.to_owned());
    }

    pub(super) fn contains(&self, reply_to: &str) -> bool {
        self.0.lock().iter().any(|subject| subject == reply_to)
    }
}

/// Reply subjects of calls, each until its call expires: the calls
/// requesters cancelled, and the signed calls a worker has received (a
/// second copy of one is a replay). Bounded: past [`MAX_KEPT`] subjects,
/// what has expired is forgotten, and then new ones are not kept; an expiry
/// is kept no further than [`MAX_KEPT_FOR`] from now (a made-up one cannot
/// hold an entry for good).
///
/// A subject is kept as a 64-bit hash of it (SipHash, with a key of this
/// process's: no one can aim for a collision), so a million of them take
/// about 32 MiB.
#[derive(Default)]
pub(super) struct ReplySubjects {
    kept: Mutex<HashMap<u64, u64>>,
    hasher: std::collections::hash_map::RandomState,
}

/// Subjects kept at most, each store: a million calls within their
/// deadlines (17,000 a second with one-minute deadlines).
const MAX_KEPT: usize = 1 << 20;

/// How long a subject is kept at most: calls wait in the shared queue no
/// longer than their requester's deadline, and calls that would wait longer
/// are not worth a store that anyone may fill.
const MAX_KEPT_FOR: Duration = Duration::from_secs(3600);

/// What [`ReplySubjects::insert`] did.
#[derive(Debug, PartialEq, Eq)]
enum Kept {
    New,
    /// It was there already.
    Known,
    /// The store is full of live subjects.
    Full,
}

impl ReplySubjects {
    fn hash(&self, reply_to: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(reply_to)
    }

    fn contains(&self, reply_to: &str) -> bool {
        let hash = self.hash(reply_to);
        self.kept.lock().contains_key(&hash)
    }

    /// Keeps `reply_to` (its hash) until `expires` (ms since the epoch);
    /// `swept`: the store was swept of expired subjects in this batch
    /// already.
    fn insert(kept: &mut HashMap<u64, u64>, hash: u64, expires: u64, swept: &mut bool) -> Kept {
        let now = epoch_ms_in(Duration::ZERO);
        if kept.contains_key(&hash) {
            return Kept::Known;
        }
        if kept.len() >= MAX_KEPT {
            // Once a batch: a full store of live subjects is not swept again
            // for each line.
            if *swept {
                return Kept::Full;
            }
            *swept = true;
            kept.retain(|_, expires| *expires > now);
            if kept.len() >= MAX_KEPT {
                return Kept::Full;
            }
        }
        kept.insert(hash, expires.min(epoch_ms_in(MAX_KEPT_FOR)));
        Kept::New
    }

    /// Keeps the reply subject of a call received, until it expires.
    fn note(&self, reply_to: &str, expires: u64) -> Kept {
        let hash = self.hash(reply_to);
        Self::insert(&mut self.kept.lock(), hash, expires, &mut false)
    }

    /// Takes the cancellations of one message: lines `<reply subject>
    /// <expiry, ms since the epoch>`.
    fn add(&self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let now = epoch_ms_in(Duration::ZERO);
        let mut cancelled = self.kept.lock();
        let mut swept = false;
        for line in text.lines() {
            let Some((reply_to, expires)) = line.split_once(' ') else {
                continue;
            };
            let Ok(expires) = expires.parse::<u64>() else {
                continue;
            };
            if expires <= now || reply_to.len() > 1024 {
                continue;
            }
            let hash = self.hash(reply_to);
            if Self::insert(&mut cancelled, hash, expires, &mut swept) == Kept::Full {
                return;
            }
        }
    }
}

/// Takes the requesters' cancellations until the worker stops taking calls.
pub(super) async fn take_cancellations(
    serving: Arc<Serving>,
    subject: String,
    mut cancellations: async_nats::Subscriber,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        let message = tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => return,
            message = cancellations.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        if let Some(key) = &serving.key {
            let signed = Signed::Cancel {
                subject: &subject,
                payload: &message.payload,
            };
            if !key.verify(&signed, signature_of(message.headers.as_ref())) {
                continue;
            }
        }
        serving.cancelled.add(&message.payload);
    }
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
/// cost more than the wait (and more of the server's CPU); and a short call
/// runs on the runtime thread that took it in (see [`run`]).
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

/// Free local worker processes (or threads): a call runs once it holds a
/// [`Slot`].
pub(super) struct Slots {
    /// One per local worker process (or thread); a call holds one while it
    /// runs.
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
    /// When the requester stops waiting, in ms since the Unix epoch.
    expires: Option<u64>,
    /// Its trace context, if it came with a valid one.
    trace: Option<TraceParent>,
    /// Its share of [`Serving::pending`], released when it is answered (or
    /// stored in the queue).
    _pending: OwnedSemaphorePermit,
}

impl Call {
    /// Whether no one waits for its answer any more, and why: its
    /// requester's deadline has passed, or its requester cancelled it.
    fn abandoned(&self, serving: &Serving) -> Option<Rejected> {
        if self
            .deadline
            .is_some_and(|deadline| self.received.elapsed() >= deadline)
            || self.expires.is_some_and(is_past)
        {
            Some(Rejected::Expired)
        } else if serving.cancelled.contains(&self.reply_to) {
            Some(Rejected::Cancelled)
        } else {
            None
        }
    }

    /// Counts it as dropped unrun, for `reason`.
    fn drop_unrun(&self, serving: &Serving, reason: Rejected) {
        serving.dropped.fetch_add(1, Ordering::Relaxed);
        serving.rejected(
            reason,
            self.function.registration,
            &self.reply_to,
            self.trace.as_ref(),
        );
    }
}

/// Answers the calls of one function that NATS gives this worker: runs each
/// at once if a local process is free, and otherwise puts it in the shared
/// queue, behind the calls that waited first. It waits here for a process
/// instead without a shared queue, when calls of the function are short
/// here, and once the worker is stopping (it would not take them back).
///
/// The subscription is read as fast as calls come: a call is refused, unrun,
/// when those received and not yet answered take
/// [`WorkerBuilder::max_pending_bytes`](super::WorkerBuilder::max_pending_bytes).
pub(super) async fn serve_function(
    serving: Arc<Serving>,
    function: Arc<Function>,
    mut calls: async_nats::Subscriber,
    mut stopping: watch::Receiver<bool>,
) {
    let registration = function.registration;
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
        let headers = message.headers.as_ref();
        // (Read before anything is refused, so that the refusal names the
        // call as its requester does.)
        let trace = serving.trace_of(observe::traceparent_of(headers), registration, &reply_to);
        if !answerable(&reply_to) {
            serving.refused.fetch_add(1, Ordering::Relaxed);
            serving.rejected(
                Rejected::ReplySubject,
                registration,
                &reply_to,
                trace.as_ref(),
            );
            continue;
        }
        if let Some(key) = &serving.key {
            let signed = Signed::Call {
                subject: &message.subject,
                reply: &reply_to,
                headers: &signed_headers(headers),
                payload: &message.payload,
            };
            if !key.verify(&signed, signature_of(headers)) {
                let why = "it is not signed with this worker's signing key \
                           (`WorkerBuilder::signing_key`): give its requester the same key \
                           (`RemoteBuilder::signing_key`)";
                serving
                    .refuse(
                        registration,
                        reply_to,
                        (Rejected::BadSignature, trace.as_ref()),
                        why.to_owned(),
                        false,
                    )
                    .await;
                continue;
            }
        }
        // A replay: a second copy of a signed call (reply subjects are one
        // per call). Dropped, unanswered: an answer would reach the
        // original call's requester, a refusal as a "did not run" while the
        // first copy runs. Past the store's bound, a call that cannot be
        // told from a replay is refused unsigned.
        let mut sign_refusals = serving.key.is_some();
        if serving.key.is_some() {
            let expires = expires_of(headers).unwrap_or(u64::MAX);
            match serving.seen.note(&reply_to, expires) {
                Kept::New => {}
                Kept::Known => {
                    serving.dropped.fetch_add(1, Ordering::Relaxed);
                    serving.rejected(Rejected::Replay, registration, &reply_to, trace.as_ref());
                    continue;
                }
                Kept::Full => sign_refusals = false,
            }
        }
        // The arguments are copied out of the message, and the rest of it let
        // go: a slice of it would keep the client's read buffer alive, with
        // whatever else came in it (a header block of any size, padded so
        // that its parsed values look small).
        let cost = message.payload.len().saturating_add(CALL_COST);
        let permit = u32::try_from(cost).ok().and_then(|cost| {
            Arc::clone(&serving.pending)
                .try_acquire_many_owned(cost)
                .ok()
        });
        let Some(permit) = permit else {
            let why = format!(
                "the worker is busy: the calls it holds take its {} bytes \
                 (`WorkerBuilder::max_pending_bytes`); try another time or another worker",
                serving.max_pending_bytes
            );
            let reason = if cost > serving.max_pending_bytes {
                Rejected::TooLarge
            } else {
                Rejected::Busy
            };
            serving
                .refuse(
                    registration,
                    reply_to,
                    (reason, trace.as_ref()),
                    why,
                    sign_refusals,
                )
                .await;
            continue;
        };
        let args = Bytes::copy_from_slice(&message.payload);
        drop(message.payload);
        let call = Call {
            function: Arc::clone(&function),
            deadline: deadline_of(headers),
            expires: expires_of(headers),
            trace,
            args,
            reply_to,
            received: Instant::now(),
            _pending: permit,
        };
        if let Some(reason) = call.abandoned(&serving) {
            call.drop_unrun(&serving, reason);
            continue;
        }
        if !function.backlog.any()
            && let Some(slot) = serving.slots.try_take()
        {
            run(&serving, slot, call);
            continue;
        }
        let queue = serving
            .queue
            .as_ref()
            .filter(|queue| queue.usable() && !draining && !function.load.short())
            .cloned();
        let serving = Arc::clone(&serving);
        let Some(queue) = queue else {
            // It waits here for a process, first come, first served.
            tokio::spawn(async move {
                let slot = serving.slots.take().await;
                run(&serving, slot, call);
            });
            continue;
        };
        tokio::spawn(async move {
            let Ok(_forwarding) = Arc::clone(&serving.forwarding).acquire_owned().await else {
                return;
            };
            let left = call
                .deadline
                .map(|deadline| deadline.saturating_sub(call.received.elapsed()));
            let registration = call.function.registration;
            match queue
                .forward(
                    registration,
                    &call.reply_to,
                    Headed {
                        left,
                        expires: call.expires,
                        trace: call.trace.as_ref(),
                    },
                    serving.key.as_ref(),
                    call.args.clone(),
                )
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
/// process is free, until the worker stops. After a reconnection (the
/// server may have restarted and lost the queue) it opens the queue again.
pub(super) async fn pull_calls(
    serving: Arc<Serving>,
    queue: Arc<Queue>,
    function: Arc<Function>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut free = serving.slots.free.subscribe();
    let mut reconnections = queue.reconnections();
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
        if reconnections.has_changed().unwrap_or(false) {
            reconnections.mark_unchanged();
            consumer = None;
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
                // The consumer is shared, and named: one replaced after it
                // was checked could hand this worker another function's
                // call, whose arguments would then be taken for this one's.
                if pulled.subject() != queue.subject(function.registration) {
                    queue.misdelivered(
                        &queue::consumer_name(function.registration),
                        pulled.subject(),
                    );
                    pulled.put_back().await;
                    consumer = None;
                    continue;
                }
                // A direct call may have taken the process meanwhile (or
                // the calls held here take all the room): then the call
                // goes back to the head of the line, for a worker that is
                // free. (This one pulls again only once it is.)
                let cost = u32::try_from(pulled.len().saturating_add(CALL_COST)).ok();
                let permit = cost.and_then(|cost| {
                    Arc::clone(&serving.pending)
                        .try_acquire_many_owned(cost)
                        .ok()
                });
                let (Some(slot), Some(permit)) = (serving.slots.try_take(), permit) else {
                    pulled.put_back().await;
                    continue;
                };
                let Some(queued) = pulled.take(serving.key.as_ref()).await else {
                    continue;
                };
                serving.dequeued.fetch_add(1, Ordering::Relaxed);
                let trace = serving.trace_of(queued.trace, function.registration, &queued.reply_to);
                run(
                    &serving,
                    slot,
                    Call {
                        function: Arc::clone(&function),
                        args: queued.args,
                        reply_to: queued.reply_to,
                        received: Instant::now(),
                        deadline: queued.left,
                        expires: queued.expires,
                        trace,
                        _pending: permit,
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

/// Runs `call` in a local worker process (or on a thread of this one, with
/// [`Runner::Threads`]) and sends the reply.
///
/// A call of a function whose calls are short here (under 1 ms: see
/// [`Load`]) runs in a task of its own on a runtime thread, one such call at
/// a time, and its reply is sent from that task: waking a blocking thread
/// for it, then the runtime's thread for the reply, would cost more than the
/// call (measured: 1.31x against 1.10-1.20x a raw request-reply plus the
/// local hop; see `benches/remote.rs`). The task is spawned, not run in the
/// loop that reads the calls, so that loop goes on reading (the next calls
/// go to blocking threads), and it starts with nothing queued behind it on
/// its thread; the runtime has a second thread for the connection
/// meanwhile, so a call that turns out long holds up only its own thread.
/// Any other call runs on a blocking thread of its own (`spawn_blocking`),
/// and sends its reply from there.
fn run(serving: &Arc<Serving>, slot: Slot, call: Call) {
    let serving = Arc::clone(serving);
    if call.function.load.short()
        && serving
            .running_here
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    {
        tokio::spawn(async move {
            let reply = run_here(&serving, slot, call);
            serving.running_here.store(false, Ordering::Release);
            if let Some((reply_to, reply)) = reply {
                serving.answer(reply_to, reply).await;
            }
        });
        return;
    }
    tokio::task::spawn_blocking(move || {
        if let Some((reply_to, reply)) = run_here(&serving, slot, call) {
            // Handing the reply to the client's channel: ready at once
            // unless the channel is full. (Not on a runtime thread: this
            // thread may wait.)
            block_on(serving.answer(reply_to, reply));
        }
    });
}

/// [`run`]'s work: runs the call unless no one waits for it any more;
/// returns where to send what reply.
fn run_here(serving: &Serving, slot: Slot, call: Call) -> Option<(async_nats::Subject, Vec<u8>)> {
    let _slot = slot;
    if let Some(reason) = call.abandoned(serving) {
        call.drop_unrun(serving, reason);
        return None;
    }
    let registration = call.function.registration;
    // The call's span, on this thread while it runs: on threads, the
    // function's own events are in it; with processes, those the worker
    // process sends back. Calls sent meanwhile from this thread continue
    // its trace.
    #[cfg(feature = "tracing")]
    let span = observe::remote_call_span(
        registration.name,
        &observe::designation(
            registration.name,
            observe::call_id(&call.reply_to),
            call.trace.as_ref(),
        ),
        call.trace.as_ref(),
        call.deadline,
    );
    #[cfg(feature = "tracing")]
    let _entered = span.enter();
    #[cfg(feature = "tracing")]
    let _trace = observe::TraceScope::enter(call.trace.map(|trace| trace.trace_id));
    // Within the requester's deadline (counted from when the call arrived,
    // and bounded by its expiry, which counts the time it took to come) and
    // this worker's.
    let mut left = call.deadline.map_or(serving.deadline, |deadline| {
        deadline
            .saturating_sub(call.received.elapsed())
            .min(serving.deadline)
    });
    if let Some(expires) = call.expires {
        let now = epoch_ms_in(Duration::ZERO);
        left = left.min(Duration::from_millis(expires.saturating_sub(now)));
    }
    let started = call.function.load.started();
    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match &serving.runner {
            Runner::Processes(processes) => {
                Some(run_locally(processes, registration, &call.args, left))
            }
            // (Within the worker's deadline, kept by `watch_overruns`; the
            // requester keeps its own.)
            Runner::Threads(threads) => threads.run(registration, &call.args, &call.reply_to),
        }
    }));
    call.function.load.finished(started);
    let mut answer = match answer {
        Ok(Some(answer)) => answer,
        // It ran past the worker's deadline, and was answered for then.
        Ok(None) => return None,
        Err(_) => Reply::Failed(WireError::of(&OffloadError::may_have_run(
            registration.name,
            "the worker's call thread panicked while the call was under way",
        )))
        .encode(),
    };
    let max_payload = serving.max_payload.load(Ordering::Relaxed);
    if answer.len() > max_payload {
        answer = Reply::Failed(WireError::of(&OffloadError::protocol(
            registration.name,
            format_args!(
                "it ran, and its result takes {} bytes, over the NATS server's maximum \
                 payload of {max_payload} bytes: {SERVER_CAP}",
                answer.len(),
            ),
        )))
        .encode();
    }
    observe::worker_answered(&serving.namespace, &answer);
    Some((call.reply_to.clone(), answer))
}

/// Runs one call in a local worker process, within `left`; returns the
/// encoded reply.
fn run_locally(
    processes: &Processes,
    registration: &'static Registration,
    args: &[u8],
    left: Duration,
) -> Vec<u8> {
    let mut call = RawCall {
        args,
        outcome: None,
    };
    processes.run_within(registration, &mut call, Some(left));
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

/// Answers each call on the worker's threads that runs past the worker's
/// [`deadline`](super::WorkerBuilder::deadline), at that deadline, with
/// [`DeadlineExceeded`](crate::OffloadErrorKind::DeadlineExceeded): a thread
/// cannot be killed, so the call runs on, holding its place among the
/// worker's threads, until it returns, and its result is dropped. Runs until
/// the worker's runtime is shut down.
///
/// It is never told of a call: every call's deadline is its start plus the
/// same duration, so one that starts while this sleeps is due after the
/// time this wakes at (at the latest, one deadline from now). Running a call
/// costs two uncontended locks, no wake-up. (The requester's own deadline
/// is the requester's to keep: it stops waiting by itself.)
pub(super) async fn watch_overruns(serving: Arc<Serving>, threads: Arc<Threads>) {
    // Wakes at least this often, a deadline too long to add included.
    const LONGEST_SLEEP: Duration = Duration::from_secs(3600);
    loop {
        let now = Instant::now();
        let (overdue, next) = threads.overdue(now, serving.deadline);
        for reply_to in overdue {
            let reply = Reply::Failed(WireError::Overran {
                deadline_ms: u64::try_from(serving.deadline.as_millis()).unwrap_or(u64::MAX),
            });
            observe::worker_call(&serving.namespace, "deadline_exceeded");
            serving.answer(reply_to, reply.encode()).await;
        }
        // (Not sooner than a millisecond from now: a zero deadline must not
        // make this spin.)
        let wake = next
            .unwrap_or_else(|| now + serving.deadline.min(LONGEST_SLEEP))
            .clamp(now + Duration::from_millis(1), now + LONGEST_SLEEP);
        tokio::time::sleep_until(wake.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellations_are_bounded_in_number_and_in_time() {
        let cancelled = ReplySubjects::default();
        let far = epoch_ms_in(Duration::from_secs(100 * 365 * 24 * 3600));
        let soon = epoch_ms_in(Duration::from_secs(60));
        let past = epoch_ms_in(Duration::ZERO).saturating_sub(1000);
        cancelled.add(format!("a.1 {far}\na.2 {soon}\na.3 {past}\nno-expiry\na.4 x\n").as_bytes());
        assert!(cancelled.contains("a.1") && cancelled.contains("a.2"));
        assert!(!cancelled.contains("a.3") && !cancelled.contains("a.4"));
        // A made-up expiry is kept an hour at most.
        let kept = cancelled.kept.lock()[&cancelled.hash("a.1")];
        assert!(kept <= epoch_ms_in(MAX_KEPT_FOR), "{kept}");
        assert!(!cancelled.contains(&"x".repeat(2000)));
        cancelled.add(&[0xff, 0xfe]);
        // Full of live entries: no more are kept.
        let lines: String = (0..MAX_KEPT + 10)
            .map(|i| format!("b.{i} {soon}\n"))
            .collect();
        cancelled.add(lines.as_bytes());
        assert_eq!(cancelled.kept.lock().len(), MAX_KEPT);
        assert_eq!(cancelled.note("c.1", soon), Kept::Full);
        let seen = ReplySubjects::default();
        assert_eq!(seen.note("d.1", soon), Kept::New);
        assert_eq!(seen.note("d.1", soon), Kept::Known);
    }
}
