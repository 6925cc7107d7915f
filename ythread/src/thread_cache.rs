//! `ThreadCache`: OS threads kept after their handler returns, to run the
//! next one, so that a thread-per-connection server pays for a thread once,
//! not once per connection.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::{self, JoinHandle, Thread, ThreadId};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::apply::Apply;
use crate::coroutine::default_stack_size;
use crate::handler::Yieldable;
use crate::sync::semaphore::forget_held_here;

/// How long an idle thread waits for a handler before it exits, unless
/// [`ThreadCacheBuilder::keep_alive`] says otherwise: tokio's blocking pool's
/// default.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Keeps the OS threads that ran handlers once they return, and runs the
/// next handler on one of them instead of on a new thread; Java's *cached
/// thread pool*, for [`YieldableThread`](crate::YieldableThread)s.
///
/// Creating an OS thread costs tens of microseconds (its stack mapped, its
/// guard page, `clone`, and its exit); a server that starts one per
/// connection pays that on every connection, where an async server pays for
/// a task. [`spawn`](ThreadCache::spawn) hands the handler to a thread that
/// has finished its last one and waits, the one that finished last (its
/// caches are the warmest); only when none waits does it start a new
/// thread. So the server keeps its straight-line handlers and one thread
/// per connection in flight, and pays for threads only as the number of
/// connections in flight grows.
///
/// A thread waits [`DEFAULT_KEEP_ALIVE`] for its next handler, then exits;
/// at most [`max_idle`](ThreadCacheBuilder::max_idle) threads wait at once.
/// Clones share the threads. Once the last clone is dropped, idle threads
/// exit at once and busy ones once their handler returns.
///
/// # What a reused thread means
///
/// A handler may find the thread it runs on used before, which code written
/// for a fresh thread may not expect:
///
/// - **Thread-locals** keep the values the previous handlers on this thread
///   left in them, and their destructors run when the thread exits, not when
///   a handler returns. Keep per-request state in the handler's locals, not
///   in thread-locals (or reset it when the handler starts). ythread's own
///   per-thread state is back to empty before the next handler: the running
///   handler, and the permits of `Bounded` its work holds (even those of a
///   suspended handler it leaked with `mem::forget`: the permit stays
///   taken, but the next handler's work does not run under it).
/// - **A panic** in a handler is caught on its thread and returned by
///   [`CachedJoinHandle::join`], as a std thread's is; the panic hook runs
///   (and prints) first, as for a std thread. The thread then takes the next
///   handler.
/// - **The thread's name and stack size** are the cache's, set once with
///   [`ThreadCacheBuilder`]: a handler cannot rename its thread for itself.
///
/// # Example
///
/// ```
/// use ythread::{Pool, ThreadCache, offload, yieldable};
///
/// fn sumn(n: u64) -> u64 { (1..=n).sum() }
///
/// #[yieldable]
/// fn handle(n: u64) -> u64 {
///     offload!(sumn, n)
/// }
///
/// let threads = ThreadCache::builder().name("handler".into()).build();
/// let pool = Pool::new(2);
/// for n in 1..=3 {
///     // After the first, each handler runs on the thread the last one used.
///     let handle = threads.spawn(pool.clone(), handle(n * 100))?;
///     assert_eq!(handle.join().unwrap(), (1..=n * 100).sum::<u64>());
/// }
/// assert_eq!(threads.threads(), 1);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct ThreadCache {
    shared: Arc<Shared>,
    /// Dropped with the last clone: then the idle threads exit.
    _owner: Arc<Owner>,
}

/// Builds a [`ThreadCache`]: the settings of its threads, and how long and
/// how many of them wait for the next handler.
#[derive(Debug, Clone)]
#[must_use = "call `build` to get the cache"]
pub struct ThreadCacheBuilder {
    settings: Settings,
}

/// Waits for a handler spawned on a [`ThreadCache`] and takes its result:
/// [`std::thread::JoinHandle`]'s counterpart for a thread that outlives its
/// handler.
///
/// Dropping it detaches the handler, which runs on; its result is dropped
/// when it comes, on the handler's thread, before that thread takes another
/// handler. A panic in that drop is reported by the panic hook and goes no
/// further: the thread stays in the cache (std's would abort the process).
pub struct CachedJoinHandle<T> {
    packet: Arc<Packet<T>>,
    thread: Thread,
}

#[derive(Debug, Clone)]
struct Settings {
    name: Option<String>,
    stack_size: Option<usize>,
    coroutine_stack_size: Option<usize>,
    keep_alive: Duration,
    max_idle: usize,
}

/// What the cache and its threads share.
struct Shared {
    settings: Settings,
    state: Mutex<State>,
    /// Signalled when a thread exits.
    exited: Condvar,
}

struct State {
    /// The threads waiting for a handler, the one that became idle last at
    /// the end.
    idle: Vec<Arc<Slot>>,
    /// Threads started and not yet exited.
    threads: usize,
    /// The last clone was dropped, or `shutdown` called: no thread waits
    /// for another handler.
    closed: bool,
    /// The threads started and not joined yet, by id, so that `shutdown`
    /// can wait until they have exited (their thread-locals destroyed).
    handles: HashMap<ThreadId, JoinHandle<()>>,
    /// Threads that have left the cache; their handles are dropped (they
    /// are finished) when the next thread starts.
    exited: Vec<ThreadId>,
    /// The cache's own threads waiting in `shutdown` (from a handler), which
    /// a `shutdown` must not wait for.
    shutting_down_here: usize,
}

/// Where an idle thread waits for its next handler.
struct Slot {
    next: Mutex<Next>,
    wake: Condvar,
    thread: Thread,
}

enum Next {
    Wait,
    Run(Task),
    Exit,
}

/// Runs a handler; returns what hands its result to its join handle.
type Task = Box<dyn FnOnce() -> Publish + Send>;

/// Hands a handler's result to its join handle; returns it instead if the
/// handle is gone, for the thread to drop.
type Publish = Box<dyn FnOnce() -> Option<Leftover> + Send>;

/// A result nobody will take, kept only to be dropped.
type Leftover = Box<dyn Send>;

struct Owner(Arc<Shared>);

/// Where a handler's result waits for [`CachedJoinHandle::join`].
struct Packet<T> {
    state: Mutex<Delivery<T>>,
    done: Condvar,
}

struct Delivery<T> {
    result: Option<thread::Result<T>>,
    /// The join handle was dropped: nobody will take the result.
    detached: bool,
}

impl ThreadCache {
    /// A cache with the default settings: threads named as std names them
    /// (not at all), std's stack size, waiting [`DEFAULT_KEEP_ALIVE`], any
    /// number of them.
    pub fn new() -> ThreadCache {
        ThreadCache::builder().build()
    }

    /// A builder, to name the threads or set their stack sizes, how long
    /// they wait and how many wait at once.
    pub fn builder() -> ThreadCacheBuilder {
        ThreadCacheBuilder {
            settings: Settings {
                name: None,
                stack_size: None,
                coroutine_stack_size: None,
                keep_alive: DEFAULT_KEEP_ALIVE,
                max_idle: usize::MAX,
            },
        }
    }

    /// Runs `handler` to completion on a thread of the cache, handing its
    /// offloaded work to `apply`, as
    /// [`YieldableThread::apply(apply).spawn(handler)`](crate::YieldableThread::spawn)
    /// does on a new thread: on the idle thread that finished last, or on a
    /// new thread if none is idle.
    ///
    /// The handler's coroutine is created on that thread and never leaves
    /// it, as with [`YieldableThread`](crate::YieldableThread). `handler` is
    /// the call of a `#[yieldable]` function, `handle(stream)`, or a plain
    /// closure, which runs as on a plain thread. (Beware `spawn(cpu,
    /// handle)` for a handler that takes no argument: the function itself
    /// is then the closure, and the handler it returns comes back from
    /// `join` unrun.)
    ///
    /// Dropping the returned handle detaches the handler: what it returns,
    /// an `Err` included, is dropped unseen. Keep the handle, or report
    /// errors in the handler, to see them.
    ///
    /// # Errors
    ///
    /// Fails if no thread is idle and the OS cannot create one, as
    /// [`std::thread::Builder::spawn`] does.
    ///
    /// # Panics
    ///
    /// Panics when it starts a thread if the cache's
    /// [`name`](ThreadCacheBuilder::name) has a NUL byte, as std's `spawn`
    /// does.
    pub fn spawn<A, H>(&self, apply: A, handler: H) -> io::Result<CachedJoinHandle<H::Output>>
    where
        A: Apply + Send + 'static,
        H: Yieldable + Send + 'static,
        H::Output: Send + 'static,
    {
        let packet = Arc::new(Packet {
            state: Mutex::new(Delivery {
                result: None,
                detached: false,
            }),
            done: Condvar::new(),
        });
        let coroutine_stack_size = self.shared.settings.coroutine_stack_size;
        let result = Arc::clone(&packet);
        let task: Task = Box::new(move || {
            let stack_size = coroutine_stack_size.unwrap_or_else(default_stack_size);
            // The strategy is dropped in here too: a panic in its `Drop` is
            // the handler's, as a panic dropping a std thread's closure is.
            let outcome = catch_unwind(AssertUnwindSafe(move || {
                let output = handler.__drive(&apply, stack_size);
                drop(apply);
                output
            }));
            Box::new(move || result.deliver(outcome))
        });
        let thread = match self.shared.take_idle() {
            Some(slot) => {
                let thread = slot.thread.clone();
                slot.hand(task);
                thread
            }
            None => self.shared.start(task)?,
        };
        Ok(CachedJoinHandle { packet, thread })
    }

    /// The threads of this cache now: running a handler or idle.
    pub fn threads(&self) -> usize {
        self.shared.state.lock().threads
    }

    /// The threads idle now, waiting for a handler.
    pub fn idle(&self) -> usize {
        self.shared.state.lock().idle.len()
    }

    /// Stops keeping threads and waits until every thread of the cache has
    /// exited, its thread-locals destroyed: the idle ones at once, the busy
    /// ones once their handler returns. Every clone sees it. Handlers
    /// spawned from now on still run, each on a new thread that exits when
    /// it returns.
    ///
    /// Called from handlers on the cache's own threads, it waits for the
    /// others, not for them: each such call returns once every thread not
    /// in a `shutdown` of its own has exited.
    ///
    /// It has no time limit: a handler blocked on a client that never sends
    /// keeps it waiting (give connections a read time-out). It blocks the
    /// calling thread: from an async runtime, call it in `spawn_blocking`.
    pub fn shutdown(&self) {
        self.shared.close();
        let me = thread::current().id();
        let mut state = self.shared.state.lock();
        // Called from one of the cache's threads, still counted (not one
        // that has left, in its thread-locals' destructors).
        let mine = state.handles.contains_key(&me) && !state.exited.contains(&me);
        state.shutting_down_here += usize::from(mine);
        while state.threads > state.shutting_down_here {
            self.shared.exited.wait(&mut state);
        }
        state.shutting_down_here -= usize::from(mine);
        // Every other thread has left; wait for them to be gone, their
        // thread-locals destroyed. (Threads still counted are in a
        // handler, in `shutdown` like this one.)
        let exited = std::mem::take(&mut state.exited);
        let handles: Vec<_> = exited
            .iter()
            .filter_map(|id| state.handles.remove(id))
            .collect();
        drop(state);
        for handle in handles {
            // A thread of the cache catches its handlers' panics; one that
            // panicked anyway has nothing more to say.
            let _ = handle.join();
        }
    }
}

impl Default for ThreadCache {
    fn default() -> Self {
        ThreadCache::new()
    }
}

impl fmt::Debug for ThreadCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("ThreadCache")
            .field("settings", &self.shared.settings)
            .field("threads", &state.threads)
            .field("idle", &state.idle.len())
            .field("closed", &state.closed)
            .finish_non_exhaustive()
    }
}

impl ThreadCacheBuilder {
    /// Names every thread of the cache, as [`std::thread::Builder::name`]
    /// does (and takes what it takes: a name with a NUL byte makes
    /// [`ThreadCache::spawn`] panic when it starts a thread, as std's
    /// `spawn` does).
    pub fn name(mut self, name: String) -> Self {
        self.settings.name = Some(name);
        self
    }

    /// Sets the OS stack size of every thread of the cache, as
    /// [`std::thread::Builder::stack_size`] does. Work run
    /// [`Inline`](crate::Inline) or under [`Bounded`](crate::Bounded) runs on
    /// this stack.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.settings.stack_size = Some(bytes);
        self
    }

    /// Sets the size of the coroutine stack handlers run on, as
    /// [`YieldableThread::coroutine_stack_size`](crate::YieldableThread::coroutine_stack_size)
    /// does. A thread keeps the stack of its last handler for its next.
    pub fn coroutine_stack_size(mut self, bytes: usize) -> Self {
        self.settings.coroutine_stack_size = Some(bytes);
        self
    }

    /// How long a thread waits for its next handler before it exits;
    /// [`DEFAULT_KEEP_ALIVE`] unless set. `Duration::ZERO` keeps no thread
    /// waiting (beyond the moment its handler's result is handed over);
    /// `Duration::MAX` keeps them until the cache is dropped or shut down.
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.settings.keep_alive = keep_alive;
        self
    }

    /// How many threads may wait for a handler at once; a thread whose
    /// handler returns while that many wait exits. Any number unless set.
    /// An idle thread holds its OS stack (what it touched of it stays
    /// resident) and one coroutine stack.
    pub fn max_idle(mut self, threads: usize) -> Self {
        self.settings.max_idle = threads;
        self
    }

    /// The cache. It starts no thread until the first
    /// [`spawn`](ThreadCache::spawn).
    pub fn build(self) -> ThreadCache {
        let shared = Arc::new(Shared {
            settings: self.settings,
            state: Mutex::new(State {
                idle: Vec::new(),
                threads: 0,
                closed: false,
                handles: HashMap::new(),
                exited: Vec::new(),
                shutting_down_here: 0,
            }),
            exited: Condvar::new(),
        });
        ThreadCache {
            _owner: Arc::new(Owner(Arc::clone(&shared))),
            shared,
        }
    }
}

impl Shared {
    /// The idle thread that became idle last, taken out of the idle list.
    fn take_idle(&self) -> Option<Arc<Slot>> {
        self.state.lock().idle.pop()
    }

    /// Starts a new thread running `task`, then waiting for more.
    fn start(self: &Arc<Self>, task: Task) -> io::Result<Thread> {
        let mut builder = thread::Builder::new();
        if let Some(name) = &self.settings.name {
            // std's `spawn` would panic on it too, but after the count
            // below took the thread in: `shutdown` would wait for it.
            assert!(
                !name.contains('\0'),
                "thread name may not contain interior null bytes"
            );
            builder = builder.name(name.clone());
        }
        if let Some(bytes) = self.settings.stack_size {
            builder = builder.stack_size(bytes);
        }
        let mut state = self.state.lock();
        state.threads += 1;
        // Forget the handles of threads that have left the cache and ended.
        let State {
            exited, handles, ..
        } = &mut *state;
        exited.retain(|id| match handles.get(id) {
            Some(handle) if handle.is_finished() => {
                handles.remove(id);
                false
            }
            Some(_) => true,
            None => false,
        });
        let shared = Arc::clone(self);
        // (Spawned under the lock, so that the handle is in before the
        // thread can exit and be reaped.)
        match builder.spawn(move || shared.work(task)) {
            Ok(handle) => {
                let thread = handle.thread().clone();
                state.handles.insert(thread.id(), handle);
                Ok(thread)
            }
            Err(error) => {
                // Never started: undo the count.
                state.threads -= 1;
                Err(error)
            }
        }
    }

    /// A thread of the cache: runs `task`, then waits for the next one
    /// until the cache closes, too many wait, or none comes in time.
    fn work(self: Arc<Self>, task: Task) {
        let slot = Arc::new(Slot {
            next: Mutex::new(Next::Wait),
            wake: Condvar::new(),
            thread: thread::current(),
        });
        // However this thread ends, it leaves the idle list and the count.
        let _leave = Leave {
            shared: &self,
            slot: &slot,
        };
        let mut task = Some(task);
        while let Some(run) = task.take() {
            let publish = run();
            // Idle before the result is out: whoever waits for it and
            // spawns the next handler at once finds this thread, rather
            // than racing it to the idle list and starting another.
            let mut idle = self.become_idle(&slot);
            if let Some(leftover) = publish() {
                // Nobody takes the result: drop it, but not as an idle
                // thread: its `Drop` may spawn on this cache and wait for
                // the handler, which must not be handed to this thread.
                let left = idle && self.leave_idle(&slot);
                if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(leftover))) {
                    // The panic hook has reported it; its payload could
                    // panic again when dropped.
                    std::mem::forget(payload);
                }
                if left {
                    idle = self.become_idle(&slot);
                }
            }
            if idle {
                // Nothing of the last handler's may shape the next one's
                // work (see `forget_held_here`).
                forget_held_here();
                task = self.wait_for_next(&slot);
            }
        }
    }

    /// Takes `slot` out of the idle list; false if it was not there (a
    /// spawn took it: its task is on its way).
    fn leave_idle(&self, slot: &Arc<Slot>) -> bool {
        let mut state = self.state.lock();
        let at = state.idle.iter().position(|s| Arc::ptr_eq(s, slot));
        at.map(|at| state.idle.remove(at)).is_some()
    }

    /// Puts `slot` in the idle list, unless the cache is closed or enough
    /// threads wait; returns whether it did.
    fn become_idle(&self, slot: &Arc<Slot>) -> bool {
        let mut state = self.state.lock();
        if state.closed || state.idle.len() >= self.settings.max_idle {
            return false;
        }
        state.idle.push(Arc::clone(slot));
        true
    }

    /// Waits in `slot`, which is in the idle list, for a task.
    fn wait_for_next(&self, slot: &Arc<Slot>) -> Option<Task> {
        // (A keep-alive too long for the clock is forever.)
        let deadline = Instant::now().checked_add(self.settings.keep_alive);
        let mut next = slot.next.lock();
        loop {
            match std::mem::replace(&mut *next, Next::Wait) {
                Next::Run(task) => return Some(task),
                Next::Exit => return None,
                Next::Wait => {}
            }
            let timed_out = match deadline {
                Some(deadline) => slot.wake.wait_until(&mut next, deadline).timed_out(),
                None => {
                    slot.wake.wait(&mut next);
                    false
                }
            };
            if timed_out && matches!(*next, Next::Wait) {
                // Out of the idle list, unless a spawn took this slot out
                // already: then its task is on its way, wait for it. (The
                // two locks are never held together.)
                drop(next);
                if self.leave_idle(slot) {
                    return None;
                }
                next = slot.next.lock();
                while matches!(*next, Next::Wait) {
                    slot.wake.wait(&mut next);
                }
            }
        }
    }

    /// No thread waits for another handler any more.
    fn close(&self) {
        let idle = {
            let mut state = self.state.lock();
            state.closed = true;
            std::mem::take(&mut state.idle)
        };
        for slot in idle {
            *slot.next.lock() = Next::Exit;
            slot.wake.notify_one();
        }
    }
}

impl Slot {
    /// Wakes the thread waiting here with `task`.
    fn hand(&self, task: Task) {
        *self.next.lock() = Next::Run(task);
        self.wake.notify_one();
    }
}

/// Takes a thread out of the cache when it ends, by returning or by a
/// panic of the cache's own (a handler's panics are caught before).
struct Leave<'a> {
    shared: &'a Shared,
    slot: &'a Arc<Slot>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.shared.leave_idle(self.slot);
        let mut state = self.shared.state.lock();
        state.threads -= 1;
        state.exited.push(thread::current().id());
        drop(state);
        self.shared.exited.notify_all();
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl<T: Send + 'static> Packet<T> {
    /// Hands `outcome` to the join handle, or back if it was dropped.
    fn deliver(&self, outcome: thread::Result<T>) -> Option<Leftover> {
        let mut state = self.state.lock();
        if state.detached {
            return Some(Box::new(outcome));
        }
        state.result = Some(outcome);
        drop(state);
        self.done.notify_all();
        None
    }
}

impl<T> CachedJoinHandle<T> {
    /// Waits for the handler to return and returns its result, or the
    /// payload of its panic, as [`std::thread::JoinHandle::join`] does. The
    /// thread itself goes on to wait for the next handler.
    ///
    /// # Errors
    ///
    /// The handler's panic payload, if it panicked.
    pub fn join(self) -> thread::Result<T> {
        let mut state = self.packet.state.lock();
        loop {
            if let Some(outcome) = state.result.take() {
                return outcome;
            }
            self.packet.done.wait(&mut state);
        }
    }

    /// Whether the handler has returned (or panicked), so that
    /// [`join`](CachedJoinHandle::join) would not wait.
    pub fn is_finished(&self) -> bool {
        self.packet.state.lock().result.is_some()
    }

    /// The thread the handler runs on.
    pub fn thread(&self) -> &Thread {
        &self.thread
    }
}

impl<T> Drop for CachedJoinHandle<T> {
    /// Detaches the handler: its result, when it comes, is dropped on its
    /// thread; one already there is dropped here.
    fn drop(&mut self) {
        let mut state = self.packet.state.lock();
        state.detached = true;
        let result = state.result.take();
        drop(state);
        drop(result);
    }
}

impl<T> fmt::Debug for CachedJoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedJoinHandle")
            .field("thread", &self.thread)
            .field("finished", &self.is_finished())
            .finish()
    }
}
