//! The public face of a remote worker: [`Worker`], which serves this
//! program's `#[offloadable]` functions to [`Remote`](super::Remote)
//! requesters on NATS and runs each call in a local [`Processes`], and
//! [`WorkerBuilder`]. (The loops that take and answer the calls are
//! `serve.rs`.)

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::sync::{Semaphore, watch};

use super::queue::{Backlog, Queue};
use super::serve::{Function, Load, MAX_FORWARDING, Serving, Slots, pull_calls, serve_function};
use super::wire::{check_token, credentials_from_url, queue_group, redacted, subject};
use super::{DEFAULT_NAMESPACE, runtime};
use crate::offloadable::{self, Lookup, OFFLOADABLE};
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
///     // (Its local worker processes are this program too: they serve
///     // before `main`.)
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
            .field("url", &redacted(&self.url))
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
        let group = queue_group(&self.namespace);
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
            for registration in OFFLOADABLE.iter() {
                // A name registered twice cannot be served: a call could
                // reach the wrong function.
                if !matches!(offloadable::by_name(registration.name), Lookup::Found(_)) {
                    continue;
                }
                let calls = serving
                    .client
                    .queue_subscribe(subject(&self.namespace, registration), group.clone())
                    .await
                    .map_err(|error| io::Error::other(format!("NATS subscribe: {error}")))?;
                let function = Arc::new(Function {
                    registration,
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
