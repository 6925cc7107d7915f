//! Helpers shared by the integration tests that include this file with
//! `mod common;` (the demo package's `tests/hostile.rs` includes it by path).

use std::cell::Cell;
use std::panic;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::thread;
use std::time::{Duration, Instant};

use std::any::Any;

use ythread::{
    Apply, Bounded, Exclusive, Generator, GeneratorState, Inline, Pool, apply_fn, offload,
    yieldable,
};

/// A `nats-server` of one's own, for the `Remote` tests.
// Its items are `pub`: the demo package includes the file by path as a
// public module of its library, for the benchmark's `Remote` row.
#[allow(dead_code, unreachable_pub)] // Not every test file uses it.
pub(crate) mod nats;

thread_local! {
    /// Whether a panic on this thread is one a test causes on purpose.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, keeping the panics it causes on purpose out of the test output.
///
/// The panic hook is process-wide and tests run in parallel, so swapping it
/// around one test would also silence (or un-silence) the others. Instead a
/// hook is installed once that stays quiet only for a thread inside
/// `quietly`, and otherwise calls the hook it replaced: every other panic
/// still prints. The hook runs on the thread that panics, so call `quietly`
/// there: for work that panics, inside the work (`offload!(||
/// common::quietly(|| panic!(..)))`), which a `Pool` runs on its worker.
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub(crate) fn quietly<R>(f: impl FnOnce() -> R) -> R {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.get() {
                default(info);
            }
        }));
    });

    /// Restores the flag when `f` returns or unwinds.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            QUIET.set(self.0);
        }
    }
    let _restore = Restore(QUIET.replace(true));
    f()
}

/// Work that returns only once `expected` pieces are running at once (or a
/// generous deadline passes): proves that many permits or workers are free.
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub(crate) fn rendezvous(arrived: &AtomicUsize, expected: usize) -> bool {
    arrived.fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while arrived.load(Ordering::SeqCst) < expected {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
    true
}

/// A handler whose one piece of work is [`rendezvous`].
#[allow(dead_code)] // Not every test file that includes this module uses it.
#[yieldable]
pub(crate) fn meets(arrived: Arc<AtomicUsize>, expected: usize) -> bool {
    offload!(rendezvous, &arrived, expected)
}

/// The text of a panic payload made by `panic!` (a `&str` or a `String`).
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub(crate) fn panic_text(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<not a string>")
}

/// Steps `generator` to its end by hand, running each job right there.
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub(crate) fn run_by_hand<T>(mut generator: Generator<T>) -> T {
    loop {
        match generator.resume() {
            GeneratorState::Yielded(job) => job.run(),
            GeneratorState::Complete(value) => return value,
        }
    }
}

/// Every built-in strategy and a closure, boxed, so that a test can run
/// against all of them.
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub(crate) fn strategies() -> Vec<(&'static str, Box<dyn Apply>)> {
    vec![
        ("inline", Box::new(Inline)),
        ("exclusive", Box::new(Exclusive::new())),
        ("bounded", Box::new(Bounded::new(2))),
        ("pool", Box::new(Pool::new(2))),
        ("closure", Box::new(apply_fn(|job| job.run()))),
    ]
}

/// Runs `body` on a thread of its own and returns its value, or resumes its
/// panic; fails the test if it has not finished within `limit`, so that a
/// hang fails instead of stalling the suite. A hung thread is left behind:
/// nothing can free it.
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub(crate) fn watchdog<T: Send + 'static>(
    limit: Duration,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let test = thread::current().name().unwrap_or("test").to_owned();
    let (done, outcome) = std::sync::mpsc::channel();
    thread::Builder::new()
        .name(format!("{test} (watched)"))
        .spawn(move || {
            // The receiver is gone only if the watchdog already gave up.
            let _ = done.send(panic::catch_unwind(panic::AssertUnwindSafe(body)));
        })
        .expect("cannot spawn the test body's thread");
    match outcome.recv_timeout(limit) {
        Ok(Ok(value)) => value,
        Ok(Err(payload)) => panic::resume_unwind(payload),
        Err(_) => panic!("{test}: did not finish within {limit:?}, a hang"),
    }
}

/// The arguments that make this test binary run only `entry`, one of its
/// ignored tests that are entry points of the processes the other tests
/// start (worker processes, a parent of workers, a remote worker).
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub(crate) fn entry_args(entry: &str) -> [&str; 5] {
    [entry, "--exact", "--ignored", "--quiet", "--test-threads=1"]
}

/// `n` worker processes for the tests: this test binary, which serves
/// before its harness starts, with no setup. What they print (the panics
/// and crashes the tests cause on purpose) is kept by [`keep_line`], not
/// printed: a green run prints no failure-looking line.
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub(crate) fn worker_processes(n: usize) -> ythread::ProcessesBuilder {
    ythread::Processes::builder()
        .workers(n)
        .worker_output(keep_line)
}

/// One worker process whose printed lines, labelled, go to the returned
/// list only (for tests of the labels).
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub(crate) fn one_worker_with_its_lines() -> (ythread::Processes, Arc<std::sync::Mutex<Vec<String>>>)
{
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let cpu = ythread::Processes::builder()
        .workers(1)
        .worker_output(move |line| sink.lock().unwrap().push(line.to_owned()))
        .build()
        .expect("a worker process");
    (cpu, lines)
}

/// The last lines that worker processes and entry processes of this test
/// binary printed, for a failing test to show.
static LINES: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// Keeps `line` among the last 1000 printed (see [`printed_lines`]).
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub(crate) fn keep_line(line: &str) {
    let mut lines = LINES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if lines.len() == 1000 {
        lines.pop_front();
    }
    lines.push_back(line.to_owned());
}

/// The lines [`keep_line`] kept, oldest first.
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub(crate) fn printed_lines() -> Vec<String> {
    LINES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .cloned()
        .collect()
}

/// `R` (running), `S` (sleeping), `Z` (zombie), ... of the process `pid`, or
/// `None` if there is no such process.
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub(crate) fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits until `condition` holds, failing with `what` after 10 s.
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub(crate) fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// A new, empty directory of this test process's, named after `name`.
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub(crate) fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ythread-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A process running `entry`, one of this test binary's entry points (see
/// [`entry_args`]), with the variable `name` set to `value`; started once it
/// prints a line beginning with "ready"; killed (and reaped) when dropped.
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub(crate) struct EntryProcess {
    child: std::process::Child,
}

#[allow(dead_code)] // Not every test file that includes this module uses it.
impl EntryProcess {
    pub(crate) fn start(entry: &str, name: &str, value: &str) -> EntryProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(entry_args(entry))
            .arg("--nocapture")
            .env(name, value)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // What it prints on stderr (its workers' lines, panics it causes on
        // purpose) is kept, not shown.
        let errors = std::io::BufReader::new(child.stderr.take().unwrap());
        thread::spawn(move || {
            errors
                .lines()
                .map_while(Result::ok)
                .for_each(|l| keep_line(&l))
        });
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // (Dropped on a failure to start: killed.)
        let process = EntryProcess { child };
        loop {
            let line = lines.next().expect("the entry point started").unwrap();
            if line.starts_with("ready") {
                break;
            }
        }
        // Keep reading its stdout, so that it never blocks on a full pipe.
        thread::spawn(move || for _ in lines {});
        process
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its peak resident memory (`VmHWM`), in KiB.
    pub(crate) fn peak_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("VmHWM:"))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EntryProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
