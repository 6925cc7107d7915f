//! The `Processes` strategy with real worker processes: this test binary
//! started again in worker mode, which serves before the test harness runs
//! (no setup in the tests).
//!
//! Every test that waits on workers runs under a watchdog, so that a hang
//! fails the test instead of stalling the suite.

mod common;

use common::worker_processes as workers;
use common::{process_state, scratch};

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use ythread::{
    Inline, OffloadError, OffloadErrorKind, Processes, Yieldable, offload, offloadable,
    try_offload, yieldable,
};

// --- the work -------------------------------------------------------------

#[offloadable]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[offloadable]
fn slow_add(a: u64, b: u64) -> u64 {
    thread::sleep(Duration::from_millis(2));
    a + b
}

#[offloadable]
fn pid() -> u32 {
    std::process::id()
}

#[offloadable]
fn segfault() -> u64 {
    // A real invalid access, as native code would make: a `raise(SIGSEGV)`
    // is swallowed by std's own handler, which only resets the signal's
    // action and returns, expecting the faulting instruction to run again.
    let address = std::hint::black_box(16usize) as *mut u64;
    // SAFETY: none: the point is to crash this worker process.
    unsafe { address.write_volatile(1) };
    0
}

#[offloadable]
fn abort() -> u64 {
    std::process::abort()
}

#[offloadable]
fn sigkill_self() -> u64 {
    // SAFETY: sends a signal to this (worker) process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    thread::sleep(Duration::from_secs(10));
    0
}

#[offloadable]
fn exit_with(code: i32) -> u64 {
    std::process::exit(code)
}

#[offloadable]
fn allocate(bytes: usize) -> usize {
    let block = vec![1u8; bytes];
    block.iter().map(|&b| usize::from(b)).sum()
}

#[offloadable]
fn sleep_ms(ms: u64) -> u64 {
    thread::sleep(Duration::from_millis(ms));
    ms
}

#[offloadable]
fn fails(message: String) -> u64 {
    panic!("{message}")
}

#[offloadable]
fn chatty(n: u64) -> u64 {
    // Must reach the parent's stderr, not the channel.
    println!("a worker printing on stdout: {n}");
    print!("without a newline \u{0}\u{1}");
    n * 2
}

#[offloadable]
fn bytes_of(n: usize) -> Vec<u8> {
    vec![7; n]
}

#[offloadable]
fn checksum(data: &[u8]) -> u64 {
    data.iter().map(|&b| u64::from(b)).sum()
}

#[offloadable]
fn shout(text: &str) -> String {
    text.to_uppercase()
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Shape {
    Circle { r: f64 },
    Square(f32),
    Empty,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Record {
    id: u128,
    name: String,
    tags: Vec<String>,
    shape: Shape,
    scores: BTreeMap<String, i64>,
    maybe: Option<Box<Record>>,
}

#[offloadable]
fn everything(
    small: (i8, u16, i32, char, bool),
    floats: (f32, f64),
    text: &str,
    data: &[u8],
    record: Record,
    map: HashMap<u32, Vec<Option<i64>>>,
    unit: (),
) -> (Record, usize, u64, String) {
    let _ = (small, floats, unit);
    let total = map.values().flatten().flatten().sum::<i64>() as u64;
    (record, data.len(), total, text.chars().rev().collect())
}

#[offloadable]
fn nothing() {}

fn unregistered(x: u64) -> u64 {
    x
}

// --- handlers -------------------------------------------------------------

#[yieldable]
fn try_call_add(a: u64, b: u64) -> Result<u64, OffloadError> {
    try_offload!(add, a, b)
}

// --- tests ----------------------------------------------------------------

#[test]
fn a_handler_runs_unchanged_under_processes() {
    common::watchdog(Duration::from_secs(60), || {
        #[yieldable]
        fn handle(n: u64) -> u64 {
            offload!(add, n, 1) * 2
        }
        let cpu = workers(2).build().unwrap();
        assert_eq!(handle(20).run_with(&cpu), handle(20).run_with(&Inline));
        assert_eq!(handle(20).run_with(&cpu), 42);
        // The call ran in a worker, not here.
        #[yieldable]
        fn where_() -> u32 {
            offload!(pid)
        }
        let worker = where_().run_with(&cpu);
        assert_ne!(worker, std::process::id());
        assert!(cpu.idle_pids().contains(&worker) || cpu.idle_pids().len() == 2);
    });
}

#[test]
fn a_portable_handler_runs_unchanged_under_processes_and_inline() {
    common::watchdog(Duration::from_secs(60), || {
        mod cpu {
            #[ythread::offloadable]
            pub(crate) fn pid_plus(n: u32) -> u32 {
                std::process::id() + n
            }
        }
        use cpu::pid_plus as offset_pid;
        // Checked at compile time: every call names an `#[offloadable]`
        // function, in a closure, through a module and an import.
        #[yieldable(portable)]
        fn handle(xs: Vec<u64>) -> (u64, u32, u32) {
            let sums: Vec<u64> = xs.iter().map(|&x| offload!(add, x, 1)).collect();
            let total = try_offload!(self::add, sums[0], sums[1]).unwrap();
            (total, offload!(cpu::pid_plus, 0), offload!(offset_pid, 1))
        }
        let cpu = workers(2).build().unwrap();
        let (total, pid, plus_one) = handle(vec![1, 2]).run_with(&cpu);
        assert_eq!(total, 5);
        assert_ne!(pid, std::process::id(), "ran in a worker");
        assert_ne!(plus_one, std::process::id() + 1, "ran in a worker");
        let here = std::process::id();
        assert_eq!(
            handle(vec![1, 2]).run_with(&Inline),
            (5, here, here + 1),
            "and in place under `Inline`"
        );
    });
}

#[test]
fn every_supported_argument_and_result_type_round_trips() {
    common::watchdog(Duration::from_secs(60), || {
        let record = Record {
            id: u128::MAX - 5,
            name: "ünïcödé ✓".into(),
            tags: vec!["a".into(), String::new()],
            shape: Shape::Circle { r: -0.5 },
            scores: [("x".to_owned(), i64::MIN), ("y".to_owned(), 3)].into(),
            maybe: Some(Box::new(Record {
                id: 1,
                name: "inner".into(),
                tags: vec![],
                shape: Shape::Square(2.5),
                scores: BTreeMap::new(),
                maybe: None,
            })),
        };
        let map: HashMap<u32, Vec<Option<i64>>> =
            [(1, vec![Some(5), None]), (2, vec![Some(-2)])].into();

        #[yieldable]
        fn handle(
            record: Record,
            map: HashMap<u32, Vec<Option<i64>>>,
        ) -> (Record, usize, u64, String) {
            let text = String::from("borrowed");
            let data = [9u8; 4];
            // `&String` and `&[u8; 4]` are coerced to the parameters' `&str`
            // and `&[u8]`, and encoded from this stack.
            offload!(
                everything,
                (-3, 65535, i32::MIN, '🦀', true),
                (f32::MIN_POSITIVE, f64::NAN),
                &text,
                &data,
                record,
                map,
                ()
            )
        }
        #[yieldable]
        fn more(data: Vec<u8>, text: String) -> (u64, String, Vec<u8>, ()) {
            (
                offload!(checksum, &data),
                offload!(shout, &text),
                offload!(bytes_of, 3),
                offload!(nothing),
            )
        }
        let cpu = workers(1).build().unwrap();
        let remote = handle(record.clone(), map.clone()).run_with(&cpu);
        let local = handle(record.clone(), map).run_with(&Inline);
        assert_eq!(remote, local);
        assert_eq!(remote.0, record);
        assert_eq!(remote.3, "deworrob");
        assert_eq!(
            more(vec![1, 2, 3], "ok".into()).run_with(&cpu),
            (6, "OK".to_owned(), vec![7, 7, 7], ())
        );
        assert_eq!(cpu.restarts(), 0);
    });
}

/// Runs `crash` on one call while 8 threads keep offloading `slow_add` to
/// the same two workers; checks that exactly the crashing call fails, with
/// `check`, and that the strategy is whole afterwards.
fn crash_while_busy(
    cpu: Processes,
    crash: impl FnOnce(&Processes) -> Result<u64, OffloadError>,
    check: impl Fn(&OffloadError),
) {
    let cpu = Arc::new(cpu);
    let correct = AtomicUsize::new(0);
    let calls_per_thread = 25;
    let crash_result = thread::scope(|s| {
        for t in 0..8u64 {
            let cpu = &cpu;
            let correct = &correct;
            s.spawn(move || {
                #[yieldable]
                fn handle(a: u64, b: u64) -> Result<u64, OffloadError> {
                    try_offload!(slow_add, a, b)
                }
                for i in 0..calls_per_thread {
                    match handle(t, i).run_with(&**cpu) {
                        Ok(sum) if sum == t + i => {
                            correct.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("a call beside the crash failed: {other:?}"),
                    }
                }
            });
        }
        thread::sleep(Duration::from_millis(20));
        crash(&cpu)
    });
    let error = crash_result.expect_err("the crashing call must fail");
    check(&error);
    assert_eq!(
        correct.load(Ordering::Relaxed),
        8 * calls_per_thread as usize
    );
    assert_eq!(cpu.restarts(), 1);
    // The crashed worker was replaced: both workers serve again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cpu.idle_pids().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the dead worker was not replaced"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(try_call_add(2, 3).run_with(&*cpu).unwrap(), 5);
}

#[yieldable]
fn try_segfault() -> Result<u64, OffloadError> {
    try_offload!(segfault)
}

#[test]
fn a_segfault_fails_only_its_call() {
    common::watchdog(Duration::from_secs(60), || {
        crash_while_busy(
            workers(2).build().unwrap(),
            |cpu| try_segfault().run_with(cpu),
            |error| {
                assert_eq!(error.kind(), OffloadErrorKind::WorkerDied);
                assert_eq!(error.signal(), Some(libc::SIGSEGV));
                let text = error.to_string();
                assert!(
                    text.contains("SIGSEGV") && text.contains("segfault"),
                    "{text}"
                );
            },
        );
    });
}

#[test]
fn an_abort_fails_only_its_call() {
    #[yieldable]
    fn handle() -> Result<u64, OffloadError> {
        try_offload!(abort)
    }
    common::watchdog(Duration::from_secs(60), || {
        crash_while_busy(
            workers(2).build().unwrap(),
            |cpu| handle().run_with(cpu),
            |error| {
                assert_eq!(error.kind(), OffloadErrorKind::WorkerDied);
                assert_eq!(error.signal(), Some(libc::SIGABRT));
                assert!(error.to_string().contains("SIGABRT"), "{error}");
            },
        );
    });
}

#[test]
fn a_sigkill_fails_only_its_call() {
    #[yieldable]
    fn handle() -> Result<u64, OffloadError> {
        try_offload!(sigkill_self)
    }
    common::watchdog(Duration::from_secs(60), || {
        crash_while_busy(
            workers(2).build().unwrap(),
            |cpu| handle().run_with(cpu),
            |error| {
                assert_eq!(error.kind(), OffloadErrorKind::WorkerDied);
                assert_eq!(error.signal(), Some(libc::SIGKILL));
                assert!(
                    error.to_string().contains("out-of-memory killer"),
                    "{error}"
                );
            },
        );
    });
}

#[test]
fn an_exit_fails_only_its_call_with_its_status() {
    #[yieldable]
    fn handle() -> Result<u64, OffloadError> {
        try_offload!(exit_with, 7)
    }
    common::watchdog(Duration::from_secs(60), || {
        crash_while_busy(
            workers(2).build().unwrap(),
            |cpu| handle().run_with(cpu),
            |error| {
                assert_eq!(error.kind(), OffloadErrorKind::WorkerDied);
                assert_eq!((error.exit_code(), error.signal()), (Some(7), None));
                assert!(
                    error.to_string().contains("exited with status 7"),
                    "{error}"
                );
            },
        );
    });
}

#[test]
fn running_out_of_memory_under_a_limit_fails_only_its_call() {
    #[yieldable]
    fn handle() -> Result<usize, OffloadError> {
        // 8 GiB, far past the limit.
        try_offload!(allocate, 8 << 30)
    }
    common::watchdog(Duration::from_secs(60), || {
        let cpu = workers(2).memory_limit(1 << 30).build().unwrap();
        crash_while_busy(
            cpu,
            |cpu| handle().run_with(cpu).map(|n| n as u64),
            |error| {
                assert_eq!(error.kind(), OffloadErrorKind::WorkerDied);
                assert_eq!(error.signal(), Some(libc::SIGABRT));
                assert!(
                    error.to_string().contains(
                        "out of memory: an allocation failed, under the memory limit of 1024 MiB"
                    ),
                    "{error}"
                );
            },
        );
    });
}

#[test]
fn a_call_past_the_deadline_is_killed_and_fails_alone() {
    #[yieldable]
    fn handle(ms: u64) -> Result<u64, OffloadError> {
        try_offload!(sleep_ms, ms)
    }
    common::watchdog(Duration::from_secs(60), || {
        // 3 s: the calls beside it have the same deadline and must not
        // reach it on a loaded machine.
        let cpu = workers(2).deadline(Duration::from_secs(3)).build().unwrap();
        let started = Instant::now();
        crash_while_busy(
            cpu,
            |cpu| handle(60_000).run_with(cpu),
            |error| {
                assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded);
                assert_eq!(error.function(), Some("processes::sleep_ms"));
                assert!(error.to_string().contains("deadline of 3s"), "{error}");
            },
        );
        // Killed at the deadline, not after the work's 60 s.
        assert!(started.elapsed() < Duration::from_secs(30));
    });
}

#[test]
fn a_panic_in_a_worker_keeps_its_message_and_its_worker() {
    #[yieldable]
    fn try_fail(message: String) -> Result<u64, OffloadError> {
        try_offload!(fails, message)
    }
    #[yieldable]
    fn fail(message: String) -> u64 {
        offload!(fails, message)
    }
    common::watchdog(Duration::from_secs(60), || {
        let cpu = workers(1).build().unwrap();
        let before = cpu.idle_pids();
        let error = try_fail("bad input 42".into()).run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Panicked);
        assert_eq!(error.panic_message(), Some("bad input 42"));
        // Where it panicked, named.
        assert_eq!(error.function(), Some("processes::fails"));
        assert_eq!(
            error.to_string(),
            "`processes::fails` panicked in its worker process: bad input 42"
        );
        // With `offload!`, the handler panics with the message as its
        // payload, as a panic in a thread would.
        let payload = common::quietly(|| {
            panic::catch_unwind(AssertUnwindSafe(|| fail("again".into()).run_with(&cpu)))
        })
        .unwrap_err();
        assert_eq!(common::panic_text(&*payload), "again");
        assert_eq!(cpu.restarts(), 0);
        assert_eq!(cpu.idle_pids(), before, "the worker survives a panic");
    });
}

#[test]
fn a_dead_worker_surfaces_at_offload_as_a_typed_panic() {
    #[yieldable]
    fn handle() -> u64 {
        offload!(segfault)
    }
    common::watchdog(Duration::from_secs(60), || {
        let cpu = workers(1).build().unwrap();
        let payload =
            common::quietly(|| panic::catch_unwind(AssertUnwindSafe(|| handle().run_with(&cpu))))
                .unwrap_err();
        let error = payload
            .downcast_ref::<OffloadError>()
            .expect("the payload is the OffloadError");
        assert_eq!(error.kind(), OffloadErrorKind::WorkerDied);
        assert_eq!(error.function(), Some("processes::segfault"));
    });
}

#[test]
fn what_cannot_cross_is_not_portable_and_named() {
    #[derive(Debug)]
    struct Opaque(u64);
    fn take_opaque(o: Opaque) -> u64 {
        o.0
    }
    #[yieldable]
    fn closure() -> Result<u64, OffloadError> {
        try_offload!(|| 1)
    }
    #[yieldable]
    fn plain_fn() -> Result<u64, OffloadError> {
        try_offload!(unregistered, 1)
    }
    #[yieldable]
    fn not_serde() -> Result<u64, OffloadError> {
        try_offload!(take_opaque, Opaque(3))
    }
    #[yieldable]
    fn generic_fn() -> Result<u64, OffloadError> {
        try_offload!(std::cmp::max, 3u64, 9)
    }
    #[yieldable]
    fn shared_closure(
        f: std::sync::Arc<dyn Fn(u64) -> u64 + Send + Sync>,
    ) -> Result<u64, OffloadError> {
        try_offload!(f, 2)
    }
    #[yieldable]
    fn closure_argument() -> Result<Option<usize>, OffloadError> {
        try_offload!(Option::map, Some("ab"), |s| s.len())
    }
    #[yieldable]
    fn function_form() -> u64 {
        ythread::offload(|| 5)
    }
    common::watchdog(Duration::from_secs(60), || {
        let cpu = workers(1).build().unwrap();
        for (error, names, says) in [
            (
                closure().run_with(&cpu).unwrap_err(),
                "{{closure}}",
                "closure",
            ),
            (
                plain_fn().run_with(&cpu).unwrap_err(),
                "processes::unregistered",
                "offloadable",
            ),
            (
                not_serde().run_with(&cpu).unwrap_err(),
                "take_opaque",
                "Serialize",
            ),
            (
                generic_fn().run_with(&cpu).unwrap_err(),
                "max<u64>",
                "offloadable",
            ),
            (
                shared_closure(std::sync::Arc::new(|n| n + 1))
                    .run_with(&cpu)
                    .unwrap_err(),
                "Arc<dyn",
                "offloadable",
            ),
            (
                closure_argument().run_with(&cpu).unwrap_err(),
                "Option :: map",
                "closure argument",
            ),
        ] {
            assert_eq!(error.kind(), OffloadErrorKind::NotPortable, "{error}");
            let text = error.to_string();
            assert!(text.contains(names) && text.contains(says), "{text}");
        }
        let payload = common::quietly(|| {
            panic::catch_unwind(AssertUnwindSafe(|| function_form().run_with(&cpu)))
        })
        .unwrap_err();
        let error = payload.downcast_ref::<OffloadError>().unwrap();
        assert_eq!(error.kind(), OffloadErrorKind::NotPortable);
        // The same handlers run under threads.
        assert_eq!(plain_fn().run().unwrap(), 1);
        assert_eq!(not_serde().run().unwrap(), 3);
        assert_eq!(generic_fn().run().unwrap(), 9);
        assert_eq!(
            shared_closure(std::sync::Arc::new(|n| n + 1))
                .run()
                .unwrap(),
            3
        );
        assert_eq!(closure_argument().run().unwrap(), Some(2));
    });
}

#[test]
fn oversized_arguments_and_results_fail_their_call_only() {
    #[yieldable]
    fn send(data: Vec<u8>) -> Result<u64, OffloadError> {
        try_offload!(checksum, &data)
    }
    #[yieldable]
    fn receive(n: usize) -> Result<Vec<u8>, OffloadError> {
        try_offload!(bytes_of, n)
    }
    common::watchdog(Duration::from_secs(60), || {
        let cpu = workers(1).max_frame(4096).build().unwrap();
        let error = send(vec![1; 10_000]).run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Protocol);
        assert!(
            error.to_string().contains("over the maximum frame of 4096"),
            "{error}"
        );
        let error = receive(10_000).run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Protocol);
        assert!(
            error.to_string().contains("over the maximum frame"),
            "{error}"
        );
        // Neither cost the worker.
        assert_eq!(send(vec![1; 100]).run_with(&cpu).unwrap(), 100);
        assert_eq!(receive(10).run_with(&cpu).unwrap(), vec![7; 10]);
        assert_eq!(cpu.restarts(), 0);
    });
}

#[test]
fn a_workers_stdout_does_not_corrupt_the_channel() {
    #[yieldable]
    fn handle(n: u64) -> u64 {
        offload!(chatty, n)
    }
    common::watchdog(Duration::from_secs(60), || {
        let cpu = workers(1).build().unwrap();
        for n in 0..20 {
            assert_eq!(handle(n).run_with(&cpu), n * 2);
        }
        assert_eq!(cpu.restarts(), 0);
    });
}

#[test]
fn dropping_the_strategy_reaps_every_worker() {
    common::watchdog(Duration::from_secs(60), || {
        let cpu = workers(3).build().unwrap();
        let pids = cpu.idle_pids();
        assert_eq!(pids.len(), 3);
        for &pid in &pids {
            assert!(matches!(process_state(pid), Some(s) if s != 'Z'));
        }
        drop(cpu);
        // Reaped: not zombies, gone.
        for pid in pids {
            assert_eq!(process_state(pid), None, "worker {pid} left behind");
        }
    });
}

#[test]
fn dropping_the_strategy_kills_a_worker_that_does_not_stop() {
    common::watchdog(Duration::from_secs(60), || {
        let cpu = Arc::new(workers(1).build().unwrap());
        let pid = cpu.idle_pids()[0];
        // A worker busy in a 60 s call when the strategy is dropped: the
        // call's handler thread holds the strategy, so drop it from there
        // once the call is under way... which cannot happen while `apply`
        // borrows it. Instead, stop the worker (SIGSTOP): it cannot read
        // its channel's end, and must be killed.
        // SAFETY: sends a signal to our own worker.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let started = Instant::now();
        drop(Arc::try_unwrap(cpu).unwrap());
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(process_state(pid), None);
    });
}

#[test]
fn workers_die_with_their_parent() {
    common::watchdog(Duration::from_secs(60), || {
        // A parent process of our own: this binary, running
        // `parent_process_entry`.
        let mut parent = Command::new(std::env::current_exe().unwrap())
            .args(common::entry_args("parent_process_entry"))
            .arg("--nocapture")
            .env(PARENT_ENV, "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(parent.stdout.take().unwrap()).lines();
        let pids: Vec<u32> = loop {
            let line = lines
                .next()
                .expect("the parent printed its workers")
                .unwrap();
            if let Some(list) = line.strip_prefix("workers:") {
                break list.split(',').map(|p| p.trim().parse().unwrap()).collect();
            }
        };
        assert_eq!(pids.len(), 2);
        parent.kill().unwrap();
        parent.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        for pid in pids {
            // Killed (`PR_SET_PDEATHSIG`), then reaped by whoever adopts
            // it; a zombie not yet reaped counts as dead.
            while matches!(process_state(pid), Some(s) if s != 'Z') {
                assert!(
                    Instant::now() < deadline,
                    "worker {pid} outlived its parent"
                );
                thread::sleep(Duration::from_millis(10));
            }
        }
    });
}

const PARENT_ENV: &str = "YTHREAD_TEST_PARENT";

/// In `workers_die_with_their_parent`'s parent process: start workers,
/// print their pids, wait to be killed. A no-op in the test run itself.
#[test]
#[ignore = "an entry point of the processes other tests start, not a test"]
fn parent_process_entry() {
    if std::env::var_os(PARENT_ENV).is_none() {
        return;
    }
    let cpu = workers(2).build().unwrap();
    let pids: Vec<String> = cpu.idle_pids().iter().map(u32::to_string).collect();
    println!("workers:{}", pids.join(","));
    thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_program_that_cannot_be_a_worker_is_a_clear_error() {
    common::watchdog(Duration::from_secs(60), || {
        let error = Processes::builder()
            .workers(1)
            .program("/bin/true")
            .build()
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("ended before it was ready")
                && text.contains("exited with status 0")
                && text.contains("links ythread")
                && text.contains("/bin/true"),
            "{text}"
        );
    });
}

#[test]
fn a_crashing_input_costs_only_its_own_request() {
    common::watchdog(Duration::from_secs(60), || {
        let cpu = workers(1).build().unwrap();
        // Ten calls in a row that each crash their worker: each is replaced
        // at once (no back-off: the input, not the program, is bad).
        for _ in 0..10 {
            let error = try_segfault().run_with(&cpu).unwrap_err();
            assert_eq!(error.kind(), OffloadErrorKind::WorkerDied);
        }
        let started = Instant::now();
        assert_eq!(try_call_add(1, 1).run_with(&cpu).unwrap(), 2);
        // A start takes ~1.3 ms here (more on a loaded machine); a
        // back-off after ten crashes would be 2 s at least.
        assert!(
            started.elapsed() < Duration::from_millis(1_500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(cpu.restarts(), 10);
    });
}

/// A worker program that refuses to start while `flag` exists, and logs
/// each start to `log`; otherwise this binary as a worker.
fn refusing_worker_script(dir: &Path, flag: &Path, log: &Path) -> PathBuf {
    let script = dir.join("worker.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho start >> '{}'\n[ -e '{}' ] && exit 3\nexec '{}' \"$@\"\n",
            log.display(),
            flag.display(),
            std::env::current_exe().unwrap().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

#[test]
fn workers_that_cannot_start_are_retried_with_back_off() {
    common::watchdog(Duration::from_secs(60), || {
        let dir = scratch("backoff");
        let (flag, log) = (dir.join("refuse"), dir.join("starts"));
        let script = refusing_worker_script(&dir, &flag, &log);
        let cpu = workers(1).program(&script).build().unwrap();
        std::fs::write(&flag, "").unwrap();
        std::fs::write(&log, "").unwrap();
        // The worker dies; from now on, every start fails.
        assert_eq!(
            try_segfault().run_with(&cpu).unwrap_err().kind(),
            OffloadErrorKind::WorkerDied
        );
        thread::sleep(Duration::from_secs(1));
        let starts = std::fs::read_to_string(&log).unwrap().lines().count();
        // ~1.3 ms a start: without back-off, hundreds in a second; with
        // 10, 20, 40, ... ms between them, a handful.
        assert!((1..30).contains(&starts), "{starts} starts in a second");
        drop(cpu);
        let _ = std::fs::remove_dir_all(dir);
    });
}

#[test]
fn when_no_worker_can_start_calls_fail_at_once_then_recover() {
    common::watchdog(Duration::from_secs(60), || {
        // The worker program: a script that refuses to start while a flag
        // file exists, and otherwise runs this binary as a worker.
        let dir = scratch("flag");
        let flag = dir.join("refuse");
        let script = refusing_worker_script(&dir, &flag, &dir.join("starts"));
        let cpu = workers(1).program(PathBuf::from(&script)).build().unwrap();
        std::fs::write(&flag, "").unwrap();
        assert_eq!(
            try_segfault().run_with(&cpu).unwrap_err().kind(),
            OffloadErrorKind::WorkerDied
        );
        // The replacement cannot start: calls fail, with why, not hang.
        let deadline = Instant::now() + Duration::from_secs(10);
        let error = loop {
            let error = try_call_add(1, 2).run_with(&cpu).unwrap_err();
            if error.kind() == OffloadErrorKind::Unavailable {
                break error;
            }
            assert!(Instant::now() < deadline, "{error}");
        };
        assert!(
            error.to_string().contains("exited with status 3"),
            "{error}"
        );
        // Once it can start again, calls succeed again.
        std::fs::remove_file(&flag).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match try_call_add(1, 2).run_with(&cpu) {
                Ok(3) => break,
                other => assert!(Instant::now() < deadline, "{other:?}"),
            }
            thread::sleep(Duration::from_millis(10));
        }
        drop(cpu);
        let _ = std::fs::remove_dir_all(dir);
    });
}

#[test]
fn many_threads_share_the_workers() {
    common::watchdog(Duration::from_secs(60), || {
        let cpu = workers(2).build().unwrap();
        thread::scope(|s| {
            for t in 0..16u64 {
                let cpu = &cpu;
                s.spawn(move || {
                    for i in 0..50 {
                        assert_eq!(try_call_add(t, i).run_with(cpu).unwrap(), t + i);
                    }
                });
            }
        });
        assert_eq!(cpu.restarts(), 0);
    });
}

/// Marks, in a worker process, that the test harness ran there: it must
/// not, since a worker of a test binary serves before the harness starts.
/// (In the test run itself, a no-op.)
#[test]
fn marks_a_harness_run_in_a_worker() {
    if std::env::var_os("YTHREAD_WORKER").is_some() {
        let parent = std::os::unix::process::parent_id();
        std::fs::write(harness_marker(parent), b"ran").unwrap();
    }
}

fn harness_marker(parent: u32) -> PathBuf {
    std::env::temp_dir().join(format!("ythread-harness-ran-in-worker-of-{parent}"))
}

#[test]
fn a_test_binary_needs_no_setup_and_its_workers_run_no_test() {
    common::watchdog(Duration::from_secs(60), || {
        let marker = harness_marker(std::process::id());
        let _ = std::fs::remove_file(&marker);
        // The plain recipe, in a `#[test]`: no entry point, no arguments.
        let cpu = Processes::builder().workers(2).build().unwrap();
        assert_eq!(call_add(2, 3).run_with(&cpu), 5);
        let worker = where_am_i().run_with(&cpu);
        assert_ne!(worker, std::process::id());
        drop(cpu);
        assert!(
            !marker.exists(),
            "a worker process ran the test harness (a sibling test ran in it)"
        );
    });
}

#[yieldable]
fn call_add(a: u64, b: u64) -> u64 {
    offload!(add, a, b)
}

#[yieldable]
fn where_am_i() -> u32 {
    offload!(pid)
}

/// A result whose decoding panics in the parent.
#[derive(Debug)]
struct Grumpy;

impl Serialize for Grumpy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for Grumpy {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("Grumpy refuses to be decoded")
    }
}

#[offloadable]
fn grumpy() -> Grumpy {
    Grumpy
}

#[test]
fn a_panicking_result_decoder_fails_its_call_and_keeps_the_worker() {
    #[yieldable]
    fn handle() -> Result<Grumpy, OffloadError> {
        try_offload!(grumpy)
    }
    common::watchdog(Duration::from_secs(60), || {
        let cpu = workers(1).build().unwrap();
        let error = common::quietly(|| handle().run_with(&cpu)).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Protocol);
        assert!(error.to_string().contains("Grumpy refuses"), "{error}");
        assert_eq!(try_call_add(2, 2).run_with(&cpu).unwrap(), 4);
        assert_eq!(cpu.restarts(), 0);
    });
}

#[test]
fn the_deadline_bounds_a_large_send_to_a_stuck_worker() {
    #[yieldable]
    fn send(data: Vec<u8>) -> Result<u64, OffloadError> {
        try_offload!(checksum, &data)
    }
    common::watchdog(Duration::from_secs(60), || {
        let cpu = workers(1).deadline(Duration::from_secs(1)).build().unwrap();
        let pid = cpu.idle_pids()[0];
        // SAFETY: sends a signal to our own worker.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let started = Instant::now();
        // 1 MiB: far more than a pipe holds.
        let error = send(vec![1; 1 << 20]).run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded, "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(send(vec![1; 10]).run_with(&cpu).unwrap(), 10);
    });
}

/// Native code gone wrong: writes a well-formed reply (to another call,
/// with another value) on the worker's channel, descriptor 4, then returns.
#[offloadable]
fn scribble() -> u64 {
    // length | kind DONE (3) | call 999 | postcard 66u64
    let mut frame = vec![0u8; 4];
    frame.push(3);
    frame.extend_from_slice(&999u32.to_le_bytes());
    frame.push(66);
    let length = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&length.to_le_bytes());
    // SAFETY: writes a buffer of ours to a descriptor; the point is to
    // corrupt this worker's channel.
    unsafe { libc::write(4, frame.as_ptr().cast(), frame.len()) };
    // So that the parent reads the forged reply alone (with the real one
    // behind it, "more bytes than one frame" would catch it first): it
    // replaces this worker on reading it, long before this ends.
    thread::sleep(Duration::from_secs(30));
    7
}

#[test]
fn a_reply_out_of_step_with_its_call_is_never_a_result() {
    #[yieldable]
    fn handle() -> Result<u64, OffloadError> {
        try_offload!(scribble)
    }
    common::watchdog(Duration::from_secs(60), || {
        let cpu = workers(1).build().unwrap();
        let error = handle().run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Protocol, "{error}");
        assert!(error.to_string().contains("a reply to call 999"), "{error}");
        // The worker that wrote it cannot be trusted: it was replaced.
        assert_eq!(cpu.restarts(), 1);
        assert_eq!(try_call_add(3, 4).run_with(&cpu).unwrap(), 7);
    });
}

#[offloadable]
fn add_after(a: u64, b: u64, ms: u64) -> u64 {
    thread::sleep(Duration::from_millis(ms));
    a + b
}

#[yieldable]
fn call_add_after(a: u64, b: u64, ms: u64) -> Result<u64, OffloadError> {
    try_offload!(add_after, a, b, ms)
}

/// `a + b` once the file `gate` exists (30 s at most).
#[offloadable]
fn add_when_open(a: u64, b: u64, gate: String) -> u64 {
    let end = Instant::now() + Duration::from_secs(30);
    while !std::path::Path::new(&gate).exists() && Instant::now() < end {
        thread::sleep(Duration::from_millis(5));
    }
    a + b
}

#[yieldable]
fn call_add_when_open(a: u64, b: u64, gate: String) -> Result<u64, OffloadError> {
    try_offload!(add_when_open, a, b, gate)
}

#[test]
fn shutdown_lets_the_calls_under_way_and_waiting_run_then_reaps_the_workers() {
    common::watchdog(Duration::from_secs(60), || {
        let cpu = Arc::new(workers(1).build().unwrap());
        let pid = cpu.idle_pids()[0];
        // One call runs until the test opens its gate; four wait for the
        // only worker. The pauses leave a loaded machine time to queue
        // them, then to start the shutdown.
        let gate = common::scratch("shutdown-waits").join("gate");
        let calls: Vec<_> = (0..5u64)
            .map(|i| {
                let cpu = Arc::clone(&cpu);
                let gate = gate.display().to_string();
                let handle = thread::spawn(move || {
                    if i == 0 {
                        call_add_when_open(i, 1, gate).run_with(&*cpu)
                    } else {
                        call_add_after(i, 1, 0).run_with(&*cpu)
                    }
                });
                thread::sleep(Duration::from_millis(20));
                handle
            })
            .collect();
        thread::sleep(Duration::from_secs(1));
        let shutdown = {
            let cpu = Arc::clone(&cpu);
            thread::spawn(move || cpu.shutdown())
        };
        thread::sleep(Duration::from_secs(1));
        // New calls are refused, clearly, while those taken run on.
        let error = call_add_after(1, 1, 0).run_with(&*cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Unavailable, "{error}");
        assert!(error.to_string().contains("shut down"), "{error}");
        assert!(!shutdown.is_finished(), "shutdown waits for the calls");
        std::fs::write(&gate, b"").unwrap();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.join().unwrap().unwrap(), i as u64 + 1);
        }
        shutdown.join().unwrap();
        assert_eq!(process_state(pid), None, "the worker is reaped");
        assert!(cpu.idle_pids().is_empty());
        // Again, and dropping it afterwards, are no-ops.
        cpu.shutdown();
        drop(cpu);
    });
}

#[test]
fn a_deadline_too_far_to_add_is_none() {
    common::watchdog(Duration::from_secs(60), || {
        let cpu = workers(1)
            .deadline(Duration::MAX)
            .start_timeout(Duration::MAX)
            .build()
            .unwrap();
        for i in 0..3 {
            assert_eq!(call_add_after(i, 1, 0).run_with(&cpu).unwrap(), i + 1);
        }
        assert_eq!(cpu.restarts(), 0);
    });
}

/// A call is sent under the registration of the very function called, never
/// of another item with the same path: here two functions named `twin` in
/// sibling blocks (one type name), of which only the first is registered. A
/// name-keyed lookup ran the registered one in the worker and returned its
/// value for a call of the other.
#[test]
fn a_namesake_of_a_registered_function_is_not_sent_under_its_registration() {
    {
        #[offloadable]
        fn twin(x: u64) -> u64 {
            x + 1
        }
        #[yieldable]
        fn registered() -> Result<u64, OffloadError> {
            try_offload!(twin, 1)
        }
        common::watchdog(Duration::from_secs(60), || {
            assert_eq!(
                registered().run_with(&workers(1).build().unwrap()).unwrap(),
                2
            );
        });
    }
    {
        fn twin(x: u64) -> u64 {
            x + 1000
        }
        #[yieldable]
        fn namesake() -> Result<u64, OffloadError> {
            try_offload!(twin, 1)
        }
        common::watchdog(Duration::from_secs(60), || {
            let error = namesake()
                .run_with(&workers(1).build().unwrap())
                .unwrap_err();
            assert_eq!(error.kind(), OffloadErrorKind::NotPortable, "{error}");
            assert!(error.to_string().contains("offloadable"), "{error}");
            assert_eq!(namesake().run().unwrap(), 1001);
        });
    }
}

#[test]
fn worker_output_takes_every_line_labelled_instead_of_stderr() {
    #[yieldable]
    fn talk(n: u64) -> u64 {
        offload!(chatty, n)
    }
    #[yieldable]
    fn try_fail(message: String) -> Result<u64, OffloadError> {
        try_offload!(fails, message)
    }
    common::watchdog(Duration::from_secs(60), || {
        let (cpu, lines) = common::one_worker_with_its_lines();
        assert_eq!(talk(21).run_with(&cpu), 42);
        let pid = cpu.idle_pids()[0];
        let error = try_fail("bad input 7".into()).run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Panicked);
        // Each line is labelled with the call that printed it.
        let chatty = format!("[ythread worker 1 pid {pid} processes::chatty call 1] ");
        let fails = format!("[ythread worker 1 pid {pid} processes::fails call 2] ");
        // The relay is a thread of its own: wait for the lines.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = lines.lock().unwrap().clone();
            let has = |prefix: &str, text: &str| {
                got.iter()
                    .any(|l| l.starts_with(prefix) && l.contains(text))
            };
            if has(&chatty, "a worker printing on stdout: 21") && has(&fails, "bad input 7") {
                assert!(got.iter().all(|l| !l.ends_with('\n')), "{got:?}");
                break;
            }
            assert!(Instant::now() < deadline, "lines: {got:?}");
            thread::sleep(Duration::from_millis(10));
        }
    });
}
