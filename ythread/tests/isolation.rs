//! What `Processes` promises beyond a crash failing only its call: a worker
//! that dies while idle fails no call; what the work starts ends with it (at
//! a deadline, a replacement, a shutdown, the owner's `SIGKILL`); and a
//! process the work starts runs as the program it is.
//!
//! Real worker processes (this test binary, serving before its harness),
//! real signals, real subprocesses (`sleep`, `sh`); every test under a
//! watchdog.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ythread::{
    OffloadError, OffloadErrorKind, Processes, Yieldable, offloadable, try_offload, yieldable,
};

// --- the work -------------------------------------------------------------

#[offloadable]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Starts `sh -c script` in the background and returns its pid: the
/// subprocess outlives the call unless something ends it.
#[offloadable]
fn start_subprocess(script: String) -> u32 {
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .expect("sh");
    child.id()
}

/// Starts a subprocess, writes its pid to `file`, then runs forever.
#[offloadable]
fn start_subprocess_then_hang(script: String, file: String) -> u64 {
    let pid = start_subprocess(script);
    std::fs::write(file, pid.to_string()).unwrap();
    loop {
        thread::sleep(Duration::from_secs(1000));
    }
}

/// Starts a subprocess, writes its pid to `file`, waits until the file
/// `ready` exists (the subprocess has started what it starts), then aborts
/// its worker.
#[offloadable]
fn start_subprocess_then_abort(script: String, file: String, ready: String) -> u64 {
    let pid = start_subprocess(script);
    std::fs::write(file, pid.to_string()).unwrap();
    while !Path::new(&ready).exists() {
        thread::sleep(Duration::from_millis(1));
    }
    std::process::abort()
}

/// Runs this same program as a plain command-line tool, as work that
/// shells out to a tool might: its exit status and what it printed.
#[offloadable]
fn run_this_program(args: Vec<String>) -> (Option<i32>, String) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[yieldable]
fn try_add(a: u64, b: u64) -> Result<u64, OffloadError> {
    try_offload!(add, a, b)
}

#[yieldable]
fn try_start_subprocess(script: String) -> Result<u32, OffloadError> {
    try_offload!(start_subprocess, script)
}

// --- helpers --------------------------------------------------------------

/// `R` (running), `S` (sleeping), `Z` (zombie), ..., or `None` if there is
/// no such process.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits until `pid` has ended (gone, or a zombie its adopter has not
/// reaped yet), failing after 10 s.
fn assert_ends(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(process_state(pid), Some(state) if state != 'Z') {
        assert!(Instant::now() < deadline, "{what} ({pid}) is still running");
        thread::sleep(Duration::from_millis(10));
    }
}

fn assert_running(pid: u32, what: &str) {
    assert!(
        matches!(process_state(pid), Some(state) if state != 'Z'),
        "{what} ({pid}) is not running"
    );
}

/// Waits until `condition` holds, failing with `what` after 10 s.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Kills the worker `pid` and waits until it is dead (a zombie: its parent,
/// this process, has not reaped it), as a worker the out-of-memory killer
/// took while idle is by the time a call comes. (A worker that dies at the
/// very instant a call reaches it may have taken the call: that call fails
/// with `WorkerDied`, which is the truth.)
fn kill(pid: u32, signal: i32) {
    // SAFETY: `kill` has no memory effects; `pid` is a worker of ours.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
    eventually("the killed worker is dead", || {
        process_state(pid).is_none_or(|state| state == 'Z')
    });
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ythread-isolation-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits for a pid written to `file` by the work.
fn read_pid(file: &Path) -> u32 {
    let mut pid = None;
    eventually("the work wrote its subprocess's pid", || {
        pid = std::fs::read_to_string(file)
            .ok()
            .and_then(|text| text.trim().parse().ok());
        pid.is_some()
    });
    pid.unwrap()
}

// --- 1. a worker that dies while idle fails no call -----------------------

#[test]
fn a_worker_killed_while_idle_fails_no_call() {
    common::watchdog(Duration::from_secs(120), || {
        for signal in [libc::SIGKILL, libc::SIGTERM, libc::SIGSEGV] {
            let cpu = Arc::new(Processes::new(2).unwrap());
            for i in 0..4 {
                assert_eq!(try_add(i, 1).run_with(&*cpu).unwrap(), i + 1);
            }
            let victim = cpu.idle_pids()[0];
            kill(victim, signal);
            // At once, before the pool may have noticed: calls in a row,
            // then a burst from several threads. None may fail.
            for i in 0..10 {
                assert_eq!(
                    try_add(i, 2).run_with(&*cpu).unwrap(),
                    i + 2,
                    "signal {signal}"
                );
            }
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let cpu = Arc::clone(&cpu);
                    thread::spawn(move || {
                        for i in 0..10 {
                            assert_eq!(try_add(t, i).run_with(&*cpu).unwrap(), t + i);
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
            // The dead worker was replaced, not kept, and reaped.
            eventually("the pool is back to two live workers", || {
                let idle = cpu.idle_pids();
                idle.len() == 2 && !idle.contains(&victim)
            });
            assert_eq!(cpu.restarts(), 1, "signal {signal}");
            assert_eq!(process_state(victim), None, "the dead worker is reaped");
        }
    });
}

#[test]
fn the_death_of_an_idle_worker_is_noticed_without_a_call() {
    common::watchdog(Duration::from_secs(60), || {
        let cpu = Processes::new(2).unwrap();
        let victim = cpu.idle_pids()[1];
        kill(victim, libc::SIGKILL);
        // No call: the pool notices by itself, reaps and replaces.
        eventually("the idle worker's death is noticed", || cpu.restarts() == 1);
        eventually("a replacement is idle", || cpu.idle_pids().len() == 2);
        assert!(!cpu.idle_pids().contains(&victim));
        assert_eq!(process_state(victim), None, "the dead worker is reaped");
    });
}

#[test]
fn every_idle_worker_killed_at_once_fails_no_call() {
    common::watchdog(Duration::from_secs(60), || {
        let cpu = Processes::new(3).unwrap();
        assert_eq!(try_add(1, 1).run_with(&cpu).unwrap(), 2);
        let pids = cpu.idle_pids();
        for &pid in &pids {
            kill(pid, libc::SIGKILL);
        }
        for i in 0..10 {
            assert_eq!(try_add(i, 3).run_with(&cpu).unwrap(), i + 3);
        }
        eventually("three live workers again", || cpu.idle_pids().len() == 3);
        assert_eq!(cpu.restarts(), 3);
    });
}

// --- 2. what the work starts ends with it ---------------------------------

#[test]
fn a_deadline_ends_what_the_work_started() {
    common::watchdog(Duration::from_secs(60), || {
        let dir = scratch("deadline");
        let cpu = Processes::builder()
            .workers(1)
            .deadline(Duration::from_millis(500))
            .build()
            .unwrap();
        let file = dir.join("pid");
        #[yieldable]
        fn handle(script: String, file: String) -> Result<u64, OffloadError> {
            try_offload!(start_subprocess_then_hang, script, file)
        }
        let error = handle("exec sleep 300".into(), file.display().to_string())
            .run_with(&cpu)
            .unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded, "{error}");
        assert_ends(
            read_pid(&file),
            "the subprocess of a call killed at its deadline",
        );
    });
}

#[test]
fn a_worker_that_dies_ends_what_its_work_started() {
    common::watchdog(Duration::from_secs(60), || {
        let dir = scratch("abort");
        let cpu = Processes::new(1).unwrap();
        let file = dir.join("pid");
        #[yieldable]
        fn handle(script: String, file: String, ready: String) -> Result<u64, OffloadError> {
            try_offload!(start_subprocess_then_abort, script, file, ready)
        }
        // A subprocess that starts one of its own: both are in the worker's
        // process group.
        let grandchild = dir.join("grandchild");
        let ready = dir.join("ready");
        let script = format!(
            "sleep 301 & echo $! > {}; touch {}; exec sleep 302",
            grandchild.display(),
            ready.display()
        );
        let error = handle(
            script,
            file.display().to_string(),
            ready.display().to_string(),
        )
        .run_with(&cpu)
        .unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::WorkerDied, "{error}");
        assert_ends(read_pid(&file), "the subprocess of a worker that aborted");
        assert_ends(read_pid(&grandchild), "the subprocess's own subprocess");
    });
}

#[test]
fn a_shutdown_and_a_drop_end_what_the_work_left_running() {
    common::watchdog(Duration::from_secs(60), || {
        // `shutdown`.
        let cpu = Processes::new(1).unwrap();
        let pid = try_start_subprocess("exec sleep 303".into())
            .run_with(&cpu)
            .unwrap();
        assert_running(pid, "the subprocess, while the strategy lives");
        cpu.shutdown();
        assert_ends(pid, "a subprocess left running, after `shutdown`");
        // Dropping the strategy.
        let cpu = Processes::new(1).unwrap();
        let pid = try_start_subprocess("exec sleep 304".into())
            .run_with(&cpu)
            .unwrap();
        drop(cpu);
        assert_ends(pid, "a subprocess left running, after the drop");
    });
}

#[test]
fn the_owners_sigkill_ends_its_workers_and_what_they_started() {
    common::watchdog(Duration::from_secs(60), || {
        let dir = scratch("owner");
        let mut owner = Command::new(std::env::current_exe().unwrap())
            .args(common::entry_args("owner_process_entry"))
            .arg("--nocapture")
            .env(OWNER_ENV, &dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(owner.stdout.take().unwrap()).lines();
        let (worker, subprocess) = loop {
            let line = lines.next().expect("the owner printed its pids").unwrap();
            if let Some(pids) = line.strip_prefix("pids:") {
                let (worker, subprocess) = pids.split_once(',').unwrap();
                break (worker.parse().unwrap(), subprocess.parse().unwrap());
            }
        };
        assert_running(subprocess, "the subprocess, while its owner lives");
        owner.kill().unwrap(); // SIGKILL: the owner cannot clean up
        owner.wait().unwrap();
        assert_ends(worker, "the worker of a SIGKILLed owner");
        assert_ends(subprocess, "what the work of a SIGKILLed owner started");
    });
}

const OWNER_ENV: &str = "YTHREAD_TEST_OWNER";

/// In `the_owners_sigkill_ends_its_workers_and_what_they_started`'s owner
/// process: a worker whose work left a subprocess running; prints both
/// pids, then waits to be killed. A no-op in the test run itself.
#[test]
#[ignore = "an entry point of the processes other tests start, not a test"]
fn owner_process_entry() {
    if std::env::var_os(OWNER_ENV).is_none() {
        return;
    }
    let cpu = Processes::new(1).unwrap();
    let worker = cpu.idle_pids()[0];
    let subprocess = try_start_subprocess("exec sleep 305".into())
        .run_with(&cpu)
        .unwrap();
    println!("pids:{worker},{subprocess}");
    thread::sleep(Duration::from_secs(60));
}

// --- 4. a process the work starts is not a worker -------------------------

#[test]
fn the_work_can_run_this_program_as_a_plain_program() {
    common::watchdog(Duration::from_secs(60), || {
        let cpu = Processes::new(1).unwrap();
        #[yieldable]
        fn handle(args: Vec<String>) -> (Option<i32>, String) {
            ythread::offload!(run_this_program, args)
        }
        // The test binary as a command-line tool: it lists its tests.
        let (status, output) = handle(vec!["--list".into()]).run_with(&cpu);
        assert_eq!(status, Some(0), "{output}");
        assert!(
            output.contains("the_work_can_run_this_program_as_a_plain_program: test"),
            "{output}"
        );
        // And as a program that starts worker processes of its own.
        let (status, output) = handle(
            common::entry_args("nested_strategy_entry")
                .iter()
                .map(|arg| arg.to_string())
                .chain(["--nocapture".to_owned()])
                .collect(),
        )
        .run_with(&cpu);
        assert_eq!(status, Some(0), "{output}");
        assert!(output.contains("nested: 42"), "{output}");
    });
}

/// Run by a worker's work in `the_work_can_run_this_program_as_a_plain_program`:
/// a program, started by a worker, that has workers of its own.
#[test]
#[ignore = "an entry point of the processes other tests start, not a test"]
fn nested_strategy_entry() {
    let cpu = Processes::new(1).unwrap();
    println!("nested: {}", try_add(40, 2).run_with(&cpu).unwrap());
}

// --- 6. a worker's death, in words ----------------------------------------

/// Recurses without end: a stack overflow.
#[allow(unconditional_recursion)]
#[offloadable]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    recurse(depth + 1) + frame[depth as usize % 64]
}

#[test]
fn a_stack_overflow_in_a_worker_is_named_as_one() {
    common::watchdog(Duration::from_secs(60), || {
        #[yieldable]
        fn handle() -> Result<u64, OffloadError> {
            try_offload!(recurse, 0)
        }
        // With a memory limit too: an abort must not be blamed on it.
        let cpu = Processes::builder()
            .workers(1)
            .memory_limit(4 << 30)
            .build()
            .unwrap();
        let error = handle().run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::WorkerDied, "{error}");
        let text = error.to_string();
        assert!(
            text.contains("a stack overflow") && !text.contains("memory limit"),
            "{text}"
        );
        // The worker was replaced and serves.
        assert_eq!(try_add(1, 2).run_with(&cpu).unwrap(), 3);
    });
}
