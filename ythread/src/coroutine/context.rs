//! [`Context`]: the running handler's side of its coroutine, through which
//! every offload point suspends it with its work.
//!
//! Each offload point keeps its work in a slot in its own frame, on the
//! suspended coroutine's stack, and suspends with that slot as an
//! [`ErasedJob`]; the driver runs it (see [`Generator`](super::Generator))
//! and resumes the handler, which takes the result out of the slot.

use std::fmt;
use std::panic::Location;
use std::panic::{RefUnwindSafe, UnwindSafe};

use corosensei::Yielder;

use crate::error::OffloadError;
use crate::job::{Call, CallSlot, ErasedJob, RunOnce, WorkSlot};
use crate::portable::Portability;

/// The running handler's side of the coroutine. `#[yieldable]` passes it to
/// the body as a hidden, hygienic parameter, so `offload!` can only be used
/// where a handler is running: the compiler checks it, not a thread-local.
///
/// It is neither `Send` nor `Sync`: work offloaded from another thread than
/// the handler's own would be unsound, and is a compile error:
///
/// ```compile_fail,E0277
/// use ythread::{offload, yieldable};
///
/// #[yieldable]
/// fn from_another_thread() -> u32 {
///     std::thread::scope(|s| s.spawn(|| offload!(|| 1)).join().unwrap())
/// }
/// ```
#[doc(hidden)]
pub struct Context<'y> {
    yielder: &'y Yielder<(), ErasedJob>,
}

// A handler may catch a panic at its own `offload!` point; its context stays
// fully usable afterwards (the coroutine is intact), so it is unwind-safe.
impl UnwindSafe for Context<'_> {}
impl RefUnwindSafe for Context<'_> {}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Context")
    }
}

impl<'y> Context<'y> {
    pub(super) fn new(yielder: &'y Yielder<(), ErasedJob>) -> Self {
        Context { yielder }
    }

    /// Suspends the handler with `slot` as its job. When this returns, the
    /// slot is done (or failed, dropped, or left unrun). If the driver is
    /// dropping the handler instead, it has marked the slot, and taking the
    /// result unwinds (see `WorkSlot::Dropped`).
    #[inline(always)]
    fn suspend_on<'a>(&self, slot: &'a mut (dyn RunOnce + Send + 'a)) {
        // SAFETY: `slot` lives in the caller's frame, which stays on the
        // suspended coroutine's stack until `suspend` returns. The driver
        // only turns the erased job back into a `Job` while the coroutine is
        // suspended here, and the `Job`'s lifetime is tied to a borrow that
        // must end before the coroutine is resumed or dropped (see
        // `generator.rs`). When `suspend` returns or unwinds, the job is gone
        // and `slot` is the caller's again.
        let job = unsafe { ErasedJob::erase(slot) };
        self.yielder.suspend(job);
    }

    /// Suspends the handler with `work` as a [`Job`](crate::Job), and
    /// returns its result once the strategy has run it: the body of every
    /// `offload!(|| ..)` point and of [`ythread::offload`](crate::offload).
    ///
    /// # Panics
    ///
    /// Resumes the work's panic, or panics with the strategy's
    /// [`OffloadError`], reported at the caller's location.
    #[inline]
    #[track_caller]
    pub(crate) fn offload<F, R>(&self, work: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let at = Location::caller();
        let mut slot = WorkSlot::Pending(work);
        self.suspend_on(&mut slot);
        slot.into_result(at)
    }

    /// As [`offload`](Self::offload), with the work's failure returned
    /// instead of resumed: the body of every `try_offload!(|| ..)` point.
    ///
    /// # Errors
    ///
    /// The work's panic, or the strategy's failure to run it.
    #[inline]
    pub(crate) fn try_offload<F, R>(&self, work: F) -> Result<R, OffloadError>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let mut slot = WorkSlot::Pending(work);
        self.suspend_on(&mut slot);
        slot.into_outcome()
    }

    /// The body of every `offload!(f, args...)` point: `args` were evaluated
    /// in the handler; `call` applies `f` to them wherever the strategy runs
    /// it; `wire` says how to send the call to another process, if it can go
    /// there.
    ///
    /// # Panics
    ///
    /// As [`offload`](Self::offload).
    #[inline]
    #[track_caller]
    pub(crate) fn offload_call<A, C, R>(&self, args: A, call: C, wire: Portability) -> R
    where
        A: Send,
        C: FnOnce(A) -> R + Send,
        R: Send,
    {
        let at = Location::caller();
        let mut slot = CallSlot {
            slot: WorkSlot::Pending(Call { args, call }),
            wire,
        };
        self.suspend_on(&mut slot);
        slot.slot.into_result(at)
    }

    /// The body of every `try_offload!(f, args...)` point.
    ///
    /// # Errors
    ///
    /// As [`try_offload`](Self::try_offload).
    #[inline]
    pub(crate) fn try_offload_call<A, C, R>(
        &self,
        args: A,
        call: C,
        wire: Portability,
    ) -> Result<R, OffloadError>
    where
        A: Send,
        C: FnOnce(A) -> R + Send,
        R: Send,
    {
        let mut slot = CallSlot {
            slot: WorkSlot::Pending(Call { args, call }),
            wire,
        };
        self.suspend_on(&mut slot);
        slot.slot.into_outcome()
    }
}
