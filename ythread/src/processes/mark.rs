//! The marks a worker process writes in its output as each call starts and
//! ends, so that the parent's relay (`output.rs`) labels each line with the
//! call that was running when the worker wrote it, however far the relay
//! lags behind.
//!
//! ```text
//! mark = NUL "ythread-call " nonce " " call " " ("start" | "end") "\n"
//! ```
//!
//! `nonce` is 16 hex digits the parent chose for this worker (`Setting`),
//! `call` the frame's call number in decimal. The NUL and the nonce make a
//! mark that the work prints by accident all but impossible; work that
//! means to forge one can (it can read the nonce), and gains a wrong label
//! on its own lines: the label names a call of its own worker only, through
//! the parent's record of the calls it sent.
//!
//! A mark is one `write` of fewer than `PIPE_BUF` bytes, so it is never
//! split by another writer's bytes; it always ends a line, and may end a
//! line the work left open (`print!` without a newline), which is then that
//! line's end.

use std::fmt::Write as _;
use std::io::Write as _;

/// What every mark starts with.
const MAGIC: &[u8] = b"\0ythread-call ";

/// The longest mark, its newline included.
pub(crate) const MAX_MARK: usize = 64;

/// The start of every mark of the worker given `nonce`: what the relay
/// looks for.
pub(crate) fn prefix(nonce: u64) -> Vec<u8> {
    let mut prefix = MAGIC.to_vec();
    prefix.extend_from_slice(format!("{nonce:016x} ").as_bytes());
    prefix
}

/// The mark of call number `call` starting (`start`) or ending.
pub(crate) fn mark(nonce: u64, call: u32, start: bool) -> String {
    let mut mark = String::from_utf8_lossy(MAGIC).into_owned();
    let what = if start { "start" } else { "end" };
    // Writing to a `String` cannot fail.
    let _ = writeln!(mark, "{nonce:016x} {call} {what}");
    mark
}

/// In a worker: writes the mark of call `call` starting or ending to its
/// stderr, which shares the parent's pipe with its stdout. Before an end,
/// flushes what the work left in std's stdout buffer (`print!` without a
/// newline): those bytes are the call's. (A C library's `stdio` buffers are
/// beyond reach: what they hold goes out when they flush.)
pub(crate) fn write(nonce: u64, call: u32, start: bool) {
    if !start {
        let _ = std::io::stdout().flush();
    }
    // One `write` of the whole mark (std's stderr is unbuffered); a stderr
    // closed by the work loses it, as it loses the work's own lines.
    let _ = std::io::stderr().write_all(mark(nonce, call, start).as_bytes());
}

/// What a mark says, read from what follows its prefix (without the
/// newline): the call's number, and whether it starts. `None`: not a mark.
pub(crate) fn parse(rest: &[u8]) -> Option<(u32, bool)> {
    let rest = std::str::from_utf8(rest).ok()?;
    let (call, what) = rest.split_once(' ')?;
    // (Digits only: `parse` would take a sign.)
    if call.is_empty() || !call.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let call = call.parse().ok()?;
    match what {
        "start" => Some((call, true)),
        "end" => Some((call, false)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_after_its_prefix() {
        for (call, start) in [(1, true), (1, false), (u32::MAX, true)] {
            let mark = mark(0xfeed, call, start);
            assert!(mark.len() <= MAX_MARK, "{mark:?}");
            let rest = mark.as_bytes().strip_prefix(&prefix(0xfeed)[..]).unwrap();
            let rest = rest.strip_suffix(b"\n").unwrap();
            assert_eq!(parse(rest), Some((call, start)));
        }
        for bad in [
            "",
            "1",
            "1 begin",
            "+1 start",
            "1 start ",
            " 1 end",
            "99999999999 end",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
