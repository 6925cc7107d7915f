//! The channel between the parent and a worker process, two pipes (one each
//! way, at descriptors 3 and 4 in the worker): length-prefixed frames, each
//! a kind byte and a body.
//!
//! ```text
//! frame = length: u32 LE (of the rest) | kind: u8 | call: u32 LE | body
//!         (a reply carries its call's number: a reply out of step with
//!         the call it answers is an error, never a result)
//! HELLO    worker -> parent  postcard (protocol: u32, pid: u32)
//! CALL     parent -> worker  postcard (name: &str, fingerprint: u64, level: u8), then the arguments
//! DONE     worker -> parent  the result (postcard)
//! PANICKED worker -> parent  postcard (message: String)
//! REFUSED  worker -> parent  postcard (reason: u8, detail: String)
//! EVENT    worker -> parent  postcard (level: u8, target: &str, message: &str, fields: &str)
//! DROPPED  worker -> parent  postcard (events: u64)
//! ```
//!
//! A call's `level` is the most verbose level of `tracing` event the parent
//! wants back ([`LEVEL_OFF`] for none); while the call runs, the worker
//! sends its events as `EVENT` frames, and how many it had to drop as one
//! `DROPPED` frame, all before the reply that ends the call (`events.rs`).
//! Every other exchange is one frame each way.
//!
//! The length is checked against a maximum before anything is allocated, so
//! a corrupt or hostile length costs at most that much memory (for `EVENT`
//! and `DROPPED` frames, [`MAX_EVENT_FRAME`]).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{Pid, WaitId, WaitIdOptions};

/// The version of this protocol; a worker of another version is refused at
/// its hello.
pub(crate) const PROTOCOL: u32 = 3;

/// Frame kinds.
pub(crate) const HELLO: u8 = 1;
pub(crate) const CALL: u8 = 2;
pub(crate) const DONE: u8 = 3;
pub(crate) const PANICKED: u8 = 4;
pub(crate) const REFUSED: u8 = 5;
pub(crate) const EVENT: u8 = 6;
pub(crate) const DROPPED: u8 = 7;

/// The levels of a call's `level` and of an `EVENT` (`tracing`'s
/// `LevelFilter` order: the larger, the more verbose).
pub(crate) const LEVEL_OFF: u8 = 0;
pub(crate) const LEVEL_ERROR: u8 = 1;
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) const LEVEL_WARN: u8 = 2;
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) const LEVEL_INFO: u8 = 3;
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) const LEVEL_DEBUG: u8 = 4;
pub(crate) const LEVEL_TRACE: u8 = 5;

/// The largest `EVENT` or `DROPPED` frame: a worker cuts an event's text to
/// fit (`events.rs`), and a longer one is malformed, refused before it is
/// read.
pub(crate) const MAX_EVENT_FRAME: usize = 16 * 1024;

/// Why a worker refused a call (the `reason` of a `REFUSED` frame).
pub(crate) const REFUSED_UNREGISTERED: u8 = 0;
pub(crate) const REFUSED_FINGERPRINT: u8 = 1;
pub(crate) const REFUSED_ARGUMENTS: u8 = 2;
pub(crate) const REFUSED_RESULT: u8 = 3;

/// The bytes of the length prefix.
const LENGTH: usize = 4;

/// The bytes after the length that every frame has: its kind and call
/// number.
const KIND_AND_CALL: usize = 1 + 4;

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the channel (cleanly, between frames, or in the
    /// middle of one).
    Closed,
    /// The deadline passed first.
    TimedOut,
    /// The frame's length is zero or over the maximum; the channel is out of
    /// step and must be dropped.
    Malformed(String),
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed => f.write_str("the channel was closed"),
            ReadError::TimedOut => f.write_str("timed out"),
            ReadError::Malformed(why) => f.write_str(why),
            ReadError::Io(error) => write!(f, "{error}"),
        }
    }
}

/// Starts a frame of `kind` for call number `call` in `buf` (cleared
/// first); append the body, then call [`finish`].
pub(crate) fn begin(buf: &mut Vec<u8>, kind: u8, call: u32) {
    buf.clear();
    buf.extend_from_slice(&[0; LENGTH]);
    buf.push(kind);
    buf.extend_from_slice(&call.to_le_bytes());
}

/// Writes the length of the frame in `buf`.
///
/// # Errors
///
/// The frame's size in bytes, when it is over `max`.
pub(crate) fn finish(buf: &mut [u8], max: usize) -> Result<(), usize> {
    let length = buf.len() - LENGTH;
    if length > max {
        return Err(length);
    }
    let length = u32::try_from(length).map_err(|_| length)?;
    buf[..LENGTH].copy_from_slice(&length.to_le_bytes());
    Ok(())
}

/// What a read or a write on the channel waits for besides its descriptor:
/// a deadline, and the peer's end.
#[derive(Clone, Copy, Default)]
pub(crate) struct Watch<'f> {
    /// Bounds the whole read or write.
    pub(crate) deadline: Option<Instant>,
    /// How to learn that the peer process has ended: the channel may
    /// outlive it, held open by a process it forked, and the wait then ends
    /// as if it had closed.
    pub(crate) exited: Option<Exited<'f>>,
}

/// How to learn that a process has ended.
#[derive(Clone, Copy)]
pub(crate) enum Exited<'f> {
    /// Its pidfd, readable once it has.
    Pidfd(BorrowedFd<'f>),
    /// Its pid, a child of this process, asked every [`PID_CHECK`] (a
    /// kernel without pidfds).
    Pid(Pid),
}

/// How often a wait asks whether a process without a pidfd has ended.
const PID_CHECK: Duration = Duration::from_millis(100);

impl Exited<'_> {
    /// Whether the process has ended (not reaping it).
    pub(crate) fn now(self) -> bool {
        match self {
            Exited::Pidfd(fd) => {
                let mut poll = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
                matches!(rustix::event::poll(&mut poll, Some(&Timespec::default())), Ok(n) if n > 0)
            }
            Exited::Pid(pid) => {
                let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
                // (No such child: reaped already, by the program itself.)
                matches!(
                    rustix::process::waitid(WaitId::Pid(pid), options),
                    Ok(Some(_)) | Err(Errno::CHILD)
                )
            }
        }
    }
}

/// Reads one frame into `buf` and returns its kind and body, waiting no
/// longer than `watch` allows.
pub(crate) fn read<'b, R: Read + AsFd>(
    input: &mut R,
    buf: &'b mut Vec<u8>,
    max: usize,
    watch: Watch<'_>,
) -> Result<(u8, u32, &'b [u8]), ReadError> {
    let mut reader = Watched { input, watch };
    decode(&mut reader, buf, max)
}

/// How much a first read asks for: most frames arrive whole in one read
/// (one system call, where reading the length and then the body takes two).
const FIRST_READ: usize = 4096;

/// [`read`] for any reader: the part a fuzzer can reach.
///
/// The protocol is strictly call, then reply: a peer never sends a frame
/// before the last one was answered, so bytes past the end of the frame are
/// an error rather than the start of the next.
pub(crate) fn decode<'b>(
    reader: &mut impl Read,
    buf: &'b mut Vec<u8>,
    max: usize,
) -> Result<(u8, u32, &'b [u8]), ReadError> {
    buf.clear();
    let (total, filled) = next_frame(reader, buf, 0, max)?;
    if filled > total {
        return Err(ReadError::Malformed(
            "more bytes than one frame before an answer".into(),
        ));
    }
    Ok(parts(buf, total))
}

/// What takes each `EVENT` or `DROPPED` frame of a reply as it is read:
/// its kind, call number and body; an error ends the read with it.
pub(crate) type OnEvent<'e> = dyn FnMut(u8, u32, &[u8]) -> Result<(), ReadError> + 'e;

/// Reads the frames that answer a call into `buf`, up to and including
/// the first that is not an `EVENT` or a `DROPPED` one, which it returns;
/// hands each of those to `events` (kind, call, body) as it comes, waiting
/// no longer than `watch` allows for the whole.
pub(crate) fn read_reply<'b, R: Read + AsFd>(
    input: &mut R,
    buf: &'b mut Vec<u8>,
    max: usize,
    watch: Watch<'_>,
    events: &mut OnEvent<'_>,
) -> Result<(u8, u32, &'b [u8]), ReadError> {
    let mut reader = Watched { input, watch };
    decode_reply(&mut reader, buf, max, events)
}

/// [`read_reply`] for any reader: the part a fuzzer can reach.
///
/// Events come in a stream before the reply, so a read may take the start
/// of the next frame with one: those bytes are kept for it. Bytes past the
/// reply are an error, as in [`decode`].
pub(crate) fn decode_reply<'b>(
    reader: &mut impl Read,
    buf: &'b mut Vec<u8>,
    max: usize,
    events: &mut OnEvent<'_>,
) -> Result<(u8, u32, &'b [u8]), ReadError> {
    buf.clear();
    let mut ahead = 0;
    loop {
        let (total, filled) = next_frame(reader, buf, ahead, max)?;
        let (kind, call, body) = parts(buf, total);
        if kind == EVENT || kind == DROPPED {
            events(kind, call, body)?;
            buf.copy_within(total..filled, 0);
            ahead = filled - total;
            continue;
        }
        if filled > total {
            return Err(ReadError::Malformed(
                "more bytes than one frame before an answer".into(),
            ));
        }
        return Ok(parts(buf, total));
    }
}

/// The kind, call number and body of the frame at the start of `buf`,
/// `total` bytes long (checked by [`next_frame`]).
fn parts(buf: &[u8], total: usize) -> (u8, u32, &[u8]) {
    let call = u32::from_le_bytes([
        buf[LENGTH + 1],
        buf[LENGTH + 2],
        buf[LENGTH + 3],
        buf[LENGTH + 4],
    ]);
    (buf[LENGTH], call, &buf[LENGTH + KIND_AND_CALL..total])
}

/// Reads until `buf` holds a whole frame at its start, its first `ahead`
/// bytes read already; returns the frame's length with its prefix, and how
/// many bytes `buf` holds (the frame's, and any read past it).
fn next_frame(
    reader: &mut impl Read,
    buf: &mut Vec<u8>,
    ahead: usize,
    max: usize,
) -> Result<(usize, usize), ReadError> {
    let first = FIRST_READ
        .min(max.saturating_add(LENGTH))
        .max(LENGTH + KIND_AND_CALL);
    if buf.len() < first.max(ahead) {
        buf.resize(first.max(ahead), 0);
    }
    let mut filled = ahead;
    while filled < LENGTH {
        filled += read_some(reader, &mut buf[filled..])?;
    }
    let length = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if length < KIND_AND_CALL {
        return Err(ReadError::Malformed(format!(
            "a frame of {length} bytes, too short"
        )));
    }
    // The kind, before a body is read: an event's bound is its own, apart
    // from `max` (a worker's events fit it whatever `max_frame` is).
    while filled <= LENGTH {
        filled += read_some(reader, &mut buf[filled..])?;
    }
    if matches!(buf[LENGTH], EVENT | DROPPED) {
        if length > MAX_EVENT_FRAME {
            return Err(ReadError::Malformed(format!(
                "an event of {length} bytes, over the maximum of {MAX_EVENT_FRAME}"
            )));
        }
    } else if length > max {
        return Err(ReadError::Malformed(format!(
            "a frame of {length} bytes, over the maximum of {max}"
        )));
    }
    let total = LENGTH + length;
    // Bounded by `max` or `MAX_EVENT_FRAME` (checked above), whatever the
    // peer claims.
    if buf.len() < total {
        buf.resize(total, 0);
    }
    if filled < total {
        read_exact(reader, &mut buf[filled..total])?;
        filled = total;
    }
    Ok((total, filled))
}

/// One read of at least one byte.
fn read_some(reader: &mut impl Read, out: &mut [u8]) -> Result<usize, ReadError> {
    loop {
        match reader.read(out) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => return Ok(n),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(classify(error)),
        }
    }
}

fn classify(error: io::Error) -> ReadError {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ReadError::TimedOut,
        io::ErrorKind::ConnectionReset => ReadError::Closed,
        _ => ReadError::Io(error),
    }
}

fn read_exact(reader: &mut impl Read, mut out: &mut [u8]) -> Result<(), ReadError> {
    while !out.is_empty() {
        let n = read_some(reader, out)?;
        out = &mut out[n..];
    }
    Ok(())
}

/// A pipe whose reads stop at a deadline, or at the peer's end.
struct Watched<'s, 'f, R> {
    input: &'s mut R,
    watch: Watch<'f>,
}

impl<R: Read + AsFd> Read for Watched<'_, '_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.watch.deadline.is_some() || self.watch.exited.is_some() {
            wait_until_ready(self.input.as_fd(), PollFlags::IN, self.watch)?;
        }
        self.input.read(out)
    }
}

/// Waits until `fd` is ready for `events` (`IN`, `OUT`); fails with
/// `TimedOut` at the deadline, or with `ConnectionReset` (the channel's
/// end) once the peer has ended with nothing more to read. A closed peer
/// counts as ready: the read or write that follows reports it.
fn wait_until_ready(fd: BorrowedFd<'_>, events: PollFlags, watch: Watch<'_>) -> io::Result<()> {
    loop {
        // To the nanosecond (a deadline 0.5 ms away is no busy loop), and
        // at most `i32::MAX` ms at a time, as `poll(2)` would take it (the
        // loop then looks again); no deadline, no time-out; a process
        // without a pidfd is asked about at least every `PID_CHECK`.
        let mut left = match watch.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                Some(left.min(Duration::from_millis(i32::MAX as u64)))
            }
            None => None,
        };
        if let Some(Exited::Pid(_)) = watch.exited {
            left = Some(left.map_or(PID_CHECK, |left| left.min(PID_CHECK)));
        }
        let timeout = left.and_then(|left| Timespec::try_from(left).ok());
        let mut poll = [
            PollFd::from_borrowed_fd(fd, events),
            // (Without a pidfd: the same descriptor again, asking for
            // nothing, whose `revents` are not looked at.)
            match watch.exited {
                Some(Exited::Pidfd(exited)) => PollFd::from_borrowed_fd(exited, PollFlags::IN),
                _ => PollFd::from_borrowed_fd(fd, PollFlags::empty()),
            },
        ];
        let ended = || Err(io::ErrorKind::ConnectionReset.into());
        match rustix::event::poll(&mut poll, timeout.as_ref()) {
            Ok(_) if !poll[0].revents().is_empty() => return Ok(()),
            Ok(_) | Err(Errno::INTR) => match watch.exited {
                Some(Exited::Pidfd(_)) if !poll[1].revents().is_empty() => return ended(),
                Some(exited @ Exited::Pid(_)) if exited.now() => return ended(),
                _ => {}
            },
            Err(error) => return Err(error.into()),
        }
    }
}

/// Waits until `fd` has something to read (or has ended), no longer than
/// `watch` allows; see [`wait_until_ready`].
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, watch: Watch<'_>) -> io::Result<()> {
    wait_until_ready(fd, PollFlags::IN, watch)
}

/// Writes a finished frame, waiting no longer than `watch` allows (a worker
/// that stops reading cannot block its caller past its deadline, nor past
/// its end). On a non-blocking descriptor (the parent's end of a worker's
/// calls) each write takes what the pipe has room for, and the wait is a
/// `poll`; a blocking one (a worker's replies) just blocks.
///
/// # Errors
///
/// The error, and how many bytes of the frame were written before it.
pub(crate) fn write<W: Write + AsFd>(
    output: &mut W,
    frame: &[u8],
    watch: Watch<'_>,
) -> Result<(), (io::Error, usize)> {
    if watch
        .deadline
        .is_some_and(|deadline| Instant::now() >= deadline)
    {
        return Err((io::ErrorKind::TimedOut.into(), 0));
    }
    let mut rest = frame;
    while !rest.is_empty() {
        let written = frame.len() - rest.len();
        match output.write(rest) {
            Ok(0) => return Err((io::ErrorKind::WriteZero.into(), written)),
            Ok(n) => rest = &rest[n..],
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                wait_until_ready(output.as_fd(), PollFlags::OUT, watch)
                    .map_err(|error| (error, written))?;
            }
            Err(error) => return Err((error, written)),
        }
    }
    Ok(())
}

/// Appends `value`, postcard-encoded, to `buf`.
pub(crate) fn put<T: serde::Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &T,
) -> Result<(), postcard::Error> {
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(value, taken)?;
    Ok(())
}

/// The body of a `HELLO`: the worker's protocol version and pid.
pub(crate) fn parse_hello(body: &[u8]) -> Result<(u32, u32), postcard::Error> {
    whole(body)
}

/// The body of a `CALL`: the function's name and fingerprint, the level of
/// the events wanted back, then its arguments (which the function's own
/// decoder reads).
pub(crate) fn parse_call(body: &[u8]) -> Result<(&str, u64, u8, &[u8]), postcard::Error> {
    let ((name, fingerprint, level), args) = postcard::take_from_bytes::<(&str, u64, u8)>(body)?;
    Ok((name, fingerprint, level, args))
}

/// The body of an `EVENT`: its level, target, message and other fields.
pub(crate) fn parse_event(body: &[u8]) -> Result<(u8, &str, &str, &str), postcard::Error> {
    whole(body)
}

/// The body of a `DROPPED`: how many events the worker dropped.
pub(crate) fn parse_dropped(body: &[u8]) -> Result<u64, postcard::Error> {
    whole(body)
}

/// The body of a `PANICKED`: the panic's message.
pub(crate) fn parse_panicked(body: &[u8]) -> Result<String, postcard::Error> {
    whole(body)
}

/// The body of a `REFUSED`: the reason and its explanation.
pub(crate) fn parse_refused(body: &[u8]) -> Result<(u8, String), postcard::Error> {
    whole(body)
}

/// Decodes a body that must hold exactly one `T`.
fn whole<'de, T: serde::Deserialize<'de>>(body: &'de [u8]) -> Result<T, postcard::Error> {
    match postcard::take_from_bytes(body)? {
        (value, []) => Ok(value),
        _ => Err(postcard::Error::DeserializeBadEncoding),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that gives at most `chunk` bytes a read.
    struct Chunks<'b> {
        bytes: &'b [u8],
        chunk: usize,
    }

    impl Read for Chunks<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.chunk).min(self.bytes.len());
            out[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        begin(&mut buf, kind, 7);
        buf.extend_from_slice(body);
        finish(&mut buf, 1 << 20).unwrap();
        buf
    }

    #[test]
    fn a_frame_reads_back() {
        let bytes = frame(DONE, b"abc");
        let mut buf = Vec::new();
        let (kind, call, body) = decode(&mut &bytes[..], &mut buf, 16).unwrap();
        assert_eq!((kind, call, body), (DONE, 7, &b"abc"[..]));
    }

    #[test]
    fn an_oversized_frame_is_refused_before_allocating() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.push(DONE);
        let mut buf = Vec::new();
        let error = decode(&mut &bytes[..], &mut buf, 1024).unwrap_err();
        assert!(matches!(error, ReadError::Malformed(_)), "{error:?}");
        assert!(buf.capacity() <= 1024 + LENGTH);
    }

    #[test]
    fn truncated_and_empty_frames_are_errors() {
        let bytes = frame(DONE, b"abcdef");
        for cut in 0..bytes.len() {
            let mut buf = Vec::new();
            let error = decode(&mut &bytes[..cut], &mut buf, 1024).unwrap_err();
            assert!(matches!(error, ReadError::Closed), "{cut}: {error:?}");
        }
        let mut buf = Vec::new();
        let error = decode(&mut &[0u8, 0, 0, 0][..], &mut buf, 1024).unwrap_err();
        assert!(matches!(error, ReadError::Malformed(_)));
    }

    proptest::proptest! {
        /// Arbitrary bytes through the decoder and every body parser: no
        /// panic, and never a buffer larger than the maximum frame.
        #[test]
        fn arbitrary_bytes_never_panic_nor_overallocate(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            max in 1usize..256,
        ) {
            let mut reader = &bytes[..];
            let mut buf = Vec::new();
            while let Ok((kind, call, body)) = decode(&mut reader, &mut buf, max) {
                let _ = (kind, call);
                let _ = parse_hello(body);
                let _ = parse_call(body);
                let _ = parse_panicked(body);
                let _ = parse_refused(body);
            }
            proptest::prop_assert!(buf.len() <= (max + LENGTH).max(FIRST_READ));
        }

        /// Arbitrary bytes as a call's reply, events and all: no panic, and
        /// never a buffer larger than the maximum frame.
        #[test]
        fn arbitrary_replies_never_panic_nor_overallocate(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024),
            max in 1usize..256,
        ) {
            let mut buf = Vec::new();
            let _ = decode_reply(&mut &bytes[..], &mut buf, max, &mut |kind, _, body| {
                let _ = (kind, parse_event(body), parse_dropped(body));
                Ok(())
            });
            proptest::prop_assert!(buf.len() <= (max + LENGTH).max(FIRST_READ));
        }

        /// Valid events and a reply, cut into arbitrary reads, read back.
        #[test]
        fn events_and_a_reply_read_back_whatever_the_reads(
            events in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 0..8),
            chunk in 1usize..40,
        ) {
            let mut bytes = Vec::new();
            for body in &events {
                bytes.extend(frame(EVENT, body));
            }
            bytes.extend(frame(DONE, b"end"));
            let mut reader = Chunks { bytes: &bytes, chunk };
            let mut buf = Vec::new();
            let mut seen = Vec::new();
            let (kind, _, body) = decode_reply(&mut reader, &mut buf, 1024, &mut |_, _, body| {
                seen.push(body.to_vec());
                Ok(())
            })
            .unwrap();
            proptest::prop_assert_eq!((kind, body), (DONE, &b"end"[..]));
            proptest::prop_assert_eq!(seen, events);
        }

        /// Valid frames with arbitrary bodies read back exactly; a second
        /// frame sent before an answer is an error, not a second read.
        #[test]
        fn frames_round_trip(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            extra in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..8),
        ) {
            let bytes = frame(DONE, &body);
            let mut buf = Vec::new();
            let (kind, call, read) = decode(&mut &bytes[..], &mut buf, 1024).unwrap();
            proptest::prop_assert_eq!((kind, call), (DONE, 7));
            proptest::prop_assert_eq!(read, &body[..]);
            let mut more = bytes.clone();
            more.extend(&extra);
            let error = decode(&mut &more[..], &mut buf, 1024).unwrap_err();
            proptest::prop_assert!(matches!(error, ReadError::Malformed(_)));
        }
    }

    /// A reply as `decode_reply` read it, or its error in words.
    type Reply = Result<(u8, u32, Vec<u8>), String>;

    /// Collects what `decode_reply` hands over.
    fn reply_of(bytes: &[u8], max: usize) -> (Reply, Vec<(u8, Vec<u8>)>) {
        let mut seen = Vec::new();
        let mut buf = Vec::new();
        let reply = decode_reply(&mut &bytes[..], &mut buf, max, &mut |kind, _, body| {
            seen.push((kind, body.to_vec()));
            Ok(())
        })
        .map(|(kind, call, body)| (kind, call, body.to_vec()))
        .map_err(|error| error.to_string());
        (reply, seen)
    }

    #[test]
    fn events_then_their_reply_read_back_in_order_from_one_read() {
        let mut bytes = frame(EVENT, b"one");
        bytes.extend(frame(DROPPED, b"\x05"));
        bytes.extend(frame(EVENT, b"two"));
        bytes.extend(frame(DONE, b"result"));
        let (reply, seen) = reply_of(&bytes, 1024);
        assert_eq!(reply, Ok((DONE, 7, b"result".to_vec())));
        assert_eq!(
            seen,
            [
                (EVENT, b"one".to_vec()),
                (DROPPED, b"\x05".to_vec()),
                (EVENT, b"two".to_vec())
            ]
        );
        // Past the reply, as before: an error.
        bytes.extend(frame(EVENT, b"late"));
        assert!(reply_of(&bytes, 1024).0.is_err());
    }

    #[test]
    fn an_event_over_its_bound_is_refused_before_it_is_read() {
        let mut bytes = ((MAX_EVENT_FRAME + 1) as u32).to_le_bytes().to_vec();
        bytes.push(EVENT);
        let (reply, seen) = reply_of(&bytes, 1 << 20);
        assert!(reply.unwrap_err().contains("an event of"));
        assert!(seen.is_empty());
        // The same length for a reply is within its own bound.
        let mut bytes = ((MAX_EVENT_FRAME + 1) as u32).to_le_bytes().to_vec();
        bytes.push(DONE);
        bytes.extend([0; 4]);
        bytes.resize(LENGTH + MAX_EVENT_FRAME + 1, 1);
        assert_eq!(
            reply_of(&bytes, 1 << 20).0.unwrap().2.len(),
            MAX_EVENT_FRAME - 4
        );
    }

    #[test]
    fn an_event_within_its_bound_is_read_under_a_smaller_maximum() {
        // A worker's event may be longer than the smallest `max_frame`.
        let body = vec![b'e'; MAX_EVENT_FRAME - KIND_AND_CALL];
        let mut bytes = frame(EVENT, &body);
        bytes.extend(frame(DONE, b"result"));
        let (reply, seen) = reply_of(&bytes, 4096);
        assert_eq!(reply, Ok((DONE, 7, b"result".to_vec())));
        assert_eq!(seen, [(EVENT, body)]);
        // A reply as long is over that maximum.
        let long = frame(DONE, &vec![0; 4096]);
        assert!(
            reply_of(&long, 4096)
                .0
                .unwrap_err()
                .contains("over the maximum of 4096")
        );
    }

    #[test]
    fn a_frame_over_the_maximum_is_not_finished() {
        let mut buf = Vec::new();
        begin(&mut buf, CALL, 1);
        buf.extend_from_slice(&[7; 100]);
        assert_eq!(finish(&mut buf, 50), Err(105));
    }
}
