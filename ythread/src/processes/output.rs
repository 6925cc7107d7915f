//! The parent's end of a worker process's output.
//!
//! A worker's stdout and stderr are one pipe. A thread of its own
//! ("ythread-output") reads it and relays each line to this process's stderr,
//! labelled with the worker and the call it was running when it wrote the
//! line (`f call 7`), so that a user can tell who printed what; it keeps the
//! last few KiB so that a death can be explained ([`cause`]). The worker
//! marks each call's start and end in the pipe itself (`mark.rs`): the
//! relay strips the marks and labels the lines between them, so a line's
//! label never depends on when the relay read it.
//!
//! The worker is another process and its output may be hostile: memory stays
//! bounded whatever it prints (lines are cut at [`LINE`] bytes, the tail kept
//! is [`TAIL`] bytes), and control characters are escaped so that it cannot
//! drive the parent's terminal or fake a label.

use std::collections::VecDeque;
use std::io::{self, PipeReader, Read, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_channel::Sender;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::mark;
use std::thread;
use std::time::{Duration, Instant};

/// The longest line relayed whole; a longer one is relayed in chunks of this
/// many bytes, each labelled as a line of its own.
const LINE: usize = 64 * 1024;

/// How many bytes of the worker's last output are kept to explain its death
/// (room for std's message and a `RUST_BACKTRACE=full` backtrace after it).
const TAIL: usize = 16 * 1024;

/// How many of the last lines [`cause`] reads (std's backtrace not counted).
const LAST_LINES: usize = 8;

/// How many calls sent and not yet seen starting the relay keeps the name
/// of: one would do (a worker runs one call at a time, and marks it before
/// its reply), the rest is for a relay that lags; a worker that writes no
/// marks (it died first, or its work closed its stderr) cannot make the
/// record grow.
const CALLS_KEPT: usize = 16;

/// The parent's end of one worker process's output (its stdout and stderr),
/// relayed line by line to this process's stderr by a thread of its own, each
/// line labelled.
pub(crate) struct Output {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output").finish_non_exhaustive()
    }
}

/// What an [`Output`] shares with its relay thread.
struct Shared {
    /// The calls sent to the worker whose start mark the relay has not read
    /// yet, by call number, oldest first, with the designation of each
    /// (`f call 7`): at most [`CALLS_KEPT`]. Held for a push by the parent
    /// once per call, and for a lookup by the relay once per mark, so it is
    /// all but never contended.
    calls: Mutex<VecDeque<(u32, Arc<str>)>>,
    tail: Mutex<Tail>,
    /// Notified when the relay thread sets `Tail::ended`.
    ended: Condvar,
}

/// The end of what the worker printed.
struct Tail {
    /// The last lines as relayed (escaped, without their labels, each ended by
    /// a newline): at most `TAIL` bytes.
    text: VecDeque<u8>,
    /// Whether `text` starts a line: nothing was dropped before it, or the
    /// last byte dropped was a newline.
    at_line_start: bool,
    /// The pipe reached its end of file: nothing more will come.
    ended: bool,
}

impl Output {
    /// Starts relaying `reader` (the read end of the pipe the worker writes
    /// to). `worker` is the worker's number in its pool (1, 2, ...), `pid` its
    /// process id. Spawns a thread named "ythread-output".
    ///
    /// Errors: the thread could not be spawned.
    /// The lines go to `sink` if given, else to this process's stderr.
    /// `nonce` is what the worker's marks carry (`mark.rs`).
    pub(crate) fn relay(
        reader: PipeReader,
        worker: usize,
        pid: u32,
        nonce: u64,
        sink: Option<WorkerOutput>,
    ) -> io::Result<Output> {
        let who = Who { worker, pid, nonce };
        match sink {
            None => relay_to(reader, who, StderrQueue),
            Some(sink) => relay_to(reader, who, Callback(sink)),
        }
    }

    /// The call numbered `call` is sent to the worker: the lines between its
    /// start and end marks are labelled `designation` (`f call 7`).
    ///
    /// On the hot path (once per call): one uncontended lock, nothing more.
    pub(crate) fn expect_call(&self, call: u32, designation: Arc<str>) {
        let mut calls = self
            .shared
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if calls.len() == CALLS_KEPT {
            calls.pop_front();
        }
        calls.push_back((call, designation));
    }

    /// Waits up to `wait` for the worker's output to end (the pipe's end of
    /// file: every holder closed it), then returns what the worker printed
    /// last (at most the last `TAIL` bytes, cut at a line start). Used after the
    /// worker died, to explain why.
    ///
    /// The text is as relayed: control characters escaped, no labels. If
    /// `wait` runs out (a process outside the worker's group still holds the
    /// pipe), a last line not yet ended by a newline is not in it.
    pub(crate) fn last_lines(&self, wait: Duration) -> String {
        let tail = self
            .shared
            .tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (tail, _) = self
            .shared
            .ended
            .wait_timeout_while(tail, wait, |tail| !tail.ended)
            .unwrap_or_else(PoisonError::into_inner);
        let text: Vec<u8> = tail.text.iter().copied().collect();
        // Every line in `text` ends with a newline, so one is found unless
        // `text` is empty.
        let start = if tail.at_line_start {
            0
        } else {
            text.iter()
                .position(|&b| b == b'\n')
                .map_or(0, |end| end + 1)
        };
        String::from_utf8_lossy(&text[start..]).into_owned()
    }
}

/// This process's stderr, for the relays: each line goes, whole, to a
/// queue, and one writer thread ("ythread-stderr") writes the queue out
/// under stderr's lock (so a line is never interleaved with another
/// thread's). A stderr that takes no more (a full pipe nobody reads, a
/// stalled terminal, the program's own thread blocked in `eprintln!`) holds
/// the writer alone: the relays go on draining their workers' pipes, and
/// wait while the writer gets lines out, and drop the lines that find
/// [`QUEUE_BYTES`] waiting once it has written none for [`STALL`]; the writer
/// says how many once stderr takes lines again.
struct StderrQueue;

/// The most bytes of lines waiting for stderr.
const QUEUE_BYTES: usize = 1 << 20;

/// What a queued line costs beyond its bytes (its allocation, its slot in
/// the queue), against [`QUEUE_BYTES`].
const LINE_OVERHEAD: usize = 64;

/// How long the writer may write nothing, its queue full, before the relays
/// drop lines: stderr has stalled, not slowed.
const STALL: Duration = Duration::from_secs(1);

/// When the writer last started or ended writing a line (or started).
static LAST_WRITE: Mutex<Option<Instant>> = Mutex::new(None);

/// Bytes of lines waiting for stderr, and lines dropped since the writer
/// last said so.
static QUEUED: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

impl Write for StderrQueue {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes).map(|()| bytes.len())
    }

    fn write_all(&mut self, line: &[u8]) -> io::Result<()> {
        // What a queued line costs: its bytes, its allocation, its slot.
        let cost = line.len() + LINE_OVERHEAD;
        while QUEUED.fetch_add(cost, Ordering::AcqRel) + cost > QUEUE_BYTES {
            QUEUED.fetch_sub(cost, Ordering::AcqRel);
            // Full: while the writer gets lines out, wait for room (stderr
            // is slow, not stalled); once it has written nothing for
            // `STALL`, drop the line.
            let last = *LAST_WRITE.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_none_or(|last| last.elapsed() >= STALL) {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            thread::sleep(Duration::from_millis(1));
        }
        match stderr_writer() {
            Some(writer) if writer.send(line.to_vec()).is_ok() => {}
            // (No writer thread: counted as dropped, and the next line
            // tries to start one again.)
            _ => {
                QUEUED.fetch_sub(cost, Ordering::AcqRel);
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Waits up to `wait` for the lines queued for stderr to be written.
pub(crate) fn drain(wait: Duration) {
    let end = Instant::now() + wait;
    while QUEUED.load(Ordering::Acquire) > 0 && Instant::now() < end {
        thread::sleep(Duration::from_millis(1));
    }
}

/// The queue of the thread that writes the relays' lines to stderr,
/// started on first use; `None` if it could not be (the next line tries
/// again).
fn stderr_writer() -> Option<Sender<Vec<u8>>> {
    static WRITER: Mutex<Option<Sender<Vec<u8>>>> = Mutex::new(None);
    let mut writer = WRITER.lock().unwrap_or_else(PoisonError::into_inner);
    if writer.is_none() {
        let (lines, queue) = crossbeam_channel::unbounded::<Vec<u8>>();
        let spawned = thread::Builder::new()
            .name("ythread-stderr".into())
            .spawn(move || {
                // A stderr nobody reads any more fails the writes; it must
                // not kill the program (see `sigpipe.rs`).
                super::sigpipe::block_for_this_thread();
                for line in queue {
                    // (A write is measured from its start: an idle writer
                    // has not stalled.)
                    *LAST_WRITE.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(Instant::now());
                    let mut stderr = io::stderr().lock();
                    // (An error, stderr closed, loses the line: the queue
                    // must still drain.)
                    let _ = stderr.write_all(&line);
                    QUEUED.fetch_sub(line.len() + LINE_OVERHEAD, Ordering::AcqRel);
                    *LAST_WRITE.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(Instant::now());
                    let dropped = DROPPED.swap(0, Ordering::Relaxed);
                    if dropped > 0 {
                        let _ = writeln!(
                            stderr,
                            "[ythread] {dropped} line(s) of worker output dropped: stderr took \
                             none for {STALL:?}"
                        );
                    }
                }
            });
        if spawned.is_ok() {
            // (Its start counts as a write: the stall is measured from it.)
            *LAST_WRITE.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            *writer = Some(lines);
        }
    }
    writer.clone()
}

/// A callback that takes each line a worker process prints
/// (`ProcessesBuilder::worker_output`).
#[derive(Clone)]
pub(crate) struct WorkerOutput(pub(crate) Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for WorkerOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerOutput(a callback)")
    }
}

/// A user's callback as the relay's sink: each write is one whole line
/// (see `Relay::flush_line`), handed over without its newline.
struct Callback(WorkerOutput);

impl Write for Callback {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        (self.0.0)(&String::from_utf8_lossy(line));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whose output a relay reads: the worker's number in its pool (1, 2, ...),
/// its process id, and the nonce of its marks.
#[derive(Clone, Copy)]
struct Who {
    worker: usize,
    pid: u32,
    nonce: u64,
}

/// [`Output::relay`], writing the labelled lines to `sink` (stderr but in the
/// tests).
fn relay_to(reader: PipeReader, who: Who, sink: impl Write + Send + 'static) -> io::Result<Output> {
    let shared = Arc::new(Shared {
        calls: Mutex::new(VecDeque::new()),
        tail: Mutex::new(Tail {
            text: VecDeque::with_capacity(TAIL),
            at_line_start: true,
            ended: false,
        }),
        ended: Condvar::new(),
    });
    let relay = Relay {
        shared: Arc::clone(&shared),
        worker: who.worker,
        pid: who.pid,
        prefix: mark::prefix(who.nonce),
        running: None,
        sink,
        out: Vec::new(),
    };
    // Detached: the thread ends by itself at end of file, which comes once
    // the worker (and its process group, killed by the caller) is gone, so
    // dropping the `Output` never waits for it.
    thread::Builder::new()
        .name("ythread-output".into())
        .spawn(move || {
            relay.run(reader);
        })?;
    Ok(Output { shared })
}

/// The relay thread's state.
struct Relay<W> {
    shared: Arc<Shared>,
    worker: usize,
    pid: u32,
    /// What the worker's marks start with.
    prefix: Vec<u8>,
    /// The designation of the call the worker ran when it wrote the bytes
    /// read last (`f call 7`): set by a start mark, cleared by an end mark.
    running: Option<Arc<str>>,
    sink: W,
    /// The line being written: label, escaped text, newline. Reused; at most
    /// the label plus 4 bytes for each of a chunk's `LINE` bytes (`\x1b`).
    out: Vec<u8>,
}

impl<W: Write> Relay<W> {
    /// Relays `reader` until its end of file, then tells `last_lines`.
    fn run(mut self, mut reader: PipeReader) {
        let mut buffer = [0; 8 * 1024];
        // The bytes of the current line read so far: never more than `LINE`.
        let mut line = Vec::with_capacity(LINE);
        // A mark is at most this long: a full line whose last bytes may start
        // one keeps them for the next chunk, so that no mark is ever cut.
        let mark_room = mark::MAX_MARK.min(LINE);
        loop {
            let mut rest = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => &buffer[..n],
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                // Not expected of a pipe; as at end of file, nothing more
                // can be read.
                Err(_) => break,
            };
            while !rest.is_empty() {
                let room = LINE - line.len();
                // One byte past the room: a newline right after a full line
                // ends it, rather than an empty line after a chunk.
                let window = &rest[..rest.len().min(room + 1)];
                if let Some(end) = window.iter().position(|&b| b == b'\n') {
                    line.extend_from_slice(&window[..end]);
                    self.line(&line);
                    line.clear();
                    rest = &rest[end + 1..];
                } else if room == 0 {
                    // A full line that goes on: this much is a chunk, up to
                    // a NUL near its end, which may start a mark.
                    let tail = LINE - mark_room;
                    let cut = line[tail..]
                        .iter()
                        .rposition(|&b| b == 0)
                        .map_or(LINE, |at| tail + at);
                    let cut = if cut == 0 { LINE } else { cut };
                    self.emit(&line[..cut]);
                    line.drain(..cut);
                } else {
                    let taken = window.len().min(room);
                    line.extend_from_slice(&rest[..taken]);
                    rest = &rest[taken..];
                }
            }
        }
        // A last line without a newline is relayed all the same.
        if !line.is_empty() {
            self.line(&line);
        }
        self.shared
            .tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ended = true;
        self.shared.ended.notify_all();
    }

    /// Takes one line (without its newline): a mark, which may end a line
    /// the work left open, or text to relay.
    fn line(&mut self, line: &[u8]) {
        let at = line
            .windows(self.prefix.len())
            .position(|window| window == self.prefix);
        if let Some(at) = at
            && let Some((call, start)) = mark::parse(&line[at + self.prefix.len()..])
        {
            // The text before the mark was written before it: it belongs
            // to the call that ran then.
            if at > 0 {
                self.emit(&line[..at]);
            }
            self.running = if start {
                let mut calls = self
                    .shared
                    .calls
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                // The calls before it are over: their marks were lost.
                let found = calls.iter().position(|(number, _)| *number == call);
                found.and_then(|found| calls.drain(..=found).next_back().map(|(_, name)| name))
            } else {
                None
            };
            return;
        }
        self.emit(line);
    }

    /// Relays one line (without its newline) and keeps it in the tail.
    fn emit(&mut self, line: &[u8]) {
        let (worker, pid) = (self.worker, self.pid);
        self.out.clear();
        // Writing to a `Vec` cannot fail.
        let _ = match &self.running {
            Some(call) => write!(self.out, "[ythread worker {worker} pid {pid} {call}] "),
            None => write!(self.out, "[ythread worker {worker} pid {pid}] "),
        };
        let label = self.out.len();
        // `String::from_utf8_lossy`, without allocating.
        for chunk in line.utf8_chunks() {
            escape(chunk.valid(), &mut self.out);
            if !chunk.invalid().is_empty() {
                self.out.extend_from_slice("\u{FFFD}".as_bytes());
            }
        }
        self.out.push(b'\n');
        // One `write_all`, so that the line is written whole. An error
        // (stderr closed) is ignored: the pipe must still be drained, or the
        // worker would block writing to it, and the tail still kept.
        let _ = self.sink.write_all(&self.out);
        self.shared
            .tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(&self.out[label..]);
    }
}

/// Appends `text` to `out` with every control character but tab (C0, DEL,
/// C1) written as a visible escape such as `\x1b`: the worker cannot send the
/// terminal commands (ESC, CSI), ring it (BEL), or go back over the label
/// (CR, BS) to rewrite it. Colours (SGR sequences, `ESC [ 1;31 m`: what
/// loggers print) pass, and a line that set one ends with a reset, so that
/// it cannot colour the lines after it.
fn escape(text: &str, out: &mut Vec<u8>) {
    escape_with(text, out, true);
}

/// `text` with every control character but tab escaped as by [`escape`],
/// colours too: for text that goes on to another program's logs (a worker's
/// `tracing` events), where a colour could only be noise.
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) fn escape_all(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    escape_with(text, &mut out, false);
    // Escapes are ASCII, and the rest is `text`'s own characters, whole.
    String::from_utf8(out).unwrap_or_default()
}

/// [`escape`], letting colours pass if `colours`.
fn escape_with(text: &str, out: &mut Vec<u8>, colours: bool) {
    let mut coloured = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if colours
            && c == '\x1b'
            && let Some(length) = sgr_length(rest)
        {
            out.extend_from_slice(&rest.as_bytes()[..length]);
            coloured = true;
            rest = &rest[length..];
            continue;
        }
        if c.is_control() && c != '\t' {
            // Writing to a `Vec` cannot fail.
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else if is_invisible_format(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        }
        rest = &rest[c.len_utf8()..];
    }
    if coloured {
        out.extend_from_slice(b"\x1b[0m");
    }
}

/// Characters that are not control characters but move or hide text: line
/// and paragraph separators (a new line that is not one), bidirectional
/// overrides and isolates (text drawn in another order than it is), and
/// zero-width ones (a label that looks like another).
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
    )
}

/// The length of the SGR sequence `text` starts with (`ESC [`, at most 32
/// digits and semicolons, `m`), if it starts with one.
fn sgr_length(text: &str) -> Option<usize> {
    let parameters = text.strip_prefix("\x1b[")?;
    let digits = parameters
        .bytes()
        .take(33)
        .position(|b| !(b.is_ascii_digit() || b == b';'))?;
    (parameters.as_bytes()[digits] == b'm').then_some(2 + digits + 1)
}

impl Tail {
    /// Appends `line` (ended by a newline), dropping the oldest bytes beyond
    /// `TAIL`.
    fn push(&mut self, line: &[u8]) {
        // Of `text` then `line`, the first `excess` bytes go.
        let excess = (self.text.len() + line.len()).saturating_sub(TAIL);
        let from_text = excess.min(self.text.len());
        let from_line = excess - from_text;
        if excess > 0 {
            let last_dropped = match from_line {
                0 => self.text[from_text - 1],
                n => line[n - 1],
            };
            self.at_line_start = last_dropped == b'\n';
            self.text.drain(..from_text);
        }
        self.text.extend(&line[from_line..]);
    }
}

/// What a dead worker's last lines say it died of, if they name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Cause {
    /// std's report of a thread's stack overflow, or ythread's of a
    /// coroutine's.
    StackOverflow,
    /// std's report of a failed allocation.
    OutOfMemory,
}

/// What a dead worker's last lines (from [`Output::last_lines`]) say it died
/// of, if they name it.
///
/// Only the last 8 lines count, not counting std's backtrace (with
/// `RUST_BACKTRACE` set, std follows "memory allocation of N bytes failed"
/// with one): what a worker printed last before it aborted. A program that
/// printed such a message earlier, then went on and died of something else,
/// is not taken to have died of it. Each message is matched at the start of
/// its line, as std and ythread print it, not anywhere in a line of the
/// program's own.
pub(crate) fn cause(last_lines: &str) -> Option<Cause> {
    let lines = last_lines.lines().rev().filter(|line| !in_backtrace(line));
    lines.take(LAST_LINES).find_map(names)
}

/// The cause `line` names, if it is one of the messages std or ythread print
/// as they abort.
fn names(line: &str) -> Option<Cause> {
    // std: "thread 'main' (12345) has overflowed its stack", then, as after
    // ythread's report, "fatal runtime error: stack overflow, aborting" (older
    // versions print neither the thread id nor ", aborting").
    let std_overflow = line.starts_with("thread '") && line.ends_with(" has overflowed its stack")
        || line.starts_with("fatal runtime error: stack overflow");
    // ythread: "ythread: the handler `f` has overflowed its coroutine stack of
    // N bytes".
    let ythread_overflow = line.starts_with("ythread: ") && line.contains(" has overflowed its ");
    if std_overflow || ythread_overflow {
        Some(Cause::StackOverflow)
    } else if line.starts_with("memory allocation of ") && line.ends_with(" bytes failed") {
        Some(Cause::OutOfMemory)
    } else {
        None
    }
}

/// Whether `line` is one of std's lines after an abort message: its
/// backtrace ("stack backtrace:", "  3: f", "      at src/f.rs:1:2",
/// "      [... omitted 2 frames ...]") and its notes ("note: run with
/// `RUST_BACKTRACE=1` ...").
fn in_backtrace(line: &str) -> bool {
    let line = line.trim_start();
    line == "stack backtrace:"
        || line.starts_with("note: ")
        || line.starts_with("at ")
        || line.starts_with("[... omitted ")
        || line.split_once(": ").is_some_and(|(frame, _)| {
            !frame.is_empty() && frame.bytes().all(|b| b.is_ascii_digit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::PipeWriter;
    use std::process::Command;
    use std::time::Instant;

    /// Long enough for any wait that should end at once.
    const LONG: Duration = Duration::from_secs(20);

    /// Collects what relays write, one entry per `write_all`.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_all(buf)?;
            Ok(buf.len())
        }
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn writes(&self) -> Vec<String> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect()
        }
        /// Waits until `n` lines were written.
        fn wait_for(&self, n: usize) {
            let deadline = Instant::now() + LONG;
            while self.0.lock().unwrap().len() < n {
                assert!(
                    Instant::now() < deadline,
                    "{n} lines never came: {:?}",
                    self.writes()
                );
                thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// The nonce of the marks in these tests.
    const NONCE: u64 = 0x0123_4567_89ab_cdef;

    fn who(worker: usize, pid: u32) -> Who {
        Who {
            worker,
            pid,
            nonce: NONCE,
        }
    }

    fn start(worker: usize, pid: u32) -> (Output, PipeWriter, Sink) {
        let (reader, writer) = io::pipe().unwrap();
        let sink = Sink::default();
        let output = relay_to(reader, who(worker, pid), sink.clone()).unwrap();
        (output, writer, sink)
    }

    /// The mark of call `call` starting or ending, as a worker writes it.
    fn mark(call: u32, start: bool) -> String {
        super::mark::mark(NONCE, call, start)
    }

    /// Closes the pipe and waits for the relay to reach its end of file.
    fn finish(output: &Output, writer: PipeWriter) -> String {
        drop(writer);
        output.last_lines(LONG)
    }

    #[test]
    fn labels_follow_the_marks() {
        let (output, mut writer, sink) = start(2, 12345);
        writer.write_all(b"before\n").unwrap();
        output.expect_call(1, "crate::cpu::sumn call 1".into());
        let text = format!(
            "{}during\nhalf a line{}after\n",
            mark(1, true),
            mark(1, false)
        );
        writer.write_all(text.as_bytes()).unwrap();
        let tail = finish(&output, writer);
        assert_eq!(
            sink.writes(),
            [
                "[ythread worker 2 pid 12345] before\n",
                "[ythread worker 2 pid 12345 crate::cpu::sumn call 1] during\n",
                "[ythread worker 2 pid 12345 crate::cpu::sumn call 1] half a line\n",
                "[ythread worker 2 pid 12345] after\n",
            ]
        );
        // The marks are not the worker's text.
        assert_eq!(tail, "before\nduring\nhalf a line\nafter\n");
    }

    #[test]
    fn a_lagging_relay_labels_each_line_with_the_call_that_wrote_it() {
        let (output, mut writer, sink) = start(1, 7);
        // Both calls are sent before the relay reads a byte of the first's.
        output.expect_call(1, "f call 1".into());
        output.expect_call(2, "g call 2".into());
        let text = [
            mark(1, true),
            "one\nopen".into(),
            mark(1, false),
            mark(2, true),
            "two\n".into(),
            mark(2, false),
            "between calls\n".into(),
        ]
        .concat();
        // Byte by byte: marks cut across reads are still marks.
        for byte in text.as_bytes() {
            writer.write_all(&[*byte]).unwrap();
        }
        finish(&output, writer);
        assert_eq!(
            sink.writes(),
            [
                "[ythread worker 1 pid 7 f call 1] one\n",
                "[ythread worker 1 pid 7 f call 1] open\n",
                "[ythread worker 1 pid 7 g call 2] two\n",
                "[ythread worker 1 pid 7] between calls\n",
            ]
        );
    }

    #[test]
    fn marks_of_another_nonce_or_of_a_call_never_sent_label_nothing() {
        let (output, mut writer, sink) = start(1, 7);
        output.expect_call(1, "f call 1".into());
        let forged = super::mark::mark(NONCE ^ 1, 1, true);
        writer.write_all(forged.as_bytes()).unwrap();
        writer.write_all(b"text\n").unwrap();
        writer.write_all(mark(9, true).as_bytes()).unwrap();
        writer.write_all(b"more\n").unwrap();
        finish(&output, writer);
        let forged = forged.trim_end().replace('\0', "\\x00");
        assert_eq!(
            sink.writes(),
            [
                format!("[ythread worker 1 pid 7] {forged}\n"),
                "[ythread worker 1 pid 7] text\n".to_owned(),
                "[ythread worker 1 pid 7] more\n".to_owned(),
            ]
        );
    }

    #[test]
    fn a_mark_after_a_long_open_line_is_never_cut() {
        let (output, mut writer, sink) = start(1, 7);
        output.expect_call(1, "f call 1".into());
        writer.write_all(mark(1, true).as_bytes()).unwrap();
        // The end mark straddles the chunk boundary.
        let text = format!("{}{}next\n", "x".repeat(LINE - 10), mark(1, false));
        writer.write_all(text.as_bytes()).unwrap();
        finish(&output, writer);
        assert_eq!(
            sink.writes(),
            [
                format!(
                    "[ythread worker 1 pid 7 f call 1] {}\n",
                    "x".repeat(LINE - 10)
                ),
                "[ythread worker 1 pid 7] next\n".to_owned(),
            ]
        );
    }

    #[test]
    fn escape_all_escapes_colours_too() {
        assert_eq!(
            escape_all("a\x1b[31mred\r\u{202e}\tb"),
            "a\\x1b[31mred\\x0d\\u{202e}\tb"
        );
    }

    #[test]
    fn lines_across_writes_invalid_utf8_and_a_last_line_without_newline() {
        let (output, mut writer, sink) = start(1, 7);
        for piece in [&b"a"[..], b"b\nc\n\nd", b"\xffe\n", b"partial"] {
            writer.write_all(piece).unwrap();
        }
        let tail = finish(&output, writer);
        let label = "[ythread worker 1 pid 7] ";
        let lines = ["ab", "c", "", "d\u{FFFD}e", "partial"];
        assert_eq!(sink.writes(), lines.map(|line| format!("{label}{line}\n")));
        assert_eq!(tail, "ab\nc\n\nd\u{FFFD}e\npartial\n");
    }

    #[test]
    fn long_lines_are_relayed_in_chunks() {
        let (output, mut writer, sink) = start(1, 7);
        let mut text = vec![b'x'; 2 * LINE + 10];
        text.push(b'\n');
        // Exactly `LINE` bytes then a newline: one line, no empty one after.
        text.extend(vec![b'y'; LINE]);
        text.extend(b"\nz\n");
        // The relay thread drains the pipe as this writes.
        writer.write_all(&text).unwrap();
        finish(&output, writer);
        let label = "[ythread worker 1 pid 7] ";
        let writes = sink.writes();
        let expected = [("x", LINE), ("x", LINE), ("x", 10), ("y", LINE), ("z", 1)]
            .map(|(c, n)| format!("{label}{}\n", c.repeat(n)));
        assert!(
            writes == expected,
            "{:?}",
            writes.iter().map(String::len).collect::<Vec<_>>()
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        let (output, mut writer, sink) = start(1, 7);
        writer
            .write_all("a\x1b[2Jb\rc\x07d\x7fe\u{9b}f\tg\0h\x08\n".as_bytes())
            .unwrap();
        // A fake label: the real one stays first, the CR before it visible.
        writer
            .write_all(b"\r[ythread worker 9 pid 1 crate::f] fake\n")
            .unwrap();
        finish(&output, writer);
        assert_eq!(
            sink.writes(),
            [
                "[ythread worker 1 pid 7] a\\x1b[2Jb\\x0dc\\x07d\\x7fe\\x9bf\tg\\x00h\\x08\n",
                "[ythread worker 1 pid 7] \\x0d[ythread worker 9 pid 1 crate::f] fake\n",
            ]
        );
    }

    #[test]
    fn characters_that_move_or_hide_text_are_escaped() {
        let (output, mut writer, sink) = start(1, 7);
        writer
            .write_all(
                "a\u{2028}[ythread worker 9 pid 1 f] b\u{202e}cba\u{200b}d\u{feff}é\n".as_bytes(),
            )
            .unwrap();
        finish(&output, writer);
        assert_eq!(
            sink.writes(),
            [
                "[ythread worker 1 pid 7] a\\u{2028}[ythread worker 9 pid 1 f] b\\u{202e}cba\\u{200b}d\\u{feff}é\n"
            ]
        );
    }

    #[test]
    fn colours_pass_and_are_reset_at_the_end_of_their_line() {
        let (output, mut writer, sink) = start(1, 7);
        writer
            .write_all(b"\x1b[2m12:00\x1b[0m \x1b[32m INFO\x1b[0m ok\n\x1b[31mred to the end\n")
            .unwrap();
        // Not colours: a cursor move, an unfinished or overlong sequence.
        writer
            .write_all(format!("\x1b[2A\x1b[31\x1b[{}m\n", "1".repeat(40)).as_bytes())
            .unwrap();
        finish(&output, writer);
        assert_eq!(
            sink.writes(),
            [
                "[ythread worker 1 pid 7] \x1b[2m12:00\x1b[0m \x1b[32m INFO\x1b[0m ok\x1b[0m\n",
                "[ythread worker 1 pid 7] \x1b[31mred to the end\x1b[0m\n",
                &format!(
                    "[ythread worker 1 pid 7] \\x1b[2A\\x1b[31\\x1b[{}m\n",
                    "1".repeat(40)
                ),
            ]
        );
    }

    #[test]
    fn concurrent_relays_never_interleave_within_a_line() {
        const LINES: usize = 2000;
        let sink = Sink::default();
        let relays: Vec<_> = (1..=2)
            .map(|worker| {
                let (reader, mut writer) = io::pipe().unwrap();
                let output = relay_to(reader, who(worker, 100), sink.clone()).unwrap();
                let printer = thread::spawn(move || {
                    // Lines cut across writes, several lines per write.
                    let text: String = (0..LINES)
                        .map(|i| format!("w{worker} line {i}\n"))
                        .collect();
                    for piece in text.as_bytes().chunks(7 + worker) {
                        writer.write_all(piece).unwrap();
                    }
                });
                (output, printer)
            })
            .collect();
        for (output, printer) in relays {
            printer.join().unwrap();
            output.last_lines(LONG);
        }
        let writes = sink.writes();
        assert_eq!(writes.len(), 2 * LINES);
        // Each write is one whole line, and each worker's lines come in order.
        let mut next = [0; 2];
        for write in writes {
            let worker = if write.starts_with("[ythread worker 1 ") {
                1
            } else {
                2
            };
            let i = &mut next[worker - 1];
            assert_eq!(
                write,
                format!("[ythread worker {worker} pid 100] w{worker} line {i}\n")
            );
            *i += 1;
        }
    }

    #[test]
    fn last_lines_is_the_tail_cut_at_a_line_start() {
        let (output, mut writer, _sink) = start(1, 7);
        let text: String = (0..TAIL / 20)
            .map(|i| format!("line {i:04} {}\n", "-".repeat(i % 100)))
            .collect();
        writer.write_all(text.as_bytes()).unwrap();
        let tail = finish(&output, writer);
        assert!(
            tail.len() <= TAIL && tail.len() > TAIL - 120,
            "{}",
            tail.len()
        );
        assert!(tail.starts_with("line ") && text.ends_with(&tail), "{tail}");
        // Lines that fill it exactly are all kept, the first too.
        let (output, mut writer, _sink) = start(1, 7);
        let text: String = (0..2 * TAIL / 64).map(|i| format!("{i:063}\n")).collect();
        writer.write_all(text.as_bytes()).unwrap();
        assert_eq!(finish(&output, writer), text[text.len() - TAIL..]);
        // A line longer than the tail leaves no line start in it.
        let (output, mut writer, _sink) = start(1, 7);
        writer
            .write_all(format!("{}\n", "x".repeat(TAIL)).as_bytes())
            .unwrap();
        assert_eq!(finish(&output, writer), "");
        // Nothing printed, nothing kept.
        let (output, writer, _sink) = start(1, 7);
        assert_eq!(finish(&output, writer), "");
    }

    #[test]
    fn last_lines_waits_no_longer_than_told_while_the_pipe_stays_open() {
        let (output, mut writer, sink) = start(1, 7);
        writer.write_all(b"still here\nhalf a li").unwrap();
        sink.wait_for(1);
        let wait = Duration::from_millis(200);
        let started = Instant::now();
        assert_eq!(output.last_lines(wait), "still here\n");
        let waited = started.elapsed();
        assert!(waited >= wait && waited < LONG / 4, "{waited:?}");
        // Dropping the output does not wait for its thread, which relays on
        // until the end of file.
        drop(output);
        writer.write_all(b"ne\n").unwrap();
        sink.wait_for(2);
        drop(writer);
        assert_eq!(sink.writes()[1], "[ythread worker 1 pid 7] half a line\n");
    }

    /// Runs `sh -c script sh args...` as worker 3, its stdout and stderr
    /// the pipe; returns once it exited and its output ended.
    fn run(script: &str, args: &[String]) -> (Sink, u32, String) {
        let (reader, writer) = io::pipe().unwrap();
        // The `Command`, and with it our copies of the write end, is dropped
        // once the child is spawned.
        let mut child = Command::new("sh")
            .args(["-c", script, "sh"])
            .args(args)
            .stdout(writer.try_clone().unwrap())
            .stderr(writer)
            .spawn()
            .unwrap();
        let sink = Sink::default();
        let output = relay_to(reader, who(3, child.id()), sink.clone()).unwrap();
        child.wait().unwrap();
        (sink, child.id(), output.last_lines(LONG))
    }

    #[test]
    fn relays_a_child_process() {
        let script = r"echo one; printf '\033[2Jclear\n'; echo two >&2; printf partial";
        let (sink, pid, tail) = run(script, &[]);
        let lines = ["one", r"\x1b[2Jclear", "two", "partial"];
        let label = format!("[ythread worker 3 pid {pid}] ");
        assert_eq!(sink.writes(), lines.map(|line| format!("{label}{line}\n")));
        assert_eq!(tail, lines.map(|line| format!("{line}\n")).concat());
    }

    #[test]
    fn cause_of_a_child_that_died() {
        // Prints its arguments, one a line, then sends itself a signal.
        let dies_of = |signal| format!(r#"printf '%s\n' "$@"; kill -s {signal} $$"#);
        let overflow = [
            "working",
            "",
            "thread 'main' (42) has overflowed its stack",
            "fatal runtime error: stack overflow, aborting",
        ]
        .map(String::from);
        let tail = run(&dies_of("ABRT"), &overflow).2;
        assert_eq!(cause(&tail), Some(Cause::StackOverflow), "{tail}");
        // The message, then more lines, then a death of something else.
        let mut decoy = vec!["memory allocation of 8 bytes failed".to_owned()];
        decoy.extend((1..=20).map(|i| format!("line {i}")));
        let tail = run(&dies_of("KILL"), &decoy).2;
        assert!(
            tail.starts_with("memory allocation of 8 bytes failed\n"),
            "{tail}"
        );
        assert_eq!(cause(&tail), None);
    }

    #[test]
    fn relay_writes_to_stderr() {
        let (reader, mut writer) = io::pipe().unwrap();
        let output = Output::relay(reader, 1, 0, NONCE, None).unwrap();
        writer.write_all(b"relayed to the test's stderr\n").unwrap();
        drop(writer);
        assert_eq!(output.last_lines(LONG), "relayed to the test's stderr\n");
    }

    // What std and ythread print as they abort, byte for byte (Rust 1.95).
    const STD_OVERFLOW: &str = "\nthread 'main' (3489) has overflowed its stack\nfatal runtime error: stack overflow, aborting\n";
    const OLD_STD_OVERFLOW: &str =
        "\nthread '<unnamed>' has overflowed its stack\nfatal runtime error: stack overflow\n";
    const YTHREAD_OVERFLOW: &str = "\nythread: the handler `fatal::recurses_forever` has overflowed its coroutine stack of 65536 bytes\n\
        ythread: give it a larger one with `Yieldable::with_stack_size`, `YieldableThread::coroutine_stack_size`, \
        or RUST_MIN_STACK (the default is std's, 2 MiB)\nfatal runtime error: stack overflow, aborting\n";
    const STD_OOM: &str = "memory allocation of 1048576 bytes failed\n";
    // With RUST_BACKTRACE=1.
    const STD_OOM_BACKTRACE: &str = concat!(
        "memory allocation of 1048576 bytes failed\n",
        "stack backtrace:\n",
        "   0: std::alloc::rust_oom\n",
        "             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/std/src/alloc.rs:424:5\n",
        "   1: __rustc::__rust_alloc_error_handler\n",
        "             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/std/src/alloc.rs:423:1\n",
        "   2: alloc::alloc::handle_alloc_error::rt_error\n",
        "             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/alloc/src/alloc.rs:531:13\n",
        "   3: alloc::alloc::handle_alloc_error\n",
        "             at /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/alloc/src/alloc.rs:537:9\n",
        "   4: oom::main\n",
        "   5: core::ops::function::FnOnce::call_once\n",
        "note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n",
    );
    // Without it.
    const STD_OOM_NOTE: &str = "memory allocation of 1048576 bytes failed\n\
        note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";

    #[test]
    fn cause_names_std_and_ythread_reports() {
        for (report, expected) in [
            (STD_OVERFLOW, Cause::StackOverflow),
            (OLD_STD_OVERFLOW, Cause::StackOverflow),
            (YTHREAD_OVERFLOW, Cause::StackOverflow),
            (STD_OOM, Cause::OutOfMemory),
            (STD_OOM_BACKTRACE, Cause::OutOfMemory),
            (STD_OOM_NOTE, Cause::OutOfMemory),
        ] {
            let last_lines = format!("working\nstill working\n{report}");
            assert_eq!(cause(&last_lines), Some(expected), "{last_lines}");
        }
        assert_eq!(cause(""), None);
        assert_eq!(cause("working\nKilled\n"), None);
    }

    #[test]
    fn cause_reads_only_the_last_lines() {
        for report in [STD_OVERFLOW, YTHREAD_OVERFLOW, STD_OOM, STD_OOM_BACKTRACE] {
            // The program printed the message, went on, then died otherwise.
            let decoy: String = (0..LAST_LINES).map(|i| format!("line {i}\n")).collect();
            assert_eq!(cause(&format!("{report}{decoy}")), None, "{report}");
            // Within the last lines, it counts.
            let (_, shorter) = decoy.split_once('\n').unwrap();
            assert!(cause(&format!("{report}{shorter}")).is_some(), "{report}");
        }
        // Only as std prints them, not within a line of the program's own.
        assert_eq!(cause("log: memory allocation of 8 bytes failed\n"), None);
        assert_eq!(cause("the buffer has overflowed its stack\n"), None);
    }
}
