//! How offloaded work fails: [`OffloadError`], what `try_offload!` returns,
//! and [`HandlerDropped`], the payload of the unwind that drops a suspended
//! handler.

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::io;
use std::panic;

use parking_lot::Mutex;

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
    /// The work panicked. The payload sits behind a lock only so that the
    /// error is `Sync` (a payload is `Send` but not `Sync`); it is only ever
    /// reached by value.
    Panicked {
        payload: Mutex<Box<dyn Any + Send + 'static>>,
        /// The payload's text, when it is a `&str` or a `String` (what
        /// `panic!` produces).
        message: Option<String>,
    },
    /// The strategy returned without running the work.
    NotRun,
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
}

impl OffloadError {
    pub(crate) fn panicked(payload: Box<dyn Any + Send + 'static>) -> Self {
        let message = payload_text(&*payload).map(str::to_owned);
        OffloadError {
            repr: Repr::Panicked {
                payload: Mutex::new(payload),
                message,
            },
        }
    }

    pub(crate) fn not_run() -> Self {
        OffloadError { repr: Repr::NotRun }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> OffloadErrorKind {
        match self.repr {
            Repr::Panicked { .. } => OffloadErrorKind::Panicked,
            Repr::NotRun => OffloadErrorKind::NotRun,
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
            Repr::NotRun => None,
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
    /// payload (without calling the panic hook again), or panics with this
    /// error's message.
    pub fn resume_unwind(self) -> ! {
        match self.try_into_panic() {
            Ok(payload) => panic::resume_unwind(payload),
            Err(error) => panic!("{error}"),
        }
    }
}

/// The text of a panic payload made by `panic!`.
fn payload_text(payload: &(dyn Any + Send)) -> Option<&str> {
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
                ..
            } => write!(f, "the offloaded work panicked: {message}"),
            Repr::Panicked { message: None, .. } => f.write_str("the offloaded work panicked"),
            Repr::NotRun => f.write_str(
                "ythread: the apply strategy returned without running the offloaded work \
                 (an `Apply` implementation must call `Job::run` before `apply` returns)",
            ),
        }
    }
}

impl fmt::Debug for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OffloadError")
            .field("kind", &self.kind())
            .field("message", &self.panic_message())
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
