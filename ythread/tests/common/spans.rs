//! A `tracing` subscriber for tests that keeps what it is given: every span
//! with its fields (as recorded, also later) and its parent, every event
//! with its fields and the spans it happened in, innermost first.
//!
//! It is the global default of the test binary that installs it (a pool's or
//! a worker's thread must see it too), so tests running at once share it:
//! each finds its own records by a field value of its own.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

thread_local! {
    static HIDE_YTHREAD_SPANS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with ythread's own spans disabled on this thread, as a
/// subscriber filtering them out would (`ythread=info`).
pub fn hide_ythread_spans<T>(f: impl FnOnce() -> T) -> T {
    HIDE_YTHREAD_SPANS.set(true);
    let value = f();
    HIDE_YTHREAD_SPANS.set(false);
    value
}

/// A span as recorded.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub name: &'static str,
    /// Its id as `tracing` gave it (reused once a span closes: records
    /// are told apart by their index).
    pub id: u64,
    pub target: String,
    pub fields: BTreeMap<String, String>,
    /// The parent's index in [`Records::spans`].
    pub parent: Option<usize>,
}

/// An event as recorded.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub level: Level,
    pub target: String,
    pub fields: BTreeMap<String, String>,
    /// The spans it happened in, innermost first, as indexes in
    /// [`Records::spans`].
    pub scope: Vec<usize>,
}

/// Everything recorded so far.
#[derive(Debug, Default, Clone)]
pub struct Records {
    pub spans: Vec<SpanRecord>,
    pub events: Vec<EventRecord>,
}

impl Records {
    /// The events whose `message` contains `text`.
    pub fn events_saying(&self, text: &str) -> Vec<&EventRecord> {
        self.events
            .iter()
            .filter(|event| {
                event
                    .fields
                    .get("message")
                    .is_some_and(|m| m.contains(text))
            })
            .collect()
    }

    /// The names of the spans an event happened in, innermost first.
    pub fn scope_names(&self, event: &EventRecord) -> Vec<&'static str> {
        event.scope.iter().map(|&i| self.spans[i].name).collect()
    }

    /// The spans an event happened in, innermost first.
    pub fn scope(&self, event: &EventRecord) -> Vec<&SpanRecord> {
        event.scope.iter().map(|&i| &self.spans[i]).collect()
    }

    /// The spans named `name` whose field `field` is `value`.
    pub fn spans_with(&self, name: &str, field: &str, value: &str) -> Vec<&SpanRecord> {
        self.spans
            .iter()
            .filter(|span| span.name == name && span.fields.get(field).is_some_and(|v| v == value))
            .collect()
    }

    /// Whether span `index` is span `ancestor` or inside it.
    pub fn is_within(&self, mut index: usize, ancestor: usize) -> bool {
        loop {
            if index == ancestor {
                return true;
            }
            match self.spans[index].parent {
                Some(parent) => index = parent,
                None => return false,
            }
        }
    }

    /// The ancestry of span `index`, itself first.
    pub fn ancestry(&self, mut index: usize) -> Vec<&SpanRecord> {
        let mut chain = vec![&self.spans[index]];
        while let Some(parent) = self.spans[index].parent {
            chain.push(&self.spans[parent]);
            index = parent;
        }
        chain
    }
}

/// Runs `body` with a recorder of its own as this thread's subscriber, and
/// returns what it recorded: for work whose events all happen on this
/// thread (a worker process's come back on the thread waiting for it).
pub fn observed<T>(body: impl FnOnce() -> T) -> (T, Records) {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let value = tracing::subscriber::with_default(subscriber, body);
    (value, recorder.records())
}

/// An event as assertions read it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub level: Level,
    pub target: String,
    pub message: String,
    /// Its fields but the message.
    pub fields: BTreeMap<String, String>,
    /// Its spans, outermost first: name and fields.
    pub spans: Vec<(String, BTreeMap<String, String>)>,
}

impl Records {
    /// Every event, as assertions read it.
    pub fn seen(&self) -> Vec<Seen> {
        self.events
            .iter()
            .map(|event| {
                let mut fields = event.fields.clone();
                Seen {
                    level: event.level,
                    target: event.target.clone(),
                    message: fields.remove("message").unwrap_or_default(),
                    fields,
                    spans: self
                        .scope(event)
                        .into_iter()
                        .rev()
                        .map(|span| (span.name.to_owned(), span.fields.clone()))
                        .collect(),
                }
            })
            .collect()
    }
}

/// The recorder installed as this binary's global subscriber, at `DEBUG`
/// and above (the level of ythread's offload spans).
pub fn recorder() -> &'static Recorder {
    static RECORDER: OnceLock<Recorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = Recorder::default();
        let subscriber = tracing_subscriber::registry().with(recorder.clone());
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        recorder
    })
}

/// A layer that records spans and events (see the module's documentation).
#[derive(Clone, Default)]
pub struct Recorder {
    records: Arc<Mutex<Records>>,
}

impl Recorder {
    /// A copy of what was recorded so far.
    pub fn records(&self) -> Records {
        self.records.lock().unwrap().clone()
    }
}

/// The index of a span's record, kept in the registry's extensions.
struct Index(usize);

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // Asked each time: `hide_ythread_spans` changes it per thread.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        let hidden = metadata.is_span()
            && metadata.target().starts_with("ythread")
            && HIDE_YTHREAD_SPANS.get();
        *metadata.level() <= Level::DEBUG && !hidden
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, cx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let span = cx.span(id).expect("a new span is in the registry");
        let parent = span
            .parent()
            .and_then(|parent| parent.extensions().get::<Index>().map(|index| index.0));
        let mut records = self.records.lock().unwrap();
        records.spans.push(SpanRecord {
            name: attrs.metadata().name(),
            id: id.into_u64(),
            target: attrs.metadata().target().to_owned(),
            fields: fields.0,
            parent,
        });
        span.extensions_mut().insert(Index(records.spans.len() - 1));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, cx: Context<'_, S>) {
        let Some(span) = cx.span(id) else { return };
        let Some(index) = span.extensions().get::<Index>().map(|index| index.0) else {
            return;
        };
        let mut fields = Fields::default();
        values.record(&mut fields);
        self.records.lock().unwrap().spans[index]
            .fields
            .extend(fields.0);
    }

    fn on_event(&self, event: &Event<'_>, cx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let scope = cx
            .event_scope(event)
            .map(|scope| {
                scope
                    .filter_map(|span| span.extensions().get::<Index>().map(|index| index.0))
                    .collect()
            })
            .unwrap_or_default();
        self.records.lock().unwrap().events.push(EventRecord {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            fields: fields.0,
            scope,
        });
    }
}

/// Fields as text.
#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}
