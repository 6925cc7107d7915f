//! One worker process, seen from the parent: starting it (re-executing the
//! program in worker mode), its channel, and reaping it.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::frame::{self, HELLO, PROTOCOL, ReadError};
use crate::error::Death;

/// The environment variable that tells a process it is a worker, and its
/// protocol version and maximum frame size: `1:67108864`.
pub(crate) const WORKER_ENV: &str = "YTHREAD_WORKER";

/// The descriptor on which a worker finds its channel to the parent.
pub(crate) const CHANNEL_FD: i32 = 3;

/// How to start a worker.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) max_frame: usize,
    /// How long a worker may take from `exec` to its hello.
    pub(crate) start_timeout: Duration,
}

/// A running worker process and the parent's end of its channel.
#[derive(Debug)]
pub(crate) struct Worker {
    child: Child,
    pub(crate) stream: UnixStream,
    /// The frame buffer, kept between calls.
    pub(crate) buf: Vec<u8>,
    /// Calls it has answered.
    pub(crate) served: u64,
    memory_limit: Option<u64>,
}

impl Worker {
    /// Starts a worker and waits for its hello.
    ///
    /// Must be called from a thread that outlives the worker: the worker is
    /// killed when the thread that started it exits (`PR_SET_PDEATHSIG` is
    /// per thread on Linux), which is how workers die with their parent.
    pub(crate) fn start(spec: &Spec) -> Result<Worker, String> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .env(WORKER_ENV, format!("{PROTOCOL}:{}", spec.max_frame))
            .stdin(Stdio::null())
            // A worker's own `println!` must not reach the channel (which is
            // not stdout anyway) nor be lost: it goes to the parent's stderr.
            .stdout(stderr_handle().map_err(|e| format!("dup stderr: {e}"))?);
        let fd = theirs.as_raw_fd();
        let parent = std::process::id();
        let memory_limit = spec.memory_limit;
        // SAFETY: the closure runs in the child between `fork` and `exec`,
        // where only async-signal-safe calls are allowed: `dup2`, `fcntl`,
        // `prctl`, `getppid` and `setrlimit` are system calls, and nothing
        // here allocates or takes a lock.
        unsafe {
            command.pre_exec(move || {
                if fd == CHANNEL_FD {
                    // Already in place: only clear close-on-exec.
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, CHANNEL_FD) == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before `prctl`: then no signal
                // will come.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::other("the parent process is gone"));
                }
                if let Some(bytes) = memory_limit {
                    let limit = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &limit) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", spec.program.display()))?;
        drop(theirs);
        let mut worker = Worker {
            child,
            stream: ours,
            buf: Vec::new(),
            served: 0,
            memory_limit,
        };
        match worker.hello(spec) {
            Ok(()) => Ok(worker),
            Err(why) => {
                let death = worker.reap(Duration::from_millis(200));
                Err(format!(
                    "the worker process {why} ({death}); a program that uses `Processes` must \
                     call `ythread::processes::init()` first thing in `main`, so that a worker \
                     starts serving before the program's own code runs"
                ))
            }
        }
    }

    /// Waits for the worker's hello.
    fn hello(&mut self, spec: &Spec) -> Result<(), String> {
        let deadline = Instant::now() + spec.start_timeout;
        let (kind, body) = frame::read(
            &mut self.stream,
            &mut self.buf,
            spec.max_frame,
            Some(deadline),
        )
        .map_err(|error| match error {
            ReadError::Closed => "ended before it was ready".to_owned(),
            ReadError::TimedOut => {
                format!("did not say it was ready within {:?}", spec.start_timeout)
            }
            other => format!("sent a malformed hello: {other}"),
        })?;
        let (protocol, _pid) = match (kind, frame::parse_hello(body)) {
            (HELLO, Ok(hello)) => hello,
            _ => return Err("sent a malformed hello".to_owned()),
        };
        if protocol != PROTOCOL {
            return Err(format!(
                "speaks protocol {protocol}, not {PROTOCOL} (is it another build?)"
            ));
        }
        // No timeout on reads unless a call sets one.
        self.stream
            .set_read_timeout(None)
            .map_err(|e| format!("socket: {e}"))?;
        Ok(())
    }

    /// The worker's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `grace` for the worker to end by itself (it usually has
    /// already, when its channel closed), then kills it, and returns how it
    /// ended. Never leaves a zombie.
    pub(crate) fn reap(&mut self, grace: Duration) -> Death {
        let end = Instant::now() + grace;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(1)),
                Ok(None) => {
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
                Err(_) => break None,
            }
        };
        self.death(status)
    }

    /// Kills the worker (SIGKILL) and reaps it.
    pub(crate) fn kill(&mut self) -> Death {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        self.death(status)
    }

    fn death(&self, status: Option<ExitStatus>) -> Death {
        Death {
            code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            memory_limit: self.memory_limit,
        }
    }

    /// Asks the worker to stop: it sees the end of its channel once it is
    /// done with what it runs.
    pub(crate) fn close(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }
}

/// A handle on this process's stderr, for a child's stdout.
fn stderr_handle() -> io::Result<Stdio> {
    use std::os::fd::AsFd;
    Ok(Stdio::from(io::stderr().as_fd().try_clone_to_owned()?))
}
