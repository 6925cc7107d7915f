//! What lets a strategy shut down while calls race to enter it: a `Gate`
//! that can be closed, and that counts the calls inside, so that whoever
//! closes it can wait until none is left. `Pool` and `Processes` use it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_utils::Backoff;

#[derive(Debug, Default)]
pub(crate) struct Gate {
    closed: AtomicBool,
    inside: AtomicUsize,
}

/// A call inside the gate; leaves it when dropped (also on unwinding).
pub(crate) struct Pass<'a>(&'a Gate);

impl Gate {
    /// Enters, unless the gate is closed. The call counts itself in before
    /// it looks at `closed`, and `close` sets `closed` before it reads the
    /// count (all `SeqCst`): either the call sees the gate closed, or
    /// `wait_empty` waits for it.
    #[inline]
    pub(crate) fn enter(&self) -> Option<Pass<'_>> {
        self.inside.fetch_add(1, Ordering::SeqCst);
        let pass = Pass(self);
        (!self.closed.load(Ordering::SeqCst)).then_some(pass)
    }

    /// Closes the gate; true for the first caller.
    pub(crate) fn close(&self) -> bool {
        !self.closed.swap(true, Ordering::SeqCst)
    }

    /// Once closed: waits until the calls that entered have left. (A call
    /// may stay as long as the work ahead of it takes: the wait spins a
    /// little, then sleeps.)
    pub(crate) fn wait_empty(&self) {
        let backoff = Backoff::new();
        while self.inside.load(Ordering::SeqCst) != 0 {
            if backoff.is_completed() {
                std::thread::sleep(Duration::from_millis(1));
            } else {
                backoff.snooze();
            }
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

impl Drop for Pass<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.inside.fetch_sub(1, Ordering::SeqCst);
    }
}
