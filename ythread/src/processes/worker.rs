//! The worker side: what [`init`](super::init) runs in a worker process.

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};

use super::child::CHANNEL_FD;
use super::frame::{self, CALL, DONE, HELLO, PANICKED, PROTOCOL, REFUSED, ReadError};
use crate::offloadable::{self, Lookup};

/// Serves calls on the channel the parent set up, until the parent closes
/// it. Returns the process's exit code.
pub(crate) fn serve(setting: &str) -> i32 {
    let Some(max_frame) = parse_setting(setting) else {
        eprintln!(
            "ythread: this process was started as a worker (YTHREAD_WORKER={setting}) by a \
             parent speaking another protocol than {PROTOCOL}; exiting"
        );
        return 2;
    };
    // SAFETY: `fstat` only writes the `stat` it is given.
    let is_socket = unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        libc::fstat(CHANNEL_FD, &mut stat) == 0 && (stat.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    };
    if !is_socket {
        eprintln!(
            "ythread: YTHREAD_WORKER is set, but descriptor {CHANNEL_FD} is not a worker's \
             channel (a worker's own child process inherits the variable: unset it there); \
             exiting"
        );
        return 2;
    }
    // SAFETY: the parent placed its socket at `CHANNEL_FD` for this process
    // (checked just above to be a socket), and nothing else in the process
    // owns it: it is taken once, here, before any user code runs.
    let mut stream = unsafe { UnixStream::from_raw_fd(CHANNEL_FD) };
    // The worker's own child processes must not inherit the channel.
    // SAFETY: `fcntl` on a descriptor this process owns.
    unsafe {
        libc::fcntl(CHANNEL_FD, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    let mut out = Vec::new();
    frame::begin(&mut out, HELLO);
    if frame::put(&mut out, &(PROTOCOL, std::process::id())).is_err()
        || frame::finish(&mut out, max_frame).is_err()
        || frame::write(&mut stream, &out).is_err()
    {
        return 0;
    }
    let mut input = Vec::new();
    loop {
        let (kind, body) = match frame::read(&mut stream, &mut input, max_frame, None) {
            Ok(frame) => frame,
            // The parent closed the channel: it is done with this worker.
            Err(ReadError::Closed) => return 0,
            Err(error) => {
                eprintln!("ythread worker {}: {error}; exiting", std::process::id());
                return 2;
            }
        };
        if kind != CALL {
            eprintln!(
                "ythread worker {}: unexpected frame kind {kind}; exiting",
                std::process::id()
            );
            return 2;
        }
        answer(body, &mut out, max_frame);
        if frame::write(&mut stream, &out).is_err() {
            return 0;
        }
    }
}

/// `1:67108864`: protocol 1, frames of at most 64 MiB.
fn parse_setting(setting: &str) -> Option<usize> {
    let (protocol, max_frame) = setting.split_once(':')?;
    if protocol.parse::<u32>().ok()? != PROTOCOL {
        return None;
    }
    max_frame.parse().ok()
}

/// Runs one call and writes the reply frame into `out`.
fn answer(body: &[u8], out: &mut Vec<u8>, max_frame: usize) {
    let (name, fingerprint, args) = match frame::parse_call(body) {
        Ok(call) => call,
        Err(error) => {
            return refuse(
                out,
                max_frame,
                frame::REFUSED_ARGUMENTS,
                format!("a malformed call: {error}"),
            );
        }
    };
    let entry = match offloadable::by_name(name) {
        Lookup::Found(entry) => entry,
        Lookup::Missing => {
            return refuse(
                out,
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
                max_frame,
                frame::REFUSED_UNREGISTERED,
                format!("the worker program registers `{name}` twice"),
            );
        }
    };
    if entry.fingerprint != fingerprint {
        return refuse(
            out,
            max_frame,
            frame::REFUSED_FINGERPRINT,
            format!(
                "the worker's `{name}` has another signature, `{}` (is it another build?)",
                entry.signature
            ),
        );
    }
    frame::begin(out, DONE);
    match panic::catch_unwind(AssertUnwindSafe(|| (entry.invoke)(args, out))) {
        Ok(Ok(())) => {
            if let Err(size) = frame::finish(out, max_frame) {
                refuse(
                    out,
                    max_frame,
                    frame::REFUSED_RESULT,
                    format!(
                        "its result is {size} bytes, over the maximum frame of {max_frame} bytes"
                    ),
                );
            }
        }
        Ok(Err(error)) => refuse(
            out,
            max_frame,
            frame::REFUSED_ARGUMENTS,
            format!("its arguments could not be decoded, or its result encoded: {error}"),
        ),
        Err(payload) => {
            // The panic hook has printed it, on this worker's stderr; the
            // parent gets its message.
            let message = crate::error::payload_text(&*payload)
                .unwrap_or("Box<dyn Any>")
                .to_owned();
            // Dropping the payload could panic again: keep it.
            std::mem::forget(payload);
            frame::begin(out, PANICKED);
            let _ = frame::put(out, &message);
            if frame::finish(out, max_frame).is_err() {
                let short: String = message.chars().take(4096).collect();
                frame::begin(out, PANICKED);
                let _ = frame::put(out, &short);
                let _ = frame::finish(out, max_frame);
            }
        }
    }
}

fn refuse(out: &mut Vec<u8>, max_frame: usize, reason: u8, detail: String) {
    frame::begin(out, REFUSED);
    let _ = frame::put(out, &(reason, &detail));
    if frame::finish(out, max_frame).is_err() {
        frame::begin(out, REFUSED);
        let _ = frame::put(out, &(reason, "(detail too long)"));
        let _ = frame::finish(out, max_frame);
    }
}
