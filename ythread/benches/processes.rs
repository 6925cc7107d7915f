//! An `offload!` round trip to a worker process (`Processes`), against a raw
//! round trip of 8 bytes through a pipe to a child process that echoes them:
//! the floor any worker process pays (two wake-ups).
//!
//! Run with: `cargo bench -p ythread --bench processes`

mod common;

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use ythread::{Processes, Yieldable};

use crate::common::offload_times;

/// Set in the echo child.
const ECHO_ENV: &str = "YTHREAD_BENCH_ECHO";

/// The echo child: 8 bytes in, the same 8 bytes out, until its input ends;
/// on stdin/stdout, or on a socket at descriptor 3.
fn echo() {
    if std::env::var_os(ECHO_ENV).is_some_and(|mode| mode == "socket") {
        // SAFETY: the parent placed a socket at descriptor 3 for this
        // process, which takes it once, here.
        let socket = unsafe { UnixStream::from_raw_fd(3) };
        return echo_on(&socket, &socket);
    }
    echo_on(std::io::stdin().lock(), std::io::stdout().lock());
}

fn echo_on(mut input: impl Read, mut output: impl Write) {
    let mut word = [0u8; 8];
    while input.read_exact(&mut word).is_ok() {
        if output
            .write_all(&word)
            .and_then(|()| output.flush())
            .is_err()
        {
            return;
        }
    }
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("process_round_trip");
    // Each child is started once and serves every sample: criterion calls a
    // bench's closure once per sample, and a process started per sample
    // would time its cold start (page faults, lazy initialisation).
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ECHO_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to = child.stdin.take().unwrap();
    let mut from = child.stdout.take().unwrap();
    group.bench_function("raw_pipe_echo", |b| {
        b.iter_custom(|iterations| {
            let mut word = [0u8; 8];
            let started = Instant::now();
            for i in 0..iterations {
                to.write_all(&i.to_le_bytes()).unwrap();
                from.read_exact(&mut word).unwrap();
            }
            black_box(word);
            started.elapsed()
        });
    });
    drop(to);
    child.wait().unwrap();

    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.env(ECHO_ENV, "socket");
    // SAFETY: `dup2` is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    drop(theirs);
    group.bench_function("raw_socket_echo", |b| {
        b.iter_custom(|iterations| {
            let mut word = [0u8; 8];
            let started = Instant::now();
            for i in 0..iterations {
                (&ours).write_all(&i.to_le_bytes()).unwrap();
                (&ours).read_exact(&mut word).unwrap();
            }
            black_box(word);
            started.elapsed()
        });
    });
    drop(ours);
    child.wait().unwrap();

    let cpu = Processes::new(1).unwrap();
    group.bench_function("processes_offload", |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            let x = offload_times(iterations).run_with(&cpu);
            assert_eq!(x, iterations);
            started.elapsed()
        });
    });
    group.finish();
}

fn main() {
    // This bench's workers are this program started again.
    ythread::processes::init();
    if std::env::var_os(ECHO_ENV).is_some() {
        echo();
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    round_trip(&mut c);
    c.final_summary();
}
