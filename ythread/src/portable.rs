//! Whether an `offload!(f, args...)` call can cross to another process, and
//! how: its arguments and result as serde types, its function by name.
//!
//! The expansion of `offload!(f, a, b)` (for a path `f`) builds
//! `Params2 { probe, work: |(a0, a1)| f(a0, a1), a0: a, a1: b }`, which
//! coerces the arguments to `f`'s declared parameter types (see
//! [`Params2`]), so that the bytes the parent encodes are the bytes the
//! worker decodes into `f`'s own parameters; the probe names the type of `f`
//! (see [`Callee`]), which is the call's [`Portability`]. A strategy that
//! sends the call elsewhere (`Processes`, `Remote`) looks `f` up by that
//! name in the table of `#[offloadable]` functions when it runs the call,
//! and its registration encodes the arguments and decodes the result: the
//! `offload!` point asks nothing of serde, so a handler that never leaves
//! the process never depends on it.

use std::any::{TypeId, type_name};
use std::fmt;
use std::marker::PhantomData;

use crate::error::OffloadError;
use crate::offloadable::{self, DepthLimit, Lookup, Registration};

/// Why an offloaded call cannot be sent to another process.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct NotPortable {
    /// The type name of the function (or closure) offloaded.
    pub(crate) function: &'static str,
    /// What is missing, as a sentence fragment.
    pub(crate) reason: &'static str,
}

impl NotPortable {
    pub(crate) fn new(function: &'static str, reason: &'static str) -> Self {
        NotPortable { function, reason }
    }

    pub(crate) fn closure(function: &'static str) -> Self {
        NotPortable::new(
            function,
            "a closure cannot be sent to another process: offload a function marked \
             `#[ythread::offloadable]`, as `offload!(f, a, b)`",
        )
    }
}

impl fmt::Display for NotPortable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.function, self.reason)
    }
}

/// The function of an `offload!` call: its item's type id, its key in the
/// table of offloadable functions (unique to it, where a name is not: see
/// [`Registration::key`]), and its type name, for messages.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct FunctionId {
    pub(crate) name: &'static str,
    pub(crate) id: TypeId,
}

/// The function of an `offload!` call, or why the call can never cross to
/// another process.
#[doc(hidden)]
pub type Wire = Result<FunctionId, NotPortable>;

/// How to get a call's [`Wire`], when a strategy asks: one function pointer
/// in the `offload!` point's slot, which is built on every call and mostly
/// never asked.
#[doc(hidden)]
pub type Portability = fn() -> Wire;

/// A call that a strategy can send to another process, as the job's slot
/// shows it.
pub(crate) trait WireCall {
    /// Appends the arguments, postcard-encoded by `registration` (the
    /// function's), to `out`.
    ///
    /// # Errors
    ///
    /// The call's failure if they cannot be encoded (their `Serialize`
    /// failed, or panicked; they are not the registered function's).
    fn encode_args(
        &self,
        registration: &Registration,
        out: &mut Vec<u8>,
        depth: DepthLimit,
    ) -> Result<(), crate::OffloadError>;
    /// Stores the result that the call produced elsewhere, as the worker
    /// encoded it; `registration` is the function's, whose decoder reads
    /// it, nested at most `depth` levels.
    ///
    /// # Errors
    ///
    /// The call's failure (`Protocol`) if the result cannot be read: it does
    /// not decode, its decoder panicked, or it is not the call's type.
    fn finish(
        &mut self,
        registration: &Registration,
        result: &[u8],
        depth: DepthLimit,
    ) -> Result<(), crate::OffloadError>;
    /// Gives the work up with `error`.
    fn fail(&mut self, error: crate::OffloadError);
}

/// The call of a job (as [`Job::wire`](crate::Job) gives it) that a
/// strategy running work in another process sends (`Processes`, `Remote`),
/// with the registration of its function.
///
/// # Errors
///
/// Why the call cannot cross (`NotPortable`): the strategy fails the job
/// with it.
pub(crate) fn portable_call(
    wire: Result<(FunctionId, &mut dyn WireCall), NotPortable>,
) -> Result<(&mut dyn WireCall, &'static Registration), OffloadError> {
    let (FunctionId { name: function, id }, call) = wire.map_err(|not_portable| {
        OffloadError::not_portable(not_portable.function, not_portable.reason)
    })?;
    match offloadable::by_key(id) {
        Lookup::Found(registration) => Ok((call, registration)),
        // A function pointer's type names no function: the call's function
        // is known only by its item's type, which a pointer erased.
        Lookup::Missing if function.starts_with("fn(") || function.contains(" fn(") => {
            Err(OffloadError::not_portable(
                function,
                "it is a function pointer, which does not say which function it points to: \
                 name the `#[offloadable]` function by its path at the `offload!` point",
            ))
        }
        Lookup::Missing => Err(OffloadError::not_portable(
            function,
            "it is not marked `#[ythread::offloadable]` (only functions so marked, \
             whose parameters are `Serialize` and whose result is `DeserializeOwned`, can \
             run in another process)",
        )),
        Lookup::Ambiguous => Err(OffloadError::not_portable(
            function,
            "two `#[offloadable]` functions of this program have this name (two \
             versions of one crate?)",
        )),
    }
}

/// The function `F` called with arguments `A` (its declared parameter
/// types) and returning `R`: what names an `offload!` call's function (see
/// the module's documentation).
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub struct Probe<F: ?Sized, A, R>(PhantomData<fn(&F)>, PhantomData<fn() -> (A, R)>);

impl<A, R> Probe<(), A, R> {
    /// The probe of a call that names no function (its callee is not a
    /// path, or it has a closure argument): it only carries the argument
    /// and result types, and the call is never portable.
    #[doc(hidden)]
    #[inline(always)]
    pub fn none() -> Self {
        Probe(PhantomData, PhantomData)
    }
}

impl<F: ?Sized, A, R> Probe<F, A, R> {
    /// The call's [`Portability`]: the type id and name of `F`.
    #[doc(hidden)]
    #[inline(always)]
    pub fn portability(&self) -> Portability {
        || {
            Ok(FunctionId {
                name: type_name::<F>(),
                id: typeid::of::<F>(),
            })
        }
    }
}

/// For a call that can never be sent to another process (its function is
/// an expression, not a path; it has too many arguments).
#[doc(hidden)]
#[inline]
pub fn never_portable(function: &'static str, reason: &'static str) -> Wire {
    Err(NotPortable::new(function, reason))
}

/// The function of an `offload!(f, ...)` call, borrowed to find its
/// [`Probe`]: `(&Callee(&f, PhantomData::<(_, _)>)).__ythread_probe()`, with
/// one `_` per argument.
///
/// The probe names `f` a second time, and a second mention of a generic
/// function (`max`, `u64::from`, `Into::into`) has type parameters of its
/// own, which nothing but its call could infer. [`ProbeCall`] ties them to
/// the work's call: it holds when `F` takes as many arguments as the call
/// has, and then makes them the work's declared parameter types `A` and its
/// result `R`, so `F` is the very instance the work calls. A callee that a
/// call reaches only through a dereference (an `Arc<dyn Fn(..)>`), an
/// `unsafe fn`, and a call with the wrong number of arguments (whose error
/// the work's call reports) do not match it: autoref specialization then
/// picks [`ProbeAny`], which takes `F` as it is (such a callee is never
/// registered, so its name only goes into a "not portable" error). The one
/// cost: a generic `unsafe fn` whose type parameters only its call infers
/// (`unsafe { offload!(std::mem::zeroed) }`) needs them written out
/// (`std::mem::zeroed::<u64>`), as the second mention cannot learn them.
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub struct Callee<'a, F: ?Sized, A>(pub &'a F, pub PhantomData<A>);

/// Picked when `F` is called with `A` and returns `R` (see [`Callee`]).
#[doc(hidden)]
pub trait ProbeCall<R> {
    type Function: ?Sized;
    type Args;
    fn __ythread_probe(&self) -> Probe<Self::Function, Self::Args, R>;
}

/// The fallback: a callee reached through a dereference (see [`Callee`]).
#[doc(hidden)]
pub trait ProbeAny {
    type Function: ?Sized;
    type Args;
    fn __ythread_probe<R>(&self) -> Probe<Self::Function, Self::Args, R>;
}

impl<F: ?Sized, A> ProbeAny for &Callee<'_, F, A> {
    type Function = F;
    type Args = A;
    #[inline(always)]
    fn __ythread_probe<R>(&self) -> Probe<F, A, R> {
        Probe(PhantomData, PhantomData)
    }
}

macro_rules! params {
    ($($params:ident($($arg:ident: $param:ident),*);)*) => {$(
        impl<F: ?Sized + FnOnce($($param),*) -> R, $($param,)* R> ProbeCall<R>
            for Callee<'_, F, ($($param,)*)>
        {
            type Function = F;
            type Args = ($($param,)*);
            #[inline(always)]
            fn __ythread_probe(&self) -> Probe<F, ($($param,)*), R> {
                Probe(PhantomData, PhantomData)
            }
        }

        /// The callee (when it is computed; else `()`), the probe, the work
        /// and the arguments of `offload!(f, ...)`,
        /// each argument coerced to `f`'s parameter type as a struct field
        /// is: rustc types the work closure (`|(a0, ..)| f(a0, ..)`) before
        /// the arguments, which fixes the parameter types, so `&String`
        /// becomes `&str` and `&[u8; 4]` becomes `&[u8]` (the bytes a worker
        /// decodes into `f`'s own parameters), and a wrong argument reads
        /// "expected `u64`, found `&str`" at the argument. The probe comes
        /// first: it only borrows `f`, and that borrow ends before the work
        /// captures `f` (by value, if `f` is a closure called once).
        #[doc(hidden)]
        #[allow(missing_debug_implementations)]
        pub struct $params<G, F: ?Sized, C, $($param,)* R>
        where
            C: FnOnce(G, ($($param,)*)) -> R,
        {
            pub callee: G,
            pub probe: Probe<F, ($($param,)*), R>,
            pub work: C,
            $(pub $arg: $param,)*
        }

        impl<G, F: ?Sized, C, $($param,)* R> $params<G, F, C, $($param,)* R>
        where
            C: FnOnce(G, ($($param,)*)) -> R,
        {
            /// The arguments, the call (the work given its callee), and the
            /// probe.
            #[doc(hidden)]
            #[inline(always)]
            #[allow(clippy::unused_unit)]
            pub fn split(
                self,
            ) -> (
                ($($param,)*),
                impl FnOnce(($($param,)*)) -> R,
                Probe<F, ($($param,)*), R>,
            ) {
                let (callee, work) = (self.callee, self.work);
                (
                    ($(self.$arg,)*),
                    move |args| work(callee, args),
                    self.probe,
                )
            }
        }
    )*};
}

params! {
    Params0();
    Params1(a0: P0);
    Params2(a0: P0, a1: P1);
    Params3(a0: P0, a1: P1, a2: P2);
    Params4(a0: P0, a1: P1, a2: P2, a3: P3);
    Params5(a0: P0, a1: P1, a2: P2, a3: P3, a4: P4);
    Params6(a0: P0, a1: P1, a2: P2, a3: P3, a4: P4, a5: P5);
    Params7(a0: P0, a1: P1, a2: P2, a3: P3, a4: P4, a5: P5, a6: P6);
    Params8(a0: P0, a1: P1, a2: P2, a3: P3, a4: P4, a5: P5, a6: P6, a7: P7);
}

/// How ythread names a call that crosses to another process wherever it
/// speaks of one (the labels of what a worker prints, its relayed events,
/// a remote worker's spans and messages): `app::digest call 7`. For
/// `Processes`, 7 is the call's number in its set of workers, counted from
/// 1, the same on each of its runs; for `Remote`, the requester's number
/// for the call, in hex, as it travels.
pub(crate) fn designation(function: &str, call: impl std::fmt::Display) -> String {
    format!("{function} call {call}")
}
