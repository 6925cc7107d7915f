//! `offload!` with `Inline` allocates nothing: the work and its result live
//! on the suspended handler's stack, and the job travels as a pointer to
//! them. A handler run on a warm thread allocates nothing either, because
//! its coroutine stack is recycled.
//!
//! A counting global allocator proves it. It counts per thread, so the test
//! harness's own threads do not disturb the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use ythread::{Exclusive, Inline, Yieldable, offload, yieldable};

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; counting
// touches only a `const` thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

/// Offloads `times` times and returns the allocations made while doing so,
/// counted inside the handler (on the handler's thread).
#[yieldable]
fn count_offloads(times: u64) -> (u64, u64) {
    let buf = [7u8; 64];
    let before = allocations();
    let mut total = 0;
    for i in 0..times {
        total = offload!(add, total, black_box(i));
        total += offload!(checksum, &buf);
        total += offload!(|| black_box(i) * 2);
    }
    (allocations() - before, total)
}

#[test]
fn offload_with_inline_does_not_allocate() {
    // The first offloads of a thread may allocate: with the `metrics`
    // feature, it keeps the handles of the series it records into.
    count_offloads(1).run_with(&Inline);
    let (allocated, total) = count_offloads(1000).run_with(&Inline);
    assert_eq!(total, (0..1000).map(|i| i + 7 * 64 + 2 * i).sum::<u64>());
    assert_eq!(allocated, 0, "allocations during 3000 offloads");
}

#[test]
fn an_uncontended_exclusive_lock_does_not_allocate_either() {
    count_offloads(1).run_with(&Exclusive::new());
    let (allocated, _) = count_offloads(1000).run_with(&Exclusive::new());
    assert_eq!(allocated, 0);
}

#[yieldable]
fn trivial(x: u64) -> u64 {
    offload!(add, x, 1)
}

#[test]
fn a_handler_on_a_warm_thread_does_not_allocate() {
    // The first run maps a stack and sets up the thread's cache.
    assert_eq!(trivial(1).run(), 2);
    let before = allocations();
    for i in 0..100 {
        assert_eq!(trivial(black_box(i)).run(), i + 1);
    }
    assert_eq!(allocations() - before, 0);
}
