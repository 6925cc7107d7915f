//! The public face of a remote worker: [`Worker`], which serves this
//! program's `#[offloadable]` functions to [`Remote`](super::Remote)
//! requesters on NATS and runs each call in a local [`Processes`] (or on
//! threads of its own, `threads.rs`), and [`WorkerBuilder`]. (The loops that
//! take and answer the calls are `serve.rs`.)

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use super::DEFAULT_NAMESPACE;
use super::io::Io;
use super::queue::{Backlog, Queue};
use super::serve::{
    Function, Load, MAX_FORWARDING, ReplySubjects, Runner, Serving, SignedReplies, Slots,
    pull_calls, serve_function, take_cancellations, watch_overruns,
};
use super::signing::Key;
use super::threads::{self, Threads};
use super::wire::{
    Refused, cancel_subject, check_token, credentials_from_url, queue_group, redacted, subject,
};
use crate::offloadable::{self, Lookup, OFFLOADABLE};
use crate::sync::Mutex;
use crate::{Processes, ProcessesBuilder};

/// Serves this program's [`#[offloadable]`](crate::offloadable) functions to
/// [`Remote`](super::Remote) requesters through NATS.
///
/// Each function is a queue-group subscription on its subject
/// (`ythread.<namespace>.<path>.<fingerprint>`), so any number of workers,
/// on any number of machines, share the calls, and each call goes to one of
/// them. Calls run in a local [`Processes`] (one worker process per core by
/// default): a call that crashes its process comes back to the requester as
/// `WorkerDied` with the signal named, and this worker goes on. (Or on
/// threads of this process, without that isolation and without the hop to
/// a process: [`WorkerBuilder::threads`].)
///
/// # The fleet's shared queue
///
/// NATS gives each call to a member of the queue group at random, however
/// busy it is. A call that finds all of this worker's processes busy is put
/// in the fleet's shared queue, a JetStream work-queue stream (in memory,
/// `ythread-<namespace>`, or a hash of the namespace if it has other
/// characters than letters, digits, `-` and `_`; the server reserves 64 MiB
/// of its JetStream memory for each), from which every worker asks for one
/// call each time one of its processes is free: calls that must wait, wait
/// in one first-come-first-served line for the whole fleet, not behind one
/// worker's. Calls of a function that take under 1 ms here wait here
/// instead: for them, the queue's round trip through the server would cost
/// more than the wait. The queue needs a server with JetStream
/// (`nats-server -js`); without it (see [`Worker::shared_queue`]) a call
/// waits for this worker's processes, and the fleet's tail latency under
/// load suffers.
///
/// Delivery stays at most once: a worker runs a queued call only after the
/// server has confirmed that the worker took it, and a call whose fate is
/// unknown (a lost connection at the wrong moment) is not run rather than
/// risk running it twice: it fails at its requester's deadline. A queued
/// call's deadline is checked against the server's clock with a second of
/// slack: keep the machines' clocks in step (NTP).
///
/// # Observability
///
/// With the `tracing` feature, each call runs inside a `remote_call` span
/// (target `ythread::remote`), a root here, entered on the thread that
/// runs it: on [threads](WorkerBuilder::threads), the worker thread, so the
/// function's own events are inside it (and calls it makes through a
/// [`Remote`](super::Remote) go on with its trace id); with processes, the
/// thread that waits for the worker process, where the events the process
/// sends back land. Its fields: `function` (the path), `call` (the call's
/// name, `{function} call {id}` plus ` trace {trace id}`, as its requester's
/// errors say it), `trace_id` and `parent_id` (from the call's
/// `traceparent`), `deadline_ms` (the requester's deadline). Calls not run
/// are told in `debug` events (`call`, `reason`).
///
/// The `traceparent` header is read strictly: version `00`, 55 bytes,
/// lowercase hex, ids not all zero, one header only (the name is
/// case-sensitive on NATS: `traceparent`). Anything else is ignored and
/// counted; the call runs, or is refused, exactly as without it. It is not
/// signed, and trusted for nothing but labels: under a shared credential,
/// a replayed call may carry a made-up trace id. A call put in the shared
/// queue carries its valid `traceparent` with it.
///
/// With the `metrics` feature (each with a `namespace` label):
///
/// | metric | what |
/// |---|---|
/// | `ythread_remote_worker_calls_total{outcome}` (counter) | calls run and answered: `ok`, or the failure's kind in snake case (`panicked`, `worker_died`, `deadline_exceeded`, `protocol`, ...) |
/// | `ythread_remote_worker_rejected_total{reason}` (counter) | calls received and not run: `bad_signature`, `replay`, `expired`, `cancelled`, `too_large` (alone over `max_pending_bytes`), `busy`, `reply_subject` (a system's or ythread's own) |
/// | `ythread_remote_worker_traceparent_ignored_total` (counter) | calls received (run or refused) whose `traceparent` was ignored: read before a call is checked, so that a refusal names the call as its requester does |
///
/// ```no_run
/// fn main() -> std::io::Result<()> {
///     // (Its local worker processes are this program too: they serve
///     // before `main`.)
///     ythread::remote::Worker::builder("nats://10.0.0.1:4222")
///         .namespace("sums")
///         .serve() // until the process is stopped
/// }
/// ```
pub struct Worker {
    io: Io,
    serving: Arc<Serving>,
    /// The tasks that take calls: NATS subscriptions and queue pulls.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("runner", &self.serving.runner)
            .field("ready", &self.ready())
            .field("shared_queue", &self.shared_queue())
            .field("forwarded", &self.forwarded())
            .field("dequeued", &self.dequeued())
            .field("refused", &self.refused())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    url: String,
    namespace: String,
    run_on: RunOn,
    options: Option<async_nats::ConnectOptions>,
    shared_queue: bool,
    deadline: Duration,
    max_pending_bytes: usize,
    signing_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("url", &redacted(&self.url))
            .field("namespace", &self.namespace)
            .field("run_on", &self.run_on)
            .field("shared_queue", &self.shared_queue)
            .field("deadline", &self.deadline)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("signing_key", &self.signing_key.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// Where a worker runs its calls: [`WorkerBuilder::processes`] or
/// [`WorkerBuilder::threads`], whichever was called last.
#[derive(Debug)]
enum RunOn {
    /// Local worker processes (`None`: the default ones).
    Processes(Option<ProcessesBuilder>),
    /// This many threads of the worker's own process.
    Threads(usize),
}

/// The longest a call may run on a worker unless its builder says.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// The bytes of calls a worker holds at most unless its builder says.
const DEFAULT_MAX_PENDING_BYTES: usize = 64 << 20;

impl Worker {
    /// A builder for a worker of the NATS server at `url`.
    pub fn builder(url: &str) -> WorkerBuilder {
        WorkerBuilder {
            url: url.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            run_on: RunOn::Processes(None),
            options: None,
            shared_queue: true,
            deadline: DEFAULT_DEADLINE,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            signing_key: None,
        }
    }

    /// The local worker processes that run the calls; `None` for a worker
    /// on [threads](WorkerBuilder::threads).
    pub fn processes(&self) -> Option<&Processes> {
        match &self.serving.runner {
            Runner::Processes(processes) => Some(processes),
            Runner::Threads(_) => None,
        }
    }

    /// Whether this worker serves calls and can answer them.
    ///
    /// # Errors
    ///
    /// Why not: it was stopped; or NATS refused its replies (a permission,
    /// named). With a [signing key](WorkerBuilder::signing_key), a refused
    /// reply to a call that verified proves that the worker cannot answer
    /// its requesters: it then stops taking calls, which go to the other
    /// workers (with none, their requesters hear at once that no worker
    /// serves them). Without one, a refused reply may as well be a caller's
    /// made-up reply subject: the worker goes on serving, and this says
    /// what NATS refused.
    pub fn ready(&self) -> Result<(), String> {
        if let Some(why) = &*self.serving.not_serving.lock() {
            return Err(why.clone());
        }
        match &*self.serving.reply_trouble.lock() {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    /// Replies of this worker that NATS refused (see [`ready`](Worker::ready)).
    pub fn refused_replies(&self) -> u64 {
        self.serving.refused_replies.load(Ordering::Relaxed)
    }

    /// Whether calls that find this worker's processes busy go to the
    /// fleet's shared queue now; if not, why (for example, "JetStream:
    /// jetstream unavailable" from a server started without `-js`, or a
    /// stream on the server that is not the one ythread makes). It is
    /// looked at again after each reconnection.
    ///
    /// # Errors
    ///
    /// The reason there is no shared queue.
    pub fn shared_queue(&self) -> Result<(), String> {
        match &self.serving.queue {
            Some(queue) => queue
                .status()
                .map_err(|problem| format!("JetStream: {problem}")),
            None => Err("turned off by the builder".to_owned()),
        }
    }

    /// Calls this worker received and put in the shared queue (its processes
    /// were busy, or calls of the same function were queued already).
    pub fn forwarded(&self) -> u64 {
        self.serving.forwarded.load(Ordering::Relaxed)
    }

    /// Calls this worker took from the shared queue.
    pub fn dequeued(&self) -> u64 {
        self.serving.dequeued.load(Ordering::Relaxed)
    }

    /// Calls this worker refused, unrun, with a reply that says why: while
    /// the calls it held took [`WorkerBuilder::max_pending_bytes`], or not
    /// signed with its [`WorkerBuilder::signing_key`].
    pub fn refused(&self) -> u64 {
        self.serving.refused.load(Ordering::Relaxed)
    }

    /// The bytes the calls this worker holds now (received and not yet
    /// answered) count against [`WorkerBuilder::max_pending_bytes`]: each
    /// call's arguments and about 1 KiB for the call itself.
    pub fn pending_bytes(&self) -> usize {
        let free = self.serving.pending.available_permits();
        self.serving
            .max_pending_bytes
            .min(Semaphore::MAX_PERMITS)
            .saturating_sub(free)
    }

    /// Calls this worker dropped unrun because no one waited for them any
    /// more: their requester's deadline had passed, or their requester
    /// cancelled them (it lost its connection while they were in flight).
    pub fn dropped(&self) -> u64 {
        self.serving.dropped.load(Ordering::Relaxed)
    }

    /// Serves until the process ends. (Dropping a `Worker` returned by
    /// [`WorkerBuilder::start`] stops it at once: it unsubscribes, and the
    /// calls it holds get no answer; [`stop`](Worker::stop) lets them
    /// answer.)
    pub fn wait(self) -> ! {
        loop {
            std::thread::park();
        }
    }

    /// Stops taking calls: unsubscribes, ends its pulls from the shared
    /// queue (within 2 s), lets the calls under way and those it received
    /// answer (waiting up to `grace` for all of this), then closes the
    /// connection. Calls it put in the shared queue before are left to the
    /// other workers (with none, they fail at their deadline). Works from
    /// any thread, an async runtime's included (which it blocks meanwhile).
    pub fn stop(mut self, grace: Duration) {
        let _ = self.serving.stop.send(true);
        self.serving
            .not_serving
            .lock()
            .get_or_insert_with(|| "stopped".to_owned());
        let capacity = u32::try_from(self.serving.runner.capacity()).unwrap_or(u32::MAX);
        let serving = Arc::clone(&self.serving);
        let tasks = std::mem::take(&mut self.tasks);
        let now = tokio::time::Instant::now();
        // (A grace too long to add, `Duration::MAX`, is a century.)
        let until = now
            .checked_add(grace)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        let _ = self.io.wait(async move {
            let _ = tokio::time::timeout_at(until, async {
                for task in tasks {
                    let _ = task.await;
                }
                let _ = serving.slots.permits.acquire_many(capacity).await;
            })
            .await;
            // (Not past `grace` either: a client that lost its connection
            // holds a flush until it is back.)
            let _ = tokio::time::timeout_at(until, serving.client.flush()).await;
        });
        // Calls still running after `grace` cannot answer; the runtime is
        // shut down without waiting for them (dropping `io`).
    }
}

impl Drop for Worker {
    /// Unsubscribes (waiting up to 1 s for the server to have it), so that
    /// no call is sent here once this returns; the calls it holds get no
    /// answer.
    fn drop(&mut self) {
        let _ = self.serving.stop.send(true);
        let client = self.serving.client.clone();
        let _ = self.io.wait(async move {
            let _ = client.drain().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while client.connection_state() == async_nats::connection::State::Connected {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
        });
    }
}

impl WorkerBuilder {
    /// The namespace whose calls to serve (default `"default"`), as the
    /// requesters' [`RemoteBuilder::namespace`](super::RemoteBuilder::namespace).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    /// The local worker processes (default: `Processes::builder()`, one per
    /// core). Replaces [`threads`](WorkerBuilder::threads).
    pub fn processes(mut self, processes: ProcessesBuilder) -> Self {
        self.run_on = RunOn::Processes(Some(processes));
        self
    }

    /// Runs the calls on `threads` threads of this process instead of in
    /// local worker processes, for work that needs no isolation: the
    /// round trip is then a NATS request-reply's (within 1.2x of a raw one,
    /// `benches/remote.rs`), without the hop to a local process. Replaces
    /// [`processes`](WorkerBuilder::processes).
    ///
    /// Everything else is as with processes: the same registered functions,
    /// found by the same subjects; arguments decoded and results encoded
    /// within the same bounds (128 levels deep, the default of
    /// [`ProcessesBuilder::max_depth`]; a result within the server's
    /// `max_payload`), with the same errors; a panic in the function comes
    /// back [`Panicked`](crate::OffloadErrorKind::Panicked) with its
    /// message, and the worker goes on; signatures, replays, expiry,
    /// cancellation, [`max_pending_bytes`](WorkerBuilder::max_pending_bytes)
    /// and the shared queue apply unchanged. At most `threads` calls run at
    /// once; the others wait, within `max_pending_bytes` (or in the shared
    /// queue), or are refused "busy", unrun, beyond it. Short calls (under
    /// 1 ms here) run on the thread that took them in, one at a time, as
    /// with processes; the others on threads of their own (8 MiB stacks, as
    /// roomy as a worker process's main thread).
    ///
    /// What isolation bought, and this gives up:
    ///
    /// - **A crash takes the worker down**: a segfault, an abort (a stack
    ///   overflow, a failed allocation, a panic while panicking) in a
    ///   function ends this whole process, and every call it holds fails
    ///   at its requester's deadline (or at once
    ///   [`MayHaveRun`](crate::OffloadErrorKind::MayHaveRun), if the
    ///   requester sees the connection go). With processes, only the call
    ///   that crashed fails.
    /// - **A call past its deadline is not stopped**: a thread cannot be
    ///   killed. At the worker's [`deadline`](WorkerBuilder::deadline) its
    ///   requester is answered
    ///   [`DeadlineExceeded`](crate::OffloadErrorKind::DeadlineExceeded),
    ///   saying that it runs on (at the requester's own deadline, if that
    ///   is sooner, the requester stops waiting by itself), but the call
    ///   keeps its thread, and its place among the `threads`, until it
    ///   returns; its result is then dropped. The worker takes no more than
    ///   `threads` calls at once however many overrun: calls that never
    ///   return leave it serving with fewer places, and with none it only
    ///   holds calls (within `max_pending_bytes`) until their deadlines.
    ///   Restart such a worker.
    /// - Memory and globals are shared with the worker itself (no
    ///   [`ProcessesBuilder::memory_limit`]).
    ///
    /// ```no_run
    /// fn main() -> std::io::Result<()> {
    ///     ythread::remote::Worker::builder("nats://10.0.0.1:4222")
    ///         .namespace("sums")
    ///         .threads(4)
    ///         .serve()
    /// }
    /// ```
    ///
    /// # Panics
    ///
    /// Panics if `threads` is zero.
    pub fn threads(mut self, threads: usize) -> Self {
        assert!(
            threads > 0,
            "WorkerBuilder::threads: at least one is needed"
        );
        self.run_on = RunOn::Threads(threads);
        self
    }

    /// NATS connection options: credentials, TLS, reconnection.
    ///
    /// The worker sets the options' `event_callback` (it watches for
    /// reconnections and refused permissions): one set here is replaced.
    pub fn connect_options(mut self, options: async_nats::ConnectOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// Whether to use the fleet's shared queue when the server has
    /// JetStream (default `true`; see [`Worker`]). With `false`, a call that
    /// finds this worker's processes busy waits for them.
    pub fn shared_queue(mut self, use_it: bool) -> Self {
        self.shared_queue = use_it;
        self
    }

    /// The longest a call may run here (default 60 s), whatever its
    /// requester allows: a call runs until the sooner of this and its
    /// requester's deadline (which comes with it), and is then killed with
    /// its local worker process and fails
    /// [`DeadlineExceeded`](crate::OffloadErrorKind::DeadlineExceeded). A
    /// call that never ends cannot take a process for good. (The
    /// processes' own [`ProcessesBuilder::deadline`], if set, bounds it
    /// too.) On [threads](WorkerBuilder::threads), the requester is
    /// answered `DeadlineExceeded` at this deadline, but the call runs on
    /// until it returns.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The most this worker holds of calls it received and has not
    /// answered, in bytes (their arguments, plus 1 KiB each; default
    /// 64 MiB): waiting for a process here, being put in the shared queue,
    /// running. A call that would take more is refused at once, unrun,
    /// with [`Unavailable`](crate::OffloadErrorKind::Unavailable) ("the
    /// worker is busy"). The worker reads its subscriptions as fast as calls
    /// come, so what NATS's client buffers (up to 1,024 messages per
    /// function) stays small: this bounds the worker's memory for calls,
    /// however many arrive (1,200 calls of 1 MB at a busy worker: 130-220
    /// MiB more, in a test).
    pub fn max_pending_bytes(mut self, bytes: usize) -> Self {
        self.max_pending_bytes = bytes;
        self
    }

    /// The fleet's signing key, the same as its requesters'
    /// [`RemoteBuilder::signing_key`](super::RemoteBuilder::signing_key):
    /// only calls signed with it run (others are refused), and replies are
    /// signed with it.
    pub fn signing_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.signing_key = Some(key.as_ref().to_vec());
        self
    }

    /// Starts the local worker processes, connects, opens the shared queue,
    /// subscribes every `#[offloadable]` function, and returns once the
    /// server has the subscriptions: a call made after this returns reaches
    /// this worker. Works from any thread, an async runtime's included
    /// (which it blocks meanwhile).
    ///
    /// # Errors
    ///
    /// If the worker processes cannot start (see
    /// [`ProcessesBuilder::build`]), the runtime's threads cannot, the
    /// namespace is not a subject token,
    /// the signing key is shorter than 32 bytes, NATS cannot be reached or
    /// refuses the connection, or it refuses a subscription (a permission:
    /// the error names it). (A server without JetStream is no error: see
    /// [`Worker::shared_queue`].)
    pub fn start(self) -> io::Result<Worker> {
        check_token(&self.namespace)?;
        // The units and help texts of the series, for the recorder
        // installed now.
        #[cfg(feature = "metrics")]
        crate::meters::describe_to_current();
        let key = self
            .signing_key
            .as_deref()
            .map(|key| Key::new(key, "WorkerBuilder::signing_key"))
            .transpose()?;
        let (runner, stack_size) = match self.run_on {
            RunOn::Processes(processes) => {
                let processes = processes.unwrap_or_else(Processes::builder).build()?;
                (Runner::Processes(Arc::new(processes)), None)
            }
            // The runtime's threads run calls too (the short ones, and the
            // others on its blocking threads).
            RunOn::Threads(count) => (
                Runner::Threads(Arc::new(Threads::new(count))),
                Some(threads::STACK_SIZE),
            ),
        };
        // Two threads: a short call may hold one (see `serve.rs`'s `run`).
        let io = Io::with_stack("ythread-remote-worker", 2, stack_size)?;
        let (url, options) = credentials_from_url(&self.url, self.options)?;
        let events = Arc::new(Events::default());
        let options = options
            // The subscriptions are read as fast as calls come (see
            // `max_pending_bytes`): a small buffer is enough.
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .event_callback({
                let events = Arc::clone(&events);
                move |event| {
                    let events = Arc::clone(&events);
                    async move { events.on(event).await }
                }
            });
        let namespace = self.namespace;
        let shared_queue = self.shared_queue;
        let settings = (self.deadline, self.max_pending_bytes);
        let starting = Arc::clone(&events);
        let (serving, tasks) = io.wait(async move {
            let client = options
                .connect(url.as_str())
                .await
                .map_err(|error| io::Error::other(format!("NATS at {url}: {error}")))?;
            let queue = shared_queue.then(|| Arc::new(Queue::new(&client, &namespace)));
            if let Some(queue) = &queue {
                // Its requests' answers come to this worker's inbox: if NATS
                // refuses that subscription, they never come, and opening
                // would wait out its timeouts. Fail at once instead (below).
                tokio::select! {
                    _ = queue.open() => {}
                    () = starting.refused.notified() => {}
                }
            }
            let (stop, stopping) = watch::channel(false);
            let (deadline, max_pending_bytes) = settings;
            let serving = Arc::new(Serving {
                max_payload: AtomicUsize::new(client.server_info().max_payload),
                client,
                namespace: namespace.clone(),
                slots: Slots::new(runner.capacity()),
                runner,
                queue,
                forwarding: Arc::new(Semaphore::new(MAX_FORWARDING)),
                pending: Arc::new(Semaphore::new(
                    max_pending_bytes.min(Semaphore::MAX_PERMITS),
                )),
                max_pending_bytes,
                deadline,
                key,
                cancelled: ReplySubjects::default(),
                seen: ReplySubjects::default(),
                not_serving: Mutex::new(None),
                reply_trouble: Mutex::new(None),
                stop,
                forwarded: AtomicU64::new(0),
                dequeued: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                running_here: AtomicBool::new(false),
                signed_replies: SignedReplies::default(),
                refused_replies: AtomicU64::new(0),
            });
            let _ = starting.serving.set(Arc::clone(&serving));
            if let Runner::Threads(threads) = &serving.runner {
                // (Not one of `tasks`: it answers for calls that overrun
                // while the worker stops, too; it ends with the runtime.)
                tokio::spawn(watch_overruns(Arc::clone(&serving), Arc::clone(threads)));
            }
            let tasks = subscribe(&serving, &namespace, &stopping).await?;
            // The server answers a refused subscription before the flush's
            // reply; its event reaches the callback a moment later.
            for _ in 0..10 {
                if starting.refused_subscription().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if let Some(refused) = starting.refused_subscription() {
                for task in &tasks {
                    task.abort();
                }
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "NATS refused this worker a subscription ({refused}): its user needs \
                         permission to subscribe to `ythread.{namespace}.>` (in queue group \
                         `{}`), `{}`, and its own inbox (`_INBOX.>`, or the prefix set with \
                         `ConnectOptions::custom_inbox_prefix`: JetStream's answers come there)",
                        queue_group(&namespace),
                        cancel_subject(&namespace),
                    ),
                ));
            }
            io::Result::Ok((serving, tasks))
        })??;
        Ok(Worker { io, serving, tasks })
    }

    /// [`start`](WorkerBuilder::start), then serve until the process ends.
    /// There is no graceful stop here: a process killed while serving
    /// leaves its calls under way to fail at their requesters' deadline.
    /// To drain on a signal, `start`, wait for the signal, then
    /// [`Worker::stop`] (as `examples/worker.rs` does).
    ///
    /// # Errors
    ///
    /// As [`start`](WorkerBuilder::start); once serving, it does not return.
    pub fn serve(self) -> io::Result<()> {
        self.start()?.wait()
    }
}

/// Messages NATS's client buffers per subscription at most (it drops more,
/// "slow consumer"). The worker reads as fast as calls come, so this holds
/// only bursts; 128 dropped calls of a burst of 500 small ones (a test).
const SUBSCRIPTION_CAPACITY: usize = 1024;

/// Subscribes every `#[offloadable]` function and the cancellations, and
/// starts the tasks that take calls; returns once the server has the
/// subscriptions.
async fn subscribe(
    serving: &Arc<Serving>,
    namespace: &str,
    stopping: &watch::Receiver<bool>,
) -> io::Result<Vec<tokio::task::JoinHandle<()>>> {
    let group = queue_group(namespace);
    let mut tasks = Vec::new();
    let cancellations = serving
        .client
        .subscribe(cancel_subject(namespace))
        .await
        .map_err(|error| io::Error::other(format!("NATS subscribe: {error}")))?;
    tasks.push(tokio::spawn(take_cancellations(
        Arc::clone(serving),
        cancel_subject(namespace),
        cancellations,
        stopping.clone(),
    )));
    for registration in OFFLOADABLE.iter() {
        // A name registered twice cannot be served: a call could
        // reach the wrong function.
        if !matches!(offloadable::by_name(registration.name), Lookup::Found(_)) {
            continue;
        }
        let calls = serving
            .client
            .queue_subscribe(subject(namespace, registration), group.clone())
            .await
            .map_err(|error| io::Error::other(format!("NATS subscribe: {error}")))?;
        let function = Arc::new(Function {
            registration,
            backlog: Backlog::default(),
            load: Load::default(),
        });
        tasks.push(tokio::spawn(serve_function(
            Arc::clone(serving),
            Arc::clone(&function),
            calls,
            stopping.clone(),
        )));
        if let Some(queue) = &serving.queue {
            tasks.push(tokio::spawn(pull_calls(
                Arc::clone(serving),
                Arc::clone(queue),
                function,
                stopping.clone(),
            )));
        }
    }
    serving
        .client
        .flush()
        .await
        .map_err(|error| io::Error::other(format!("NATS flush: {error}")))?;
    Ok(tasks)
}

/// What the connection's events act on.
#[derive(Default)]
struct Events {
    serving: OnceLock<Arc<Serving>>,
    /// The first subscription NATS refused, in its words.
    refused_subscription: Mutex<Option<String>>,
    /// Told when one is.
    refused: tokio::sync::Notify,
}

impl Events {
    fn refused_subscription(&self) -> Option<String> {
        self.refused_subscription.lock().clone()
    }

    async fn on(&self, event: async_nats::Event) {
        if let async_nats::Event::ServerError(async_nats::ServerError::Other(text)) = &event
            && let Some(Refused::Subscribe(_)) = Refused::parse(text)
        {
            // (Before the worker is built too: its queue's first request
            // subscribes to its inbox.)
            eprintln!("ythread::remote::Worker: NATS refused a subscription: {text}");
            self.refused_subscription
                .lock()
                .get_or_insert_with(|| text.clone());
            self.refused.notify_one();
            return;
        }
        let Some(serving) = self.serving.get() else {
            return;
        };
        match event {
            async_nats::Event::Connected => {
                serving
                    .max_payload
                    .store(serving.client.server_info().max_payload, Ordering::Relaxed);
                if let Some(queue) = &serving.queue {
                    queue.reconnected().await;
                }
            }
            async_nats::Event::ServerError(async_nats::ServerError::Other(text)) => {
                match Refused::parse(&text) {
                    Some(Refused::Subscribe(_)) => {} // (Above.)
                    Some(Refused::Publish(subject))
                        if subject.starts_with("$JS.") || subject.starts_with("ythread-queue.") =>
                    {
                        if let Some(queue) = &serving.queue {
                            queue.refused(&text);
                        }
                        eprintln!(
                            "ythread::remote::Worker: NATS refused the shared queue ({text}): \
                             calls wait for this worker's processes instead"
                        );
                    }
                    Some(Refused::Publish(subject)) => {
                        // A reply. Refused for a call that verified with the
                        // key, it means this worker cannot answer its
                        // requesters: it stops taking calls, which go to
                        // the other workers. Without a key it cannot tell a
                        // missing permission from a caller's made-up reply
                        // subject: it says so, and goes on.
                        let refused = serving.refused_replies.fetch_add(1, Ordering::Relaxed) + 1;
                        let why = format!(
                            "NATS refused {refused} of its replies (the last: {text}): its user \
                             needs permission to publish replies (`allow_responses`, or publish \
                             on the requesters' inbox prefix, `_INBOX.>`)"
                        );
                        if refused == 1 {
                            eprintln!("ythread::remote::Worker: {why}");
                        }
                        if serving.key.is_some() && serving.signed_replies.contains(&subject) {
                            let why = format!("{why}; it no longer takes calls");
                            if serving.not_serving.lock().is_none() {
                                eprintln!("ythread::remote::Worker: {why}");
                                *serving.not_serving.lock() = Some(why);
                                let _ = serving.stop.send(true);
                            }
                        } else {
                            *serving.reply_trouble.lock() = Some(why);
                        }
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }
}
