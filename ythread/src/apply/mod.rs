//! The apply trait, which decides where offloaded work runs, and the
//! built-in strategies.

mod bounded;
mod exclusive;
mod inline;
mod pool;

pub use bounded::Bounded;
pub use exclusive::Exclusive;
pub use inline::Inline;
pub use pool::{Pool, PoolBuilder, WhenFull};

use std::fmt;
use std::sync::Arc;

use crate::Job;

/// A strategy for running offloaded work: the `cpu_apply` function of the
/// 2009 "yieldable threads" post this crate comes from.
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
/// `offload!` point (`try_offload!` returns an error instead).
///
/// # Strategies as values
///
/// `&A`, `Box<A>` and `Arc<A>` are strategies whenever `A` is, sized or not:
/// `&dyn Apply`, `Box<dyn Apply + Send>`, `Arc<dyn Apply + Send + Sync>`. A
/// closure becomes one through [`apply_fn`], which also gives it its
/// parameter type. A strategy picked at run time is one value:
///
/// ```
/// use std::sync::Arc;
/// use ythread::{Apply, Exclusive, Inline, Pool, YieldableThread, offload, yieldable};
///
/// fn sumn(n: u64) -> u64 { (1..=n).sum() }
///
/// #[yieldable]
/// fn handle(n: u64) -> u64 { offload!(sumn, n) }
///
/// # let flag = "pool";
/// let cpu: Arc<dyn Apply + Send + Sync> = match flag {
///     "pool" => Arc::new(Pool::default()),
///     "exclusive" => Arc::new(Exclusive::new()),
///     _ => Arc::new(Inline),
/// };
/// let thread = YieldableThread::new().apply(Arc::clone(&cpu)).spawn(handle(4)).unwrap();
/// assert_eq!(thread.join().unwrap(), 10);
/// ```
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
///
/// A value that is not a strategy is named in the error:
///
/// ```compile_fail
/// use ythread::{Yieldable, offload, yieldable};
///
/// #[yieldable]
/// fn one() -> u32 { offload!(|| 1) }
///
/// one().run_with(&42); // error: `{integer}` is not an apply strategy
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an apply strategy",
    label = "not an `ythread::Apply`",
    note = "a strategy is `Inline`, `Exclusive`, `Bounded`, `Pool`, a type implementing \
            `ythread::Apply`, a reference, `Box` or `Arc` of one, or a closure wrapped in \
            `ythread::apply_fn(|job| job.run())`"
)]
pub trait Apply {
    /// Runs `job`, on this thread or another, and returns once it has run.
    fn apply(&self, job: Job<'_>);

    /// The strategy's name where offloads are observed: the `strategy`
    /// field of the `tracing` feature's spans and the `strategy` label of
    /// the `metrics` feature's series. The built-in strategies answer
    /// `"Inline"`, `"Exclusive"`, `"Bounded"`, `"Pool"`, `"rayon"`,
    /// `"Processes"`, `"Remote"` and `"apply_fn"`; any other, by default,
    /// its type's name ([`std::any::type_name`]).
    ///
    /// A name is a label: keep it to a few fixed values (one per strategy
    /// type or role, not one per instance), as time series are made per
    /// label value.
    ///
    /// ```
    /// use ythread::{Apply, Job, Pool};
    ///
    /// struct Gpu;
    /// impl Apply for Gpu {
    ///     fn apply(&self, job: Job<'_>) { job.run() }
    ///     fn name(&self) -> &'static str { "gpu" }
    /// }
    ///
    /// assert_eq!(Pool::default().name(), "Pool");
    /// assert_eq!(Gpu.name(), "gpu");
    /// ```
    fn name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }
}

impl<A: Apply + ?Sized> Apply for &A {
    #[inline]
    fn apply(&self, job: Job<'_>) {
        (**self).apply(job);
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
}

impl<A: Apply + ?Sized> Apply for Box<A> {
    #[inline]
    fn apply(&self, job: Job<'_>) {
        (**self).apply(job);
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
}

impl<A: Apply + ?Sized> Apply for Arc<A> {
    #[inline]
    fn apply(&self, job: Job<'_>) {
        (**self).apply(job);
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
}

/// Makes a strategy of a closure that takes a [`Job`], the way tower's
/// `service_fn` makes a service of one: the closure's parameter needs no
/// annotation.
///
/// ```
/// use ythread::{Yieldable, apply_fn, offload, yieldable};
///
/// #[yieldable]
/// fn double(x: u64) -> u64 { offload!(|| 2 * x) }
///
/// // Runs each job on a scoped thread of its own.
/// let scoped = apply_fn(|job| std::thread::scope(|s| { s.spawn(move || job.run()); }));
/// assert_eq!(double(21).run_with(&scoped), 42);
/// ```
pub fn apply_fn<F>(f: F) -> ApplyFn<F>
where
    F: Fn(Job<'_>),
{
    ApplyFn(f)
}

/// A closure used as a strategy: see [`apply_fn`].
#[derive(Clone, Copy)]
pub struct ApplyFn<F>(F);

impl<F> fmt::Debug for ApplyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplyFn").finish_non_exhaustive()
    }
}

impl<F: Fn(Job<'_>)> Apply for ApplyFn<F> {
    #[inline]
    fn apply(&self, job: Job<'_>) {
        (self.0)(job);
    }

    fn name(&self) -> &'static str {
        "apply_fn"
    }
}

/// How many threads the process may run at once: what `per_core` means.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(feature = "rayon")]
#[cfg_attr(docsrs, doc(cfg(feature = "rayon")))]
impl Apply for rayon::ThreadPool {
    /// Runs the job on this pool, with `install`: from one of the pool's
    /// own threads (work that itself offloads to the same pool), in place.
    #[inline]
    fn apply(&self, job: Job<'_>) {
        self.install(move || job.run());
    }

    fn name(&self) -> &'static str {
        "rayon"
    }
}
