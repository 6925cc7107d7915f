//! The seed's workload and wire protocol, shared by the examples, the
//! benchmark and the integration tests.
//!
//! The protocol is the one the seed's Python client and server speak: the
//! client connects, sends `n` as ASCII decimal (at most 16 bytes, read in
//! one read), the server answers `sumn(n)` as ASCII decimal and closes the
//! connection. A request the server refuses gets `error: <why>` and a
//! newline instead (an answer has no newline).
#![warn(missing_docs, missing_debug_implementations)]

pub mod client;
// The `nats-server` launcher of ythread's `Remote` tests, which the
// benchmark's `Remote` row uses too: one file, kept with those tests.
#[path = "../ythread/tests/common/nats.rs"]
pub mod nats;
pub mod server;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

/// The port the seed's programs use.
pub const DEFAULT_PORT: u16 = 10000;

/// The `n` of the seed's benchmark.
pub const SEED_N: u64 = 25_000;

/// The most bytes a request may hold, as in the seed's `recv(16)`.
pub const MAX_REQUEST: usize = 16;

/// The seed's CPU-heavy step: sums `1..=n` with a real loop.
///
/// `black_box` keeps LLVM from replacing the loop by `n * (n + 1) / 2`, which
/// it otherwise does, so the work really costs O(n).
///
/// Never inlined: every caller (the plain handler, the closure `offload!`
/// runs, the benchmark's peers) then runs the very same machine code. When
/// the five-instruction loop was inlined into each caller, whether a copy
/// straddled a 64-byte boundary decided its speed, and copies differed by 2x
/// from one build to the next (see BENCHMARKS.md).
///
/// `#[offloadable]` registers it for worker processes (`--apply processes`);
/// it stays a plain function.
#[inline(never)]
#[ythread::offloadable]
pub fn sumn(n: u64) -> u64 {
    let mut total: u64 = 0;
    let mut i: u64 = 1;
    while i <= n {
        total = total.wrapping_add(std::hint::black_box(i));
        i += 1;
    }
    total
}

/// The number of cores this process may use (1 if that is unknown): the
/// size of `ythread::Bounded::per_core()` and `ythread::Pool::default()`, and
/// of the benchmark's machine.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The value `sumn(n)` must return, computed in O(1) to check answers.
pub fn expected_sum(n: u64) -> u64 {
    let n = u128::from(n);
    (n * (n + 1) / 2) as u64
}

/// The largest `n` whose sum `1 + 2 + ... + n` fits in 64 bits.
pub const MAX_SUMMABLE_N: u64 = 6_074_000_999;

/// Reads one request: up to [`MAX_REQUEST`] bytes of ASCII decimal, in one
/// read like the seed's `recv(16)`.
///
/// # Errors
///
/// An I/O error (`WouldBlock` or `TimedOut` once a read time-out passes),
/// `UnexpectedEof` if the client sent nothing, `InvalidData` if it sent
/// more than [`MAX_REQUEST`] bytes or not a decimal number.
pub fn read_request(stream: &mut impl Read) -> io::Result<u64> {
    let mut buf = [0u8; MAX_REQUEST + 1];
    let len = stream.read(&mut buf)?;
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "no request: the connection closed before any byte came",
        ));
    }
    if len > MAX_REQUEST {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a request is at most {MAX_REQUEST} bytes"),
        ));
    }
    parse_decimal(&buf[..len])
}

/// Checks that the server will compute the sum of `n`: at most `max_n` (its
/// cost is O(n)), and a sum that fits in 64 bits.
///
/// # Errors
///
/// `InvalidInput`, saying which bound `n` is over.
pub fn check_n(n: u64, max_n: u64) -> io::Result<u64> {
    if n > max_n.min(MAX_SUMMABLE_N) {
        // The bound that applies: the server's, unless the sum's is lower.
        let why = if max_n < MAX_SUMMABLE_N {
            format!("this server takes n up to {max_n}")
        } else {
            format!("its sum does not fit in 64 bits (n is at most {MAX_SUMMABLE_N})")
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("n = {n} is too large: {why}"),
        ));
    }
    Ok(n)
}

/// Writes one reply: `sum` as ASCII decimal.
///
/// # Errors
///
/// Any I/O error of the write.
pub fn write_reply(stream: &mut impl Write, sum: u64) -> io::Result<()> {
    stream.write_all(sum.to_string().as_bytes())
}

/// Parses ASCII decimal, ignoring surrounding whitespace (the seed's
/// `int(data)` does the same).
///
/// # Errors
///
/// `InvalidData` if the bytes are not a decimal number.
pub fn parse_decimal(bytes: &[u8]) -> io::Result<u64> {
    std::str::from_utf8(bytes)
        .ok()
        .map(str::trim)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a decimal number: \"{}\"", bytes.escape_ascii()),
            )
        })
}

/// How an example program ends: success, or `<program>: <error>` on stderr
/// and a failure status (not the `Error: Custom { .. }` that returning the
/// error from `main` prints).
pub fn exit_code(program: &str, result: io::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// One request of the seed's client: connects to `addr`, sends `n`, reads
/// the answer until the server closes the connection.
///
/// # Errors
///
/// Any I/O error, or `InvalidData` if the answer is not a number.
pub fn request(addr: SocketAddr, n: u64) -> io::Result<u64> {
    request_on(&mut TcpStream::connect(addr)?, n)
}

/// The rest of a request once connected: sends `n` on `stream` and reads
/// the answer until the server closes the connection.
fn request_on(stream: &mut TcpStream, n: u64) -> io::Result<u64> {
    stream.set_nodelay(true)?;
    stream.write_all(n.to_string().as_bytes())?;
    let mut answer = Vec::with_capacity(24);
    stream.read_to_end(&mut answer)?;
    parse_decimal(&answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sumn_matches_the_closed_form() {
        for n in [0, 1, 2, 10, 25_000, 1 << 20] {
            assert_eq!(sumn(n), expected_sum(n), "n = {n}");
        }
    }

    #[test]
    fn requests_parse_like_the_seed() {
        assert_eq!(read_request(&mut &b"25000"[..]).unwrap(), 25_000);
        assert_eq!(read_request(&mut &b" 42\n"[..]).unwrap(), 42);
        assert!(read_request(&mut &b"x"[..]).is_err());
        assert!(read_request(&mut &b"-5"[..]).is_err());
        assert_eq!(
            read_request(&mut &b""[..]).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(read_request(&mut &b"0000000000000042"[..]).unwrap(), 42);
        let long = read_request(&mut &b"00000000000000042"[..]).unwrap_err();
        assert!(long.to_string().contains("at most 16 bytes"), "{long}");
    }

    #[test]
    fn n_is_bounded_by_the_server_and_by_64_bits() {
        assert_eq!(check_n(10, 10).unwrap(), 10);
        let over = check_n(11, 10).unwrap_err();
        assert!(over.to_string().contains("takes n up to 10"), "{over}");
        assert_eq!(check_n(MAX_SUMMABLE_N, u64::MAX).unwrap(), MAX_SUMMABLE_N);
        // Over both bounds: the server's, the lower, is the one to say.
        let both = check_n(u64::MAX, 10).unwrap_err();
        assert!(both.to_string().contains("takes n up to 10"), "{both}");
        let huge = check_n(MAX_SUMMABLE_N + 1, u64::MAX).unwrap_err();
        assert!(huge.to_string().contains("64 bits"), "{huge}");
        // The bound is exact: the sum of MAX_SUMMABLE_N fits, the next does not.
        let sum = |n: u64| u128::from(n) * (u128::from(n) + 1) / 2;
        assert!(sum(MAX_SUMMABLE_N) <= u128::from(u64::MAX));
        assert!(sum(MAX_SUMMABLE_N + 1) > u128::from(u64::MAX));
    }
}

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
