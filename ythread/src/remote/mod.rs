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
//! # Outcomes
//!
//! Each failure says what is known of the call: `Unavailable` means it did
//! not run (retrying cannot run it twice); `MayHaveRun` (the connection was
//! lost while it was in flight) and `DeadlineExceeded` (no answer in time)
//! mean it may have run; see [`Remote`]'s table. A worker drops, unrun, a
//! call whose requester has stopped waiting: past its deadline (by the
//! machines' clocks: keep them in step with NTP), or cancelled (a
//! requester that loses its connection cancels the calls in flight on it;
//! a worker that had started one lets it finish). A call runs at most for
//! its requester's deadline, and at most [`WorkerBuilder::deadline`]
//! (60 s by default), then is killed with its local process.
//!
//! # Security
//!
//! Registered functions become a network API, and NATS is the boundary:
//! who may connect, publish and subscribe decides who may run them, read
//! their arguments, and answer. What ythread guards against is a client of
//! the same NATS server that should not have a say in a call: it must not
//! make a requester take a result no worker sent, make a worker run a call
//! no requester sent, or have a call's result sent to it. Two deployments
//! hold against it:
//!
//! - **Per-role NATS permissions** (recommended): every requester has a
//!   user of its own, with its own inbox prefix
//!   (`ConnectOptions::custom_inbox_prefix("_INBOX.<name>")`), that may
//!   publish `ythread.<namespace>.>` and `ythread-cancel.<namespace>`, and
//!   subscribe to `_INBOX.<name>.>` only; workers may subscribe to
//!   `ythread.<namespace>.>`, `ythread-cancel.<namespace>` and their own
//!   inbox, and publish `_INBOX.>` (the requesters' replies), `$JS.API.>`,
//!   `$JS.ACK.>` and `ythread-queue.<namespace>.>` (the shared queue). Then
//!   a requester can neither read another's calls nor answer them; only
//!   workers answer.
//! - **One shared credential plus a signing key**
//!   ([`RemoteBuilder::signing_key`], [`WorkerBuilder::signing_key`]): every
//!   call and reply is signed (HMAC-SHA256 over the subject, the reply
//!   subject, the deadline and the payload), workers run only signed calls,
//!   requesters take only signed replies. Whoever holds the NATS credential
//!   but not the key can read calls and results, and can keep calls from
//!   being answered, but cannot forge, inject or redirect one.
//!
//! Use TLS ([`RemoteBuilder::connect_options`] takes
//! [`async_nats::ConnectOptions`]) where the network is not yours. What
//! remains by design:
//!
//! - A call sent again unchanged (a replay) before its deadline may run
//!   again (a worker drops a second copy it receives itself; another worker
//!   runs it): work with side effects should be idempotent.
//! - A replay can draw a worker's signed "busy" refusal while the original
//!   runs on another worker: under a shared credential, `Unavailable` from
//!   a worker describes the copy that worker received.
//! - async-nats drops its connection on a header block it cannot parse, or
//!   a reply subject that is not UTF-8: whoever may publish calls can make
//!   workers reconnect (calls in flight then fail `MayHaveRun`).
//! - Under a shared credential, a forged "no responders" notice can fail a
//!   call `Unavailable` that a worker then runs; per-role permissions (no
//!   one but workers publishes on requesters' inboxes) exclude it.
//! - The shared queue is first come, first served for the whole fleet,
//!   without fairness between requesters: one requester's burst waits ahead
//!   of another's calls.
//! - Error texts that come back from a worker (a panic's message) are the
//!   worker's words: show them as untrusted input.
//! - Payloads are capped by the NATS server's `max_payload` (1 MiB unless
//!   its configuration raises it, up to 64 MiB); a call over it fails
//!   before it is sent, naming the setting.
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

mod hex;
mod io;
pub(crate) mod observe;
mod queue;
mod requests;
mod serve;
mod signing;
mod threads;
mod wire;
mod worker;

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub use self::worker::{Worker, WorkerBuilder};
/// The NATS client `Remote` and `Worker` are built on, re-exported because
/// [`RemoteBuilder::connect_options`] and `WorkerBuilder::connect_options`
/// take its `ConnectOptions` (credentials, TLS, nkeys): use it from here to
/// get the version ythread was built with.
///
/// It is part of ythread's public API, pinned to async-nats 0.51.x: moving
/// to another async-nats minor version changes this re-export, so it is a
/// breaking change of ythread (a new minor version while ythread is 0.x),
/// listed in the changelog.
pub use async_nats;

use self::io::{Io, block_on};
use self::observe::{InFlightGauge, TraceParent};
use self::requests::{Answer, Calls, dispatch};
use self::signing::{Key, SIGNATURE_HEADER, Signed};
use self::wire::{
    Refused, Reply, call_headers, cancel_subject, check_token, credentials_from_url, epoch_ms_in,
    redacted, subject,
};
use crate::error::OffloadError;
use crate::offloadable::{DepthLimit, Registration};
use crate::portable::portable_call;
use crate::sync::semaphore::FairSemaphore;
use crate::{Apply, Job};

/// Sends offloaded calls to remote [`Worker`]s through NATS. See the
/// [module](self).
///
/// Each call blocks its handler's thread (a plain OS thread, or a tokio
/// application's `spawn_blocking` thread: no async at the call site) while
/// a small runtime inside the strategy (one tokio thread) does the I/O. At
/// most [`RemoteBuilder::max_in_flight`] calls are in flight; more wait,
/// first come, first served, and the wait counts toward their deadline.
///
/// # Failures
///
/// At the `offload!` point, as for [`Processes`](crate::Processes), each
/// saying what is known of the call:
///
/// | kind | the call |
/// |---|---|
/// | `Unavailable` | did not run: no worker serves the function (at once), not connected, NATS refused to let it be sent (a permission, named), or a worker was too busy to take it |
/// | `MayHaveRun` | may have run: the connection was lost while it was in flight (it is then cancelled at the workers, which drop it unless they started it) |
/// | `DeadlineExceeded` | may have run: no answer within [`RemoteBuilder::deadline`] (workers drop it unrun past that time, and kill it if it runs past it) |
/// | `Panicked`, `WorkerDied` | ran (or started) on the worker machine: the message, the signal |
/// | `Protocol` | did not run if its arguments were over a cap (named); ran if its result was (it says so); otherwise a malformed reply |
/// | `NotPortable` | did not run: the work cannot leave the process |
///
/// The texts of these errors that come with a detail end with the call's
/// name, `{function} call {id}` (plus ` trace {trace id}` with the
/// `tracing` feature), as the worker's span and events name it: `id` is
/// this requester's number for the call, in hex, the last token of its
/// reply subject.
///
/// # Observability
///
/// With the `tracing` feature, each call carries a W3C Trace Context
/// header, `traceparent: 00-<trace id>-<parent id>-01`: the trace id is a
/// random 128-bit one of ythread's (or, for a call made while a [`Worker`]
/// thread serves one, the trace id of that call: the trace goes on), the
/// parent id the current span's `tracing` id (the offload's span; random
/// outside any span). The trace id is recorded in the current span's
/// `trace_id` field if it declares one, and otherwise told in a `debug`
/// event inside it (target `ythread::remote`, fields `trace_id` and
/// `call`). The header is not covered by a call's
/// [signature](RemoteBuilder::signing_key): it is a label, which a worker
/// trusts for nothing else (see [`Worker`]'s "Observability").
///
/// With the `metrics` feature (each with a `namespace` label):
///
/// | metric | what |
/// |---|---|
/// | `ythread_remote_calls_in_flight` (gauge) | calls sent and not answered yet |
/// | `ythread_remote_replies_total{outcome}` (counter) | calls that went on to be sent (or waited for one of the calls in flight to end, and ran out of time), once each when they ended; a call refused here before (arguments that do not encode or are too large, the inbox refused, not connected) is counted by `ythread_offloads_total` only: `ok`, or the failure's [`OffloadErrorKind`](crate::OffloadErrorKind) in snake case (`panicked`, `unavailable`, `may_have_run`, `deadline_exceeded`, `worker_died`, `protocol`, ...) |
pub struct Remote {
    /// The runtime of the connection's I/O: it lives as long as this.
    _io: Io,
    client: async_nats::Client,
    calls: Arc<Calls>,
    namespace: String,
    deadline: Duration,
    /// The largest request set by the builder, if any.
    max_payload: Option<usize>,
    /// The server's largest payload, as it said when (re)connected.
    server_max_payload: Arc<AtomicUsize>,
    /// The deepest nesting decoded in a result.
    max_depth: usize,
    in_flight: FairSemaphore,
    sent: AtomicU64,
}

/// Builds a [`Remote`].
pub struct RemoteBuilder {
    url: String,
    namespace: String,
    deadline: Duration,
    max_payload: Option<usize>,
    max_depth: usize,
    max_in_flight: usize,
    signing_key: Option<Vec<u8>>,
    options: Option<async_nats::ConnectOptions>,
}

impl Remote {
    /// Connects to the NATS server at `url` with the default settings.
    ///
    /// # Errors
    ///
    /// If the server cannot be reached or refuses the connection (for
    /// example, wrong credentials), or refuses this requester's inbox (a
    /// permission).
    pub fn connect(url: &str) -> std::io::Result<Remote> {
        Remote::builder(url).connect()
    }

    /// A builder, for a namespace, a deadline, credentials, TLS, ...
    pub fn builder(url: &str) -> RemoteBuilder {
        RemoteBuilder {
            url: url.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            deadline: Duration::from_secs(30),
            max_payload: None,
            max_depth: crate::codec::Limits::DEFAULT.max_depth,
            max_in_flight: 1024,
            signing_key: None,
            options: None,
        }
    }

    /// Calls sent so far.
    pub fn calls(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Replies dropped so far because they did not verify with the
    /// [signing key](RemoteBuilder::signing_key): from workers with another
    /// key or none, or forged.
    pub fn rejected(&self) -> u64 {
        self.calls.rejected()
    }

    /// The largest arguments a call can carry now, in bytes: the smaller of
    /// [`RemoteBuilder::max_payload`] and the server's `max_payload`.
    fn max_payload(&self) -> usize {
        let server = self.server_max_payload.load(Ordering::Relaxed);
        self.max_payload.map_or(server, |mine| mine.min(server))
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
            .field("signing_key", &self.signing_key.as_ref().map(|_| "<set>"))
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
    /// The worker is told: it drops the call unrun once this has passed
    /// (by the machines' clocks: keep them in step, with NTP), and kills it
    /// if it runs past it. (A worker also bounds every call by its own
    /// [`WorkerBuilder::deadline`], 60 s unless set: raise both for longer
    /// calls.)
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The largest arguments a call may carry, in bytes (default: the NATS
    /// server's `max_payload`, 1 MiB unless its configuration raises it, up
    /// to 64 MiB; the call's headers, about 100 bytes, count toward the
    /// server's cap). A call over it fails with
    /// [`Protocol`](crate::OffloadErrorKind::Protocol) before it is sent,
    /// naming the setting to raise.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = Some(bytes);
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

    /// The fleet's signing key (at least 32 random bytes), the same as its
    /// workers' [`WorkerBuilder::signing_key`]: calls are signed with it,
    /// and only replies signed with it count (others are dropped and
    /// counted in [`Remote::rejected`]). For fleets whose requesters and
    /// workers share one NATS credential: whoever else holds it can then
    /// neither forge a result nor redirect a call. See the module's
    /// "Security".
    pub fn signing_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.signing_key = Some(key.as_ref().to_vec());
        self
    }

    /// NATS connection options: credentials (`user_and_password`, `token`,
    /// `nkey`, `credentials_file`), TLS (`require_tls`,
    /// `add_root_certificates`, `add_client_certificate`), reconnection,
    /// the inbox prefix (`custom_inbox_prefix`, for per-requester
    /// permissions). Credentials in the URL
    /// (`nats://user:password@host:4222`) are used when these options are
    /// not given.
    ///
    /// `Remote` sets the options' `event_callback` (it watches for lost
    /// connections and refused permissions, to answer the calls concerned
    /// at once): one set here is replaced.
    pub fn connect_options(mut self, options: async_nats::ConnectOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// Connects. Works from any thread, an async runtime's included.
    ///
    /// # Errors
    ///
    /// If the runtime cannot start, the namespace is not a subject token,
    /// the signing key is shorter than 32 bytes, the server cannot be
    /// reached or refuses the connection, or it refuses this requester's
    /// subscription to its inbox (a permission: the error names it).
    pub fn connect(self) -> std::io::Result<Remote> {
        check_token(&self.namespace)?;
        // The units and help texts of the series, for the recorder
        // installed now.
        #[cfg(feature = "metrics")]
        crate::meters::describe_to_current();
        let key = self
            .signing_key
            .as_deref()
            .map(|key| Key::new(key, "RemoteBuilder::signing_key"))
            .transpose()?;
        let io = Io::new("ythread-remote", 1)?;
        let (url, options) = credentials_from_url(&self.url, self.options)?;
        let events = Arc::new(Events {
            calls: OnceLock::new(),
            client: OnceLock::new(),
            cancel_subject: cancel_subject(&self.namespace),
            server_max_payload: Arc::new(AtomicUsize::new(0)),
        });
        let options = options
            // Replies are read as fast as they come (and checked): NATS's
            // client buffers no more than the calls in flight can answer.
            .subscription_capacity(self.max_in_flight.max(64))
            .event_callback({
                let events = Arc::clone(&events);
                move |event| {
                    let events = Arc::clone(&events);
                    async move { events.on(event).await }
                }
            });
        let connecting = Arc::clone(&events);
        let (client, calls) = io.wait(async move {
            let client = options
                .connect(url.as_str())
                .await
                .map_err(|error| std::io::Error::other(format!("NATS at {url}: {error}")))?;
            let calls = Arc::new(Calls::new(client.new_inbox(), key));
            let _ = connecting.calls.set(Arc::clone(&calls));
            let _ = connecting.client.set(client.clone());
            connecting
                .server_max_payload
                .store(client.server_info().max_payload, Ordering::Relaxed);
            let inbox = client
                .subscribe(calls.inbox_subjects())
                .await
                .map_err(|error| std::io::Error::other(format!("NATS subscribe: {error}")))?;
            client
                .flush()
                .await
                .map_err(|error| std::io::Error::other(format!("NATS flush: {error}")))?;
            // The server answers a refused subscription before the flush's
            // reply; its event reaches the callback a moment later.
            for _ in 0..10 {
                if calls.inbox_refused().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if let Some(refused) = calls.inbox_refused() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "NATS refuses this requester's inbox ({refused}): its user needs \
                         permission to subscribe to `{}` (its inbox prefix: `_INBOX.>`, or \
                         the prefix set with `ConnectOptions::custom_inbox_prefix`)",
                        calls.inbox_subjects()
                    ),
                ));
            }
            tokio::spawn(dispatch(Arc::clone(&calls), inbox));
            std::io::Result::Ok((client, calls))
        })??;
        Ok(Remote {
            _io: io,
            client,
            calls,
            namespace: self.namespace,
            deadline: self.deadline,
            max_payload: self.max_payload,
            server_max_payload: Arc::clone(&events.server_max_payload),
            max_depth: self.max_depth,
            in_flight: FairSemaphore::new(self.max_in_flight),
            sent: AtomicU64::new(0),
        })
    }
}

/// What the connection's events act on.
struct Events {
    calls: OnceLock<Arc<Calls>>,
    client: OnceLock<async_nats::Client>,
    cancel_subject: String,
    server_max_payload: Arc<AtomicUsize>,
}

impl Events {
    async fn on(&self, event: async_nats::Event) {
        let Some(calls) = self.calls.get() else {
            return;
        };
        match event {
            async_nats::Event::Disconnected => {
                let (Some(cancel), Some(client)) = (calls.lost(), self.client.get()) else {
                    return;
                };
                // Queued by the client until it reconnects, behind the calls
                // it could not send yet: a worker may get such a call just
                // before the cancellation, and start it; those still waiting
                // at a worker (in the shared queue, or for a process) are
                // dropped.
                let mut headers = async_nats::HeaderMap::new();
                if let Some(key) = calls.key() {
                    let signed = Signed::Cancel {
                        subject: &self.cancel_subject,
                        payload: &cancel,
                    };
                    headers.insert(SIGNATURE_HEADER, key.sign(&signed).as_str());
                }
                let _ = client
                    .publish_with_headers(self.cancel_subject.clone(), headers, cancel.into())
                    .await;
            }
            async_nats::Event::Connected => {
                if let Some(client) = self.client.get() {
                    self.server_max_payload
                        .store(client.server_info().max_payload, Ordering::Relaxed);
                }
            }
            async_nats::Event::ServerError(async_nats::ServerError::Other(text)) => {
                if let Some(refused) = Refused::parse(&text)
                    && !calls.refused(&refused, &text)
                {
                    // Not a call's: the cancellations (workers then run
                    // what a lost connection answered "may have run").
                    eprintln!("ythread::remote::Remote: NATS refused: {text}");
                }
            }
            _ => {}
        }
    }
}

impl Apply for Remote {
    fn apply(&self, mut job: Job<'_>) {
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
        let max_payload = self.max_payload();
        if payload.len() > max_payload {
            call.fail(OffloadError::protocol(
                name,
                too_large(
                    "its arguments",
                    payload.len(),
                    max_payload,
                    self.max_payload,
                ),
            ));
            return;
        }
        if let Some(refused) = self.calls.inbox_refused() {
            call.fail(OffloadError::unavailable(
                name,
                format_args!(
                    "it did not run: NATS refuses this requester's inbox, where replies come \
                     ({refused})"
                ),
            ));
            return;
        }
        // While the connection is down (async-nats is reconnecting), a
        // request would wait in the client: fail at once, unsent.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            call.fail(OffloadError::unavailable(
                name,
                "it did not run: not connected to NATS (the connection was lost; reconnecting)",
            ));
            return;
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        // The deadline counts from here: waiting for one of the
        // `max_in_flight` calls is part of the call's time.
        // (A deadline too far to add, `Duration::MAX`, is none.)
        let now = Instant::now();
        let until = now
            .checked_add(self.deadline)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        // Its trace context: this thread's (the offload's span, or the
        // call a worker runs here), sent as the `traceparent` header.
        #[cfg(feature = "tracing")]
        let trace = observe::outgoing();
        #[cfg(not(feature = "tracing"))]
        let trace: Option<TraceParent> = None;
        let outcome = self.in_flight.run_until(until, || {
            self.send_and_wait(registration, payload, until, trace.as_ref())
        });
        let outcome = match outcome {
            // Out of time waiting to be sent.
            None => Err(OffloadError::unavailable(
                name,
                format_args!(
                    "it did not run: it waited its whole deadline of {:?} for one of the \
                     calls in flight to end (`RemoteBuilder::max_in_flight`)",
                    self.deadline
                ),
            )),
            Some(outcome) => outcome,
        };
        let failure = match outcome {
            Err(error) => Some(error),
            Ok((result, named)) => match Reply::decode(&result) {
                Ok(Reply::Done(result)) => call.finish(registration, result, depth).err(),
                Ok(Reply::Failed(error)) => Some(error.into_error(name, &named)),
                Err(error) => Some(OffloadError::protocol(
                    name,
                    format_args!("a malformed reply: {error}; {named}"),
                )),
            },
        };
        observe::replied(
            &self.namespace,
            crate::error::outcome_label(failure.as_ref().map(OffloadError::kind)),
        );
        if let Some(error) = failure {
            call.fail(error);
        }
    }

    fn name(&self) -> &'static str {
        "Remote"
    }
}

impl Remote {
    /// Sends one call and waits for what answers it, until `until`;
    /// returns the reply, and the call's name in texts
    /// (`observe::designation`), which its errors end with.
    fn send_and_wait(
        &self,
        registration: &'static Registration,
        payload: Vec<u8>,
        until: Instant,
        trace: Option<&TraceParent>,
    ) -> Result<(bytes::Bytes, Arc<str>), OffloadError> {
        let name = registration.name;
        let subject: Arc<str> = subject(&self.namespace, registration).into();
        let left = until.saturating_duration_since(Instant::now());
        let (mut headers, signed_headers) = call_headers(left);
        let in_flight = self
            .calls
            .register(Arc::clone(&subject), epoch_ms_in(left), |id| {
                observe::designation(name, id, trace)
            });
        let _gauge = InFlightGauge::new(&self.namespace);
        let call = &in_flight.call;
        // Not signed: a label, trusted for nothing else (see `observe.rs`).
        #[cfg(feature = "tracing")]
        if let Some(trace) = trace {
            headers.insert(observe::TRACEPARENT_HEADER, trace.header().as_str());
            observe::sending(trace, call);
        }
        if let Some(key) = self.calls.key() {
            let signed = Signed::Call {
                subject: &subject,
                reply: &in_flight.reply_to,
                headers: &signed_headers,
                payload: &payload,
            };
            headers.insert(SIGNATURE_HEADER, key.sign(&signed).as_str());
        }
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        crate::observe::sent();
        // Handing the call to the client's channel: ready at once unless
        // the channel is full.
        let sent = block_on(self.client.publish_with_reply_and_headers(
            subject.to_string(),
            in_flight.reply_to.clone(),
            headers,
            payload.into(),
        ));
        if let Err(error) = sent {
            return Err(match error.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded => OffloadError::protocol(
                    name,
                    format_args!("it did not run: {error}; {SERVER_CAP}; {call}"),
                ),
                _ => OffloadError::unavailable(
                    name,
                    format_args!("it did not run: NATS could not take it: {error}; {call}"),
                ),
            });
        }
        match in_flight.answer.recv_deadline(until) {
            Ok(Answer::Reply(result)) => Ok((result, Arc::clone(call))),
            Ok(Answer::NoResponders) => Err(no_responders(registration, &self.namespace, call)),
            Ok(Answer::Lost) => Err(OffloadError::may_have_run(
                name,
                format_args!(
                    "the connection to NATS was lost while it was in flight; it is cancelled at \
                     the workers, which drop it unless they started it; {call}"
                ),
            )),
            Ok(Answer::Deaf(text)) => Err(OffloadError::may_have_run(
                name,
                format_args!(
                    "NATS refused this requester's inbox after the call was sent ({text}): its \
                     reply cannot come; {call}"
                ),
            )),
            Ok(Answer::Refused(text)) => Err(OffloadError::unavailable(
                name,
                format_args!(
                    "it did not run: NATS refused it ({text}): this requester's user needs \
                     permission to publish to `ythread.{}.>` (or its permissions name another \
                     namespace than this requester's); {call}",
                    self.namespace
                ),
            )),
            Err(_) => Err(match in_flight.rejected() {
                0 => OffloadError::no_answer_by_noting(name, self.deadline, call),
                rejected => OffloadError::no_answer_by_noting(
                    name,
                    self.deadline,
                    format_args!(
                        "{rejected} repl(ies) to it did not verify with the signing key and were \
                         dropped: from a worker with another key or none (check that requesters \
                         and workers hold the same key), or forged; {call}"
                    ),
                ),
            }),
        }
    }
}

/// What raises the server's cap on payloads.
const SERVER_CAP: &str = "the NATS server's `max_payload` caps every message (1 MiB by default): \
     raise it in the server's configuration (`max_payload: 8MB`, up to 64 MiB) on every server \
     of the cluster";

/// The error text of a payload over a cap.
fn too_large(what: &str, size: usize, cap: usize, setting: Option<usize>) -> String {
    let raise = match setting {
        Some(mine) if mine <= cap => "raise `RemoteBuilder::max_payload`".to_owned(),
        _ => SERVER_CAP.to_owned(),
    };
    format!(
        "it did not run: {what} take {size} bytes, over the largest payload of {cap} bytes; {raise}"
    )
}

fn no_responders(registration: &Registration, namespace: &str, call: &str) -> OffloadError {
    OffloadError::unavailable(
        registration.name,
        format_args!(
            "it did not run: no worker serves it on NATS (namespace `{namespace}`, signature \
             `{}`): none is running, they serve another namespace, or they run another build \
             of it; {call}",
            registration.signature
        ),
    )
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("namespace", &self.namespace)
            .field("deadline", &self.deadline)
            .field("max_payload", &self.max_payload())
            .field("calls", &self.calls())
            .field("rejected", &self.rejected())
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
