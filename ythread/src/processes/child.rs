//! The child side of a worker process: what [`init`](super::init) runs in
//! it, serving the calls its parent sends until the parent closes the
//! channel. (The parent side is `process.rs`, which starts it, and
//! `call.rs`, which sends it calls.)

use std::io::{PipeReader, PipeWriter};
use std::os::fd::{FromRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use rustix::io::FdFlags;

use super::events::Outbox;
use super::frame::{self, CALL, DONE, HELLO, PANICKED, PROTOCOL, REFUSED, ReadError, Watch};
use super::handoff::{CALLS_FD, REPLIES_FD, Setting, WORKER_ENV, parent_death_signal};
use super::started::Started;
use crate::offloadable::{self, InvokeError, Lookup};

/// Serves calls on the channel the parent set up, until the parent closes
/// it. Returns the process's exit code.
pub(crate) fn serve(setting: Setting) -> i32 {
    let Setting { max_frame, .. } = setting;
    if !is_fifo(CALLS_FD) || !is_fifo(REPLIES_FD) {
        eprintln!(
            "ythread: {WORKER_ENV} names this process's parent, but descriptors {CALLS_FD} and \
             {REPLIES_FD} are not a worker's channel; exiting"
        );
        return 2;
    }
    // The worker kills its process group when its parent is gone: it must
    // lead one of its own (as its parent starts it), not its parent's.
    let pid = rustix::process::getpid();
    if rustix::process::getpgrp() != pid {
        eprintln!(
            "ythread: {WORKER_ENV} names this process's parent, but the process does not lead \
             a process group of its own; exiting"
        );
        return 2;
    }
    GROUP.store(pid.as_raw_nonzero().get(), Ordering::Relaxed);
    if !end_group_with_parent(setting.parent) {
        eprintln!("ythread: a worker could not watch for its parent's death; exiting");
        return 2;
    }
    let started = match Started::inherited() {
        Ok(started) => started,
        Err(error) => {
            eprintln!("ythread: {WORKER_ENV} names this process's parent, but {error}; exiting");
            return 2;
        }
    };
    // SAFETY: the parent placed its pipes at these descriptors for this
    // process (checked just above to be pipes), and nothing else in the
    // process owns them: they are open from `exec` on, so no file the
    // program opened before (code before `init`, other initialisers) can
    // sit there, and they are taken once, here (`SERVING`).
    let (calls, replies) = unsafe {
        (
            OwnedFd::from_raw_fd(CALLS_FD),
            OwnedFd::from_raw_fd(REPLIES_FD),
        )
    };
    // The worker's own child processes must not inherit the channel.
    for fd in [&calls, &replies] {
        let _ = rustix::io::fcntl_setfd(fd, FdFlags::CLOEXEC);
    }
    let mut calls = PipeReader::from(calls);
    // Replies go out through the outbox, which the work's events share.
    let outbox = Arc::new(Outbox::new(PipeWriter::from(replies)));
    #[cfg(feature = "tracing")]
    super::events::forward(&outbox);
    // `ps` shows workers as such (the parent starts them as
    // `/proc/self/exe`, which it would show as `exe`): `prctl(PR_SET_NAME)`
    // (at most 16 bytes, which this name is).
    let _ = rustix::thread::set_name(c"ythread-worker");
    // As std does before `main` (which a worker serving at load never
    // reaches): a write to a closed pipe or socket is an error, not death.
    // SAFETY: sets a signal's disposition; no handler is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // A stack overflow in the work is reported as one (std's words), which
    // the parent reads in the worker's last lines, serving at load or not.
    crate::coroutine::watch_main_stack();
    let mut out = Vec::new();
    frame::begin(&mut out, HELLO, 0);
    if frame::put(&mut out, &(PROTOCOL, std::process::id())).is_err()
        || frame::finish(&mut out, max_frame).is_err()
        || outbox.reply(&out, max_frame).is_err()
    {
        end_group();
    }
    let worker = Worker {
        max_frame,
        max_depth: setting.max_depth,
        started: &started,
        outbox: &outbox,
    };
    let mut input = Vec::new();
    loop {
        let (kind, call, body) =
            match frame::read(&mut calls, &mut input, max_frame, Watch::default()) {
                Ok(frame) => frame,
                // The parent closed the channel: it is done with this worker,
                // or it died.
                Err(ReadError::Closed) => end_group(),
                Err(error) => {
                    eprintln!("ythread worker: {error}; exiting");
                    return 2;
                }
            };
        if kind != CALL {
            eprintln!("ythread worker: unexpected frame kind {kind}; exiting");
            return 2;
        }
        worker.answer(call, body, &mut out);
        if outbox.reply(&out, max_frame).is_err() {
            end_group();
        }
        // Buffers grown for one large call are not kept.
        for buffer in [&mut out, &mut input] {
            if buffer.capacity() > 1 << 20 {
                *buffer = Vec::new();
            }
        }
    }
}

/// Whether `fd` is an open pipe. (libc's `fstat`: rustix's takes a borrowed
/// descriptor, which `fd` is not known to be until this says so.)
fn is_fifo(fd: i32) -> bool {
    // SAFETY: `fstat` only writes the `stat` it is given.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut stat) == 0 && (stat.st_mode & libc::S_IFMT) == libc::S_IFIFO
    }
}

/// Ends the worker once its parent is done with it or gone, with what the
/// work left running: its process group, itself included. (A parent that
/// died closes the channel before the kernel sends the worker
/// [`parent_death_signal`], and may never send it at all if the worker has
/// exited by then: the channel's end is the one sign that always comes.)
fn end_group() -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    kill_group();
    std::process::exit(0) // (not reached)
}

/// The parent's pid, for the handler of [`parent_death_signal`].
static PARENT: AtomicI32 = AtomicI32::new(0);

/// When the parent dies, the worker gets [`parent_death_signal`]: it then
/// kills its process group, itself and what the work started. (The signal
/// could not be `SIGKILL`, which ends the worker alone.) The same signal
/// from anyone else is ignored.
///
/// Returns `false` if the handler could not be installed.
fn end_group_with_parent(parent: u32) -> bool {
    extern "C" fn on_parent_death(
        _: libc::c_int,
        info: *mut libc::siginfo_t,
        _: *mut libc::c_void,
    ) {
        // The kernel sends it as from the parent's last thread: `SI_USER`,
        // with the parent's pid.
        // SAFETY: the kernel passes a valid `siginfo_t` to an `SA_SIGINFO`
        // handler.
        let (code, sender) = unsafe { ((*info).si_code, (*info).si_pid()) };
        if code == libc::SI_USER && sender == PARENT.load(Ordering::Relaxed) {
            kill_group();
        }
    }
    PARENT.store(parent as i32, Ordering::Relaxed);
    // SAFETY: installs a handler that reads its `siginfo_t` and makes one
    // async-signal-safe call.
    let installed = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_parent_death as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(parent_death_signal(), &action, std::ptr::null_mut()) == 0
    };
    // The parent may have died before the handler was there.
    if rustix::process::getppid().map(|pid| pid.as_raw_nonzero().get() as u32) != Some(parent) {
        kill_group();
    }
    installed
}

/// Kills this process's group, the worker (its leader) included.
fn kill_group() {
    // The group the worker led when it started (checked by `serve` before
    // anything can call this), by its number: the work may have moved the
    // worker to another group since, its parent's, say.
    let group = GROUP.load(Ordering::Relaxed);
    if group > 0 {
        // SAFETY: `kill` is async-signal-safe and has no memory effects.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
    // SAFETY: as above; the worker itself, wherever it is now.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

/// The process group the worker leads: its own pid.
static GROUP: AtomicI32 = AtomicI32::new(0);

/// What a worker serves calls with.
struct Worker<'w> {
    max_frame: usize,
    max_depth: usize,
    started: &'w Started,
    outbox: &'w Outbox,
}

impl Worker<'_> {
    /// Runs one call and writes the reply frame into `out`.
    fn answer(&self, call: u32, body: &[u8], out: &mut Vec<u8>) {
        let Worker {
            max_frame,
            max_depth,
            started,
            outbox,
        } = *self;
        answer(call, body, out, max_frame, max_depth, |call, level| {
            started.store(call);
            outbox.begin(call, level);
        });
        // What the work left in std's stdout buffer (`print!` without a
        // newline) is the call's: out before the reply, the parent labels
        // it so (`output.rs`). (A C library's `stdio` buffers are beyond
        // reach: what they hold goes out when they flush.) Nothing to write
        // costs no system call.
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
}

/// Runs one call and writes the reply frame into `out`; `start` is called
/// with the call's number and the level of events wanted back as it starts
/// (if it does).
fn answer(
    call: u32,
    body: &[u8],
    out: &mut Vec<u8>,
    max_frame: usize,
    max_depth: usize,
    start: impl FnOnce(u32, u8),
) {
    let (name, fingerprint, level, args) = match frame::parse_call(body) {
        Ok(call) => call,
        Err(error) => {
            return refuse(
                out,
                call,
                max_frame,
                frame::REFUSED_ARGUMENTS,
                format!("a malformed call: {error}"),
            );
        }
    };
    let registration = match offloadable::by_name(name) {
        Lookup::Found(registration) => registration,
        Lookup::Missing => {
            return refuse(
                out,
                call,
                max_frame,
                frame::REFUSED_UNREGISTERED,
                format!(
                    "the worker program has no `#[offloadable]` function `{name}` (is it \
                     another program, or another build?)"
                ),
            );
        }
        Lookup::Ambiguous => {
            return refuse(
                out,
                call,
                max_frame,
                frame::REFUSED_UNREGISTERED,
                format!("the worker program registers `{name}` twice"),
            );
        }
    };
    if registration.fingerprint != fingerprint {
        return refuse(
            out,
            call,
            max_frame,
            frame::REFUSED_FINGERPRINT,
            format!(
                "the worker's `{name}` has another signature, `{}` (is it another build?)",
                registration.signature
            ),
        );
    }
    frame::begin(out, DONE, call);
    // From here on the call may run: a death now is the call's.
    start(call, level);
    let invoked = panic::catch_unwind(AssertUnwindSafe(|| {
        (registration.invoke)(args, out, max_depth)
    }));
    match invoked {
        Ok(Ok(())) => {
            if let Err(size) = frame::finish(out, max_frame) {
                refuse(
                    out,
                    call,
                    max_frame,
                    frame::REFUSED_RESULT,
                    format!(
                        "it ran, but its result is {size} bytes, over the maximum frame of \
                         {max_frame} bytes (`ProcessesBuilder::max_frame`)"
                    ),
                );
            }
        }
        Ok(Err(error)) => {
            let reason = match error {
                InvokeError::Arguments(_) => frame::REFUSED_ARGUMENTS,
                InvokeError::Result(_) => frame::REFUSED_RESULT,
            };
            refuse(
                out,
                call,
                max_frame,
                reason,
                error.describe("ProcessesBuilder::max_depth"),
            );
        }
        Err(payload) => {
            // The panic hook has printed it, on this worker's stderr; the
            // parent gets its message.
            let message = crate::error::payload_text(&*payload)
                .unwrap_or("Box<dyn Any>")
                .to_owned();
            // Dropping the payload could panic again: keep it.
            std::mem::forget(payload);
            frame::begin(out, PANICKED, call);
            let _ = frame::put(out, &message);
            if frame::finish(out, max_frame).is_err() {
                let short: String = message.chars().take(4096).collect();
                frame::begin(out, PANICKED, call);
                let _ = frame::put(out, &short);
                let _ = frame::finish(out, max_frame);
            }
        }
    }
}

fn refuse(out: &mut Vec<u8>, call: u32, max_frame: usize, reason: u8, detail: String) {
    frame::begin(out, REFUSED, call);
    let _ = frame::put(out, &(reason, &detail));
    if frame::finish(out, max_frame).is_err() {
        frame::begin(out, REFUSED, call);
        let _ = frame::put(out, &(reason, "(detail too long)"));
        let _ = frame::finish(out, max_frame);
    }
}
