//! What `Processes` promises beyond a crash failing only its call: a worker
//! that dies while idle fails no call; what the work starts ends with it (at
//! a deadline, a replacement, a shutdown, the owner's `SIGKILL`); and a
//! process the work starts runs as the program it is.
//!
//! Real worker processes (this test binary, serving before its harness),
//! real signals, real subprocesses (`sleep`, `sh`); every test under a
//! watchdog.

mod common;

use common::{eventually, process_state, scratch};

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
#[allow(clippy::zombie_processes)] // on purpose: what the work leaves running
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

/// Sends `signal` to the worker `pid`, and returns at once: the worker may
/// still be dying (even taking a call's bytes off its pipe as it goes) when
/// the next call is sent, which must not fail that call.
fn kill(pid: u32, signal: i32) {
    // SAFETY: `kill` has no memory effects; `pid` is a worker of ours.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
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

/// This test binary, running only its ignored test `entry` with `switch`
/// set (the entry's own process; it does nothing without the switch).
fn entry(entry: &str, switch: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(common::entry_args(entry))
        .arg("--nocapture")
        .env(switch, "1")
        .stdin(Stdio::null());
    command
}

// --- 1. a worker that dies while idle fails no call -----------------------

#[test]
fn a_worker_killed_while_idle_fails_no_call() {
    common::watchdog(Duration::from_secs(120), || {
        for signal in [libc::SIGKILL, libc::SIGTERM, libc::SIGSEGV] {
            // Many times: the call races the worker's death.
            for _ in 0..10 {
                let cpu = Arc::new(Processes::new(2).unwrap());
                for i in 0..4 {
                    assert_eq!(try_add(i, 1).run_with(&*cpu).unwrap(), i + 1);
                }
                let victim = cpu.idle_pids()[0];
                kill(victim, signal);
                // At once, before the pool may have noticed: calls in a
                // row, then a burst from several threads. None may fail.
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
        // Time to start the subprocess and write its pid, on a loaded
        // machine too.
        let cpu = Processes::builder()
            .workers(1)
            .deadline(Duration::from_secs(3))
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
        let cpu = common::worker_processes(1)
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

// --- 3. a peer's bytes cannot crash the side that decodes them ------------

/// A value as deep as it is long.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Tree {
    Leaf,
    Node(Box<Tree>),
}

impl Tree {
    fn deep(depth: usize) -> Tree {
        (0..depth).fold(Tree::Leaf, |tree, _| Tree::Node(Box::new(tree)))
    }

    fn depth(&self) -> usize {
        let (mut tree, mut depth) = (self, 0);
        while let Tree::Node(next) = tree {
            (tree, depth) = (next, depth + 1);
        }
        depth
    }
}

impl Drop for Tree {
    /// Without recursion: a deep tree must not overflow the stack that
    /// drops it either.
    fn drop(&mut self) {
        let Tree::Node(inner) = self else { return };
        let mut next = std::mem::replace(&mut **inner, Tree::Leaf);
        // Each node is emptied before it is dropped.
        while let Tree::Node(inner) = &mut next {
            next = std::mem::replace(&mut **inner, Tree::Leaf);
        }
    }
}

#[offloadable]
fn build_tree(depth: u64) -> Tree {
    Tree::deep(depth as usize)
}

#[offloadable]
fn tree_depth(tree: Tree) -> u64 {
    tree.depth() as u64
}

/// Native code gone wrong: writes the reply to the worker's first call
/// itself, `bytes` as its result, on the channel (descriptor 4), and ends
/// the worker.
#[offloadable]
fn forge_first_reply(bytes: Vec<u8>) -> Tree {
    // length | kind DONE (3) | call 1 | the result's bytes
    let mut frame = vec![0u8; 4];
    frame.push(3);
    frame.extend_from_slice(&1u32.to_le_bytes());
    frame.extend_from_slice(&bytes);
    let length = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&length.to_le_bytes());
    let mut written = 0;
    while written < frame.len() {
        // SAFETY: writes a buffer of ours to a descriptor; the point is to
        // forge this worker's reply.
        let n = unsafe { libc::write(4, frame[written..].as_ptr().cast(), frame.len() - written) };
        assert!(n > 0);
        written += n as usize;
    }
    thread::sleep(Duration::from_secs(5));
    unreachable!("the parent reads the forged reply and replaces this worker")
}

#[test]
fn a_deep_result_within_the_limit_decodes_and_a_deeper_one_fails_its_call_alone() {
    common::watchdog(Duration::from_secs(60), || {
        #[yieldable]
        fn handle(depth: u64) -> Result<Tree, OffloadError> {
            try_offload!(build_tree, depth)
        }
        let cpu = Processes::new(1).unwrap();
        assert_eq!(handle(100).run_with(&cpu).unwrap().depth(), 100);
        // Legitimate, built fine by the worker, and deeper than the parent
        // decodes: the worker does not send it (nor overflow its stack
        // encoding it); the call fails; the parent and the worker live on.
        for depth in [129, 20_000, 200_000] {
            let error = handle(depth).run_with(&cpu).unwrap_err();
            assert_eq!(error.kind(), OffloadErrorKind::Protocol, "{error}");
            let text = error.to_string();
            assert!(
                text.contains("nested deeper than 128 levels")
                    && text.contains("ProcessesBuilder::max_depth")
                    && text.contains("it ran, but the worker could not encode its result"),
                "{text}"
            );
        }
        assert_eq!(cpu.restarts(), 0);
        // A limit of one's own.
        let cpu = Processes::builder()
            .workers(1)
            .max_depth(1000)
            .build()
            .unwrap();
        assert_eq!(handle(900).run_with(&cpu).unwrap().depth(), 900);
        let error = handle(1100).run_with(&cpu).unwrap_err();
        assert!(error.to_string().contains("1000 levels"), "{error}");
    });
}

#[test]
fn deep_arguments_are_not_sent_and_cost_no_stack() {
    common::watchdog(Duration::from_secs(60), || {
        #[yieldable]
        fn handle(tree: Tree) -> Result<u64, OffloadError> {
            try_offload!(tree_depth, tree)
        }
        let cpu = Processes::new(1).unwrap();
        assert_eq!(handle(Tree::deep(50)).run_with(&cpu).unwrap(), 50);
        // Deeper than the worker decodes: not sent, and no stack overflow
        // here encoding it, however deep.
        for depth in [129, 5_000, 200_000] {
            let error = handle(Tree::deep(depth)).run_with(&cpu).unwrap_err();
            assert_eq!(error.kind(), OffloadErrorKind::Protocol, "{error}");
            let text = error.to_string();
            assert!(
                text.contains("could not be encoded here, so it was not sent")
                    && text.contains("nested deeper than 128 levels")
                    && text.contains("ProcessesBuilder::max_depth"),
                "{text}"
            );
        }
        assert_eq!(cpu.restarts(), 0);
        assert_eq!(handle(Tree::deep(3)).run_with(&cpu).unwrap(), 3);
    });
}

#[test]
fn a_forged_reply_cannot_crash_or_hang_the_parent() {
    common::watchdog(Duration::from_secs(60), || {
        #[yieldable]
        fn handle(bytes: Vec<u8>) -> Result<Tree, OffloadError> {
            try_offload!(forge_first_reply, bytes)
        }
        let forgeries: [(&str, Vec<u8>, &str); 3] = [
            // A million levels of `Tree::Node`.
            (
                "a million levels",
                vec![1; 1_000_000],
                "nested deeper than 128 levels",
            ),
            // A `Tree` is no sequence; these are its variant index, claiming
            // 2^63: not a variant.
            ("a huge variant", vec![0xff; 9], "could not be decoded here"),
            // Trailing garbage after a valid `Leaf`.
            (
                "trailing bytes",
                vec![0, 7, 7],
                "bytes are left after the value",
            ),
        ];
        for (what, bytes, expected) in forgeries {
            let cpu = Processes::new(1).unwrap();
            let error = handle(bytes).run_with(&cpu).unwrap_err();
            assert_eq!(error.kind(), OffloadErrorKind::Protocol, "{what}: {error}");
            assert!(error.to_string().contains(expected), "{what}: {error}");
        }
    });
}

/// The result type of a function whose result claims 2^40 unit elements.
#[offloadable]
fn forge_units(bytes: Vec<u8>) -> Vec<()> {
    forge_first_reply(bytes);
    unreachable!()
}

#[test]
fn a_forged_count_of_empty_elements_fails_at_once() {
    common::watchdog(Duration::from_secs(60), || {
        #[yieldable]
        fn handle(bytes: Vec<u8>) -> Result<Vec<()>, OffloadError> {
            try_offload!(forge_units, bytes)
        }
        let cpu = Processes::new(1).unwrap();
        // postcard's varint of 2^40.
        let mut count = Vec::new();
        let mut n: u64 = 1 << 40;
        while n >= 0x80 {
            count.push((n as u8) | 0x80);
            n >>= 7;
        }
        count.push(n as u8);
        let error = handle(count).run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Protocol, "{error}");
        assert!(error.to_string().contains("sequence elements"), "{error}");
    });
}

// --- 7. each failure names its side and keeps its message -----------------

/// A value whose serde impls fail as the test says: `"panic"` panics,
/// `"refuse"` refuses with a message, `"ok"` goes through. Decoding reads
/// the word back and applies it again, in the process that decodes.
#[derive(Debug)]
struct Picky(String);

impl serde::Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_str() {
            "panic on encode" => panic!("Picky panicked while encoding"),
            "refuse to encode" => Err(serde::ser::Error::custom(
                "Picky cannot encode a closed handle",
            )),
            word => serializer.serialize_str(word),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Picky {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let word = String::deserialize(deserializer)?;
        match word.as_str() {
            "refuse to decode" => Err(serde::de::Error::custom("not an email: x@")),
            _ => Ok(Picky(word)),
        }
    }
}

/// Takes a `Picky` and returns one made of `word`.
#[offloadable]
fn picky(_argument: Picky, word: String) -> Picky {
    Picky(word)
}

#[yieldable]
fn try_picky(argument: Picky, word: String) -> Result<Picky, OffloadError> {
    try_offload!(picky, argument, word)
}

#[test]
fn each_failure_names_its_side_and_keeps_its_message() {
    common::watchdog(Duration::from_secs(60), || {
        let cpu = common::worker_processes(1).build().unwrap();
        let ok = || Picky("ok".into());
        let cases = [
            // In this process, before anything is sent.
            (
                Picky("panic on encode".into()),
                "ok",
                "encoding its arguments panicked here, so it was not sent: Picky panicked while encoding",
            ),
            (
                Picky("refuse to encode".into()),
                "ok",
                "could not be encoded here, so it was not sent: Picky cannot encode a closed handle",
            ),
            // In the worker, before the function runs.
            (
                Picky("refuse to decode".into()),
                "ok",
                "the worker could not decode its arguments, so it did not run: not an email: x@",
            ),
            // In the worker, after it ran.
            (
                ok(),
                "refuse to encode",
                "it ran, but the worker could not encode its result: Picky cannot encode a closed handle",
            ),
            // Back here.
            (
                ok(),
                "refuse to decode",
                "its result, sent by the worker, could not be decoded here: not an email: x@",
            ),
        ];
        for (argument, word, expected) in cases {
            let error =
                common::quietly(|| try_picky(argument, word.into()).run_with(&cpu)).unwrap_err();
            assert_eq!(error.kind(), OffloadErrorKind::Protocol, "{error}");
            let text = error.to_string();
            assert!(text.contains(expected), "expected {expected:?} in {text:?}");
            assert!(
                !text.contains("panicked: ") || expected.contains("panicked"),
                "{text}"
            );
            assert!(
                error.panic_message().is_none(),
                "not the work's panic: {text}"
            );
        }
        // A panic while encoding the result, in the worker, is the work's.
        let error = common::quietly(|| try_picky(ok(), "panic on encode".into()).run_with(&cpu))
            .unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Panicked, "{error}");
        assert_eq!(error.panic_message(), Some("Picky panicked while encoding"));
        // None of it cost the worker.
        assert_eq!(cpu.restarts(), 0);
        assert_eq!(
            try_picky(ok(), "fine".into()).run_with(&cpu).unwrap().0,
            "fine"
        );
    });
}

// --- 8. retries where they are safe ---------------------------------------

/// Dies (SIGKILL) the first `deaths` times it is called with `dir`, counting
/// its runs in files there; then returns how many runs it took.
fn die_then_succeed(dir: &str, deaths: u32) -> u32 {
    let runs = std::fs::read_dir(dir).unwrap().count() as u32 + 1;
    std::fs::write(Path::new(dir).join(runs.to_string()), b"").unwrap();
    if runs <= deaths {
        // SAFETY: `raise` has no memory effects; the point is to die.
        unsafe { libc::raise(libc::SIGKILL) };
    }
    runs
}

#[offloadable(idempotent)]
fn idempotent_flaky(dir: String, deaths: u32) -> u32 {
    die_then_succeed(&dir, deaths)
}

#[offloadable]
fn flaky(dir: String, deaths: u32) -> u32 {
    die_then_succeed(&dir, deaths)
}

#[yieldable]
fn try_idempotent_flaky(dir: String, deaths: u32) -> Result<u32, OffloadError> {
    try_offload!(idempotent_flaky, dir, deaths)
}

#[yieldable]
fn try_flaky(dir: String, deaths: u32) -> Result<u32, OffloadError> {
    try_offload!(flaky, dir, deaths)
}

#[test]
fn an_idempotent_call_whose_worker_died_runs_again_elsewhere() {
    common::watchdog(Duration::from_secs(60), || {
        let cpu = Processes::new(2).unwrap();
        // Two deaths, then a success on the third run (the default allows
        // two more runs).
        let dir = scratch("idempotent-ok");
        let runs = try_idempotent_flaky(dir.display().to_string(), 2)
            .run_with(&cpu)
            .unwrap();
        assert_eq!(runs, 3);
        assert_eq!(cpu.reruns(), 2);
        // Three deaths: past the bound, the call fails, saying so.
        let dir = scratch("idempotent-fails");
        let error = try_idempotent_flaky(dir.display().to_string(), 10)
            .run_with(&cpu)
            .unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::WorkerDied, "{error}");
        assert_eq!(error.runs(), Some(3));
        assert!(error.to_string().contains("it was run 3 times"), "{error}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
        // A bound of one's own.
        let cpu = Processes::builder()
            .workers(1)
            .max_retries(5)
            .build()
            .unwrap();
        let dir = scratch("idempotent-five");
        let runs = try_idempotent_flaky(dir.display().to_string(), 5)
            .run_with(&cpu)
            .unwrap();
        assert_eq!(runs, 6);
    });
}

#[test]
fn a_call_not_marked_idempotent_is_run_once() {
    common::watchdog(Duration::from_secs(60), || {
        let cpu = Processes::new(2).unwrap();
        let dir = scratch("once");
        let error = try_flaky(dir.display().to_string(), 1)
            .run_with(&cpu)
            .unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::WorkerDied, "{error}");
        assert_eq!(error.runs(), Some(1));
        assert!(!error.to_string().contains("it was run"), "{error}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        assert_eq!(cpu.reruns(), 0);
    });
}

#[test]
fn retries_stay_within_the_calls_deadline() {
    common::watchdog(Duration::from_secs(60), || {
        #[offloadable(idempotent)]
        fn slow_then_die(dir: String) -> u32 {
            // Counts its run as it starts; the first dies at 1.5 s, the
            // others would run for a minute.
            let run = std::fs::read_dir(&dir).unwrap().count() + 1;
            std::fs::write(Path::new(&dir).join(run.to_string()), b"").unwrap();
            if run > 1 {
                thread::sleep(Duration::from_secs(60));
                return 0;
            }
            thread::sleep(Duration::from_millis(1_500));
            // SAFETY: `raise` has no memory effects; the point is to die.
            unsafe { libc::raise(libc::SIGKILL) };
            unreachable!()
        }
        #[yieldable]
        fn handle(dir: String) -> Result<u32, OffloadError> {
            try_offload!(slow_then_die, dir)
        }
        // The first run dies after 1.5 s of a 4 s deadline: a second run
        // starts (time was left: 2.5 s to start a worker and send it the
        // call) and is killed at the deadline; no third.
        let cpu = Processes::builder()
            .workers(1)
            .deadline(Duration::from_secs(4))
            .max_retries(10)
            .build()
            .unwrap();
        let dir = scratch("deadline-retries");
        let error = handle(dir.display().to_string())
            .run_with(&cpu)
            .unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded, "{error}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "{error}");
        assert_eq!(cpu.reruns(), 1);
    });
}

// --- a program that restored SIGPIPE's default action ---------------------

#[test]
fn a_program_killed_by_sigpipe_survives_a_worker_dead_while_idle() {
    common::watchdog(Duration::from_secs(60), || {
        let output = entry("sigpipe_default_entry", SIGPIPE_ENV)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("sum: 5"),
            "{:?}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    });
}

const SIGPIPE_ENV: &str = "YTHREAD_TEST_SIGPIPE_DEFAULT";

/// In `a_program_killed_by_sigpipe_survives_a_worker_dead_while_idle`'s
/// process: `SIGPIPE` back to its default action (as command-line tools
/// do), a worker killed while idle, then a call, which writes to the dead
/// worker's pipe first. A no-op in the test run itself.
#[test]
#[ignore = "an entry point of the processes other tests start, not a test"]
fn sigpipe_default_entry() {
    if std::env::var_os(SIGPIPE_ENV).is_none() {
        return;
    }
    // SAFETY: sets a signal's action; no handler is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cpu = Processes::new(1).unwrap();
    kill(cpu.idle_pids()[0], libc::SIGKILL);
    println!("sum: {}", try_add(2, 3).run_with(&cpu).unwrap());
}

// --- how a worker's death is named, whatever the stack limit -------------

#[offloadable]
fn null_read() -> u64 {
    // A real invalid access (a `raise(SIGSEGV)` would be sent, not raised).
    let address = std::hint::black_box(16usize) as *const u64;
    // SAFETY: none: the point is to crash this worker process.
    unsafe { address.read_volatile() }
}

#[test]
fn a_segfault_is_no_stack_overflow_even_with_an_unlimited_stack() {
    common::watchdog(Duration::from_secs(60), || {
        let output = entry("unlimited_stack_entry", UNLIMITED_ENV)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("killed by SIGSEGV (segmentation fault)"),
            "{:?}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    });
}

const UNLIMITED_ENV: &str = "YTHREAD_TEST_UNLIMITED_STACK";

/// In `a_segfault_is_no_stack_overflow_even_with_an_unlimited_stack`'s
/// process: workers with no stack limit (`ulimit -s unlimited`), one of
/// which reads address 16. A no-op in the test run itself.
#[test]
#[ignore = "an entry point of the processes other tests start, not a test"]
fn unlimited_stack_entry() {
    if std::env::var_os(UNLIMITED_ENV).is_none() {
        return;
    }
    let unlimited = rustix::process::Rlimit {
        current: None,
        maximum: None,
    };
    rustix::process::setrlimit(rustix::process::Resource::Stack, unlimited).unwrap();
    #[yieldable]
    fn handle() -> Result<u64, OffloadError> {
        try_offload!(null_read)
    }
    let cpu = Processes::new(1).unwrap();
    println!("{}", handle().run_with(&cpu).unwrap_err());
}

// --- a forged worker ------------------------------------------------------

#[test]
fn a_process_that_leads_no_group_of_its_own_refuses_to_serve() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    common::watchdog(Duration::from_secs(60), || {
        // Everything a worker gets (the variable, the channel, the
        // parent-death signal) but its own process group: serving, it would
        // kill this test's group when its channel closes.
        let (calls_in, _calls_out) = std::io::pipe().unwrap();
        let (_replies_in, replies_out) = std::io::pipe().unwrap();
        let fds = [calls_in.as_raw_fd(), replies_out.as_raw_fd()];
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .env(
                "YTHREAD_WORKER",
                format!("3:65536:128:{}:load", std::process::id()),
            )
            .args(["--list"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: `fcntl` and `dup2` are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let moved = [
                    libc::fcntl(fds[0], libc::F_DUPFD_CLOEXEC, 10),
                    libc::fcntl(fds[1], libc::F_DUPFD_CLOEXEC, 10),
                ];
                if moved.contains(&-1)
                    || libc::dup2(moved[0], 3) == -1
                    || libc::dup2(moved[1], 4) == -1
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGRTMAX() as libc::c_ulong) == -1
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("does not lead a process group"), "{stderr}");
    });
}

#[test]
fn a_rerun_out_of_time_while_it_waits_costs_no_worker() {
    #[offloadable(idempotent)]
    fn die_at_1_s() -> u64 {
        thread::sleep(Duration::from_secs(1));
        // SAFETY: `raise` has no memory effects; the point is to die.
        unsafe { libc::raise(libc::SIGKILL) };
        unreachable!()
    }
    #[offloadable]
    fn sleep_then(ms: u64) -> u64 {
        thread::sleep(Duration::from_millis(ms));
        ms
    }
    #[yieldable]
    fn dies() -> Result<u64, OffloadError> {
        try_offload!(die_at_1_s)
    }
    #[yieldable]
    fn sleeps(ms: u64) -> Result<u64, OffloadError> {
        try_offload!(sleep_then, ms)
    }
    common::watchdog(Duration::from_secs(60), || {
        // One worker, a 1.6 s deadline. The idempotent call dies at 1 s;
        // a 1.2 s call that queued meanwhile takes the replacement; when it
        // is done, the rerun's deadline has passed: the call fails without
        // touching the worker it got.
        let cpu = Arc::new(
            Processes::builder()
                .workers(1)
                .deadline(Duration::from_millis(1_600))
                .build()
                .unwrap(),
        );
        let first = {
            let cpu = Arc::clone(&cpu);
            thread::spawn(move || dies().run_with(&*cpu))
        };
        common::eventually("the call that dies has the worker", || {
            cpu.idle_pids().is_empty()
        });
        assert_eq!(sleeps(1_200).run_with(&*cpu).unwrap(), 1_200);
        let error = first.join().unwrap().unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::WorkerDied, "{error}");
        assert_eq!(error.runs(), Some(1));
        assert_eq!(cpu.restarts(), 1, "only the worker that died is replaced");
        assert_eq!(sleeps(1).run_with(&*cpu).unwrap(), 1);
    });
}

// --- pools in workers, and calls that cannot cross ------------------------

/// Work that has worker processes of its own.
#[offloadable]
fn add_in_a_pool_of_its_own(a: u64, b: u64) -> (u32, u64) {
    let cpu = Processes::new(1).unwrap();
    let sum = try_add(a, b).run_with(&cpu).unwrap();
    (std::process::id(), sum)
}

#[test]
fn work_in_a_worker_can_start_workers_of_its_own() {
    common::watchdog(Duration::from_secs(60), || {
        #[yieldable]
        fn handle() -> (u32, u64) {
            ythread::offload!(add_in_a_pool_of_its_own, 40, 2)
        }
        let cpu = Processes::new(1).unwrap();
        let (worker, sum) = handle().run_with(&cpu);
        assert_eq!(sum, 42);
        assert_eq!(worker, cpu.idle_pids()[0]);
    });
}

#[test]
fn a_function_pointer_is_not_portable_and_says_why() {
    common::watchdog(Duration::from_secs(60), || {
        #[yieldable]
        fn handle() -> Result<u64, OffloadError> {
            let f: fn(u64, u64) -> u64 = add;
            try_offload!(f, 1, 2)
        }
        let cpu = Processes::new(1).unwrap();
        let error = handle().run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::NotPortable, "{error}");
        assert!(error.to_string().contains("function pointer"), "{error}");
        // Under threads it runs.
        assert_eq!(handle().run().unwrap(), 3);
    });
}

#[offloadable]
fn byte_count(data: String) -> usize {
    data.len()
}

#[test]
fn a_call_too_large_for_a_workers_memory_costs_two_workers_and_says_it_did_not_run() {
    common::watchdog(Duration::from_secs(120), || {
        #[yieldable]
        fn handle(data: String) -> Result<usize, OffloadError> {
            try_offload!(byte_count, data)
        }
        // The frame fits the maximum, not the worker's memory: each worker
        // it is sent to dies taking it in.
        let cpu = common::worker_processes(1)
            .memory_limit(256 << 20)
            .max_frame(1 << 30)
            .build()
            .unwrap();
        let error = handle("x".repeat(300 << 20)).run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::WorkerDied, "{error}");
        assert_eq!(error.runs(), Some(0), "{error}");
        let text = error.to_string();
        assert!(
            text.contains("died before they started it (it did not run), twice")
                && text.contains("out of memory"),
            "{text}"
        );
        assert_eq!(cpu.restarts(), 2);
        assert_eq!(handle("x".repeat(10)).run_with(&cpu).unwrap(), 10);
    });
}

// --- a worker that forks: its channel outlives it --------------------------

/// Forks a child that keeps the worker's channel open for 30 s, then, if
/// `crash`, segfaults; returns the child's pid otherwise.
#[offloadable]
fn fork_then(crash: bool) -> u32 {
    // SAFETY: the child only calls async-signal-safe functions (`sleep`,
    // `_exit`) before it ends.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: as above.
        unsafe {
            libc::sleep(30);
            libc::_exit(0);
        }
    }
    if crash {
        null_read();
    }
    child as u32
}

#[yieldable]
fn try_fork_then(crash: bool) -> Result<u32, OffloadError> {
    try_offload!(fork_then, crash)
}

#[test]
fn a_worker_whose_fork_holds_its_channel_is_seen_to_die() {
    common::watchdog(Duration::from_secs(60), || {
        let cpu = Processes::new(1).unwrap();
        // It dies running a call: the call fails at once, and what it
        // forked (in its group) ends too.
        let started = Instant::now();
        let error = try_fork_then(true).run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::WorkerDied, "{error}");
        assert_eq!(error.signal(), Some(libc::SIGSEGV));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        // It dies idle, after a call that forked: no call fails, and the
        // pool sees it.
        let fork = try_fork_then(false).run_with(&cpu).unwrap();
        let victim = cpu.idle_pids()[0];
        kill(victim, libc::SIGKILL);
        assert_eq!(try_add(1, 2).run_with(&cpu).unwrap(), 3);
        eventually("the dead worker is replaced", || {
            !cpu.idle_pids().contains(&victim) && cpu.idle_pids().len() == 1
        });
        assert_ends(fork, "what the dead worker forked");
    });
}

// --- a stderr nobody reads ------------------------------------------------

/// Prints `lines` lines of 1 KiB to stderr.
#[offloadable]
fn shout(lines: u32) -> u32 {
    let line = "y".repeat(1023);
    for _ in 0..lines {
        eprintln!("{line}");
    }
    lines
}

#[test]
fn a_stderr_nobody_reads_does_not_hold_the_workers() {
    common::watchdog(Duration::from_secs(60), || {
        // The entry's stderr: a pipe whose reader is kept open and never
        // read, so it fills (a stalled log consumer, a paused terminal).
        let (_unread, stderr) = std::io::pipe().unwrap();
        let output = entry("stalled_stderr_entry", STALLED_ENV)
            .stderr(stderr)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("shouted: 2048, 2048"),
            "{:?}\n{stdout}",
            output.status
        );
    });
}

const STALLED_ENV: &str = "YTHREAD_TEST_STALLED_STDERR";

/// In `a_stderr_nobody_reads_does_not_hold_the_workers`'s process: a worker
/// prints 2 MiB, twice, to a stderr that fills after 64 KiB, on which a
/// thread of the program is blocked already. A no-op in the test run
/// itself.
#[test]
#[ignore = "an entry point of the processes other tests start, not a test"]
fn stalled_stderr_entry() {
    if std::env::var_os(STALLED_ENV).is_none() {
        return;
    }
    #[yieldable]
    fn handle(lines: u32) -> Result<u32, OffloadError> {
        try_offload!(shout, lines)
    }
    // The program's own thread blocks in `eprintln!`, holding stderr's
    // lock, on the full pipe.
    thread::spawn(|| eprintln!("{}", "p".repeat(256 << 10)));
    thread::sleep(Duration::from_millis(100));
    let cpu = Processes::new(1).unwrap();
    let first = handle(2048).run_with(&cpu).unwrap();
    let second = handle(2048).run_with(&cpu).unwrap();
    println!("shouted: {first}, {second}");
}

// --- slow and interrupted starts -------------------------------------------

/// A worker program that is this test binary, started through a script
/// that writes its pid to `dir/<n>` for the n-th start, and sleeps `sleep`
/// seconds first on the second start only.
fn slow_second_start(dir: &Path, sleep: u32) -> PathBuf {
    let script = dir.join("worker.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=$(ls '{dir}' | grep -c '^[0-9]')\nn=$((n+1))\necho $$ > '{dir}/'$n\n\
             [ $n -eq 2 ] && sleep {sleep}\nexec '{exe}' \"$@\"\n",
            dir = dir.display(),
            exe = std::env::current_exe().unwrap().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

#[test]
fn dropping_the_strategy_does_not_wait_for_a_slow_start() {
    common::watchdog(Duration::from_secs(60), || {
        let dir = scratch("slow-start");
        let cpu = Processes::builder()
            .workers(1)
            .program(slow_second_start(&dir, 8))
            .build()
            .unwrap();
        // The replacement of a worker killed while idle takes 8 s to start.
        kill(cpu.idle_pids()[0], libc::SIGKILL);
        eventually("the replacement is starting", || dir.join("2").exists());
        let started = Instant::now();
        drop(cpu);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the drop took {:?}",
            started.elapsed()
        );
        assert_ends(read_pid(&dir.join("2")), "the worker that was starting");
    });
}

#[test]
fn a_start_killed_from_outside_fails_no_waiting_call() {
    common::watchdog(Duration::from_secs(60), || {
        let dir = scratch("killed-start");
        let cpu = Arc::new(
            Processes::builder()
                .workers(1)
                .program(slow_second_start(&dir, 2))
                .build()
                .unwrap(),
        );
        kill(cpu.idle_pids()[0], libc::SIGKILL);
        // A call waits for the replacement, which is killed as it starts:
        // the next start serves the call.
        let waiting = {
            let cpu = Arc::clone(&cpu);
            thread::spawn(move || try_add(20, 22).run_with(&*cpu))
        };
        kill(read_pid(&dir.join("2")), libc::SIGKILL);
        assert_eq!(waiting.join().unwrap().unwrap(), 42);
        assert!(dir.join("3").exists());
    });
}

#[test]
fn idle_workers_whose_forks_hold_their_channels_killed_together_fail_no_call() {
    common::watchdog(Duration::from_secs(60), || {
        for _ in 0..5 {
            let cpu = Arc::new(Processes::new(2).unwrap());
            // Both workers fork (in turn: two calls at once), and stay idle.
            let calls: Vec<_> = (0..2)
                .map(|_| {
                    let cpu = Arc::clone(&cpu);
                    thread::spawn(move || try_fork_then(false).run_with(&*cpu).unwrap())
                })
                .collect();
            let forks: Vec<u32> = calls.into_iter().map(|t| t.join().unwrap()).collect();
            for pid in cpu.idle_pids() {
                kill(pid, libc::SIGKILL);
            }
            // The call is sent (the forks hold the pipes), and both workers
            // turn out dead before they started it: it goes on to a third.
            assert_eq!(try_add(1, 2).run_with(&*cpu).unwrap(), 3);
            drop(cpu);
            for fork in forks {
                assert_ends(fork, "what a dead worker forked");
            }
        }
    });
}

// --- workers that serve a bounded number of calls -------------------------

/// Keeps `mib` MiB for good: a leak.
#[offloadable]
fn leak(mib: usize) -> u32 {
    let kept = vec![1u8; mib << 20];
    std::mem::forget(kept);
    std::process::id()
}

#[test]
fn max_calls_replaces_a_worker_after_its_calls() {
    #[yieldable]
    fn handle(mib: usize) -> Result<u32, OffloadError> {
        try_offload!(leak, mib)
    }
    common::watchdog(Duration::from_secs(60), || {
        // A fresh worker for every call.
        let cpu = Processes::builder()
            .workers(1)
            .max_calls(1)
            .build()
            .unwrap();
        let pids: Vec<u32> = (0..3).map(|_| handle(0).run_with(&cpu).unwrap()).collect();
        assert!(pids[0] != pids[1] && pids[1] != pids[2], "{pids:?}");
        assert_eq!(cpu.restarts(), 0, "a retired worker is no restart");
        // Work that leaks 100 MiB a call, under a 512 MiB limit: without a
        // bound, the fifth call or so dies; replaced every 2 calls, none.
        let leaky = common::worker_processes(1)
            .memory_limit(512 << 20)
            .build()
            .unwrap();
        let died = (0..8).find_map(|_| handle(100).run_with(&leaky).err());
        assert_eq!(died.map(|e| e.kind()), Some(OffloadErrorKind::WorkerDied));
        let recycled = common::worker_processes(1)
            .memory_limit(512 << 20)
            .max_calls(2)
            .build()
            .unwrap();
        let pids: Vec<u32> = (0..8)
            .map(|_| handle(100).run_with(&recycled).unwrap())
            .collect();
        let distinct: std::collections::BTreeSet<u32> = pids.iter().copied().collect();
        assert_eq!(distinct.len(), 4, "{pids:?}");
        // Retired workers are reaped.
        drop(recycled);
        for pid in distinct {
            assert_eq!(process_state(pid), None, "worker {pid} is reaped");
        }
    });
}

// --- a program that closed its stdio ---------------------------------------

#[test]
fn a_program_that_closed_its_stdio_keeps_its_workers() {
    common::watchdog(Duration::from_secs(60), || {
        let output = entry("closed_stdio_entry", CLOSED_STDIO_ENV)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(output.code(), Some(0), "{output:?}");
    });
}

const CLOSED_STDIO_ENV: &str = "YTHREAD_TEST_CLOSED_STDIO";

/// In `a_program_that_closed_its_stdio_keeps_its_workers`'s process: a
/// daemon-like program that closes its stdout and stderr, with a thread
/// that keeps logging to the closed stderr, while its idle workers are
/// killed and replaced, and calls go on. Exits 0 if every call succeeded,
/// 1 otherwise. A no-op in the test run itself.
#[test]
#[ignore = "an entry point of the processes other tests start, not a test"]
fn closed_stdio_entry() {
    if std::env::var_os(CLOSED_STDIO_ENV).is_none() {
        return;
    }
    // Its own watchdog: should it hang, it must not outlive the test that
    // started it (its logging thread spins).
    // SAFETY: `alarm` only schedules a signal, whose default action ends
    // the process.
    unsafe { libc::alarm(30) };
    // SAFETY: closes two descriptors this process owns and no Rust value
    // holds (std's stdout and stderr write through the numbers).
    unsafe {
        libc::close(1);
        libc::close(2);
    }
    let cpu = Processes::new(2).unwrap();
    thread::spawn(|| {
        loop {
            // SAFETY: writes a buffer of ours to descriptor 2, whatever it is.
            unsafe { libc::write(2, b"daemon log line\n".as_ptr().cast(), 16) };
        }
    });
    let mut failed = 0;
    for round in 0..20u64 {
        for pid in cpu.idle_pids() {
            kill(pid, libc::SIGKILL);
        }
        if try_add(round, 1).run_with(&cpu).ok() != Some(round + 1) {
            failed += 1;
        }
    }
    drop(cpu);
    std::process::exit(i32::from(failed > 0));
}
