//! Where a thread woken with a permit runs: on the core the releasing
//! thread is about to free.
//!
//! When a permit holder of `Bounded` or `Exclusive` releases its permit, it
//! hands it to a parked waiter and wakes it. At that moment no core is idle
//! (the releaser still runs on one, other permit holders on the rest), so
//! Linux queues the woken thread on a busy core: often the one where it last
//! ran, behind another permit holder's work, which it may even preempt. The
//! releaser's core then goes idle, and stays idle for milliseconds: the
//! scheduler does not pull a task that just ran (it is "cache hot") onto a
//! newly idle core. Measured on the 2-core VM (`benches/busy.rs`): the cores
//! were 75-82% busy under `Bounded(2)` against 97-99% under `Pool(2)`.
//!
//! So the releaser restricts the waiter, for one wake-up, to the core the
//! releaser runs on, then wakes it: the waiter is queued there, where the
//! releaser is about to block or to do only a little I/O, and the core goes
//! from one permit holder's work to the next one's without idling. Once
//! running, the waiter puts its own set of allowed cores back.
//!
//! A handshake keeps this safe against a waiter that is already running (it
//! spun, or woke spuriously): the releaser only restricts a waiter that has
//! not yet claimed its wake-up, and a waiter that finds itself being
//! restricted waits until that is done before it undoes it. So the
//! restriction never outlives the wake-up.
//!
//! Under loom the handshake runs without the system calls, so that the
//! model checker explores it.

use super::loom::{AtomicU8, Ordering};

/// The waiter has not started running with its permit.
const WAITING: u8 = 0;
/// The releaser is restricting the waiter to its core.
const STEERING: u8 = 1;
/// The waiter is restricted to the releaser's core until it undoes it.
const STEERED: u8 = 2;
/// The waiter runs: no releaser may steer it any more.
const RUNNING: u8 = 3;

/// One waiter's wake-up, as the releasing thread may steer it.
pub(crate) struct Steer {
    /// `WAITING`, then `STEERING` and `STEERED` (by the releaser), then
    /// `RUNNING` (by the waiter); or `WAITING` straight to `RUNNING`.
    state: AtomicU8,
    /// The waiting thread and the cores it may run on, captured when it
    /// queued; `None` where steering is not possible.
    target: Option<imp::Target>,
}

impl Steer {
    /// The current thread, about to wait for a permit.
    pub(crate) fn current() -> Self {
        Steer {
            state: AtomicU8::new(WAITING),
            target: imp::Target::current(),
        }
    }

    /// The releaser's side, after granting the permit and before waking the
    /// waiter: restricts the waiter to this core, unless it runs already.
    pub(crate) fn to_this_core(&self) {
        let Some(target) = &self.target else {
            return;
        };
        let Some(core) = target.allows_this_core() else {
            return;
        };
        if self
            .state
            .compare_exchange(WAITING, STEERING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // The waiter is running already: nothing to steer.
            return;
        }
        target.restrict_to(core);
        self.state.store(STEERED, Ordering::Release);
    }

    /// The waiter's side, once it has its permit: claims its wake-up, and
    /// undoes a restriction a releaser made (waiting for one being made).
    pub(crate) fn running(&self) {
        let Err(mut state) =
            self.state
                .compare_exchange(WAITING, RUNNING, Ordering::AcqRel, Ordering::Acquire)
        else {
            // Not steered, and now no releaser will.
            return;
        };
        while state == STEERING {
            // The releaser is between its two steps, a system call apart.
            // (Only a load: writing here would hide its `STEERED`.)
            super::loom::thread::yield_now();
            state = self.state.load(Ordering::Acquire);
        }
        debug_assert_eq!(state, STEERED);
        if let Some(target) = &self.target {
            target.restore();
        }
        self.state.store(RUNNING, Ordering::Release);
    }
}

#[cfg(not(loom))]
mod imp {
    use rustix::process::Pid;
    use rustix::thread::{CpuSet, gettid, sched_getaffinity, sched_setaffinity};

    /// A thread, and the cores it was allowed to run on when it queued.
    pub(super) struct Target {
        thread: Pid,
        pub(super) allowed: CpuSet,
    }

    impl Target {
        pub(super) fn current() -> Option<Self> {
            let allowed = sched_getaffinity(None).ok()?;
            Some(Target {
                thread: gettid(),
                allowed,
            })
        }

        /// The core the calling thread runs on, if the target may run there
        /// and may run elsewhere too (a thread pinned to one core stays).
        pub(super) fn allows_this_core(&self) -> Option<usize> {
            // glibc's, not rustix's `sched_getcpu`: rustix finds the vDSO by
            // parsing the ELF image the auxiliary vector points at, which
            // valgrind does not map, and the first call crashed every test
            // under `scripts/valgrind` (SIGSEGV in `check_elf_base`).
            // SAFETY: `sched_getcpu` takes no arguments and has no
            // preconditions; it returns a core number, or -1 on error.
            let core = usize::try_from(unsafe { libc::sched_getcpu() }).ok()?;
            (core < CpuSet::MAX_CPU && self.allowed.is_set(core) && self.allowed.count() > 1)
                .then_some(core)
        }

        pub(super) fn restrict_to(&self, core: usize) {
            let mut only = CpuSet::new();
            only.set(core);
            // If it fails (the thread's cores changed meanwhile), the waiter
            // is woken where the scheduler likes: as without steering.
            let _ = sched_setaffinity(Some(self.thread), &only);
        }

        /// Called on the target thread itself.
        pub(super) fn restore(&self) {
            let _ = sched_setaffinity(None, &self.allowed);
        }
    }
}

/// Under loom: a target that is always there, so that the model checker
/// explores the handshake; instead of the system calls, it records whether
/// the waiter is restricted.
#[cfg(loom)]
mod imp {
    use super::super::loom::{AtomicBool, Ordering};

    pub(super) struct Target {
        pub(super) restricted: AtomicBool,
    }

    impl Target {
        pub(super) fn current() -> Option<Self> {
            Some(Target {
                restricted: AtomicBool::new(false),
            })
        }

        pub(super) fn allows_this_core(&self) -> Option<usize> {
            Some(0)
        }

        pub(super) fn restrict_to(&self, _core: usize) {
            self.restricted.store(true, Ordering::SeqCst);
        }

        pub(super) fn restore(&self) {
            self.restricted.store(false, Ordering::SeqCst);
        }
    }
}

/// The cores the calling thread may run on, for the tests of steering
/// (here and in `semaphore.rs`).
#[cfg(all(test, not(loom)))]
pub(super) fn cores_of_this_thread() -> Vec<usize> {
    use rustix::thread::{CpuSet, sched_getaffinity};
    let set = sched_getaffinity(None).unwrap();
    (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use rustix::thread::{CpuSet, sched_setaffinity};
    use std::thread;

    /// A thread its owner pinned to one core stays pinned: steering never
    /// changes a thread that may run on one core only.
    #[test]
    fn a_thread_pinned_to_one_core_is_not_steered() {
        let steer = thread::spawn(|| {
            let mut one = CpuSet::new();
            one.set(cores_of_this_thread()[0]);
            sched_setaffinity(None, &one).unwrap();
            Steer::current()
        })
        .join()
        .unwrap();
        let target = steer.target.as_ref().unwrap();
        assert_eq!(target.allows_this_core(), None);
    }

    /// The handshake: a waiter that runs before its releaser steers it is
    /// never steered; one steered first undoes it when it runs.
    #[test]
    fn only_a_waiter_not_yet_running_is_steered() {
        let early = Steer::current();
        early.running();
        early.to_this_core();
        assert_eq!(early.state.load(Ordering::Acquire), RUNNING);

        let late = Steer::current();
        if late.target.as_ref().unwrap().allows_this_core().is_some() {
            late.to_this_core();
            assert_eq!(late.state.load(Ordering::Acquire), STEERED);
            // Steered to the core this thread runs on: restricted now.
            assert_eq!(cores_of_this_thread().len(), 1);
        }
        late.running();
        assert_eq!(late.state.load(Ordering::Acquire), RUNNING);
        assert_eq!(cores_of_this_thread(), {
            let set = late.target.as_ref().unwrap().allowed;
            (0..CpuSet::MAX_CPU)
                .filter(|&c| set.is_set(c))
                .collect::<Vec<_>>()
        });
    }
}

/// The handshake, model-checked: whichever of the releaser's steering and
/// the waiter's start comes first, the waiter ends unrestricted. Run by
/// `scripts/loom`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    #[test]
    fn a_restriction_never_outlives_the_wake_up() {
        loom::model(|| {
            let steer = Arc::new(Steer::current());
            let releaser = {
                let steer = Arc::clone(&steer);
                thread::spawn(move || steer.to_this_core())
            };
            steer.running();
            let restricted = |steer: &Steer| {
                let target = steer.target.as_ref().unwrap();
                target.restricted.load(Ordering::SeqCst)
            };
            // Once running, the waiter is never restricted...
            assert!(!restricted(&steer));
            releaser.join().unwrap();
            // ...not even by a releaser that comes late.
            assert!(!restricted(&steer));
        });
    }
}
