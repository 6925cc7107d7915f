//! How a process learns that it is a worker, and where it starts serving:
//! the setting its parent passes in `YTHREAD_WORKER`, and the two entry
//! points, [`init`](super::init) in `main` and the load-time entry that runs
//! before `main` (which is what makes test binaries work with no setup).

use std::sync::atomic::{AtomicBool, Ordering};

use super::child;
use super::frame::PROTOCOL;
use super::handoff::{Setting, Start, WORKER_ENV, parent_death_signal};

/// What `YTHREAD_WORKER` says of this process.
pub(crate) enum Role {
    /// Not a worker: the variable is unset, or it was meant for an
    /// ancestor (this process was started by the work of a worker).
    Program,
    Worker(Setting),
    /// A variable this build cannot read: set by a parent that speaks
    /// another protocol, or by hand.
    Unreadable(String),
}

/// Reads `YTHREAD_WORKER` (each caller: it is read at most a few times per
/// process).
pub(crate) fn role() -> Role {
    let Some(text) = std::env::var_os(WORKER_ENV) else {
        return Role::Program;
    };
    // A set-user-id (or capability) program takes no orders from its
    // environment: whoever set the variable could make it run calls.
    // SAFETY: `getauxval` reads the auxiliary vector the loader was given.
    if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
        return Role::Program;
    }
    let text = text.to_string_lossy();
    let parent = rustix::process::getppid().map_or(0, |pid| pid.as_raw_nonzero().get() as u32);
    match Setting::parse(&text) {
        // Its parent started it as a worker (with the parent-death signal,
        // which `fork` clears: a process the work started and that became
        // the parent's, adopted by it as a subreaper, has none).
        Some(setting) if setting.parent == parent && has_parent_death_signal() => {
            Role::Worker(setting)
        }
        Some(_) => Role::Program,
        None => Role::Unreadable(format!(
            "this process was started as a ythread worker ({WORKER_ENV}={text}) by a parent \
             speaking another protocol than {PROTOCOL} (another build of the program?)"
        )),
    }
}

/// Whether this process gets [`parent_death_signal`] when its parent dies,
/// as a worker's parent asks for it.
fn has_parent_death_signal() -> bool {
    let mut signal: libc::c_int = 0;
    // SAFETY: `PR_GET_PDEATHSIG` writes one `int` where it is told.
    let asked = unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut signal as *mut libc::c_int) };
    asked == 0 && signal == parent_death_signal()
}

/// Set once a process serves as a worker: its channel has one owner.
static SERVING: AtomicBool = AtomicBool::new(false);

/// Set when the program's main thread calls `init` outside a worker: its
/// workers then start serving at `init` too ([`Start::Main`]).
static INIT_IN_MAIN: AtomicBool = AtomicBool::new(false);

/// Set once this process has built a `Processes`: an `init` after that
/// comes too late for its workers.
static BUILT: AtomicBool = AtomicBool::new(false);

/// Whether this process may start workers: not a worker that has yet to
/// serve (its `main` reached `build` before `init`, and its workers would
/// do the same, without end). A worker that serves may: its work starts
/// workers of its own.
pub(crate) fn may_start_workers() -> bool {
    !matches!(role(), Role::Worker(_)) || SERVING.load(Ordering::Acquire)
}

/// How the workers of this process start: at `init` if its main thread
/// called it, before `main` otherwise. (Called by `build`.)
pub(crate) fn start_of_workers() -> Start {
    BUILT.store(true, Ordering::Release);
    if INIT_IN_MAIN.load(Ordering::Acquire) {
        Start::Main
    } else {
        Start::Load
    }
}

/// [`init_with`](super::init_with).
pub(crate) fn init_with(setup: impl FnOnce()) {
    match role() {
        Role::Program => {
            // Only `main`'s own call counts: a test harness runs each test
            // on a thread named after the test, and a test that calls
            // `init` must not make the workers run the harness.
            if std::thread::current().name() == Some("main") {
                INIT_IN_MAIN.store(true, Ordering::Release);
                if BUILT.load(Ordering::Acquire) {
                    eprintln!(
                        "ythread: `init` was called after a `Processes` was built: the \
                         workers started before serve before `main`, and run no setup; call \
                         `ythread::processes::init` (or `init_with`) first thing in `main`"
                    );
                }
            }
            setup();
        }
        Role::Worker(setting) => {
            if !SERVING.load(Ordering::Acquire) {
                setup();
            }
            serve(setting);
        }
        Role::Unreadable(why) => {
            eprintln!("ythread: {why}; exiting");
            std::process::exit(2);
        }
    }
}

/// Serves as a worker and ends the process; returns at once if this
/// process serves already (a second caller).
fn serve(setting: Setting) {
    if SERVING.swap(true, Ordering::AcqRel) {
        return;
    }
    let code = child::serve(setting);
    std::process::exit(code);
}

/// The load-time entry: a worker whose parent asked for [`Start::Load`]
/// serves from here, before `main` (and before a test harness) runs.
extern "C" fn serve_at_load() {
    // (A variable that cannot be read is left to `init`, which explains.)
    if let Role::Worker(setting) = role()
        && setting.start == Start::Load
    {
        serve(setting);
    }
}

// The dynamic loader calls every function in `.init_array` before `main`
// (ELF; `Processes` is Linux-only). `#[used]` keeps the entry in every
// binary that links ythread, as linkme's registrations are kept.
//
// SAFETY: the section holds pointers to functions of the C ABI, which the
// loader calls with `(argc, argv, envp)`; `serve_at_load` takes no argument,
// which that ABI allows, and it returns normally unless the process is a
// worker (then it exits). It touches no state another initialiser could be
// setting up: it reads the environment and, in a worker, std's I/O, which
// needs no initialisation.
#[used]
#[unsafe(link_section = ".init_array")]
static SERVE_AT_LOAD: extern "C" fn() = serve_at_load;
