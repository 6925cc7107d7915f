//! How offloaded work fails: [`OffloadError`], what `try_offload!` returns,
//! and [`HandlerDropped`], the payload of the unwind that drops a suspended
//! handler.
//!
//! (Slightly over 500 lines: half of it is the two types' public
//! documentation and examples. How a worker process died, in words, is
//! `processes/death.rs`; the error's wire form, `remote/wire.rs`.)

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::io;
use std::panic::{self, Location};
use std::time::Duration;

use crate::processes::death::Death;
use crate::sync::SyncWrapper;

/// Why a piece of offloaded work produced no value: what `try_offload!`
/// returns instead of the work's result.
///
/// `offload!` turns the same failures into a panic at the `offload!` point:
/// the work's own panic is resumed with its original payload, anything else
/// panics with this error's message. `try_offload!` hands them to the handler
/// as a value, so that it can recover without a `catch_unwind`, which would
/// also catch the unwind that drops the handler (see [`HandlerDropped`]).
///
/// # Example
///
/// ```
/// use ythread::{OffloadErrorKind, Yieldable, try_offload, yieldable};
///
/// fn parse(text: &str) -> u64 {
///     text.parse().expect("a number")
/// }
///
/// #[yieldable]
/// fn parse_or_zero(text: String) -> u64 {
///     match try_offload!(parse, &text) {
///         Ok(n) => n,
///         Err(error) => {
///             assert_eq!(error.kind(), OffloadErrorKind::Panicked);
///             assert!(error.panic_message().unwrap().contains("a number"));
///             0
///         }
///     }
/// }
///
/// assert_eq!(parse_or_zero("12".into()).run(), 12);
/// # std::panic::set_hook(Box::new(|_| {})); // keep the doctest's output quiet
/// assert_eq!(parse_or_zero("twelve".into()).run(), 0);
/// ```
pub struct OffloadError {
    repr: Repr,
}

enum Repr {
    /// The work panicked. The payload is wrapped so that the error is `Sync`
    /// (a payload is `Send` but not `Sync`): it is only ever reached by
    /// value.
    Panicked {
        payload: SyncWrapper<Box<dyn Any + Send + 'static>>,
        /// The payload's text, when it is a `&str` or a `String` (what
        /// `panic!` produces).
        message: Option<String>,
        /// The function, when it panicked in a worker process (its panic
        /// was printed there, not here).
        elsewhere: Option<String>,
    },
    /// The strategy returned without running the work.
    NotRun,
    /// The strategy runs work in other processes and this call cannot go
    /// there.
    NotPortable { function: String, reason: String },
    /// The worker process running the call died.
    /// `runs`: how many times the call was run, each time on a worker that
    /// died (more than once only for an idempotent function).
    WorkerDied {
        function: String,
        death: Death,
        runs: u32,
    },
    /// The call ran past its deadline; `killed`: its worker process was
    /// killed (and replaced) for it.
    DeadlineExceeded {
        function: String,
        deadline: Duration,
        killed: bool,
        /// What else is known (a remote call's replies that did not
        /// verify).
        note: Option<String>,
    },
    /// A message to or from the worker could not be encoded or decoded.
    Protocol { function: String, detail: String },
    /// No worker could take the call (none could be started, or the
    /// strategy is shutting down).
    Unavailable { function: String, detail: String },
    /// The call was sent to another machine, and then its outcome was lost
    /// (the connection failed): it may have run, may be running.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))] // Made by `Remote` alone.
    MayHaveRun { function: String, detail: String },
    /// The strategy was shut down before the call reached it.
    ShutDown { strategy: &'static str },
    /// The strategy's queue was full, and it refuses work then.
    QueueFull {
        strategy: &'static str,
        capacity: usize,
    },
}

/// What kind of failure an [`OffloadError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OffloadErrorKind {
    /// The work panicked; the payload is in the error.
    Panicked,
    /// The strategy's `apply` returned without running the work (it dropped
    /// the [`Job`](crate::Job)).
    NotRun,
    /// The strategy runs work in other processes
    /// ([`Processes`](crate::Processes)) and this call cannot go there: the
    /// work is a closure, the function is not marked
    /// [`#[offloadable]`](crate::offloadable), or its arguments or result are
    /// not serde types.
    NotPortable,
    /// The worker process running the call died: it crashed (a signal, see
    /// [`OffloadError::signal`]), aborted, ran out of memory, or exited.
    WorkerDied,
    /// The call ran past the strategy's deadline; its worker was killed and
    /// replaced.
    DeadlineExceeded,
    /// The call or its result could not be carried between processes: an
    /// encoding error, or a malformed, truncated or oversized frame.
    Protocol,
    /// No worker could take the call: none could be started, none serves
    /// it, or the strategy is shut down. The call did not run, so trying
    /// again cannot run it twice (save for an
    /// [`#[offloadable(idempotent)]`](crate::offloadable) call that
    /// [`Processes`](crate::Processes) ran before on workers that died: its
    /// message says how many times).
    Unavailable,
    /// The call left for another machine
    /// ([`Remote`](crate::remote::Remote)), and then its outcome was lost
    /// (the connection to NATS failed while it was in flight): it may have
    /// run, or may still run. Retry only work that may run twice. (A remote
    /// call that got no answer within its deadline is
    /// [`DeadlineExceeded`](OffloadErrorKind::DeadlineExceeded), which may
    /// have run too.)
    MayHaveRun,
    /// The strategy's queue was full, and it was built to refuse work then
    /// instead of waiting ([`PoolBuilder::when_full`](crate::PoolBuilder::when_full)):
    /// shed the load (answer "busy") or try again later.
    QueueFull,
}

impl OffloadError {
    pub(crate) fn panicked(payload: Box<dyn Any + Send + 'static>) -> Self {
        let message = payload_text(&*payload).map(str::to_owned);
        OffloadError {
            repr: Repr::Panicked {
                payload: SyncWrapper::new(payload),
                message,
                elsewhere: None,
            },
        }
    }

    pub(crate) fn not_run() -> Self {
        OffloadError { repr: Repr::NotRun }
    }

    /// The work, a call of `function`, panicked in another process; only
    /// its message came back.
    pub(crate) fn remote_panic(function: &str, message: String) -> Self {
        OffloadError {
            repr: Repr::Panicked {
                payload: SyncWrapper::new(Box::new(message.clone())),
                message: Some(message),
                elsewhere: Some(function.to_owned()),
            },
        }
    }

    pub(crate) fn not_portable(function: &str, reason: &str) -> Self {
        OffloadError {
            repr: Repr::NotPortable {
                function: function.to_owned(),
                reason: reason.to_owned(),
            },
        }
    }

    /// The worker process running the call died, on each of `runs` runs.
    pub(crate) fn worker_died(function: &str, death: Death, runs: u32) -> Self {
        OffloadError {
            repr: Repr::WorkerDied {
                function: function.to_owned(),
                death,
                runs,
            },
        }
    }

    /// The call ran past its deadline, and its worker process was killed
    /// and replaced for it.
    pub(crate) fn deadline_exceeded(function: &str, deadline: Duration) -> Self {
        OffloadError {
            repr: Repr::DeadlineExceeded {
                function: function.to_owned(),
                deadline,
                killed: true,
                note: None,
            },
        }
    }

    /// The call's answer did not come before its deadline, and nothing was
    /// killed for it (a remote call; a call out of time before it was sent).
    pub(crate) fn no_answer_by(function: &str, deadline: Duration) -> Self {
        OffloadError {
            repr: Repr::DeadlineExceeded {
                function: function.to_owned(),
                deadline,
                killed: false,
                note: None,
            },
        }
    }

    /// [`no_answer_by`](Self::no_answer_by), with what else is known.
    #[cfg(feature = "remote")]
    pub(crate) fn no_answer_by_noting(
        function: &str,
        deadline: Duration,
        note: impl fmt::Display,
    ) -> Self {
        OffloadError {
            repr: Repr::DeadlineExceeded {
                function: function.to_owned(),
                deadline,
                killed: false,
                note: Some(note.to_string()),
            },
        }
    }

    pub(crate) fn protocol(function: &str, detail: impl fmt::Display) -> Self {
        OffloadError {
            repr: Repr::Protocol {
                function: function.to_owned(),
                detail: detail.to_string(),
            },
        }
    }

    pub(crate) fn shut_down(strategy: &'static str) -> Self {
        OffloadError {
            repr: Repr::ShutDown { strategy },
        }
    }

    pub(crate) fn queue_full(strategy: &'static str, capacity: usize) -> Self {
        OffloadError {
            repr: Repr::QueueFull { strategy, capacity },
        }
    }

    /// The call was sent, and then its outcome was lost.
    #[cfg(feature = "remote")]
    pub(crate) fn may_have_run(function: &str, detail: impl fmt::Display) -> Self {
        OffloadError {
            repr: Repr::MayHaveRun {
                function: function.to_owned(),
                detail: detail.to_string(),
            },
        }
    }

    pub(crate) fn unavailable(function: &str, detail: impl fmt::Display) -> Self {
        OffloadError {
            repr: Repr::Unavailable {
                function: function.to_owned(),
                detail: detail.to_string(),
            },
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> OffloadErrorKind {
        match self.repr {
            Repr::Panicked { .. } => OffloadErrorKind::Panicked,
            Repr::NotRun => OffloadErrorKind::NotRun,
            Repr::NotPortable { .. } => OffloadErrorKind::NotPortable,
            Repr::WorkerDied { .. } => OffloadErrorKind::WorkerDied,
            Repr::DeadlineExceeded { .. } => OffloadErrorKind::DeadlineExceeded,
            Repr::Protocol { .. } => OffloadErrorKind::Protocol,
            Repr::Unavailable { .. } | Repr::ShutDown { .. } => OffloadErrorKind::Unavailable,
            Repr::QueueFull { .. } => OffloadErrorKind::QueueFull,
            Repr::MayHaveRun { .. } => OffloadErrorKind::MayHaveRun,
        }
    }

    /// The function whose call failed, as its path (`crate::cpu::sumn`), for
    /// the failures of a strategy that runs work in other processes (a panic
    /// in a worker process included).
    pub fn function(&self) -> Option<&str> {
        match &self.repr {
            Repr::Panicked { elsewhere, .. } => elsewhere.as_deref(),
            Repr::NotRun | Repr::ShutDown { .. } | Repr::QueueFull { .. } => None,
            Repr::NotPortable { function, .. }
            | Repr::WorkerDied { function, .. }
            | Repr::DeadlineExceeded { function, .. }
            | Repr::Protocol { function, .. }
            | Repr::Unavailable { function, .. }
            | Repr::MayHaveRun { function, .. } => Some(function),
        }
    }

    /// The signal that killed the worker process (`libc::SIGSEGV`, ...), when
    /// the kind is [`WorkerDied`](OffloadErrorKind::WorkerDied) and a signal
    /// killed it.
    pub fn signal(&self) -> Option<i32> {
        match &self.repr {
            Repr::WorkerDied { death, .. } => death.signal,
            _ => None,
        }
    }

    /// The exit code of the worker process, when the kind is
    /// [`WorkerDied`](OffloadErrorKind::WorkerDied) and it exited (rather
    /// than being killed by a signal).
    pub fn exit_code(&self) -> Option<i32> {
        match &self.repr {
            Repr::WorkerDied { death, .. } => death.code,
            _ => None,
        }
    }

    /// What a strategy's failure says beyond its kind: why the call is not
    /// portable, what went wrong with the protocol, why no worker was
    /// available (for a remote worker's reply).
    #[cfg(feature = "remote")]
    pub(crate) fn detail(&self) -> Option<&str> {
        match &self.repr {
            Repr::NotPortable { reason: detail, .. }
            | Repr::Protocol { detail, .. }
            | Repr::Unavailable { detail, .. }
            | Repr::MayHaveRun { detail, .. } => Some(detail),
            _ => None,
        }
    }

    /// The deadline a call ran past (for a remote worker's reply).
    #[cfg(feature = "remote")]
    pub(crate) fn deadline(&self) -> Option<Duration> {
        match &self.repr {
            Repr::DeadlineExceeded { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// How the worker process died, and on how many runs (for a remote
    /// worker's reply).
    #[cfg(feature = "remote")]
    pub(crate) fn death(&self) -> Option<(Death, u32)> {
        match &self.repr {
            Repr::WorkerDied { death, runs, .. } => Some((*death, *runs)),
            _ => None,
        }
    }

    /// How many times the call was run, each on a worker process that died,
    /// when the kind is [`WorkerDied`](OffloadErrorKind::WorkerDied): 0
    /// when it never ran (two workers in a row died as they took it in: a
    /// call too large for their memory, say), 1, or more for a function
    /// marked
    /// [`#[offloadable(idempotent)]`](crate::offloadable), which is run
    /// again on another worker when its worker dies (up to
    /// [`ProcessesBuilder::max_retries`](crate::ProcessesBuilder::max_retries)
    /// more times, within its deadline).
    pub fn runs(&self) -> Option<u32> {
        match &self.repr {
            Repr::WorkerDied { runs, .. } => Some(*runs),
            _ => None,
        }
    }

    /// Whether the work panicked.
    pub fn is_panic(&self) -> bool {
        self.kind() == OffloadErrorKind::Panicked
    }

    /// The message the work panicked with, when its payload is a string (as
    /// `panic!("...")` makes it).
    pub fn panic_message(&self) -> Option<&str> {
        match &self.repr {
            Repr::Panicked { message, .. } => message.as_deref(),
            _ => None,
        }
    }

    /// The payload the work panicked with, or the error itself if the work
    /// did not panic.
    ///
    /// # Errors
    ///
    /// Returns `self` unchanged when [`kind`](OffloadError::kind) is not
    /// [`Panicked`](OffloadErrorKind::Panicked).
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send + 'static>, OffloadError> {
        match self.repr {
            Repr::Panicked { payload, .. } => Ok(payload.into_inner()),
            repr => Err(OffloadError { repr }),
        }
    }

    /// Panics as `offload!` does: resumes the work's panic with its original
    /// payload (without calling the panic hook again); a strategy's failure
    /// (a dead worker, a deadline, ...) unwinds with this error as the
    /// payload, after printing it as the panic hook would; a job the
    /// strategy did not run panics with this error's message.
    #[track_caller]
    pub fn resume_unwind(self) -> ! {
        self.raise_at(Location::caller())
    }

    /// [`resume_unwind`](OffloadError::resume_unwind), for the `offload!`
    /// point at `at`.
    pub(crate) fn raise_at(self, at: &'static Location<'static>) -> ! {
        match self.repr {
            Repr::Panicked {
                payload,
                elsewhere: Some(function),
                message,
            } => {
                // Its panic was printed in the worker, whose stderr a test
                // harness does not capture: say it here too, as the panic
                // hook would, at the `offload!` point.
                let thread = std::thread::current();
                let name = thread.name().unwrap_or("<unnamed>");
                let message = message.as_deref().unwrap_or("Box<dyn Any>");
                eprintln!(
                    "\nthread '{name}' panicked at {at}:\n`{function}` panicked in its worker \
                     process: {message}"
                );
                panic::resume_unwind(payload.into_inner())
            }
            Repr::Panicked { payload, .. } => panic::resume_unwind(payload.into_inner()),
            Repr::NotRun => panic!("{self}"),
            _ => {
                // The payload is the typed error, so that a `catch_unwind`
                // (or `JoinHandle::join`) can downcast it. The panic hook
                // would print it as "Box<dyn Any>", so it is printed here, in
                // the hook's own format, and the unwind starts without it.
                let thread = std::thread::current();
                let name = thread.name().unwrap_or("<unnamed>");
                eprintln!("\nthread '{name}' panicked at {at}:\n{self}");
                panic::resume_unwind(Box::new(self))
            }
        }
    }
}

/// The text of a panic payload made by `panic!`.
pub(crate) fn payload_text(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Panicked {
                message: Some(message),
                elsewhere: Some(function),
                ..
            } => write!(f, "`{function}` panicked in its worker process: {message}"),
            Repr::Panicked {
                message: Some(message),
                ..
            } => write!(f, "the offloaded work panicked: {message}"),
            Repr::Panicked { message: None, .. } => f.write_str("the offloaded work panicked"),
            Repr::NotRun => f.write_str(
                "ythread: the apply strategy returned without running the offloaded work \
                 (an `Apply` implementation must call `Job::run` before `apply` returns)",
            ),
            Repr::NotPortable { function, reason } => write!(
                f,
                "`{function}` cannot be offloaded to a worker process: {reason}"
            ),
            Repr::WorkerDied {
                function,
                death,
                runs,
            } => {
                if *runs == 0 {
                    return write!(
                        f,
                        "the worker processes sent `{function}` died before they started it \
                         (it did not run), twice, taking it in; the last one: {death}"
                    );
                }
                write!(f, "the worker process running `{function}` died: {death}")?;
                if *runs > 1 {
                    write!(
                        f,
                        "; it was run {runs} times (it is `#[offloadable(idempotent)]`), and \
                         each time its worker died"
                    )?;
                }
                Ok(())
            }
            Repr::DeadlineExceeded {
                function,
                deadline,
                killed: true,
                ..
            } => write!(
                f,
                "`{function}` ran past its deadline of {deadline:?}; its worker process was \
                 killed and replaced"
            ),
            Repr::DeadlineExceeded {
                function,
                deadline,
                killed: false,
                note,
            } => {
                write!(
                    f,
                    "`{function}` got no answer within its deadline of {deadline:?}"
                )?;
                match note {
                    Some(note) => write!(f, ": {note}"),
                    None => Ok(()),
                }
            }
            Repr::Protocol { function, detail } => write!(
                f,
                "the call of `{function}` could not be carried to or from its worker: {detail}"
            ),
            Repr::Unavailable { function, detail } => {
                write!(f, "no worker could run `{function}`: {detail}")
            }
            Repr::MayHaveRun { function, detail } => write!(
                f,
                "the call of `{function}` may have run, or may still run: {detail}"
            ),
            Repr::ShutDown { strategy } => {
                write!(f, "the {strategy} was shut down: it takes no new work")
            }
            Repr::QueueFull { strategy, capacity } => write!(
                f,
                "the {strategy}'s queue is full (room for {capacity} waiting call(s)), and it \
                 was built to refuse work then"
            ),
        }
    }
}

impl fmt::Debug for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OffloadError")
            .field("kind", &self.kind())
            .field("message", &self.to_string())
            .finish()
    }
}

impl Error for OffloadError {}

/// So that `?` works on `try_offload!` in a handler returning
/// `io::Result`: the error becomes an [`io::ErrorKind::Other`] that holds
/// this one (reach it with `get_ref()` and `downcast_ref::<OffloadError>()`).
///
/// ```
/// use std::io;
/// use ythread::{Yieldable, try_offload, yieldable};
///
/// fn parse(text: &str) -> u64 { text.parse().expect("a number") }
///
/// #[yieldable]
/// fn handle(request: String) -> io::Result<u64> {
///     let n = try_offload!(parse, &request)?;
///     Ok(n + 1)
/// }
///
/// assert_eq!(handle("41".into()).run().unwrap(), 42);
/// # std::panic::set_hook(Box::new(|_| {})); // keep the doctest's output quiet
/// let error = handle("forty-one".into()).run().unwrap_err();
/// assert!(error.to_string().contains("a number"), "{error}");
/// ```
impl From<OffloadError> for io::Error {
    fn from(error: OffloadError) -> io::Error {
        io::Error::other(error)
    }
}

/// The payload of the unwind that runs the destructors of a handler dropped
/// while suspended at an `offload!` point.
///
/// Dropping a suspended handler (a [`Generator`](crate::Generator), or a
/// handler whose strategy panicked) resumes it with this unwind from the
/// `offload!` point where it waits, so that its locals are dropped as if it
/// had panicked there. The unwind is silent: the panic hook is not called.
///
/// A handler that catches panics itself (`catch_unwind` around `offload!`)
/// must let this one go on:
///
/// ```
/// use std::panic::{self, AssertUnwindSafe};
/// use ythread::{HandlerDropped, offload, yieldable};
///
/// #[yieldable]
/// fn tolerant(n: u64) -> u64 {
///     match panic::catch_unwind(AssertUnwindSafe(|| offload!(|| n * 2))) {
///         Ok(value) => value,
///         // The handler is being dropped: carry on unwinding.
///         Err(payload) if payload.is::<HandlerDropped>() => panic::resume_unwind(payload),
///         Err(_) => 0,
///     }
/// }
/// # let mut generator = ythread::Yieldable::start(tolerant(1));
/// # assert!(matches!(generator.resume(), ythread::GeneratorState::Yielded(_)));
/// # drop(generator);
/// ```
///
/// Better, recover from failed work with `try_offload!`, which returns the
/// work's panic as an [`OffloadError`] and lets this unwind through.
///
/// While a handler is being dropped, every `offload!` and `try_offload!` it
/// reaches raises this unwind again at once, without running any work. A
/// handler that catches it and offloads again, over and over, would never
/// finish dropping: after a few such attempts the process is aborted with a
/// message naming the handler.
#[derive(Debug)]
#[non_exhaustive]
pub struct HandlerDropped;

impl fmt::Display for HandlerDropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the handler was dropped while suspended at an `offload!` point")
    }
}

impl Error for HandlerDropped {}

/// How an offload or a call ended, as spans and metric labels name it:
/// `ok` (`None`: the work returned), or the failure's kind in snake case
/// (`panicked`, `not_run`, `worker_died`, ...).
#[cfg(any(feature = "tracing", feature = "metrics", feature = "remote"))]
pub(crate) fn outcome_label(failure: Option<OffloadErrorKind>) -> &'static str {
    failure.map_or("ok", OffloadErrorKind::label)
}

#[cfg(any(feature = "tracing", feature = "metrics", feature = "remote"))]
impl OffloadErrorKind {
    /// The kind in snake case, as spans and metric labels name outcomes.
    pub(crate) fn label(self) -> &'static str {
        match self {
            OffloadErrorKind::Panicked => "panicked",
            OffloadErrorKind::NotRun => "not_run",
            OffloadErrorKind::NotPortable => "not_portable",
            OffloadErrorKind::WorkerDied => "worker_died",
            OffloadErrorKind::DeadlineExceeded => "deadline_exceeded",
            OffloadErrorKind::Protocol => "protocol",
            OffloadErrorKind::Unavailable => "unavailable",
            OffloadErrorKind::MayHaveRun => "may_have_run",
            OffloadErrorKind::QueueFull => "queue_full",
        }
    }
}
