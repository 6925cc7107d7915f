//! One worker process, seen from the parent: starting it (re-executing the
//! program in worker mode), its channel, and reaping it. (What runs in the
//! process is `child.rs`.)

use std::ffi::OsString;
use std::io::{self, PipeReader, PipeWriter};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Resource, Rlimit, Signal, WaitId, WaitIdOptions};

use super::death::Death;
use super::frame::{self, Exited, HELLO, PROTOCOL, ReadError, Watch};
use super::handoff::{CALLS_FD, REPLIES_FD, Setting, Start, WORKER_ENV, parent_death_signal};
use super::output::{self, Output, WorkerOutput};
use super::sigpipe;
use super::started::{STARTED_FD, Started};

/// How to start a worker.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub(crate) program: PathBuf,
    /// The worker's `argv[0]`, if not `program`.
    pub(crate) arg0: Option<OsString>,
    pub(crate) args: Vec<OsString>,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) max_frame: usize,
    /// The deepest nesting a worker decodes in arguments.
    pub(crate) max_depth: usize,
    /// Where the worker starts serving.
    pub(crate) start: Start,
    /// How long a worker may take from `exec` to its hello.
    pub(crate) start_timeout: Duration,
    /// Where its lines go; `None`: this process's stderr.
    pub(crate) worker_output: Option<WorkerOutput>,
}

/// Why a worker did not start.
#[derive(Debug)]
pub(crate) struct StartError {
    pub(crate) message: String,
    /// Killed from outside while it started, or not wanted any more: the
    /// next start may well succeed.
    pub(crate) transient: bool,
}

impl From<String> for StartError {
    fn from(message: String) -> StartError {
        StartError {
            message,
            transient: false,
        }
    }
}

/// Why a worker's hello did not come.
enum Hello {
    /// The strategy stopped meanwhile.
    Stopped,
    Failed(String),
}

/// A running worker process and the parent's end of its channel.
#[derive(Debug)]
pub(crate) struct Process {
    child: Child,
    /// Its number in its set (1, 2, ...: the supervisor's count of starts).
    number: usize,
    /// The number of the next call (replies carry it back).
    pub(crate) next_call: u32,
    /// How many calls were sent to it.
    pub(crate) sent: u64,
    /// Calls go out here; `None` once closed.
    calls: Option<PipeWriter>,
    /// Replies come in here.
    pub(crate) replies: PipeReader,
    /// The frame buffer, kept between calls.
    pub(crate) buf: Vec<u8>,
    /// Readable once the worker has ended.
    pidfd: Option<OwnedFd>,
    /// The number of the last call the worker started running.
    started: Started,
    memory_limit: Option<u64>,
    /// What it prints, relayed; `None` if the relay thread could not start
    /// (its output is then lost: writes to it fail).
    output: Option<Output>,
    /// Whether the worker was reaped, and how it ended.
    reaped: bool,
    status: Option<ExitStatus>,
}

impl Process {
    /// Starts a worker and waits for its hello.
    ///
    /// Must be called from a thread that outlives the worker: the worker is
    /// killed when the thread that started it exits (`PR_SET_PDEATHSIG` is
    /// per thread on Linux), which is how workers die with their parent.
    pub(crate) fn start(
        spec: &Spec,
        number: usize,
        stopping: &AtomicBool,
    ) -> Result<Process, StartError> {
        fill_closed_stdio();
        let pipe = |what: &str| io::pipe().map_err(|e| format!("pipe for {what}: {e}"));
        // The child's ends above the standard descriptors: a program that
        // closed one of those gets it back from `pipe`, and the child's
        // stdio set-up, which comes before `pre_exec`, would overwrite it.
        // (And the parent's, which would otherwise take the place of its
        // stdout or stderr: what it prints would go into a worker's pipe.)
        let (calls_in, calls_out) = pipe("calls")?;
        let (calls_in, calls_out) = (
            PipeReader::from(above_stdio(calls_in.into())?),
            PipeWriter::from(above_stdio(calls_out.into())?),
        );
        let (output_in, output_out) = pipe("output")?;
        let (output_in, output_out) = (
            PipeReader::from(above_stdio(output_in.into())?),
            PipeWriter::from(above_stdio(output_out.into())?),
        );
        let (replies_in, replies_out) = pipe("replies")?;
        let (replies_in, replies_out) = (
            PipeReader::from(above_stdio(replies_in.into())?),
            PipeWriter::from(above_stdio(replies_out.into())?),
        );
        let mut command = Command::new(&spec.program);
        if let Some(arg0) = &spec.arg0 {
            command.arg0(arg0);
        }
        let setting = Setting {
            max_frame: spec.max_frame,
            max_depth: spec.max_depth,
            parent: std::process::id(),
            start: spec.start,
        };
        command
            .args(&spec.args)
            .env(WORKER_ENV, setting.encode())
            // Its own process group, which the parent kills whole: what the
            // work starts (a subprocess of a decoder, say) ends with the
            // worker. (Nor does a terminal's Ctrl-C, sent to the foreground
            // group, reach workers: they stop with the program.)
            .process_group(0)
            .stdin(Stdio::null())
            // What a worker prints (its `println!`, its panics, what the work
            // starts) is relayed to the parent's stderr, each line labelled
            // (`output.rs`), and explains a death.
            .stdout(
                output_out
                    .try_clone()
                    .map_err(|e| format!("dup output pipe: {e}"))?,
            )
            .stderr(output_out);
        let (started, started_fd) =
            Started::new().map_err(|e| format!("shared memory for the call's start: {e}"))?;
        let started_fd = above_stdio(started_fd)?;
        let fds = [
            (calls_in.as_raw_fd(), CALLS_FD),
            (replies_out.as_raw_fd(), REPLIES_FD),
            (started_fd.as_raw_fd(), STARTED_FD),
        ];
        let parent = rustix::process::getpid();
        let memory_limit = spec.memory_limit;
        let death_signal = parent_death_signal();
        // SAFETY: the closure runs in the child between `fork` and `exec`,
        // where only async-signal-safe calls are allowed: `fcntl`, `dup2`
        // and `prctl` (libc's: they take descriptor numbers the child does
        // not own as Rust values, and a signal rustix has no name for), and
        // rustix's `getppid` and `setrlimit`, are system calls; nothing here
        // allocates (rustix's errors are numbers) or takes a lock.
        unsafe {
            command.pre_exec(move || {
                // Each is close-on-exec, and may sit where another must go:
                // all move out of the way first (to 10 and up), then each
                // goes to its place (`dup2` clears close-on-exec there).
                let mut moved = [0; 3];
                for (moved, (fd, _)) in moved.iter_mut().zip(fds) {
                    *moved = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                    if *moved == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                for (moved, (_, place)) in moved.into_iter().zip(fds) {
                    if libc::dup2(moved, place) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                // The worker kills its whole process group on this signal
                // (`child.rs`): what the work started dies with it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before `prctl`: then no signal
                // will come.
                if rustix::process::getppid() != Some(parent) {
                    // (No allocation here: `io::Error::other` would.)
                    return Err(Errno::SRCH.into());
                }
                if let Some(bytes) = memory_limit {
                    let limit = Rlimit {
                        current: Some(bytes),
                        maximum: Some(bytes),
                    };
                    rustix::process::setrlimit(Resource::As, limit)?;
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", spec.program.display()))?;
        // The child's ends, which only the child must hold: a reader of its
        // own replies would keep the parent from seeing the worker die, a
        // writer of its output the relay from seeing the output end. (The
        // command holds the output's ends.)
        drop((calls_in, replies_out, started_fd, command));
        let output = Output::relay(output_in, number, child.id(), spec.worker_output.clone());
        // Writes to the worker wait in `poll`, beside its end (`frame::write`).
        rustix::io::ioctl_fionbio(&calls_out, true)
            .map_err(|e| format!("a non-blocking pipe for calls: {e}"))?;
        // (Without it, the end of a worker is seen only as its channel's.)
        let pidfd = match rustix::process::pidfd_open(Pid::from_child(&child), PidfdFlags::empty())
        {
            Ok(pidfd) => above_stdio(pidfd).ok(),
            Err(error) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    eprintln!(
                        "ythread: no pidfd for worker processes (pidfd_open: {error}): the death \
                         of a worker whose channel a process it forked holds open is seen \
                         within 100 ms, not at once"
                    );
                });
                None
            }
        };
        let mut process = Process {
            child,
            number,
            next_call: 1,
            sent: 0,
            calls: Some(calls_out),
            replies: replies_in,
            buf: Vec::new(),
            pidfd,
            started,
            memory_limit,
            output: output.ok(),
            reaped: false,
            status: None,
        };
        match process.hello(spec, stopping) {
            Ok(()) => Ok(process),
            Err(Hello::Stopped) => {
                process.kill();
                Err(StartError {
                    message: "the strategy stopped while the worker started".to_owned(),
                    transient: true,
                })
            }
            Err(Hello::Failed(why)) => {
                let (death, killed) = process.end(Duration::from_millis(200));
                // Killed from outside as it started (an operator, the
                // out-of-memory killer): no sign yet that the program is at
                // fault (the message says what would be, if it keeps on).
                // (A limit too small for the program kills it by a fault or
                // an exit, self-inflicted, never by `SIGKILL`.)
                let transient = !death.self_inflicted() && death.signal.is_some() && !killed;
                let ended = if killed {
                    "it was still running its own code, and was killed".to_owned()
                } else {
                    death.to_string()
                };
                let needs = match spec.start {
                    Start::Load => format!(
                        "a worker is a program that links ythread, which serves before `main`; \
                         is `{}` one (this program, or one built from the same source)?",
                        spec.program.display()
                    ),
                    Start::Main => "this program calls `ythread::processes::init()`, so a \
                                    worker serves there: call it first thing in `main`, before \
                                    code that could end the program or start workers"
                        .to_owned(),
                };
                // A limit too small for the program itself kills it as it
                // loads (a failed mapping: SIGSEGV, SIGABRT).
                let limit = match spec.memory_limit {
                    Some(bytes) => format!(
                        "; or its memory limit of {} MiB (`ProcessesBuilder::memory_limit`) \
                         is too small for the program to start",
                        bytes >> 20
                    ),
                    None => String::new(),
                };
                Err(StartError {
                    message: format!("the worker process {why} ({ended}); {needs}{limit}"),
                    transient,
                })
            }
        }
    }

    /// Waits for the worker's hello.
    fn hello(&mut self, spec: &Spec, stopping: &AtomicBool) -> Result<(), Hello> {
        // (A time-out too far to add, `Duration::MAX`, is none.)
        let deadline = Instant::now().checked_add(spec.start_timeout);
        let exited = Some(exited(&self.pidfd, &self.child));
        // Until the hello comes: a strategy dropped meanwhile must not wait
        // for a slow start, so the wait looks at it every 50 ms.
        loop {
            if stopping.load(Ordering::Acquire) {
                return Err(Hello::Stopped);
            }
            let slice = Instant::now() + Duration::from_millis(50);
            let watch = Watch {
                deadline: Some(deadline.map_or(slice, |deadline| deadline.min(slice))),
                exited,
            };
            match frame::wait_readable(self.replies.as_fd(), watch) {
                Err(error)
                    if error.kind() == io::ErrorKind::TimedOut
                        && deadline.is_none_or(|deadline| Instant::now() < deadline) => {}
                // Ready, ended, or out of time: the read says which.
                _ => break,
            }
        }
        let (kind, _call, body) = frame::read(
            &mut self.replies,
            &mut self.buf,
            spec.max_frame,
            Watch { deadline, exited },
        )
        .map_err(|error| {
            Hello::Failed(match error {
                ReadError::Closed => "ended before it was ready".to_owned(),
                ReadError::TimedOut => {
                    format!("did not say it was ready within {:?}", spec.start_timeout)
                }
                other => format!("sent a malformed hello: {other}"),
            })
        })?;
        let (protocol, _pid) = match (kind, frame::parse_hello(body)) {
            (HELLO, Ok(hello)) => hello,
            _ => return Err(Hello::Failed("sent a malformed hello".to_owned())),
        };
        if protocol != PROTOCOL {
            return Err(Hello::Failed(format!(
                "speaks protocol {protocol}, not {PROTOCOL} (is it another build?)"
            )));
        }
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
        self.end(grace).0
    }

    /// [`reap`](Process::reap), and whether it had to be killed.
    pub(crate) fn end(&mut self, grace: Duration) -> (Death, bool) {
        let end = Instant::now() + grace;
        // Waits for the worker to end without reaping it: until it is
        // reaped its pid, which is its process group's id, cannot be given
        // to another process, so the group can be killed safely after.
        let killed = loop {
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
            match rustix::process::waitid(WaitId::Pid(self.group()), options) {
                Ok(Some(_)) => break false,
                Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(1)),
                Ok(None) => break true,
                // (Reaped already, by someone else: see `kill`.)
                Err(_) => break false,
            }
        };
        (self.kill(), killed)
    }

    /// Kills the worker and everything in its process group (SIGKILL),
    /// and reaps the worker; once reaped, returns how it ended.
    pub(crate) fn kill(&mut self) -> Death {
        if !self.reaped {
            // What the work started, and the worker if it still runs. Not
            // once the worker is reaped (here, or by someone else: then this
            // process has no such child): its pid may be another's by then.
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
            if let Err(Errno::CHILD) = rustix::process::waitid(WaitId::Pid(self.group()), options) {
                self.reaped = true;
                return self.death(None);
            }
            let _ = rustix::process::kill_process_group(self.group(), Signal::KILL);
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
            self.reaped = true;
        }
        self.death(self.status)
    }

    /// The worker's process group: its own pid.
    fn group(&self) -> Pid {
        Pid::from_child(&self.child)
    }

    /// Its number in its set, in the labels of what it prints.
    pub(crate) fn number(&self) -> usize {
        self.number
    }

    /// The call numbered `call`, which `designation` names (`f call 7`),
    /// is about to be sent to the worker: for the labels of what it prints
    /// running it.
    pub(crate) fn expect_call(&self, call: u32, designation: &Arc<str>) {
        if let Some(output) = &self.output {
            output.expect_call(call, Arc::clone(designation));
        }
    }

    /// The reply to call `call` was read, or will not come: what the
    /// worker prints from now on is not that call's.
    pub(crate) fn call_ended(&self, call: u32) {
        if let Some(output) = &self.output {
            output.call_ended(call);
        }
    }

    /// Waits up to `wait` for the relay of the worker's output to reach
    /// its end (every line handed on to stderr's queue).
    pub(crate) fn output_ended(&self, wait: Duration) {
        if let Some(output) = &self.output {
            output.last_lines(wait);
        }
    }

    fn death(&self, status: Option<ExitStatus>) -> Death {
        let signal = status.and_then(|s| s.signal());
        // An abort says why in its last lines: std's report of a stack
        // overflow or of a failed allocation. (The worker is dead: its
        // output ends at once, unless something the work started escaped
        // its process group with a copy of it. The wait is for the relay
        // thread to read that end, which a loaded machine can put off for
        // more than 100 ms; its full length is spent only in the escape
        // case.)
        let cause = match (signal, &self.output) {
            (Some(libc::SIGABRT), Some(output)) => {
                output::cause(&output.last_lines(Duration::from_secs(1)))
            }
            _ => None,
        };
        Death {
            cause,
            code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            memory_limit: self.memory_limit,
        }
    }

    /// Sends a finished frame; see [`frame::write`]. A worker that died
    /// makes it fail with `BrokenPipe`, never kill this process.
    pub(crate) fn send(
        &mut self,
        frame: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), (io::Error, usize)> {
        let Some(calls) = &mut self.calls else {
            return Err((io::ErrorKind::BrokenPipe.into(), 0));
        };
        // Rust programs ignore `SIGPIPE`; one that restored its default
        // action (as command-line tools do, to end quietly when piped to
        // `head`) would be killed by a write to a dead worker's pipe.
        let _blocked = sigpipe::kills().then(sigpipe::Blocked::new);
        let exited = Some(exited(&self.pidfd, &self.child));
        frame::write(calls, frame, Watch { deadline, exited })
    }

    /// Reads the worker's reply into `buf`, handing the events that come
    /// before it to `events`; see [`frame::read_reply`]. It ends when the
    /// worker does, even if a process it forked holds its end of the
    /// channel open.
    pub(crate) fn receive<'b>(
        &mut self,
        buf: &'b mut Vec<u8>,
        max: usize,
        deadline: Option<Instant>,
        events: &mut frame::OnEvent<'_>,
    ) -> Result<(u8, u32, &'b [u8]), ReadError> {
        let exited = Some(exited(&self.pidfd, &self.child));
        let watch = Watch { deadline, exited };
        frame::read_reply(&mut self.replies, buf, max, watch, events)
    }

    /// How to learn that the worker has ended: its pidfd, or (a kernel
    /// without them, before Linux 5.3, or a sandbox that denies them) its
    /// pid.
    pub(crate) fn exited(&self) -> Exited<'_> {
        exited(&self.pidfd, &self.child)
    }

    /// How many calls were sent to the worker.
    pub(crate) fn calls(&self) -> u64 {
        self.sent
    }

    /// Whether the worker started running the call numbered `call` (it may
    /// have run it, in part or whole), as opposed to dying before.
    pub(crate) fn started(&self, call: u32) -> bool {
        self.started.load() == call
    }

    /// Asks the worker to stop: it sees the end of its channel once it is
    /// done with what it runs.
    pub(crate) fn close(&mut self) {
        self.calls = None;
    }
}

impl Drop for Process {
    /// Never leaves a process behind, whatever path dropped it: kills it and
    /// its process group, and reaps it (a no-op once reaped).
    fn drop(&mut self) {
        self.kill();
    }
}

/// [`Process::exited`], from the fields it reads (for the methods that
/// borrow others at the same time).
fn exited<'p>(pidfd: &'p Option<OwnedFd>, child: &Child) -> Exited<'p> {
    match pidfd {
        Some(pidfd) => Exited::Pidfd(pidfd.as_fd()),
        None => Exited::Pid(Pid::from_child(child)),
    }
}

/// Opens `/dev/null` on any of the standard descriptors (0, 1, 2) that the
/// program closed, as std does before `main`: a descriptor a start opens
/// (a pipe of ythread's, std's own channel from the child before `exec`)
/// would otherwise take its place, and the program's writes to its stderr
/// would land in it. Writes to them are discarded, as they were.
fn fill_closed_stdio() {
    // Each open takes the lowest free number: a hole below 3 is filled, and
    // the first descriptor at 3 or above is closed again. (Never `dup2`,
    // which would replace what another thread opened meanwhile.)
    loop {
        // SAFETY: `open` takes a C string and flags and returns a new
        // descriptor or -1; one at 0-2 is the program's from now on (it is
        // never closed here), one above is closed at once.
        unsafe {
            let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if fd > 2 {
                libc::close(fd);
            }
            if !(0..=2).contains(&fd) {
                return;
            }
        }
    }
}

/// `fd`, or a copy of it above the standard descriptors (0, 1, 2) if it is
/// one of them (close-on-exec either way).
fn above_stdio(fd: OwnedFd) -> Result<OwnedFd, String> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    rustix::io::fcntl_dupfd_cloexec(&fd, 3).map_err(|e| format!("dup of a pipe: {e}"))
}
