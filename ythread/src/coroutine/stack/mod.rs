//! Coroutine stacks, recycled; with the table of every mapped stack
//! (`table.rs`) and the report of an overflow (`overflow.rs`).
//!
//! Mapping a fresh stack (mmap plus a guard page) costs about 11 µs, far
//! more than running a short handler; re-using one costs a few nanoseconds.
//! So a finished handler's stack is kept: first in a one-stack cache of its
//! thread (most threads run one handler at a time), then in a process-wide
//! pool that other threads, including newly spawned ones, take from.
//!
//! Both are bounded. A thread's cached stack moves to the process-wide pool
//! when the thread exits; the pool keeps at most [`POOL_CAPACITY`] stacks and
//! unmaps any that has been idle for [`IDLE_TIMEOUT`] when it is next
//! touched, so a burst of handlers does not pin its stacks forever.

use std::cell::Cell;
use std::time::{Duration, Instant};

use corosensei::stack::DefaultStack;
use parking_lot::{Mutex, MutexGuard};

pub(super) mod overflow;

pub(crate) use overflow::watch_main_stack;
mod table;

pub(crate) use table::with_running_context;
pub(super) use table::{Label, Running};

/// The size of a handler's coroutine stack unless it asks for another
/// ([`Yieldable::with_stack_size`](crate::Yieldable::with_stack_size),
/// [`YieldableThread::coroutine_stack_size`](crate::YieldableThread::coroutine_stack_size)):
/// 2 MiB, std's default for a thread, so a handler fits what the plain
/// function fits on a thread. As with std, the `RUST_MIN_STACK` environment
/// variable (in bytes, read once) replaces it.
///
/// The size costs address space, not memory: only the pages a handler
/// touches are committed: a handler suspended at an `offload!` point after
/// a shallow body keeps about 4 KiB resident, whatever the size.
/// Offloaded work runs on the driving thread's own stack (or a worker's),
/// not on this one.
///
/// Overflowing a coroutine stack aborts the process with a message naming
/// the handler and the settings to raise, as std does for a thread.
pub const DEFAULT_STACK_SIZE: usize = 2 * 1024 * 1024;

/// [`DEFAULT_STACK_SIZE`], or `RUST_MIN_STACK` when it is set to a number.
pub(crate) fn default_stack_size() -> usize {
    static SIZE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        std::env::var("RUST_MIN_STACK")
            .ok()
            .and_then(|bytes| bytes.trim().parse().ok())
            .unwrap_or(DEFAULT_STACK_SIZE)
    })
}

/// The stack type every handler coroutine runs on.
pub(crate) type Stack = DefaultStack;

/// Most stacks the process-wide pool keeps.
const POOL_CAPACITY: usize = 64;

/// How long a pooled stack may stay unused before it is unmapped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A stack, the size it was requested with (stacks are only reused for the
/// same requested size), and its label.
struct SizedStack {
    size: usize,
    /// Dropped before `stack`: the guard page leaves the stack table
    /// before it is unmapped, so no other mapping there is taken for it.
    label: Label,
    stack: Stack,
}

/// A stack in the process-wide pool, and when it was put there.
struct IdleStack {
    sized: SizedStack,
    since: Instant,
}

/// Stacks no thread is using, in the order they were given back (oldest
/// first).
static POOL: Mutex<Vec<IdleStack>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's last finished stack; handed to [`POOL`] when the thread
    /// exits (see `ThreadCache::drop`).
    static CACHE: ThreadCache = const { ThreadCache(Cell::new(None)) };
}

struct ThreadCache(Cell<Option<SizedStack>>);

impl Drop for ThreadCache {
    fn drop(&mut self) {
        if let Some(sized) = self.0.take() {
            give_to_pool(sized);
        }
    }
}

/// Returns a stack of at least `size` usable bytes.
///
/// # Panics
///
/// Panics if the operating system refuses the mapping.
pub(crate) fn acquire(size: usize) -> (Stack, Label) {
    let cached = CACHE
        .try_with(|cache| match cache.0.take() {
            Some(sized) if sized.size == size => Some((sized.stack, sized.label)),
            other => {
                cache.0.set(other);
                None
            }
        })
        .ok()
        .flatten();
    cached
        .or_else(|| take_from_pool(size))
        .unwrap_or_else(|| fresh(size))
}

/// Takes back the stack of a finished coroutine that asked for `size`.
pub(crate) fn release(size: usize, stack: Stack, label: Label) {
    let mut sized = Some(SizedStack { size, stack, label });
    // The cache keeps the newest stack; the pool takes the one it held, or
    // this one if the cache is gone (during thread exit).
    let overflow = CACHE
        .try_with(|cache| cache.0.replace(sized.take()))
        .ok()
        .flatten()
        .or(sized);
    if let Some(overflow) = overflow {
        give_to_pool(overflow);
    }
}

fn fresh(size: usize) -> (Stack, Label) {
    let stack = DefaultStack::new(size).unwrap_or_else(|err| {
        panic!("ythread: cannot allocate a {size}-byte coroutine stack: {err}")
    });
    // The overflow handler is installed by `Generator::new_unchecked`, the
    // only user of stacks, before it acquires one.
    let label = table::register(&stack, size);
    (stack, label)
}

fn take_from_pool(size: usize) -> Option<(Stack, Label)> {
    let mut pool = lock_pool();
    let expired = expire(&mut pool);
    // The most recently used stack of the right size: its pages are warmest.
    let found = pool
        .iter()
        .rposition(|idle| idle.sized.size == size)
        .map(|i| {
            let sized = pool.remove(i).sized;
            (sized.stack, sized.label)
        });
    drop(pool);
    // Unmap outside the lock.
    drop(expired);
    found
}

fn give_to_pool(sized: SizedStack) {
    let mut pool = lock_pool();
    let expired = expire(&mut pool);
    let rejected = if pool.len() < POOL_CAPACITY {
        pool.push(IdleStack {
            sized,
            since: Instant::now(),
        });
        None
    } else {
        Some(sized)
    };
    drop(pool);
    // Unmap outside the lock.
    drop(expired);
    drop(rejected);
}

/// Removes the stacks idle for longer than [`IDLE_TIMEOUT`]. The pool is in
/// the order stacks were given back, so they are a prefix of it. The caller
/// drops (unmaps) them after releasing the lock.
fn expire(pool: &mut Vec<IdleStack>) -> Vec<IdleStack> {
    let now = Instant::now();
    let stale = pool.partition_point(|idle| now.duration_since(idle.since) > IDLE_TIMEOUT);
    pool.drain(..stale).collect()
}

/// The pool's lock (parking_lot's: no poisoning to handle; only push,
/// remove, drain and iteration happen under it).
fn lock_pool() -> MutexGuard<'static, Vec<IdleStack>> {
    POOL.lock()
}

#[cfg(test)]
mod tests {
    use super::*;
    use corosensei::stack::Stack as _;

    fn base_of((stack, _): &(Stack, Label)) -> usize {
        stack.base().get()
    }

    /// Held by the tests that fill the process-wide pool or need room in
    /// it: a full pool turns away a stack given back, so a test counting on
    /// its stack being kept must not run while another fills the pool.
    static POOL_TESTS: Mutex<()> = Mutex::new(());

    /// The bases of the stacks of `size` in the process-wide pool.
    fn pooled_bases(size: usize) -> Vec<usize> {
        lock_pool()
            .iter()
            .filter(|idle| idle.sized.size == size)
            .map(|idle| idle.sized.stack.base().get())
            .collect()
    }

    #[test]
    fn a_released_stack_is_reused_by_the_same_thread() {
        let stack = acquire(64 * 1024);
        let base = base_of(&stack);
        release(64 * 1024, stack.0, stack.1);
        assert_eq!(base_of(&acquire(64 * 1024)), base);
    }

    #[test]
    fn a_stack_of_another_size_is_not_reused() {
        let stack = acquire(96 * 1024);
        let base = base_of(&stack);
        release(96 * 1024, stack.0, stack.1);
        let (other, label) = acquire(128 * 1024);
        assert_ne!(base_of(&(other, label)), base);
    }

    #[test]
    fn an_exiting_thread_hands_its_stack_to_the_pool_for_other_threads() {
        let _serial = POOL_TESTS.lock();
        // Room for the stack: other tests' exiting threads give theirs too.
        let others = std::mem::take(&mut *lock_pool());
        drop(others);
        let size = 72 * 1024;
        let base = std::thread::spawn(move || {
            let stack = acquire(size);
            let base = base_of(&stack);
            release(size, stack.0, stack.1);
            base
        })
        .join()
        .unwrap();
        // `join` returns after the thread's locals are destroyed.
        assert_eq!(pooled_bases(size), [base]);
        let reused = std::thread::spawn(move || base_of(&acquire(size)))
            .join()
            .unwrap();
        assert_eq!(reused, base);
    }

    #[test]
    fn the_pool_is_bounded() {
        let _serial = POOL_TESTS.lock();
        let size = 80 * 1024;
        let stacks: Vec<(Stack, Label)> = (0..POOL_CAPACITY + 8).map(|_| fresh(size)).collect();
        for (stack, label) in stacks {
            give_to_pool(SizedStack { size, stack, label });
        }
        assert!(lock_pool().len() <= POOL_CAPACITY);
        // Leave room for the other tests' stacks.
        let ours: Vec<IdleStack> = {
            let mut pool = lock_pool();
            let (ours, others) = pool.drain(..).partition(|idle| idle.sized.size == size);
            *pool = others;
            ours
        };
        assert!(!ours.is_empty());
    }

    #[test]
    fn stacks_idle_longer_than_the_timeout_are_released() {
        let size = 88 * 1024;
        let long_ago = Instant::now()
            .checked_sub(IDLE_TIMEOUT * 2)
            .expect("the clock started long enough ago");
        let idle = |since| {
            let (stack, label) = fresh(size);
            IdleStack {
                sized: SizedStack { size, stack, label },
                since,
            }
        };
        let mut pool = vec![idle(long_ago), idle(long_ago), idle(Instant::now())];
        assert_eq!(expire(&mut pool).len(), 2);
        assert_eq!(pool.len(), 1);
        assert!(expire(&mut pool).is_empty());
    }
}
