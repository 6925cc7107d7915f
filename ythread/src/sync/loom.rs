//! The one place that picks between the real primitives and loom's models of
//! them, as tokio's `src/loom/` does: under `--cfg loom` (`scripts/loom`),
//! the model checker's types, so that it explores every interleaving of the
//! code that uses them; otherwise parking_lot's lock and std's atomics,
//! `Arc` and threads.
//!
//! Code modelled by loom (`semaphore.rs`, `steer.rs`, `latch.rs`) takes all of its
//! primitives from here. Other code takes only [`Mutex`] (through
//! `crate::sync`), so that the whole crate builds under `--cfg loom`.

#[cfg(not(loom))]
mod imp {
    pub(crate) use parking_lot::Mutex;
    // (Only `remote/` names a guard's type.)
    #[allow(unused_imports)]
    pub(crate) use parking_lot::MutexGuard;
    pub(crate) use std::sync::Arc;
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
    pub(crate) use std::thread;
}

#[cfg(loom)]
mod imp {
    pub(crate) use ::loom::sync::Arc;
    #[allow(unused_imports)]
    pub(crate) use ::loom::sync::MutexGuard;
    pub(crate) use ::loom::sync::atomic::{AtomicBool, AtomicU8, Ordering};
    pub(crate) use ::loom::thread;

    /// loom's mutex, with parking_lot's `lock` (no poisoning).
    pub(crate) struct Mutex<T>(::loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(::loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Mutex::new(T::default())
        }
    }
}

pub(crate) use imp::*;
