//! The unit of offloaded work: a borrowed, type-erased, run-once closure
//! together with the slot that receives its result.

use std::any::Any;
use std::fmt;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::ptr::NonNull;

use crate::error::{HandlerDropped, OffloadError};

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
}

impl<'a> Job<'a> {
    pub(crate) fn new(work: &'a mut (dyn RunOnce + Send + 'a)) -> Self {
        Job { work }
    }

    /// Runs the work on the current thread and stores its result (or its
    /// panic) for the handler. Consumes the job: work runs at most once.
    #[inline]
    pub fn run(self) {
        self.work.run_once();
    }

    /// Erases the job's lifetime, to send it where the borrow checker cannot
    /// follow (a pool's queue); turning it back is `unsafe`
    /// ([`ErasedJob::as_job`]).
    #[inline]
    pub(crate) fn erase(self) -> ErasedJob {
        // SAFETY: `as_job`, the only way back, requires that the work is
        // still alive and unaliased.
        unsafe { ErasedJob::erase(self.work) }
    }
}

impl fmt::Debug for Job<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

/// Object-safe face of [`WorkSlot`]: run the stored closure once.
pub(crate) trait RunOnce {
    fn run_once(&mut self);
    /// Marks the slot [`WorkSlot::Dropped`], dropping the work or its result.
    fn mark_dropped(&mut self);
}

/// The result of a piece of work: its value, or the payload it panicked with.
type Outcome<R> = Result<R, Box<dyn Any + Send + 'static>>;

/// Lives on the handler's coroutine stack for the duration of one `offload!`.
pub(crate) enum WorkSlot<F, R> {
    /// Not run yet.
    Pending(F),
    /// Run; holds the value or the panic payload.
    Done(Outcome<R>),
    /// Transient state while the closure runs.
    Running,
    /// The handler is being dropped while suspended here: taking the result
    /// unwinds with [`HandlerDropped`]. The driver marks the slot instead of
    /// passing a value back through the coroutine, so that the common path
    /// (one match on the slot) costs nothing more.
    Dropped,
}

impl<F: FnOnce() -> R, R> RunOnce for WorkSlot<F, R> {
    #[inline]
    fn run_once(&mut self) {
        if let WorkSlot::Pending(work) = mem::replace(self, WorkSlot::Running) {
            // The payload is handed back to the handler, which resumes the
            // unwind; this is the same contract as `JoinHandle::join`.
            *self = WorkSlot::Done(panic::catch_unwind(AssertUnwindSafe(work)));
        }
    }

    fn mark_dropped(&mut self) {
        *self = WorkSlot::Dropped;
    }
}

impl<F, R> WorkSlot<F, R> {
    /// Returns the work's value, resumes its panic, or panics if the strategy
    /// never ran it: what `offload!` evaluates to.
    #[inline]
    pub(crate) fn into_result(self) -> R {
        match self {
            WorkSlot::Done(Ok(value)) => value,
            WorkSlot::Done(Err(payload)) => panic::resume_unwind(payload),
            WorkSlot::Pending(_) | WorkSlot::Running => OffloadError::not_run().resume_unwind(),
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
            WorkSlot::Dropped => unwind_dropped_handler(),
        }
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
/// through `Yielder::suspend` (whose yield type must be `'static`).
#[derive(Clone, Copy)]
pub(crate) struct ErasedJob(NonNull<dyn RunOnce + Send + 'static>);

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
        ErasedJob(unsafe {
            mem::transmute::<NonNull<dyn RunOnce + Send + 'a>, NonNull<dyn RunOnce + Send + 'static>>(
                ptr,
            )
        })
    }

    /// Restores the job for a lifetime chosen by the caller.
    ///
    /// # Safety
    ///
    /// The work slot this was made from must stay alive and unaliased for all
    /// of `'a`: in practice, the coroutine that yielded it stays suspended
    /// (neither resumed nor dropped) for `'a`.
    #[inline]
    pub(crate) unsafe fn as_job<'a>(self) -> Job<'a> {
        // SAFETY: guaranteed by the caller, see above.
        Job::new(unsafe { &mut *self.0.as_ptr() })
    }

    /// Marks the slot so that the handler unwinds when it takes its result.
    ///
    /// # Safety
    ///
    /// As for [`ErasedJob::as_job`]: the coroutine that yielded this job is
    /// still suspended on it, and no [`Job`] made from it is alive.
    pub(crate) unsafe fn mark_dropped(self) {
        // SAFETY: guaranteed by the caller, see above.
        unsafe { (*self.0.as_ptr()).mark_dropped() }
    }
}
