//! What the `tracing` and `metrics` features see of each offload: the
//! driver (`handler.rs`) hands every job to its strategy watched by a
//! [`Probe`], which times it, names it and reports its outcome.
//!
//! One [`Probe`] lives on the driving thread's stack for one `offload!`. The
//! job carries a reference to it to whichever thread runs the work, which
//! notes when the work started and ended there and enters the offload's span
//! for it (the span is `Sync`, the times are atomics); the driver reads them
//! once the strategy's `apply` has returned, which is after the work ended.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::OffloadErrorKind;

thread_local! {
    /// When the offload this thread drives left for another process, as
    /// [`sent`] noted it.
    static SENT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Notes that the call of the offload this thread is driving has just been
/// sent to a worker process or another machine: its queue wait ends here,
/// its run time starts. For strategies that do not run the work on a thread
/// of this process (where `Job::run` notes it). The first note counts.
pub(crate) fn sent() {
    if SENT.get().is_none() {
        SENT.set(Some(Instant::now()));
    }
}

/// One offload being observed.
///
/// It is `Sync` (a `Job` that refers to it is `Send`, and goes to a pool's
/// thread): see `_PROBE_IS_SYNC`.
pub(crate) struct Probe {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    strategy: &'static str,
    /// When the offload was made; `None` when nobody wants its times (a
    /// build without `metrics` whose subscriber leaves the span out): a
    /// clock read costs tens of nanoseconds, a third of an `Inline`
    /// offload's, and an offload would read it three times.
    offloaded: Option<Instant>,
    /// When the work started running, in nanoseconds after `offloaded`,
    /// plus one (zero: not started).
    started: AtomicU64,
    /// When it ended, likewise.
    ended: AtomicU64,
    /// The span the work runs in: the offload's; when a subscriber does not
    /// want it, the handler's, so that events of the work keep the request
    /// they belong to on any thread.
    #[cfg(feature = "tracing")]
    span: tracing::Span,
    /// Whether `span` is the offload's own, which the outcome is recorded
    /// on (never on the handler's: its fields are the user's).
    #[cfg(feature = "tracing")]
    own: bool,
}

impl Probe {
    /// Starts watching an offload of `function` by `strategy`.
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    pub(crate) fn start(strategy: &'static str, function: &'static str) -> Self {
        SENT.set(None);
        #[cfg(feature = "tracing")]
        let span = tracing::debug_span!(
            target: "ythread",
            "offload",
            function,
            strategy,
            queue_wait_us = tracing::field::Empty,
            run_us = tracing::field::Empty,
            outcome = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        #[cfg(feature = "tracing")]
        let own = !span.is_disabled();
        #[cfg(not(feature = "tracing"))]
        let own = false;
        Probe {
            strategy,
            offloaded: (cfg!(feature = "metrics") || own).then(Instant::now),
            started: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            #[cfg(feature = "tracing")]
            own,
            #[cfg(feature = "tracing")]
            span: if own { span } else { tracing::Span::current() },
        }
    }

    /// Hands the job to its strategy (`apply`), on the driving thread,
    /// inside the offload's span: what a strategy that sends the call
    /// elsewhere does is inside it too.
    pub(crate) fn handing_over(&self, apply: impl FnOnce()) {
        #[cfg(feature = "tracing")]
        let _entered = self.span.enter();
        apply();
    }

    /// Runs `work` (the job's) on this thread inside the offload's span,
    /// noting when it started and ended.
    #[inline]
    pub(crate) fn running(&self, work: impl FnOnce()) {
        self.mark(&self.started);
        {
            #[cfg(feature = "tracing")]
            let _entered = self.span.enter();
            work();
        }
        self.mark(&self.ended);
    }

    /// Notes now in `at` (a job runs once: a plain store).
    fn mark(&self, at: &AtomicU64) {
        if let Some(offloaded) = self.offloaded {
            at.store(since(offloaded, Instant::now()), Ordering::Relaxed);
        }
    }

    /// The queue wait and the run time: from the offload to the start, and
    /// from the start to the end (or, for work run elsewhere, to now, when
    /// its outcome is back). Work that never started has neither.
    fn times(&self) -> Option<(Duration, Duration)> {
        let offloaded = self.offloaded?;
        let from_offload = |nanos: u64| Duration::from_nanos(nanos - 1);
        // `apply` has returned, so the work's thread is done with the
        // probe, and that return happened after the thread's last write.
        let started = match self.started.load(Ordering::Relaxed) {
            0 => return None,
            nanos => from_offload(nanos),
        };
        let ended = match self.ended.load(Ordering::Relaxed) {
            0 => offloaded.elapsed(),
            nanos => from_offload(nanos),
        };
        Some((started, ended.saturating_sub(started)))
    }

    /// Reports the offload, which ended as `settled`.
    pub(crate) fn finish(&self, settled: Option<OffloadErrorKind>) {
        // Work sent to another process started when it was sent, unless
        // it ran here after all.
        if let (Some(at), Some(offloaded)) = (SENT.take(), self.offloaded)
            && self.started.load(Ordering::Relaxed) == 0
        {
            self.started.store(since(offloaded, at), Ordering::Relaxed);
        }
        let times = self.times();
        #[cfg(feature = "tracing")]
        if self.own {
            if let Some((wait, run)) = times {
                self.span.record("queue_wait_us", micros(wait));
                self.span.record("run_us", micros(run));
            }
            self.span
                .record("outcome", crate::error::outcome_label(settled));
        }
        #[cfg(feature = "metrics")]
        crate::meters::offloaded(self.strategy, settled, times);
        #[cfg(not(feature = "metrics"))]
        let _ = times;
    }
}

/// `now` as kept in a mark: nanoseconds since `offloaded`, plus one (0 is
/// "not marked").
fn since(offloaded: Instant, now: Instant) -> u64 {
    let nanos = now.saturating_duration_since(offloaded).as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
}

#[cfg(feature = "tracing")]
fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Pool's `unsafe impl Send for Task` relies on it.
const _PROBE_IS_SYNC: () = {
    const fn is_sync<T: Sync>() {}
    is_sync::<Probe>();
};
