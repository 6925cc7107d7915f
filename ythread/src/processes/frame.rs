//! The channel between the parent and a worker process: length-prefixed
//! frames, each a kind byte and a body.
//!
//! ```text
//! frame = length: u32 LE (of kind + body) | kind: u8 | body
//! HELLO    worker -> parent  postcard (protocol: u32, pid: u32)
//! CALL     parent -> worker  postcard (name: &str, fingerprint: u64), then the arguments
//! DONE     worker -> parent  the result (postcard)
//! PANICKED worker -> parent  postcard (message: String)
//! REFUSED  worker -> parent  postcard (reason: u8, detail: String)
//! ```
//!
//! The length is checked against a maximum before anything is allocated, so
//! a corrupt or hostile length costs at most that much memory.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// The version of this protocol; a worker of another version is refused at
/// its hello.
pub(crate) const PROTOCOL: u32 = 1;

/// Frame kinds.
pub(crate) const HELLO: u8 = 1;
pub(crate) const CALL: u8 = 2;
pub(crate) const DONE: u8 = 3;
pub(crate) const PANICKED: u8 = 4;
pub(crate) const REFUSED: u8 = 5;

/// Why a worker refused a call (the `reason` of a `REFUSED` frame).
pub(crate) const REFUSED_UNREGISTERED: u8 = 0;
pub(crate) const REFUSED_FINGERPRINT: u8 = 1;
pub(crate) const REFUSED_ARGUMENTS: u8 = 2;
pub(crate) const REFUSED_RESULT: u8 = 3;

/// The bytes of the length prefix.
const LENGTH: usize = 4;

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

/// Starts a frame of `kind` in `buf` (cleared first); append the body, then
/// call [`finish`].
pub(crate) fn begin(buf: &mut Vec<u8>, kind: u8) {
    buf.clear();
    buf.extend_from_slice(&[0; LENGTH]);
    buf.push(kind);
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

/// Reads one frame into `buf` and returns its kind and body. `deadline`, if
/// any, bounds the whole read (`stream`'s read timeout is set before each
/// read; pass `None` only for a stream without one).
pub(crate) fn read<'b>(
    stream: &mut UnixStream,
    buf: &'b mut Vec<u8>,
    max: usize,
    deadline: Option<Instant>,
) -> Result<(u8, &'b [u8]), ReadError> {
    let mut reader = Timed { stream, deadline };
    decode(&mut reader, buf, max)
}

/// [`read`] for any reader: the part a fuzzer can reach.
pub(crate) fn decode<'b>(
    reader: &mut impl Read,
    buf: &'b mut Vec<u8>,
    max: usize,
) -> Result<(u8, &'b [u8]), ReadError> {
    let mut length = [0; LENGTH];
    read_exact(reader, &mut length)?;
    let length = u32::from_le_bytes(length) as usize;
    if length == 0 {
        return Err(ReadError::Malformed("an empty frame".into()));
    }
    if length > max {
        return Err(ReadError::Malformed(format!(
            "a frame of {length} bytes, over the maximum of {max}"
        )));
    }
    buf.clear();
    buf.resize(length, 0);
    read_exact(reader, buf)?;
    Ok((buf[0], &buf[1..]))
}

fn read_exact(reader: &mut impl Read, mut out: &mut [u8]) -> Result<(), ReadError> {
    while !out.is_empty() {
        match reader.read(out) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => out = &mut out[n..],
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::TimedOut);
            }
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {
                return Err(ReadError::Closed);
            }
            Err(error) => return Err(ReadError::Io(error)),
        }
    }
    Ok(())
}

/// A stream whose reads stop at a deadline.
struct Timed<'s> {
    stream: &'s mut UnixStream,
    deadline: Option<Instant>,
}

impl Read for Timed<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
        }
        self.stream.read(out)
    }
}

/// Writes a finished frame.
pub(crate) fn write(stream: &mut UnixStream, frame: &[u8]) -> io::Result<()> {
    stream.write_all(frame)
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

/// The body of a `CALL`: the function's name and fingerprint, then its
/// arguments (which the function's own decoder reads).
pub(crate) fn parse_call(body: &[u8]) -> Result<(&str, u64, &[u8]), postcard::Error> {
    let ((name, fingerprint), args) = postcard::take_from_bytes::<(&str, u64)>(body)?;
    Ok((name, fingerprint, args))
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

    fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        begin(&mut buf, kind);
        buf.extend_from_slice(body);
        finish(&mut buf, 1 << 20).unwrap();
        buf
    }

    #[test]
    fn a_frame_reads_back() {
        let bytes = frame(DONE, b"abc");
        let mut buf = Vec::new();
        let (kind, body) = decode(&mut &bytes[..], &mut buf, 16).unwrap();
        assert_eq!((kind, body), (DONE, &b"abc"[..]));
    }

    #[test]
    fn an_oversized_frame_is_refused_before_allocating() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.push(DONE);
        let mut buf = Vec::new();
        let error = decode(&mut &bytes[..], &mut buf, 1024).unwrap_err();
        assert!(matches!(error, ReadError::Malformed(_)), "{error:?}");
        assert_eq!(buf.capacity(), 0);
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
            while let Ok((kind, body)) = decode(&mut reader, &mut buf, max) {
                let _ = kind;
                let _ = parse_hello(body);
                let _ = parse_call(body);
                let _ = parse_panicked(body);
                let _ = parse_refused(body);
            }
            proptest::prop_assert!(buf.len() <= max);
        }

        /// Valid frames with arbitrary bodies read back exactly.
        #[test]
        fn frames_round_trip(
            bodies in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 0..8),
        ) {
            let mut stream = Vec::new();
            for body in &bodies {
                stream.extend(frame(DONE, body));
            }
            let mut reader = &stream[..];
            let mut buf = Vec::new();
            for body in &bodies {
                let (kind, read) = decode(&mut reader, &mut buf, 1024).unwrap();
                proptest::prop_assert_eq!(kind, DONE);
                proptest::prop_assert_eq!(read, &body[..]);
            }
        }
    }

    #[test]
    fn a_frame_over_the_maximum_is_not_finished() {
        let mut buf = Vec::new();
        begin(&mut buf, CALL);
        buf.extend_from_slice(&[7; 100]);
        assert_eq!(finish(&mut buf, 50), Err(101));
    }
}
