//! The unit of offloaded work: a borrowed, type-erased, run-once closure
//! together with the slot that receives its result.

use std::any::Any;
use std::fmt;
use std::mem;
use std::panic::Location;
use std::panic::{self, AssertUnwindSafe};
use std::ptr::NonNull;

#[cfg(any(feature = "tracing", feature = "metrics"))]
use crate::error::OffloadErrorKind;
use crate::error::{HandlerDropped, OffloadError};
#[cfg(any(feature = "tracing", feature = "metrics"))]
use crate::observe::Probe;
use crate::offloadable::{DepthLimit, Registration};
use crate::portable::{FunctionId, NotPortable, Portability, WireCall};

/// One piece of CPU work handed to an [`Apply`](crate::Apply) strategy.
///
/// A `Job` is what an `offload!(f, a, b)` point yields: the call `f(a, b)`,
/// ready to run, and the place its result goes. The strategy decides *where*
/// the job runs by deciding which thread calls [`Job::run`]; the handler that
/// offloaded it stays suspended until the strategy's `apply` returns.
///
/// A `Job` borrows from the suspended handler's stack (its arguments may even
/// borrow the handler's locals), so it cannot outlive the `apply` call that
/// received it. It is `Send`, so it can be run on another thread that is
/// joined before `apply` returns: a scoped thread, `rayon::ThreadPool::install`,
/// or [`Pool`](crate::Pool).
///
/// # Panics
///
/// [`Job::run`] never panics: a panic inside the work is caught and carried
/// back to the handler, which resumes unwinding at its `offload!` point with
/// the original payload. A strategy that drops a `Job` without running it
/// makes the handler panic at its `offload!` point.
///
/// # Example
///
/// ```
/// use ythread::{Yieldable, apply_fn, offload, yieldable};
///
/// fn square(x: u64) -> u64 { x * x }
///
/// #[yieldable]
/// fn handler(x: u64) -> u64 {
///     offload!(square, x) + 1
/// }
///
/// // A strategy can be a closure taking a `Job` (through `apply_fn`); this
/// // one runs the work on a scoped thread of its own.
/// let on_a_scoped_thread = apply_fn(|job| {
///     std::thread::scope(|s| {
///         s.spawn(move || job.run());
///     });
/// });
/// assert_eq!(handler(7).run_with(&on_a_scoped_thread), 50);
/// ```
///
/// A job cannot escape the `apply` call, for example to a thread that is not
/// joined before it returns:
///
/// ```compile_fail,E0521
/// use ythread::apply_fn;
///
/// let detached = apply_fn(|job| {
///     std::thread::spawn(move || job.run()); // error: borrowed data escapes
/// });
/// # let _ = detached;
/// ```
pub struct Job<'a> {
    /// The work and its result slot, living in the suspended `offload` frame
    /// on the handler's coroutine stack.
    work: &'a mut (dyn RunOnce + Send + 'a),
    /// Where the thread that runs the work notes it, for the `tracing` and
    /// `metrics` features (see `observe.rs`).
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    probe: Option<&'a Probe>,
}

impl<'a> Job<'a> {
    /// Runs the work on the current thread and stores its result (or its
    /// panic) for the handler. Consumes the job: work runs at most once.
    #[inline]
    pub fn run(self) {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        if let Some(probe) = self.probe {
            return probe.running(|| self.work.run_once());
        }
        self.work.run_once();
    }

    /// This job, lent to a strategy with `probe` watching it; this one
    /// stays with the driver, to read the outcome once the strategy is done.
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    pub(crate) fn observed_by<'b>(&'b mut self, probe: &'b Probe) -> Job<'b> {
        Job {
            work: &mut *self.work,
            probe: Some(probe),
        }
    }

    /// How the job ended, once its strategy is done with it.
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    pub(crate) fn settled(&self) -> Option<OffloadErrorKind> {
        self.work.settled()
    }

    /// The function the work calls, by its path (`my_app::digest`), or the
    /// closure's type name.
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    pub(crate) fn function(&self) -> &'static str {
        self.work.function()
    }

    /// Gives the work up with `error`: the handler's `offload!` point panics
    /// with it, its `try_offload!` returns it.
    pub(crate) fn fail(&mut self, error: OffloadError) {
        self.work.fail(error);
    }

    /// The job as a call that can be sent to another process, with the
    /// function it calls.
    pub(crate) fn wire(&mut self) -> Result<(FunctionId, &mut dyn WireCall), NotPortable> {
        self.work.wire()
    }

    /// Erases the job's lifetime, to send it where the borrow checker cannot
    /// follow (a pool's queue); turning it back is `unsafe`
    /// ([`ErasedJob::as_job`]).
    #[inline]
    pub(crate) fn erase(self) -> ErasedJob {
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        let probe = self.probe.map(NonNull::from);
        // SAFETY: `as_job`, the only way back, requires that the work is
        // still alive and unaliased.
        #[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(unused_mut))]
        let mut erased = unsafe { ErasedJob::erase(self.work) };
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        {
            erased.probe = probe;
        }
        erased
    }
}

impl fmt::Debug for Job<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

/// Object-safe face of a work slot ([`WorkSlot`], [`CallSlot`]): what a
/// strategy can do with the job it was handed.
pub(crate) trait RunOnce {
    /// Runs the stored work here, once.
    fn run_once(&mut self);
    /// Marks the slot [`WorkSlot::Dropped`], dropping the work or its result.
    fn mark_dropped(&mut self);
    /// Gives the work up with `error` (dropping it unrun), for a strategy
    /// that could not run it where it runs work. A dropped or finished slot
    /// is left as it is.
    fn fail(&mut self, error: OffloadError);
    /// The work as a call that can cross to another process, with the
    /// function it calls, or why it cannot.
    fn wire(&mut self) -> Result<(FunctionId, &mut dyn WireCall), NotPortable>;
    /// How the work ended (or that it did not run).
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    fn settled(&self) -> Option<OffloadErrorKind>;
    /// The function the work calls, or the closure's type name.
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    fn function(&self) -> &'static str;
}

/// Offloaded work that can be run by value: a closure, or a function and its
/// arguments ([`Call`]).
pub(crate) trait Work {
    type Output;
    fn call(self) -> Self::Output;
}

impl<F: FnOnce() -> R, R> Work for F {
    type Output = R;
    #[inline]
    fn call(self) -> R {
        self()
    }
}

/// `offload!(f, a, b)`: the arguments, kept apart from the call so that a
/// strategy can also send them to another process.
pub(crate) struct Call<A, C> {
    pub(crate) args: A,
    pub(crate) call: C,
}

impl<A, C: FnOnce(A) -> R, R> Work for Call<A, C> {
    type Output = R;
    #[inline]
    fn call(self) -> R {
        (self.call)(self.args)
    }
}

/// The result of a piece of work: its value, or the payload it panicked with.
type Outcome<R> = Result<R, Box<dyn Any + Send + 'static>>;

/// Lives on the handler's coroutine stack for the duration of one `offload!`.
pub(crate) enum WorkSlot<W, R> {
    /// Not run yet.
    Pending(W),
    /// Run; holds the value or the panic payload.
    Done(Outcome<R>),
    /// Transient state while the closure runs.
    Running,
    /// The strategy could not run the work (a worker process died, a
    /// deadline passed, ...). Boxed: a slot is moved on every `offload!`,
    /// and this rare variant would otherwise make it twice as large.
    Failed(Box<OffloadError>),
    /// The handler is being dropped while suspended here: taking the result
    /// unwinds with [`HandlerDropped`]. The driver marks the slot instead of
    /// passing a value back through the coroutine, so that the common path
    /// (one match on the slot) costs nothing more.
    Dropped,
}

impl<W: Work<Output = R>, R> RunOnce for WorkSlot<W, R> {
    #[inline]
    fn run_once(&mut self) {
        if let WorkSlot::Pending(work) = mem::replace(self, WorkSlot::Running) {
            // The payload is handed back to the handler, which resumes the
            // unwind; this is the same contract as `JoinHandle::join`.
            *self = WorkSlot::Done(panic::catch_unwind(AssertUnwindSafe(|| work.call())));
        }
    }

    fn mark_dropped(&mut self) {
        *self = WorkSlot::Dropped;
    }

    fn fail(&mut self, error: OffloadError) {
        self.give_up(error);
    }

    fn wire(&mut self) -> Result<(FunctionId, &mut dyn WireCall), NotPortable> {
        Err(NotPortable::closure(std::any::type_name::<W>()))
    }

    #[cfg(any(feature = "tracing", feature = "metrics"))]
    fn settled(&self) -> Option<OffloadErrorKind> {
        match self {
            WorkSlot::Done(Ok(_)) => None,
            WorkSlot::Done(Err(_)) => Some(OffloadErrorKind::Panicked),
            WorkSlot::Failed(error) => Some(error.kind()),
            WorkSlot::Pending(_) | WorkSlot::Running | WorkSlot::Dropped => {
                Some(OffloadErrorKind::NotRun)
            }
        }
    }

    #[cfg(any(feature = "tracing", feature = "metrics"))]
    fn function(&self) -> &'static str {
        std::any::type_name::<W>()
    }
}

impl<W, R> WorkSlot<W, R> {
    /// Drops pending work and keeps `error` for the handler; a finished or
    /// dropped slot is left as it is.
    fn give_up(&mut self, error: OffloadError) {
        if let WorkSlot::Pending(_) | WorkSlot::Running = self {
            *self = WorkSlot::Failed(Box::new(error));
        }
    }

    /// Returns the work's value, resumes its panic, or panics if the strategy
    /// did not run it: what `offload!` evaluates to. `at` is the `offload!`
    /// point, named when the failure is the strategy's.
    #[inline]
    pub(crate) fn into_result(self, at: &'static Location<'static>) -> R {
        match self {
            WorkSlot::Done(Ok(value)) => value,
            WorkSlot::Done(Err(payload)) => panic::resume_unwind(payload),
            WorkSlot::Pending(_) | WorkSlot::Running => OffloadError::not_run().resume_unwind(),
            WorkSlot::Failed(error) => error.raise_at(at),
            WorkSlot::Dropped => unwind_dropped_handler(),
        }
    }

    /// Returns the work's value, or why there is none: what `try_offload!`
    /// evaluates to.
    #[inline]
    pub(crate) fn into_outcome(self) -> Result<R, OffloadError> {
        match self {
            WorkSlot::Done(Ok(value)) => Ok(value),
            WorkSlot::Done(Err(payload)) => Err(OffloadError::panicked(payload)),
            WorkSlot::Pending(_) | WorkSlot::Running => Err(OffloadError::not_run()),
            WorkSlot::Failed(error) => Err(*error),
            WorkSlot::Dropped => unwind_dropped_handler(),
        }
    }
}

impl<A, C, R> CallSlot<A, C, R> {
    /// Decodes the call's result with `registration`'s decoder, which must be
    /// its function's.
    fn decode(
        &self,
        registration: &Registration,
        result: &[u8],
        depth: DepthLimit,
    ) -> Result<R, String> {
        let Ok(function) = (self.wire)() else {
            return Err("the call cannot cross processes".into());
        };
        if (registration.key)() != function.id {
            return Err(format!(
                "its result was decoded as `{}`'s",
                registration.name
            ));
        }
        let value = (registration.decode_result)(result, depth.levels).map_err(|error| {
            format!(
                "its result, sent by the worker, could not be decoded here: {}",
                error.explain(depth.setting)
            )
        })?;
        if (*value).type_id() != typeid::of::<R>() {
            return Err("its result is not of the type the call expects".into());
        }
        // SAFETY: the box holds a value whose type has the type id of `R`
        // with lifetimes erased. It was made by the decoder of
        // `registration`, the function registered under the type name of this
        // call's function (checked above; the table of offloadable functions
        // refuses a name registered twice), whose result type is `'static`
        // (`#[offloadable]` requires it). So `R`, the type this call's
        // function returns, is that type exactly.
        // Casting the box's pointer from the trait object to `R` keeps its
        // allocation and layout.
        Ok(unsafe { *Box::from_raw(Box::into_raw(value).cast::<R>()) })
    }
}

/// The slot of an `offload!(f, args...)` point: a [`WorkSlot`] plus, when
/// `f` is a function whose arguments and result are serde types, how to send
/// the call to another process.
pub(crate) struct CallSlot<A, C, R> {
    pub(crate) slot: WorkSlot<Call<A, C>, R>,
    pub(crate) wire: Portability,
}

impl<A, C: FnOnce(A) -> R, R> RunOnce for CallSlot<A, C, R> {
    #[inline]
    fn run_once(&mut self) {
        self.slot.run_once();
    }

    fn mark_dropped(&mut self) {
        self.slot.mark_dropped();
    }

    fn fail(&mut self, error: OffloadError) {
        self.slot.fail(error);
    }

    fn wire(&mut self) -> Result<(FunctionId, &mut dyn WireCall), NotPortable> {
        match ((self.wire)(), &self.slot) {
            (Ok(function), WorkSlot::Pending(_)) => Ok((function, self)),
            (Err(not_portable), _) => Err(not_portable),
            // Already run, failed or dropped: nothing left to send.
            (Ok(function), _) => Err(NotPortable::new(
                function.name,
                "the work is no longer pending",
            )),
        }
    }

    #[cfg(any(feature = "tracing", feature = "metrics"))]
    fn settled(&self) -> Option<OffloadErrorKind> {
        self.slot.settled()
    }

    #[cfg(any(feature = "tracing", feature = "metrics"))]
    fn function(&self) -> &'static str {
        match (self.wire)() {
            Ok(function) => function.name,
            Err(not_portable) => not_portable.function,
        }
    }
}

impl<A, C, R> WireCall for CallSlot<A, C, R> {
    fn encode_args(
        &self,
        registration: &Registration,
        out: &mut Vec<u8>,
        depth: DepthLimit,
    ) -> Result<(), OffloadError> {
        let function = registration.name;
        let WorkSlot::Pending(call) = &self.slot else {
            return Err(OffloadError::protocol(
                function,
                "the call is no longer pending",
            ));
        };
        // The arguments' `Serialize` is the user's and may panic: that is
        // this call's failure, not the driving thread's.
        let encoded = panic::catch_unwind(AssertUnwindSafe(|| {
            registration
                .encode_args
                .encode(&call.args, out, depth.levels)
        }));
        match encoded {
            Ok(Some(Ok(()))) => Ok(()),
            Ok(Some(Err(error))) => Err(OffloadError::protocol(
                function,
                format_args!(
                    "its arguments could not be encoded here, so it was not sent: {}",
                    error.explain(depth.setting)
                ),
            )),
            Ok(None) => Err(OffloadError::protocol(
                function,
                format_args!(
                    "its arguments are not of the parameter types of `{}`, registered \
                     under its name",
                    registration.name
                ),
            )),
            // Not the work's panic: nothing ran.
            Err(payload) => Err(OffloadError::protocol(
                function,
                format_args!(
                    "encoding its arguments panicked here, so it was not sent: {}",
                    crate::error::payload_text(&*payload).unwrap_or("Box<dyn Any>")
                ),
            )),
        }
    }

    fn finish(
        &mut self,
        registration: &Registration,
        result: &[u8],
        depth: DepthLimit,
    ) -> Result<(), OffloadError> {
        // The result's `Deserialize` is the user's, and the bytes come from
        // another process or the network: a panic there is this call's
        // failure.
        let value = panic::catch_unwind(AssertUnwindSafe(|| {
            self.decode(registration, result, depth)
        }))
        .unwrap_or_else(|payload| {
            Err(format!(
                "decoding its result here panicked (it ran in the worker): {}",
                crate::error::payload_text(&*payload).unwrap_or("Box<dyn Any>")
            ))
        })
        .map_err(|why| OffloadError::protocol(registration.name, why))?;
        // The arguments are dropped here, in the handler's frame: the call
        // ran elsewhere on copies of them.
        self.slot = WorkSlot::Done(Ok(value));
        Ok(())
    }

    fn fail(&mut self, error: OffloadError) {
        self.slot.give_up(error);
    }
}

/// Starts the unwind that drops a suspended handler. `resume_unwind` does
/// not call the panic hook: dropping a handler is not a failure to report.
#[cold]
#[inline(never)]
fn unwind_dropped_handler() -> ! {
    panic::resume_unwind(Box::new(HandlerDropped))
}

/// A [`Job`] with its lifetime erased, as it travels out of the coroutine
/// through `Yielder::suspend` (whose yield type must be `'static`), or
/// through a pool's queue.
#[derive(Clone, Copy)]
pub(crate) struct ErasedJob {
    work: NonNull<dyn RunOnce + Send + 'static>,
    /// The job's probe, borrowed for as long as its work.
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    probe: Option<NonNull<Probe>>,
}

impl ErasedJob {
    /// Erases the lifetime of `work`.
    ///
    /// # Safety
    ///
    /// The result must only be turned back into a [`Job`] (with
    /// [`ErasedJob::as_job`]) while `work` is still alive and not otherwise
    /// borrowed.
    #[inline]
    pub(crate) unsafe fn erase<'a>(work: &'a mut (dyn RunOnce + Send + 'a)) -> Self {
        let ptr: NonNull<dyn RunOnce + Send + 'a> = NonNull::from(work);
        // SAFETY: only the trait object's lifetime bound changes; the layout of
        // the fat pointer is identical. The caller promises not to use the
        // pointer after 'a ends.
        let work = unsafe {
            mem::transmute::<NonNull<dyn RunOnce + Send + 'a>, NonNull<dyn RunOnce + Send + 'static>>(
                ptr,
            )
        };
        ErasedJob {
            work,
            #[cfg(any(feature = "tracing", feature = "metrics"))]
            probe: None,
        }
    }

    /// Restores the job for a lifetime chosen by the caller.
    ///
    /// # Safety
    ///
    /// The work slot this was made from must stay alive and unaliased for all
    /// of `'a`: in practice, the coroutine that yielded it stays suspended
    /// (neither resumed nor dropped) for `'a`. (Its probe, if any, was
    /// borrowed with it for as long, so it lives as long.)
    #[inline]
    pub(crate) unsafe fn as_job<'a>(self) -> Job<'a> {
        Job {
            // SAFETY: guaranteed by the caller, see above.
            work: unsafe { &mut *self.work.as_ptr() },
            // SAFETY: the probe was borrowed (shared) for the same lifetime
            // as the work when the job was erased (`Job::erase`), and the
            // work is alive, so the probe is too; it is only ever shared.
            #[cfg(any(feature = "tracing", feature = "metrics"))]
            probe: self.probe.map(|probe| unsafe { probe.as_ref() }),
        }
    }

    /// Marks the slot so that the handler unwinds when it takes its result.
    ///
    /// # Safety
    ///
    /// As for [`ErasedJob::as_job`]: the coroutine that yielded this job is
    /// still suspended on it, and no [`Job`] made from it is alive.
    pub(crate) unsafe fn mark_dropped(self) {
        // SAFETY: guaranteed by the caller, see above.
        unsafe { (*self.work.as_ptr()).mark_dropped() }
    }
}
