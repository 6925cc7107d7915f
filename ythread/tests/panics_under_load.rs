//! Panics under load: on each strategy, 8 driving threads interleave 10,000
//! panicking and 10,000 normal offloads. Every normal result is right, every
//! panic surfaces at its `offload!` point with its own payload, and the
//! strategy then serves new work with all its workers.

mod common;

#[cfg(feature = "remote")]
use common::nats::NatsServer;

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::thread;
use std::time::Duration;

#[cfg(feature = "remote")]
use ythread::remote::{Remote, Worker};
use ythread::{
    Apply, Bounded, Exclusive, Inline, OffloadErrorKind, Pool, Processes, Yieldable, apply_fn,
    offload, offloadable, try_offload, yieldable,
};

const THREADS: u64 = 8;

/// Offloads per driving thread: half panic, half do not. 2,500, or that
/// divided by `YTHREAD_TEST_SCALE` (`scripts/valgrind` runs a tenth).
fn per_thread() -> u64 {
    let scale = std::env::var("YTHREAD_TEST_SCALE")
        .ok()
        .and_then(|scale| scale.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    (2_500 / scale).max(4) / 4 * 4
}

/// A payload of our own type, so that a test can tell it is the very one.
#[derive(Debug, PartialEq)]
struct Code(u64);

fn triple(id: u64) -> u64 {
    id * 3
}

/// Offloads `first..first + per_thread()` in turn: odd ids return, even ids
/// panic with `Code(id)`, caught half through `offload!` (the panic resumes
/// at the point) and half through `try_offload!`. Returns the panics seen.
#[yieldable]
fn drive(first: u64) -> u64 {
    let mut panics = 0;
    for id in first..first + per_thread() {
        if id % 2 == 1 {
            assert_eq!(offload!(triple, id), id * 3);
        } else if id % 4 == 0 {
            let payload = panic::catch_unwind(AssertUnwindSafe(|| {
                offload!(|| -> u64 { common::quietly(|| panic::panic_any(Code(id))) })
            }))
            .expect_err("the work panicked");
            assert_eq!(payload.downcast_ref::<Code>(), Some(&Code(id)));
            panics += 1;
        } else {
            let error = try_offload!(|| -> u64 { common::quietly(|| panic::panic_any(Code(id))) })
                .expect_err("the work panicked");
            assert_eq!(error.kind(), OffloadErrorKind::Panicked);
            let payload = error.try_into_panic().expect("a panic's payload");
            assert_eq!(payload.downcast_ref::<Code>(), Some(&Code(id)));
            panics += 1;
        }
    }
    panics
}

/// `n` handlers that each hold a piece of work until all `n` run at once:
/// the strategy still has `n` workers.
fn all_workers_serve<A: Apply + Clone + Send + 'static>(apply: &A, n: usize) {
    let arrived = Arc::new(AtomicUsize::new(0));
    let met: Vec<_> = (0..n)
        .map(|_| {
            let (apply, arrived) = (apply.clone(), Arc::clone(&arrived));
            thread::spawn(move || common::meets(arrived, n).run_with(&apply))
        })
        .collect();
    for met in met {
        assert!(met.join().unwrap(), "a worker is missing");
    }
}

/// `drive` (or `drive_portable`) on `THREADS` threads at once, against
/// `apply`: half of all the offloads panicked, and each was seen.
fn under_load<A, H>(apply: A, drive: fn(u64) -> H)
where
    A: Apply + Clone + Send + 'static,
    H: Yieldable<Output = u64> + 'static,
{
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let apply = apply.clone();
            thread::spawn(move || drive(t * per_thread()).run_with(&apply))
        })
        .collect();
    let panics: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(panics, THREADS * per_thread() / 2);
}

#[test]
fn inline() {
    common::watchdog(Duration::from_secs(300), || {
        under_load(Inline, drive);
        all_workers_serve(&Inline, 2);
    });
}

#[test]
fn exclusive() {
    common::watchdog(Duration::from_secs(300), || {
        let exclusive = Exclusive::new();
        under_load(exclusive.clone(), drive);
        all_workers_serve(&exclusive, 1);
    });
}

#[test]
fn bounded() {
    common::watchdog(Duration::from_secs(300), || {
        let bounded = Bounded::new(2);
        under_load(bounded.clone(), drive);
        all_workers_serve(&bounded, 2);
    });
}

#[test]
fn pool() {
    common::watchdog(Duration::from_secs(300), || {
        let pool = Pool::new(2);
        under_load(pool.clone(), drive);
        assert_eq!(pool.threads(), 2);
        all_workers_serve(&pool, 2);
    });
}

#[test]
fn a_closure() {
    common::watchdog(Duration::from_secs(300), || {
        let closure = Arc::new(apply_fn(|job| job.run()));
        under_load(Arc::clone(&closure), drive);
        all_workers_serve(&closure, 2);
    });
}

#[cfg(feature = "rayon")]
#[test]
fn a_rayon_pool() {
    common::watchdog(Duration::from_secs(300), || {
        let rayon = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap(),
        );
        under_load(Arc::clone(&rayon), drive);
        all_workers_serve(&rayon, 2);
    });
}

// --- worker processes, local and remote -----------------------------------

#[offloadable]
fn triple_or_panic(id: u64) -> u64 {
    if id.is_multiple_of(2) {
        // (Quietly: the worker process would print each panic.)
        common::quietly(|| panic!("panic {id}"))
    } else {
        id * 3
    }
}

/// As `drive`, for work that leaves the process: the payload that crosses
/// is the panic's message.
#[yieldable]
fn drive_portable(first: u64) -> u64 {
    let mut panics = 0;
    for id in first..first + per_thread() {
        if id % 2 == 1 {
            assert_eq!(offload!(triple_or_panic, id), id * 3);
        } else if id % 4 == 0 {
            let payload = panic::catch_unwind(AssertUnwindSafe(|| offload!(triple_or_panic, id)))
                .expect_err("the work panicked");
            assert_eq!(common::panic_text(&*payload), format!("panic {id}"));
            panics += 1;
        } else {
            let error = try_offload!(triple_or_panic, id).expect_err("the work panicked");
            assert_eq!(error.kind(), OffloadErrorKind::Panicked, "{error}");
            assert_eq!(error.panic_message(), Some(format!("panic {id}").as_str()));
            panics += 1;
        }
    }
    panics
}

/// This process's id, once `expected` calls (in any processes) have come
/// here, each leaving a file in `dir`, or after 10 s.
#[offloadable]
fn own_pid_when_met(dir: String, expected: usize) -> u32 {
    let pid = std::process::id();
    let count = || std::fs::read_dir(&dir).map_or(0, |entries| entries.count());
    let mut name = format!("{pid}");
    while std::path::Path::new(&dir).join(&name).exists() {
        name.push('+');
    }
    std::fs::write(std::path::Path::new(&dir).join(name), b"").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count() < expected && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
    pid
}

#[yieldable]
fn pid_when_met(dir: String, expected: usize) -> u32 {
    offload!(own_pid_when_met, dir, expected)
}

/// Both worker processes of `processes` are alive, none was replaced, and
/// both take work at once (each call waits for the other: on one process,
/// the second could not start before the first gave up).
fn both_processes_serve<A: Apply + Clone + Send + 'static>(
    test: &str,
    apply: &A,
    processes: &Processes,
) {
    assert_eq!(processes.restarts(), 0, "a panic cost a worker process");
    let dir = common::scratch(test).display().to_string();
    let pids: std::collections::HashSet<u32> = (0..2)
        .map(|_| {
            let apply = apply.clone();
            let dir = dir.clone();
            thread::spawn(move || pid_when_met(dir, 2).run_with(&apply))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "two processes took the two calls");
}

#[test]
fn processes() {
    common::watchdog(Duration::from_secs(600), || {
        let processes = Arc::new(common::worker_processes(2).build().unwrap());
        under_load(Arc::clone(&processes), drive_portable);
        both_processes_serve("panics-processes", &processes, &processes);
    });
}

#[cfg(feature = "remote")]
#[test]
fn remote() {
    common::watchdog(Duration::from_secs(600), || {
        let nats = NatsServer::started(&["-js"]);
        let worker = Worker::builder(nats.url())
            .namespace("panics")
            .processes(common::worker_processes(2))
            .start()
            .unwrap();
        let remote = Arc::new(
            Remote::builder(nats.url())
                .namespace("panics")
                .connect()
                .unwrap(),
        );
        under_load(Arc::clone(&remote), drive_portable);
        both_processes_serve(
            "panics-remote",
            &remote,
            worker.processes().expect("a worker on processes"),
        );
    });
}
