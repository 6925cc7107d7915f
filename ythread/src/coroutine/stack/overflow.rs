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
//! Every mapped coroutine stack is in the table of `table.rs`, a
//! lock-free table the signal handler can read, with its guard page, its
//! size and the name of the handler using it. Nothing is done when a handler
//! is resumed, and the guard page is never touched, so it costs no memory.
//! The fault handler looks the faulting page up in the table.
//!
//! The signal handler runs on the thread's alternate signal stack (the
//! faulting stack has no room left); std gives its own threads one, and
//! [`install`] gives one to any other thread that starts a handler.

use std::io::Write;
use std::mem::{self, MaybeUninit};
use std::ptr;
use std::sync::Once;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use super::table::{self, Row, page_size};

/// The signal actions that were installed before ours, indexed by
/// [`slot`]; null until [`install`] has run.
static PREVIOUS: [AtomicPtr<libc::sigaction>; 2] = [
    AtomicPtr::new(ptr::null_mut()),
    AtomicPtr::new(ptr::null_mut()),
];

fn slot(signal: libc::c_int) -> usize {
    usize::from(signal != libc::SIGSEGV)
}

/// Installs the signal handler (once per process) and makes sure this thread
/// has an alternate signal stack (once per thread).
pub(crate) fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // `sysconf` is not async-signal-safe: ask before any fault.
        page_size();
        for signal in [libc::SIGSEGV, libc::SIGBUS] {
            // SAFETY: one `sigaction` call installs ours and stores the old
            // action in a leaked, zeroed one, so that no handler installed
            // meanwhile is lost. A fault between this call and the `store`
            // finds `PREVIOUS` null and takes the default action.
            unsafe {
                let previous = Box::into_raw(Box::new(mem::zeroed::<libc::sigaction>()));
                let mut action: libc::sigaction = mem::zeroed();
                action.sa_sigaction = on_fault as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, previous);
                PREVIOUS[slot(signal)].store(previous, Ordering::Release);
            }
        }
    });
    // `try_with`: a handler may run from another thread-local's destructor,
    // after this one is gone (the thread then keeps what it has).
    let _ = ALTERNATE_STACK.try_with(|_| {});
}

/// The addresses below the main thread's stack where a fault is an
/// overflow of it, `[low, high)`: empty until [`watch_main_stack`].
static MAIN_STACK_GUARD: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// Reports an overflow of the main thread's stack too, as std does, for a
/// process that runs without std's handler: a worker process serving
/// before `main` (std installs its handler after the loader's initialisers).
/// Call it on the main thread.
pub(crate) fn watch_main_stack() {
    // The main stack's mapping, `[stack]` in `/proc/self/maps`, grows down
    // to `RLIMIT_STACK` below its top; the kernel keeps a gap of 256 pages
    // (1 MiB) under that, and a fault in either is the stack overflowing.
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let range = |line: &str| -> Option<(usize, usize)> {
        let (bottom, top) = line.split_whitespace().next()?.split_once('-')?;
        Some((
            usize::from_str_radix(bottom, 16).ok()?,
            usize::from_str_radix(top, 16).ok()?,
        ))
    };
    // The mappings are listed by address: the one before `[stack]` is the
    // highest below it, which the stack cannot grow into.
    let mut below = 0;
    let mut stack = None;
    for line in maps.lines() {
        let Some((bottom, top)) = range(line) else {
            continue;
        };
        if line.ends_with("[stack]") {
            stack = Some((bottom, top));
            break;
        }
        below = top;
    }
    let Some((bottom, top)) = stack else {
        return;
    };
    let limit = rustix::process::getrlimit(rustix::process::Resource::Stack)
        .current
        .map_or(usize::MAX, |bytes| {
            usize::try_from(bytes).unwrap_or(usize::MAX)
        });
    // (With no limit, `below` bounds the range alone.)
    let low = top.saturating_sub(limit).saturating_sub(1 << 20).max(below);
    // The handler reads the top first (`Acquire`): once it sees it, it sees
    // the bottom too, and never a range from 0.
    MAIN_STACK_GUARD[0].store(low, Ordering::Relaxed);
    MAIN_STACK_GUARD[1].store(bottom, Ordering::Release);
    install();
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
    if let Some(row) = table::with_guard_page(address & !(page_size() - 1)) {
        report(row);
        // SAFETY: `abort` is async-signal-safe.
        unsafe { libc::abort() };
    }
    // Only a fault the kernel raised has a faulting address (`si_code > 0`;
    // a signal sent with `kill` carries the sender's ids there).
    // SAFETY: as above.
    let raised = unsafe { (*info).si_code } > 0;
    let high = MAIN_STACK_GUARD[1].load(Ordering::Acquire);
    if raised && MAIN_STACK_GUARD[0].load(Ordering::Relaxed) <= address && address < high {
        // std's own words, which it would print had its handler been
        // installed (a worker serving before `main` runs without it).
        let message = b"\nthread 'main' has overflowed its stack\nfatal runtime error: stack overflow, aborting\n";
        // SAFETY: `write` and `abort` are async-signal-safe.
        unsafe {
            libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len());
            libc::abort();
        }
    }
    let previous = PREVIOUS[slot(signal)].load(Ordering::Acquire);
    // SAFETY: `previous` is null or a valid, leaked action. Calling it with
    // our arguments is what the kernel would have done.
    unsafe {
        let handler = if previous.is_null() {
            libc::SIG_DFL
        } else {
            (*previous).sa_sigaction
        };
        // Sent by `kill` and the like rather than raised by a fault.
        let sent = (*info).si_code <= 0;
        if handler == libc::SIG_IGN && sent {
            // Ignored, as before us.
        } else if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            // The default action: for a fault, returning runs the faulting
            // instruction again, which faults again; a sent signal is sent
            // again. (A fault cannot be ignored: the kernel would kill.)
            let mut default: libc::sigaction = mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &default, ptr::null_mut());
            if sent {
                libc::raise(signal);
            }
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

/// Writes the overflow message to stderr without allocating or locking.
fn report(row: &Row) {
    let handler = row.handler_name().unwrap_or("?");
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
        row.size(),
    );
    let len = CAPACITY - out.len();
    // SAFETY: `write` is async-signal-safe; the buffer is valid for `len`.
    unsafe { libc::write(libc::STDERR_FILENO, buffer.as_ptr().cast(), len) };
}

thread_local! {
    /// This thread's alternate signal stack, if ythread had to make one.
    static ALTERNATE_STACK: AlternateStack = AlternateStack::ensure();
}

/// An alternate signal stack that ythread installed, removed and freed when
/// its thread exits.
struct AlternateStack {
    /// The mapping (a guard page, then the stack), or null when the thread
    /// already had an alternate stack (std's threads).
    memory: *mut libc::c_void,
    /// The mapping's length, guard page included.
    len: usize,
}

/// The usable size of the alternate signal stacks ythread makes: std's is
/// 8 KiB at least; the report takes 5-8 KiB.
const ALTERNATE_STACK_SIZE: usize = 64 * 1024;

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
        let page = page_size();
        let len = ALTERNATE_STACK_SIZE + page;
        // SAFETY: a fresh private anonymous mapping, whose first page becomes
        // a guard page so that a signal handler running out of room faults
        // instead of writing over a neighbouring mapping.
        let memory = unsafe {
            let memory = libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if memory == libc::MAP_FAILED {
                return none;
            }
            libc::mprotect(memory, page, libc::PROT_NONE);
            memory
        };
        let stack = libc::stack_t {
            // SAFETY: within the mapping, just above the guard page.
            ss_sp: unsafe { memory.cast::<u8>().add(page).cast() },
            ss_flags: 0,
            ss_size: ALTERNATE_STACK_SIZE,
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
        let mut current = MaybeUninit::<libc::stack_t>::uninit();
        // SAFETY: queries the current alternate stack into valid memory.
        let queried = unsafe { libc::sigaltstack(ptr::null(), current.as_mut_ptr()) } == 0;
        let ours = queried && {
            // SAFETY: initialised, since `queried`.
            let current = unsafe { current.assume_init() };
            let start = self.memory as usize + page_size();
            current.ss_sp as usize == start && current.ss_flags & libc::SS_ONSTACK == 0
        };
        if !ours {
            // Replaced since, or in use: leave (leak) it.
            return;
        }
        let disable = libc::stack_t {
            ss_sp: ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: disables our alternate stack, not in use, then unmaps it.
        unsafe {
            if libc::sigaltstack(&disable, ptr::null_mut()) == 0 {
                libc::munmap(self.memory, self.len);
            }
        }
    }
}
