//! The worker side of [`Remote`](super::Remote): [`Worker`] serves this
//! program's `#[offloadable]` functions on NATS and runs each call in a local
//! [`Processes`].

use std::io;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::runtime::Runtime;

use super::wire::Reply;
use super::{DEFAULT_NAMESPACE, check_token, runtime, subject};
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
}

/// Builds a [`Worker`].
#[derive(Debug)]
pub struct WorkerBuilder {
    url: String,
    namespace: String,
    processes: Option<ProcessesBuilder>,
    options: Option<async_nats::ConnectOptions>,
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

    /// Stops taking calls: unsubscribes, lets the calls under way answer,
    /// then closes the connection.
    pub fn stop(self) {
        let _ = self.runtime.block_on(self.client.drain());
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
        let client = runtime
            .block_on(self.options.unwrap_or_default().connect(self.url.as_str()))
            .map_err(|error| io::Error::other(format!("NATS at {}: {error}", self.url)))?;
        let queue = format!("ythread.{}", self.namespace);
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
                    client.clone(),
                    subscriber,
                    entry,
                    Arc::clone(&processes),
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

/// Answers the calls of one function, each on a blocking thread of its own
/// that waits for a local worker process.
async fn serve_function(
    client: async_nats::Client,
    mut calls: async_nats::Subscriber,
    entry: &'static Entry,
    processes: Arc<Processes>,
) {
    while let Some(message) = calls.next().await {
        let Some(reply_to) = message.reply else {
            continue;
        };
        let client = client.clone();
        let processes = Arc::clone(&processes);
        // The call runs on a blocking thread, which also sends the reply:
        // handing it back to an async task first would cost one more
        // thread wake-up per call.
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let args = message.payload;
            let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&processes, entry, &args)
            }))
            .unwrap_or_else(|_| {
                Reply::Failed(
                    OffloadError::unavailable(entry.name, "the worker's call thread panicked")
                        .to_wire(),
                )
                .encode()
            });
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

    fn encode_args(&self, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
        out.extend_from_slice(self.args);
        Ok(())
    }

    fn finish(&mut self, _entry: &Entry, result: &[u8]) -> Result<(), String> {
        self.outcome = Some(Ok(result.to_vec()));
        Ok(())
    }

    fn fail(&mut self, error: OffloadError) {
        self.outcome = Some(Err(error));
    }
}
