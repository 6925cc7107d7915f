//! `SIGPIPE`, which a write to a pipe with no reader raises: Rust programs
//! ignore it (std does before `main`), but one that restored its default
//! action (as command-line tools do, to end quietly when piped to `head`)
//! would be killed by a write to a dead worker's pipe, or by the relay of a
//! worker's output to a stderr nobody reads any more. ythread's writes
//! block it instead: they fail with `EPIPE`, and the process lives on.

/// Blocks `SIGPIPE` for good on this thread, one of ythread's own (the
/// relay of a worker's output): a `SIGPIPE` raised on it stays pending, and
/// is never delivered.
pub(crate) fn block_for_this_thread() {
    // SAFETY: `pthread_sigmask` reads the set it is given; the old mask is
    // not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set(), std::ptr::null_mut()) };
}

/// Whether `SIGPIPE`'s action is the default one, which ends the process.
pub(crate) fn kills() -> bool {
    // SAFETY: queries the action into a zeroed `sigaction`; changes nothing.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut action) == 0
            && action.sa_sigaction == libc::SIG_DFL
    }
}

/// `SIGPIPE` blocked on this thread while it lives; a `SIGPIPE` raised
/// meanwhile (by a write to a pipe with no reader, which then fails with
/// `EPIPE`) is taken off the thread before the old mask comes back, so it
/// is never delivered.
pub(crate) struct Blocked {
    old: libc::sigset_t,
}

impl Blocked {
    pub(crate) fn new() -> Blocked {
        // SAFETY: `pthread_sigmask` writes the old mask into the zeroed set
        // it is given; the new one holds `SIGPIPE` alone.
        unsafe {
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set(), &mut old);
            Blocked { old }
        }
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        // SAFETY: `sigtimedwait` with a zero timeout only takes a pending
        // `SIGPIPE` of this thread, if any (it was blocked, so none was
        // delivered); then the old mask is restored.
        unsafe {
            if libc::sigismember(&self.old, libc::SIGPIPE) == 0 {
                let zero = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                while libc::sigtimedwait(&set(), std::ptr::null_mut(), &zero) == libc::SIGPIPE {}
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

fn set() -> libc::sigset_t {
    // SAFETY: initialises a zeroed set, then adds one signal to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        set
    }
}
