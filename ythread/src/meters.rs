//! The `metrics` feature's series of offloads, through the `metrics`
//! facade: the application installs the recorder (Prometheus, StatsD, ...)
//! and ythread records into whichever is installed.
//!
//! The series of worker processes and of `Remote` are recorded where those
//! happen (`processes/meters.rs`, `remote/observe.rs`); [`describe_metrics`]
//! describes them all at once.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics::{Counter, Histogram, Unit, counter, describe_counter, describe_histogram, histogram};

use crate::error::{OffloadErrorKind, outcome_label};

/// Offloads handed to a strategy, labelled `strategy` and `outcome`.
pub(crate) const OFFLOADS: &str = "ythread_offloads_total";
/// From the offload to the start of its work, labelled `strategy`.
pub(crate) const QUEUE_WAIT: &str = "ythread_offload_queue_wait_seconds";
/// From the start of the work to its end, labelled `strategy`.
pub(crate) const RUN_TIME: &str = "ythread_offload_run_seconds";

/// Gives the installed recorder the unit and meaning of each of ythread's
/// series: offloads, worker processes and `Remote` (Prometheus prints them
/// as `# HELP` lines).
///
/// ythread calls this itself for each recorder it finds installed when a
/// `Processes`, `Remote` or `Worker` is built and when a thread first
/// offloads into it. Call it yourself to see every series described before
/// any is recorded, or after installing a recorder into which only
/// series other than offloads are recorded (a `Worker` that offloads
/// nothing itself, say).
///
/// ```
/// # #[cfg(feature = "metrics")] {
/// // With the recorder of your choice installed first:
/// ythread::describe_metrics();
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe_metrics() {
    crate::processes::meters::describe_series();
    #[cfg(feature = "remote")]
    crate::remote::observe::describe_series();
    describe_counter!(
        OFFLOADS,
        Unit::Count,
        "Offloads handed to a strategy, by strategy and outcome: ok, panicked, or the \
         failure's kind (not_run, not_portable, worker_died, deadline_exceeded, protocol, \
         unavailable, may_have_run, queue_full)"
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time from an offload to the start of its work, by strategy (for work run in \
         another process: to the moment it was sent)"
    );
    describe_histogram!(
        RUN_TIME,
        Unit::Seconds,
        "Time from the start of an offload's work to its end, by strategy (for work run \
         in another process: until its outcome was back)"
    );
}

/// [`describe_metrics`] to the recorder installed now (the thread's local
/// one, else the global one), unless it was the last described: a recorder
/// installed after the first offloads gets the descriptions too. Off the
/// hot path: called when a `Processes`, `Remote` or `Worker` is built, and
/// when a thread first records an offload into a recorder.
pub(crate) fn describe_to_current() {
    describe_to(current_recorder());
}

/// The address of the recorder installed now, which tells it from another.
fn current_recorder() -> usize {
    metrics::with_recorder(|recorder| std::ptr::from_ref(recorder).cast::<()>() as usize)
}

/// [`describe_to_current`], given the current recorder's address.
fn describe_to(recorder: usize) {
    static DESCRIBED: AtomicUsize = AtomicUsize::new(0);
    if DESCRIBED.swap(recorder, Ordering::Relaxed) != recorder {
        describe_metrics();
    }
}

/// Records one offload of `strategy` that ended as `settled`, whose work
/// waited and ran for `times` if it started.
pub(crate) fn offloaded(
    strategy: &'static str,
    settled: Option<OffloadErrorKind>,
    times: Option<(Duration, Duration)>,
) {
    let outcome = outcome_label(settled);
    let record = |series: &Series| {
        series.offloads.increment(1);
        if let Some((wait, run)) = times {
            series.queue_wait.record(wait);
            series.run_time.record(run);
        }
    };
    let kept = HANDLES.try_with(|handles| record(handles.borrow_mut().series(strategy, outcome)));
    if kept.is_err() {
        // A handler run by a thread-local's destructor, after this one's:
        // handles made for the once.
        record(&Series::new(strategy, outcome));
    }
}

thread_local! {
    /// The handles of the series this thread recorded into, so that an
    /// offload neither builds a key (which allocates) nor has the recorder
    /// look it up: the handles of `metrics` are made for keeping.
    static HANDLES: RefCell<Handles> = const {
        RefCell::new(Handles { recorder: 0, series: Vec::new() })
    };
}

/// The handles of one thread, for one recorder.
struct Handles {
    /// The address of the recorder they came from: a local recorder
    /// (`metrics::with_local_recorder`) or a new global one needs handles
    /// of its own.
    recorder: usize,
    series: Vec<Series>,
}

/// The handles of one strategy and outcome.
struct Series {
    strategy: &'static str,
    outcome: &'static str,
    offloads: Counter,
    queue_wait: Histogram,
    run_time: Histogram,
}

/// How many series a thread keeps handles for: strategies times outcomes,
/// a handful in practice. Past it, the oldest kept is let go.
const MAX_KEPT: usize = 64;

impl Series {
    fn new(strategy: &'static str, outcome: &'static str) -> Self {
        Series {
            strategy,
            outcome,
            offloads: counter!(OFFLOADS, "strategy" => strategy, "outcome" => outcome),
            queue_wait: histogram!(QUEUE_WAIT, "strategy" => strategy),
            run_time: histogram!(RUN_TIME, "strategy" => strategy),
        }
    }
}

impl Handles {
    fn series(&mut self, strategy: &'static str, outcome: &'static str) -> &Series {
        let recorder = current_recorder();
        if recorder != self.recorder {
            self.series.clear();
            self.recorder = recorder;
            describe_to(recorder);
        }
        let found = self
            .series
            .iter()
            .position(|series| series.strategy == strategy && series.outcome == outcome);
        let index = match found {
            Some(index) => index,
            None => {
                if self.series.len() == MAX_KEPT {
                    self.series.remove(0);
                }
                self.series.push(Series::new(strategy, outcome));
                self.series.len() - 1
            }
        };
        &self.series[index]
    }
}
