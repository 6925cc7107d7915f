//! The worker side of [`Remote`](super::Remote): [`Worker`] serves this
//! program's `#[offloadable]` functions on NATS and runs each call in a local
//! [`Processes`].

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::runtime::Runtime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::queue::{self, Backlog, Forwarded, Queue};
use super::wire::Reply;
use super::{DEFAULT_NAMESPACE, check_token, credentials_from_url, runtime, subject};
use crate::error::OffloadError;
use crate::offloadable::{self, Entry, Lookup, OFFLOADABLE};
use crate::portable::WireCall;
use crate::sync::{Mutex, MutexGuard};
use crate::{Processes, ProcessesBuilder};

/// Serves this program's [`#[offloadable]`](crate::offloadable) functions to
/// [`Remote`](super::Remote) requesters through NATS.
///
/// Each function is a queue-group subscription on its subject
/// (`ythread.<namespace>.<path>.<fingerprint>`), so any number of workers,
/// on any number of machines, share the calls, and each call goes to one of
/// them. Calls run in a local [`Processes`] (one worker process per core by
/// default): a call that crashes its process comes back to the requester as
/// `WorkerDied` with the signal named, and this worker goes on.
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
/// load suffers (see `BENCHMARKS.md`).
///
/// Delivery stays at most once: a worker runs a queued call only after the
/// server has confirmed that the worker took it, and a call whose fate is
/// unknown (a lost connection at the wrong moment) is not run rather than
/// risk running it twice: it fails at its requester's deadline. A queued
/// call's deadline is checked against the server's clock with a second of
/// slack: keep the machines' clocks in step (NTP).
///
/// ```no_run
/// fn main() -> std::io::Result<()> {
///     ythread::processes::init(); // the local worker processes start here
///     ythread::remote::Worker::builder("nats://10.0.0.1:4222")
///         .namespace("sums")
///         .serve() // until the process is stopped
/// }
/// ```
pub struct Worker {
    runtime: Runtime,
    serving: Arc<Serving>,
    /// The tasks that take calls: NATS subscriptions and queue pulls.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Tells them to stop taking calls.
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("processes", &self.serving.processes)
            .field("shared_queue", &self.shared_queue())
            .field("forwarded", &self.forwarded())
            .field("dequeued", &self.dequeued())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    url: String,
    namespace: String,
    processes: Option<ProcessesBuilder>,
    options: Option<async_nats::ConnectOptions>,
    shared_queue: bool,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("url", &super::redacted(&self.url))
            .field("namespace", &self.namespace)
            .field("processes", &self.processes)
            .field("shared_queue", &self.shared_queue)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A builder for a worker of the NATS server at `url`.
    pub fn builder(url: &str) -> WorkerBuilder {
        WorkerBuilder {
            url: url.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            processes: None,
            options: None,
            shared_queue: true,
        }
    }

    /// The local worker processes that run the calls.
    pub fn processes(&self) -> &Processes {
        &self.serving.processes
    }

    /// Whether calls that find this worker's processes busy go to the
    /// fleet's shared queue; if not, why (for example, "JetStream:
    /// jetstream unavailable" from a server started without `-js`). It is
    /// looked at when the worker starts.
    ///
    /// # Errors
    ///
    /// The reason there is no shared queue.
    pub fn shared_queue(&self) -> Result<(), &str> {
        match &self.serving.queue {
            Ok(_) => Ok(()),
            Err(why) => Err(why),
        }
    }

    /// Calls this worker received and put in the shared queue (its processes
    /// were busy, or calls of the same function were queued already).
    pub fn forwarded(&self) -> u64 {
        self.serving.forwarded.load(Ordering::Relaxed)
    }

    /// Calls this worker took from the shared queue (including those whose
    /// deadline had passed by then, dropped unrun).
    pub fn dequeued(&self) -> u64 {
        self.serving.dequeued.load(Ordering::Relaxed)
    }

    /// Serves until the process ends. (Dropping a `Worker` returned by
    /// [`WorkerBuilder::start`] stops serving: its subscriptions end with
    /// its connection.)
    pub fn wait(self) -> ! {
        self.runtime.block_on(std::future::pending::<()>());
        unreachable!("a pending future never completes")
    }

    /// Stops taking calls: unsubscribes, ends its pulls from the shared
    /// queue (within 2 s), lets the calls under way and those it received
    /// answer (waiting up to `grace` for all of this), then closes the
    /// connection. Calls it put in the shared queue before are left to the
    /// other workers (with none, they fail at their deadline).
    pub fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let capacity = u32::try_from(self.serving.processes.workers()).unwrap_or(u32::MAX);
        self.runtime.block_on(async {
            let _ = tokio::time::timeout(grace, async {
                for task in self.tasks {
                    let _ = task.await;
                }
                let _ = self.serving.slots.permits.acquire_many(capacity).await;
            })
            .await;
            let _ = self.serving.client.flush().await;
        });
        // Calls still running after `grace` cannot answer; do not wait for
        // them beyond it.
        self.runtime.shutdown_timeout(Duration::from_millis(100));
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
    /// core).
    pub fn processes(mut self, processes: ProcessesBuilder) -> Self {
        self.processes = Some(processes);
        self
    }

    /// NATS connection options: credentials, TLS, reconnection.
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

    /// Starts the local worker processes, connects, opens the shared queue,
    /// subscribes every `#[offloadable]` function, and returns once the
    /// server has the subscriptions: a call made after this returns reaches
    /// this worker.
    ///
    /// # Errors
    ///
    /// If the worker processes cannot start (see
    /// [`ProcessesBuilder::build`]), the namespace is not a subject token, or
    /// NATS cannot be reached or refuses the connection. (A server without
    /// JetStream is no error: see [`Worker::shared_queue`].)
    pub fn start(self) -> io::Result<Worker> {
        check_token(&self.namespace)?;
        let processes = Arc::new(self.processes.unwrap_or_else(Processes::builder).build()?);
        let runtime = runtime("ythread-remote-worker")?;
        let (url, options) = credentials_from_url(&self.url, self.options)?;
        let client = runtime
            .block_on(options.connect(url.as_str()))
            .map_err(|error| io::Error::other(format!("NATS at {url}: {error}")))?;
        let queue = if self.shared_queue {
            runtime
                .block_on(Queue::open(&client, &self.namespace))
                .map(Arc::new)
                .map_err(|error| format!("JetStream: {error}"))
        } else {
            Err("turned off by the builder".to_owned())
        };
        let group = format!("ythread.{}", self.namespace);
        let (stop, stopping) = watch::channel(false);
        let serving = Arc::new(Serving {
            max_payload: client.server_info().max_payload,
            client,
            slots: Slots::new(processes.workers()),
            processes,
            queue,
            forwarding: Arc::new(Semaphore::new(MAX_FORWARDING)),
            forwarded: AtomicU64::new(0),
            dequeued: AtomicU64::new(0),
        });
        let tasks = runtime.block_on(async {
            let mut tasks = Vec::new();
            for entry in OFFLOADABLE.iter() {
                // A name registered twice cannot be served: a call could
                // reach the wrong function.
                if !matches!(offloadable::by_name(entry.name), Lookup::Found(_)) {
                    continue;
                }
                let calls = serving
                    .client
                    .queue_subscribe(subject(&self.namespace, entry), group.clone())
                    .await
                    .map_err(|error| io::Error::other(format!("NATS subscribe: {error}")))?;
                let function = Arc::new(Function {
                    entry,
                    backlog: Backlog::default(),
                    load: Load::default(),
                });
                tasks.push(tokio::spawn(serve_function(
                    Arc::clone(&serving),
                    Arc::clone(&function),
                    calls,
                    stopping.clone(),
                )));
                if let Ok(queue) = &serving.queue {
                    tasks.push(tokio::spawn(pull_calls(
                        Arc::clone(&serving),
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
            io::Result::Ok(tasks)
        })?;
        Ok(Worker {
            runtime,
            serving,
            tasks,
            stop,
        })
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

/// Calls being put in the shared queue at once, at most.
const MAX_FORWARDING: usize = 256;

/// What serving calls needs, shared by every function's tasks.
struct Serving {
    client: async_nats::Client,
    processes: Arc<Processes>,
    slots: Arc<Slots>,
    max_payload: usize,
    /// The fleet's shared queue; or why there is none (no JetStream on the
    /// server, or turned off).
    queue: Result<Arc<Queue>, String>,
    /// Calls in flight to the queue at once, at most: while all are taken,
    /// the subscriptions are not read.
    forwarding: Arc<Semaphore>,
    forwarded: AtomicU64,
    dequeued: AtomicU64,
}

/// One function, as this worker serves it.
struct Function {
    entry: &'static Entry,
    backlog: Backlog,
    load: Load,
}

/// How long calls of a function take here. A call that finds every local process busy
/// goes to the shared queue, unless calls here are short: then it waits for
/// a process here, since the queue's round trip through the server would
/// cost more than the wait (and more of the server's CPU).
#[derive(Default)]
struct Load {
    /// The mean run time of recent calls, in ns (a moving average); 0 until
    /// one has run.
    mean_ns: AtomicU64,
    /// When each call under way started.
    running: Mutex<Vec<Instant>>,
}

/// Calls are short when they run for less than this.
const SHORT: Duration = Duration::from_millis(1);

impl Load {
    fn short(&self) -> bool {
        let mean = self.mean_ns.load(Ordering::Relaxed);
        mean != 0
            && mean < SHORT.as_nanos() as u64
            && self
                .running()
                .iter()
                .all(|started| started.elapsed() < SHORT)
    }

    fn running(&self) -> MutexGuard<'_, Vec<Instant>> {
        // (No poisoning to handle: a push or a remove cannot leave the list
        // half-done.)
        self.running.lock()
    }

    fn started(&self) -> Instant {
        let now = Instant::now();
        self.running().push(now);
        now
    }

    fn finished(&self, started: Instant) {
        let mut running = self.running();
        if let Some(at) = running.iter().position(|&s| s == started) {
            running.swap_remove(at);
        }
        drop(running);
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // Weight 1/8 to the newest call.
        let _ = self
            .mean_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
                Some(if mean == 0 {
                    took.max(1)
                } else {
                    (mean - mean / 8).saturating_add(took / 8).max(1)
                })
            });
    }
}

/// Free local worker processes: a call runs once it holds a [`Slot`].
struct Slots {
    permits: Arc<Semaphore>,
    /// How many are free, for the tasks that pull from the shared queue
    /// only while one is.
    free: watch::Sender<usize>,
}

/// A local worker process, taken for one call.
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Slots>,
}

impl Slots {
    fn new(count: usize) -> Arc<Slots> {
        Arc::new(Slots {
            permits: Arc::new(Semaphore::new(count)),
            free: watch::Sender::new(count),
        })
    }

    /// Sets `free` from the permits, under the watch's lock, so that two
    /// changes at once cannot leave it with the older count.
    fn update_free(&self) {
        self.free
            .send_modify(|free| *free = self.permits.available_permits());
    }

    fn slot(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        self.update_free();
        Slot {
            permit: Some(permit),
            slots: Arc::clone(self),
        }
    }

    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        Some(self.slot(permit))
    }

    /// Waits for a free process, first come, first served.
    async fn take(self: &Arc<Self>) -> Slot {
        // The semaphore is never closed.
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the slots' semaphore is never closed");
        self.slot(permit)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        // Released to a waiting call, it is still taken.
        self.slots.update_free();
    }
}

/// A call as it arrived, directly or from the queue.
struct Call {
    function: Arc<Function>,
    args: Bytes,
    reply_to: async_nats::Subject,
    received: Instant,
    /// The requester's deadline, from `received`.
    deadline: Option<Duration>,
}

/// Answers the calls of one function that NATS gives this worker: runs each
/// at once if a local process is free, and otherwise puts it in the shared
/// queue, behind the calls that waited first. It waits here for a process
/// instead without a shared queue, when calls of the function are short
/// here, and once the worker is stopping (it would not take them back).
async fn serve_function(
    serving: Arc<Serving>,
    function: Arc<Function>,
    mut calls: async_nats::Subscriber,
    mut stopping: watch::Receiver<bool>,
) {
    let mut draining = false;
    loop {
        let message = tokio::select! {
            biased;
            _ = stopping.changed(), if !draining => {
                // No more calls from NATS; those already received are
                // answered, then `next` ends.
                draining = true;
                let _ = calls.drain().await;
                continue;
            }
            message = calls.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        let Some(reply_to) = message.reply.clone() else {
            continue;
        };
        let call = Call {
            function: Arc::clone(&function),
            args: message.payload,
            reply_to,
            received: Instant::now(),
            // The requester's deadline: a call still waiting after it has
            // passed has no one to answer, and is dropped unrun.
            deadline: super::deadline_of(message.headers.as_ref()),
        };
        if !function.backlog.any()
            && let Some(slot) = serving.slots.try_take()
        {
            run(&serving, slot, call);
            continue;
        }
        let queue = serving
            .queue
            .as_ref()
            .ok()
            .filter(|_| !draining && !function.load.short())
            .cloned();
        let Some(queue) = queue else {
            // While this waits, the subscription is not read: a flood
            // cannot grow threads here; async-nats buffers up to 65,536
            // messages per subscription meanwhile, and drops more (a slow
            // consumer).
            let slot = serving.slots.take().await;
            run(&serving, slot, call);
            continue;
        };
        let Ok(forwarding) = Arc::clone(&serving.forwarding).acquire_owned().await else {
            return;
        };
        let serving = Arc::clone(&serving);
        tokio::spawn(async move {
            let _forwarding = forwarding;
            let left = call
                .deadline
                .map(|deadline| deadline.saturating_sub(call.received.elapsed()));
            let entry = call.function.entry;
            match queue
                .forward(entry, &call.reply_to, left, call.args.clone())
                .await
            {
                Forwarded::Stored => {
                    call.function.backlog.note_forwarded();
                    serving.forwarded.fetch_add(1, Ordering::Relaxed);
                }
                // The queue is full or gone: the call waits here.
                Forwarded::NotStored => {
                    let slot = serving.slots.take().await;
                    run(&serving, slot, call);
                }
                // It may be in the queue: running it here too could run it
                // twice. (If it is not, its requester's deadline fails it.)
                Forwarded::Unknown => {}
            }
        });
    }
}

/// Takes calls of one function from the shared queue, one each time a local
/// process is free, until the worker stops.
async fn pull_calls(
    serving: Arc<Serving>,
    queue: Arc<Queue>,
    function: Arc<Function>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut free = serving.slots.free.subscribe();
    let mut consumer = None;
    let mut pause = Duration::from_millis(10);
    loop {
        tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => return,
            free = free.wait_for(|free| *free > 0) => if free.is_err() {
                return;
            },
        }
        // (A pull under way when the worker stops ends within
        // `PULL_EXPIRES`, and what it brings is run or put back.)
        let pulled = match &consumer {
            Some(consumer) => queue::pull(consumer, &function.backlog).await,
            None => queue.consumer(function.entry).await.map(|opened| {
                consumer = Some(opened);
                None
            }),
        };
        match pulled {
            Ok(None) => pause = Duration::from_millis(10),
            Ok(Some(pulled)) => {
                pause = Duration::from_millis(10);
                // A direct call may have taken the process meanwhile: then
                // the call goes back to the head of the line, for a worker
                // that is free. (This one pulls again only once it is.)
                let Some(slot) = serving.slots.try_take() else {
                    pulled.put_back().await;
                    continue;
                };
                let Some(queued) = pulled.take().await else {
                    continue;
                };
                serving.dequeued.fetch_add(1, Ordering::Relaxed);
                run(
                    &serving,
                    slot,
                    Call {
                        function: Arc::clone(&function),
                        args: queued.args,
                        reply_to: queued.reply_to,
                        received: Instant::now(),
                        deadline: queued.left,
                    },
                );
            }
            Err(_) => {
                // The consumer, the stream or the connection is gone: open
                // them again, backing off while that fails.
                consumer = None;
                tokio::select! {
                    _ = stopping.wait_for(|stop| *stop) => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Runs `call` in a local worker process and sends the reply, on a blocking
/// thread (handing the reply back to an async task first would cost one
/// more thread wake-up per call).
fn run(serving: &Arc<Serving>, slot: Slot, call: Call) {
    let serving = Arc::clone(serving);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let Call {
            function,
            args,
            reply_to,
            received,
            deadline,
        } = call;
        let entry = function.entry;
        if deadline.is_some_and(|deadline| received.elapsed() >= deadline) {
            return;
        }
        let started = function.load.started();
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_locally(&serving.processes, entry, &args)
        }));
        function.load.finished(started);
        let mut answer = answer.unwrap_or_else(|_| {
            Reply::Failed(
                OffloadError::unavailable(entry.name, "the worker's call thread panicked")
                    .to_wire(),
            )
            .encode()
        });
        if answer.len() > serving.max_payload {
            answer = Reply::Failed(
                OffloadError::protocol(
                    entry.name,
                    format_args!(
                        "its result takes {} bytes, over the NATS server's maximum payload of \
                         {} bytes",
                        answer.len(),
                        serving.max_payload
                    ),
                )
                .to_wire(),
            )
            .encode();
        }
        // A requester that is gone (its deadline passed) is no error.
        let _ = runtime.block_on(serving.client.publish(reply_to, answer.into()));
    });
}

/// Runs one call in a local worker process; returns the encoded reply.
fn run_locally(processes: &Processes, entry: &'static Entry, args: &[u8]) -> Vec<u8> {
    let mut call = RawCall {
        entry,
        args,
        outcome: None,
    };
    processes.run(entry, &mut call);
    match call.outcome {
        Some(Ok(result)) => Reply::Done(&result).encode(),
        Some(Err(error)) => Reply::Failed(error.to_wire()).encode(),
        None => Reply::Failed(OffloadError::not_run().to_wire()).encode(),
    }
}

/// A call that arrived as bytes and leaves as bytes.
struct RawCall<'a> {
    entry: &'static Entry,
    args: &'a [u8],
    outcome: Option<Result<Vec<u8>, OffloadError>>,
}

impl WireCall for RawCall<'_> {
    fn function(&self) -> &'static str {
        (self.entry.key)()
    }

    fn encode_args(&self, out: &mut Vec<u8>) -> Result<(), OffloadError> {
        out.extend_from_slice(self.args);
        Ok(())
    }

    fn finish(&mut self, _entry: &Entry, result: &[u8]) -> Result<(), OffloadError> {
        self.outcome = Some(Ok(result.to_vec()));
        Ok(())
    }

    fn fail(&mut self, error: OffloadError) {
        self.outcome = Some(Err(error));
    }
}
