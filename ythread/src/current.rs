//! The handler running on this thread, found from any call depth: the
//! function form [`offload()`] and [`in_handler`].

use crate::coroutine::with_running_context;

/// Offloads `work` from any call depth: the function form of `offload!`.
///
/// Inside a handler's body (at any depth: a helper function, a library
/// callback, a `macro_rules!` wrapper), it suspends the innermost handler
/// running on this thread and hands `work` to that handler's strategy, like
/// `offload!(|| work())`. Outside any handler it runs `work` right there, as
/// [`Inline`](crate::Inline) would; [`in_handler`] tells which.
///
/// `offload!` remains the compile-checked form: it is an error outside a
/// handler, and costs no lookup. This one finds the handler from the stack
/// pointer (a few compares against a cached range), so code that does not
/// know whether it runs in a handler can still offload. While the thread is
/// unwinding (a destructor running because of a panic, or because a
/// suspended handler is being dropped), the work runs in place: suspending
/// there could not resume.
///
/// # Panics
///
/// As `offload!`: a panic in `work` resumes here with its payload.
///
/// # Example
///
/// ```
/// use std::time::Instant;
/// use ythread::{Pool, Yieldable, in_handler, yieldable};
///
/// fn sumn(n: u64) -> u64 { (1..=n).sum() }
///
/// /// A library helper: times its CPU step, and offloads it when it can.
/// fn timed_sum(n: u64) -> (u64, std::time::Duration) {
///     let start = Instant::now();
///     let sum = ythread::offload(|| sumn(n));
///     (sum, start.elapsed())
/// }
///
/// #[yieldable]
/// fn handle(n: u64) -> u64 {
///     timed_sum(n).0 // no `offload!` here: the helper offloads
/// }
///
/// fn on_which_thread() -> Option<String> {
///     std::thread::current().name().map(str::to_owned)
/// }
///
/// #[yieldable]
/// fn where_helpers_run() -> Option<String> {
///     ythread::offload(on_which_thread)
/// }
///
/// assert_eq!(handle(100).run_with(&Pool::new(1)), 5050);
/// assert_eq!(where_helpers_run().run_with(&Pool::new(1)).as_deref(), Some("ythread-pool-0"));
/// // Outside a handler, the work runs in place.
/// assert!(!in_handler());
/// assert_eq!(timed_sum(4).0, 10);
/// ```
#[inline]
pub fn offload<F, R>(work: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    if std::thread::panicking() {
        return work();
    }
    with_running_context(|cx| match cx {
        Some(cx) => cx.offload(work),
        None => work(),
    })
}

/// Whether the calling code runs inside a handler's body (at any call
/// depth), where [`offload()`] hands work to the handler's strategy and
/// [`Yieldable::run`](crate::Yieldable::run) joins the running handler.
///
/// Work running on the handler's strategy (on a `Pool` worker, or inline on
/// the driving thread's stack) is not inside the handler.
pub fn in_handler() -> bool {
    with_running_context(|cx| cx.is_some())
}
