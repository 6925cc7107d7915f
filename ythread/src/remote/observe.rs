//! What a remote call tells of itself, in one place: the W3C `traceparent`
//! header that carries its trace across NATS (sent with the `tracing`
//! feature, read by every worker), the designation that names it in every
//! text, span and event, the worker's `remote_call` span, and the metrics
//! (the `metrics` feature).
//!
//! A call is named `{function} call {id}`, plus ` trace {trace id}` when
//! one is known: `id` is the requester's number for the call, in hex, as it
//! travels (the last token of its reply subject), so the requester's error,
//! the worker's span and the worker's events about one call all say the
//! same words. (A worker process's events say `{function} call {n}`, the
//! same shape.)
//!
//! The header is a label, never a credential. A worker parses it strictly
//! (version `00`, its one length, lowercase hex, no all-zero id) and
//! ignores anything else, counting it: it never fails, delays or changes a
//! call. It is not covered by a call's signature (`signing.rs`): a trace id
//! is trusted for nothing but labels, so a forged or replayed one can only
//! mislabel a call that runs anyway, and leaving it out keeps the signed
//! bytes the same whether or not a requester sends it (requesters built
//! with and without `tracing`, and workers of either, verify each other's
//! calls).

use super::hex;

/// The header of a call's trace context, as W3C Trace Context names it
/// (NATS header names are case-sensitive: this spelling only).
pub(super) const TRACEPARENT_HEADER: &str = "traceparent";

/// The length of a version-00 `traceparent`: `00-` + 32 hex + `-` + 16 hex
/// + `-` + 2 hex. Nothing longer is looked at.
const TRACEPARENT_LEN: usize = 55;

/// A call's trace context, as its `traceparent` header carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TraceParent {
    pub(super) trace_id: [u8; 16],
    /// The id of the requester's span that sent the call.
    pub(super) parent_id: [u8; 8],
    pub(super) flags: u8,
}

/// What a call's headers say of its trace.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Incoming {
    /// No `traceparent`.
    Absent,
    Valid(TraceParent),
    /// A `traceparent` that is not one (or more than one): ignored.
    Invalid,
}

impl TraceParent {
    /// `text` as a version-00 `traceparent`, strictly: `None` for anything
    /// else (another version, another length, uppercase or other digits,
    /// an all-zero id). Reads at most [`TRACEPARENT_LEN`] bytes of it.
    pub(super) fn parse(text: &str) -> Option<TraceParent> {
        let bytes = text.as_bytes();
        if bytes.len() != TRACEPARENT_LEN
            || &bytes[..3] != b"00-"
            || bytes[35] != b'-'
            || bytes[52] != b'-'
        {
            return None;
        }
        let mut parsed = TraceParent {
            trace_id: [0; 16],
            parent_id: [0; 8],
            flags: 0,
        };
        hex::decode(&bytes[3..35], &mut parsed.trace_id, false)?;
        hex::decode(&bytes[36..52], &mut parsed.parent_id, false)?;
        let mut flags = [0];
        hex::decode(&bytes[53..55], &mut flags, false)?;
        parsed.flags = flags[0];
        if parsed.trace_id == [0; 16] || parsed.parent_id == [0; 8] {
            return None;
        }
        Some(parsed)
    }

    /// The header's text.
    pub(super) fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(&self.trace_id),
            hex::encode(&self.parent_id),
            self.flags
        )
    }

    pub(super) fn trace_hex(&self) -> String {
        hex::encode(&self.trace_id)
    }
}

/// The `traceparent` of a call's `headers`. Two of them are one too many:
/// which would be the requester's?
pub(super) fn traceparent_of(headers: Option<&async_nats::HeaderMap>) -> Incoming {
    let Some(headers) = headers else {
        return Incoming::Absent;
    };
    let mut values = headers.get_all(TRACEPARENT_HEADER);
    let Some(first) = values.next() else {
        return Incoming::Absent;
    };
    if values.next().is_some() {
        return Incoming::Invalid;
    }
    TraceParent::parse(first.as_str()).map_or(Incoming::Invalid, Incoming::Valid)
}

/// How a call is named wherever it is reported: `{function} call {id}`,
/// plus ` trace {trace id}` when one is known.
pub(super) fn designation(function: &str, id: &str, trace: Option<&TraceParent>) -> String {
    let call = crate::portable::designation(function, id);
    match trace {
        Some(trace) => format!("{call} trace {}", trace.trace_hex()),
        None => call,
    }
}

/// A call's id as a worker sees it: the last token of its reply subject,
/// where a ythread requester puts its number for the call in hex; `?` for
/// a reply subject that has none (a client of its own making), whose text
/// is not repeated.
pub(super) fn call_id(reply_to: &str) -> &str {
    let last = reply_to.rsplit('.').next().unwrap_or_default();
    if (1..=16).contains(&last.len())
        && last
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        last
    } else {
        "?"
    }
}

// --- the requester's side (`tracing`) ---------------------------------------

#[cfg(feature = "tracing")]
thread_local! {
    /// The trace id of the remote call this thread runs for a worker, if
    /// any: calls sent while it runs continue its trace.
    static SERVING: std::cell::Cell<Option<[u8; 16]>> = const { std::cell::Cell::new(None) };
}

/// Sets the trace id of the call this thread runs for a worker, until
/// dropped (it then puts back the one before: calls nest).
#[cfg(feature = "tracing")]
pub(super) struct TraceScope(Option<[u8; 16]>);

#[cfg(feature = "tracing")]
impl TraceScope {
    pub(super) fn enter(trace_id: Option<[u8; 16]>) -> TraceScope {
        TraceScope(SERVING.replace(trace_id))
    }
}

#[cfg(feature = "tracing")]
impl Drop for TraceScope {
    fn drop(&mut self) {
        SERVING.set(self.0);
    }
}

/// The trace context of a call about to be sent: the trace of the call
/// this thread runs for a worker, if any, or a new random one; its parent,
/// the current span (the offload's), or a random id outside any span.
/// `None` if the system's random source fails (the call goes without).
#[cfg(feature = "tracing")]
pub(super) fn outgoing() -> Option<TraceParent> {
    use ring::rand::{SystemRandom, generate};
    let random = SystemRandom::new();
    let trace_id = match SERVING.get() {
        Some(trace_id) => trace_id,
        None => generate::<[u8; 16]>(&random).ok()?.expose(),
    };
    let parent_id = match tracing::Span::current().id() {
        Some(id) => id.into_u64().to_be_bytes(),
        None => generate::<[u8; 8]>(&random).ok()?.expose(),
    };
    // (All-zero ids mean "none" in W3C's format: 2^-64 odds, but a worker
    // would ignore them.)
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        // Sampled: the requester's subscriber has the span.
        flags: 1,
    })
}

/// Tells the current span (the offload's) the trace id of the call `call`
/// sends: as its field `trace_id` if it has one, or else as an event in it.
#[cfg(feature = "tracing")]
pub(super) fn sending(trace: &TraceParent, call: &str) {
    let span = tracing::Span::current();
    let trace_id = trace.trace_hex();
    // Only ythread's own offload span: a span of the program's may have a
    // `trace_id` of its own, not to be overwritten.
    let offload = span
        .metadata()
        .is_some_and(|span| span.target() == "ythread" && span.name() == "offload");
    if offload && span.has_field("trace_id") {
        span.record("trace_id", trace_id.as_str());
    } else {
        tracing::debug!(target: "ythread::remote", trace_id, call, "remote call sent");
    }
}

// --- the worker's side ------------------------------------------------------

/// The span a worker runs a call in (entered on the thread that runs it:
/// a worker thread, or the one waiting for a worker process). A root: the
/// requester's span is in another process, named by `trace_id` and
/// `parent_id`.
#[cfg(feature = "tracing")]
pub(super) fn remote_call_span(
    function: &str,
    call: &str,
    trace: Option<&TraceParent>,
    deadline: Option<std::time::Duration>,
) -> tracing::Span {
    use tracing::field::Empty;
    let span = tracing::info_span!(
        target: "ythread::remote",
        parent: None,
        "remote_call",
        function,
        call,
        trace_id = Empty,
        parent_id = Empty,
        deadline_ms = Empty,
    );
    if let Some(trace) = trace {
        span.record("trace_id", trace.trace_hex().as_str());
        span.record("parent_id", hex::encode(&trace.parent_id).as_str());
    }
    if let Some(deadline) = deadline {
        span.record(
            "deadline_ms",
            u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        );
    }
    span
}

/// Why a worker did not run a call it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rejected {
    /// Its reply subject is the system's or ythread's own.
    ReplySubject,
    /// Not signed with the worker's key.
    BadSignature,
    /// A second copy of a signed call.
    Replay,
    /// Past its requester's deadline or expiry.
    Expired,
    /// Its requester cancelled it.
    Cancelled,
    /// Larger alone than the worker's `max_pending_bytes`.
    TooLarge,
    /// The calls the worker holds take its `max_pending_bytes`.
    Busy,
}

impl Rejected {
    /// Its metric label.
    #[cfg_attr(not(any(feature = "metrics", feature = "tracing")), allow(dead_code))]
    pub(super) fn label(self) -> &'static str {
        match self {
            Rejected::ReplySubject => "reply_subject",
            Rejected::BadSignature => "bad_signature",
            Rejected::Replay => "replay",
            Rejected::Expired => "expired",
            Rejected::Cancelled => "cancelled",
            Rejected::TooLarge => "too_large",
            Rejected::Busy => "busy",
        }
    }
}

/// A worker did not run a call, for `reason`: counted, and told as an
/// event naming the call (`call` names it).
pub(super) fn rejected(namespace: &str, reason: Rejected, call: impl FnOnce() -> String) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "ythread_remote_worker_rejected_total",
        "namespace" => namespace.to_owned(),
        "reason" => reason.label(),
    )
    .increment(1);
    #[cfg(feature = "tracing")]
    tracing::debug!(
        target: "ythread::remote",
        call = call(),
        reason = reason.label(),
        "remote call not run"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = call;
    #[cfg(not(feature = "metrics"))]
    let _ = (namespace, reason);
}

/// A worker ignored a call's `traceparent` (not one, strictly read): the
/// call goes on as if it had none.
pub(super) fn ignored_traceparent(namespace: &str, call: impl FnOnce() -> String) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "ythread_remote_worker_traceparent_ignored_total",
        "namespace" => namespace.to_owned(),
    )
    .increment(1);
    #[cfg(feature = "tracing")]
    tracing::debug!(
        target: "ythread::remote",
        call = call(),
        "ignored a malformed traceparent header"
    );
    #[cfg(not(feature = "tracing"))]
    let _ = call;
    #[cfg(not(feature = "metrics"))]
    let _ = namespace;
}

/// A worker answered a call with `reply` (encoded): counted by outcome.
pub(super) fn worker_answered(namespace: &str, reply: &[u8]) {
    #[cfg(feature = "metrics")]
    {
        use super::wire::Reply;
        let outcome = match Reply::decode(reply) {
            Ok(Reply::Done(_)) => "ok",
            Ok(Reply::Failed(error)) => error.outcome(),
            Err(_) => "protocol",
        };
        worker_call(namespace, outcome);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (namespace, reply);
}

/// A worker's call ended with `outcome` (a label of [`outcome`]'s).
pub(super) fn worker_call(namespace: &str, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "ythread_remote_worker_calls_total",
        "namespace" => namespace.to_owned(),
        "outcome" => outcome,
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (namespace, outcome);
}

// --- the requester's metrics -------------------------------------------------

/// A requester's call ended with `outcome`.
pub(super) fn replied(namespace: &str, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "ythread_remote_replies_total",
        "namespace" => namespace.to_owned(),
        "outcome" => outcome,
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (namespace, outcome);
}

/// One call in flight on the requester's gauge, until dropped.
pub(super) struct InFlightGauge {
    #[cfg(feature = "metrics")]
    gauge: metrics::Gauge,
}

impl InFlightGauge {
    pub(super) fn new(namespace: &str) -> InFlightGauge {
        #[cfg(feature = "metrics")]
        {
            let gauge = metrics::gauge!(
                "ythread_remote_calls_in_flight",
                "namespace" => namespace.to_owned(),
            );
            gauge.increment(1.0);
            InFlightGauge { gauge }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = namespace;
            InFlightGauge {}
        }
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        self.gauge.decrement(1.0);
    }
}

/// This module's part of [`describe_metrics`](crate::describe_metrics).
#[cfg(feature = "metrics")]
pub(crate) fn describe_series() {
    metrics::describe_gauge!(
        "ythread_remote_calls_in_flight",
        "Calls a Remote has sent and not had answered yet, by namespace"
    );
    metrics::describe_counter!(
        "ythread_remote_replies_total",
        "Calls a Remote sent that ended, by namespace and outcome (ok, or the \
         OffloadErrorKind in snake case)"
    );
    metrics::describe_counter!(
        "ythread_remote_worker_calls_total",
        "Calls a remote Worker ran and answered, by namespace and outcome (ok, or the \
         OffloadErrorKind in snake case)"
    );
    metrics::describe_counter!(
        "ythread_remote_worker_rejected_total",
        "Calls a remote Worker received and did not run, by namespace and reason \
         (reply_subject, bad_signature, replay, expired, cancelled, too_large, busy)"
    );
    metrics::describe_counter!(
        "ythread_remote_worker_traceparent_ignored_total",
        "Calls a remote Worker received, run or refused, whose traceparent header it \
         ignored (not a W3C version-00 traceparent, strictly read); each was served as \
         it would have been without it"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_is_read_strictly() {
        let parsed = TraceParent::parse(GOOD).unwrap();
        assert_eq!(parsed.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            parsed.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.header(), GOOD);
        for bad in [
            "",
            // Another version, uppercase, a digit that is no hex digit.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Too short, too long (a version-00 header has one length), the
            // dashes elsewhere.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47360-0f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // A multibyte character where a digit goes.
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        assert_eq!(TraceParent::parse(&GOOD.repeat(1000)), None);
    }

    #[test]
    fn one_traceparent_header_or_none() {
        assert_eq!(traceparent_of(None), Incoming::Absent);
        let mut headers = async_nats::HeaderMap::new();
        assert_eq!(traceparent_of(Some(&headers)), Incoming::Absent);
        // Header names are case-sensitive on NATS: another spelling is
        // another header.
        headers.insert("Traceparent", GOOD);
        assert_eq!(traceparent_of(Some(&headers)), Incoming::Absent);
        headers.insert(TRACEPARENT_HEADER, GOOD);
        assert!(matches!(
            traceparent_of(Some(&headers)),
            Incoming::Valid(parsed) if parsed.header() == GOOD
        ));
        headers.append(TRACEPARENT_HEADER, GOOD);
        assert_eq!(traceparent_of(Some(&headers)), Incoming::Invalid);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(TRACEPARENT_HEADER, "00-zz");
        assert_eq!(traceparent_of(Some(&headers)), Incoming::Invalid);
    }

    #[test]
    fn a_call_is_named_by_its_number_as_it_travels() {
        let trace = TraceParent::parse(GOOD).unwrap();
        assert_eq!(
            designation("app::sumn", call_id("_INBOX.abc.1f"), Some(&trace)),
            "app::sumn call 1f trace 4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            designation("app::sumn", call_id("_INBOX.abc.1f"), None),
            "app::sumn call 1f"
        );
        // A reply subject no ythread requester made is not repeated.
        for odd in [
            "",
            "_INBOX.abc.XYZ",
            "_INBOX.abc.",
            "a.11111111111111111",
            "a.1\u{1b}[2J",
        ] {
            assert_eq!(call_id(odd), "?", "{odd:?}");
        }
    }

    proptest::proptest! {
        /// Arbitrary text as a `traceparent`: parsed or not, never a panic,
        /// and what parses writes back as it came.
        #[test]
        fn arbitrary_traceparents_never_panic(text in "\\PC{0,80}") {
            if let Some(parsed) = TraceParent::parse(&text) {
                proptest::prop_assert_eq!(parsed.header(), text);
            }
        }

        /// Text shaped like a `traceparent`, with digits of any case: only
        /// the lowercase, non-zero ones parse.
        #[test]
        fn traceparent_shaped_text_parses_only_when_strict(
            text in "[0-9a-fA-F]{2}-[0-9a-fA-F]{32}-[0-9a-fA-F]{16}-[0-9a-fA-F]{2}",
        ) {
            let strict = text.starts_with("00-")
                && !text.bytes().any(|b| b.is_ascii_uppercase())
                && text[3..35] != "0".repeat(32)
                && text[36..52] != "0".repeat(16);
            proptest::prop_assert_eq!(TraceParent::parse(&text).is_some(), strict);
        }

        #[test]
        fn arbitrary_reply_subjects_name_a_call_safely(subject in "\\PC{0,40}") {
            let id = call_id(&subject);
            proptest::prop_assert!(id == "?" || id.len() <= 16);
        }
    }
}
