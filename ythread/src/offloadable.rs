//! The table of offloadable functions: those marked `#[offloadable]`, what a
//! worker process can run.
//!
//! Each marked function adds a [`Registration`] to [`OFFLOADABLE`], a linker
//! section (linkme): nothing runs before `main`, and the registrations of
//! every crate linked into the binary are there. The parent process finds a
//! call's registration by the type name of the function offloaded; a worker
//! finds it by the name the parent sends.

use std::any::{Any, TypeId};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::collections::hash_map;
use std::fmt;
use std::hash::Hash;
use std::mem;
use std::ptr;
use std::sync::OnceLock;

use crate::codec::{self, CodecError, Limits};

/// One function marked `#[offloadable]`.
#[doc(hidden)]
#[derive(Debug)]
pub struct Registration {
    /// Its path, `crate::module::name`: the name calls carry between
    /// processes.
    pub name: &'static str,
    /// Its parameter and result types as written, `(u64) -> u64`.
    pub signature: &'static str,
    /// A hash of `signature`, checked by the worker, so that a worker built
    /// from other source refuses the call instead of misreading it.
    pub fingerprint: u64,
    /// The type id of the function item: how the parent finds this
    /// registration from the call. Unlike its type name, it is the
    /// function's alone (a struct can have its name, as can a function in
    /// another block, or in another version of the crate).
    pub key: fn() -> TypeId,
    /// Marked `#[offloadable(idempotent)]`: running it twice does no more
    /// than running it once, so a call whose worker died may run again.
    pub idempotent: bool,
    /// In a worker: decodes the arguments from the first slice, nested at
    /// most as deep as the last argument says, calls the function, and
    /// appends the encoded result to the buffer.
    pub invoke: Invoke,
    /// In the parent: encodes a call's arguments, the tuple of the
    /// function's parameter types.
    pub encode_args: EncodeArgs,
    /// In the parent: decodes a result into the function's result type
    /// (which is `'static`).
    pub decode_result: DecodeResult,
}

/// Encodes the arguments of a call of one registered function, handed over
/// as a pointer to their tuple.
///
/// This is how a call's arguments reach the wire without the `offload!`
/// point asking them for `Serialize`: the point does not know, when it is
/// compiled, whether a strategy will send it to another process, and a bound
/// there would make every handler whose argument types are decided later
/// (`let mut v = Vec::new(); offload!(Vec::len, &v); v.push(x)`) depend on
/// serde. The registration knows the parameter types, and `#[offloadable]`
/// has checked that they are `Serialize`.
///
/// `#[offloadable]` writes the encoder as a plain function of the tuple's
/// reference whose parameter types are the function's own, as written: each
/// elided lifetime in them is a lifetime parameter of the encoder, so its
/// body is checked for every lifetime (a `Serialize` that exists only for
/// `'static` is refused there), and it can read a tuple of any lifetimes.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct EncodeArgs {
    /// The type id of the tuple, lifetimes erased.
    args_type: fn() -> TypeId,
    /// The encoder, its `&T` parameter seen as a pointer to `T`.
    encode: unsafe fn(*const (), &mut Vec<u8>, usize) -> EncodeOutcome,
}

impl fmt::Debug for EncodeArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodeArgs").finish_non_exhaustive()
    }
}

impl EncodeArgs {
    /// The encoder of the tuple `T`; called by the code `#[offloadable]`
    /// generates.
    #[doc(hidden)]
    pub const fn new<T>(encode: fn(&T, &mut Vec<u8>, usize) -> EncodeOutcome) -> Self {
        EncodeArgs {
            args_type: typeid::of::<T>,
            // SAFETY: a `fn(&T, _)` and an `unsafe fn(*const (), _)` have the
            // same size, and calling one through the other is defined: `&T`
            // and `*const ()` are ABI-compatible (both thin pointers, `T`
            // being a sized tuple), as are `fn` and `unsafe fn` of the same
            // ABI. `encode` below gives it only pointers to a live `T`.
            encode: unsafe {
                mem::transmute::<
                    fn(&T, &mut Vec<u8>, usize) -> EncodeOutcome,
                    unsafe fn(*const (), &mut Vec<u8>, usize) -> EncodeOutcome,
                >(encode)
            },
        }
    }

    /// Appends the encoded `args` to `out`, nested at most `max_depth`
    /// levels, if `A` is the tuple of the
    /// function's parameter types; `None` if it is not (and nothing is
    /// written).
    pub(crate) fn encode<A>(
        &self,
        args: &A,
        out: &mut Vec<u8>,
        max_depth: usize,
    ) -> Option<EncodeOutcome> {
        if (self.args_type)() != typeid::of::<A>() {
            return None;
        }
        // SAFETY: `args` is a live `A`, and `A` has the type id of the `T`
        // this encoder was made for, lifetimes erased: it is `T` up to
        // lifetimes, with its layout. The encoder reads it through a
        // reference for the length of this call only. Its lifetimes are
        // right too: the parent only encodes a call with the registration
        // found by the type id of the very function called (`portable_call`,
        // never by a name another item could share), and an `offload!(f,
        // ..)` point coerces its arguments to `f`'s declared parameter types
        // (`ParamsN`), so `A` is those types with the call's lifetimes where
        // `f`'s are elided, which the encoder is generic over (see the type's
        // documentation), and `'static` where `f` says `'static`.
        Some(unsafe { (self.encode)(ptr::from_ref(args).cast(), out, max_depth) })
    }
}

/// Runs a call in a worker: decodes the arguments from the slice, nested at
/// most as deep as the last argument says, calls the function, and appends
/// the encoded result to the buffer.
#[doc(hidden)]
pub type Invoke = fn(&[u8], &mut Vec<u8>, usize) -> Result<(), InvokeError>;

/// Decodes a registered function's result, nested at most as deep as the
/// second argument says, boxed.
#[doc(hidden)]
pub type DecodeResult = fn(&[u8], usize) -> Result<Box<dyn Any + Send>, Failure>;

/// Every `#[offloadable]` function linked into this binary.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static OFFLOADABLE: [Registration];

/// The table of offloadable functions, indexed both ways. A name registered
/// twice, as two versions of one crate in a build can do, maps to `None`:
/// such a function is not portable, since a worker could reach the wrong
/// one.
struct Index {
    by_key: HashMap<TypeId, Option<&'static Registration>>,
    by_name: HashMap<&'static str, Option<&'static Registration>>,
}

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut index = Index {
            by_key: HashMap::new(),
            by_name: HashMap::new(),
        };
        for registration in OFFLOADABLE.iter() {
            insert_unique(&mut index.by_key, (registration.key)(), registration);
            insert_unique(&mut index.by_name, registration.name, registration);
        }
        index
    })
}

fn insert_unique<K: Hash + Eq>(
    map: &mut HashMap<K, Option<&'static Registration>>,
    key: K,
    registration: &'static Registration,
) {
    match map.entry(key) {
        hash_map::Entry::Vacant(slot) => {
            slot.insert(Some(registration));
        }
        hash_map::Entry::Occupied(mut slot) => {
            slot.insert(None);
        }
    }
}

/// What the table of offloadable functions knows of a function.
pub(crate) enum Lookup {
    Found(&'static Registration),
    Missing,
    Ambiguous,
}

/// The registration of the function whose item type has this type id.
pub(crate) fn by_key(key: TypeId) -> Lookup {
    lookup(&index().by_key, &key)
}

/// The registration under this name.
pub(crate) fn by_name(name: &str) -> Lookup {
    lookup(&index().by_name, name)
}

fn lookup<K: Hash + Eq + Borrow<Q>, Q: Hash + Eq + ?Sized>(
    map: &HashMap<K, Option<&'static Registration>>,
    key: &Q,
) -> Lookup {
    match map.get(key) {
        Some(Some(registration)) => Lookup::Found(registration),
        Some(None) => Lookup::Ambiguous,
        None => Lookup::Missing,
    }
}

/// FNV-1a, 64 bits: the fingerprint of a signature's text. Stable across
/// builds, compilers and machines (unlike `std`'s `DefaultHasher`).
#[doc(hidden)]
pub const fn fingerprint(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Decodes one argument of a call from the front of `bytes`, nested at
/// most `max_depth` levels; returns it and the rest.
#[doc(hidden)]
pub fn take_arg<'de, T: serde::Deserialize<'de>>(
    bytes: &'de [u8],
    max_depth: usize,
) -> Result<(T, &'de [u8]), InvokeError> {
    codec::take(bytes, Limits { max_depth }).map_err(|error| InvokeError::Arguments(Failure(error)))
}

/// The type id of a value's type, lifetimes erased: a registered
/// function's key (see [`Registration::key`]).
#[doc(hidden)]
pub fn type_id_of_val<T: ?Sized>(_: &T) -> TypeId {
    typeid::of::<T>()
}

/// The deepest nesting a strategy decodes, and the setting that says so
/// (named in the error of a value nested deeper).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DepthLimit {
    pub(crate) levels: usize,
    pub(crate) setting: &'static str,
}

/// Why a value could not cross: the codec's error, opaque outside the
/// crate.
#[doc(hidden)]
#[derive(Debug)]
pub struct Failure(pub(crate) CodecError);

impl Failure {
    /// The error, and for a value nested too deep the setting that bounds
    /// it (such as `ProcessesBuilder::max_depth`).
    pub(crate) fn explain(&self, setting: &str) -> String {
        match self.0 {
            CodecError::TooDeep { .. } => format!("{} (`{setting}`)", self.0),
            _ => self.0.to_string(),
        }
    }
}

/// Why a worker could not run a call to the end: which side of it failed.
#[doc(hidden)]
#[derive(Debug)]
pub enum InvokeError {
    /// Its arguments could not be decoded: the function did not run.
    Arguments(Failure),
    /// Its result could not be encoded: the function ran.
    Result(Failure),
}

impl InvokeError {
    /// What went wrong, for the requester: whether the function ran, and
    /// why not, naming `setting` (the depth limit that applied) if the
    /// value was nested too deep. The same words wherever a worker runs the
    /// call (a worker process, a remote worker's threads).
    pub(crate) fn describe(&self, setting: &str) -> String {
        match self {
            InvokeError::Arguments(error) => format!(
                "the worker could not decode its arguments, so it did not run: {}",
                error.explain(setting)
            ),
            InvokeError::Result(error) => format!(
                "it ran, but the worker could not encode its result: {}",
                error.explain(setting)
            ),
        }
    }
}

/// What encoding a call's arguments gives: nothing, or why not.
#[doc(hidden)]
pub type EncodeOutcome = Result<(), Failure>;

/// Checks that a call's arguments used all its bytes.
#[doc(hidden)]
pub fn end_of_args(rest: &[u8]) -> Result<(), InvokeError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(InvokeError::Arguments(Failure(CodecError::TrailingBytes(
            rest.len(),
        ))))
    }
}

/// Appends one encoded argument to `out`, nested at most `max_depth` levels
/// (postcard encodes a tuple as its elements in a row).
#[doc(hidden)]
pub fn encode_value<T: serde::Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    max_depth: usize,
) -> EncodeOutcome {
    codec::encode_bounded(value, out, Limits { max_depth }).map_err(Failure)
}

/// Appends a call's encoded result to `out`, nested at most `max_depth`
/// levels, in a worker.
#[doc(hidden)]
pub fn encode_result<T: serde::Serialize>(
    value: &T,
    out: &mut Vec<u8>,
    max_depth: usize,
) -> Result<(), InvokeError> {
    codec::encode_bounded(value, out, Limits { max_depth })
        .map_err(|error| InvokeError::Result(Failure(error)))
}

/// Decodes a result in the parent, nested at most `max_depth` levels, boxed
/// for the call's slot.
#[doc(hidden)]
pub fn decode_result<T>(bytes: &[u8], max_depth: usize) -> Result<Box<dyn Any + Send>, Failure>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let value: T = codec::whole(bytes, Limits { max_depth }).map_err(Failure)?;
    Ok(Box::new(value))
}
