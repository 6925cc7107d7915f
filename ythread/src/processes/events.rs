//! A call's `tracing` events, from the worker process that runs it to the
//! parent's subscriber (feature `tracing`).
//!
//! No subscriber of the program's runs in a worker (it serves before
//! `main`, or from `init`, before the program sets one up), so the worker
//! sets its own as the global default ([`forward`]): while a call runs, it
//! renders each event the work emits, at the level the call asked for or
//! less verbose, as text (level, target, message, the other fields as
//! `key=value`) and sends it to the parent as an `EVENT` frame on the reply
//! channel, before the reply: events and reply keep their order, and each
//! event names its call. Spans the work enters are not carried: an event
//! comes with its own fields only. (A program whose `init_with` setup sets
//! a subscriber of its own keeps it in its workers, and their events go
//! there instead.)
//!
//! The parent reads them while it waits for the reply ([`CallEvents`]) and
//! emits each again, on the thread that waits, inside its current span (the
//! offload's, in the handler's), with the target `ythread::worker` and the
//! fields `worker_id`, `worker_pid`, `worker_call` (`f call 7`) and
//! `worker_target` (the event's own).
//!
//! The worker is another process, and what it sends may be hostile: each
//! event is at most [`MAX_TEXT`] bytes of message and as much of fields,
//! a call gets at most [`MAX_EVENTS`] events and [`MAX_EVENT_BYTES`] bytes
//! of them; beyond, the worker drops events and counts them, says how many
//! in one `DROPPED` frame, and the parent says so in one event once the
//! call is over. An event frame the parent cannot read, or past the bounds
//! (which a worker of ours never sends), puts the worker out of step: its
//! call fails with `Protocol`, as for any malformed frame, and the calling
//! thread is not kept reading a flood. Text is escaped as the worker's
//! printed lines are (`output.rs`).

use std::io::{self, PipeWriter};
#[cfg(feature = "tracing")]
use std::sync::Arc;

use super::frame::{self, DROPPED, EVENT, ReadError, Watch};
use super::meters;
use crate::sync::Mutex;

/// The most events of one call re-emitted in the parent.
pub(crate) const MAX_EVENTS: usize = 1000;

/// The most bytes of event frames of one call (bodies), 1 MiB.
pub(crate) const MAX_EVENT_BYTES: usize = 1 << 20;
/// The most a `DROPPED` frame says: a worker that dropped more events in
/// one call (a call of an hour or more, tracing in a loop) says this, "at
/// least"; a count over it is a worker out of step.
pub(crate) const MAX_DROPPED: u64 = u32::MAX as u64;

/// The most bytes of an event's message, and of its other fields, as sent.
pub(crate) const MAX_TEXT: usize = 4096;

/// The most bytes of an event's target, as sent.
#[cfg(feature = "tracing")]
const MAX_TARGET: usize = 256;

/// The parent's side: the events of one call, as its reply is read.
pub(crate) struct CallEvents<'c> {
    /// The frame number of the call: an event of another is out of step.
    call: u32,
    /// What names the call in re-emitted events (`f call 7`).
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    designation: &'c str,
    /// The worker's number in its set, and its pid.
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    worker: usize,
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    pid: u32,
    /// Events and bytes taken so far, within the bounds.
    events: usize,
    bytes: usize,
    /// Events the worker dropped, as it says once the call is over.
    dropped: u64,
    /// Whether it said so (a worker of ours says it once, at most).
    said_dropped: bool,
}

impl<'c> CallEvents<'c> {
    pub(crate) fn new(call: u32, designation: &'c str, worker: usize, pid: u32) -> Self {
        CallEvents {
            call,
            designation,
            worker,
            pid,
            events: 0,
            bytes: 0,
            dropped: 0,
            said_dropped: false,
        }
    }

    /// Takes one `EVENT` or `DROPPED` frame (see `frame::read_reply`): an
    /// event is emitted again here, within the bounds. A frame that cannot
    /// be read, or of another call, is an error: the worker is out of step.
    pub(crate) fn take(&mut self, kind: u8, call: u32, body: &[u8]) -> Result<(), ReadError> {
        if call != self.call {
            return Err(ReadError::Malformed(format!(
                "an event of call {call}, where call {} runs",
                self.call
            )));
        }
        if kind == DROPPED {
            if self.said_dropped {
                return Err(ReadError::Malformed("a second drop count".into()));
            }
            let dropped = frame::parse_dropped(body).map_err(|error| {
                ReadError::Malformed(format!("an unreadable drop count: {error}"))
            })?;
            // What a worker of ours counts is what one call emitted past the
            // bounds: far from this. A larger count would poison the
            // program's metric (and wrap it, read as a counter reset).
            if dropped > MAX_DROPPED {
                return Err(ReadError::Malformed(format!(
                    "a drop count of {dropped}, over the {MAX_DROPPED} a call can reach"
                )));
            }
            self.said_dropped = true;
            self.dropped = self.dropped.saturating_add(dropped);
            return Ok(());
        }
        debug_assert_eq!(kind, EVENT);
        let (level, target, message, fields) = frame::parse_event(body)
            .map_err(|error| ReadError::Malformed(format!("an unreadable event: {error}")))?;
        if !(frame::LEVEL_ERROR..=frame::LEVEL_TRACE).contains(&level) {
            return Err(ReadError::Malformed(format!("an event of level {level}")));
        }
        // A worker of ours cuts its text to fit and stops sending at the
        // bounds (counting what it drops): past them, it is not one, and
        // reading on would let it keep this thread busy for as long as it
        // likes.
        let too_long =
            target.len() > MAX_TEXT || message.len() > MAX_TEXT || fields.len() > MAX_TEXT;
        if too_long || self.events >= MAX_EVENTS || self.bytes + body.len() > MAX_EVENT_BYTES {
            return Err(ReadError::Malformed(format!(
                "events past the bounds of a call ({MAX_EVENTS} events, {MAX_EVENT_BYTES} \
                 bytes, {MAX_TEXT} bytes of text each)"
            )));
        }
        self.events += 1;
        self.bytes += body.len();
        #[cfg(feature = "tracing")]
        self.emit(level, target, message, fields);
        Ok(())
    }

    /// The call is over, whatever its outcome: says how many of its events
    /// were dropped, if any.
    pub(crate) fn finish(self) {
        if self.dropped == 0 {
            return;
        }
        meters::events_dropped(self.dropped);
        #[cfg(feature = "tracing")]
        tracing::warn!(
            target: "ythread::worker",
            worker_id = self.worker,
            worker_pid = self.pid,
            worker_call = self.designation,
            dropped = self.dropped,
            "{} event(s) of the worker dropped: a call sends at most {MAX_EVENTS} events, \
             {MAX_EVENT_BYTES} bytes of them, each at most {MAX_TEXT} bytes of message",
            self.dropped,
        );
    }

    /// Emits an event of the worker's here, in the current span.
    #[cfg(feature = "tracing")]
    fn emit(&self, level: u8, target: &str, message: &str, fields: &str) {
        use super::output::escape_all;
        let text = escape_all(&format!("{message}{fields}"));
        let target = escape_all(target);
        let (worker, pid, call) = (self.worker, self.pid, self.designation);
        // A callsite's level is a constant: one per level.
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: "ythread::worker",
                    $level,
                    worker_id = worker,
                    worker_pid = pid,
                    worker_call = call,
                    worker_target = target.as_str(),
                    "{text}"
                )
            };
        }
        match level {
            frame::LEVEL_ERROR => emit!(tracing::Level::ERROR),
            frame::LEVEL_WARN => emit!(tracing::Level::WARN),
            frame::LEVEL_INFO => emit!(tracing::Level::INFO),
            frame::LEVEL_DEBUG => emit!(tracing::Level::DEBUG),
            _ => emit!(tracing::Level::TRACE),
        }
    }
}

/// The most verbose level of event the parent's subscribers want now, for
/// a call's `level`.
pub(crate) fn wanted() -> u8 {
    #[cfg(feature = "tracing")]
    {
        use tracing::level_filters::LevelFilter;
        match LevelFilter::current() {
            LevelFilter::OFF => frame::LEVEL_OFF,
            LevelFilter::ERROR => frame::LEVEL_ERROR,
            LevelFilter::WARN => frame::LEVEL_WARN,
            LevelFilter::INFO => frame::LEVEL_INFO,
            LevelFilter::DEBUG => frame::LEVEL_DEBUG,
            _ => frame::LEVEL_TRACE,
        }
    }
    #[cfg(not(feature = "tracing"))]
    frame::LEVEL_OFF
}

/// The worker's side: its reply channel, which the thread that serves calls
/// and the threads that emit events share, so that a call's events all go
/// before its reply and none after.
pub(crate) struct Outbox {
    state: Mutex<State>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

struct State {
    replies: PipeWriter,
    /// The call running, whose events go out; `None` between calls, when
    /// events are dropped (an idle worker must say nothing).
    call: Option<u32>,
    /// Events sent for the running call, and their bytes; events dropped.
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    events: usize,
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    bytes: usize,
    dropped: u64,
    /// The event frame being written, reused.
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    frame: Vec<u8>,
    /// The write of a frame failed: the parent is gone, and the thread that
    /// serves calls learns it from its reply.
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    broken: bool,
}

impl Outbox {
    pub(crate) fn new(replies: PipeWriter) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                replies,
                call: None,
                events: 0,
                bytes: 0,
                dropped: 0,
                frame: Vec::new(),
                broken: false,
            }),
        }
    }

    /// Call number `call` starts: its events at `level` or less verbose go
    /// out from now on.
    pub(crate) fn begin(&self, call: u32, level: u8) {
        let mut state = self.state.lock();
        state.call = Some(call);
        state.events = 0;
        state.bytes = 0;
        state.dropped = 0;
        #[cfg(feature = "tracing")]
        LEVEL.store(level, std::sync::atomic::Ordering::Relaxed);
        #[cfg(not(feature = "tracing"))]
        let _ = level;
    }

    /// Writes `frame`, a reply that ends the call it answers (if one runs),
    /// after a `DROPPED` frame if its events were dropped.
    pub(crate) fn reply(&self, reply: &[u8], max_frame: usize) -> io::Result<()> {
        let mut state = self.state.lock();
        #[cfg(feature = "tracing")]
        LEVEL.store(frame::LEVEL_OFF, std::sync::atomic::Ordering::Relaxed);
        let State {
            replies,
            call,
            dropped,
            ..
        } = &mut *state;
        if let Some(call) = call.take()
            && *dropped > 0
        {
            let mut out = Vec::new();
            frame::begin(&mut out, DROPPED, call);
            let _ = frame::put(&mut out, dropped);
            if frame::finish(&mut out, max_frame).is_ok() {
                frame::write(replies, &out, Watch::default()).map_err(|(error, _)| error)?;
            }
        }
        frame::write(replies, reply, Watch::default()).map_err(|(error, _)| error)
    }

    /// Sends an event of the running call, or counts it dropped; nothing
    /// between calls.
    #[cfg(feature = "tracing")]
    fn event(&self, level: u8, target: &str, message: &str, fields: &str) {
        let mut state = self.state.lock();
        let State {
            replies,
            call: Some(call),
            events,
            bytes,
            dropped,
            frame: out,
            broken: false,
        } = &mut *state
        else {
            return;
        };
        frame::begin(out, EVENT, *call);
        let encoded = frame::put(out, &(level, target, message, fields));
        let size = out.len();
        if encoded.is_err()
            || frame::finish(out, frame::MAX_EVENT_FRAME).is_err()
            || *events >= MAX_EVENTS
            || *bytes + size > MAX_EVENT_BYTES
        {
            *dropped = (*dropped + 1).min(MAX_DROPPED);
            return;
        }
        *events += 1;
        *bytes += size;
        if frame::write(replies, out, Watch::default()).is_err() {
            state.broken = true;
        }
    }
}

/// The level of the running call's events (`frame::LEVEL_*`): read by
/// [`Forward::enabled`] without a lock, on every event the work emits.
#[cfg(feature = "tracing")]
static LEVEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(frame::LEVEL_OFF);

/// In a worker: sends the events of its calls to the parent through
/// `outbox`, from now on. A global subscriber set already (by a program's
/// `init_with` setup) stays, and the events go to it instead.
#[cfg(feature = "tracing")]
pub(crate) fn forward(outbox: &Arc<Outbox>) {
    let forward = Forward {
        outbox: Arc::clone(outbox),
    };
    let _ = tracing::subscriber::set_global_default(forward);
}

/// The worker's subscriber: see the [module](self).
#[cfg(feature = "tracing")]
struct Forward {
    outbox: Arc<Outbox>,
}

#[cfg(feature = "tracing")]
thread_local! {
    /// Set while this thread sends an event: an event emitted meanwhile (by
    /// a field's `Debug`, say) is dropped rather than taking the outbox's
    /// lock again.
    static SENDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(feature = "tracing")]
fn level_number(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => frame::LEVEL_ERROR,
        tracing::Level::WARN => frame::LEVEL_WARN,
        tracing::Level::INFO => frame::LEVEL_INFO,
        tracing::Level::DEBUG => frame::LEVEL_DEBUG,
        _ => frame::LEVEL_TRACE,
    }
}

#[cfg(feature = "tracing")]
impl tracing::Subscriber for Forward {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // The level changes with each call: ask each time.
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        // Spans are not carried (see the module): disabled, they cost
        // nothing.
        metadata.is_event()
            && level_number(metadata.level()) <= LEVEL.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        // (Never called: every span is disabled.)
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        if SENDING.with(|sending| sending.replace(true)) {
            return;
        }
        // Cleared however this ends: a field's `Debug` may panic, and the
        // thread's later events must still go.
        struct Sent;
        impl Drop for Sent {
            fn drop(&mut self) {
                SENDING.with(|sending| sending.set(false));
            }
        }
        let _sent = Sent;
        // Rendered before the lock is taken: a field's `Debug` is the work's
        // code, and may be slow.
        let mut text = Render {
            message: Bounded::new(MAX_TEXT),
            fields: Bounded::new(MAX_TEXT),
        };
        event.record(&mut text);
        let metadata = event.metadata();
        let mut target = Bounded::new(MAX_TARGET);
        let _ = std::fmt::Write::write_str(&mut target, metadata.target());
        self.outbox.event(
            level_number(metadata.level()),
            &target.finish(),
            &text.message.finish(),
            &text.fields.finish(),
        );
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// An event's message and its other fields, as text.
#[cfg(feature = "tracing")]
struct Render {
    message: Bounded,
    fields: Bounded,
}

#[cfg(feature = "tracing")]
impl tracing::field::Visit for Render {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = self.message.write_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = if field.name() == "message" {
            write!(self.message, "{value:?}")
        } else {
            write!(self.fields, " {}={value:?}", field.name())
        };
    }
}

/// Text cut at `limit` bytes (at a character's boundary, marked by `…`): a
/// write past it fails, which ends a `Debug` early rather than rendering
/// text that would be dropped.
#[cfg(feature = "tracing")]
struct Bounded {
    text: String,
    limit: usize,
    cut: bool,
}

#[cfg(feature = "tracing")]
impl Bounded {
    fn new(limit: usize) -> Bounded {
        Bounded {
            text: String::new(),
            limit,
            cut: false,
        }
    }

    fn finish(mut self) -> String {
        if self.cut {
            self.text.push('…');
        }
        self.text
    }
}

#[cfg(feature = "tracing")]
impl std::fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.cut {
            return Err(std::fmt::Error);
        }
        // (Room for the `…`, three bytes.)
        let room = self.limit.saturating_sub(3).saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.text.push_str(&s[..end]);
        self.cut = true;
        Err(std::fmt::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_body(level: u8, target: &str, message: &str, fields: &str) -> Vec<u8> {
        postcard::to_allocvec(&(level, target, message, fields)).unwrap()
    }

    #[test]
    fn events_of_another_call_or_unreadable_are_out_of_step() {
        let mut events = CallEvents::new(3, "f call 1", 1, 42);
        let body = event_body(frame::LEVEL_INFO, "t", "m", "");
        assert!(events.take(EVENT, 3, &body).is_ok());
        assert!(matches!(
            events.take(EVENT, 4, &body),
            Err(ReadError::Malformed(_))
        ));
        for bad in [&b""[..], b"\x03", b"\x03\x05ab", &[0xff; 16]] {
            assert!(
                matches!(events.take(EVENT, 3, bad), Err(ReadError::Malformed(_))),
                "{bad:?}"
            );
        }
        let level_zero = event_body(frame::LEVEL_OFF, "t", "m", "");
        assert!(events.take(EVENT, 3, &level_zero).is_err());
        let level_six = event_body(6, "t", "m", "");
        assert!(events.take(EVENT, 3, &level_six).is_err());
        assert!(events.take(DROPPED, 3, b"").is_err());
    }

    #[test]
    fn events_past_the_bounds_are_the_worker_out_of_step() {
        let body = event_body(frame::LEVEL_TRACE, "t", "m", "");
        let mut events = CallEvents::new(1, "f call 1", 1, 42);
        for _ in 0..MAX_EVENTS {
            events.take(EVENT, 1, &body).unwrap();
        }
        assert!(events.take(EVENT, 1, &body).is_err(), "one event too many");
        // Text longer than a worker of ours sends.
        let long = event_body(frame::LEVEL_TRACE, "t", &"x".repeat(MAX_TEXT + 1), "");
        let mut events = CallEvents::new(1, "f call 1", 1, 42);
        assert!(events.take(EVENT, 1, &long).is_err());
        // One drop count, within what a call can reach; a second, or a
        // larger one, is out of step.
        let count = postcard::to_allocvec(&MAX_DROPPED).unwrap();
        let mut events = CallEvents::new(1, "f call 1", 1, 42);
        events.take(DROPPED, 1, &count).unwrap();
        assert_eq!(events.dropped, MAX_DROPPED);
        assert!(events.take(DROPPED, 1, &count).is_err());
        let over = postcard::to_allocvec(&(MAX_DROPPED + 1)).unwrap();
        let mut events = CallEvents::new(1, "f call 1", 1, 42);
        assert!(events.take(DROPPED, 1, &over).is_err());
        // Bytes bound: large events run out of bytes before of count.
        let mut events = CallEvents::new(1, "f call 1", 1, 42);
        let large = event_body(
            frame::LEVEL_INFO,
            "t",
            &"x".repeat(MAX_TEXT),
            &"y".repeat(MAX_TEXT),
        );
        let taken = (0..MAX_EVENTS)
            .take_while(|_| events.take(EVENT, 1, &large).is_ok())
            .count();
        assert!(taken < MAX_EVENTS, "{taken}");
        assert!(events.bytes <= MAX_EVENT_BYTES);
    }

    proptest::proptest! {
        /// Arbitrary bodies of event frames: an error or an event, never a
        /// panic.
        #[test]
        fn arbitrary_event_bodies_never_panic(
            kind in proptest::prop_oneof![proptest::strategy::Just(EVENT), proptest::strategy::Just(DROPPED)],
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            let mut events = CallEvents::new(1, "f call 1", 1, 42);
            let _ = events.take(kind, 1, &body);
            events.finish();
        }
    }

    /// A worker that drops more events than a `DROPPED` frame may say
    /// says the most, which its parent takes.
    #[cfg(feature = "tracing")]
    #[test]
    fn a_drop_count_past_the_most_is_sent_as_the_most() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let outbox = Outbox::new(writer);
        outbox.begin(1, frame::LEVEL_TRACE);
        {
            let mut state = outbox.state.lock();
            state.events = MAX_EVENTS;
            state.dropped = MAX_DROPPED - 1;
        }
        for _ in 0..3 {
            outbox.event(frame::LEVEL_INFO, "t", "m", "");
        }
        assert_eq!(outbox.state.lock().dropped, MAX_DROPPED);
        let mut reply = Vec::new();
        frame::begin(&mut reply, frame::DONE, 1);
        frame::finish(&mut reply, 1024).unwrap();
        outbox.reply(&reply, 1024).unwrap();

        let mut events = CallEvents::new(1, "f call 1", 1, 42);
        let mut buf = Vec::new();
        let (kind, _, _) =
            frame::decode_reply(&mut reader, &mut buf, 1024, &mut |kind, call, body| {
                events.take(kind, call, body)
            })
            .unwrap();
        assert_eq!(kind, frame::DONE);
        assert_eq!(events.dropped, MAX_DROPPED);
    }

    #[cfg(feature = "tracing")]
    #[test]
    fn bounded_text_is_cut_at_a_character_and_marked() {
        use std::fmt::Write;
        let mut text = Bounded::new(10);
        assert!(write!(text, "{}", "é".repeat(10)).is_err());
        let text = text.finish();
        assert_eq!(text, "ééé…");
        let mut short = Bounded::new(10);
        write!(short, "abc").unwrap();
        assert_eq!(short.finish(), "abc");
    }
}
