//! What worker processes report through the `metrics` facade (feature
//! `metrics`; without it, each of these does nothing):
//!
//! - `ythread_worker_restarts_total{reason}`, a counter: workers replaced
//!   after they died or were killed, by [`Restart`];
//! - `ythread_worker_processes`, a gauge: live worker processes;
//! - `ythread_worker_processes_busy`, a gauge: worker processes running a
//!   call now;
//! - `ythread_worker_events_dropped_total`, a counter: `tracing` events of
//!   workers dropped over the bounds of a call (`events.rs`).
//!
//! Gauges go up and down by one, so that several `Processes` in a program
//! add up.

/// Why a worker was replaced: the `reason` of
/// `ythread_worker_restarts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Restart {
    /// It died running a call, or taking one in (a crash, an abort, a
    /// signal, an exit).
    Crashed,
    /// It died while idle: found dead by the supervisor, or when a call was
    /// sent to it.
    DiedIdle,
    /// It ran a call past its deadline, and was killed.
    Deadline,
    /// It broke the protocol (a malformed or unexpected frame, its channel
    /// closed while it lived), and was killed.
    OutOfStep,
    /// The call it ran unwound in this process (a panic while the worker
    /// was out), which killed it.
    Abandoned,
}

impl Restart {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn as_str(self) -> &'static str {
        match self {
            Restart::Crashed => "crashed",
            Restart::DiedIdle => "died_idle",
            Restart::Deadline => "deadline",
            Restart::OutOfStep => "out_of_step",
            Restart::Abandoned => "abandoned",
        }
    }
}

/// This module's part of [`describe_metrics`](crate::describe_metrics).
#[cfg(feature = "metrics")]
pub(crate) fn describe_series() {
    metrics::describe_counter!(
        "ythread_worker_restarts_total",
        "Worker processes replaced after they died or were killed, by reason"
    );
    metrics::describe_gauge!("ythread_worker_processes", "Live worker processes");
    metrics::describe_gauge!(
        "ythread_worker_processes_busy",
        "Worker processes running a call"
    );
    metrics::describe_counter!(
        "ythread_worker_events_dropped_total",
        "tracing events of worker processes dropped over the bounds of a call"
    );
}

/// A worker was replaced, for `reason`.
pub(crate) fn restarted(reason: Restart) {
    #[cfg(feature = "metrics")]
    metrics::counter!("ythread_worker_restarts_total", "reason" => reason.as_str()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = reason;
}

/// A worker process went live (`1`) or is gone (`-1`).
pub(crate) fn live(change: i8) {
    #[cfg(feature = "metrics")]
    metrics::gauge!("ythread_worker_processes").increment(f64::from(change));
    #[cfg(not(feature = "metrics"))]
    let _ = change;
}

/// `dropped` events of a call's were dropped.
pub(crate) fn events_dropped(dropped: u64) {
    #[cfg(feature = "metrics")]
    metrics::counter!("ythread_worker_events_dropped_total").increment(dropped);
    #[cfg(not(feature = "metrics"))]
    let _ = dropped;
}

/// A worker process runs a call while this lives.
#[derive(Debug)]
pub(crate) struct Busy(());

impl Busy {
    pub(crate) fn new() -> Busy {
        #[cfg(feature = "metrics")]
        metrics::gauge!("ythread_worker_processes_busy").increment(1.0);
        Busy(())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        metrics::gauge!("ythread_worker_processes_busy").decrement(1.0);
    }
}
