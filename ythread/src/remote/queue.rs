//! The fleet's shared queue of calls: a JetStream work-queue stream.
//!
//! NATS gives a queue group's request to a member at random, however busy
//! it is; a worker whose local processes are all taken would make its call
//! wait behind its own while another worker sits idle. So such a worker
//! forwards the call to this queue (the requester's reply subject and the
//! time left travel in headers), and every worker pulls one call from it
//! each time one of its processes is free: calls that must wait, wait in one
//! first-come-first-served line for the whole fleet.
//!
//! The stream keeps calls in memory, one subject per function and
//! signature; each function has one durable pull consumer that all workers
//! share. A worker runs a call only once the server has confirmed its
//! acknowledgement (the stream then forgets the call), so delivery stays at
//! most once: a worker that dies running a call fails that call at its
//! requester's deadline, never runs it twice (see `Pulled::take`, and
//! `Forwarded::Unknown` for the sending side).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use tokio::sync::watch;

use super::observe::{Incoming, TRACEPARENT_HEADER, TraceParent, traceparent_of};
use super::signing::{Key, SIGNATURE_HEADER, Signed};
use super::wire::{
    deadline_of, expires_of, queue_subject, queue_subjects, reply_to_of, set_deadline, set_expires,
    set_reply_to, signature_of, signed_headers,
};
use crate::offloadable::Registration;
use crate::sync::Mutex;

/// Calls queued at most, in bytes, for the whole fleet of a namespace; past
/// it, a busy worker keeps the call in its own line. The server reserves it
/// from its JetStream memory (`max_memory_store`) for each namespace.
const MAX_QUEUED_BYTES: i64 = 64 << 20;

/// How long a worker's pull request waits for a call before it asks again.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// A namespace's queue on the NATS server.
///
/// Nothing found on the server is trusted: a stream or consumer of the
/// queue's name that someone else made, or changed, with settings that
/// would break at most once (a stream that keeps acknowledged calls, a
/// consumer that needs no acknowledgement or delivers headers alone, ...)
/// is refused, with the setting named, and the worker serves without the
/// queue. The queue is opened and checked again after every reconnection:
/// a restarted server has lost its in-memory streams.
pub(super) struct Queue {
    jetstream: jetstream::Context,
    config: stream::Config,
    namespace: String,
    /// Why the queue cannot be used now, if so.
    problem: Mutex<Option<String>>,
    /// Bumped at each reconnection: pulls open their consumers again.
    reconnected: watch::Sender<u64>,
}

/// Whether a call sent to the queue is in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Forwarded {
    /// The server stored it: a worker will take it.
    Stored,
    /// The server did not: the sender still has the call.
    NotStored,
    /// No answer: it may be stored, so the sender must not run it too; if
    /// it is not, the call fails at its requester's deadline.
    Unknown,
}

/// What a call put in the queue carries in headers, besides its reply
/// subject.
pub(super) struct Headed<'a> {
    /// Time left to its requester's deadline, if it has one.
    pub(super) left: Option<Duration>,
    /// When its requester stops waiting, in ms since the Unix epoch.
    pub(super) expires: Option<u64>,
    /// Its trace context, if it came with a valid one.
    pub(super) trace: Option<&'a TraceParent>,
}

/// A call taken from the queue.
pub(super) struct Queued {
    pub(super) reply_to: async_nats::Subject,
    /// Time left to the requester's deadline, counted from when the call
    /// entered the queue; `None` if it has none.
    pub(super) left: Option<Duration>,
    /// When its requester stops waiting, in ms since the Unix epoch.
    pub(super) expires: Option<u64>,
    /// Its trace context, as its headers say.
    pub(super) trace: Incoming,
    pub(super) args: Bytes,
}

impl Queue {
    /// The queue of `namespace`; [`open`](Queue::open) it.
    pub(super) fn new(client: &async_nats::Client, namespace: &str) -> Queue {
        let config = stream::Config {
            name: stream_name(namespace),
            subjects: vec![queue_subjects(namespace)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::Memory,
            max_bytes: MAX_QUEUED_BYTES,
            discard: stream::DiscardPolicy::New,
            // A call is dropped once its deadline has passed; this only
            // bounds what a call without a deadline can leave behind.
            max_age: Duration::from_secs(24 * 3600),
            ..Default::default()
        };
        Queue {
            jetstream: jetstream::new(client.clone()),
            config,
            namespace: namespace.to_owned(),
            problem: Mutex::new(Some("not opened yet".to_owned())),
            reconnected: watch::Sender::new(0),
        }
    }

    /// Opens the queue: makes its stream if it is not on the server, and
    /// checks it if it is.
    ///
    /// # Errors
    ///
    /// Why it cannot be used (also kept for [`status`](Queue::status)):
    /// no JetStream on the server, a refusal, or a stream that is not what
    /// ythread makes.
    pub(super) async fn open(&self) -> Result<(), String> {
        let opened = self.stream().await.map(|_| ());
        *self.problem.lock() = opened.as_ref().err().cloned();
        opened
    }

    /// The queue's stream, made if need be, checked.
    async fn stream(&self) -> Result<stream::Stream, String> {
        let stream = self
            .jetstream
            .get_or_create_stream(self.config.clone())
            .await
            .map_err(|error| error.to_string())?;
        check_stream(&stream.cached_info().config, &self.config)?;
        Ok(stream)
    }

    /// NATS refused the queue's use (a permission, in `text`): calls wait
    /// for this worker's processes until it is opened again.
    pub(super) fn refused(&self, text: &str) {
        *self.problem.lock() = Some(format!("NATS refused: {text}"));
    }

    /// Whether calls may be put in the queue now.
    pub(super) fn usable(&self) -> bool {
        self.problem.lock().is_none()
    }

    /// `Ok` if the queue can be used now; otherwise why not.
    pub(super) fn status(&self) -> Result<(), String> {
        match &*self.problem.lock() {
            None => Ok(()),
            Some(problem) => Err(problem.clone()),
        }
    }

    /// The connection came back: the queue is opened (made, checked) again.
    pub(super) async fn reconnected(&self) {
        self.reconnected.send_modify(|count| *count += 1);
        let _ = self.open().await;
    }

    /// Tells of reconnections.
    pub(super) fn reconnections(&self) -> watch::Receiver<u64> {
        self.reconnected.subscribe()
    }

    /// The subject of `registration`'s calls in this queue.
    pub(super) fn subject(&self, registration: &Registration) -> String {
        queue_subject(&self.namespace, registration)
    }

    /// A consumer delivered a call of another function than its own: not
    /// the consumer ythread made (it was replaced after it was checked).
    /// The queue is not used until it is opened and checked again.
    pub(super) fn misdelivered(&self, consumer: &str, subject: &str) {
        *self.problem.lock() = Some(format!(
            "the consumer `{consumer}` delivered a call on `{subject}`, another function's: it \
             is not the consumer ythread made; delete it for the workers to make it again"
        ));
    }

    /// Puts a call in the queue (signed with `key`, if there is one);
    /// returns once the server has said whether it stored it.
    pub(super) async fn forward(
        &self,
        registration: &Registration,
        reply_to: &str,
        headed: Headed<'_>,
        key: Option<&Key>,
        args: Bytes,
    ) -> Forwarded {
        use async_nats::jetstream::context::PublishErrorKind;
        let Headed {
            left,
            expires,
            trace,
        } = headed;
        let subject = self.subject(registration);
        let mut headers = async_nats::HeaderMap::new();
        set_reply_to(&mut headers, reply_to);
        if let Some(left) = left {
            set_deadline(&mut headers, left);
        }
        if let Some(expires) = expires {
            set_expires(&mut headers, expires);
        }
        // (Only a valid one, as it was read: not signed, a label.)
        if let Some(trace) = trace {
            headers.insert(TRACEPARENT_HEADER, trace.header().as_str());
        }
        if let Some(key) = key {
            let signed = Signed::Call {
                subject: &subject,
                reply: reply_to,
                headers: &signed_headers(Some(&headers)),
                payload: &args,
            };
            headers.insert(SIGNATURE_HEADER, key.sign(&signed).as_str());
        }
        let ack = match self
            .jetstream
            .publish_with_headers(subject, headers, args)
            .await
        {
            Ok(ack) => ack,
            // Not sent.
            Err(_) => return Forwarded::NotStored,
        };
        match ack.await {
            Ok(_) => Forwarded::Stored,
            // Sent, and no answer: it may be stored.
            Err(error)
                if matches!(
                    error.kind(),
                    PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                ) =>
            {
                Forwarded::Unknown
            }
            // The server's answer: not stored (no stream, the queue full).
            Err(error)
                if error.kind() == PublishErrorKind::StreamNotFound
                    || std::error::Error::source(&error)
                        .is_some_and(|source| source.is::<jetstream::Error>()) =>
            {
                Forwarded::NotStored
            }
            // An answer that is not the server's (it does not parse): it
            // may be stored.
            Err(_) => Forwarded::Unknown,
        }
    }

    /// The pull consumer of `registration`'s calls, shared by every worker,
    /// checked; the stream too is made again if it is gone (a server
    /// restarted loses its in-memory streams).
    ///
    /// # Errors
    ///
    /// If the server refuses them (or JetStream is gone), or what is on the
    /// server is not what ythread makes.
    pub(super) async fn consumer(&self, registration: &Registration) -> Result<Consumer, String> {
        let name = consumer_name(registration);
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: self.subject(registration),
            // A worker acks a call (and waits for the server to
            // confirm) before it runs it, or nacks it (puts it back
            // at the head of the line) if it finds its processes
            // taken; one that dies between the pull and either has
            // the call delivered again after `ack_wait`: it never
            // ran. See `Pulled::take`.
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            // Idle for a day (no worker of this build left): gone.
            inactive_threshold: Duration::from_secs(24 * 3600),
            ..Default::default()
        };
        let opened: Result<Consumer, String> = async {
            let consumer = self
                .stream()
                .await?
                .get_or_create_consumer(&name, config.clone())
                .await
                .map_err(|error| error.to_string())?;
            check_consumer(&self.config.name, &consumer.cached_info().config, &config)?;
            Ok(consumer)
        }
        .await;
        if let Err(problem) = &opened {
            *self.problem.lock() = Some(problem.clone());
        } else {
            *self.problem.lock() = None;
        }
        opened
    }
}

/// Checks a stream found on the server against the one ythread makes: what
/// at most once and the bounds rest on.
fn check_stream(found: &stream::Config, wanted: &stream::Config) -> Result<(), String> {
    let mut wrong = Vec::new();
    if found.retention != wanted.retention {
        wrong.push(format!("retention {:?}, not WorkQueue", found.retention));
    }
    if found.subjects != wanted.subjects {
        wrong.push(format!(
            "subjects {:?}, not {:?}",
            found.subjects, wanted.subjects
        ));
    }
    if found.no_ack {
        wrong.push("no_ack set (stores are not acknowledged)".to_owned());
    }
    if found.max_bytes <= 0 || found.max_bytes > wanted.max_bytes {
        wrong.push(format!(
            "max_bytes {}, not at most {}",
            found.max_bytes, wanted.max_bytes
        ));
    }
    if found.discard != wanted.discard {
        wrong.push(format!("discard {:?}, not New", found.discard));
    }
    if found.mirror.is_some() || found.sources.as_ref().is_some_and(|s| !s.is_empty()) {
        wrong.push("a mirror or sources (calls from elsewhere)".to_owned());
    }
    if found.republish.is_some() {
        wrong.push("republish (calls copied elsewhere)".to_owned());
    }
    if found.allow_rollup || found.sealed {
        wrong.push("rollups allowed, or sealed".to_owned());
    }
    not_ythreads(
        &format!("the stream `{}`", found.name),
        &wrong,
        &format!("`nats stream rm {}`", found.name),
    )
}

/// `Ok` if nothing is `wrong` with what was found on the server; otherwise
/// what is, and how to remove `what` for the workers to make it again.
fn not_ythreads(what: &str, wrong: &[String], remove: &str) -> Result<(), String> {
    if wrong.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{what} on the NATS server is not the one ythread makes ({}): ythread did not make it, \
         or it was changed; delete it ({remove}) for the workers to make it again",
        wrong.join("; ")
    ))
}

/// Checks a consumer found on the server against the one ythread makes.
fn check_consumer(
    stream: &str,
    found: &consumer::Config,
    wanted: &consumer::pull::Config,
) -> Result<(), String> {
    let mut wrong = Vec::new();
    if found.ack_policy != wanted.ack_policy {
        wrong.push(format!("ack_policy {:?}, not Explicit", found.ack_policy));
    }
    if found.ack_wait != wanted.ack_wait {
        wrong.push(format!(
            "ack_wait {:?}, not {:?}",
            found.ack_wait, wanted.ack_wait
        ));
    }
    if found.filter_subject != wanted.filter_subject {
        wrong.push(format!(
            "filter {:?}, not {:?}",
            found.filter_subject, wanted.filter_subject
        ));
    }
    if found.headers_only {
        wrong.push("headers_only set (calls without their arguments)".to_owned());
    }
    if found.deliver_subject.is_some() {
        wrong.push("a push consumer".to_owned());
    }
    if found.deliver_policy != wanted.deliver_policy {
        wrong.push(format!(
            "deliver_policy {:?}, not All",
            found.deliver_policy
        ));
    }
    let name = found.durable_name.as_deref().unwrap_or_default();
    not_ythreads(
        &format!("the consumer `{name}`"),
        &wrong,
        &format!("`nats consumer rm {stream} {name}`"),
    )
}

/// A function's pull consumer.
pub(super) type Consumer = consumer::Consumer<consumer::pull::Config>;

/// Asks for one call of `consumer`'s function, waiting up to
/// [`PULL_EXPIRES`]; `Ok(None)` if none came. Each pull is a request of its
/// own, made only when the worker asks (it does while it has a free
/// process): nothing is pulled behind its back while it is busy.
///
/// # Errors
///
/// If the pull fails (the consumer or the stream is gone, the connection
/// was lost): open the consumer again.
pub(super) async fn pull(consumer: &Consumer, backlog: &Backlog) -> Result<Option<Pulled>, String> {
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .map_err(|error| error.to_string())?;
    let Some(message) = batch.next().await else {
        backlog.0.store(0, Ordering::Relaxed);
        return Ok(None);
    };
    let message = message.map_err(|error| error.to_string())?;
    backlog.0.store(
        message.info().map_or(0, |info| info.pending),
        Ordering::Relaxed,
    );
    Ok(Some(Pulled {
        message,
        received: Instant::now(),
    }))
}

/// A call pulled from the queue, still in it: [`take`](Pulled::take) it or
/// [`put_back`](Pulled::put_back) it at once (holding it would keep it from
/// the other workers).
pub(super) struct Pulled {
    message: jetstream::Message,
    received: Instant,
}

impl Pulled {
    /// The call's size, in bytes: its arguments, headers and subjects.
    pub(super) fn len(&self) -> usize {
        self.message.length.max(self.message.payload.len())
    }

    /// The subject it was queued on.
    pub(super) fn subject(&self) -> &str {
        &self.message.subject
    }

    /// Takes the call out of the queue, to run it now; `None` if it must
    /// not run here.
    ///
    /// It runs here only if the server confirmed the acknowledgement within
    /// half of `ack_wait` of the delivery: before then the server gives it
    /// to no one else, and once acknowledged, never again. Without that
    /// confirmation (a lost connection, a stall) it does not run here: the
    /// server gives it to another worker if the acknowledgement was lost,
    /// and if it was not, the call fails at its requester's deadline. Either
    /// way it never runs twice. `None` too for a message that is not a call
    /// of ours (someone else published on the subject; with a `key`, one
    /// that does not verify).
    pub(super) async fn take(self, key: Option<&Key>) -> Option<Queued> {
        let Pulled { message, received } = self;
        let headers = message.headers.as_ref();
        if let Some(key) = key {
            let reply_to = reply_to_of(headers);
            let signed = Signed::Call {
                subject: &message.subject,
                reply: reply_to.as_deref().unwrap_or_default(),
                headers: &signed_headers(headers),
                payload: &message.payload,
            };
            if !key.verify(&signed, signature_of(headers)) {
                // Out of the queue, unrun.
                let _ = message.ack().await;
                return None;
            }
        }
        let confirmed = message.double_ack().await.is_ok();
        if !confirmed || received.elapsed() >= ACK_WAIT / 2 {
            return None;
        }
        let waited = message.info().map_or(Duration::ZERO, |info| {
            since(info.published.unix_timestamp_nanos())
        });
        let reply_to = reply_to_of(headers)?;
        if reply_to.starts_with('$') || reply_to.starts_with("ythread") {
            return None;
        }
        // A second of slack for the clocks of the server and of this
        // machine, which measure `waited` between them.
        let left =
            deadline_of(headers).map(|deadline| (deadline + CLOCK_SLACK).saturating_sub(waited));
        Some(Queued {
            reply_to,
            left,
            expires: expires_of(headers),
            trace: traceparent_of(headers),
            args: message.payload.clone(),
        })
    }

    /// Puts the call back at the head of the line, for another worker (this
    /// one pulled it and then found its processes taken). If the server
    /// does not hear of it, it gives the call to another worker after
    /// `ack_wait`.
    pub(super) async fn put_back(self) {
        let _ = self.message.ack_with(jetstream::AckKind::Nak(None)).await;
    }
}

/// How long the server waits for a worker's acknowledgement before giving a
/// call it delivered to another worker.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// The slack allowed to the clocks of the NATS server and of a worker when a
/// worker decides that a queued call's deadline has passed.
const CLOCK_SLACK: Duration = Duration::from_secs(1);

/// Whether the queue holds calls of one function, as this worker last saw
/// it: while it does, a call that reaches the worker directly goes to the
/// back of the line instead of ahead of them.
#[derive(Default)]
pub(super) struct Backlog(AtomicU64);

impl Backlog {
    pub(super) fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }

    /// Notes that a call was just put in the queue.
    pub(super) fn note_forwarded(&self) {
        self.0.fetch_max(1, Ordering::Relaxed);
    }
}

/// Time since `published` (nanoseconds since the epoch, by the NATS
/// server's clock; machines' clocks are assumed to agree, as NTP keeps
/// them, to well within a deadline).
fn since(published: i128) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| now.as_nanos() as i128);
    u64::try_from(now - published).map_or(Duration::ZERO, Duration::from_nanos)
}

/// A stream name: no `.`, `*`, `>`, whitespace or path separators.
fn stream_name(namespace: &str) -> String {
    if namespace
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        format!("ythread-{namespace}")
    } else {
        format!(
            "ythread-{:016x}",
            crate::offloadable::fingerprint(namespace)
        )
    }
}

/// A consumer name for `registration`: its path can hold `::`, so a hash of it.
pub(super) fn consumer_name(registration: &Registration) -> String {
    format!(
        "ythread-{:016x}-{:016x}",
        crate::offloadable::fingerprint(registration.name),
        registration.fingerprint
    )
}
