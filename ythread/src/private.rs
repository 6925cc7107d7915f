//! What the code `#[yieldable]`, `offload!`, `try_offload!` and
//! `yield_from!` generate calls at run time, re-exported as
//! `ythread::__private`. Not public API, and nothing else in the crate
//! imports it: each function here stands on the runtime's own
//! ([`Context`]'s methods, [`Yieldable`]).

use std::fmt;

use crate::coroutine::Context;
use crate::error::OffloadError;
use crate::handler::Yieldable;
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

/// The body of every `offload!(|| ..)` point (see [`Context::offload`]).
#[doc(hidden)]
#[inline]
#[track_caller]
pub fn offload<F, R>(cx: &Context<'_>, work: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    cx.offload(work)
}

/// The body of every `try_offload!(|| ..)` point.
#[doc(hidden)]
#[inline]
pub fn try_offload<F, R>(cx: &Context<'_>, work: F) -> Result<R, OffloadError>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    cx.try_offload(work)
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

/// The body of every `offload!(f, args...)` point (see
/// [`Context::offload_call`]).
#[doc(hidden)]
#[inline]
#[track_caller]
pub fn offload_call<A, C, R>(cx: &Context<'_>, args: A, call: C, wire: Portability) -> R
where
    A: Send,
    C: FnOnce(A) -> R + Send,
    R: SendResult,
{
    cx.offload_call(args, call, wire)
}

/// The body of every `try_offload!(f, args...)` point.
#[doc(hidden)]
#[inline]
pub fn try_offload_call<A, C, R>(
    cx: &Context<'_>,
    args: A,
    call: C,
    wire: Portability,
) -> Result<R, OffloadError>
where
    A: Send,
    C: FnOnce(A) -> R + Send,
    R: SendResult,
{
    cx.try_offload_call(args, call, wire)
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

/// What the companion of an `#[offloadable]` function implements: a type
/// of the function's own name that `#[offloadable]` defines beside it. In a
/// `#[yieldable(portable)]` handler, each `offload!(path::to::f, ..)` checks
/// that the type `path::to::f` names implements it (a fallback type, for a
/// function without a companion), so that offloading a function that is not
/// registered is this error, at the function's name, where it would
/// otherwise fail at run time with `NotPortable`.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "this function is not `#[offloadable]`, so it cannot run in another process, \
               as `#[yieldable(portable)]` requires",
    label = "not `#[offloadable]`",
    note = "mark the function `#[ythread::offloadable]` (its parameters `Serialize + \
            Deserialize`, its result owned), or offload one that is",
    note = "or remove `(portable)` from `#[yieldable]`, if the handler never runs under \
            `Processes` or `Remote`"
)]
pub trait Offloadable {}

/// The check of a `#[yieldable(portable)]` handler's `offload!` of `F`
/// (see [`Offloadable`]); called in constants only.
#[doc(hidden)]
pub const fn assert_offloadable<F: Offloadable>() {}
