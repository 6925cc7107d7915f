//! What crosses NATS between a [`Remote`](super::Remote) requester and a
//! [`Worker`](super::Worker), in one place: the subjects, the headers, the
//! payloads, and the URL a connection starts from.
//!
//! ```text
//! call       request on  ythread.<namespace>.<function path>.<fingerprint, 16 hex digits>
//!            (queue group ythread.<namespace>)
//!            reply to    <the requester's inbox prefix>.<nuid>.<call number, hex>
//!            header      Ythread-Deadline-Ms: the time left to the requester's deadline, in ms
//!            header      Ythread-Expires: when the requester stops waiting, in ms since
//!                        the Unix epoch (a call that arrives later is dropped unrun)
//!            header      Ythread-Signature: with a signing key, HMAC-SHA256 of the
//!                        subject, reply subject, both headers above and the payload
//!            header      traceparent (feature `tracing`): W3C, 00-<trace id>-<the
//!                        requester's span id>-01; a label, not signed (`observe.rs`)
//!            payload     the call's arguments, postcard (the subject names the function)
//! reply      on the call's reply subject, payload Reply (postcard):
//!            Done(the result, as the function's registration encodes it)
//!            | Failed(WireError); header Ythread-Signature with a signing key
//! cancel     on ythread-cancel.<namespace>: reply subjects of calls whose requester
//!            lost its connection while they were in flight (and answered
//!            "may have run"), one per line with its expiry (ms since the epoch);
//!            workers drop them if they have not started (signed with a key)
//! queued     on ythread-queue.<namespace>.<function path>.<fingerprint> (the fleet's
//!            shared queue, a JetStream stream): the call's payload, with
//!            headers Ythread-Reply-To (the requester's inbox),
//!            Ythread-Deadline-Ms (the time left when it was queued), and the
//!            call's traceparent if it had a valid one
//! ```
//!
//! Every payload is decoded from bytes of bounded length (NATS's
//! `max_payload`), whole, and a malformed one is an error, never a panic.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::signing::SIGNATURE_HEADER;
use crate::error::{OffloadError, OffloadErrorKind};
use crate::offloadable::Registration;
use crate::processes::death::Death;

/// The subject of `registration`'s calls in `namespace`.
pub(super) fn subject(namespace: &str, registration: &Registration) -> String {
    format!(
        "ythread.{namespace}.{}.{:016x}",
        registration.name, registration.fingerprint
    )
}

/// The queue group of the workers of `namespace`: each call goes to one of
/// them.
pub(super) fn queue_group(namespace: &str) -> String {
    format!("ythread.{namespace}")
}

/// The subject of `registration`'s calls in the shared queue of `namespace`.
pub(super) fn queue_subject(namespace: &str, registration: &Registration) -> String {
    format!(
        "ythread-queue.{namespace}.{}.{:016x}",
        registration.name, registration.fingerprint
    )
}

/// The subject of the cancellations of `namespace`'s calls.
pub(super) fn cancel_subject(namespace: &str) -> String {
    format!("ythread-cancel.{namespace}")
}

/// The subjects of every call in the shared queue of `namespace`.
pub(super) fn queue_subjects(namespace: &str) -> String {
    format!("ythread-queue.{namespace}.>")
}

/// Checks that `namespace` is one NATS subject token.
///
/// # Errors
///
/// `InvalidInput` if it is empty or has a `.`, `*`, `>` or whitespace.
pub(super) fn check_token(namespace: &str) -> io::Result<()> {
    if namespace.is_empty()
        || namespace
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace())
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the namespace {namespace:?} (`namespace(..)` of the builder) is not a NATS \
                 subject token: no `.`, `*`, `>` or whitespace, and not empty"
            ),
        ));
    }
    Ok(())
}

/// The header that carries a call's deadline, in milliseconds from when the
/// worker receives it.
const DEADLINE_HEADER: &str = "Ythread-Deadline-Ms";

/// The header that carries when a call's requester stops waiting, in ms
/// since the Unix epoch.
const EXPIRES_HEADER: &str = "Ythread-Expires";

/// Milliseconds since the Unix epoch, now plus `left`.
pub(super) fn epoch_ms_in(left: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.saturating_add(left).as_millis()).unwrap_or(u64::MAX)
}

/// Puts when a call's requester stops waiting in `headers`.
pub(super) fn set_expires(headers: &mut async_nats::HeaderMap, epoch_ms: u64) {
    headers.insert(EXPIRES_HEADER, epoch_ms.to_string().as_str());
}

/// Whether `epoch_ms` (ms since the Unix epoch) is past.
pub(super) fn is_past(epoch_ms: u64) -> bool {
    epoch_ms_in(Duration::ZERO) >= epoch_ms
}

/// The headers of a call: its deadline (`left`) and when its requester stops
/// waiting, with their text as it is signed.
pub(super) fn call_headers(left: Duration) -> (async_nats::HeaderMap, String) {
    let mut headers = async_nats::HeaderMap::new();
    let deadline = left.as_millis().to_string();
    let expires = epoch_ms_in(left).to_string();
    headers.insert(DEADLINE_HEADER, deadline.as_str());
    headers.insert(EXPIRES_HEADER, expires.as_str());
    let signed = format!("{deadline} {expires}");
    (headers, signed)
}

/// The text of a call's headers as they are signed (see [`call_headers`]).
pub(super) fn signed_headers(headers: Option<&async_nats::HeaderMap>) -> String {
    let text = |name| {
        headers
            .and_then(|headers| headers.get(name))
            .map_or("", |value| value.as_str())
    };
    format!("{} {}", text(DEADLINE_HEADER), text(EXPIRES_HEADER))
}

/// When a call's requester stops waiting (ms since the Unix epoch), if its
/// headers say.
pub(super) fn expires_of(headers: Option<&async_nats::HeaderMap>) -> Option<u64> {
    headers?.get(EXPIRES_HEADER)?.as_str().parse().ok()
}

/// The signature `headers` carry, if any.
pub(super) fn signature_of(headers: Option<&async_nats::HeaderMap>) -> Option<&str> {
    Some(headers?.get(SIGNATURE_HEADER)?.as_str())
}

/// What the NATS server refused, from its `-ERR` text: `Permissions
/// Violation for Publish to "x"` or `for Subscription to "x"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refused {
    Publish(String),
    Subscribe(String),
}

impl Refused {
    pub(super) fn parse(error: &str) -> Option<Refused> {
        let lower = error.to_ascii_lowercase();
        let (at, publish) = match (lower.find("publish to "), lower.find("subscription to ")) {
            _ if !lower.contains("permissions violation") => return None,
            (Some(at), _) => (at + "publish to ".len(), true),
            (None, Some(at)) => (at + "subscription to ".len(), false),
            (None, None) => return None,
        };
        let subject = error[at..]
            .trim_start_matches(['"', '\''])
            .split(['"', '\'', ' '])
            .next()
            .unwrap_or_default()
            .to_owned();
        Some(if publish {
            Refused::Publish(subject)
        } else {
            Refused::Subscribe(subject)
        })
    }
}

/// The header that carries a queued call's reply subject (the requester's
/// inbox).
const REPLY_HEADER: &str = "Ythread-Reply-To";

/// Puts `deadline` in `headers`.
pub(super) fn set_deadline(headers: &mut async_nats::HeaderMap, deadline: Duration) {
    headers.insert(DEADLINE_HEADER, deadline.as_millis().to_string().as_str());
}

/// The deadline `headers` carry, if any.
pub(super) fn deadline_of(headers: Option<&async_nats::HeaderMap>) -> Option<Duration> {
    headers?
        .get(DEADLINE_HEADER)?
        .as_str()
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
}

/// Puts a queued call's reply subject in `headers`.
pub(super) fn set_reply_to(headers: &mut async_nats::HeaderMap, reply_to: &str) {
    headers.insert(REPLY_HEADER, reply_to);
}

/// The reply subject a queued call's `headers` carry, if any.
pub(super) fn reply_to_of(headers: Option<&async_nats::HeaderMap>) -> Option<async_nats::Subject> {
    Some(headers?.get(REPLY_HEADER)?.as_str().into())
}

/// `nats://user:password@host:port`: async-nats ignores credentials in a
/// URL, so they go to the connection options (unless those have their own),
/// and the URL without them is what errors show.
pub(super) fn credentials_from_url(
    url: &str,
    options: Option<async_nats::ConnectOptions>,
) -> io::Result<(String, async_nats::ConnectOptions)> {
    if url.contains(',') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "one NATS URL, please: the client learns the other servers of a cluster from the \
             one it reaches",
        ));
    }
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) if ["nats", "tls", "ws", "wss"].contains(&scheme) => (scheme, rest),
        _ => ("nats", url),
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return Ok((url.to_owned(), options.unwrap_or_default()));
    };
    let bare = format!("{scheme}://{host}");
    if let Some(options) = options {
        return Ok((bare, options));
    }
    let options = match credentials.split_once(':') {
        Some((user, password)) => async_nats::ConnectOptions::with_user_and_password(
            percent_decoded(user),
            percent_decoded(password),
        ),
        None => async_nats::ConnectOptions::with_token(percent_decoded(credentials)),
    };
    Ok((bare, options))
}

/// `p%40ss` is `p@ss`, as in any URL.
pub(super) fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL without its credentials, to show.
pub(super) fn redacted(url: &str) -> &str {
    url.rsplit_once('@').map_or(url, |(_, host)| host)
}

/// What a remote worker answers: the call's encoded result, or why there is
/// none. (A request's payload is the call's encoded arguments alone: its
/// subject names the function and the signature.)
#[derive(Serialize, Deserialize, Debug)]
pub(super) enum Reply<'a> {
    /// The result, as the function's registration encodes it.
    Done(#[serde(borrow)] &'a [u8]),
    /// The call failed on the worker's machine.
    Failed(WireError),
}

impl<'a> Reply<'a> {
    /// Decodes a reply that must take all of `bytes`.
    pub(super) fn decode(bytes: &'a [u8]) -> Result<Reply<'a>, postcard::Error> {
        match postcard::take_from_bytes(bytes)? {
            (reply, []) => Ok(reply),
            _ => Err(postcard::Error::DeserializeBadEncoding),
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        // Encoding a byte slice or strings into a `Vec` cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }
}

/// An [`OffloadError`] as a remote worker sends it back: its kind, and what
/// the requester needs to make it again. (The function is not sent: the
/// requester knows which it called.) postcard tags each variant with its
/// index, so the order of the variants is part of the format.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(super) enum WireError {
    /// The work panicked; its message (`Box<dyn Any>` for a payload that is
    /// not a string).
    Panicked { message: String },
    /// The worker's strategy returned without running the call. No ythread
    /// worker sends it (it would be a strategy's bug in the worker): a
    /// requester takes it for someone else's bytes.
    NotRun,
    /// The call cannot run in a worker process; why.
    NotPortable { reason: String },
    /// The worker process running the call died: its exit code, or the
    /// signal that killed it, and the memory limit it ran under.
    WorkerDied { death: Death, runs: u32 },
    /// The call ran past the deadline of the worker's processes, in ms.
    DeadlineExceeded { deadline_ms: u64 },
    /// A message to or from the worker process could not be carried.
    Protocol { detail: String },
    /// No worker process could take the call.
    Unavailable { detail: String },
    /// The call's outcome was lost on the worker's side (no ythread worker
    /// sends it today: a worker's calls run in its own processes).
    MayHaveRun { detail: String },
    /// The call ran past the worker's deadline, in ms, on a thread of the
    /// worker ([`WorkerBuilder::threads`](super::WorkerBuilder::threads)),
    /// which cannot be killed: it runs on there until it returns. (Last:
    /// the variants before it keep their tags.)
    Overran { deadline_ms: u64 },
}

impl WireError {
    /// Its outcome as a worker's metric label (see `crate::error::outcome_label`).
    #[cfg(feature = "metrics")]
    pub(super) fn outcome(&self) -> &'static str {
        let kind = match self {
            WireError::Panicked { .. } => OffloadErrorKind::Panicked,
            WireError::NotRun => OffloadErrorKind::NotRun,
            WireError::NotPortable { .. } => OffloadErrorKind::NotPortable,
            WireError::WorkerDied { .. } => OffloadErrorKind::WorkerDied,
            WireError::DeadlineExceeded { .. } | WireError::Overran { .. } => {
                OffloadErrorKind::DeadlineExceeded
            }
            WireError::Protocol { .. } => OffloadErrorKind::Protocol,
            WireError::Unavailable { .. } => OffloadErrorKind::Unavailable,
            WireError::MayHaveRun { .. } => OffloadErrorKind::MayHaveRun,
        };
        kind.label()
    }

    /// `error`, to send to the requester.
    pub(super) fn of(error: &OffloadError) -> WireError {
        let detail = || error.detail().unwrap_or_default().to_owned();
        match error.kind() {
            OffloadErrorKind::Panicked => WireError::Panicked {
                message: error.panic_message().unwrap_or("Box<dyn Any>").to_owned(),
            },
            OffloadErrorKind::NotRun => WireError::NotRun,
            OffloadErrorKind::NotPortable => WireError::NotPortable { reason: detail() },
            OffloadErrorKind::WorkerDied => {
                let (death, runs) = error.death().unwrap_or_default();
                WireError::WorkerDied { death, runs }
            }
            OffloadErrorKind::DeadlineExceeded => WireError::DeadlineExceeded {
                deadline_ms: error
                    .deadline()
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            },
            OffloadErrorKind::Protocol => WireError::Protocol { detail: detail() },
            // Made by the worker's strategy with a detail; a shut-down
            // strategy, or a full queue (not made by `Processes`, the
            // strategy of a remote worker), say it in their message.
            OffloadErrorKind::MayHaveRun => WireError::MayHaveRun { detail: detail() },
            OffloadErrorKind::Unavailable | OffloadErrorKind::QueueFull => WireError::Unavailable {
                detail: match error.detail() {
                    Some(detail) => detail.to_owned(),
                    None => error.to_string(),
                },
            },
        }
    }

    /// The error the worker sent back, for the call of `function` named
    /// `call` (`observe::designation`), which the texts that come with a
    /// detail end with. (A panic's text is the function's own, and the
    /// other kinds carry none.)
    pub(super) fn into_error(self, function: &str, call: &str) -> OffloadError {
        match self {
            WireError::Panicked { message } => OffloadError::remote_panic(function, message),
            WireError::NotRun => OffloadError::protocol(
                function,
                format_args!("a reply no ythread worker sends; {call}"),
            ),
            WireError::NotPortable { reason } => {
                OffloadError::not_portable(function, &format!("{reason}; {call}"))
            }
            WireError::WorkerDied { death, runs } => {
                OffloadError::worker_died(function, death, runs)
            }
            WireError::DeadlineExceeded { deadline_ms } => {
                OffloadError::deadline_exceeded(function, Duration::from_millis(deadline_ms))
            }
            WireError::Protocol { detail } => {
                OffloadError::protocol(function, format_args!("{detail}; {call}"))
            }
            WireError::Unavailable { detail } => OffloadError::unavailable(
                function,
                format_args!("on the remote worker: {detail}; {call}"),
            ),
            WireError::MayHaveRun { detail } => OffloadError::may_have_run(
                function,
                format_args!("on the remote worker: {detail}; {call}"),
            ),
            WireError::Overran { deadline_ms } => OffloadError::no_answer_by_noting(
                function,
                Duration::from_millis(deadline_ms),
                format_args!(
                    "it ran past the remote worker's deadline (`WorkerBuilder::deadline`) on one \
                     of its threads (`WorkerBuilder::threads`), which cannot be killed: it runs \
                     on there until it returns, and its result is dropped; {call}"
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the requester makes of `error` once it has crossed.
    fn crossed(error: &OffloadError) -> OffloadError {
        let bytes = Reply::Failed(WireError::of(error)).encode();
        match Reply::decode(&bytes).unwrap() {
            Reply::Failed(wire) => wire.into_error("f", "f call 1"),
            Reply::Done(_) => panic!("a failure came back as a result"),
        }
    }

    #[test]
    fn each_kind_crosses_with_what_it_says() {
        let panicked = crossed(&OffloadError::remote_panic("f", "boom".into()));
        assert_eq!(panicked.kind(), OffloadErrorKind::Panicked);
        assert_eq!(panicked.panic_message(), Some("boom"));

        let not_run = crossed(&OffloadError::not_run());
        assert_eq!(not_run.kind(), OffloadErrorKind::Protocol);

        let not_portable = crossed(&OffloadError::not_portable("f", "a closure"));
        assert_eq!(not_portable.kind(), OffloadErrorKind::NotPortable);
        assert!(not_portable.to_string().contains("a closure"));

        let died = crossed(&OffloadError::worker_died(
            "f",
            Death {
                code: None,
                signal: Some(libc::SIGABRT),
                memory_limit: Some(1 << 30),
                cause: None,
            },
            1,
        ));
        assert_eq!(died.kind(), OffloadErrorKind::WorkerDied);
        assert_eq!(
            (died.signal(), died.exit_code()),
            (Some(libc::SIGABRT), None)
        );
        assert!(died.to_string().contains("1024 MiB"), "{died}");

        let late = crossed(&OffloadError::deadline_exceeded(
            "f",
            Duration::from_millis(250),
        ));
        assert_eq!(late.kind(), OffloadErrorKind::DeadlineExceeded);
        assert!(late.to_string().contains("250ms"), "{late}");

        let protocol = crossed(&OffloadError::protocol("f", "too big"));
        assert_eq!(protocol.kind(), OffloadErrorKind::Protocol);
        assert!(protocol.to_string().contains("too big"));
        // The texts with a detail name the call as the requester does.
        assert!(protocol.to_string().ends_with("; f call 1"), "{protocol}");

        for error in [
            OffloadError::unavailable("f", "none started"),
            OffloadError::shut_down("set of worker processes"),
            OffloadError::queue_full("pool", 4),
        ] {
            let unavailable = crossed(&error);
            assert_eq!(unavailable.kind(), OffloadErrorKind::Unavailable);
            assert!(
                unavailable.to_string().contains("on the remote worker"),
                "{unavailable}"
            );
        }

        // A call past the deadline of a worker on threads runs on there: the
        // requester's error says so, and not that something was killed.
        let bytes = Reply::Failed(WireError::Overran { deadline_ms: 1500 }).encode();
        let Ok(Reply::Failed(wire)) = Reply::decode(&bytes) else {
            panic!("an overrun did not cross as a failure");
        };
        let overran = wire.into_error("f", "f call 1");
        assert_eq!(overran.kind(), OffloadErrorKind::DeadlineExceeded);
        let text = overran.to_string();
        assert!(text.contains("1.5s") && text.contains("runs on"), "{text}");
        assert!(!text.contains("killed and replaced"), "{text}");
    }

    #[test]
    fn permission_errors_name_what_was_refused() {
        assert_eq!(
            Refused::parse("Permissions Violation for Publish to \"ythread.n.f.00\""),
            Some(Refused::Publish("ythread.n.f.00".into()))
        );
        assert_eq!(
            Refused::parse(
                "Permissions Violation for Subscription to \"ythread.n.>\" using queue \"q\""
            ),
            Some(Refused::Subscribe("ythread.n.>".into()))
        );
        assert_eq!(Refused::parse("Maximum Payload Violation"), None);
        assert_eq!(Refused::parse("publish to x"), None);
    }

    #[test]
    fn a_garbage_wire_error_is_a_decoding_error_not_a_panic() {
        // `Failed` (tag 1), then an unknown variant of `WireError`.
        assert!(Reply::decode(&[1, 99]).is_err());
        // `Failed(Protocol)` with a detail longer than the bytes left.
        assert!(Reply::decode(&[1, 5, 200, 1, b'x']).is_err());
        // `Failed(WorkerDied)` cut short, and with bytes after its end.
        assert!(Reply::decode(&[1, 3, 1]).is_err());
        assert!(Reply::decode(&[1, 3, 0, 0, 0, 0]).is_err());
    }

    proptest::proptest! {
        /// Arbitrary bytes as a reply: an error or a reply, never a panic.
        #[test]
        fn arbitrary_replies_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            if let Ok(Reply::Failed(wire)) = Reply::decode(&bytes) {
                let _ = wire.into_error("f", "f call 1").to_string();
            }
        }
    }
}
