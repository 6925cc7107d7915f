//! The checkout of idle worker processes: a call takes an idle one, or
//! waits in line for one, first come, first served; a worker process that
//! comes back goes straight to the call that has waited longest.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use rustix::event::{PollFd, PollFlags, Timespec};

use super::meters;
use super::process::Process;
use crate::sync::Mutex;
use crate::sync::gate::Gate;

/// What the driving threads and the supervisor share.
pub(super) struct Shared {
    /// Idle worker processes, and the calls waiting for one.
    pub(super) idle: Mutex<Idle>,
    /// Workers started and not known dead.
    pub(super) live: AtomicUsize,
    /// Why the last start failed, while the supervisor has not started one
    /// since.
    pub(super) start_error: Mutex<Option<String>>,
    /// Workers replaced after they died or were killed.
    pub(super) restarts: AtomicU64,
    /// Calls run again because their worker died running them.
    pub(super) reruns: AtomicU64,
    /// Calls made so far: the last one's number (`designation`).
    pub(super) calls: AtomicU64,
    /// Set when the strategy is dropped or shut down (or `build` fails):
    /// the supervisor starts no more workers.
    pub(super) stopping: AtomicBool,
    /// Closed by `shutdown`, which waits for the calls inside.
    pub(super) gate: Gate,
}

/// Worker processes not running a call, and the calls that wait for one,
/// first come, first served: a process coming back goes straight to the call
/// that has waited longest (a newly arrived call cannot take it first, which
/// would leave the longest waits unbounded under load).
#[derive(Default)]
pub(super) struct Idle {
    /// Worker processes that run no call.
    pub(super) processes: Vec<Process>,
    /// The calls waiting for one, longest waiting first: each takes its
    /// worker process from the other end of its channel.
    waiters: VecDeque<Sender<Process>>,
}

impl Shared {
    /// A worker process went live.
    pub(super) fn went_live(&self) {
        self.live.fetch_add(1, Ordering::AcqRel);
        meters::live(1);
    }

    /// A live worker process is gone (dead, killed, retired or stopped).
    pub(super) fn gone(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
        meters::live(-1);
    }

    /// Takes an idle worker process, or joins the queue of calls waiting for
    /// one.
    fn take_or_wait(&self) -> Result<Process, (Sender<Process>, Receiver<Process>)> {
        let mut idle = self.idle.lock();
        if idle.waiters.is_empty()
            && let Some(process) = idle.processes.pop()
        {
            return Ok(process);
        }
        let (give, take) = crossbeam_channel::bounded(1);
        idle.waiters.push_back(give.clone());
        Err((give, take))
    }

    /// A worker process is free: to the call that has waited longest, or
    /// idle.
    pub(super) fn give_back(&self, mut process: Process) {
        let mut idle = self.idle.lock();
        while let Some(waiter) = idle.waiters.pop_front() {
            match waiter.try_send(process) {
                Ok(()) => return,
                // A call that gave up waiting: the next one.
                Err(TrySendError::Full(back) | TrySendError::Disconnected(back)) => process = back,
            }
        }
        idle.processes.push(process);
    }

    /// Leaves the queue of waiting calls; returns a process handed over in
    /// the meantime, if any.
    fn stop_waiting(&self, give: &Sender<Process>, take: &Receiver<Process>) -> Option<Process> {
        let mut idle = self.idle.lock();
        idle.waiters.retain(|waiter| !waiter.same_channel(give));
        take.try_recv().ok()
    }

    /// Takes out the idle worker processes that died (or, which is as bad,
    /// spoke out of turn: an idle worker has nothing to say), for the
    /// supervisor to reap and replace. One `poll` of every idle worker's
    /// replies, without waiting.
    pub(super) fn take_dead_idle(&self) -> Vec<Process> {
        let mut idle = self.idle.lock();
        // Each worker's replies (a worker has nothing to say while idle),
        // and its end (a worker that forked may leave its channel open
        // behind it).
        let mut fds: Vec<_> = idle
            .processes
            .iter()
            .map(|process| PollFd::new(&process.replies, PollFlags::IN))
            .collect();
        let quiet = fds.is_empty()
            || !matches!(rustix::event::poll(&mut fds, Some(&Timespec::default())), Ok(n) if n > 0);
        let dead: Vec<bool> = idle
            .processes
            .iter()
            .zip(&fds)
            .map(|(process, fd)| (!quiet && !fd.revents().is_empty()) || process.exited().now())
            .collect();
        drop(fds);
        let mut index = 0;
        let (dead, alive) = std::mem::take(&mut idle.processes)
            .into_iter()
            .partition(|_| {
                index += 1;
                dead[index - 1]
            });
        idle.processes = alive;
        dead
    }

    /// Takes an idle worker process, waiting for one (first come, first
    /// served) if all are busy.
    pub(super) fn checkout(&self) -> Result<Process, String> {
        let (give, take) = match self.take_or_wait() {
            Ok(process) => return Ok(process),
            Err(queued) => queued,
        };
        loop {
            match take.recv_timeout(Duration::from_millis(20)) {
                Ok(process) => return Ok(process),
                Err(RecvTimeoutError::Disconnected) => unreachable!("`give` is held here"),
                Err(RecvTimeoutError::Timeout) => {
                    // With no worker process alive and the last start failed, waiting
                    // could be forever: fail the call, and let the supervisor
                    // keep trying (with back-off) for later ones.
                    if self.live.load(Ordering::Acquire) == 0
                        && let Some(why) = self.start_error.lock().clone()
                    {
                        return match self.stop_waiting(&give, &take) {
                            Some(process) => Ok(process),
                            None => Err(why),
                        };
                    }
                }
            }
        }
    }
}
