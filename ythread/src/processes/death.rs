//! How a worker process ended, in words: "killed by SIGSEGV (segmentation
//! fault)", "exited with status 3", with the memory limit named when an
//! abort may be a failed allocation. An [`OffloadError`](crate::OffloadError)
//! of kind `WorkerDied` holds one.

use std::fmt;

use super::output::Cause;

/// How a worker process ended (also as a remote worker reports it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Death {
    /// The exit code, if it exited.
    pub(crate) code: Option<i32>,
    /// The signal that killed it, if one did.
    pub(crate) signal: Option<i32>,
    /// The memory limit the worker ran under, in bytes, if one was set: an
    /// allocation beyond it fails, and Rust aborts (SIGABRT).
    pub(crate) memory_limit: Option<u64>,
    /// What its last words said it died of, if it aborted saying so.
    pub(crate) cause: Option<Cause>,
}

impl Death {
    /// Whether the process ended of its own doing (a fault, an abort, an
    /// exit), rather than by a signal sent from outside (`SIGKILL`,
    /// `SIGTERM`, ...).
    pub(crate) fn self_inflicted(&self) -> bool {
        match self.signal {
            Some(signal) => matches!(
                signal,
                libc::SIGABRT
                    | libc::SIGSEGV
                    | libc::SIGBUS
                    | libc::SIGILL
                    | libc::SIGFPE
                    | libc::SIGSYS
                    | libc::SIGTRAP
            ),
            None => self.code.is_some(),
        }
    }
}

impl fmt::Display for Death {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.signal, self.code) {
            (Some(signal), _) => {
                write!(f, "killed by {}", signal_name(signal))?;
                match signal {
                    libc::SIGSEGV => f.write_str(" (segmentation fault)")?,
                    libc::SIGBUS => f.write_str(" (bus error)")?,
                    libc::SIGABRT if self.cause == Some(Cause::StackOverflow) => {
                        f.write_str(" (a stack overflow: the work ran out of stack)")?;
                    }
                    libc::SIGABRT if self.cause == Some(Cause::OutOfMemory) => {
                        f.write_str(" (out of memory: an allocation failed")?;
                        if let Some(limit) = self.memory_limit {
                            write!(f, ", under the memory limit of {} MiB", limit >> 20)?;
                        }
                        f.write_str(")")?;
                    }
                    libc::SIGABRT => {
                        f.write_str(" (aborted")?;
                        if let Some(limit) = self.memory_limit {
                            write!(
                                f,
                                "; with a memory limit of {} MiB, a failed allocation aborts too",
                                limit >> 20
                            )?;
                        }
                        f.write_str(")")?;
                    }
                    libc::SIGKILL => f.write_str(
                        " (the kernel's out-of-memory killer, another process, or the work \
                         itself)",
                    )?,
                    _ => {}
                }
                Ok(())
            }
            (None, Some(code)) => write!(f, "exited with status {code}"),
            (None, None) => f.write_str("ended without an exit status"),
        }
    }
}

/// `SIGSEGV` for 11, and so on: the names a Unix user knows signals by.
fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}
