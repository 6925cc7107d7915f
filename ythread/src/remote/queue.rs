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

use super::wire::{
    deadline_of, queue_subject, queue_subjects, reply_to_of, set_deadline, set_reply_to,
};
use crate::offloadable::Registration;

/// Calls queued at most, in bytes, for the whole fleet of a namespace; past
/// it, a busy worker keeps the call in its own line. The server reserves it
/// from its JetStream memory (`max_memory_store`) for each namespace.
const MAX_QUEUED_BYTES: i64 = 64 << 20;

/// How long a worker's pull request waits for a call before it asks again.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// A namespace's queue on the NATS server.
pub(super) struct Queue {
    jetstream: jetstream::Context,
    config: stream::Config,
    namespace: String,
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

/// A call taken from the queue.
pub(super) struct Queued {
    pub(super) reply_to: async_nats::Subject,
    /// Time left to the requester's deadline, counted from when the call
    /// entered the queue; `None` if it has none.
    pub(super) left: Option<Duration>,
    pub(super) args: Bytes,
}

impl Queue {
    /// Opens (creating if need be) the queue of `namespace`.
    ///
    /// # Errors
    ///
    /// The reason, if the server has no JetStream or refuses the stream.
    pub(super) async fn open(
        client: &async_nats::Client,
        namespace: &str,
    ) -> Result<Queue, String> {
        let jetstream = jetstream::new(client.clone());
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
        jetstream
            .get_or_create_stream(config.clone())
            .await
            .map_err(|error| error.to_string())?;
        Ok(Queue {
            jetstream,
            config,
            namespace: namespace.to_owned(),
        })
    }

    fn subject(&self, registration: &Registration) -> String {
        queue_subject(&self.namespace, registration)
    }

    /// Puts a call in the queue; returns once the server has said whether
    /// it stored it.
    pub(super) async fn forward(
        &self,
        registration: &Registration,
        reply_to: &str,
        left: Option<Duration>,
        args: Bytes,
    ) -> Forwarded {
        use async_nats::jetstream::context::PublishErrorKind;
        let mut headers = async_nats::HeaderMap::new();
        set_reply_to(&mut headers, reply_to);
        if let Some(left) = left {
            set_deadline(&mut headers, left);
        }
        let ack = match self
            .jetstream
            .publish_with_headers(self.subject(registration), headers, args)
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
            Err(_) => Forwarded::NotStored,
        }
    }

    /// The pull consumer of `registration`'s calls, shared by every worker; the
    /// stream too is made again if it is gone (a server restarted loses its
    /// in-memory streams).
    ///
    /// # Errors
    ///
    /// If the server refuses them (or JetStream is gone).
    pub(super) async fn consumer(&self, registration: &Registration) -> Result<Consumer, String> {
        let name = consumer_name(registration);
        self.jetstream
            .get_or_create_stream(self.config.clone())
            .await
            .map_err(|error| error.to_string())?
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
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
                },
            )
            .await
            .map_err(|error| error.to_string())
    }
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
    /// of ours (someone else published on the subject).
    pub(super) async fn take(self) -> Option<Queued> {
        let Pulled { message, received } = self;
        let confirmed = message.double_ack().await.is_ok();
        if !confirmed || received.elapsed() >= ACK_WAIT / 2 {
            return None;
        }
        let waited = message.info().map_or(Duration::ZERO, |info| {
            since(info.published.unix_timestamp_nanos())
        });
        let headers = message.headers.as_ref();
        let reply_to = reply_to_of(headers)?;
        // A second of slack for the clocks of the server and of this
        // machine, which measure `waited` between them.
        let left =
            deadline_of(headers).map(|deadline| (deadline + CLOCK_SLACK).saturating_sub(waited));
        Some(Queued {
            reply_to,
            left,
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
fn consumer_name(registration: &Registration) -> String {
    format!(
        "ythread-{:016x}-{:016x}",
        crate::offloadable::fingerprint(registration.name),
        registration.fingerprint
    )
}
