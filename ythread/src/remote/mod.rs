//! Remote workers through NATS: the [`Remote`] strategy sends each
//! `offload!(f, ..)` of an [`#[offloadable]`](crate::offloadable) function
//! to a fleet of [`Worker`]s on any number of machines, and the handler does
//! not change.
//!
//! The engine is core NATS request-reply with a queue group: a call is a
//! request on `ythread.<namespace>.<function path>.<signature fingerprint>`,
//! one member of the workers' queue group takes it, and the reply comes back
//! on the requester's inbox. Delivery is at most once: a worker that dies
//! fails its call instead of running the work twice. A call that no worker
//! serves (none running, or only workers of another build, whose subject
//! carries another fingerprint) fails at once ("no responders"), not at its
//! deadline.
//!
//! NATS gives a request to a member of the queue group at random, however
//! busy it is; a worker whose processes are all taken puts the call in the
//! fleet's shared queue (a JetStream work-queue stream) from which every
//! worker takes a call when one of its processes is free: see [`Worker`].
//!
//! A [`Worker`] runs each call in a local [`Processes`](crate::Processes), so a crash on the
//! worker machine comes back as "the worker process running `f` died:
//! killed by SIGSEGV", for that call only.
//!
//! Registered functions become a network API: use NATS authentication and
//! TLS ([`RemoteBuilder::connect_options`], [`WorkerBuilder::connect_options`]
//! take [`async_nats::ConnectOptions`]), and cap payloads
//! ([`RemoteBuilder::max_payload`]; the server's `max_payload`, 1 MiB by
//! default, applies too).
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use ythread::remote::Remote;
//! use ythread::{YieldableThread, offload, offloadable, yieldable};
//!
//! #[offloadable]
//! fn sumn(n: u64) -> u64 { (1..=n).sum() }
//!
//! #[yieldable]
//! fn handle(n: u64) -> u64 { offload!(sumn, n) }
//!
//! fn main() -> std::io::Result<()> {
//!     if std::env::args().any(|arg| arg == "--worker") {
//!         // On each worker machine: serve `sumn` (and every other
//!         // `#[offloadable]` function of this program) in local processes.
//!         return ythread::remote::Worker::builder("nats://127.0.0.1:4222").serve();
//!     }
//!     let cpu = Arc::new(Remote::connect("nats://127.0.0.1:4222")?);
//!     let thread = YieldableThread::new().apply(cpu).spawn(handle(10))?;
//!     assert_eq!(thread.join().unwrap(), 55);
//!     Ok(())
//! }
//! ```

mod queue;
mod serve;
mod wire;
mod worker;

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::sync::watch;

pub use self::worker::{Worker, WorkerBuilder};
pub use async_nats;

use self::wire::{Reply, check_token, credentials_from_url, deadline_header, redacted, subject};
use crate::error::OffloadError;
use crate::offloadable::{DepthLimit, Registration};
use crate::portable::portable_call;
use crate::sync::semaphore::FairSemaphore;
use crate::{Apply, Job};

/// Sends offloaded calls to remote [`Worker`]s through NATS. See the
/// [module](self).
///
/// Each call blocks its handler's thread (a plain OS thread: no async at the
/// call site) while a small runtime inside the strategy (one tokio thread)
/// does the I/O. At most [`RemoteBuilder::max_in_flight`] calls are in
/// flight; more wait, first come, first served, and the wait counts toward
/// their deadline.
///
/// # Failures
///
/// At the `offload!` point, as for [`Processes`](crate::Processes):
/// `Unavailable` when no worker serves the function (at once), when the
/// connection is lost while the call is in flight, or when it cannot be
/// re-established; `DeadlineExceeded` past [`RemoteBuilder::deadline`];
/// `Panicked` (message kept) and `WorkerDied` (signal named) from the worker
/// machine; `Protocol` for a payload over the cap or a malformed reply;
/// `NotPortable` for work that cannot leave the process.
///
/// # Panics
///
/// `apply` panics if it is called from inside an async runtime (a handler
/// run on a tokio worker thread): it blocks the thread it runs on.
pub struct Remote {
    runtime: Runtime,
    client: async_nats::Client,
    namespace: String,
    deadline: Duration,
    max_payload: usize,
    /// The deepest nesting decoded in a result.
    max_depth: usize,
    in_flight: FairSemaphore,
    /// Bumped each time the connection is lost; a call in flight across a
    /// change fails at once instead of waiting for its deadline.
    disconnects: watch::Receiver<u64>,
    calls: AtomicU64,
}

/// Builds a [`Remote`].
pub struct RemoteBuilder {
    url: String,
    namespace: String,
    deadline: Duration,
    max_payload: usize,
    max_depth: usize,
    max_in_flight: usize,
    options: Option<async_nats::ConnectOptions>,
}

impl Remote {
    /// Connects to the NATS server at `url` with the default settings.
    ///
    /// # Errors
    ///
    /// If the server cannot be reached or refuses the connection (for
    /// example, wrong credentials).
    pub fn connect(url: &str) -> io::Result<Remote> {
        Remote::builder(url).connect()
    }

    /// A builder, for a namespace, a deadline, credentials, TLS, ...
    pub fn builder(url: &str) -> RemoteBuilder {
        RemoteBuilder {
            url: url.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            deadline: Duration::from_secs(30),
            max_payload: 1 << 20,
            max_depth: crate::codec::Limits::DEFAULT.max_depth,
            max_in_flight: 1024,
            options: None,
        }
    }

    /// Calls sent so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for RemoteBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteBuilder")
            .field("url", &redacted(&self.url))
            .field("namespace", &self.namespace)
            .field("deadline", &self.deadline)
            .field("max_payload", &self.max_payload)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

/// The namespace of calls and workers unless one is set.
pub const DEFAULT_NAMESPACE: &str = "default";

impl RemoteBuilder {
    /// The namespace that separates fleets on one NATS server (default
    /// `"default"`): calls go to workers of the same namespace. A NATS
    /// subject token: no `.`, `*`, `>` or whitespace.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    /// How long a call may take, from the request to the reply (default
    /// 30 s). A worker that is lost (its machine gone) fails its call here.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The largest request, in bytes (default 1 MiB; the server's own
    /// `max_payload` applies too, whichever is smaller).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// The deepest nesting accepted in a result (default 128): a result
    /// nested deeper fails its call with
    /// [`Protocol`](crate::OffloadErrorKind::Protocol), naming this limit,
    /// and never overflows the stack here. The arguments are decoded by the
    /// remote worker's processes, under their own
    /// [`ProcessesBuilder::max_depth`](crate::ProcessesBuilder::max_depth).
    pub fn max_depth(mut self, levels: usize) -> Self {
        self.max_depth = levels;
        self
    }

    /// How many calls may be in flight at once (default 1024); more wait,
    /// first come, first served.
    ///
    /// # Panics
    ///
    /// Panics if `calls` is zero.
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        assert!(
            calls > 0,
            "Remote: at least one call must be allowed in flight"
        );
        self.max_in_flight = calls;
        self
    }

    /// NATS connection options: credentials (`user_and_password`, `token`,
    /// `nkey`, `credentials_file`), TLS (`require_tls`,
    /// `add_root_certificates`, `add_client_certificate`), reconnection.
    /// Credentials in the URL (`nats://user:password@host:4222`) are used
    /// when these options are not given.
    ///
    /// `Remote` sets the options' `event_callback` (it watches for lost
    /// connections, to fail the calls in flight at once): one set here is
    /// replaced.
    pub fn connect_options(mut self, options: async_nats::ConnectOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// Connects.
    ///
    /// # Errors
    ///
    /// If the runtime cannot start, the namespace is not a subject token, or
    /// the server cannot be reached or refuses the connection.
    pub fn connect(self) -> io::Result<Remote> {
        check_token(&self.namespace)?;
        let runtime = runtime("ythread-remote")?;
        let (tell, disconnects) = watch::channel(0u64);
        let (url, options) = credentials_from_url(&self.url, self.options)?;
        let options = options.event_callback(move |event| {
            let tell = tell.clone();
            async move {
                if let async_nats::Event::Disconnected = event {
                    tell.send_modify(|count| *count += 1);
                }
            }
        });
        let client = runtime
            .block_on(options.connect(url.as_str()))
            .map_err(|error| io::Error::other(format!("NATS at {url}: {error}")))?;
        let max_payload = self.max_payload.min(client.server_info().max_payload);
        Ok(Remote {
            runtime,
            client,
            namespace: self.namespace,
            deadline: self.deadline,
            max_payload,
            max_depth: self.max_depth,
            in_flight: FairSemaphore::new(self.max_in_flight),
            disconnects,
            calls: AtomicU64::new(0),
        })
    }
}

/// One runtime thread for the connection's I/O.
fn runtime(name: &str) -> io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
}

impl Apply for Remote {
    fn apply(&self, mut job: Job<'_>) {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "ythread::remote::Remote blocks the thread that drives the handler while its call \
             is in flight, and this thread runs an async runtime: drive handlers on plain \
             threads (`YieldableThread`), or from `spawn_blocking`"
        );
        let (call, registration) = match portable_call(job.wire()) {
            Ok(call) => call,
            Err(error) => return job.fail(error),
        };
        let name = registration.name;
        let mut payload = Vec::new();
        let depth = DepthLimit {
            levels: self.max_depth,
            setting: "RemoteBuilder::max_depth",
        };
        if let Err(error) = call.encode_args(registration, &mut payload, depth) {
            call.fail(error);
            return;
        }
        if payload.len() > self.max_payload {
            call.fail(OffloadError::protocol(
                name,
                format_args!(
                    "its arguments take {} bytes, over the maximum payload of {} bytes",
                    payload.len(),
                    self.max_payload
                ),
            ));
            return;
        }
        // While the connection is down (async-nats is reconnecting), a
        // request would wait out its whole deadline: fail at once.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            call.fail(OffloadError::unavailable(
                name,
                "not connected to NATS (the connection was lost; reconnecting)",
            ));
            return;
        }
        let subject = subject(&self.namespace, registration);
        self.calls.fetch_add(1, Ordering::Relaxed);
        // The deadline counts from here: waiting for one of the
        // `max_in_flight` calls is part of the call's time.
        // (A deadline too far to add, `Duration::MAX`, is none.)
        let now = std::time::Instant::now();
        let until = now
            .checked_add(self.deadline)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        let outcome = self.in_flight.run_until(until, || {
            let mut disconnects = self.disconnects.clone();
            disconnects.mark_unchanged();
            let left = until.saturating_duration_since(std::time::Instant::now());
            self.runtime.block_on(async {
                tokio::select! {
                    reply = tokio::time::timeout(
                        left,
                        // Without async-nats's own timeout (10 s): the
                        // deadline above is the only one. The worker gets it
                        // too, and drops a call whose requester is gone.
                        self.client.send_request(
                            subject,
                            async_nats::Request::new()
                                .payload(payload.into())
                                .headers(deadline_header(left))
                                .timeout(None),
                        ),
                    ) => Some(reply),
                    _ = disconnects.changed() => None,
                }
            })
        });
        let Some(outcome) = outcome else {
            call.fail(OffloadError::no_answer_by(name, self.deadline));
            return;
        };
        match outcome {
            None => call.fail(OffloadError::unavailable(
                name,
                "the connection to NATS was lost while the call was in flight",
            )),
            Some(Err(_elapsed)) => call.fail(OffloadError::no_answer_by(name, self.deadline)),
            Some(Ok(Err(error))) => call.fail(request_error(registration, &self.namespace, &error)),
            Some(Ok(Ok(message))) => match Reply::decode(&message.payload) {
                Ok(Reply::Done(result)) => {
                    if let Err(error) = call.finish(registration, result, depth) {
                        call.fail(error);
                    }
                }
                Ok(Reply::Failed(error)) => call.fail(error.into_error(name)),
                Err(error) => call.fail(OffloadError::protocol(
                    name,
                    format_args!("a malformed reply: {error}"),
                )),
            },
        }
    }
}

fn request_error(
    registration: &Registration,
    namespace: &str,
    error: &async_nats::RequestError,
) -> OffloadError {
    use async_nats::RequestErrorKind;
    match error.kind() {
        RequestErrorKind::NoResponders => OffloadError::unavailable(
            registration.name,
            format_args!(
                "no worker serves it on NATS (namespace `{namespace}`, signature `{}`): none is \
                 running, or they run another build of it",
                registration.signature
            ),
        ),
        RequestErrorKind::TimedOut => {
            OffloadError::unavailable(registration.name, "the NATS request timed out")
        }
        RequestErrorKind::MaxPayloadExceeded => OffloadError::protocol(
            registration.name,
            format_args!("its arguments are over the NATS server's maximum payload: {error}"),
        ),
        RequestErrorKind::InvalidSubject => OffloadError::protocol(
            registration.name,
            format_args!("its subject is not a valid NATS subject: {error}"),
        ),
        RequestErrorKind::Other => {
            OffloadError::unavailable(registration.name, format_args!("NATS: {error}"))
        }
    }
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("namespace", &self.namespace)
            .field("deadline", &self.deadline)
            .field("max_payload", &self.max_payload)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::wire::percent_decoded;
    use super::*;

    #[test]
    fn credentials_come_out_of_the_url_and_never_show() {
        let (url, _) = credentials_from_url("nats://alice:p%40ss:w@d@h:4222", None).unwrap();
        assert_eq!(url, "nats://h:4222");
        let (url, _) = credentials_from_url("tls://t0ken@[::1]:4222", None).unwrap();
        assert_eq!(url, "tls://[::1]:4222");
        let (url, _) = credentials_from_url("127.0.0.1:4222", None).unwrap();
        assert_eq!(url, "127.0.0.1:4222");
        assert_eq!(percent_decoded("p%40ss%3a%zz"), "p@ss:%zz");
        let error = credentials_from_url("nats://a:b@h1,nats://a:b@h2", None).unwrap_err();
        assert!(!error.to_string().contains("a:b"), "{error}");
        let debug = format!("{:?}", Remote::builder("nats://alice:s3cret@h:4222"));
        assert!(
            debug.contains("h:4222") && !debug.contains("s3cret"),
            "{debug}"
        );
        let debug = format!("{:?}", Worker::builder("nats://alice:s3cret@h:4222"));
        assert!(!debug.contains("s3cret"), "{debug}");
    }
}
