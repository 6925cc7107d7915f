//! What the code `#[yieldable]`, `offload!`, `try_offload!` and
//! `yield_from!` generate calls at run time, re-exported as
//! `ythread::__private`. Not public API.
//!
//! A handler's body is a closure that receives the running handler's
//! [`Context`]; each `offload!` point suspends the coroutine through it with
//! the work as a job living in the suspended frame.

use std::fmt;
use std::panic::Location;
use std::panic::{RefUnwindSafe, UnwindSafe};

use corosensei::Yielder;

use crate::error::OffloadError;
use crate::handler::Yieldable;
use crate::job::{Call, CallSlot, ErasedJob, RunOnce, WorkSlot};
use crate::portable::Portability;

/// The body of a `#[yieldable]` function, as a closure that receives the
/// running handler's [`Context`].
#[doc(hidden)]
pub struct HandlerFn<F>(F);

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandlerFn")
    }
}

impl<F, T> Yieldable for HandlerFn<F>
where
    F: FnOnce(&Context<'_>) -> T,
{
    type Output = T;

    #[inline]
    fn __run_in(self, cx: &Context<'_>) -> T {
        (self.0)(cx)
    }
}

/// Wraps a handler body; called by the expansion of `#[yieldable]`.
#[doc(hidden)]
#[inline]
pub fn handler<T, F>(body: F) -> HandlerFn<F>
where
    F: FnOnce(&Context<'_>) -> T,
{
    HandlerFn(body)
}

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
    pub(crate) fn new(yielder: &'y Yielder<(), ErasedJob>) -> Self {
        Context { yielder }
    }

    /// Suspends the handler with `job` until the driver resumes it. If the
    /// driver is dropping the handler instead, it has marked the job's slot,
    /// and taking the result unwinds (see `WorkSlot::Dropped`).
    #[inline]
    fn suspend(&self, job: ErasedJob) {
        self.yielder.suspend(job);
    }
}

/// The body of every `offload!` point: suspend the handler with `work` as a
/// [`Job`](crate::Job), and return its result once the strategy has run it.
#[doc(hidden)]
#[inline]
#[track_caller]
pub fn offload<F, R>(cx: &Context<'_>, work: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let at = Location::caller();
    let mut slot = WorkSlot::Pending(work);
    suspend_on(cx, &mut slot);
    slot.into_result(at)
}

/// The body of every `try_offload!` point: as [`offload`], with the work's
/// failure returned instead of resumed.
#[doc(hidden)]
#[inline]
pub fn try_offload<F, R>(cx: &Context<'_>, work: F) -> Result<R, OffloadError>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let mut slot = WorkSlot::Pending(work);
    suspend_on(cx, &mut slot);
    slot.into_outcome()
}

/// Suspends the handler with `slot` as its job. When this returns, the slot
/// is done (or failed, dropped, or left unrun).
#[inline(always)]
fn suspend_on<'a>(cx: &Context<'_>, slot: &'a mut (dyn RunOnce + Send + 'a)) {
    // SAFETY: `slot` lives in the caller's frame, which stays on the
    // suspended coroutine's stack until `suspend` returns. The driver only
    // turns the erased job back into a `Job` while the coroutine is suspended
    // here, and the `Job`'s lifetime is tied to a borrow that must end before
    // the coroutine is resumed or dropped (see `generator.rs`). When
    // `suspend` returns or unwinds, the job is gone and `slot` is the
    // caller's again.
    let job = unsafe { ErasedJob::erase(slot) };
    cx.suspend(job);
}

/// `Send`, with an error that says why an offload point's result must be.
///
/// rustc's own message for a missing `Send` on a result points at the whole
/// `offload!` without saying that it is the *result* that crosses threads.
/// `do_not_recommend` makes rustc report this trait (and its message) in
/// place of the leaf `Send` obligation. (Arguments keep rustc's message: it
/// already points at the one argument that is not `Send`.)
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "the result of this offload point, `{Self}`, is not `Send`",
    label = "`{Self}` is returned from the strategy's thread",
    note = "the work may run on another thread and its result is sent back to the handler: return an owned `Send` type (for example `Arc` in place of `Rc`)"
)]
pub trait SendResult: Send {}

#[diagnostic::do_not_recommend]
impl<T: Send> SendResult for T {}

/// The body of every `offload!(f, args...)` point: `args` were evaluated in
/// the handler; `call` applies `f` to them wherever the strategy runs it;
/// `wire` says how to send the call to another process, if it can go there.
#[doc(hidden)]
#[inline]
#[track_caller]
pub fn offload_call<A, C, R>(cx: &Context<'_>, args: A, call: C, wire: Portability<A>) -> R
where
    A: Send,
    C: FnOnce(A) -> R + Send,
    R: SendResult,
{
    let at = Location::caller();
    let mut slot = CallSlot {
        slot: WorkSlot::Pending(Call { args, call }),
        wire,
    };
    suspend_on(cx, &mut slot);
    slot.slot.into_result(at)
}

/// The body of every `try_offload!(f, args...)` point.
#[doc(hidden)]
#[inline]
pub fn try_offload_call<A, C, R>(
    cx: &Context<'_>,
    args: A,
    call: C,
    wire: Portability<A>,
) -> Result<R, OffloadError>
where
    A: Send,
    C: FnOnce(A) -> R + Send,
    R: SendResult,
{
    let mut slot = CallSlot {
        slot: WorkSlot::Pending(Call { args, call }),
        wire,
    };
    suspend_on(cx, &mut slot);
    slot.slot.into_outcome()
}

/// The body of every `yield_from!` point: run a nested handler on the current
/// coroutine, so its `offload!` points go to the same strategy.
#[doc(hidden)]
#[inline]
pub fn yield_from<H, T>(cx: &Context<'_>, nested: H) -> T
where
    H: Yieldable<Output = T>,
{
    nested.__run_in(cx)
}
