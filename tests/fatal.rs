//! What ends the process, tested in a child process: each test re-runs this
//! test binary on itself with `YTHREAD_FATAL_CASE` set, so that the case's
//! body runs in the child, and checks how the child died and what it printed.

use std::panic;
use std::process::{Command, Output};

use ythread::{GeneratorState, Yieldable, offload, yieldable};

/// In the parent, runs the test named `name` again in a child process and
/// returns its output; in that child, runs `case`, which must end the
/// process.
fn in_child(name: &str, case: fn()) -> Output {
    if std::env::var_os("YTHREAD_FATAL_CASE").is_some_and(|case| case == name) {
        case();
        // The case must end the process; reaching here fails the child.
        panic!("the case returned");
    }
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("YTHREAD_FATAL_CASE", name)
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
