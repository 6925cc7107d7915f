//! Reporting a coroutine stack overflow instead of dying silently.
//!
//! A handler runs on its own coroutine stack, whose lowest page is a guard
//! page: running past the end writes to it and the kernel raises `SIGSEGV`.
//! std's handler for that signal only recognises the guard page of the
//! *thread's* stack ("thread 'x' has overflowed its stack"); any other fault
//! it hands back to the default action, which kills the process without a
//! word. So ythread installs a handler in front of std's: a fault in the
//! guard page of a coroutine stack prints what overflowed and which setting
//! to raise, then aborts; any other fault goes on to the handler that was
//! there before (std's, or the default action).
//!
//! # Recognising a guard page, at no cost per offload
//!
//! Each coroutine stack's guard page is made read-only instead of
//! inaccessible, and holds a [`Record`]: a magic number, its own address,
//! the stack's size and where to find the name of the handler using it. An
//! overflow *writes* to the page, so it still faults. The signal handler
//! reads the record of the faulting page, if that page is readable at all,
//! through a pipe (a `write` of unreadable memory fails with `EFAULT`
//! instead of faulting again). Nothing is done when a handler is resumed:
//! the only costs are two `mprotect` calls when a stack is first mapped and
//! one store when a handler takes a stack ([`Label::name`]).
//!
//! The signal handler runs on the thread's alternate signal stack (the
//! faulting stack has no room left); std gives its own threads one, and
//! [`install`] gives one to any other thread that starts a handler.

use std::io::Write;
use std::mem::{self, MaybeUninit};
use std::ptr;
use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize, Ordering};

use corosensei::stack::{DefaultStack, Stack as _};

/// What a coroutine stack's guard page holds, at its start.
#[repr(C)]
#[derive(Clone, Copy)]
struct Record {
    /// [`MAGIC`], so that another read-only page is not taken for a record.
    magic: u64,
    /// The page's own address.
    page: usize,
    /// The stack size the handler asked for, in bytes.
    size: usize,
    /// The [`Label`] of the stack: names the handler using it.
    label: *const AtomicPtr<()>,
}

const MAGIC: u64 = 0x7974_6872_6561_6421; // "ythread!"

/// Where the handler using a stack writes its name, for the report. Owned
/// beside the stack, for as long as the stack is mapped.
#[derive(Debug)]
pub(crate) struct Label(Box<AtomicPtr<()>>);

impl Label {
    /// Names the handler now using the stack.
    #[inline]
    pub(crate) fn name(&self, name: fn() -> &'static str) {
        self.0.store(name as *mut (), Ordering::Relaxed);
    }
}

/// Writes `stack`'s record into its guard page and makes the page read-only.
/// If the page cannot be changed, the stack keeps an inaccessible guard page
/// and an overflow is not reported (it still stops the handler).
pub(crate) fn mark(stack: &DefaultStack, size: usize) -> Label {
    install();
    let label = Label(Box::new(AtomicPtr::new(ptr::null_mut())));
    // corosensei's `DefaultStack` maps its guard page first: its `limit` is
    // the start of the mapping (the documented "maximum extent, including
    // guard pages").
    let page = stack.limit().get();
    let page_len = page_size();
    let record = Record {
        magic: MAGIC,
        page,
        size,
        label: &*label.0,
    };
    // SAFETY: `page` is the first page of the stack's own mapping, which no
    // one else uses (it is the guard page). It is made writable only to
    // store the record, then read-only.
    unsafe {
        let start = page as *mut libc::c_void;
        if libc::mprotect(start, page_len, libc::PROT_READ | libc::PROT_WRITE) == 0 {
            ptr::write(page as *mut Record, record);
            libc::mprotect(start, page_len, libc::PROT_READ);
        }
    }
    label
}

/// The signal actions that were installed before ours, indexed by
/// [`slot`]; null until [`install`] has run.
static PREVIOUS: [AtomicPtr<libc::sigaction>; 2] = [
    AtomicPtr::new(ptr::null_mut()),
    AtomicPtr::new(ptr::null_mut()),
];

/// The pipe through which the signal handler reads memory that may not be
/// readable: its write end and its read end, both non-blocking; -1 if none.
static PROBE: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];

fn slot(signal: libc::c_int) -> usize {
    usize::from(signal != libc::SIGSEGV)
}

/// Installs the signal handler (once per process) and makes sure this thread
/// has an alternate signal stack (once per thread).
pub(crate) fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let mut fds = [-1; 2];
        // SAFETY: `pipe2` writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == 0 {
            PROBE[0].store(fds[1], Ordering::Release);
            PROBE[1].store(fds[0], Ordering::Release);
        }
        for signal in [libc::SIGSEGV, libc::SIGBUS] {
            // SAFETY: `sigaction` with a valid action and a valid place for
            // the old one. The old action is published before ours can run
            // (our handler reads it), and is leaked: it is needed for as long
            // as the process lives.
            unsafe {
                let previous = Box::into_raw(Box::new(mem::zeroed::<libc::sigaction>()));
                let mut action: libc::sigaction = mem::zeroed();
                action.sa_sigaction = on_fault as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, ptr::null(), previous);
                PREVIOUS[slot(signal)].store(previous, Ordering::Release);
                libc::sigaction(signal, &action, ptr::null_mut());
            }
        }
    });
    ALTERNATE_STACK.with(|_| {});
}

/// Reports an overflow of a coroutine stack, or passes the fault on.
extern "C" fn on_fault(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an `SA_SIGINFO`
    // handler.
    let address = unsafe { (*info).si_addr() } as usize;
    if let Some(record) = record_at(address & !(page_size() - 1)) {
        report(&record);
        // SAFETY: `abort` is async-signal-safe.
        unsafe { libc::abort() };
    }
    // SAFETY: `PREVIOUS` holds a valid action (published before ours was
    // installed). Calling it with our arguments is what the kernel would
    // have done; for the default action, restoring it and returning makes
    // the faulting instruction fault again, this time with that action.
    unsafe {
        let previous = PREVIOUS[slot(signal)].load(Ordering::Acquire);
        let handler = (*previous).sa_sigaction;
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            let mut default: libc::sigaction = mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &default, ptr::null_mut());
        } else if (*previous).sa_flags & libc::SA_SIGINFO != 0 {
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                mem::transmute(handler);
            handler(signal, info, context);
        } else {
            let handler: extern "C" fn(libc::c_int) = mem::transmute(handler);
            handler(signal);
        }
    }
}

/// The record at the start of `page`, if `page` is a coroutine stack's guard
/// page. Reads it through the probe pipe, so that an unreadable page is an
/// error from `write`, not a second fault. Async-signal-safe.
fn record_at(page: usize) -> Option<Record> {
    let (write_end, read_end) = (
        PROBE[0].load(Ordering::Acquire),
        PROBE[1].load(Ordering::Acquire),
    );
    if write_end < 0 {
        return None;
    }
    let len = mem::size_of::<Record>();
    let mut copy = MaybeUninit::<Record>::uninit();
    // SAFETY: `write` and `read` are async-signal-safe; `write` reads `len`
    // bytes at `page` or fails with `EFAULT`; `read` fills `copy` (checked).
    let complete = unsafe {
        libc::write(write_end, page as *const libc::c_void, len) == len as isize
            && libc::read(read_end, copy.as_mut_ptr().cast(), len) == len as isize
    };
    if !complete {
        return None;
    }
    // SAFETY: all `len` bytes were written by `read`; every bit pattern is a
    // valid `Record` (integers and a raw pointer).
    let record = unsafe { copy.assume_init() };
    (record.magic == MAGIC && record.page == page).then_some(record)
}

/// Writes the overflow message to stderr without allocating or locking.
fn report(record: &Record) {
    // SAFETY: the record is in the guard page of a mapped stack, so its
    // label, owned beside the stack for as long as it is mapped, is alive.
    // The stored pointer is null or a `fn() -> &'static str`.
    let handler = unsafe {
        let name = (*record.label).load(Ordering::Relaxed);
        if name.is_null() {
            "?"
        } else {
            mem::transmute::<*mut (), fn() -> &'static str>(name)()
        }
    };
    const CAPACITY: usize = 1024;
    let mut buffer = [0u8; CAPACITY];
    let mut out = &mut buffer[..];
    // A message longer than the buffer is cut short, never an error.
    let _ = write!(
        out,
        "\nythread: the handler `{handler}` has overflowed its coroutine stack of {} bytes\n\
         ythread: give it a larger one with `Yieldable::with_stack_size`, \
         `YieldableThread::coroutine_stack_size`, or RUST_MIN_STACK (the default is \
         std's, 2 MiB)\nfatal runtime error: stack overflow, aborting\n",
        record.size,
    );
    let len = CAPACITY - out.len();
    // SAFETY: `write` is async-signal-safe; the buffer is valid for `len`.
    unsafe { libc::write(libc::STDERR_FILENO, buffer.as_ptr().cast(), len) };
}

fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    match PAGE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: `sysconf` has no preconditions.
            let page =
                usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
            PAGE.store(page, Ordering::Relaxed);
            page
        }
        page => page,
    }
}

thread_local! {
    /// This thread's alternate signal stack, if ythread had to make one.
    static ALTERNATE_STACK: AlternateStack = AlternateStack::ensure();
}

/// An alternate signal stack that ythread installed, removed and freed when
/// its thread exits.
struct AlternateStack {
    /// The mapping, or null when the thread already had one (std's threads).
    memory: *mut libc::c_void,
    len: usize,
}

impl AlternateStack {
    fn ensure() -> AlternateStack {
        let none = AlternateStack {
            memory: ptr::null_mut(),
            len: 0,
        };
        let mut current = MaybeUninit::<libc::stack_t>::uninit();
        // SAFETY: queries the current alternate stack into valid memory.
        if unsafe { libc::sigaltstack(ptr::null(), current.as_mut_ptr()) } != 0 {
            return none;
        }
        // SAFETY: initialised by the successful call above.
        let current = unsafe { current.assume_init() };
        if current.ss_flags & libc::SS_DISABLE == 0 {
            return none;
        }
        let len = 64 * 1024;
        // SAFETY: a fresh private anonymous mapping.
        let memory = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if memory == libc::MAP_FAILED {
            return none;
        }
        let stack = libc::stack_t {
            ss_sp: memory,
            ss_flags: 0,
            ss_size: len,
        };
        // SAFETY: the mapping stays until `drop` has disabled it again.
        unsafe { libc::sigaltstack(&stack, ptr::null_mut()) };
        AlternateStack { memory, len }
    }
}

impl Drop for AlternateStack {
    fn drop(&mut self) {
        if self.memory.is_null() {
            return;
        }
        let disable = libc::stack_t {
            ss_sp: ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: disables the alternate stack before unmapping it.
        unsafe {
            libc::sigaltstack(&disable, ptr::null_mut());
            libc::munmap(self.memory, self.len);
        }
    }
}
