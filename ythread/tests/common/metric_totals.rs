//! What a `metrics_util` `DebuggingRecorder` was given, added up, for the
//! `metrics` feature's tests.
//!
//! A snapshot of that recorder takes each value recorded since the last
//! one and resets it (gauges included: a gauge moved by steps is the sum of
//! what every snapshot took), so every read here goes through one running
//! total per series.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// A series: its name and labels, sorted.
type Series = (String, Vec<(String, String)>);

/// The totals of one recorder.
pub struct Totals {
    snapshotter: Snapshotter,
    read: Mutex<Read>,
}

#[derive(Default)]
struct Read {
    /// Counters and gauges, summed.
    sums: HashMap<Series, f64>,
    /// Every value a histogram was given, in order.
    histograms: HashMap<Series, Vec<f64>>,
    /// Each metric's description, by name.
    descriptions: HashMap<String, String>,
}

impl Totals {
    /// The totals of the recorder `snapshotter` belongs to.
    pub fn new(snapshotter: Snapshotter) -> Self {
        Totals {
            snapshotter,
            read: Mutex::default(),
        }
    }

    /// The totals of a `DebuggingRecorder` installed as this binary's
    /// global recorder by the first call.
    pub fn global() -> &'static Totals {
        static GLOBAL: OnceLock<Totals> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            recorder
                .install()
                .expect("no other recorder in this test binary");
            Totals::new(snapshotter)
        })
    }

    /// The sum of counter or gauge `name` with exactly `labels` (in any
    /// order); 0 if never recorded.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.take()
            .sums
            .get(&series(name, labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// The values histogram `name` with exactly `labels` was given.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.take()
            .histograms
            .get(&series(name, labels))
            .cloned()
            .unwrap_or_default()
    }

    /// The recorder's description of `name`, if it was given one.
    pub fn description(&self, name: &str) -> Option<String> {
        self.take().descriptions.get(name).cloned()
    }

    /// Adds what the recorder was given since the last read.
    fn take(&self) -> MutexGuard<'_, Read> {
        // A test's failed assertion made while holding the lock must not
        // fail the others on its poison.
        let mut read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, _, description, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            if let Some(description) = description {
                read.descriptions
                    .insert(key.name().to_owned(), description.to_string());
            }
            let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            let series = series(key.name(), &labels);
            match value {
                DebugValue::Counter(n) => *read.sums.entry(series).or_default() += n as f64,
                DebugValue::Gauge(x) => *read.sums.entry(series).or_default() += x.into_inner(),
                DebugValue::Histogram(values) => read
                    .histograms
                    .entry(series)
                    .or_default()
                    .extend(values.into_iter().map(|v| v.into_inner())),
            }
        }
        read
    }
}

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|&(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}
