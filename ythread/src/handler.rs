//! What a `#[yieldable]` function returns: the [`Yieldable`] trait, and the
//! handlers built from others ([`WithStackSize`], [`BoxYieldable`]).

use std::fmt;

use std::any;

use crate::apply::{Apply, Inline};
use crate::coroutine::{Context, Generator, GeneratorState, default_stack_size};

/// A handler that has been called but not run yet.
///
/// Calling a `#[yieldable]` function does not run its body, the way calling a
/// Python generator function does not: it returns an `impl Yieldable`. Run it
/// on the current thread with [`run`](Yieldable::run) or
/// [`run_with`](Yieldable::run_with), step it by hand with
/// [`start`](Yieldable::start), or give it to a
/// [`YieldableThread`](crate::YieldableThread).
///
/// Plain closures (`FnOnce() -> T`) are `Yieldable` too: they have no
/// `offload!` points and simply run, the way the 2009 post's `YieldableThread` runs
/// a target that is not a generator as an ordinary thread.
///
/// This trait is implemented by the `#[yieldable]` macro and for closures;
/// implementing it by hand is not supported.
///
/// # Example
///
/// ```
/// use ythread::{Exclusive, Yieldable, offload, yieldable};
///
/// fn sumn(n: u64) -> u64 { (1..=n).sum() }
///
/// #[yieldable]
/// fn handle(n: u64) -> String {
///     format!("sum = {}", offload!(sumn, n))
/// }
///
/// assert_eq!(handle(4).run(), "sum = 10");
/// assert_eq!(handle(4).run_with(&Exclusive::new()), "sum = 10");
/// ```
#[must_use = "a yieldable handler does nothing until it is run: call `.run()` or \
              `.run_with(&strategy)`, or spawn it with `YieldableThread`"]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a yieldable handler",
    label = "not a call of a `#[yieldable]` function",
    note = "write `yield_from!(helper(x))` where `helper` is marked `#[yieldable]`"
)]
pub trait Yieldable: Sized {
    /// The value the handler returns.
    type Output;

    /// Runs the body on the current coroutine. Only the runtime and the
    /// expansion of `yield_from!` call this.
    #[doc(hidden)]
    fn __run_in(self, cx: &Context<'_>) -> Self::Output;

    /// The coroutine stack size this handler asked for with
    /// [`with_stack_size`](Yieldable::with_stack_size), if it did.
    #[doc(hidden)]
    fn __stack_size(&self) -> Option<usize> {
        None
    }

    /// Runs the handler to completion on the current thread: on a coroutine
    /// of the size it asked for, else of `stack_size` bytes, handing its work
    /// to `apply`. A plain closure has no `offload!` points and runs directly
    /// on the thread's own stack.
    #[doc(hidden)]
    fn __drive<A: Apply + ?Sized>(self, apply: &A, stack_size: usize) -> Self::Output {
        let stack_size = self.__stack_size().unwrap_or(stack_size);
        drive(self, apply, stack_size)
    }

    /// Runs the handler to completion on the current thread, running each
    /// piece of offloaded work inline, exactly like the plain function would.
    ///
    /// Called inside a running handler (at any call depth of its body), it
    /// joins that handler instead, as `yield_from!` does: it runs on the
    /// running handler's coroutine and its work goes to the running handler's
    /// strategy. (Work running *on* a strategy, such as a `Pool` worker, is
    /// not inside the handler: there `run` runs work inline.) To choose a
    /// strategy of its own, use [`run_with`](Yieldable::run_with).
    ///
    /// ```
    /// use ythread::{Pool, Yieldable, offload, yieldable};
    ///
    /// #[yieldable]
    /// fn inner() -> Option<String> {
    ///     offload!(|| std::thread::current().name().map(str::to_owned))
    /// }
    ///
    /// // A helper that knows nothing of strategies.
    /// fn helper() -> Option<String> {
    ///     inner().run()
    /// }
    ///
    /// #[yieldable]
    /// fn outer() -> Option<String> {
    ///     let name = helper();
    ///     offload!(|| ()); // the outer handler's own work
    ///     name
    /// }
    ///
    /// // The helper's handler used the outer handler's pool.
    /// assert_eq!(outer().run_with(&Pool::new(1)).as_deref(), Some("ythread-pool-0"));
    /// ```
    fn run(self) -> Self::Output {
        // While unwinding (a destructor), joining the handler being unwound
        // could not resume: run on a coroutine of its own.
        if std::thread::panicking() {
            return self.run_with(&Inline);
        }
        crate::coroutine::with_running_context(move |cx| match cx {
            Some(cx) => self.__run_in(cx),
            None => self.run_with(&Inline),
        })
    }

    /// Runs the handler to completion on the current thread, handing each
    /// piece of offloaded work to `apply`.
    ///
    /// # Panics
    ///
    /// A panic in the handler or in its offloaded work propagates to the
    /// caller; so does a panic of the strategy itself, after the suspended
    /// handler has been unwound (its locals dropped).
    fn run_with<A: Apply + ?Sized>(self, apply: &A) -> Self::Output {
        self.__drive(apply, default_stack_size())
    }

    /// Starts the handler as a [`Generator`] that the caller steps by hand,
    /// receiving each piece of work as a [`Job`](crate::Job).
    ///
    /// # Panics
    ///
    /// Panics if no coroutine stack can be allocated.
    fn start(self) -> Generator<Self::Output>
    where
        Self: 'static,
        Self::Output: 'static,
    {
        let stack_size = self.__stack_size().unwrap_or_else(default_stack_size);
        Generator::new(
            move |cx| self.__run_in(cx),
            stack_size,
            handler_name::<Self>,
        )
    }

    /// Runs this handler on a coroutine stack of `bytes` bytes (rounded up to
    /// whole pages, at least one, plus a guard page) instead of the default
    /// [`DEFAULT_STACK_SIZE`](crate::DEFAULT_STACK_SIZE), however it is run:
    /// [`run`](Yieldable::run), [`run_with`](Yieldable::run_with),
    /// [`start`](Yieldable::start) or a
    /// [`YieldableThread`](crate::YieldableThread) (where it takes precedence
    /// over the thread's
    /// [`coroutine_stack_size`](crate::YieldableThread::coroutine_stack_size)).
    ///
    /// A handler run by `yield_from!` runs on the stack of the handler around
    /// it, so its own size does not apply there. Closures given this size run
    /// on a coroutine of that size too, rather than on the thread's stack.
    ///
    /// ```
    /// use ythread::{Yieldable, offload, yieldable};
    ///
    /// #[yieldable]
    /// fn deep(n: u32) -> u32 {
    ///     fn depth(n: u32) -> u32 {
    ///         let frame = std::hint::black_box([0u8; 1024]);
    ///         if n == 0 { u32::from(frame[0]) } else { 1 + depth(n - 1) }
    ///     }
    ///     offload!(|| ()); // CPU work elsewhere; the recursion is the handler's own
    ///     depth(n)
    /// }
    ///
    /// // About 8 MiB of frames: more than the default 2 MiB.
    /// assert_eq!(deep(8_000).with_stack_size(16 << 20).run(), 8_000);
    /// ```
    fn with_stack_size(self, bytes: usize) -> WithStackSize<Self> {
        WithStackSize {
            handler: self,
            stack_size: bytes,
        }
    }

    /// Boxes the handler, erasing its type: see [`BoxYieldable`].
    fn boxed<'a>(self) -> BoxYieldable<'a, Self::Output>
    where
        Self: Send + 'a,
    {
        BoxYieldable {
            handler: Box::new(self),
        }
    }
}

/// A handler of any type, boxed: what [`Yieldable::boxed`] returns, so that
/// handlers of different types can be stored together (a `Vec`, a map of
/// routes) and still be run, spawned, nested with `yield_from!` and given a
/// stack size like any other. (`dyn Yieldable` itself cannot exist: its
/// methods are generic over the strategy.)
///
/// It is `Send`, as the handlers it is made from must be; `'a` is what they
/// borrow (`'static` for one to spawn).
///
/// ```
/// use ythread::{BoxYieldable, Pool, Yieldable, YieldableThread, offload, yield_from, yieldable};
///
/// #[yieldable]
/// fn square(x: u64) -> u64 { offload!(|| x * x) }
///
/// #[yieldable]
/// fn sum_to(n: u64) -> u64 { offload!(|| (1..=n).sum()) }
///
/// #[yieldable]
/// fn twice(inner: BoxYieldable<'static, u64>) -> u64 { 2 * yield_from!(inner) }
///
/// let handlers: Vec<BoxYieldable<'static, u64>> = vec![
///     square(3).boxed(),
///     sum_to(4).boxed(),
///     twice(square(2).boxed()).boxed(),
///     (|| 7).boxed(),
/// ];
/// let pool = Pool::new(2);
/// let threads: Vec<_> = handlers
///     .into_iter()
///     .map(|h| YieldableThread::new().apply(pool.clone()).spawn(h).unwrap())
///     .collect();
/// let results: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
/// assert_eq!(results, [9, 10, 8, 7]);
/// ```
#[must_use = "a yieldable handler does nothing until it is run: call `.run()` or \
              `.run_with(&strategy)`, or spawn it with `YieldableThread`"]
pub struct BoxYieldable<'a, T> {
    handler: Box<dyn ErasedYieldable<T> + Send + 'a>,
}

/// The object-safe face of [`Yieldable`] behind a [`BoxYieldable`].
trait ErasedYieldable<T> {
    fn run_in_boxed(self: Box<Self>, cx: &Context<'_>) -> T;
    fn drive_boxed(self: Box<Self>, apply: &dyn Apply, stack_size: usize) -> T;
    fn stack_size(&self) -> Option<usize>;
}

impl<H: Yieldable> ErasedYieldable<H::Output> for H {
    fn run_in_boxed(self: Box<Self>, cx: &Context<'_>) -> H::Output {
        (*self).__run_in(cx)
    }

    fn drive_boxed(self: Box<Self>, apply: &dyn Apply, stack_size: usize) -> H::Output {
        // The handler's own way of being driven: a closure keeps running on
        // the thread's stack.
        (*self).__drive(apply, stack_size)
    }

    fn stack_size(&self) -> Option<usize> {
        self.__stack_size()
    }
}

impl<T> fmt::Debug for BoxYieldable<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxYieldable").finish_non_exhaustive()
    }
}

impl<T> Yieldable for BoxYieldable<'_, T> {
    type Output = T;

    #[inline]
    fn __run_in(self, cx: &Context<'_>) -> T {
        self.handler.run_in_boxed(cx)
    }

    #[inline]
    fn __stack_size(&self) -> Option<usize> {
        self.handler.stack_size()
    }

    fn __drive<A: Apply + ?Sized>(self, apply: &A, stack_size: usize) -> T {
        let apply: &dyn Apply = &apply;
        self.handler.drive_boxed(apply, stack_size)
    }
}

/// A handler that runs on a coroutine stack of a chosen size: see
/// [`Yieldable::with_stack_size`].
#[must_use = "a yieldable handler does nothing until it is run: call `.run()` or \
              `.run_with(&strategy)`, or spawn it with `YieldableThread`"]
pub struct WithStackSize<H> {
    handler: H,
    stack_size: usize,
}

impl<H> fmt::Debug for WithStackSize<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithStackSize")
            .field("stack_size", &self.stack_size)
            .finish_non_exhaustive()
    }
}

impl<H: Yieldable> Yieldable for WithStackSize<H> {
    type Output = H::Output;

    #[inline]
    fn __run_in(self, cx: &Context<'_>) -> H::Output {
        self.handler.__run_in(cx)
    }

    #[inline]
    fn __stack_size(&self) -> Option<usize> {
        Some(self.stack_size)
    }
}

impl<F, T> Yieldable for F
where
    F: FnOnce() -> T,
{
    type Output = T;

    #[inline]
    fn __run_in(self, _cx: &Context<'_>) -> T {
        self()
    }

    #[inline]
    fn __drive<A: Apply + ?Sized>(self, _apply: &A, _stack_size: usize) -> T {
        self()
    }
}

/// Runs `handler` to completion on the current thread, giving each job to
/// `apply`. This is the loop of the 2009 post's `YieldableThread.run`.
fn drive<H, A>(handler: H, apply: &A, stack_size: usize) -> H::Output
where
    H: Yieldable,
    A: Apply + ?Sized,
{
    // SAFETY: the generator lives in this frame only and is dropped (on
    // return or while unwinding) before this function returns, so it never
    // outlives what the handler borrows.
    let mut generator = unsafe {
        Generator::new_unchecked(
            move |cx| handler.__run_in(cx),
            stack_size,
            handler_name::<H>,
        )
    };
    loop {
        match generator.resume() {
            // The borrow invariant every strategy relies on: `apply` returns
            // only after the job has run (or was dropped unrun), and only then
            // is the handler resumed.
            GeneratorState::Yielded(job) => {
                #[cfg(any(feature = "tracing", feature = "metrics"))]
                apply_observed(apply, job);
                #[cfg(not(any(feature = "tracing", feature = "metrics")))]
                apply.apply(job);
            }
            GeneratorState::Complete(value) => return value,
        }
    }
}

/// Hands `job` to `apply`, watched (features `tracing` and `metrics`): the
/// strategy sees the job as it would unwatched; around it go the span and
/// the measures (`observe.rs`).
#[cfg(any(feature = "tracing", feature = "metrics"))]
#[inline]
fn apply_observed<A: Apply + ?Sized>(apply: &A, mut job: crate::Job<'_>) {
    let probe = crate::observe::Probe::start(apply.name(), job.function());
    probe.handing_over(|| apply.apply(job.observed_by(&probe)));
    probe.finish(job.settled());
}

/// The name of a handler's type for messages: the path of the
/// `#[yieldable]` function (`my_server::handle`) for the handlers it makes,
/// the whole type name for any other.
fn handler_name<H>() -> &'static str {
    let name = any::type_name::<H>();
    let Some(start) = name.find("HandlerFn<").map(|at| at + "HandlerFn<".len()) else {
        return name;
    };
    let function = &name[start..];
    function
        .find("::{{closure}}")
        .map_or(function, |end| &function[..end])
}
