//! The small tokio runtime inside a [`Remote`](super::Remote) or a
//! [`Worker`](super::Worker), usable from any thread.
//!
//! tokio's own `block_on` panics on a thread that runs an async runtime
//! ("Cannot start a runtime from within a runtime"), and dropping a runtime
//! there panics too. A tokio application builds and drops these anywhere,
//! and calls them from `spawn_blocking`: so futures run *on* the runtime
//! (spawned), the calling thread waits for their output on a plain channel,
//! and the runtime is shut down in the background when dropped.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use tokio::runtime::{Handle, Runtime};

/// The runtime threads of a connection's I/O.
pub(super) struct Io {
    /// `None` once dropped.
    runtime: Option<Runtime>,
}

impl Io {
    /// A runtime of `threads` threads.
    pub(super) fn new(name: &str, threads: usize) -> io::Result<Io> {
        Io::with_stack(name, threads, None)
    }

    /// A runtime of `threads` threads, whose threads (its blocking ones
    /// too) have stacks of `stack_size` bytes (`None`: tokio's default,
    /// 2 MiB).
    pub(super) fn with_stack(
        name: &str,
        threads: usize,
        stack_size: Option<usize>,
    ) -> io::Result<Io> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .worker_threads(threads)
            .thread_name(name)
            .enable_all();
        if let Some(stack_size) = stack_size {
            builder.thread_stack_size(stack_size);
        }
        let runtime = builder.build()?;
        Ok(Io {
            runtime: Some(runtime),
        })
    }

    pub(super) fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .expect("the runtime is only taken when dropped")
            .handle()
    }

    /// Runs `future` on the runtime and waits for its output on this
    /// thread, whatever the thread: a plain one, a `spawn_blocking` one, or
    /// an async runtime's (which is blocked meanwhile, as by any blocking
    /// call).
    ///
    /// # Errors
    ///
    /// If the runtime is shutting down and drops the future unfinished.
    pub(super) fn wait<F>(&self, future: F) -> io::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tell, output) = crossbeam_channel::bounded(1);
        self.handle().spawn(async move {
            let _ = tell.send(future.await);
        });
        output
            .recv()
            .map_err(|_| io::Error::other("the NATS connection's runtime is shut down"))
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        // Without waiting: waiting (what dropping a runtime does) panics on
        // a thread that runs an async runtime. Its thread ends by itself.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Polls `future` to completion on this thread, parking it while the future
/// waits. For futures that need no runtime of their own and are nearly
/// always ready at once: handing a message to the NATS client's channel,
/// whose first poll completes unless the channel is full. (Cheaper than
/// [`Io::wait`], which wakes the runtime's thread and then this one.)
pub(super) fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_runs_and_drops_inside_an_async_runtime() {
        let outer = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        outer.block_on(async {
            let io = Io::new("test-io", 1).unwrap();
            assert_eq!(io.wait(async { 7 }).unwrap(), 7);
            assert_eq!(block_on(async { 8 }), 8);
            drop(io);
        });
    }

    #[test]
    fn block_on_parks_until_woken() {
        let (tell, told) = tokio::sync::oneshot::channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tell.send(5).unwrap();
        });
        assert_eq!(block_on(told).unwrap(), 5);
        sender.join().unwrap();
    }
}
