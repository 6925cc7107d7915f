//! The child side of a worker process: what [`init`](super::init) runs in
//! it, serving the calls its parent sends until the parent closes the
//! channel. (The parent side is `process.rs`, which starts it, and
//! `call.rs`, which sends it calls.)

use std::io::{PipeReader, PipeWriter};
use std::os::fd::{FromRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};

use rustix::io::FdFlags;

use super::entry::{Setting, WORKER_ENV};
use super::frame::{self, CALL, DONE, HELLO, PANICKED, PROTOCOL, REFUSED, ReadError};
use super::process::{CALLS_FD, REPLIES_FD, parent_death_signal};
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
    end_group_with_parent(setting.parent);
    // SAFETY: the parent placed its pipes at these descriptors for this
    // process (checked just above to be pipes), and nothing else in the
    // process owns them: they are taken once, here, before any user code
    // runs.
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
    let (mut calls, mut replies) = (PipeReader::from(calls), PipeWriter::from(replies));
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
        || frame::write(&mut replies, &out, None).is_err()
    {
        end_group();
    }
    let mut input = Vec::new();
    loop {
        let (kind, call, body) = match frame::read(&mut calls, &mut input, max_frame, None) {
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
        answer(call, body, &mut out, max_frame, setting.max_depth);
        if frame::write(&mut replies, &out, None).is_err() {
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
    // SAFETY: `kill` has no memory effects; 0 is this process's group,
    // which the parent made the worker the leader of.
    unsafe { libc::kill(0, libc::SIGKILL) };
    std::process::exit(0) // (not reached)
}

/// When the parent dies, the worker gets [`parent_death_signal`]: it then
/// kills its process group, itself and what the work started. (The signal
/// could not be `SIGKILL`, which ends the worker alone.)
fn end_group_with_parent(parent: u32) {
    extern "C" fn on_parent_death(_: libc::c_int) {
        // SAFETY: `kill` is async-signal-safe; 0 is the caller's process
        // group, which the parent made the worker the leader of.
        unsafe { libc::kill(0, libc::SIGKILL) };
    }
    // SAFETY: installs a handler that only makes one async-signal-safe
    // call, for a signal nothing but `PR_SET_PDEATHSIG` sends.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_parent_death as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(parent_death_signal(), &action, std::ptr::null_mut());
    }
    // The parent may have died before the handler was there.
    if rustix::process::getppid().map(|pid| pid.as_raw_nonzero().get() as u32) != Some(parent) {
        on_parent_death(0);
    }
}

/// Runs one call and writes the reply frame into `out`.
fn answer(call: u32, body: &[u8], out: &mut Vec<u8>, max_frame: usize, max_depth: usize) {
    let (name, fingerprint, args) = match frame::parse_call(body) {
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
        Ok(Err(InvokeError::Arguments(error))) => refuse(
            out,
            call,
            max_frame,
            frame::REFUSED_ARGUMENTS,
            format!(
                "the worker could not decode its arguments, so it did not run: {}",
                error.explain("ProcessesBuilder::max_depth")
            ),
        ),
        Ok(Err(InvokeError::Result(error))) => refuse(
            out,
            call,
            max_frame,
            frame::REFUSED_RESULT,
            format!(
                "it ran, but the worker could not encode its result: {}",
                error.0
            ),
        ),
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
