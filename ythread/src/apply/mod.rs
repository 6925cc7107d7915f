//! The apply trait, which decides where offloaded work runs, and the
//! built-in strategies.

mod bounded;
mod exclusive;
mod inline;
mod pool;
mod semaphore;

pub use bounded::Bounded;
pub use exclusive::Exclusive;
pub use inline::Inline;
pub use pool::Pool;

use crate::Job;

/// A strategy for running offloaded work: the seed's `cpu_apply`.
///
/// The thread that drives a handler owns one strategy. Each time the handler
/// reaches an `offload!` point, the driver calls [`apply`](Apply::apply) with
/// the work as a [`Job`]; the handler resumes with the result once `apply`
/// returns.
///
/// # Contract
///
/// `apply` must run the job (call [`Job::run`], on any thread) before it
/// returns. The borrow checker already enforces the part that matters for
/// soundness: a `Job<'_>` cannot outlive the call, so it can only go to
/// another thread that is joined before `apply` returns. A strategy that
/// drops the job without running it makes the handler panic at its
/// `offload!` point.
///
/// The trait is object-safe (`&dyn Apply`, `Box<dyn Apply + Send>` work), and
/// every `Fn(Job<'_>)` closure implements it, the way the seed passes
/// `pool.apply` as `cpu_apply`.
///
/// # Example
///
/// A strategy that counts the work it runs, then runs it inline:
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use ythread::{Apply, Job, Yieldable, offload, yieldable};
///
/// #[derive(Default)]
/// struct Counting(AtomicUsize);
///
/// impl Apply for Counting {
///     fn apply(&self, job: Job<'_>) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         job.run();
///     }
/// }
///
/// fn add(a: u32, b: u32) -> u32 { a + b }
///
/// #[yieldable]
/// fn sum_all(xs: Vec<u32>) -> u32 {
///     xs.into_iter().fold(0, |acc, x| offload!(add, acc, x))
/// }
///
/// let counting = Counting::default();
/// assert_eq!(sum_all(vec![1, 2, 3]).run_with(&counting), 6);
/// assert_eq!(counting.0.load(Ordering::Relaxed), 3);
/// ```
pub trait Apply {
    /// Runs `job`, on this thread or another, and returns once it has run.
    fn apply(&self, job: Job<'_>);
}

impl<F> Apply for F
where
    F: Fn(Job<'_>) + ?Sized,
{
    #[inline]
    fn apply(&self, job: Job<'_>) {
        self(job)
    }
}
