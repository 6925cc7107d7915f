//! A `Pool`'s bounded queue (back-pressure, or refusal at once) and its
//! shutdown: queued work runs or fails clearly, never hangs, never vanishes.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ythread::{
    OffloadError, OffloadErrorKind, Pool, WhenFull, Yieldable, offload, try_offload, yieldable,
};

/// Work that holds its worker until `release` says so, then returns `value`.
#[yieldable]
fn held(release: mpsc::Receiver<()>, started: mpsc::Sender<()>, value: u64) -> u64 {
    offload!(move || {
        let _ = started.send(());
        let _ = release.recv();
        value
    })
}

#[yieldable]
fn triple(x: u64) -> Result<u64, OffloadError> {
    try_offload!(|| x * 3)
}

/// A one-thread pool whose worker is busy until the returned sender is
/// dropped or sent to; the held call returns 7.
fn busy_pool(pool: &Pool) -> (mpsc::Sender<()>, thread::JoinHandle<u64>) {
    let (release, wait) = mpsc::channel();
    let (started, has_started) = mpsc::channel();
    let holder = {
        let pool = pool.clone();
        thread::spawn(move || held(wait, started, 7).run_with(&pool))
    };
    has_started.recv().unwrap();
    (release, holder)
}

#[test]
fn a_full_queue_makes_callers_wait_by_default() {
    common::watchdog(Duration::from_secs(60), || {
        let pool = Pool::builder()
            .threads(1)
            .queue_capacity(2)
            .build()
            .unwrap();
        let (release, holder) = busy_pool(&pool);
        // Two calls fill the queue, a third waits for room.
        let callers: Vec<_> = (0..3u64)
            .map(|x| {
                let pool = pool.clone();
                thread::spawn(move || triple(x).run_with(&pool))
            })
            .collect();
        common::eventually("two calls fill the queue", || pool.queued() == 2);
        // Time for a caller that wrongly went on to finish.
        thread::sleep(Duration::from_millis(100));
        assert_eq!(pool.queued(), 2);
        assert!(callers.iter().all(|c| !c.is_finished()), "a caller went on");
        release.send(()).unwrap();
        assert_eq!(holder.join().unwrap(), 7);
        let mut results: Vec<u64> = callers
            .into_iter()
            .map(|c| c.join().unwrap().unwrap())
            .collect();
        results.sort_unstable();
        assert_eq!(results, [0, 3, 6]);
    });
}

#[test]
fn a_full_queue_can_refuse_at_once() {
    common::watchdog(Duration::from_secs(60), || {
        let pool = Pool::builder()
            .threads(1)
            .queue_capacity(1)
            .when_full(WhenFull::Fail)
            .build()
            .unwrap();
        let (release, holder) = busy_pool(&pool);
        let queued = {
            let pool = pool.clone();
            thread::spawn(move || triple(1).run_with(&pool))
        };
        while pool.queued() < 1 {
            thread::sleep(Duration::from_millis(5));
        }
        // The queue is full: this one fails at once, it does not wait.
        let error = triple(2).run_with(&pool).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::QueueFull, "{error}");
        assert!(error.to_string().contains("queue is full"), "{error}");
        // `offload!` panics with it, at the point.
        #[yieldable]
        fn plain(x: u64) -> u64 {
            offload!(|| x)
        }
        let payload =
            std::panic::catch_unwind(|| common::quietly(|| plain(5).run_with(&pool))).unwrap_err();
        let error = payload
            .downcast_ref::<OffloadError>()
            .expect("an OffloadError");
        assert_eq!(error.kind(), OffloadErrorKind::QueueFull);
        release.send(()).unwrap();
        assert_eq!(holder.join().unwrap(), 7);
        assert_eq!(queued.join().unwrap().unwrap(), 3);
        // Room again.
        assert_eq!(triple(4).run_with(&pool).unwrap(), 12);
    });
}

#[test]
fn shutdown_runs_the_queued_work_then_refuses_new_work() {
    common::watchdog(Duration::from_secs(60), || {
        let pool = Pool::new(1);
        let (release, holder) = busy_pool(&pool);
        let queued: Vec<_> = (0..5u64)
            .map(|x| {
                let pool = pool.clone();
                thread::spawn(move || triple(x).run_with(&pool))
            })
            .collect();
        common::eventually("five calls queued", || pool.queued() == 5);
        let shutdown = {
            let pool = pool.clone();
            thread::spawn(move || pool.shutdown())
        };
        // The thread's stop message is queued once the gate is closed.
        common::eventually("the shutdown closes the gate", || pool.queued() == 6);
        assert!(
            !shutdown.is_finished(),
            "shutdown waits for the queued work"
        );
        // New work is refused from now on, clearly.
        let error = triple(9).run_with(&pool).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Unavailable, "{error}");
        assert!(error.to_string().contains("shut down"), "{error}");
        release.send(()).unwrap();
        shutdown.join().unwrap();
        // Everything queued before it ran.
        assert_eq!(holder.join().unwrap(), 7);
        for (x, caller) in queued.into_iter().enumerate() {
            assert_eq!(caller.join().unwrap().unwrap(), x as u64 * 3);
        }
        // Idempotent, and every clone sees it.
        pool.clone().shutdown();
        assert_eq!(
            triple(1).run_with(&pool.clone()).unwrap_err().kind(),
            OffloadErrorKind::Unavailable
        );
    });
}

#[test]
fn shutdown_from_work_on_the_pool_does_not_hang() {
    common::watchdog(Duration::from_secs(60), || {
        for capacity in [None, Some(1)] {
            let mut builder = Pool::builder().threads(1);
            if let Some(capacity) = capacity {
                builder = builder.queue_capacity(capacity);
            }
            let pool = builder.build().unwrap();
            #[yieldable]
            fn stop_from_inside(pool: Pool) -> u64 {
                offload!(|| {
                    pool.shutdown();
                    42
                })
            }
            assert_eq!(stop_from_inside(pool.clone()).run_with(&pool), 42);
            // Closed by the time `shutdown` returned there.
            assert_eq!(
                triple(1).run_with(&pool).unwrap_err().kind(),
                OffloadErrorKind::Unavailable
            );
        }
    });
}

#[test]
fn every_shutdown_returns_only_once_the_workers_have_ended() {
    common::watchdog(Duration::from_secs(60), || {
        let pool = Pool::new(1);
        let (release, holder) = busy_pool(&pool);
        let shutdowns: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                thread::spawn(move || pool.shutdown())
            })
            .collect();
        thread::sleep(Duration::from_millis(200));
        assert!(
            shutdowns.iter().all(|s| !s.is_finished()),
            "a shutdown returned while the worker still ran"
        );
        release.send(()).unwrap();
        for shutdown in shutdowns {
            shutdown.join().unwrap();
        }
        assert_eq!(holder.join().unwrap(), 7);
    });
}

#[test]
fn a_bad_build_is_an_error() {
    assert!(Pool::builder().threads(0).build().is_err());
    assert!(Pool::builder().queue_capacity(0).build().is_err());
}
