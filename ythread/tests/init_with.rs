//! A program that calls `init_with` first thing in `main` (this test has no
//! harness: its `main` is a program's): its workers serve at `init_with`,
//! after running the setup, and never run the code after it; what they
//! print reaches this process's stderr labelled.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use ythread::{Processes, Yieldable, offload, offloadable, yieldable};

/// Set by the setup, in every process that ran it.
static SET_UP: AtomicBool = AtomicBool::new(false);

#[offloadable]
fn was_set_up() -> (u32, bool) {
    (std::process::id(), SET_UP.load(Ordering::Relaxed))
}

#[offloadable]
fn say(line: String) {
    eprintln!("{line}");
}

#[yieldable]
fn ask() -> (u32, bool) {
    offload!(was_set_up)
}

#[yieldable]
fn speak(line: String) {
    offload!(say, line)
}

fn main() {
    ythread::processes::init_with(|| SET_UP.store(true, Ordering::Relaxed));
    assert!(
        SET_UP.load(Ordering::Relaxed),
        "the setup runs in the program too"
    );
    if std::env::args().any(|arg| arg == "--speak") {
        // The child run below: a worker prints; this process's stderr (a
        // pipe the test reads) gets it labelled.
        let cpu = Processes::new(1).unwrap();
        speak("hello from the work \u{1b}[2J".into()).run_with(&cpu);
        return;
    }
    let cpu = Processes::new(2).unwrap();
    let (pid, set_up) = ask().run_with(&cpu);
    assert_ne!(pid, std::process::id(), "the call ran in a worker");
    assert!(set_up, "the setup ran in the worker before it served");

    let output = Command::new(std::env::current_exe().unwrap())
        .arg("--speak")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|line| line.contains("hello from the work"))
        .unwrap_or_else(|| panic!("the worker's line was not relayed: {stderr}"));
    assert!(
        line.starts_with("[ythread worker 1 pid ")
            && line.contains(" init_with::say call 1] hello"),
        "{line}"
    );
    assert!(
        line.ends_with("hello from the work \\x1b[2J"),
        "escaped: {line}"
    );
    println!("init_with: ok");
}
