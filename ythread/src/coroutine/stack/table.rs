//! Every mapped coroutine stack, in a lock-free table that a signal handler
//! can read: where the stack is, its guard page and size, the name of the
//! handler using it, and that handler's running [`Context`].
//!
//! Two things need to know which coroutine stack an address is on, and
//! neither may cost anything per `offload!`:
//!
//! - the `SIGSEGV` handler (`overflow.rs`), to report a coroutine stack
//!   overflow: it looks the faulting page up by guard page;
//! - the function form [`ythread::offload`](crate::offload) and
//!   [`Yieldable::run`](crate::Yieldable::run), to find the handler running
//!   on this thread, from any call depth: they look the stack pointer up
//!   (through a one-row cache per thread).
//!
//! A stack is registered when it is mapped and leaves when it is unmapped
//! ([`Label`] travels with it); a handler writes its name into the row
//! when it takes the stack, and its `Context` while its body runs.

use std::cell::Cell;
use std::mem;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering, fence};

use corosensei::stack::{DefaultStack, Stack as _};

use crate::coroutine::Context;

/// One mapped coroutine stack.
pub(crate) struct Row {
    /// A seqlock over `page` and `base`: odd while the row's owner changes
    /// them, bumped again when done. A reader on another thread checks that
    /// it is even and unchanged around its reads, so it never pairs one
    /// stack's `page` with another's `base` (a range that could hold the
    /// reader's own stack). Only the row's owner writes: the thread that
    /// claimed it, then the one that frees it, one after the other.
    version: AtomicUsize,
    /// The address of the stack's guard page, its lowest; 0 if the row is
    /// free.
    page: AtomicUsize,
    /// The stack's highest address (exclusive), where it starts.
    base: AtomicUsize,
    /// The stack size the handler asked for, in bytes.
    size: AtomicUsize,
    /// Names the handler using the stack: null or a `fn() -> &'static str`.
    name: AtomicPtr<()>,
    /// The `Context` of the handler whose body is running on the stack
    /// (suspended or not); null when none is.
    context: AtomicPtr<()>,
}

impl Row {
    /// The stack size the handler asked for, in bytes.
    pub(crate) fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// The name of the handler using the stack. Async-signal-safe.
    pub(crate) fn handler_name(&self) -> Option<&'static str> {
        let name = self.name.load(Ordering::Relaxed);
        // SAFETY: a non-null name is a `fn() -> &'static str` (`Label::name`).
        (!name.is_null())
            .then(|| unsafe { mem::transmute::<*mut (), fn() -> &'static str>(name)() })
    }

    /// Whether `address` is on this stack (guard page excluded).
    fn holds(&self, address: usize) -> bool {
        let before = self.version.load(Ordering::Acquire);
        let page = self.page.load(Ordering::Relaxed);
        // Tests widen the window a preemption could open here.
        #[cfg(test)]
        (0..200).for_each(|_| std::hint::spin_loop());
        let base = self.base.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let after = self.version.load(Ordering::Relaxed);
        before == after && before.is_multiple_of(2) && page != 0 && page < address && address < base
    }

    /// Runs `change` on the row's range inside the seqlock.
    fn change(&self, change: impl FnOnce()) {
        self.version.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        change();
        self.version.fetch_add(1, Ordering::Release);
    }
}

const CHUNK: usize = 128;

/// A block of rows. Blocks are added when all are taken and never freed:
/// their number follows the most stacks ever mapped at once.
struct Chunk {
    rows: [Row; CHUNK],
    next: AtomicPtr<Chunk>,
}

impl Chunk {
    const fn new() -> Chunk {
        Chunk {
            rows: [const {
                Row {
                    version: AtomicUsize::new(0),
                    page: AtomicUsize::new(0),
                    base: AtomicUsize::new(0),
                    size: AtomicUsize::new(0),
                    name: AtomicPtr::new(ptr::null_mut()),
                    context: AtomicPtr::new(ptr::null_mut()),
                }
            }; CHUNK],
            next: AtomicPtr::new(ptr::null_mut()),
        }
    }

    fn next(&self) -> Option<&'static Chunk> {
        // SAFETY: `next` is null or a leaked `Box<Chunk>`, never freed.
        unsafe { self.next.load(Ordering::Acquire).as_ref() }
    }
}

/// Every mapped coroutine stack.
static TABLE: Chunk = Chunk::new();

/// A stack's row in [`TABLE`], owned beside the stack for as long as it
/// is mapped; dropping it frees the row.
#[derive(Debug)]
pub(crate) struct Label(&'static Row);

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("size", &self.size.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Label {
    /// Names the handler now using the stack.
    #[inline]
    pub(crate) fn name(&self, name: fn() -> &'static str) {
        self.0.name.store(name as *mut (), Ordering::Relaxed);
    }

    /// The stack's row, for the handler's body to publish its `Context`
    /// in ([`Running::publish`]).
    pub(crate) fn row(&self) -> &'static Row {
        self.0
    }
}

impl Drop for Label {
    fn drop(&mut self) {
        self.0.name.store(ptr::null_mut(), Ordering::Relaxed);
        self.0.context.store(ptr::null_mut(), Ordering::Relaxed);
        // `base` is 0 from here until the next owner stores its own, inside
        // the seqlock: the claim of `page` (outside it) never makes a range.
        self.0.change(|| {
            self.0.base.store(0, Ordering::Relaxed);
            self.0.page.store(0, Ordering::Relaxed);
        });
    }
}

/// Registers `stack`, a stack of `size` bytes.
pub(crate) fn register(stack: &DefaultStack, size: usize) -> Label {
    // corosensei's `DefaultStack` maps its guard page first: its `limit` is
    // the start of the mapping (the documented "maximum extent, including
    // guard pages").
    let page = stack.limit().get();
    let mut chunk: &'static Chunk = &TABLE;
    loop {
        for row in &chunk.rows {
            if row
                .page
                .compare_exchange(0, page, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                row.change(|| row.base.store(stack.base().get(), Ordering::Relaxed));
                row.size.store(size, Ordering::Relaxed);
                return Label(row);
            }
        }
        chunk = match chunk.next() {
            Some(next) => next,
            None => {
                let fresh = Box::into_raw(Box::new(Chunk::new()));
                match chunk.next.compare_exchange(
                    ptr::null_mut(),
                    fresh,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    // SAFETY: just published, never freed.
                    Ok(_) => unsafe { &*fresh },
                    Err(theirs) => {
                        // SAFETY: ours was never published; theirs is a
                        // leaked chunk, never freed.
                        unsafe {
                            drop(Box::from_raw(fresh));
                            &*theirs
                        }
                    }
                }
            }
        };
    }
}

/// The row of the stack whose guard page is `page`. Async-signal-safe:
/// atomic loads only.
pub(crate) fn with_guard_page(page: usize) -> Option<&'static Row> {
    // 0 marks a free row (and no stack is mapped at address 0).
    if page == 0 {
        return None;
    }
    find(|row| row.page.load(Ordering::Acquire) == page)
}

/// The row of the stack holding `address`, if it is a coroutine stack.
fn holding(address: usize) -> Option<&'static Row> {
    find(|row| row.holds(address))
}

/// The first row that `matches`. Atomic loads only (async-signal-safe if
/// `matches` is).
fn find(matches: impl Fn(&Row) -> bool) -> Option<&'static Row> {
    let mut chunk: &'static Chunk = &TABLE;
    loop {
        if let Some(row) = chunk.rows.iter().find(|row| matches(row)) {
            return Some(row);
        }
        chunk = chunk.next()?;
    }
}

/// The size of a memory page, in bytes; asked once (`sysconf` is not
/// async-signal-safe, so `overflow::install` asks before any fault).
pub(super) fn page_size() -> usize {
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
    /// The row of the coroutine stack this thread last found itself on.
    static LAST_FOUND: Cell<*const Row> = const { Cell::new(ptr::null()) };
    /// This thread's own stack, `[low, high)`; `(0, 0)` until asked, `(1, 0)`
    /// if it cannot be known.
    static THREAD_STACK: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Calls `f` with the `Context` of the handler whose body is running on the
/// current stack, if the current code runs on a handler's coroutine stack
/// (at any call depth inside the handler's body), or with `None`.
///
/// The answer comes from the stack pointer, not from a thread-local set at
/// every resume: that would cost every `offload!` about a nanosecond.
#[inline]
pub(crate) fn with_running_context<T>(f: impl FnOnce(Option<&Context<'_>>) -> T) -> T {
    let marker = 0u8;
    let here = ptr::from_ref(&marker) as usize;
    let row = running_row(here);
    let context = row
        .map(|row| row.context.load(Ordering::Acquire))
        .filter(|context| !context.is_null());
    match context {
        // SAFETY: the context is published by the body running on this very
        // stack (we are on it, above its frames), from its `Running` guard,
        // which clears it before the body's frame (which owns the context)
        // ends. The borrow given to `f` cannot outlive this call.
        Some(context) => f(Some(unsafe { &*context.cast::<Context<'_>>() })),
        None => f(None),
    }
}

/// The row of the coroutine stack holding `here`, through the one-row
/// cache and this thread's own stack's bounds.
#[inline]
fn running_row(here: usize) -> Option<&'static Row> {
    let last = LAST_FOUND.get();
    // SAFETY: rows live in chunks that are never freed.
    if let Some(last) = unsafe { last.as_ref() }
        && last.holds(here)
    {
        return Some(last);
    }
    running_row_slow(here)
}

#[cold]
fn running_row_slow(here: usize) -> Option<&'static Row> {
    let (low, high) = thread_stack();
    if low <= here && here < high {
        return None;
    }
    let found = holding(here)?;
    LAST_FOUND.set(found);
    Some(found)
}

/// This thread's own stack, asked of the C library once per thread.
fn thread_stack() -> (usize, usize) {
    let known = THREAD_STACK.get();
    if known != (0, 0) {
        return known;
    }
    let bounds = query_thread_stack().unwrap_or((1, 0));
    THREAD_STACK.set(bounds);
    bounds
}

fn query_thread_stack() -> Option<(usize, usize)> {
    let mut attr = mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: `pthread_getattr_np` initialises `attr` on success; it is
    // destroyed after use. `addr` and `size` are written by
    // `pthread_attr_getstack` on success.
    unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return None;
        }
        let mut addr = ptr::null_mut();
        let mut size = 0;
        let ok = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) == 0;
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        ok.then(|| (addr as usize, addr as usize + size))
    }
}

/// Publishes a handler's `Context` in its stack's row while its body runs.
pub(crate) struct Running {
    row: &'static Row,
}

impl Running {
    /// Publishes `context` until the returned guard is dropped, which must
    /// happen before `context` goes away.
    #[inline]
    pub(crate) fn publish(row: &'static Row, context: &Context<'_>) -> Running {
        row.context
            .store(ptr::from_ref(context).cast_mut().cast(), Ordering::Release);
        Running { row }
    }
}

impl Drop for Running {
    #[inline]
    fn drop(&mut self) {
        self.row.context.store(ptr::null_mut(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_never_pairs_one_stack_s_page_with_another_s_base() {
        use std::sync::atomic::AtomicBool;
        // One row, freed and claimed again, alternately for two ranges, as
        // `Label::drop` and `register` do; the address between them is on
        // neither.
        static ROW: Chunk = Chunk::new();
        let row = &ROW.rows[0];
        let stop = AtomicBool::new(false);
        let false_hits = std::thread::scope(|s| {
            s.spawn(|| {
                let ranges = [(0x1000, 0x2000), (0x9000, 0xA000)];
                for (page, base) in ranges.iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    row.page
                        .compare_exchange(0, *page, Ordering::AcqRel, Ordering::Relaxed)
                        .unwrap();
                    row.change(|| row.base.store(*base, Ordering::Relaxed));
                    row.change(|| {
                        row.base.store(0, Ordering::Relaxed);
                        row.page.store(0, Ordering::Relaxed);
                    });
                }
            });
            let hits = (0..300_000).filter(|_| row.holds(0x5000)).count();
            stop.store(true, Ordering::Relaxed);
            hits
        });
        assert_eq!(false_hits, 0);
    }

    fn named() -> &'static str {
        "named"
    }

    #[test]
    fn a_mapped_stack_is_found_by_its_guard_page_until_it_is_unmapped() {
        // More than one chunk's worth, so that chunks are added and searched.
        // Labels first, so that each leaves the table before its stack
        // is unmapped, as in the stack pool (`mod.rs`).
        let stacks: Vec<(Label, DefaultStack)> = (0..CHUNK + 10)
            .map(|_| {
                let stack = DefaultStack::new(16 * 1024).unwrap();
                (register(&stack, 16 * 1024), stack)
            })
            .collect();
        let (label, stack) = stacks.last().unwrap();
        label.name(named);
        let page = stack.limit().get();
        let row = with_guard_page(page).expect("registered");
        assert_eq!(row.size.load(Ordering::Relaxed), 16 * 1024);
        assert!(ptr::eq(row, label.0));
        // An address on the stack finds its row.
        assert!(ptr::eq(holding(stack.base().get() - 8).unwrap(), row));
        // An address inside the stack but above its guard page is not one.
        assert!(with_guard_page(page + page_size()).is_none());
        assert!(with_guard_page(0).is_none());
        drop(stacks);
        // (Another test may map a stack at the same address meanwhile, but
        // it would not get this row while the address was in it.)
        assert_ne!(
            row.page.load(Ordering::Relaxed),
            page,
            "freed with its stack"
        );
    }
}
