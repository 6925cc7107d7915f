//! Yieldable threads: keep OS threads for blocking I/O, and let whoever
//! starts the thread decide where its CPU-heavy steps run.
//!
//! This is a Rust take on *yieldable threads*, a thought experiment published
//! in 2009 about Python: keep real threads for blocking I/O, and make the
//! CPU-heavy step the thing a handler yields (a Python generator yielding
//! `(function, args)`), so that the thread that runs it decides where that
//! step runs. The post's `YieldableThread`, its default and exclusive apply
//! functions, its `multiprocessing.Pool().apply` and its `sumn` benchmark
//! server are all here; the docs call it "the 2009 post".
//!
//! A thread-per-connection server is simple: read, compute, write, in
//! straight-line code. It scales badly when every one of many threads also
//! does CPU work: the OS time-slices all of them, and every request finishes
//! late. `ythread` keeps the straight-line code and marks the CPU-heavy step
//! with `offload!`. The function becomes a *yieldable handler*: at each
//! `offload!` point it suspends (it is a stackful coroutine, so this works
//! anywhere in its body), and the thread that drives it hands the work to an
//! [`Apply`] strategy: run it [`Inline`], under one [`Exclusive`] lock, at
//! most n at a time ([`Bounded`]), or on a worker [`Pool`]. The handler
//! resumes with the typed result.
//!
//! ```
//! use std::io::{self, Read, Write};
//! use std::net::TcpStream;
//! use ythread::{offload, yieldable};
//!
//! fn sumn(n: u64) -> u64 {
//!     (1..=n).fold(0, |acc, i| acc + std::hint::black_box(i))
//! }
//!
//! #[yieldable]
//! fn handle(mut stream: TcpStream) -> io::Result<()> {
//!     let mut buf = [0; 16];
//!     let len = stream.read(&mut buf)?;                      // blocking I/O, on this thread
//!     let n = std::str::from_utf8(&buf[..len]).ok().and_then(|s| s.trim().parse().ok());
//!     let sum = offload!(sumn, n.unwrap_or(0));              // CPU work, wherever the strategy says
//!     stream.write_all(sum.to_string().as_bytes())           // blocking I/O again
//! }
//! # let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! # let addr = listener.local_addr().unwrap();
//! # let client = std::thread::spawn(move || {
//! #     let mut s = TcpStream::connect(addr).unwrap();
//! #     s.write_all(b"100").unwrap();
//! #     let mut out = String::new();
//! #     s.read_to_string(&mut out).unwrap();
//! #     out
//! # });
//! # let (stream, _) = listener.accept().unwrap();
//! // Whoever accepts the connection picks the strategy; the handler never changes.
//! let pool = ythread::Pool::new(2);
//! ythread::YieldableThread::new().apply(pool).spawn(handle(stream))?.join().unwrap()?;
//! # assert_eq!(client.join().unwrap(), "5050");
//! # Ok::<(), io::Error>(())
//! ```
//!
//! A server that starts a handler per connection can keep the threads for
//! the next connection with [`ThreadCache`]: one thread per connection in
//! flight, paid for once instead of per connection.
//!
//! # The rules
//!
//! - `offload!(f, a, b)` is an expression whose value is `f(a, b)`. The
//!   arguments are evaluated in the handler (so `?` in them works); the call
//!   runs wherever the strategy runs it. `offload!(|| expr)` offloads a
//!   closure. It works inside nested expressions, loops, `match` arms, other
//!   macros' arguments and closures called while the handler runs.
//! - The work may borrow the handler's locals: the handler stays suspended
//!   until the work is done. Work and its result must be `Send`.
//! - A panic in offloaded work resumes in the handler at the `offload!` point,
//!   with its original payload; `try_offload!` returns it as an
//!   [`OffloadError`] instead.
//! - `yield_from!(helper(x))` runs another `#[yieldable]` function inside the
//!   current handler, its `offload!` points going to the same strategy.
//! - Code at any call depth inside a handler (helpers, callbacks, macros) can
//!   offload with the function form [`offload()`], and `.run()` called there
//!   joins the running handler (see [`Yieldable::run`]).
//! - A handler's coroutine never moves to another thread; dropping a
//!   suspended handler ([`Generator`]) unwinds it from its `offload!` point
//!   with [`HandlerDropped`], which a handler catching panics must let go on.
//! - A handler behaves like the plain function it was written as: the same
//!   parameters, drops, panics, and a stack as roomy as a std thread's (see
//!   [`yieldable`]).
//! - Work that itself runs a handler with the same `Exclusive`, `Bounded` or
//!   `Pool` runs in place, as a nested `rayon::install` does.
//!
//! # Work that never ends
//!
//! A thread cannot be stopped from outside, so what work that never returns
//! (a bug, or a request whose cost nobody bounded) does depends on where it
//! runs:
//!
//! | strategy | work that never ends | what to do |
//! |---|---|---|
//! | [`Inline`] | holds its handler's thread | bound the work's cost before `offload!` |
//! | [`Bounded`] | holds its thread and one of the `n` permits: after `n` such calls, every offload waits forever | the same |
//! | [`Exclusive`] | holds the lock: every later offload waits forever | the same |
//! | [`Pool`] | holds a worker thread: after as many calls as threads, the queue never moves (callers waiting for room in a full queue, and [`Pool::shutdown`], wait forever) | the same |
//! | [`Processes`] | without a deadline, holds a worker process forever; with [`ProcessesBuilder::deadline`], the process is killed at the deadline and replaced, and the call fails with [`OffloadErrorKind::DeadlineExceeded`] | set a deadline |
//! | `remote::Remote` | the call fails at `RemoteBuilder::deadline`; on the worker machine, its process runs on unless the worker's `Processes` has a deadline too | set both |
//!
//! So: check a request's cost before offloading it (the example servers
//! refuse an `n` over `--max-n`), and run work that may run away despite
//! that under `Processes` with a deadline (`--deadline-ms`).
//!
//! # Observing offloads: features `tracing` and `metrics`
//!
//! With the `tracing` feature, each offload is a `DEBUG` span named
//! `offload` (target `ythread`), the child of the span the handler is in,
//! with the fields `function` (the offloaded function's path, or the
//! closure's type name), `strategy` ([`Apply::name`]), and, once it has
//! ended, `queue_wait_us` and `run_us` (microseconds from the offload to the
//! start of the work, and of the work itself) and `outcome` (`ok`,
//! `panicked`, or the failure's kind in snake case: `worker_died`,
//! `deadline_exceeded`, ...). The span is entered on the thread that runs
//! the work, so an event the work emits on a [`Pool`] thread is inside it.
//! Where a subscriber leaves `DEBUG` spans of `ythread` out, the work runs
//! inside the handler's span instead: its events keep their request either
//! way. [`Processes`] and `remote::Remote` carry the span further: see
//! their own documentation.
//!
//! With the `metrics` feature, each offload is counted and timed through
//! the [`metrics`](https://docs.rs/metrics) facade, into whichever recorder
//! the application installed:
//!
//! | series | kind | labels |
//! |---|---|---|
//! | `ythread_offloads_total` | counter | `strategy`, `outcome` |
//! | `ythread_offload_queue_wait_seconds` | histogram | `strategy` |
//! | `ythread_offload_run_seconds` | histogram | `strategy` |
//!
//! (The recorder decides how a histogram is rendered:
//! `metrics-exporter-prometheus` renders summaries with quantiles, or
//! buckets once given some with `PrometheusBuilder::set_buckets`.)
//!
//! Worker processes and `Remote` add series of their own (restarts, busy
//! processes, calls in flight), listed in their documentation. A thread
//! keeps the handles of the series it recorded into, per recorder (told
//! apart by address: a local recorder of `metrics::with_local_recorder`
//! made where one dropped before on the same thread was would get its
//! handles), so that after its first offloads an offload neither allocates
//! nor has the recorder look a series up. `describe_metrics` gives the
//! recorder their units and help texts.
//!
//! What is observed is what ythread drives: handlers run with `run`,
//! `run_with`, [`YieldableThread`], [`spawn`] or [`ThreadCache`]. A
//! [`Generator`] stepped by hand hands its jobs out itself, unobserved.
//!
//! ```
//! # #[cfg(feature = "tracing")] {
//! use ythread::{Pool, Yieldable, offload, yieldable};
//!
//! fn digest(data: Vec<u8>) -> u32 {
//!     tracing::info!(len = data.len(), "digesting"); // inside `request` > `offload`
//!     data.iter().map(|&b| u32::from(b)).sum()
//! }
//!
//! #[yieldable]
//! fn handle(id: u64, data: Vec<u8>) -> u32 {
//!     let span = tracing::info_span!("request", id);
//!     let _entered = span.enter();
//!     offload!(digest, data)
//! }
//!
//! assert_eq!(handle(7, vec![1, 2, 3]).run_with(&Pool::new(1)), 6);
//! # }
//! ```
#![warn(missing_docs, missing_debug_implementations)]
// docs.rs (see `package.metadata.docs.rs`) marks what a feature gates.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "ythread supports Linux only: it reports coroutine stack overflows with a \
     signal handler, and its worker processes rely on `prctl` and `/proc`"
);

mod apply;
mod codec;
mod coroutine;
mod current;
mod error;
mod handler;
mod job;
#[cfg(feature = "metrics")]
mod meters;
#[cfg(any(feature = "tracing", feature = "metrics"))]
mod observe;
mod offloadable;
mod portable;
mod private;
pub mod processes;
#[cfg(feature = "remote")]
#[cfg_attr(docsrs, doc(cfg(feature = "remote")))]
pub mod remote;
mod sync;
mod thread;
mod thread_cache;

pub use apply::{
    Apply, ApplyFn, Bounded, Exclusive, Inline, Pool, PoolBuilder, WhenFull, apply_fn,
};
pub use coroutine::{DEFAULT_STACK_SIZE, Generator, GeneratorState};
pub use current::{in_handler, offload};
pub use error::{HandlerDropped, OffloadError, OffloadErrorKind};
pub use handler::{BoxYieldable, WithStackSize, Yieldable};
pub use job::Job;
#[cfg(feature = "metrics")]
pub use meters::describe_metrics;
pub use processes::{Processes, ProcessesBuilder};
pub use thread::{YieldableThread, spawn};
pub use thread_cache::{CachedJoinHandle, DEFAULT_KEEP_ALIVE, ThreadCache, ThreadCacheBuilder};

/// Marks a function as a yieldable handler.
///
/// The function's body may use `offload!`, `try_offload!` and `yield_from!`.
/// Calling the function returns an `impl Yieldable<Output = T>` (where `T` is
/// the declared return type) without running anything; see [`Yieldable`].
///
/// Works on free functions, methods (`self`, `&self`, `&mut self`), generic
/// functions, and functions returning `Result` that use `?` and `return`.
/// It cannot be used on `async fn`, `const fn`, a function of a foreign ABI
/// (`extern "C"`) or a function returning `impl Trait`. The attributes whose
/// meaning a handler could not keep are refused by name: `#[track_caller]`,
/// `#[target_feature]`, `#[instruction_set]`, `#[naked]`, `#[no_mangle]`,
/// `#[export_name]` and `#[link_section]` (they describe the function's own
/// code or symbol, and a handler's body runs later, on a coroutine). Hints
/// about the function's calls (`#[inline]`, `#[cold]`) apply to the function
/// that builds the handler; the others (`#[doc]`, `#[must_use]`,
/// `#[deprecated]`, lint levels) are kept as written.
///
/// # The handler behaves like the plain function
///
/// - **Parameters**: every parameter list a plain function accepts compiles:
///   patterns (`(a, _): (A, B)`, `Point { x, .. }: Point`, `[first, ..]`),
///   `mut`, `ref` and `ref mut` bindings, `_`, attributes such as
///   `#[allow(unused_variables)]`. Each argument is moved into the handler
///   whole when it is called (nothing is dropped then) and its pattern is
///   matched when the body starts, so the bindings are exactly the plain
///   function's. (This is how rustc desugars `async fn` parameters.)
/// - **Drops**: when the body ends, its locals drop, then the parameters,
///   last to first, each one's bindings before the parts its pattern left
///   unbound, and the temporaries of the tail expression before the
///   parameters: the plain function's order, in every edition. A handler
///   dropped while suspended drops the same values in the same order as the
///   plain function would if it panicked at that `offload!` point.
/// - **Panics** in the body or in offloaded work propagate from `run`,
///   `run_with`, [`Generator::resume`] or the thread's `join`, with their
///   payload. They happen when the body runs, not when the function is
///   called (calling it only builds the handler).
/// - **Stack**: the body runs on a coroutine stack of
///   [`DEFAULT_STACK_SIZE`] (2 MiB, a std thread's), or what
///   [`Yieldable::with_stack_size`] asks; an overflow aborts with a message
///   naming the handler, like std's for a thread.
/// - **Warnings**: an unused parameter warns, as in a plain function.
///
/// ```
/// use ythread::{Yieldable, offload, yieldable};
///
/// #[yieldable]
/// fn count_and_label((ref name, mut count): (String, u64), ref mut log: Vec<String>) -> String {
///     count += offload!(|| name.len() as u64);
///     log.push(format!("{name}: {count}"));
///     log.join(", ")
/// }
///
/// assert_eq!(count_and_label(("abc".into(), 1), vec!["x: 0".into()]).run(), "x: 0, abc: 4");
/// ```
///
/// # `#[yieldable(portable)]`: checked for worker processes
///
/// [`Processes`] and [`remote::Remote`] run only calls of
/// [`#[offloadable]`](offloadable) functions; any other work fails at run
/// time, at its `offload!`, with `NotPortable`. A handler meant for them
/// can say so: under `#[yieldable(portable)]`, every `offload!` and
/// `try_offload!` of its body (in closures and other macros' arguments too)
/// that could never cross is a compile error at that call's work, saying
/// why: a closure, a callee that is not a path (`offload!(pick(), x)`), a
/// method or associated function, a generic function, a closure argument,
/// or a function that is not `#[offloadable]` (the error is at its name).
/// A registered function may be named by any path, imported or renamed
/// (`use work::sumn as s; offload!(s, n)`), from any module or crate. The
/// handler is otherwise unchanged, and still runs under every strategy.
///
/// The callee must name a function, not a variable: `let f = sumn;
/// offload!(f, n)` (or a closure in a variable that has a registered
/// function's name) is refused with rustc's own "imports cannot refer to
/// local variables", at `f`, as the check resolves the callee as an item.
///
/// ```compile_fail,E0277
/// use ythread::{offload, offloadable, yieldable};
///
/// #[offloadable]
/// fn sumn(n: u64) -> u64 { (1..=n).sum() }
///
/// fn plain(n: u64) -> u64 { n + 1 }
///
/// #[yieldable(portable)]
/// fn handle(n: u64) -> u64 {
///     offload!(sumn, n) + offload!(plain, n) // error at `plain`: not `#[offloadable]`
/// }
/// ```
///
/// ```compile_fail
/// # use ythread::{offload, yieldable};
/// #[yieldable(portable)]
/// fn handle(n: u64) -> u64 {
///     offload!(|| n + 1) // error: a closure cannot be sent to another process
/// }
/// ```
///
/// ```
/// use ythread::{Inline, Yieldable, offload, offloadable, yieldable};
///
/// #[offloadable]
/// fn sumn(n: u64) -> u64 { (1..=n).sum() }
///
/// #[yieldable(portable)]
/// fn handle(n: u64) -> u64 {
///     offload!(sumn, n)
/// }
///
/// assert_eq!(handle(3).run_with(&Inline), 6);
/// ```
pub use ythread_macros::yieldable;

/// Registers a function for worker processes: under the
/// [`Processes`] strategy, `offload!(f, a, b)` of a function so marked runs
/// in a worker process.
///
/// The function is left as it is (it still runs in place, or on threads,
/// under every other strategy). Its parameters must implement serde's
/// `Serialize` and `Deserialize`, and its result must be an owned
/// `Serialize + DeserializeOwned + Send` type with no reference (a compile
/// error at the type otherwise); it cannot be generic, `async`, `const`, or
/// take `self`. It goes on free functions only.
///
/// Registrations live in a linker section of the binary: a function in a
/// library crate is registered only if the binary links that crate, which
/// it does when it uses anything of it. A worker binary that names nothing
/// of the library (only serves its functions) must name one item, for
/// example `let _ = my_lib::my_function;`, or the functions are missing
/// ("no worker serves it").
///
/// Beside the function it defines a hidden type of the same name (a
/// function and a type may share one), by which a
/// [`#[yieldable(portable)]`](yieldable) handler checks that a function it
/// offloads is registered; a type or module of that name in the same scope
/// is then an error.
///
/// It is registered under its path (`my_crate::cpu::sumn`) with a
/// fingerprint of its signature: a worker running another build, where the
/// function is missing or its signature differs, refuses the call with a
/// clear error instead of misreading its arguments.
///
/// ```
/// use ythread::{Yieldable, offload, offloadable, yieldable};
///
/// #[offloadable]
/// fn checksum(data: &[u8]) -> u32 {
///     data.iter().map(|&b| u32::from(b)).sum()
/// }
///
/// #[yieldable]
/// fn handle(data: Vec<u8>) -> u32 {
///     offload!(checksum, &data) // borrowed arguments cross too
/// }
///
/// assert_eq!(handle(vec![1, 2, 3]).run(), 6);
/// assert_eq!(checksum(&[4]), 4); // still a plain function
/// ```
///
/// # `#[offloadable(idempotent)]`
///
/// Says that running the function twice does no more than running it once
/// (it computes, or its effects are keyed and repeatable). When the worker
/// process running a call of it dies, the call runs again on another
/// worker, up to [`ProcessesBuilder::max_retries`] more times and within
/// the call's deadline, under [`Processes`] and on a
/// [`remote`] worker's processes alike; the error of a call
/// that still fails says how many runs it took
/// ([`OffloadError::runs`]). Without it, a call whose worker dies fails
/// once, since it may have run in part.
///
/// ```
/// #[ythread::offloadable(idempotent)]
/// fn thumbnail(image: Vec<u8>) -> Vec<u8> {
///     image.into_iter().step_by(4).collect() // imagine a native decoder
/// }
/// # assert_eq!(thumbnail(vec![1, 2, 3, 4, 5]), vec![1, 5]);
/// ```
pub use ythread_macros::offloadable;

/// Hands a piece of work to the running handler's strategy and evaluates to
/// its result: `offload!(f, a, b)` has the value and type of `f(a, b)`.
///
/// Forms:
/// - `offload!(f, a, b, ...)`: `f` is what a plain call would name: a
///   function path (`sumn`, `crate::cpu::sumn`, `Self::helper`), generic or
///   not (`std::cmp::max`, `u64::from`, `Into::into`, inferred as the plain
///   call infers them), a local closure or function pointer, a field
///   (`self.f`), or an expression that computes the function. The callee and
///   then the arguments are evaluated in the handler, in order, before it
///   suspends; the call itself runs where the strategy decides. A closure
///   written as an argument (`offload!(Option::map, x, |v| v + 1)`) is typed
///   as in the plain call; it is created where the call runs, after the other
///   arguments (which only a `move` closure that copies a value a later
///   argument changes can tell). Only a function path of up to 8 arguments, none
///   of them a closure, can be sent to another process (and only if it is
///   [`#[offloadable]`](offloadable)); the other forms fail there with
///   [`NotPortable`](OffloadErrorKind::NotPortable).
/// - `offload!(|| expr)`: runs the closure's body there.
///
/// Only valid inside a [`#[yieldable]`](yieldable) function; anywhere else it
/// is a compile error. The work and its result must be `Send`. From code that
/// is not a handler's own body (a helper it calls), use the function form
/// [`offload()`].
///
/// ```compile_fail
/// fn not_a_handler() -> u64 {
///     ythread::offload!(|| 1 + 1)
/// }
/// ```
pub use ythread_macros::offload;

/// Like [`offload!`], but evaluates to a `Result`: `Ok` with the work's value,
/// or `Err(`[`OffloadError`]`)` when the work panicked (the error holds its
/// payload) or did not run.
///
/// A panic in the work is still a panic where it happens: the panic hook
/// reports it (message and, if enabled, backtrace) on the thread that ran the
/// work, before `try_offload!` returns it. Install a hook of your own to
/// change that. `OffloadError` converts into `io::Error`, so `?` works in a
/// handler returning `io::Result`.
///
/// This is how a handler recovers from failed work. Unlike a `catch_unwind`
/// around `offload!`, it cannot swallow the unwind that drops a suspended
/// handler: if the handler is dropped while waiting here, `try_offload!`
/// unwinds with [`HandlerDropped`] like `offload!` does.
///
/// ```
/// use ythread::{Pool, Yieldable, try_offload, yieldable};
///
/// fn checked_div(a: u64, b: u64) -> u64 { a / b }
///
/// #[yieldable]
/// fn ratio(a: u64, b: u64) -> Result<u64, String> {
///     try_offload!(checked_div, a, b).map_err(|error| error.to_string())
/// }
///
/// assert_eq!(ratio(6, 3).run_with(&Pool::new(1)), Ok(2));
/// # std::panic::set_hook(Box::new(|_| {})); // keep the doctest's output quiet
/// let error = ratio(1, 0).run_with(&Pool::new(1)).unwrap_err();
/// assert!(error.contains("divide by zero"), "{error}");
/// ```
///
/// Only valid inside a [`#[yieldable]`](yieldable) function.
pub use ythread_macros::try_offload;

/// Runs a nested `#[yieldable]` handler inside the current one, the way
/// Python's `yield from` runs a sub-generator: its `offload!` points suspend
/// the current handler and go to the same strategy.
///
/// ```
/// use ythread::{Pool, Yieldable, offload, yield_from, yieldable};
///
/// fn square(x: u64) -> u64 { x * x }
///
/// #[yieldable]
/// fn sum_of_squares(xs: Vec<u64>) -> u64 {
///     xs.into_iter().map(|x| offload!(square, x)).sum()
/// }
///
/// #[yieldable]
/// fn handle(xs: Vec<u64>) -> String {
///     format!("{}", yield_from!(sum_of_squares(xs)))
/// }
///
/// assert_eq!(handle(vec![1, 2, 3]).run_with(&Pool::new(1)), "14");
/// ```
///
/// Only valid inside a [`#[yieldable]`](yieldable) function.
pub use ythread_macros::yield_from;

/// Used by the code `#[yieldable]` generates. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::coroutine::Context;
    pub use crate::offloadable::{
        DecodeResult, EncodeArgs, EncodeOutcome, Failure, Invoke, InvokeError, OFFLOADABLE,
        Registration, decode_result, encode_result, encode_value, end_of_args, fingerprint,
        take_arg, type_id_of_val,
    };
    pub use crate::portable::{
        Callee, FunctionId, NotPortable, Params0, Params1, Params2, Params3, Params4, Params5,
        Params6, Params7, Params8, Portability, Probe, ProbeAny, ProbeCall, Wire, never_portable,
    };
    pub use crate::private::{
        HandlerFn, Offloadable, SendResult, assert_offloadable, handler, offload, offload_call,
        try_offload, try_offload_call, yield_from,
    };
    pub use linkme;
}
