//! `--scale`: many connections held open at once. For each server and each
//! count, a fresh process of this program serves, another opens that many
//! connections to it; once the server has taken them all (one thread, or
//! one task, each) it reads its own resident memory, then the clients send
//! every request and check every answer.
//! Then each server is driven by 1,024 closed-loop clients with the
//! work-dominated `n`, for the tail.
//!
//! A fresh process per cell, because a process does not give back all the
//! memory a cell used (glibc keeps freed thread stacks, the allocator its
//! arenas), and the next cell would reuse it and look cheaper than it is.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ythread_demo::client::closed_loop;
use ythread_demo::{SEED_N, expected_sum};

use crate::table::Table;
use crate::variants::{self, BOUNDED, INLINE, PLAIN, POOL, TOKIO};

/// The rows compared: the seed's plain threads, ours, and tokio.
const ROWS: [&str; 5] = [PLAIN, INLINE, POOL, BOUNDED, TOKIO];

/// Connections held open at once.
pub(crate) const COUNTS: [usize; 3] = [1_000, 4_000, 10_000];

/// Closed-loop clients for the tail, work-dominated.
const TAIL_CLIENTS: usize = 1_024;

/// What one cell measured, in its own process.
#[derive(Debug, Default, Clone)]
struct Held {
    /// Resident memory (KiB) with the server started and warm.
    rss_started_kib: u64,
    /// Threads of the process then.
    threads_started: u64,
    /// Resident memory (KiB) with every connection taken.
    rss_held_kib: u64,
    /// Threads of the process with every connection taken.
    threads: u64,
    /// Connections opened.
    opened: u64,
    /// Requests answered right once all were sent.
    answered: u64,
    /// Why the cell stopped short, if it did.
    failure: Option<String>,
}

impl Held {
    /// Connections the server held at once: a threaded server holds one
    /// thread per connection it took (the others wait in the listen
    /// backlog); tokio holds every connection opened.
    fn held(&self) -> u64 {
        let more_threads = self.threads.saturating_sub(self.threads_started);
        if more_threads >= self.opened / 2 {
            more_threads
        } else {
            self.opened
        }
    }
}

/// The child's side: serves with `row`, holds `count` connections, prints
/// one line the parent parses, and exits.
pub(crate) fn cell(row: &str, count: usize) -> ! {
    raise_descriptor_limit();
    // Opened before the connections can take every descriptor.
    let _ = status("VmRSS:");
    let held = hold(row, count);
    println!(
        "scale-cell rss_started_kib={} threads_started={} rss_held_kib={} threads={} opened={} answered={} failure={}",
        held.rss_started_kib,
        held.threads_started,
        held.rss_held_kib,
        held.threads,
        held.opened,
        held.answered,
        encode(held.failure.as_deref())
    );
    // Not `stop`: with 10,000 threads, tearing down is slow and measures
    // nothing. The process's exit closes everything.
    std::process::exit(0);
}

fn hold(row: &str, count: usize) -> Held {
    let mut held = Held::default();
    let Some(variant) = variants::all().into_iter().find(|v| v.name == row) else {
        held.failure = Some(format!("no row {row}"));
        return held;
    };
    let server = match variant.start() {
        Ok(server) => server,
        Err(e) => {
            held.failure = Some(format!("start: {e}"));
            return held;
        }
    };
    let addr = server.addr();
    // Warm: the first connection starts the runtime's lazy parts.
    if ythread_demo::request(addr, 10).ok() != Some(55) {
        held.failure = Some("the warm-up request failed".into());
        return held;
    }
    settle();
    held.rss_started_kib = status("VmRSS:").unwrap_or(0);
    held.threads_started = status("Threads:").unwrap_or(0);
    // The clients in a process of their own: their descriptors and memory
    // are not the server's.
    let client = Command::new(std::env::current_exe().expect("the path of this program"))
        .args([
            "--scale-client",
            &addr.to_string(),
            "--connections",
            &count.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let mut client = match client {
        Ok(client) => client,
        Err(e) => {
            held.failure = Some(format!("cannot start the clients: {e}"));
            return held;
        }
    };
    let mut lines = BufReader::new(client.stdout.take().expect("piped")).lines();
    let opened = lines.next().and_then(Result::ok).unwrap_or_default();
    held.opened = field(&opened, "opened").parse().unwrap_or(0);
    if let Some(why) = failure_of(&opened) {
        held.failure = Some(why);
    }
    settle();
    held.rss_held_kib = status("VmRSS:").unwrap_or(0);
    held.threads = status("Threads:").unwrap_or(0);
    // Now every request, and every answer checked.
    let mut go = client.stdin.take().expect("piped");
    let _ = writeln!(go, "go");
    drop(go);
    let answered = lines.next().and_then(Result::ok).unwrap_or_default();
    held.answered = field(&answered, "answered").parse().unwrap_or(0);
    if let Some(why) = failure_of(&answered) {
        held.failure.get_or_insert(why);
    }
    let _ = client.wait();
    held
}

/// The clients' side (`--scale-client`): opens `count` connections to
/// `addr` and says how many (`opened K`), waits for a line on standard
/// input, then sends every request and reads every answer (`answered K`).
pub(crate) fn clients(addr: &str, count: usize) -> ! {
    let mut failure = None;
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        match TcpStream::connect(addr) {
            Ok(stream) => streams.push(stream),
            Err(e) => {
                failure = Some(format!("connect #{}: {e}", streams.len() + 1));
                break;
            }
        }
    }
    println!(
        "opened={} failure={}",
        streams.len(),
        encode(failure.as_deref())
    );
    let mut go = String::new();
    let _ = std::io::stdin().read_line(&mut go);
    let answered = answer_all(&mut streams, &mut failure);
    println!("answered={answered} failure={}", encode(failure.as_deref()));
    std::process::exit(0);
}

/// A failure as one word of a result line.
fn encode(failure: Option<&str>) -> String {
    failure
        .unwrap_or_default()
        .replace(char::is_whitespace, "_")
}

/// The value of `name=` in a result line.
fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or("")
        .to_owned()
}

fn failure_of(line: &str) -> Option<String> {
    let failure = field(line, "failure");
    (!failure.is_empty()).then(|| failure.replace('_', " "))
}

/// Sends a request on every stream, then reads every answer; returns how
/// many were right.
fn answer_all(streams: &mut [TcpStream], failure: &mut Option<String>) -> u64 {
    let request = SEED_N.to_string();
    for stream in streams.iter_mut() {
        if let Err(e) = stream.write_all(request.as_bytes()) {
            failure.get_or_insert(format!("send: {e}"));
        }
    }
    let mut right = 0;
    for stream in streams.iter_mut() {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        let mut answer = String::new();
        match stream.read_to_string(&mut answer) {
            Ok(_) if answer.trim().parse::<u64>().ok() == Some(expected_sum(SEED_N)) => right += 1,
            Ok(_) => {
                failure.get_or_insert(format!("wrong answer {answer:?}"));
            }
            Err(e) => {
                failure.get_or_insert(format!("read: {e}"));
            }
        }
    }
    right
}

/// Waits until the process's resident memory and thread count have not
/// changed for half a second (the server has taken what it was given), at
/// most 30 s.
fn settle() {
    let until = Instant::now() + Duration::from_secs(30);
    let mut last = (status("VmRSS:"), status("Threads:"));
    let mut still_since = Instant::now();
    while Instant::now() < until && still_since.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(50));
        let now = (status("VmRSS:"), status("Threads:"));
        if now != last {
            last = now;
            still_since = Instant::now();
        }
    }
}

/// A number field of /proc/self/status (kB for sizes). The file is opened
/// once and read again from its start each time: with every descriptor
/// taken by connections, opening it would fail.
fn status(field: &str) -> Option<u64> {
    static FILE: std::sync::OnceLock<Option<std::sync::Mutex<std::fs::File>>> =
        std::sync::OnceLock::new();
    let file = FILE.get_or_init(|| {
        std::fs::File::open("/proc/self/status")
            .ok()
            .map(Into::into)
    });
    let mut file = file.as_ref()?.lock().ok()?;
    let mut text = String::new();
    file.seek(std::io::SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// 10,000 connections take 20,000 descriptors in the threaded servers (the
/// socket, and the clone that `stop` uses to end a connection), more than
/// the usual soft limit: raise it to the hard one, or beyond where allowed
/// (`CAP_SYS_RESOURCE`).
fn raise_descriptor_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let wanted = 4 * COUNTS[COUNTS.len() - 1] as u64;
    let raised = Rlimit {
        current: Some(limit.current.map_or(wanted, |c| c.max(wanted))),
        maximum: limit.maximum.map(|m| m.max(wanted)),
    };
    if setrlimit(Resource::Nofile, raised).is_err() {
        // Not allowed beyond the hard limit: up to it, then.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
}

/// The parent's side: every row at every count, each in a fresh process,
/// then the tail at 1,024 clients; returns the report section.
pub(crate) fn run(work_n: u64, tail_requests: u64, client_nice: Option<i32>) -> String {
    let exe = std::env::current_exe().expect("the path of this program");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Scale: connections held open\n\nEach cell in a fresh process: the server started and warm, then N connections opened by a second process and held (each waiting for its request: a thread each for the threaded rows, a task for tokio), then every request sent (n = {SEED_N}) and every answer checked. Resident memory is the server process's VmRSS; per connection is its growth over the connections held.\n"
    );
    let mut headers = vec!["server".to_owned()];
    headers.extend(
        COUNTS
            .iter()
            .map(|n| format!("{n} opened: KiB per connection held")),
    );
    headers.push("answered".into());
    let mut t = Table::new(headers);
    let mut limits = Vec::new();
    for row in ROWS {
        let mut cells = vec![row.to_owned()];
        let mut answered = Vec::new();
        for count in COUNTS {
            eprintln!("bench: scale, {row}, {count} connections...");
            let held = run_cell(&exe, row, count);
            match &held {
                Ok(h) => {
                    let grown = h.rss_held_kib.saturating_sub(h.rss_started_kib);
                    let held = h.held();
                    cells.push(format!(
                        "{:.1} ({held} held)",
                        grown as f64 / held.max(1) as f64,
                    ));
                    answered.push(format!("{}/{count}", h.answered));
                    if let Some(why) = &h.failure {
                        limits.push(format!("{row}, {count} connections: {why}"));
                    }
                }
                Err(why) => {
                    cells.push("-".into());
                    answered.push("-".into());
                    limits.push(format!("{row}, {count} connections: {why}"));
                }
            }
        }
        cells.push(answered.join(", "));
        t.row(cells);
    }
    t.write_to(&mut out);
    if !limits.is_empty() {
        let _ = writeln!(out, "Cells that stopped short:\n");
        for l in &limits {
            let _ = writeln!(out, "- {l}");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "### {TAIL_CLIENTS} clients, work-dominated (n = {work_n}), {tail_requests} requests, closed loop\n"
    );
    let mut t = Table::new([
        "server",
        "wall s",
        "mean ms",
        "p99 ms",
        "wrong or failed",
        "SYN drops",
    ]);
    for row in ROWS {
        eprintln!("bench: scale, {row}, {TAIL_CLIENTS} clients...");
        let Some(variant) = variants::all().into_iter().find(|v| v.name == row) else {
            continue;
        };
        let Ok(server) = variant.start() else {
            t.row(vec![row.into(), "-".into()]);
            continue;
        };
        let drops_before = crate::sys::listen_drops();
        // The clients at the benchmark's priority (nice), as in its closed
        // loops: 1,024 server threads doing work would otherwise starve them,
        // and a request's latency would start only once its client got a
        // core (it counts from the connect).
        let addr = server.addr();
        let report = thread::scope(|s| {
            s.spawn(|| {
                if let Some(nice) = client_nice {
                    let _ = crate::sys::renice_this_thread(nice);
                }
                closed_loop(addr, work_n, tail_requests, TAIL_CLIENTS)
            })
            .join()
            .expect("the clients panicked")
        });
        server.stop();
        t.row(vec![
            row.into(),
            format!("{:.2}", report.wall.as_secs_f64()),
            format!("{:.0}", report.mean_us() / 1000.0),
            format!("{:.0}", report.p99_us() as f64 / 1000.0),
            (report.wrong + report.errors).to_string(),
            crate::sys::listen_drops()
                .zip(drops_before)
                .map_or("-".into(), |(after, before)| (after - before).to_string()),
        ]);
    }
    t.write_to(&mut out);
    out
}

fn run_cell(exe: &std::path::Path, row: &str, count: usize) -> Result<Held, String> {
    let output = Command::new(exe)
        .args(["--scale-cell", row, "--connections", &count.to_string()])
        .output()
        .map_err(|e| format!("cannot run the cell: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().find(|l| l.starts_with("scale-cell ")) else {
        return Err(format!(
            "the cell's process ended with {} and no result{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        ));
    };
    let number = |name: &str| field(line, name).parse().unwrap_or(0);
    Ok(Held {
        rss_started_kib: number("rss_started_kib"),
        threads_started: number("threads_started"),
        rss_held_kib: number("rss_held_kib"),
        threads: number("threads"),
        opened: number("opened"),
        answered: number("answered"),
        failure: failure_of(line),
    })
}
