//! The parent's end of a worker process's output.
//!
//! A worker's stdout and stderr are one pipe. A thread of its own
//! ("ythread-output") reads it and relays each line to this process's stderr,
//! labelled with the worker and the call it was running when it wrote the
//! line (`f call 7`), so that a user can tell who printed what; it keeps the
//! last few KiB so that a death can be explained ([`cause`]).
//!
//! A line's label never depends on when the relay read it (unless the
//! relay lags more than [`CALLS_KEPT`] calls behind). The parent
//! notes where in the output each call starts and ends, as byte positions:
//! what the relay has read plus what waits in the pipe (`FIONREAD`), at the
//! moment the call is sent and at the moment its reply is read. The worker
//! wrote what it printed running the call before its reply (it flushes
//! std's stdout buffer first), so those bytes are in the pipe, or read,
//! when the reply is. The relay reads under the same lock, and labels each
//! byte by the call whose span holds it, ending a line at a span's edge.
//! Nothing goes through the pipe but the worker's own bytes, and a call
//! costs the parent two `ioctl`s; it wakes the relay only when the call
//! ends on a line it left open.
//!
//! The worker is another process and its output may be hostile: memory stays
//! bounded whatever it prints (lines are cut at [`LINE`] bytes, the tail kept
//! is [`TAIL`] bytes), and control characters are escaped so that it cannot
//! drive the parent's terminal or fake a label.

use std::collections::VecDeque;
use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_channel::Sender;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

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

/// How many calls' spans of output are kept: one would do for a relay that
/// keeps up (a worker runs one call at a time); the rest is for a relay
/// that lags behind a worker running short calls. A relay more calls behind
/// than this labels the oldest bytes with no call.
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
    /// The read end of the worker's output pipe: read by the relay, asked
    /// how much it holds by the parent.
    reader: PipeReader,
    /// Where each call's output is, and how far the relay has read. Held by
    /// the parent twice per call and by the relay for each `read`: all but
    /// never contended, and never while writing a line out.
    spans: Mutex<Spans>,
    /// Wakes the relay when a call ends while it holds a line of that call
    /// open (`Spans::open_line`): the line is over, though no byte follows.
    wake: (PipeReader, PipeWriter),
    tail: Mutex<Tail>,
    /// Notified when the relay thread sets `Tail::ended`.
    ended: Condvar,
}

/// Where in the worker's output (by byte position) the last calls' lines
/// are.
struct Spans {
    /// The bytes the relay has read from the pipe.
    read: u64,
    /// The last calls sent, oldest first, but those whose bytes the relay
    /// has read past: at most [`CALLS_KEPT`].
    calls: VecDeque<CallSpan>,
    /// The relay holds a line not yet ended by a newline.
    open_line: bool,
}

/// The bytes of the worker's output printed while one call ran.
#[derive(Clone)]
struct CallSpan {
    number: u32,
    /// Its first byte's position, and one past its last (`u64::MAX` while
    /// its reply is awaited).
    start: u64,
    end: u64,
    /// `f call 7`.
    designation: Arc<str>,
}

impl Spans {
    /// The position the worker's next byte will have: what was read plus
    /// what the pipe holds.
    fn written(&self, reader: &PipeReader) -> u64 {
        // (It cannot fail on a pipe; if it did, the lines read later would
        // take the next call's label, as before positions were noted.)
        self.read + rustix::io::ioctl_fionread(reader.as_fd()).unwrap_or(0)
    }
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
    pub(crate) fn relay(
        reader: PipeReader,
        worker: usize,
        pid: u32,
        sink: Option<WorkerOutput>,
    ) -> io::Result<Output> {
        let who = Who { worker, pid };
        match sink {
            None => relay_to(reader, who, StderrQueue),
            Some(sink) => relay_to(reader, who, Callback(sink)),
        }
    }

    /// The call numbered `call` is about to be sent to the worker: what it
    /// prints from now on, until [`Output::call_ended`], is labelled
    /// `designation` (`f call 7`).
    ///
    /// On the hot path (once per call): one uncontended lock and one
    /// `ioctl`.
    pub(crate) fn expect_call(&self, call: u32, designation: Arc<str>) {
        let mut spans = lock_spans(&self.shared);
        let start = spans.written(&self.shared.reader);
        // A worker runs one call at a time: the one before is over, even if
        // it was never said to be (given up before it was sent).
        if let Some(before) = spans.calls.back_mut() {
            before.end = before.end.min(start);
        }
        if spans.calls.len() == CALLS_KEPT {
            spans.calls.pop_front();
        }
        spans.calls.push_back(CallSpan {
            number: call,
            start,
            end: u64::MAX,
            designation,
        });
    }

    /// The reply to call `call` has been read (or the wait for it is over):
    /// what the worker prints from now on is not that call's.
    pub(crate) fn call_ended(&self, call: u32) {
        let mut spans = lock_spans(&self.shared);
        let end = spans.written(&self.shared.reader);
        if let Some(span) = spans
            .calls
            .iter_mut()
            .rev()
            .find(|span| span.number == call)
        {
            span.end = span.end.min(end);
        }
        if spans.open_line {
            // Non-blocking: a full pipe holds wakes enough.
            let _ = (&self.shared.wake.1).write(&[0]);
        }
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

/// Whose output a relay reads: the worker's number in its pool (1, 2, ...)
/// and its process id.
#[derive(Clone, Copy)]
struct Who {
    worker: usize,
    pid: u32,
}

/// [`Output::relay`], writing the labelled lines to `sink` (stderr but in the
/// tests).
fn relay_to(reader: PipeReader, who: Who, sink: impl Write + Send + 'static) -> io::Result<Output> {
    let wake = io::pipe()?;
    rustix::io::ioctl_fionbio(&wake.1, true)?;
    let shared = Arc::new(Shared {
        reader,
        spans: Mutex::new(Spans {
            read: 0,
            calls: VecDeque::with_capacity(CALLS_KEPT),
            open_line: false,
        }),
        wake,
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
        running: None,
        calls: Vec::with_capacity(CALLS_KEPT),
        sink,
        out: Vec::new(),
    };
    // Detached: the thread ends by itself at end of file, which comes once
    // the worker (and its process group, killed by the caller) is gone, so
    // dropping the `Output` never waits for it.
    thread::Builder::new()
        .name("ythread-output".into())
        .spawn(move || relay.run())?;
    Ok(Output { shared })
}

/// The relay thread's state.
struct Relay<W> {
    shared: Arc<Shared>,
    worker: usize,
    pid: u32,
    /// The designation of the call that ran when the worker wrote the bytes
    /// being relayed (`f call 7`); `None` between calls.
    running: Option<Arc<str>>,
    /// The calls' spans as of the last read (reused).
    calls: Vec<CallSpan>,
    sink: W,
    /// The line being written: label, escaped text, newline. Reused; at most
    /// the label plus 4 bytes for each of a chunk's `LINE` bytes (`\x1b`).
    out: Vec<u8>,
}

impl<W: Write> Relay<W> {
    /// Relays the pipe until its end of file, then tells `last_lines`.
    fn run(mut self) {
        let mut buffer = [0; 8 * 1024];
        // The bytes of the current line read so far: never more than `LINE`.
        let mut line = Vec::with_capacity(LINE);
        // The position of the first byte of `buffer`.
        let mut position = 0;
        loop {
            let n = match self.read(&mut buffer) {
                Ok(Some(0)) => break,
                Ok(Some(n)) => n,
                // Woken: see below whether the open line is over.
                Ok(None) => 0,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                // Not expected of a pipe; as at end of file, nothing more
                // can be read.
                Err(_) => break,
            };
            let mut at = 0;
            while at < n {
                // The bytes up to the next edge of a call's span share a
                // label; a line open at an edge ends there.
                let (running, edge) = self.label_at(position + at as u64);
                self.relabel(running, &mut line);
                let until = usize::try_from(edge - position).map_or(n, |edge| edge.min(n));
                self.split(&buffer[at..until], &mut line);
                at = until;
            }
            position += n as u64;
            // A line left open by a call that has ended is over: told by
            // the parent, which wakes this thread if the call ends later.
            loop {
                {
                    let mut spans = lock_spans(&self.shared);
                    // (Only a call's line can be ended by its end: one
                    // open between calls waits for its newline.)
                    spans.open_line = !line.is_empty() && self.running.is_some();
                    self.calls.clear();
                    self.calls.extend(spans.calls.iter().cloned());
                }
                let (running, _) = self.label_at(position);
                if running == self.running {
                    break;
                }
                self.relabel(running, &mut line);
            }
        }
        // A last line without a newline is relayed all the same.
        if !line.is_empty() {
            self.emit(&line);
        }
        self.shared
            .tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ended = true;
        self.shared.ended.notify_all();
    }

    /// The bytes from here on are `running`'s: a line open under another
    /// label ends.
    fn relabel(&mut self, running: Option<Arc<str>>, line: &mut Vec<u8>) {
        if running != self.running {
            if !line.is_empty() {
                self.emit(line);
                line.clear();
            }
            self.running = running;
        }
    }

    /// Waits for bytes (or a wake), then reads them and notes how far it
    /// read, under the lock of the spans (so that a position the parent
    /// notes counts each byte once), taking a copy of the spans as they
    /// are. `None`: woken, nothing read.
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<Option<usize>> {
        use rustix::event::{PollFd, PollFlags, poll};
        // Waiting happens outside the lock: the parent never waits on it.
        let mut fds = [
            PollFd::new(&self.shared.reader, PollFlags::IN),
            PollFd::new(&self.shared.wake.0, PollFlags::IN),
        ];
        poll(&mut fds, None)?;
        let (output, woken) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
        if woken {
            let _ = (&self.shared.wake.0).read(&mut [0; 64]);
        }
        let mut spans = lock_spans(&self.shared);
        // The spans that end before the bytes about to be read label no
        // byte any more: the copy below is of one or two spans when the
        // relay keeps up.
        let read = spans.read;
        while spans.calls.front().is_some_and(|span| span.end <= read) {
            spans.calls.pop_front();
        }
        let n = if output {
            // Readable (or at its end): this does not block.
            let n = (&self.shared.reader).read(buffer)?;
            spans.read += n as u64;
            Some(n)
        } else {
            None
        };
        self.calls.clear();
        self.calls.extend(spans.calls.iter().cloned());
        Ok(n)
    }

    /// The call whose span holds the byte at `position`, if any, and the
    /// position of the next edge of any span after it (`u64::MAX`: none
    /// known yet).
    fn label_at(&self, position: u64) -> (Option<Arc<str>>, u64) {
        let mut running = None;
        let mut edge = u64::MAX;
        for span in &self.calls {
            if span.start <= position && position < span.end {
                running = Some(Arc::clone(&span.designation));
            }
            for at in [span.start, span.end] {
                if at > position {
                    edge = edge.min(at);
                }
            }
        }
        (running, edge)
    }

    /// Cuts `bytes` into lines, relaying each one it ends; what is left of
    /// an open line stays in `line`.
    fn split(&mut self, mut rest: &[u8], line: &mut Vec<u8>) {
        while !rest.is_empty() {
            let room = LINE - line.len();
            // One byte past the room: a newline right after a full line
            // ends it, rather than an empty line after a chunk.
            let window = &rest[..rest.len().min(room + 1)];
            if let Some(end) = window.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&window[..end]);
                self.emit(line);
                line.clear();
                rest = &rest[end + 1..];
            } else if room == 0 {
                // A full line that goes on: this much is a chunk.
                self.emit(line);
                line.clear();
            } else {
                let taken = window.len().min(room);
                line.extend_from_slice(&rest[..taken]);
                rest = &rest[taken..];
            }
        }
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

fn lock_spans(shared: &Shared) -> std::sync::MutexGuard<'_, Spans> {
    shared.spans.lock().unwrap_or_else(PoisonError::into_inner)
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

    fn who(worker: usize, pid: u32) -> Who {
        Who { worker, pid }
    }

    fn start(worker: usize, pid: u32) -> (Output, PipeWriter, Sink) {
        let (reader, writer) = io::pipe().unwrap();
        let sink = Sink::default();
        let output = relay_to(reader, who(worker, pid), sink.clone()).unwrap();
        (output, writer, sink)
    }

    /// Closes the pipe and waits for the relay to reach its end of file.
    fn finish(output: &Output, writer: PipeWriter) -> String {
        drop(writer);
        output.last_lines(LONG)
    }

    #[test]
    fn labels_follow_the_calls() {
        let (output, mut writer, sink) = start(2, 12345);
        writer.write_all(b"before\n").unwrap();
        output.expect_call(1, "crate::cpu::sumn call 1".into());
        writer.write_all(b"during\nhalf a line").unwrap();
        output.call_ended(1);
        writer.write_all(b"after\n").unwrap();
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
        assert_eq!(tail, "before\nduring\nhalf a line\nafter\n");
    }

    #[test]
    fn a_call_never_said_to_end_ends_when_the_next_is_sent() {
        let (output, mut writer, sink) = start(1, 7);
        output.expect_call(1, "f call 1".into());
        writer.write_all(b"one\n").unwrap();
        // (Call 1 was given up before it was sent: no `call_ended`.)
        output.expect_call(2, "g call 2".into());
        writer.write_all(b"two\n").unwrap();
        output.call_ended(2);
        writer.write_all(b"between calls\n").unwrap();
        finish(&output, writer);
        assert_eq!(
            sink.writes(),
            [
                "[ythread worker 1 pid 7 f call 1] one\n",
                "[ythread worker 1 pid 7 g call 2] two\n",
                "[ythread worker 1 pid 7] between calls\n",
            ]
        );
    }

    /// A sink whose writes wait while the test holds `gate`.
    struct Held {
        sink: Sink,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Held {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_all(buf)?;
            Ok(buf.len())
        }
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            let _open = self.gate.lock().unwrap();
            self.sink.write_all(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_lagging_relay_labels_each_line_with_the_call_that_wrote_it() {
        for _ in 0..50 {
            let (reader, mut writer) = io::pipe().unwrap();
            let sink = Sink::default();
            let gate = Arc::new(Mutex::new(()));
            let held = gate.lock().unwrap();
            let output = relay_to(
                reader,
                who(1, 7),
                Held {
                    sink: sink.clone(),
                    gate: Arc::clone(&gate),
                },
            )
            .unwrap();
            // Byte by byte, and the calls noted as the worker would run
            // them, while the relay cannot write a line out until all is
            // written: however far it lags, each byte has the label of the
            // call that wrote it.
            let mut write = |text: &str| {
                for byte in text.as_bytes() {
                    writer.write_all(&[*byte]).unwrap();
                }
            };
            output.expect_call(1, "f call 1".into());
            write("one\nopen");
            output.call_ended(1);
            output.expect_call(2, "g call 2".into());
            write("two\n");
            output.call_ended(2);
            write("between calls\n");
            drop(held);
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
    }

    #[test]
    fn text_that_looks_like_a_label_is_text_under_the_real_one() {
        let (output, mut writer, sink) = start(1, 7);
        output.expect_call(1, "f call 1".into());
        writer
            .write_all(b"[ythread worker 9 pid 1 evil call 1] x\r\n\0ythread-call 0 2 start\n")
            .unwrap();
        output.call_ended(1);
        finish(&output, writer);
        assert_eq!(
            sink.writes(),
            [
                "[ythread worker 1 pid 7 f call 1] [ythread worker 9 pid 1 evil call 1] x\\x0d\n",
                "[ythread worker 1 pid 7 f call 1] \\x00ythread-call 0 2 start\n",
            ]
        );
    }

    #[test]
    fn a_line_open_when_its_call_ends_is_relayed_then_without_more_bytes() {
        let (output, mut writer, sink) = start(1, 7);
        output.expect_call(1, "f call 1".into());
        writer.write_all(b"open").unwrap();
        // The relay has read it, and holds it open.
        let deadline = Instant::now() + LONG;
        while !lock_spans(&output.shared).open_line {
            assert!(Instant::now() < deadline, "the relay never read the line");
            thread::sleep(Duration::from_millis(1));
        }
        output.call_ended(1);
        // The pipe stays open, and nothing more comes: the call's end is
        // what ends the line.
        sink.wait_for(1);
        assert_eq!(sink.writes(), ["[ythread worker 1 pid 7 f call 1] open\n"]);
        finish(&output, writer);
    }

    /// Waits until the relay has read `bytes` bytes.
    fn wait_read(output: &Output, bytes: u64) {
        let deadline = Instant::now() + LONG;
        while lock_spans(&output.shared).read < bytes {
            assert!(Instant::now() < deadline, "the relay never read the bytes");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_line_open_between_calls_never_has_their_ends_wake_the_relay() {
        let (output, mut writer, sink) = start(1, 7);
        // Two reads: the relay is done with the first when it makes the
        // second, and held the line open after it.
        writer.write_all(b"left").unwrap();
        wait_read(&output, 4);
        writer.write_all(b" open").unwrap();
        wait_read(&output, 9);
        // No call's end could end it: the relay does not ask to be woken
        // at each call's end (a write and a wake-up a call).
        assert!(!lock_spans(&output.shared).open_line);
        output.expect_call(1, "f call 1".into());
        output.call_ended(1);
        writer.write_all(b"\n").unwrap();
        finish(&output, writer);
        assert_eq!(sink.writes(), ["[ythread worker 1 pid 7] left open\n"]);
    }

    #[test]
    fn the_spans_read_past_are_let_go() {
        let (output, mut writer, sink) = start(1, 7);
        for call in 1..=3 {
            output.expect_call(call, format!("f call {call}").into());
            writer.write_all(format!("{call}\n").as_bytes()).unwrap();
            wait_read(&output, 2 * u64::from(call));
            output.call_ended(call);
        }
        // The relay's next read lets go of the spans it has read past.
        writer.write_all(b"after\n").unwrap();
        sink.wait_for(4);
        assert_eq!(lock_spans(&output.shared).calls.len(), 0);
        finish(&output, writer);
        assert_eq!(
            sink.writes(),
            [
                "[ythread worker 1 pid 7 f call 1] 1\n",
                "[ythread worker 1 pid 7 f call 2] 2\n",
                "[ythread worker 1 pid 7 f call 3] 3\n",
                "[ythread worker 1 pid 7] after\n",
            ]
        );
    }

    #[test]
    fn a_line_open_at_the_end_of_a_call_ends_there() {
        let (output, mut writer, sink) = start(1, 7);
        output.expect_call(1, "f call 1".into());
        writer.write_all("x".repeat(LINE - 10).as_bytes()).unwrap();
        output.call_ended(1);
        writer.write_all(b"next\n").unwrap();
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
        let output = Output::relay(reader, 1, 0, None).unwrap();
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
