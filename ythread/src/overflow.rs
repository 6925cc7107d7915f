//! Reporting a coroutine stack overflow instead of dying silently.
//!
//! A handler runs on its own coroutine stack, whose lowest page is a guard
//! page: running past the end touches it and the kernel raises `SIGSEGV`.
//! std's handler for that signal only recognises the guard page of the
//! *thread's* stack ("thread 'x' has overflowed its stack"); any other fault
//! it hands back to the default action, which kills the process without a
//! word. So ythread installs a handler in front of std's: a fault inside the
//! guard page of the coroutine running on the faulting thread prints what
//! overflowed and which setting to raise, then aborts; any other fault goes
//! on to the handler that was there before (std's, or the default action).
//!
//! The running coroutine is known through a thread-local pointer that the
//! driver sets around each resume ([`Running`]): one thread-local store on
//! the way in and one on the way out. The signal handler runs on the
//! thread's alternate signal stack (the faulting stack has no room left);
//! std gives its own threads one, and [`install`] gives one to any other
//! thread that starts a handler.

use std::cell::Cell;
use std::io::Write;
use std::mem::{self, MaybeUninit};
use std::ptr;
use std::sync::Once;
use std::sync::atomic::{AtomicPtr, Ordering};

/// Where a coroutine's guard page is, and what to say if it is hit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Guard {
    /// The guard page: `[start, end)`.
    start: usize,
    end: usize,
    /// The stack size the handler asked for, in bytes.
    size: usize,
    /// The handler's type name.
    handler: &'static str,
}

impl Guard {
    /// The guard page of a corosensei `DefaultStack`, whose mapping starts
    /// with it: `limit` is the lowest address of the mapping.
    pub(crate) fn below(limit: usize, size: usize, handler: &'static str) -> Guard {
        Guard {
            start: limit,
            end: limit + page_size(),
            size,
            handler,
        }
    }

    fn contains(&self, address: usize) -> bool {
        (self.start..self.end).contains(&address)
    }
}

thread_local! {
    /// The guard of the coroutine running on this thread right now, or null.
    /// Read by the signal handler: a `const`-initialised thread-local without
    /// a destructor is a plain memory access, safe in a signal handler.
    static RUNNING: Cell<*const Guard> = const { Cell::new(ptr::null()) };
}

/// Marks a coroutine as running on this thread until dropped, restoring the
/// one it interrupted (coroutines nest when work starts a handler).
pub(crate) struct Running {
    previous: *const Guard,
}

impl Running {
    /// `guard` must stay where it is until the returned value is dropped.
    #[inline]
    pub(crate) fn enter(guard: &Guard) -> Running {
        Running {
            previous: RUNNING.replace(guard),
        }
    }
}

impl Drop for Running {
    #[inline]
    fn drop(&mut self) {
        RUNNING.set(self.previous);
    }
}

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

/// Reports an overflow of the running coroutine's stack, or passes the fault
/// on.
extern "C" fn on_fault(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an `SA_SIGINFO`
    // handler; `RUNNING` points to a `Guard` that its `Running` keeps alive.
    let overflowed = unsafe {
        let address = (*info).si_addr() as usize;
        let running = RUNNING.get();
        (!running.is_null() && (*running).contains(address)).then(|| *running)
    };
    if let Some(guard) = overflowed {
        report(&guard);
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

/// Writes the overflow message to stderr without allocating or locking.
fn report(guard: &Guard) {
    let mut buffer = [0u8; 1024];
    let mut out = &mut buffer[..];
    // A message longer than the buffer is cut short, never an error.
    let _ = write!(
        out,
        "\nythread: the handler `{}` has overflowed its coroutine stack of {} bytes\n\
         ythread: give it a larger one with `Yieldable::with_stack_size`, \
         `YieldableThread::coroutine_stack_size`, or RUST_MIN_STACK (the default is \
         std's, 2 MiB)\nfatal runtime error: stack overflow, aborting\n",
        guard.handler, guard.size,
    );
    let len = 1024 - out.len();
    // SAFETY: `write` is async-signal-safe; the buffer is valid for `len`.
    unsafe { libc::write(libc::STDERR_FILENO, buffer.as_ptr().cast(), len) };
}

fn page_size() -> usize {
    use std::sync::atomic::AtomicUsize;
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
