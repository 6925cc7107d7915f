//! The worker side of [`Remote`](super::Remote): [`Worker`] serves this
//! program's `#[offloadable]` functions on NATS and runs each call in a local
//! [`Processes`].

use std::io;
use std::sync::Arc;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::runtime::Runtime;
use tokio::sync::{Semaphore, watch};

use super::wire::Reply;
use super::{
    DEADLINE_HEADER, DEFAULT_NAMESPACE, check_token, credentials_from_url, runtime, subject,
};
use crate::error::OffloadError;
use crate::offloadable::{self, Entry, Lookup, OFFLOADABLE};
use crate::portable::WireCall;
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
/// ```no_run
/// fn main() -> std::io::Result<()> {
///     ythread::processes::init(); // the local worker processes start here
///     ythread::remote::Worker::builder("nats://10.0.0.1:4222")
///         .namespace("sums")
///         .serve() // until the process is stopped
/// }
/// ```
#[derive(Debug)]
pub struct Worker {
    runtime: Runtime,
    client: async_nats::Client,
    processes: Arc<Processes>,
    /// Calls admitted and not answered: one permit each.
    admitted: Arc<Semaphore>,
    capacity: u32,
    /// Tells the subscriptions to stop taking calls.
    stop: watch::Sender<bool>,
}

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    url: String,
    namespace: String,
    processes: Option<ProcessesBuilder>,
    options: Option<async_nats::ConnectOptions>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("url", &super::redacted(&self.url))
            .field("namespace", &self.namespace)
            .field("processes", &self.processes)
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
        }
    }

    /// The local worker processes that run the calls.
    pub fn processes(&self) -> &Processes {
        &self.processes
    }

    /// Serves until the process ends. (Dropping a `Worker` returned by
    /// [`WorkerBuilder::start`] stops serving: its subscriptions end with
    /// its connection.)
    pub fn wait(self) -> ! {
        self.runtime.block_on(std::future::pending::<()>());
        unreachable!("a pending future never completes")
    }

    /// Stops taking calls: unsubscribes, lets the calls under way answer
    /// (waiting up to `grace` for them), then closes the connection.
    pub fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        self.runtime.block_on(async {
            let _ = tokio::time::timeout(grace, self.admitted.acquire_many(self.capacity)).await;
            let _ = self.client.flush().await;
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

    /// Starts the local worker processes, connects, subscribes every
    /// `#[offloadable]` function, and returns once the server has the
    /// subscriptions: a call made after this returns reaches this worker.
    ///
    /// # Errors
    ///
    /// If the worker processes cannot start (see
    /// [`ProcessesBuilder::build`]), the namespace is not a subject token, or
    /// NATS cannot be reached or refuses the connection.
    pub fn start(self) -> io::Result<Worker> {
        check_token(&self.namespace)?;
        let processes = Arc::new(self.processes.unwrap_or_else(Processes::builder).build()?);
        let runtime = runtime("ythread-remote-worker")?;
        let (url, options) = credentials_from_url(&self.url, self.options)?;
        let client = runtime
            .block_on(options.connect(url.as_str()))
            .map_err(|error| io::Error::other(format!("NATS at {url}: {error}")))?;
        let queue = format!("ythread.{}", self.namespace);
        // Calls admitted at once: two per local worker process (one running,
        // one ready), so that the processes never wait for the network.
        // While all are taken, the subscriptions are not read, so a flood
        // cannot grow threads here; async-nats buffers up to 65,536 messages
        // per subscription meanwhile, and drops more (a slow consumer), and
        // a call whose requester is gone by its turn is dropped unrun.
        let capacity = u32::try_from(processes.workers() * 2).unwrap_or(u32::MAX);
        let admitted = Arc::new(Semaphore::new(capacity as usize));
        let (stop, stopping) = watch::channel(false);
        let max_payload = client.server_info().max_payload;
        runtime.block_on(async {
            for entry in OFFLOADABLE.iter() {
                // A name registered twice cannot be served: a call could
                // reach the wrong function.
                if !matches!(offloadable::by_name(entry.name), Lookup::Found(_)) {
                    continue;
                }
                let subscriber = client
                    .queue_subscribe(subject(&self.namespace, entry), queue.clone())
                    .await
                    .map_err(|error| io::Error::other(format!("NATS subscribe: {error}")))?;
                tokio::spawn(serve_function(
                    Serving {
                        client: client.clone(),
                        entry,
                        processes: Arc::clone(&processes),
                        admitted: Arc::clone(&admitted),
                        max_payload,
                    },
                    subscriber,
                    stopping.clone(),
                ));
            }
            client
                .flush()
                .await
                .map_err(|error| io::Error::other(format!("NATS flush: {error}")))
        })?;
        Ok(Worker {
            runtime,
            client,
            processes,
            admitted,
            capacity,
            stop,
        })
    }

    /// [`start`](WorkerBuilder::start), then serve until the process ends.
    ///
    /// # Errors
    ///
    /// As [`start`](WorkerBuilder::start); once serving, it does not return.
    pub fn serve(self) -> io::Result<()> {
        self.start()?.wait()
    }
}

/// What serving one function needs.
struct Serving {
    client: async_nats::Client,
    entry: &'static Entry,
    processes: Arc<Processes>,
    admitted: Arc<Semaphore>,
    max_payload: usize,
}

/// Answers the calls of one function, each on a blocking thread that waits
/// for a local worker process and sends the reply (handing it back to an
/// async task first would cost one more thread wake-up per call).
async fn serve_function(
    serving: Serving,
    mut calls: async_nats::Subscriber,
    mut stopping: watch::Receiver<bool>,
) {
    let Serving {
        client,
        entry,
        processes,
        admitted,
        max_payload,
    } = serving;
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
        let received = Instant::now();
        // The requester's deadline: a call still waiting here after it has
        // passed has no one to answer, and is dropped unrun.
        let deadline = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(DEADLINE_HEADER))
            .and_then(|value| value.as_str().parse::<u64>().ok())
            .map(Duration::from_millis);
        let Ok(permit) = Arc::clone(&admitted).acquire_owned().await else {
            return;
        };
        let client = client.clone();
        let processes = Arc::clone(&processes);
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if deadline.is_some_and(|deadline| received.elapsed() >= deadline) {
                return;
            }
            let args = message.payload;
            let mut answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&processes, entry, &args)
            }))
            .unwrap_or_else(|_| {
                Reply::Failed(
                    OffloadError::unavailable(entry.name, "the worker's call thread panicked")
                        .to_wire(),
                )
                .encode()
            });
            if answer.len() > max_payload {
                answer = Reply::Failed(
                    OffloadError::protocol(
                        entry.name,
                        format_args!(
                            "its result takes {} bytes, over the NATS server's maximum payload \
                             of {max_payload} bytes",
                            answer.len()
                        ),
                    )
                    .to_wire(),
                )
                .encode();
            }
            // A requester that is gone (its deadline passed) is no error.
            let _ = runtime.block_on(client.publish(reply_to, answer.into()));
        });
    }
}

/// Runs one call in a local worker process; returns the encoded reply.
fn run(processes: &Processes, entry: &'static Entry, args: &[u8]) -> Vec<u8> {
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
