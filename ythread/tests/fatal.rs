//! What ends the process, tested in a child process: each test re-runs this
//! test binary on itself with `YTHREAD_FATAL_CASE` set, so that the case's
//! body runs in the child, and checks how the child died and what it printed.

use std::panic;
use std::process::{Command, Output};

use ythread::{GeneratorState, Pool, Yieldable, YieldableThread, offload, yieldable};

/// In the parent, runs the test named `name` again in a child process and
/// returns its output; in that child, runs `case`, which must end the
/// process.
fn in_child(name: &str, case: fn()) -> Output {
    in_child_with_env(name, case, &[])
}

/// [`in_child`], with more environment variables for the child.
fn in_child_with_env(name: &str, case: fn(), env: &[(&str, &str)]) -> Output {
    if std::env::var_os("YTHREAD_FATAL_CASE").is_some_and(|case| case == name) {
        case();
        // The case must end the process; reaching here fails the child.
        panic!("the case returned");
    }
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("YTHREAD_FATAL_CASE", name)
        .envs(env.iter().copied())
        .output()
        .expect("the test binary runs")
}

/// The child's stderr, and the signal that ended it.
fn died(output: &Output) -> (String, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (stderr, output.status.signal())
}

const SIGABRT: i32 = 6;

#[yieldable]
fn retries_forever() -> u64 {
    loop {
        if let Ok(value) = panic::catch_unwind(|| offload!(|| 7)) {
            return value;
        }
    }
}

#[test]
fn a_handler_that_keeps_catching_the_drop_and_offloading_is_aborted_with_a_message() {
    let output = in_child(
        "a_handler_that_keeps_catching_the_drop_and_offloading_is_aborted_with_a_message",
        || {
            let mut generator = retries_forever().start();
            // Suspended at its first `offload!`, its job left unrun.
            assert!(matches!(generator.resume(), GeneratorState::Yielded(_)));
            drop(generator);
        },
    );
    let (stderr, signal) = died(&output);
    assert_eq!(signal, Some(SIGABRT), "{stderr}");
    assert!(
        stderr.contains("retries_forever"),
        "names the handler: {stderr}"
    );
    assert!(
        stderr.contains("caught the unwind that drops it and offloaded again 16 times"),
        "{stderr}"
    );
    assert!(stderr.contains("try_offload!"), "says what to do: {stderr}");
}

/// Recurses through frames of about 512 bytes, forever unless the stack ends.
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([1u8; 512]);
    std::hint::black_box(recurse(depth + 1) + u64::from(frame[3]) + depth)
}

#[yieldable]
fn recurses_forever() -> u64 {
    let start = offload!(|| 0);
    recurse(start)
}

fn assert_overflow_reported(output: &Output, bytes: usize) {
    let (stderr, signal) = died(output);
    assert_eq!(signal, Some(SIGABRT), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the handler `fatal::recurses_forever` has overflowed its coroutine stack of \
             {bytes} bytes"
        )),
        "says what overflowed: {stderr}"
    );
    assert!(
        stderr.contains("Yieldable::with_stack_size")
            && stderr.contains("YieldableThread::coroutine_stack_size"),
        "names the settings: {stderr}"
    );
}

#[test]
fn overflowing_a_handler_s_stack_run_here_is_reported() {
    let output = in_child("overflowing_a_handler_s_stack_run_here_is_reported", || {
        recurses_forever().run();
    });
    assert_overflow_reported(&output, 2 * 1024 * 1024);
}

#[test]
fn overflowing_a_chosen_stack_size_on_a_yieldable_thread_is_reported() {
    let output = in_child(
        "overflowing_a_chosen_stack_size_on_a_yieldable_thread_is_reported",
        || {
            let thread = YieldableThread::new()
                .apply(Pool::new(1))
                .spawn(recurses_forever().with_stack_size(64 * 1024))
                .unwrap();
            let _ = thread.join();
        },
    );
    assert_overflow_reported(&output, 64 * 1024);
}

#[test]
fn overflowing_a_started_generator_is_reported() {
    let output = in_child("overflowing_a_started_generator_is_reported", || {
        let mut generator = recurses_forever().with_stack_size(128 * 1024).start();
        loop {
            match generator.resume() {
                GeneratorState::Yielded(job) => job.run(),
                GeneratorState::Complete(_) => return,
            }
        }
    });
    assert_overflow_reported(&output, 128 * 1024);
}

#[test]
fn the_default_size_follows_rust_min_stack_as_std_s_does() {
    let output = in_child_with_env(
        "the_default_size_follows_rust_min_stack_as_std_s_does",
        || {
            recurses_forever().run();
        },
        &[("RUST_MIN_STACK", "131072")],
    );
    assert_overflow_reported(&output, 131072);
}

#[test]
fn a_std_thread_s_overflow_is_still_reported_by_std() {
    let output = in_child("a_std_thread_s_overflow_is_still_reported_by_std", || {
        // A coroutine has run on this process (the handler is installed).
        assert_eq!(recurses_forever_not().run(), 1);
        let _ = std::thread::Builder::new()
            .name("plain".into())
            .spawn(|| recurse(0))
            .unwrap()
            .join();
    });
    let (stderr, signal) = died(&output);
    assert_eq!(signal, Some(SIGABRT), "{stderr}");
    assert!(
        stderr.contains("thread 'plain'") && stderr.contains("has overflowed its stack"),
        "{stderr}"
    );
    assert!(!stderr.contains("ythread"), "{stderr}");
}

#[yieldable]
fn recurses_forever_not() -> u64 {
    offload!(|| 1)
}

#[test]
fn other_faults_in_a_handler_keep_their_default_action() {
    let output = in_child(
        "other_faults_in_a_handler_keep_their_default_action",
        || {
            #[yieldable]
            fn writes_to_null() -> u64 {
                offload!(|| 0);
                let null = std::hint::black_box(std::ptr::null_mut::<u64>());
                // SAFETY: not safe at all: the point is the fault it causes.
                unsafe { null.write_volatile(1) };
                1
            }
            writes_to_null().run();
        },
    );
    let (stderr, signal) = died(&output);
    assert_eq!(signal, Some(SIGSEGV), "{stderr}");
    assert!(!stderr.contains("overflow"), "{stderr}");
}

const SIGSEGV: i32 = 11;
