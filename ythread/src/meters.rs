//! The `metrics` feature's series of offloads, through the `metrics`
//! facade: the application installs the recorder (Prometheus, StatsD, ...)
//! and ythread records into whichever is installed.
//!
//! The series of worker processes and of `Remote` are recorded where those
//! happen (`processes/`, `remote/`), and described here, so that one call
//! describes them all.

use std::sync::Once;
use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};

use crate::job::Settled;

/// Offloads handed to a strategy, labelled `strategy` and `outcome`.
pub(crate) const OFFLOADS: &str = "ythread_offloads_total";
/// From the offload to the start of its work, labelled `strategy`.
pub(crate) const QUEUE_WAIT: &str = "ythread_offload_queue_wait_seconds";
/// From the start of the work to its end, labelled `strategy`.
pub(crate) const RUN_TIME: &str = "ythread_offload_run_seconds";

/// Gives the installed recorder the unit and meaning of each of ythread's
/// series (Prometheus prints them as `# HELP` and `# TYPE` lines).
///
/// ythread calls this itself at its first offload; call it after installing
/// a recorder later than that (or a second one), or to see every series
/// described before any offload.
///
/// ```
/// # #[cfg(feature = "metrics")] {
/// // With the recorder of your choice installed first:
/// ythread::describe_metrics();
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe_metrics() {
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

/// [`describe_metrics`], the first time only.
pub(crate) fn describe_once() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(describe_metrics);
}

/// Records one offload of `strategy` that ended as `settled`, whose work
/// waited and ran for `times` if it started.
pub(crate) fn offloaded(
    strategy: &'static str,
    settled: Settled,
    times: Option<(Duration, Duration)>,
) {
    counter!(OFFLOADS, "strategy" => strategy, "outcome" => settled.name()).increment(1);
    if let Some((wait, run)) = times {
        histogram!(QUEUE_WAIT, "strategy" => strategy).record(wait);
        histogram!(RUN_TIME, "strategy" => strategy).record(run);
    }
}
