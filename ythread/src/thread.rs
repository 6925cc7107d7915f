//! `YieldableThread`: an OS thread that drives one handler with one
//! strategy.

use std::io;
use std::thread::{self, JoinHandle};

use crate::apply::{Apply, Inline};
use crate::coroutine::default_stack_size;
use crate::handler::Yieldable;

/// Builds and spawns an OS thread that runs a handler, handing each piece of
/// its offloaded work to a strategy: the `YieldableThread` of the 2009
/// "yieldable threads" post this crate comes from (see the crate docs).
///
/// Shaped like [`std::thread::Builder`]: configure, then
/// [`spawn`](YieldableThread::spawn), which returns a standard
/// [`JoinHandle`]. The thread does its blocking I/O itself, in the handler's
/// straight-line code; only the work behind `offload!` goes to the strategy.
/// The default strategy is [`Inline`], so a handler behaves like plain
/// threaded code until whoever starts it picks another.
///
/// A plain closure can be spawned too: it runs as an ordinary thread.
///
/// # Example
///
/// ```
/// use ythread::{Pool, YieldableThread, offload, yieldable};
///
/// fn sumn(n: u64) -> u64 { (1..=n).sum() }
///
/// #[yieldable]
/// fn handle(n: u64) -> u64 {
///     offload!(sumn, n)
/// }
///
/// let thread = YieldableThread::new()
///     .name("handler-1".into())
///     .apply(Pool::new(2))
///     .spawn(handle(100))
///     .expect("spawn failed");
/// assert_eq!(thread.join().unwrap(), 5050);
/// ```
#[derive(Debug)]
#[must_use = "must eventually spawn the thread"]
pub struct YieldableThread<A = Inline> {
    thread: thread::Builder,
    /// `None`: [`default_stack_size`], read on the new thread.
    coroutine_stack_size: Option<usize>,
    apply: A,
}

impl YieldableThread<Inline> {
    /// A thread that runs work [`Inline`], with std's default thread settings
    /// and a [`DEFAULT_STACK_SIZE`](crate::DEFAULT_STACK_SIZE) coroutine stack.
    pub fn new() -> Self {
        YieldableThread {
            thread: thread::Builder::new(),
            coroutine_stack_size: None,
            apply: Inline,
        }
    }
}

impl Default for YieldableThread<Inline> {
    fn default() -> Self {
        YieldableThread::new()
    }
}

impl<A> YieldableThread<A>
where
    A: Apply + Send + 'static,
{
    /// Names the thread, as [`std::thread::Builder::name`] does (and takes
    /// what it takes: a name with a NUL byte makes
    /// [`spawn`](YieldableThread::spawn) panic, as std's does).
    pub fn name(mut self, name: String) -> Self {
        self.thread = self.thread.name(name);
        self
    }

    /// Sets the OS thread's stack size, as [`std::thread::Builder::stack_size`]
    /// does. Work run [`Inline`] or under [`Bounded`](crate::Bounded) runs on
    /// this stack.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.thread = self.thread.stack_size(bytes);
        self
    }

    /// Sets the size of the coroutine stack the handler itself runs on
    /// (rounded up to whole pages, plus a guard page), unless the handler
    /// asked for its own with
    /// [`Yieldable::with_stack_size`](crate::Yieldable::with_stack_size).
    /// The default is [`DEFAULT_STACK_SIZE`](crate::DEFAULT_STACK_SIZE).
    pub fn coroutine_stack_size(mut self, bytes: usize) -> Self {
        self.coroutine_stack_size = Some(bytes);
        self
    }

    /// Picks the strategy that runs the handler's offloaded work: any
    /// [`Apply`]: a built-in strategy, a reference, `Box` or `Arc` of one
    /// (`Arc<dyn Apply + Send + Sync>` for one picked at run time), or a
    /// closure through [`apply_fn`](crate::apply_fn).
    pub fn apply<B>(self, apply: B) -> YieldableThread<B>
    where
        B: Apply + Send + 'static,
    {
        YieldableThread {
            thread: self.thread,
            coroutine_stack_size: self.coroutine_stack_size,
            apply,
        }
    }

    /// Spawns the thread, which runs `handler` to completion.
    ///
    /// The handler is only *moved* to the new thread before it starts; its
    /// coroutine is created there and never leaves it.
    ///
    /// # Errors
    ///
    /// Fails if the OS cannot create the thread, as
    /// [`std::thread::Builder::spawn`] does.
    ///
    /// # Panics
    ///
    /// Panics if the thread's [`name`](YieldableThread::name) has a NUL
    /// byte, as std's `spawn` does.
    pub fn spawn<H>(self, handler: H) -> io::Result<JoinHandle<H::Output>>
    where
        H: Yieldable + Send + 'static,
        H::Output: Send + 'static,
    {
        let YieldableThread {
            thread,
            coroutine_stack_size,
            apply,
        } = self;
        thread.spawn(move || {
            let stack_size = coroutine_stack_size.unwrap_or_else(default_stack_size);
            handler.__drive(&apply, stack_size)
        })
    }
}

/// Spawns a [`YieldableThread`] that runs `handler` with the [`Inline`]
/// strategy, like [`std::thread::spawn`].
///
/// # Panics
///
/// Panics if the OS cannot create the thread; use [`YieldableThread::spawn`]
/// to handle that error.
pub fn spawn<H>(handler: H) -> JoinHandle<H::Output>
where
    H: Yieldable + Send + 'static,
    H::Output: Send + 'static,
{
    YieldableThread::new()
        .spawn(handler)
        .expect("failed to spawn thread")
}
