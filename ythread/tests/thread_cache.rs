//! `ThreadCache`: handlers run on threads that ran handlers before, and
//! what that means (thread-locals, panics, idle threads' lifetimes).

use std::cell::Cell;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread::{self, ThreadId};
use std::time::Duration;

use ythread::{Bounded, Inline, Pool, ThreadCache, offload, yieldable};

mod common;

#[yieldable]
fn sum_on_pool(n: u64) -> (u64, ThreadId) {
    let sum = offload!(|| (1..=n).sum::<u64>());
    (sum, thread::current().id())
}

/// Runs `n` handlers on `cache` that wait for each other, so that each has
/// a thread of its own, and waits for them all.
fn run_at_once(cache: &ThreadCache, n: usize) {
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            cache.spawn(Inline, move || barrier.wait()).unwrap()
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

#[test]
fn handlers_one_after_another_run_on_one_thread() {
    let cache = ThreadCache::builder().name("cached".into()).build();
    let pool = Pool::new(2);
    let mut threads = Vec::new();
    for n in 1..=5u64 {
        let handle = cache.spawn(pool.clone(), sum_on_pool(n * 1000)).unwrap();
        assert_eq!(handle.thread().name(), Some("cached"));
        let (sum, thread) = handle.join().unwrap();
        assert_eq!(sum, (1..=n * 1000).sum::<u64>());
        threads.push(thread);
    }
    assert!(threads.iter().all(|t| *t == threads[0]), "{threads:?}");
    assert_eq!(cache.threads(), 1);
}

#[test]
fn handlers_at_once_get_a_thread_each_and_the_next_ones_reuse_them() {
    let cache = ThreadCache::new();
    for round in 0..3 {
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                cache
                    .spawn(Inline, move || {
                        // All four run at once: four threads.
                        barrier.wait();
                        thread::current().id()
                    })
                    .unwrap()
            })
            .collect();
        let mut ids: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        ids.sort_by_key(|id| format!("{id:?}"));
        ids.dedup();
        assert_eq!(ids.len(), 4, "round {round}");
        common::eventually("four idle threads", || cache.idle() == 4);
        assert_eq!(cache.threads(), 4, "round {round}: no thread more");
    }
}

#[test]
fn idle_threads_exit_after_the_keep_alive() {
    let cache = ThreadCache::builder()
        .keep_alive(Duration::from_millis(50))
        .build();
    run_at_once(&cache, 3);
    common::eventually("every idle thread gone", || cache.threads() == 0);
    assert_eq!(cache.idle(), 0);
    // The cache still works: a new thread.
    assert_eq!(cache.spawn(Inline, || 7).unwrap().join().unwrap(), 7);
}

#[test]
fn at_most_max_idle_threads_wait() {
    let cache = ThreadCache::builder().max_idle(2).build();
    run_at_once(&cache, 5);
    common::eventually("three threads gone", || cache.threads() == 2);
    assert_eq!(cache.idle(), 2);
}

#[test]
fn a_panic_comes_back_from_join_and_the_thread_takes_the_next_handler() {
    let cache = ThreadCache::new();
    let first = cache.spawn(Inline, || thread::current().id()).unwrap();
    let thread = first.join().unwrap();
    let panicked = cache
        .spawn(Inline, || -> u32 { panic!("handler failed: 42") })
        .unwrap()
        .join()
        .unwrap_err();
    assert_eq!(
        panicked.downcast_ref::<&str>(),
        Some(&"handler failed: 42"),
        "the payload as it was thrown"
    );
    let after = cache
        .spawn(Inline, sum_on_pool(10))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(after, (55, thread), "the same thread, working");
}

#[test]
fn thread_locals_carry_over_from_one_handler_to_the_next() {
    thread_local! {
        static SEEN: Cell<u32> = const { Cell::new(0) };
    }
    let cache = ThreadCache::new();
    let counts: Vec<u32> = (0..3)
        .map(|_| {
            cache
                .spawn(Inline, || SEEN.with(|seen| seen.replace(seen.get() + 1)))
                .unwrap()
                .join()
                .unwrap()
        })
        .collect();
    assert_eq!(counts, [0, 1, 2], "as documented: a reused thread's locals");
}

#[yieldable]
fn bounded_work(tell: mpsc::Sender<&'static str>) {
    offload!(|| tell.send("ran").unwrap());
}

#[test]
fn a_permit_of_bounded_does_not_outlive_the_handler_that_held_it() {
    let cache = ThreadCache::new();
    let cpu = Bounded::new(1);
    let (tell, told) = mpsc::channel();
    // A first handler takes and releases the only permit on the cache's
    // thread.
    cache
        .spawn(cpu.clone(), bounded_work(tell.clone()))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(told.recv().unwrap(), "ran");
    // Another thread holds the permit now.
    let (release, released) = mpsc::channel::<()>();
    let (holding, held) = mpsc::channel();
    let holder = {
        let cpu = cpu.clone();
        thread::spawn(move || {
            ythread::YieldableThread::new()
                .apply(cpu)
                .spawn(hold(holding, released))
                .unwrap()
                .join()
                .unwrap()
        })
    };
    held.recv().unwrap();
    // The cache's thread runs a second handler: its work must wait for the
    // permit, not run in place as if the first handler's permit were held.
    let second = cache.spawn(cpu.clone(), bounded_work(tell)).unwrap();
    assert!(
        told.recv_timeout(Duration::from_millis(200)).is_err(),
        "work ran while another thread held the only permit"
    );
    release.send(()).unwrap();
    second.join().unwrap();
    assert_eq!(told.recv().unwrap(), "ran");
    holder.join().unwrap();
}

#[yieldable]
fn hold(holding: mpsc::Sender<()>, released: mpsc::Receiver<()>) {
    offload!(move || {
        holding.send(()).unwrap();
        released.recv().unwrap();
    });
}

#[test]
fn shutdown_waits_for_busy_threads_and_lets_idle_ones_go() {
    let cache = ThreadCache::new();
    cache.spawn(Inline, || ()).unwrap().join().unwrap();
    common::eventually("one idle thread", || cache.idle() == 1);
    let (release, released) = mpsc::channel::<()>();
    let busy = cache
        .spawn(Inline, move || released.recv().unwrap())
        .unwrap();
    let (done, shut) = mpsc::channel();
    let stopper = {
        let cache = cache.clone();
        thread::spawn(move || {
            cache.shutdown();
            done.send(cache.threads()).unwrap();
        })
    };
    assert!(
        shut.recv_timeout(Duration::from_millis(200)).is_err(),
        "shutdown returned while a handler ran"
    );
    release.send(()).unwrap();
    busy.join().unwrap();
    assert_eq!(shut.recv().unwrap(), 0, "every thread exited");
    stopper.join().unwrap();
    // After shutdown, handlers still run, on threads that are not kept.
    assert_eq!(cache.spawn(Inline, || 3).unwrap().join().unwrap(), 3);
    common::eventually("no thread kept", || cache.threads() == 0);
}

#[test]
fn shutdown_from_a_handler_of_the_cache_waits_for_the_others_only() {
    let cache = ThreadCache::new();
    let inner = cache.clone();
    let handle = cache
        .spawn(Inline, move || {
            inner.shutdown();
            inner.threads()
        })
        .unwrap();
    assert_eq!(handle.join().unwrap(), 1, "only the caller's own thread");
    common::eventually("no thread", || cache.threads() == 0);
}

/// The threads of this process with this name.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[test]
fn dropping_the_last_clone_lets_idle_threads_exit() {
    let cache = ThreadCache::builder().name("tc-dropped".into()).build();
    let clone = cache.clone();
    run_at_once(&cache, 3);
    common::eventually("three idle", || cache.idle() == 3);
    drop(cache);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(threads_named("tc-dropped"), 3, "a clone still holds them");
    drop(clone);
    common::eventually("the idle threads exited", || {
        threads_named("tc-dropped") == 0
    });
}

#[test]
fn a_detached_handler_runs_to_the_end() {
    let cache = ThreadCache::new();
    let (tell, told) = mpsc::channel();
    drop(cache.spawn(Inline, sum_on_pool(100)).unwrap());
    drop(cache.spawn(Inline, move || tell.send(5).unwrap()).unwrap());
    assert_eq!(told.recv().unwrap(), 5);
}

#[test]
fn handlers_ask_for_their_coroutine_stack() {
    // A handler that needs more than the default coroutine stack runs under
    // a cache that gives it more (an overflow would abort the test run).
    #[yieldable]
    fn deep(depth: u32) -> u64 {
        fn recurse(depth: u32) -> u64 {
            let pad = std::hint::black_box([depth as u64; 128]);
            if depth == 0 {
                pad[0]
            } else {
                recurse(depth - 1) + pad[1]
            }
        }
        let here = recurse(depth);
        here + offload!(|| 1)
    }
    let cache = ThreadCache::builder()
        .coroutine_stack_size(64 << 20)
        .build();
    // At least 1 KiB a frame: more than the default 2 MiB.
    let sum = cache.spawn(Inline, deep(4000)).unwrap().join().unwrap();
    assert_eq!(sum, (1..=4000).sum::<u64>() + 1);
}

#[test]
fn a_name_with_a_nul_byte_panics_as_std_and_leaves_the_cache_whole() {
    let cache = ThreadCache::builder().name("bad\0name".into()).build();
    let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cache.spawn(Inline, || 1).map(|h| h.join())
    }));
    assert!(spawned.is_err(), "spawned a thread with a NUL in its name");
    assert_eq!(cache.threads(), 0, "no thread counted that never started");
    // `shutdown` has nothing to wait for.
    cache.shutdown();
}

#[test]
fn a_keep_alive_too_long_for_the_clock_waits_forever_and_the_cache_works() {
    let cache = ThreadCache::builder().keep_alive(Duration::MAX).build();
    let first = cache.spawn(Inline, || thread::current().id()).unwrap();
    let thread = first.join().unwrap();
    let again = cache.clone();
    let second = common::watchdog(Duration::from_secs(10), move || {
        again
            .spawn(Inline, || thread::current().id())
            .unwrap()
            .join()
            .unwrap()
    });
    assert_eq!(second, thread, "the idle thread took it");
    common::watchdog(Duration::from_secs(10), move || cache.shutdown());
}

/// A value whose `Drop` panics.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("dropping this panics");
    }
}

#[test]
fn a_detached_result_or_payload_that_panics_when_dropped_costs_no_thread() {
    let cache = ThreadCache::new();
    let (ran, told) = mpsc::channel();
    let tell = ran.clone();
    drop(
        cache
            .spawn(Inline, move || {
                tell.send(()).unwrap();
                PanicsOnDrop
            })
            .unwrap(),
    );
    told.recv().unwrap();
    drop(
        cache
            .spawn(Inline, move || -> () {
                ran.send(()).unwrap();
                std::panic::panic_any(PanicsOnDrop)
            })
            .unwrap(),
    );
    told.recv().unwrap();
    let again = cache.clone();
    let sum = common::watchdog(Duration::from_secs(10), move || {
        again
            .spawn(Inline, sum_on_pool(10))
            .unwrap()
            .join()
            .unwrap()
            .0
    });
    assert_eq!(sum, 55);
    common::watchdog(Duration::from_secs(10), move || cache.shutdown());
}

#[test]
fn a_strategy_that_panics_when_dropped_is_the_handlers_panic() {
    /// A strategy carrying a value that panics when dropped.
    struct Carrying(PanicsOnDrop);
    impl ythread::Apply for Carrying {
        fn apply(&self, job: ythread::Job<'_>) {
            job.run();
        }
    }
    let cache = ThreadCache::new();
    let joined = common::watchdog(Duration::from_secs(10), {
        let cache = cache.clone();
        move || {
            cache
                .spawn(Carrying(PanicsOnDrop), sum_on_pool(3))
                .unwrap()
                .join()
        }
    });
    assert!(joined.is_err(), "the strategy's drop panicked");
    common::watchdog(Duration::from_secs(10), move || cache.shutdown());
}

/// A result whose `Drop` runs a handler on the same cache and waits for it.
struct SpawnsWhenDropped(ThreadCache, mpsc::Sender<u64>);

impl Drop for SpawnsWhenDropped {
    fn drop(&mut self) {
        let sum = self
            .0
            .spawn(Inline, sum_on_pool(4))
            .unwrap()
            .join()
            .unwrap()
            .0;
        self.1.send(sum).unwrap();
    }
}

#[test]
fn a_detached_result_whose_drop_waits_for_a_handler_of_the_same_cache_gets_it() {
    let cache = ThreadCache::new();
    let (tell, told) = mpsc::channel();
    let inner = cache.clone();
    drop(
        cache
            .spawn(Inline, move || SpawnsWhenDropped(inner, tell))
            .unwrap(),
    );
    assert_eq!(
        told.recv_timeout(Duration::from_secs(10)),
        Ok(10),
        "the drop's handler ran"
    );
}

#[test]
fn handlers_shutting_down_their_own_cache_at_once_both_return() {
    let cache = ThreadCache::new();
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (inner, barrier) = (cache.clone(), Arc::clone(&barrier));
            cache
                .spawn(Inline, move || {
                    barrier.wait();
                    inner.shutdown();
                })
                .unwrap()
        })
        .collect();
    common::watchdog(Duration::from_secs(10), move || {
        for handle in handles {
            handle.join().unwrap();
        }
    });
    common::eventually("no thread", || cache.threads() == 0);
}

#[test]
fn shutdown_returns_once_the_threads_locals_are_destroyed() {
    struct Slow(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Slow {
        fn drop(&mut self) {
            thread::sleep(Duration::from_millis(200));
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    thread_local! {
        static SLOW: std::cell::RefCell<Option<Slow>> = const { std::cell::RefCell::new(None) };
    }
    let destroyed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cache = ThreadCache::new();
    let flag = Arc::clone(&destroyed);
    cache
        .spawn(Inline, move || {
            SLOW.with(|slow| *slow.borrow_mut() = Some(Slow(flag)))
        })
        .unwrap()
        .join()
        .unwrap();
    cache.shutdown();
    assert!(
        destroyed.load(std::sync::atomic::Ordering::SeqCst),
        "shutdown returned before the thread's locals were destroyed"
    );
}

#[yieldable]
fn offloads_from_inside(cpu: Bounded) {
    use ythread::Yieldable;
    inner_offload().run_with(&cpu)
}

#[yieldable]
fn inner_offload() {
    // Work holding the permit suspends the handler started by hand.
    offload!(|| ythread::offload(|| ()))
}

#[test]
fn a_permit_leaked_by_a_forgotten_handler_lets_no_later_handler_in_place() {
    use ythread::{GeneratorState, Yieldable};
    let cpu = Bounded::new(1);
    let cache = ThreadCache::new();
    let leaking = cpu.clone();
    let thread = cache
        .spawn(Inline, move || {
            let mut generator = offloads_from_inside(leaking).start();
            match generator.resume() {
                GeneratorState::Yielded(_job) => {}
                GeneratorState::Complete(()) => panic!("did not suspend"),
            }
            // Safe code may leak it, holding the only permit.
            std::mem::forget(generator);
            thread::current().id()
        })
        .unwrap()
        .join()
        .unwrap();
    // The permit is gone for good; work under it must wait, here as on a
    // fresh thread, not run in place as if this handler held it.
    let (tell, told) = mpsc::channel();
    let next = cache.spawn(cpu, bounded_work(tell)).unwrap();
    assert_eq!(next.thread().id(), thread, "the same thread, reused");
    assert!(
        told.recv_timeout(Duration::from_millis(300)).is_err(),
        "work ran in place under a permit a forgotten handler leaked"
    );
    drop(next);
}
