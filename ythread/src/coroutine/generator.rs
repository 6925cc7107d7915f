//! [`Generator`]: a handler's body running on its coroutine, stepped by
//! hand or by the driving loop (`handler.rs`'s `drive`), which hands each
//! yielded job to the strategy and resumes the body with the result.
//!
//! The generator knows nothing of handlers or strategies: it runs a closure
//! that receives the [`Context`] it suspends through, as corosensei's
//! `Coroutine::with_stack` runs one that receives its `Yielder`.

use std::any::Any;
use std::fmt;
use std::io::{self, Write};
use std::mem::{self, ManuallyDrop};
use std::panic::{self, AssertUnwindSafe};

use corosensei::{Coroutine, CoroutineResult, Yielder};

use super::context::Context;
use super::stack::{self, Label, Running, Stack, overflow};
use crate::error::HandlerDropped;
use crate::job::{ErasedJob, Job};

/// How a handler's body ended: its value, or the payload it panicked with
/// (caught on the coroutine, so that the driver decides what to do with it).
type Outcome<T> = Result<T, Box<dyn Any + Send + 'static>>;

/// How many times a handler being dropped may catch [`HandlerDropped`] and
/// offload again before the process is aborted. A few, so that a handler
/// that retries a bounded number of times still ends normally.
const REOFFLOADS_WHILE_DROPPED: usize = 16;

/// A started handler, stepped by hand: the Rust face of the Python generator
/// the 2009 "yieldable threads" post drives.
///
/// Each [`resume`](Generator::resume) runs the handler until its next
/// `offload!` point, which arrives as [`GeneratorState::Yielded`] with the
/// work as a [`Job`], or until it returns ([`GeneratorState::Complete`]).
/// The job borrows the generator, so the handler cannot be resumed (or
/// dropped) before the job has been run or dropped; if it is dropped without
/// running, the handler panics at its `offload!` point when resumed.
///
/// # Dropping a generator
///
/// Dropping a generator whose handler is suspended unwinds the handler's
/// stack: the `offload!` point where it waits unwinds with
/// [`HandlerDropped`](crate::HandlerDropped) (silently: the panic hook is not
/// called), the destructors of its locals run as if it had panicked there,
/// and its coroutine stack is returned for reuse. Dropping never panics and
/// never hangs:
///
/// - a handler that catches that unwind and ends anyway (returns, or panics
///   with a payload of its own) has ended: its value or payload is dropped
///   (a panic of its own has been reported by the panic hook, as any panic
///   is);
/// - every `offload!` or `try_offload!` it reaches while being dropped
///   unwinds again at once, without running work;
/// - a handler that catches the unwind and offloads again, over and over,
///   would never end: after 16 such attempts the process is aborted with a
///   message naming the handler.
///
/// So a handler that recovers from failed work should use `try_offload!`,
/// which cannot swallow the drop, or re-raise a caught payload that
/// `is::<HandlerDropped>()`.
///
/// # `Send`
///
/// A generator is neither `Send` nor `Sync`: the handler's coroutine never
/// moves to another thread, so its thread-locals stay sound. Only jobs cross
/// threads.
///
/// # Example
///
/// ```
/// use ythread::{GeneratorState, Yieldable, offload, yieldable};
///
/// fn double(x: u32) -> u32 { 2 * x }
///
/// #[yieldable]
/// fn twice(x: u32) -> u32 {
///     let y = offload!(double, x);
///     offload!(double, y)
/// }
///
/// let mut generator = twice(5).start();
/// let mut jobs = 0;
/// let result = loop {
///     match generator.resume() {
///         GeneratorState::Yielded(job) => { jobs += 1; job.run() }
///         GeneratorState::Complete(value) => break value,
///     }
/// };
/// assert_eq!((jobs, result), (2, 20));
/// ```
///
/// The job borrows the generator: resuming the handler before its work is
/// done does not compile.
///
/// ```compile_fail,E0499
/// use ythread::{GeneratorState, Yieldable, offload, yieldable};
///
/// #[yieldable]
/// fn one() -> u32 { offload!(|| 1) }
///
/// let mut generator = one().start();
/// if let GeneratorState::Yielded(job) = generator.resume() {
///     generator.resume(); // error: `generator` is still borrowed by `job`
///     job.run();
/// }
/// ```
///
/// Nor does moving a started handler to another thread:
///
/// ```compile_fail,E0277
/// use ythread::{Yieldable, offload, yieldable};
///
/// #[yieldable]
/// fn one() -> u32 { offload!(|| 1) }
///
/// let mut generator = one().start();
/// std::thread::spawn(move || generator.resume()); // error: `Generator` is not `Send`
/// ```
pub struct Generator<T> {
    /// Taken only by `drop`, to recycle its stack. The body catches its own
    /// panics, so the coroutine always returns: the driver decides what to
    /// do with a panic, and a panic never ends a dropped handler abruptly.
    coroutine: ManuallyDrop<Coroutine<(), ErasedJob, Outcome<T>, Stack>>,
    /// The job the handler is suspended on, if it is suspended: marked by
    /// `drop` to make the handler unwind.
    suspended_on: Option<ErasedJob>,
    /// The stack size asked for, under which the stack is recycled.
    stack_size: usize,
    /// Names the handler in messages (computed only then: it searches the
    /// type name).
    handler: fn() -> &'static str,
    /// Travels with the stack; names this handler if it overflows it. Taken
    /// only by `drop`, with the stack.
    label: ManuallyDrop<Label>,
}

/// What [`Generator::resume`] returns.
#[derive(Debug)]
pub enum GeneratorState<'g, T> {
    /// The handler reached an `offload!` point and is suspended until the
    /// job has been dealt with.
    Yielded(Job<'g>),
    /// The handler returned this value.
    Complete(T),
}

impl<T> Generator<T> {
    /// Starts `body` on a coroutine of `stack_size` bytes; `name` names the
    /// handler in messages (an overflow, an endless drop).
    pub(crate) fn new<F>(body: F, stack_size: usize, name: fn() -> &'static str) -> Self
    where
        F: FnOnce(&Context<'_>) -> T + 'static,
        T: 'static,
    {
        // SAFETY: the body borrows nothing (`'static`), so no borrow can end
        // while the coroutine is alive, even if the generator is leaked.
        unsafe { Self::new_unchecked(body, stack_size, name) }
    }

    /// Starts `body` on a coroutine without requiring `'static`.
    ///
    /// # Safety
    ///
    /// Whatever `body` borrows must outlive the generator, and the generator
    /// must be dropped (not leaked with `mem::forget`) before those borrows
    /// end: a leaked, suspended body could otherwise hold, for example, a
    /// scoped thread that keeps using the borrowed data.
    pub(crate) unsafe fn new_unchecked<F>(
        body: F,
        stack_size: usize,
        name: fn() -> &'static str,
    ) -> Self
    where
        F: FnOnce(&Context<'_>) -> T,
    {
        overflow::install();
        let (stack, label) = stack::acquire(stack_size);
        label.name(name);
        let row = label.row();
        let body = move |yielder: &Yielder<(), ErasedJob>, ()| {
            let cx = Context::new(yielder);
            // Lets `ythread::offload` and `run` find this handler from any
            // call depth while its body runs (unwinding included). Declared
            // after `cx`, so it is dropped (and the context unpublished)
            // before `cx`, and after the body, whose value and panic payload
            // leave this stack: no user code runs here once it is dropped.
            let _running = Running::publish(row, &cx);
            panic::catch_unwind(AssertUnwindSafe(|| body(&cx)))
        };
        // SAFETY: forwarded to our caller, who guarantees the borrows outlive
        // the coroutine, which `Drop` always unwinds or finds finished. (The
        // one exception, a never-started handler whose argument's destructor
        // panicked, is leaked with its stack: no frame on it borrows
        // anything, and leaking the rest of its arguments is safe.)
        let coroutine = unsafe { Coroutine::with_stack_unchecked(stack, body) };
        Generator {
            coroutine: ManuallyDrop::new(coroutine),
            suspended_on: None,
            stack_size,
            handler: name,
            label: ManuallyDrop::new(label),
        }
    }

    /// Runs the handler until its next `offload!` point or its end.
    ///
    /// # Panics
    ///
    /// Propagates a panic of the handler (including a panic of offloaded work
    /// that the handler does not catch). Panics if called again after
    /// [`GeneratorState::Complete`] or after such a panic.
    #[inline]
    pub fn resume(&mut self) -> GeneratorState<'_, T> {
        match self.resume_coroutine() {
            // SAFETY: the handler is now suspended inside `offload`, whose
            // work slot stays alive until the coroutine is resumed or dropped.
            // Both need `&mut self`, which the returned `Job<'_>` borrows.
            CoroutineResult::Yield(job) => GeneratorState::Yielded(unsafe { job.as_job() }),
            CoroutineResult::Return(Ok(value)) => GeneratorState::Complete(value),
            // The panic hook already ran where the panic started.
            CoroutineResult::Return(Err(payload)) => panic::resume_unwind(payload),
        }
    }

    /// Resumes the coroutine and notes the job it suspends on.
    #[inline]
    fn resume_coroutine(&mut self) -> CoroutineResult<ErasedJob, Outcome<T>> {
        let result = self.coroutine.resume(());
        // Left stale once the handler has returned: only read while it is
        // suspended.
        if let CoroutineResult::Yield(job) = result {
            self.suspended_on = Some(job);
        }
        result
    }

    /// Whether the handler has returned (or panicked).
    pub fn is_complete(&self) -> bool {
        self.coroutine.done()
    }

    /// Unwinds a suspended handler: marks the job it waits on as dropped and
    /// resumes it, which makes its `offload!` point unwind with
    /// [`HandlerDropped`], until it has ended.
    ///
    /// A handler may catch that unwind. If it then ends, by returning or by
    /// panicking with a payload of its own, it has ended: its value or its
    /// payload is dropped here (a destructor must not panic; the panic hook
    /// has already reported a new panic). If it offloads again, that
    /// `offload!` unwinds again at once; if it keeps doing so, it would never
    /// end, and the process is aborted with a message.
    #[cold]
    fn unwind_suspended(&mut self) {
        for _ in 0..=REOFFLOADS_WHILE_DROPPED {
            if let Some(job) = self.suspended_on {
                // Drops the unrun work or its unread result, whose destructor
                // may panic; the slot is marked all the same.
                without_panicking(|| {
                    // SAFETY: the coroutine is suspended on `job` (noted by
                    // the last resume), and no `Job` made from it is alive:
                    // making one borrows the generator, which `drop` now holds
                    // mutably.
                    unsafe { job.mark_dropped() }
                });
            }
            match self.resume_coroutine() {
                // Caught the unwind and offloaded again: its job is not run.
                CoroutineResult::Yield(_) => continue,
                CoroutineResult::Return(Ok(value)) => {
                    without_panicking(|| drop(value));
                    return;
                }
                CoroutineResult::Return(Err(payload)) => {
                    discard(payload);
                    return;
                }
            }
        }
        let _ = writeln!(
            io::stderr(),
            "ythread: the handler `{}` was dropped while suspended, but it caught the unwind \
             that drops it and offloaded again {REOFFLOADS_WHILE_DROPPED} times; it would never \
             finish dropping, so the process is aborted. Recover from failed work with \
             `try_offload!`, or let a caught payload that `is::<ythread::HandlerDropped>()` \
             go on with `std::panic::resume_unwind`.",
            (self.handler)(),
        );
        std::process::abort();
    }
}

/// Drops the payload a dropped handler ended with.
fn discard(payload: Box<dyn Any + Send + 'static>) {
    if !payload.is::<HandlerDropped>() {
        without_panicking(move || drop(payload));
    }
}

/// Runs `f`, which drops the user's values while a generator is dropped:
/// a destructor that panics there must not make `drop` panic (nor abort the
/// process, when the generator is dropped during an unwind). The panic hook
/// has reported the panic; its payload is dropped, and forgotten only if
/// dropping it panics too (a payload whose own destructor panics).
/// Returns whether `f` completed.
fn without_panicking(f: impl FnOnce()) -> bool {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => true,
        Err(payload) => {
            if let Err(again) = panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                mem::forget(again);
            }
            false
        }
    }
}

impl<T> Drop for Generator<T> {
    fn drop(&mut self) {
        if self.coroutine.started() && !self.coroutine.done() {
            self.unwind_suspended();
        }
        // SAFETY: `coroutine` and `label` are not used again after being
        // taken here.
        let (mut coroutine, label) = unsafe {
            (
                ManuallyDrop::take(&mut self.coroutine),
                ManuallyDrop::take(&mut self.label),
            )
        };
        // The coroutine has now ended, or never started: then this drops the
        // handler (its arguments) without running it. It is never called on
        // a suspended coroutine, whose unwind the body's `catch_unwind` would
        // catch.
        if without_panicking(|| coroutine.force_unwind()) {
            stack::release(self.stack_size, coroutine.into_stack(), label);
        } else {
            // An argument's destructor panicked half way: corosensei does
            // not count the coroutine as ended, and would drop its arguments
            // again. It never ran, so nothing on its stack borrows anything:
            // leak it, stack included.
            mem::forget(coroutine);
        }
    }
}

impl<T> fmt::Debug for Generator<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generator")
            .field("started", &self.coroutine.started())
            .field("complete", &self.coroutine.done())
            .finish()
    }
}
