//! Postcard encoding and decoding of values that cross a process boundary.
//!
//! Bytes from another process are untrusted, and postcard alone decodes them
//! with no bound on depth or work: a deeply nested value, legitimate or
//! forged, overflows the receiving thread's stack, and a `Vec<()>` claiming
//! 2^40 elements spins for hours (zero-sized elements consume no input).
//! Postcard also drops the message of a value's own `Error::custom`. So
//! decoding goes through an adapter around postcard's deserializer that
//! bounds depth and work and has an error type of its own.
//!
//! Encoding a deep value overflows the sender's stack just the same, though
//! the receiver would refuse it: [`encode_bounded`] goes through an adapter
//! around postcard's serializer that refuses what [`take`] would refuse, and
//! keeps messages.

use std::fmt;

use serde::de::{self, Deserialize as _, DeserializeSeed};
use serde::ser::{self, Serialize};

/// Bounds on decoding a value that came from another process, and on
/// encoding one for another process ([`encode_bounded`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The deepest nesting accepted: each sequence, tuple, map, struct, enum
    /// variant with data, `Some`, and newtype counts one level. The value
    /// itself is at level 0 and its parts one level below it, so a
    /// `Vec<Vec<u8>>` reaches level 2.
    pub(crate) max_depth: usize,
}

impl Limits {
    /// 128 levels, as serde_json: a value this deep fits well in the
    /// 256 KiB of stack that a small thread or a coroutine driving a call
    /// may have, even in a debug build; 256 levels would not fit there
    /// comfortably.
    ///
    /// Measured stack per level through this adapter, as the smallest
    /// thread stack a chain decodes on (1,000 against 5,000 steps; x86_64,
    /// Rust 1.95; a `Node` or a `List` is two levels, an `Expr::Neg` one):
    ///
    /// | shape                                        | debug | release |
    /// | -------------------------------------------- | ----- | ------- |
    /// | `struct Node { children: Vec<Node> }`        | 712 B | 96 B    |
    /// | `struct List { next: Option<Box<List>> }`    | 472 B | 40 B    |
    /// | `enum Expr { Num(i64), Neg(Box<Expr>), .. }` | 576 B | 112 B   |
    ///
    /// (postcard alone: 696, 384 and 416 B in debug). The values of exactly
    /// 128 levels that the tests decode need at most 97 KiB of stack in a
    /// debug build, thread start included, and under 17 KiB in release. A
    /// type whose `Deserialize` keeps more on the stack per level costs more.
    ///
    /// Encoding through [`encode_bounded`] takes 504, 288 and 560 B per level
    /// in a debug build (postcard alone: 344, 176 and 352 B), and the same
    /// values of 128 levels need at most 76 KiB; in release, 48 B per level
    /// for `Node`, nothing for the others (their recursion is a tail call).
    pub(crate) const DEFAULT: Limits = Limits { max_depth: 128 };
}

/// Why a value could not be encoded or decoded.
#[derive(Debug)]
pub(crate) enum CodecError {
    /// Nested deeper than `limit` levels.
    TooDeep { limit: usize },
    /// More sequence elements and map entries than the input could hold:
    /// `limit` is `input_len` plus [`FREE_ELEMENTS`].
    TooMany { limit: usize, input_len: usize },
    /// The value's own `Serialize` or `Deserialize` refused, with its message
    /// (from `Error::custom`), kept verbatim.
    Custom(String),
    /// A malformed encoding: postcard's error.
    Postcard(postcard::Error),
    /// Bytes left after the value: how many.
    TrailingBytes(usize),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::TooDeep { limit } => {
                write!(
                    f,
                    "the value is nested deeper than {limit} levels, the limit"
                )
            }
            CodecError::TooMany { limit, input_len } => write!(
                f,
                "the value has more than {limit} sequence elements and map entries, \
                 the limit for {input_len} bytes of input"
            ),
            CodecError::Custom(message) => f.write_str(message),
            CodecError::Postcard(error) => error.fmt(f),
            CodecError::TrailingBytes(1) => f.write_str("1 byte is left after the value"),
            CodecError::TrailingBytes(n) => write!(f, "{n} bytes are left after the value"),
        }
    }
}

impl std::error::Error for CodecError {}

impl From<postcard::Error> for CodecError {
    fn from(error: postcard::Error) -> Self {
        CodecError::Postcard(error)
    }
}

/// Decodes one `T` from the front of `bytes`; returns it and the rest.
pub(crate) fn take<'de, T: de::Deserialize<'de>>(
    bytes: &'de [u8],
    limits: Limits,
) -> Result<(T, &'de [u8]), CodecError> {
    let mut state = State {
        postcard: postcard::Deserializer::from_bytes(bytes),
        max_depth: limits.max_depth,
        input_len: bytes.len(),
        elements_left: bytes.len().saturating_add(FREE_ELEMENTS),
    };
    let value = T::deserialize(Level {
        state: &mut state,
        depth: 0,
    })
    .map_err(|error| *error.0)?;
    // `finalize` consumes the deserializer and hands back the unread bytes;
    // for a slice it cannot fail.
    Ok((value, state.postcard.finalize()?))
}

/// Decodes exactly one `T` (trailing bytes are an error).
pub(crate) fn whole<'de, T: de::Deserialize<'de>>(
    bytes: &'de [u8],
    limits: Limits,
) -> Result<T, CodecError> {
    match take(bytes, limits)? {
        (value, []) => Ok(value),
        (_, rest) => Err(CodecError::TrailingBytes(rest.len())),
    }
}

/// Appends `value`, postcard-encoded, to `out`, refusing (with `TooDeep`) a
/// value nested deeper than `limits.max_depth`, counted exactly as [`take`]
/// counts it: what one accepts, the other accepts with the same limits. On
/// error, `out` is left as it was before the call.
///
/// Refused before going deeper, so a deep value cannot overflow the stack
/// here; and a value's own `Error::custom` keeps its message.
pub(crate) fn encode_bounded<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    limits: Limits,
) -> Result<(), CodecError> {
    let start = out.len();
    let mut state = EncodeState {
        postcard: postcard::Serializer {
            output: Append(out),
        },
        max_depth: limits.max_depth,
    };
    let result = value.serialize(EncodeLevel {
        state: &mut state,
        levels_left: limits.max_depth,
    });
    result.map_err(|error| {
        out.truncate(start);
        *error.0
    })
}

/// Lends `out` to postcard: to `postcard::to_extend`, which takes its writer
/// by value and drops it on error (and `&mut Vec<u8>` is not `Extend<u8>`),
/// and as a flavor to [`encode_bounded`]'s serializer.
struct Append<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        self.0.extend(bytes);
    }
}

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    /// An `extend`, not a `push`, which reloads the buffer's address for
    /// every element of a `Vec<u8>`: 9 instructions a byte, as
    /// `postcard::to_extend`, against 11.
    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.extend([byte]);
        Ok(())
    }

    /// One copy, where the default pushes byte by byte.
    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Sequence elements and map entries allowed beyond one per input byte.
///
/// Every element of a length-prefixed sequence and every map entry counts,
/// across the whole value; decoding fails once the count exceeds the input's
/// length plus this. An element whose encoding is not empty has a byte of
/// its own (one outside the counted elements inside it: there is one, as a
/// sequence inside it has a length prefix), so a legitimate value fails only
/// if it holds more than this many elements that take no bytes (`()`, unit
/// structs), and a forged length stops after about this many cheap steps.
/// Tuple and struct fields do not count: the type bounds them.
const FREE_ELEMENTS: usize = 1 << 20;

/// One decoding: postcard's deserializer, which reads the scalars and the
/// prefixes, and what the decoding has spent.
struct State<'de> {
    postcard: postcard::Deserializer<'de, postcard::de_flavors::Slice<'de>>,
    max_depth: usize,
    input_len: usize,
    /// What is left of the element budget (see [`FREE_ELEMENTS`]).
    elements_left: usize,
}

/// The adapters' error (decoding's and bounded encoding's), which keeps
/// messages (postcard's drops them): a [`CodecError`], boxed so that results
/// stay small on the hot path (a fifth fewer instructions decoding a
/// `Vec<u32>`).
#[derive(Debug)]
struct AdapterError(Box<CodecError>);

impl AdapterError {
    #[cold]
    fn new(error: CodecError) -> Self {
        AdapterError(Box::new(error))
    }
}

impl fmt::Display for AdapterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for AdapterError {}

impl de::Error for AdapterError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        AdapterError::new(CodecError::Custom(message.to_string()))
    }
}

impl ser::Error for AdapterError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        AdapterError::new(CodecError::Custom(message.to_string()))
    }
}

impl From<postcard::Error> for AdapterError {
    fn from(error: postcard::Error) -> Self {
        AdapterError::new(CodecError::Postcard(error))
    }
}

/// The adapter: a `Deserializer` for the value at level `depth`.
///
/// It reads scalars with postcard but frames compound values itself (option
/// tag, length prefix, variant index: postcard's wire format) rather than
/// relaying postcard's compound methods, so that it hands each nested value
/// a `Level` one deeper, checked before anything below is read, and calls
/// the value's visitors with its own error type, which keeps their messages.
/// Relaying instead (wrapping postcard's visitors, accesses and seeds, as
/// `serde_stacker` does) cost well over twice the stack per level in a debug
/// build (`Node`: 1,976 B against 712 B), and 128 levels barely fit in
/// 256 KiB. The tests check that this framing decodes arbitrary bytes as
/// postcard does.
struct Level<'a, 'de> {
    state: &'a mut State<'de>,
    depth: usize,
}

impl<'a, 'de> Level<'a, 'de> {
    /// The `len` parts of this value, each a level below it.
    fn parts(self, len: usize, counted: bool) -> Seq<'a, 'de> {
        Seq {
            level: self,
            len,
            counted,
        }
    }

    /// The level below, for a nested value.
    #[inline]
    fn nested(&mut self) -> Result<Level<'_, 'de>, AdapterError> {
        let depth = self.depth + 1;
        if depth > self.state.max_depth {
            return Err(AdapterError::new(CodecError::TooDeep {
                limit: self.state.max_depth,
            }));
        }
        Ok(Level {
            state: self.state,
            depth,
        })
    }

    /// A length prefix: a varint `usize`, as postcard writes it.
    fn length(&mut self) -> Result<usize, AdapterError> {
        let length = u64::deserialize(&mut self.state.postcard)?;
        usize::try_from(length).map_err(|_| postcard::Error::DeserializeBadVarint.into())
    }
}

/// The elements of a sequence, tuple or struct, or the entries of a map.
struct Seq<'a, 'de> {
    level: Level<'a, 'de>,
    /// How many are left.
    len: usize,
    /// Whether they count against the budget (see [`FREE_ELEMENTS`]).
    counted: bool,
}

impl<'de> Seq<'_, 'de> {
    /// The count a visitor may pre-allocate for: the claimed one only when
    /// the input could hold it, as postcard does (a visitor that trusts the
    /// hint, `Vec::with_capacity(hint)`, must not be made to allocate what a
    /// forged length claims).
    fn hint(&self) -> Option<usize> {
        (self.len <= self.level.state.input_len).then_some(self.len)
    }

    /// The level of the next element, if there is one.
    #[inline]
    fn next(&mut self) -> Result<Option<Level<'_, 'de>>, AdapterError> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        if self.counted {
            let state = &mut *self.level.state;
            if state.elements_left == 0 {
                return Err(AdapterError::new(CodecError::TooMany {
                    limit: state.input_len.saturating_add(FREE_ELEMENTS),
                    input_len: state.input_len,
                }));
            }
            state.elements_left -= 1;
        }
        self.level.nested().map(Some)
    }
}

impl<'de> de::SeqAccess<'de> for Seq<'_, 'de> {
    type Error = AdapterError;

    // Inlined into the caller's loop, as postcard's is: left a call, it took
    // a fifth more instructions decoding a `Vec<u32>`.
    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, AdapterError> {
        match self.next()? {
            Some(level) => seed.deserialize(level).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint()
    }
}

impl<'de> de::MapAccess<'de> for Seq<'_, 'de> {
    type Error = AdapterError;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, AdapterError> {
        de::SeqAccess::next_element_seed(self, seed)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, AdapterError> {
        seed.deserialize(self.level.nested()?)
    }

    fn size_hint(&self) -> Option<usize> {
        self.hint()
    }
}

/// Scalars: read by postcard, handed to the visitor here.
macro_rules! scalars {
    ($($method:ident: $type:ty => $visit:ident;)*) => {$(
        fn $method<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, AdapterError> {
            visitor.$visit(<$type>::deserialize(&mut self.state.postcard)?)
        }
    )*};
}

impl<'a, 'de> de::Deserializer<'de> for Level<'a, 'de> {
    type Error = AdapterError;

    scalars! {
        deserialize_bool: bool => visit_bool;
        deserialize_i8: i8 => visit_i8;
        deserialize_i16: i16 => visit_i16;
        deserialize_i32: i32 => visit_i32;
        deserialize_i64: i64 => visit_i64;
        deserialize_i128: i128 => visit_i128;
        deserialize_u8: u8 => visit_u8;
        deserialize_u16: u16 => visit_u16;
        deserialize_u32: u32 => visit_u32;
        deserialize_u64: u64 => visit_u64;
        deserialize_u128: u128 => visit_u128;
        deserialize_f32: f32 => visit_f32;
        deserialize_f64: f64 => visit_f64;
        deserialize_char: char => visit_char;
        deserialize_str: &'de str => visit_borrowed_str;
        deserialize_string: &'de str => visit_str;
        deserialize_bytes: &'de [u8] => visit_borrowed_bytes;
        deserialize_byte_buf: &'de [u8] => visit_bytes;
    }

    /// Postcard's format does not describe itself.
    fn deserialize_any<V: de::Visitor<'de>>(self, _: V) -> Result<V::Value, AdapterError> {
        Err(postcard::Error::WontImplement.into())
    }

    fn deserialize_identifier<V: de::Visitor<'de>>(self, _: V) -> Result<V::Value, AdapterError> {
        Err(postcard::Error::WontImplement.into())
    }

    fn deserialize_ignored_any<V: de::Visitor<'de>>(self, _: V) -> Result<V::Value, AdapterError> {
        Err(postcard::Error::WontImplement.into())
    }

    fn deserialize_option<V: de::Visitor<'de>>(
        mut self,
        visitor: V,
    ) -> Result<V::Value, AdapterError> {
        match u8::deserialize(&mut self.state.postcard)? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self.nested()?),
            _ => Err(postcard::Error::DeserializeBadOption.into()),
        }
    }

    fn deserialize_unit<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, AdapterError> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: de::Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, AdapterError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        mut self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, AdapterError> {
        visitor.visit_newtype_struct(self.nested()?)
    }

    fn deserialize_seq<V: de::Visitor<'de>>(
        mut self,
        visitor: V,
    ) -> Result<V::Value, AdapterError> {
        let len = self.length()?;
        visitor.visit_seq(self.parts(len, true))
    }

    fn deserialize_tuple<V: de::Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, AdapterError> {
        visitor.visit_seq(self.parts(len, false))
    }

    fn deserialize_tuple_struct<V: de::Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, AdapterError> {
        visitor.visit_seq(self.parts(len, false))
    }

    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, AdapterError> {
        visitor.visit_seq(self.parts(fields.len(), false))
    }

    /// Postcard's maps are all length-prefixed: every entry counts.
    fn deserialize_map<V: de::Visitor<'de>>(
        mut self,
        visitor: V,
    ) -> Result<V::Value, AdapterError> {
        let len = self.length()?;
        visitor.visit_map(self.parts(len, true))
    }

    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, AdapterError> {
        visitor.visit_enum(self)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

impl<'a, 'de> de::EnumAccess<'de> for Level<'a, 'de> {
    type Error = AdapterError;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self), AdapterError> {
        let index = u32::deserialize(&mut self.state.postcard)?;
        let value = seed.deserialize(de::value::U32Deserializer::<AdapterError>::new(index))?;
        Ok((value, self))
    }
}

/// A variant's data is one level below the enum, a tuple or struct variant's
/// fields as a newtype variant's content.
impl<'de> de::VariantAccess<'de> for Level<'_, 'de> {
    type Error = AdapterError;

    fn unit_variant(self) -> Result<(), AdapterError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        mut self,
        seed: T,
    ) -> Result<T::Value, AdapterError> {
        seed.deserialize(self.nested()?)
    }

    fn tuple_variant<V: de::Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, AdapterError> {
        visitor.visit_seq(self.parts(len, false))
    }

    fn struct_variant<V: de::Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, AdapterError> {
        visitor.visit_seq(self.parts(fields.len(), false))
    }
}

/// One bounded encoding: postcard's serializer, which writes the scalars and
/// the framing (option tag, length prefix, variant index), and the limit.
struct EncodeState<'o> {
    postcard: postcard::Serializer<Append<'o>>,
    max_depth: usize,
}

/// The bounded encoder: a `Serializer` for the value `levels_left` levels
/// above the limit. Postcard writes what is not nested; every nested value
/// (the content of `Some` and of a newtype, each element, field, key and
/// value) is handed an `EncodeLevel` one deeper, checked before its
/// `Serialize` is called, so that a value too deep is refused after
/// `max_depth` levels of recursion, not after all of them. The compound
/// types are `EncodeLevel`s too: postcard writes their prefix, and their
/// parts go through here.
///
/// Two words (levels left rather than depth, the limit behind the pointer):
/// a debug build keeps copies of it in every frame of a value's `Serialize`,
/// and three words took a fifth more stack per level; and the check needs
/// no load, so that an optimized build takes it out of a loop over bytes.
struct EncodeLevel<'a, 'o> {
    state: &'a mut EncodeState<'o>,
    levels_left: usize,
}

impl<'o> EncodeLevel<'_, 'o> {
    /// The level below, for a nested value; as [`Level::nested`].
    #[inline]
    fn nested(&mut self) -> Result<EncodeLevel<'_, 'o>, AdapterError> {
        if self.levels_left == 0 {
            return Err(AdapterError::new(CodecError::TooDeep {
                limit: self.state.max_depth,
            }));
        }
        Ok(EncodeLevel {
            state: &mut *self.state,
            levels_left: self.levels_left - 1,
        })
    }
}

/// Methods with nothing nested: postcard's.
macro_rules! forward {
    ($($method:ident($($arg:ident: $type:ty),*);)*) => {$(
        #[inline]
        fn $method(self, $($arg: $type),*) -> Result<(), AdapterError> {
            Ok(ser::Serializer::$method(&mut self.state.postcard, $($arg),*)?)
        }
    )*};
}

/// Postcard writes the prefix (or nothing) and hands back itself, which is
/// dropped: the parts go through `self`, and `end` to postcard.
macro_rules! forward_compound {
    ($($method:ident($($arg:ident: $type:ty),*);)*) => {$(
        #[inline]
        fn $method(self, $($arg: $type),*) -> Result<Self, AdapterError> {
            ser::Serializer::$method(&mut self.state.postcard, $($arg),*)?;
            Ok(self)
        }
    )*};
}

impl<'a, 'o> ser::Serializer for EncodeLevel<'a, 'o> {
    type Ok = ();
    type Error = AdapterError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    forward! {
        serialize_bool(v: bool);
        serialize_i8(v: i8);
        serialize_i16(v: i16);
        serialize_i32(v: i32);
        serialize_i64(v: i64);
        serialize_i128(v: i128);
        serialize_u8(v: u8);
        serialize_u16(v: u16);
        serialize_u32(v: u32);
        serialize_u64(v: u64);
        serialize_u128(v: u128);
        serialize_f32(v: f32);
        serialize_f64(v: f64);
        serialize_char(v: char);
        serialize_str(v: &str);
        serialize_bytes(v: &[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    forward_compound! {
        serialize_seq(len: Option<usize>);
        serialize_tuple(len: usize);
        serialize_tuple_struct(name: &'static str, len: usize);
        serialize_tuple_variant(name: &'static str, index: u32, variant: &'static str, len: usize);
        serialize_map(len: Option<usize>);
        serialize_struct(name: &'static str, len: usize);
        serialize_struct_variant(name: &'static str, index: u32, variant: &'static str, len: usize);
    }

    /// Postcard's tag for `Some`, then the value a level below.
    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(mut self, value: &T) -> Result<(), AdapterError> {
        ser::Serializer::serialize_u8(&mut self.state.postcard, 1)?;
        value.serialize(self.nested()?)
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        mut self,
        _: &'static str,
        value: &T,
    ) -> Result<(), AdapterError> {
        value.serialize(self.nested()?)
    }

    /// Postcard writes the variant index, as for a unit variant, then the
    /// value a level below.
    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), AdapterError> {
        ser::Serializer::serialize_unit_variant(&mut self.state.postcard, name, index, variant)?;
        value.serialize(self.nested()?)
    }

    /// Postcard's: formats twice, to learn the length first.
    fn collect_str<T: fmt::Display + ?Sized>(self, value: &T) -> Result<(), AdapterError> {
        Ok(ser::Serializer::collect_str(
            &mut self.state.postcard,
            value,
        )?)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// Each element or field a level below.
///
/// `inline`, not `inline(always)`: that takes a sixth off encoding a small
/// struct in release, but a debug build then keeps each part's temporaries
/// in the frame of the value's `Serialize`, a third more stack per level
/// for an enum with a tuple variant.
macro_rules! nested_parts {
    ($($trait:ident::$method:ident($($key:ty)?);)*) => {$(
        impl ser::$trait for EncodeLevel<'_, '_> {
            type Ok = ();
            type Error = AdapterError;

            #[inline]
            fn $method<T: Serialize + ?Sized>(
                &mut self,
                $(_: $key,)?
                value: &T,
            ) -> Result<(), AdapterError> {
                value.serialize(self.nested()?)
            }

            #[inline]
            fn end(self) -> Result<(), AdapterError> {
                Ok(ser::$trait::end(&mut self.state.postcard)?)
            }
        }
    )*};
}

nested_parts! {
    SerializeSeq::serialize_element();
    SerializeTuple::serialize_element();
    SerializeTupleStruct::serialize_field();
    SerializeTupleVariant::serialize_field();
    SerializeStruct::serialize_field(&'static str);
    SerializeStructVariant::serialize_field(&'static str);
}

/// Keys and values alike a level below, as [`take`] reads them.
impl ser::SerializeMap for EncodeLevel<'_, '_> {
    type Ok = ();
    type Error = AdapterError;

    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), AdapterError> {
        key.serialize(self.nested()?)
    }

    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), AdapterError> {
        value.serialize(self.nested()?)
    }

    #[inline]
    fn end(self) -> Result<(), AdapterError> {
        Ok(ser::SerializeMap::end(&mut self.state.postcard)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::{BTreeMap, HashMap};
    use std::fmt::Debug;

    const DEFAULT: Limits = Limits::DEFAULT;
    const MAX: usize = Limits::DEFAULT.max_depth;

    fn limit(max_depth: usize) -> Limits {
        Limits { max_depth }
    }

    /// Runs `f` on a thread with a 256 KiB stack, as a small thread or a
    /// coroutine driving a call may have: an overflow aborts the test run.
    fn on_small_stack<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(scope, f)
                .unwrap()
                .join()
                .unwrap()
        })
    }

    fn encoded<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        encode_bounded(
            value,
            &mut out,
            Limits {
                max_depth: usize::MAX,
            },
        )
        .unwrap();
        out
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Node {
        children: Vec<Node>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct List {
        next: Option<Box<List>>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Expr {
        Num(i64),
        Neg(Box<Expr>),
        Add(Box<Expr>, Box<Expr>),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct MapTree(BTreeMap<u8, MapTree>);

    /// `n` nodes, each the only child of the one before: node k (from 1)
    /// is at level 2(k - 1) and its `children` at 2k - 1.
    fn nodes(n: usize) -> Node {
        (1..n).fold(Node { children: vec![] }, |node, _| Node {
            children: vec![node],
        })
    }

    /// `n` lists, each the `next` of the one before: list k (from 1) is at
    /// level 2(k - 1) and its `next` at 2k - 1.
    fn lists(n: usize) -> List {
        (1..n).fold(List { next: None }, |list, _| List {
            next: Some(Box::new(list)),
        })
    }

    /// `n` negations of `Num(0)`: the number's content is at level n + 1.
    fn negations(n: usize) -> Expr {
        (0..n).fold(Expr::Num(0), |expr, _| Expr::Neg(Box::new(expr)))
    }

    /// Decodes `bytes` as `T` on a small stack with a limit of `max_depth`.
    fn decode_small<T: for<'de> Deserialize<'de>>(
        bytes: &[u8],
        max_depth: usize,
    ) -> Result<(), CodecError> {
        on_small_stack(|| whole::<T>(bytes, limit(max_depth)).map(drop))
    }

    /// Encodes `value` with `encode_bounded` on a small stack with a limit
    /// of `max_depth`.
    fn encode_small<T: Serialize + Sync + ?Sized>(
        value: &T,
        max_depth: usize,
    ) -> Result<Vec<u8>, CodecError> {
        on_small_stack(|| {
            let mut out = Vec::new();
            encode_bounded(value, &mut out, limit(max_depth)).map(|()| out)
        })
    }

    /// `at` is exactly `MAX` levels deep and `over` one more: `at` decodes
    /// and encodes at the default limit (on a small stack) and not one below;
    /// `over` fails at the default limit, naming it, and passes one above.
    fn check_exact_depth<A, O>(at: &A, over: &O)
    where
        A: Serialize + for<'de> Deserialize<'de> + Sync,
        O: Serialize + for<'de> Deserialize<'de> + Sync,
    {
        let (at_bytes, over_bytes) = (encoded(at), encoded(over));
        decode_small::<A>(&at_bytes, MAX).unwrap();
        assert_eq!(encode_small(at, MAX).unwrap(), at_bytes);
        for result in [
            decode_small::<A>(&at_bytes, MAX - 1),
            encode_small(at, MAX - 1).map(drop),
        ] {
            assert!(
                matches!(result, Err(CodecError::TooDeep { limit }) if limit == MAX - 1),
                "{result:?}"
            );
        }
        for result in [
            decode_small::<O>(&over_bytes, MAX),
            encode_small(over, MAX).map(drop),
        ] {
            let error = result.unwrap_err();
            assert!(
                matches!(error, CodecError::TooDeep { limit: MAX }),
                "{error:?}"
            );
            assert_eq!(
                error.to_string(),
                "the value is nested deeper than 128 levels, the limit"
            );
        }
        decode_small::<O>(&over_bytes, MAX + 1).unwrap();
        assert_eq!(encode_small(over, MAX + 1).unwrap(), over_bytes);
    }

    #[test]
    fn values_at_the_default_depth_pass_on_a_small_stack() {
        check_exact_depth(&vec![nodes(MAX / 2)], &nodes(MAX / 2 + 1));
        check_exact_depth(&Some(Box::new(lists(MAX / 2))), &lists(MAX / 2 + 1));
        check_exact_depth(&negations(MAX - 1), &negations(MAX));
        // The value that came back is the one sent.
        let bytes = encoded(&vec![nodes(MAX / 2)]);
        assert_eq!(
            whole::<Vec<Node>>(&bytes, DEFAULT).unwrap(),
            vec![nodes(MAX / 2)]
        );
    }

    /// The fewest levels within which `value` decodes as `T`.
    fn levels<T: Serialize + for<'de> Deserialize<'de>>(value: &T) -> usize {
        let bytes = encoded(value);
        (0..=MAX)
            .find(|&max_depth| match whole::<T>(&bytes, limit(max_depth)) {
                Ok(_) => true,
                Err(CodecError::TooDeep { limit }) if limit == max_depth => false,
                Err(error) => panic!("{error:?}"),
            })
            .unwrap()
    }

    #[test]
    fn each_kind_of_nesting_counts_one_level() {
        #[derive(Serialize, Deserialize)]
        struct Point {
            x: u8,
        }
        #[derive(Serialize, Deserialize)]
        struct Meters(u8);
        #[derive(Serialize, Deserialize)]
        enum Shape {
            Dot,
            Circle(u8),
            Line(u8, u8),
            Box { side: u8 },
        }
        assert_eq!(levels(&5u8), 0);
        assert_eq!(levels(&None::<u8>), 0);
        assert_eq!(levels(&Vec::<u8>::new()), 0);
        assert_eq!(levels(&Shape::Dot), 0);
        assert_eq!(levels(&Some(5u8)), 1);
        assert_eq!(levels(&vec![5u8]), 1);
        assert_eq!(levels(&(5u8, 6u8)), 1);
        assert_eq!(levels(&BTreeMap::from([(1u8, 2u8)])), 1);
        assert_eq!(levels(&Point { x: 1 }), 1);
        assert_eq!(levels(&Meters(1)), 1);
        assert_eq!(levels(&Shape::Circle(1)), 1);
        assert_eq!(levels(&Shape::Line(1, 2)), 1);
        assert_eq!(levels(&Shape::Box { side: 1 }), 1);
        assert_eq!(levels(&vec![Vec::<u8>::new()]), 1);
        assert_eq!(levels(&vec![vec![5u8]]), 2);
        assert_eq!(levels(&Some(Some(5u8))), 2);
        assert_eq!(levels(&BTreeMap::from([(1u8, vec![Point { x: 1 }])])), 3);
        assert_eq!(levels(&negations(3)), 4);
    }

    /// A newtype struct.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Wrap<T>(T);

    /// Bytes as bytes (`serialize_bytes`), as `serde_bytes` writes them.
    #[derive(Debug, Clone, PartialEq)]
    struct Raw(Vec<u8>);

    impl Serialize for Raw {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Raw {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            <&[u8]>::deserialize(deserializer).map(|bytes| Raw(bytes.to_vec()))
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Variants {
        Unit,
        Newtype(Box<Variants>),
        Tuple(u8, Box<Variants>),
        Struct { tag: u8, inner: Box<Variants> },
    }

    #[derive(Serialize, Deserialize)]
    struct Outer {
        tag: u8,
        inner: Inner,
    }

    #[derive(Serialize, Deserialize)]
    struct Inner {
        maybe: Option<u8>,
    }

    /// `encode_bounded` accepts `value` within exactly the limits within
    /// which `take` accepts its encoding as `T` (refusing, both name the
    /// limit, and `out` is left as it was), and writes postcard's bytes.
    /// Tries every limit up to one past the value's depth, which it returns.
    fn bounded_agrees<T: Serialize + for<'de> Deserialize<'de>>(value: &T) -> usize {
        let expected = postcard::to_stdvec(value).unwrap();
        let accepts = |max_depth| {
            let mut out = vec![0xAA];
            let ours = encode_bounded(value, &mut out, limit(max_depth));
            match (ours, whole::<T>(&expected, limit(max_depth)).map(drop)) {
                (Ok(()), Ok(())) => {
                    assert_eq!((out[0], &out[1..]), (0xAA, &expected[..]));
                    true
                }
                (Err(CodecError::TooDeep { limit: a }), Err(CodecError::TooDeep { limit: b }))
                    if a == max_depth && b == max_depth =>
                {
                    assert_eq!(out, [0xAA]);
                    false
                }
                (ours, theirs) => panic!("limit {max_depth}: ours {ours:?}, take's {theirs:?}"),
            }
        };
        let depth = (0..).find(|&max_depth| accepts(max_depth)).unwrap();
        assert!(accepts(depth + 1) && accepts(usize::MAX));
        depth
    }

    #[test]
    fn encode_bounded_accepts_what_take_accepts() {
        use Variants::*;
        let boxed = Box::new;
        assert_eq!(bounded_agrees(&5u8), 0);
        assert_eq!(bounded_agrees(&'é'), 0);
        assert_eq!(bounded_agrees(&"text".to_string()), 0);
        assert_eq!(bounded_agrees(&()), 0);
        assert_eq!(bounded_agrees(&None::<u8>), 0);
        assert_eq!(bounded_agrees(&Vec::<u8>::new()), 0);
        assert_eq!(bounded_agrees(&[0u8; 0]), 0);
        assert_eq!(bounded_agrees(&Raw(vec![1; 1024])), 0);
        assert_eq!(bounded_agrees(&Unit), 0);
        // Option chains.
        assert_eq!(bounded_agrees(&Some(())), 1);
        assert_eq!(bounded_agrees(&Some(Some(Some(5u8)))), 3);
        // Vec nesting.
        assert_eq!(bounded_agrees(&vec![0u8; 1024]), 1);
        assert_eq!(bounded_agrees(&vec![Vec::<u8>::new()]), 1);
        assert_eq!(bounded_agrees(&vec![vec![vec![5u8]]]), 3);
        assert_eq!(bounded_agrees(&[[5u8; 2]; 2]), 2);
        // Newtype structs.
        assert_eq!(bounded_agrees(&Wrap(())), 1);
        assert_eq!(bounded_agrees(&Wrap(Wrap(Wrap(5u8)))), 3);
        // Enum variants.
        assert_eq!(bounded_agrees(&Newtype(boxed(Unit))), 1);
        assert_eq!(bounded_agrees(&Tuple(1, boxed(Unit))), 1);
        let inner = boxed(Unit);
        assert_eq!(bounded_agrees(&Struct { tag: 1, inner }), 1);
        let inner = boxed(Newtype(boxed(Unit)));
        let variants = Newtype(boxed(Tuple(1, boxed(Struct { tag: 2, inner }))));
        assert_eq!(bounded_agrees(&variants), 4);
        // Maps of maps, and keys that nest.
        assert_eq!(bounded_agrees(&BTreeMap::<u8, u8>::new()), 0);
        let maps = BTreeMap::from([(1u8, BTreeMap::from([(2u8, BTreeMap::from([(3u8, 4u8)]))]))]);
        assert_eq!(bounded_agrees(&maps), 3);
        assert_eq!(
            bounded_agrees(&BTreeMap::from([((1u8, Some(2u8)), 0u8)])),
            3
        );
        assert_eq!(bounded_agrees(&HashMap::from([(1u8, vec![2u8])])), 2);
        // Tuples and structs.
        assert_eq!(bounded_agrees(&(1u8, (2u8, (3u8,)))), 3);
        let inner = Inner { maybe: Some(1) };
        assert_eq!(bounded_agrees(&Outer { tag: 0, inner }), 3);
        // Around the default limit.
        assert_eq!(bounded_agrees(&negations(MAX - 2)), MAX - 1);
        assert_eq!(bounded_agrees(&negations(MAX - 1)), MAX);
        assert_eq!(bounded_agrees(&negations(MAX)), MAX + 1);
        assert_eq!(bounded_agrees(&vec![nodes(MAX / 2)]), MAX);
        assert_eq!(bounded_agrees(&nodes(MAX / 2 + 1)), MAX + 1);
        assert_eq!(bounded_agrees(&Some(Box::new(lists(MAX / 2)))), MAX);
        assert_eq!(bounded_agrees(&lists(MAX / 2 + 1)), MAX + 1);
        // `collect_str` (not `Deserialize`): postcard's bytes.
        let mut out = vec![];
        encode_bounded(&format_args!("{}-{}", 1, 'é'), &mut out, limit(0)).unwrap();
        assert_eq!(
            out,
            postcard::to_stdvec(&format_args!("{}-{}", 1, 'é')).unwrap()
        );
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Value {
        Unit,
        Number(u64),
        Text(String),
        Bytes(Raw),
        Maybe(Option<Box<Value>>),
        List(Vec<Value>),
        Wrapped(Wrap<Box<Value>>),
        Pair(Box<Value>, Box<Value>),
        Named { tag: u8, inner: Box<Value> },
        Map(BTreeMap<(u8, Option<u8>), Value>),
        Tuple((u8, Box<Value>)),
    }

    /// Arbitrary `Value`s, mostly 3 to 9 levels deep.
    fn values() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Unit),
            any::<u64>().prop_map(Value::Number),
            ".{0,3}".prop_map(Value::Text),
            prop::collection::vec(any::<u8>(), 0..4).prop_map(|b| Value::Bytes(Raw(b))),
        ];
        leaf.prop_recursive(12, 64, 2, |inner| {
            let boxed = || inner.clone().prop_map(Box::new);
            prop_oneof![
                prop::option::of(boxed()).prop_map(Value::Maybe),
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
                boxed().prop_map(|v| Value::Wrapped(Wrap(v))),
                (boxed(), boxed()).prop_map(|(a, b)| Value::Pair(a, b)),
                (any::<u8>(), boxed()).prop_map(|(tag, inner)| Value::Named { tag, inner }),
                prop::collection::btree_map(any::<(u8, Option<u8>)>(), inner.clone(), 0..3)
                    .prop_map(Value::Map),
                (any::<u8>(), boxed()).prop_map(Value::Tuple),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_values_are_bounded_as_take_bounds_them(value in values()) {
            bounded_agrees(&value);
        }
    }

    /// `struct T { kids: Vec<T>, tag: u64 }`: the value that overflowed a
    /// release build at 100,000 levels.
    #[derive(Serialize)]
    struct Tagged {
        kids: Vec<Tagged>,
        tag: u64,
    }

    #[test]
    fn a_deep_value_is_refused_on_a_small_stack() {
        fn refused<T: Serialize + Sync>(value: T) {
            let result = encode_small(&value, MAX);
            assert!(
                matches!(result, Err(CodecError::TooDeep { limit: MAX })),
                "{result:?}"
            );
            // Dropping it recurses as deep as it is, more than a test
            // thread's stack holds.
            std::mem::forget(value);
        }
        refused(negations(20_000));
        refused(lists(20_000));
        refused(nodes(20_000));
        refused(Wrap(negations(20_000)));
        refused(Some(vec![Some(lists(20_000))]));
        refused((0..100_000).fold(
            Tagged {
                kids: vec![],
                tag: 0,
            },
            |t, tag| Tagged { kids: vec![t], tag },
        ));
        refused((0..20_000).fold(MapTree(BTreeMap::new()), |tree, key| {
            MapTree(BTreeMap::from([(key as u8, tree)]))
        }));
        // Appended to what `out` held, which it keeps.
        let mut out = vec![7];
        let error = encode_bounded(&nodes(MAX), &mut out, DEFAULT).unwrap_err();
        assert!(matches!(error, CodecError::TooDeep { limit: MAX }));
        assert_eq!(out, [7]);
    }

    #[test]
    fn a_forged_million_levels_fails_on_a_small_stack() {
        let ones = vec![1u8; 1_000_000];
        for result in [
            decode_small::<List>(&ones, MAX),
            decode_small::<Option<Box<List>>>(&ones, MAX),
            decode_small::<Node>(&ones, MAX),
            decode_small::<Expr>(&ones, MAX),
            decode_small::<MapTree>(&ones, MAX),
            decode_small::<Vec<Option<Expr>>>(&ones, MAX),
        ] {
            assert!(
                matches!(result, Err(CodecError::TooDeep { limit: MAX })),
                "{result:?}"
            );
        }
    }

    #[test]
    fn a_forged_count_of_empty_elements_stops() {
        for claimed in [1u64 << 40, u64::MAX, 1 << 32] {
            let bytes = encoded(&claimed);
            let input_len = bytes.len();
            let error = whole::<Vec<()>>(&bytes, DEFAULT)
                .map(|v| v.len())
                .unwrap_err();
            assert!(
                matches!(error, CodecError::TooMany { limit, input_len: n }
                    if n == input_len && limit == input_len + FREE_ELEMENTS),
                "{error:?}"
            );
            assert_eq!(
                error.to_string(),
                format!(
                    "the value has more than {} sequence elements and map entries, \
                     the limit for {input_len} bytes of input",
                    input_len + FREE_ELEMENTS
                )
            );
            // Maps count too (every entry rewrites the same key).
            let error = whole::<BTreeMap<(), ()>>(&bytes, DEFAULT).unwrap_err();
            assert!(matches!(error, CodecError::TooMany { .. }), "{error:?}");
        }
        assert_eq!(
            whole::<Vec<()>>(&encoded(&vec![(); 1000]), DEFAULT)
                .unwrap()
                .len(),
            1000
        );
    }

    /// A visitor that pre-allocates what the size hint says, as serde's
    /// documentation shows.
    struct Trusting(Vec<u64>);

    impl<'de> de::Deserialize<'de> for Trusting {
        fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> de::Visitor<'de> for Visitor {
                type Value = Trusting;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a sequence")
                }
                fn visit_seq<A: de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Trusting, A::Error> {
                    let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                    while let Some(value) = seq.next_element()? {
                        values.push(value);
                    }
                    Ok(Trusting(values))
                }
            }
            deserializer.deserialize_seq(Visitor)
        }
    }

    #[test]
    fn a_forged_length_is_no_size_hint() {
        // A length of 2^40 and nothing after it: with the claimed length as
        // its hint, the visitor would ask for 8 TiB and abort the process.
        let bytes = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        assert!(take::<Trusting>(&bytes, Limits::DEFAULT).is_err());
        // An honest one is still a hint.
        let bytes = postcard::to_stdvec(&vec![1u64, 2, 3]).unwrap();
        let (value, _) = take::<Trusting>(&bytes, Limits::DEFAULT).unwrap();
        assert_eq!((value.0.len(), value.0.capacity()), (3, 3));
    }

    #[test]
    fn the_element_budget_is_the_input_length_plus_a_million() {
        // A 3-byte length prefix: 3 + 2^20 empty elements is the most allowed.
        let most = 3 + FREE_ELEMENTS;
        let bytes = encoded(&vec![(); most]);
        assert_eq!(bytes.len(), 3);
        assert_eq!(whole::<Vec<()>>(&bytes, DEFAULT).unwrap().len(), most);
        let error = whole::<Vec<()>>(&encoded(&vec![(); most + 1]), DEFAULT)
            .map(|v| v.len())
            .unwrap_err();
        assert!(matches!(error, CodecError::TooMany { limit, input_len: 3 } if limit == most));
        // Counted across the whole value.
        let half = vec![(); FREE_ELEMENTS / 2 + 10];
        let error = whole::<Vec<Vec<()>>>(&encoded(&vec![half.clone(), half]), DEFAULT)
            .map(|v| v.len())
            .unwrap_err();
        assert!(matches!(error, CodecError::TooMany { .. }), "{error:?}");
        // Elements that take bytes, whatever their fields: 1.2 million
        // elements of three fields, two of them empty, are 1.2 MB.
        let many = vec![(7u8, (), ()); 1_200_000];
        assert_eq!(
            whole::<Vec<(u8, (), ())>>(&encoded(&many), DEFAULT).unwrap(),
            many
        );
    }

    /// Refuses a string without `@`, with a message.
    #[derive(Debug, PartialEq, Serialize)]
    struct Email(String);

    impl<'de> Deserialize<'de> for Email {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let text = String::deserialize(deserializer)?;
            if !text.contains('@') {
                return Err(de::Error::custom(format_args!("not an email: {text}")));
            }
            Ok(Email(text))
        }
    }

    #[derive(Debug, Serialize, Deserialize)]
    enum Contact {
        Mail(Email),
        Both(u8, Email),
        Named { email: Email },
    }

    #[test]
    fn a_deserialize_refusal_keeps_its_message() {
        let refused =
            |bytes: Vec<u8>, decode: fn(&[u8]) -> Result<(), CodecError>| match decode(&bytes) {
                Err(CodecError::Custom(message)) => assert_eq!(message, "not an email: x"),
                other => panic!("{other:?}"),
            };
        let x = || Email("x".into());
        refused(encoded(&x()), |b| whole::<Email>(b, DEFAULT).map(drop));
        refused(encoded(&vec![Email("a@b".into()), x()]), |b| {
            whole::<Vec<Email>>(b, DEFAULT).map(drop)
        });
        refused(encoded(&Some(x())), |b| {
            whole::<Option<Email>>(b, DEFAULT).map(drop)
        });
        refused(encoded(&BTreeMap::from([(1u8, x())])), |b| {
            whole::<BTreeMap<u8, Email>>(b, DEFAULT).map(drop)
        });
        refused(encoded(&Contact::Mail(x())), |b| {
            whole::<Contact>(b, DEFAULT).map(drop)
        });
        refused(encoded(&Contact::Both(1, x())), |b| {
            whole::<Contact>(b, DEFAULT).map(drop)
        });
        refused(encoded(&Contact::Named { email: x() }), |b| {
            whole::<Contact>(b, DEFAULT).map(drop)
        });
        // What postcard alone says.
        let bytes = encoded(&x());
        assert_eq!(
            postcard::from_bytes::<Email>(&bytes).unwrap_err(),
            postcard::Error::SerdeDeCustom
        );
        // Serde's own refusals too: a variant index out of range.
        let error = whole::<Contact>(&[9], DEFAULT).unwrap_err();
        assert!(
            matches!(&error, CodecError::Custom(m) if m.contains("variant index 0 <= i < 3")),
            "{error:?}"
        );
    }

    /// Refuses to be encoded when closed, with a message.
    struct Handle {
        closed: bool,
    }

    impl Serialize for Handle {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            if self.closed {
                return Err(ser::Error::custom("cannot encode a closed handle"));
            }
            serializer.serialize_u8(7)
        }
    }

    #[derive(Serialize)]
    enum Holder {
        Tuple(u8, Handle),
        Struct { first: String, handle: Handle },
    }

    #[test]
    fn a_serialize_refusal_keeps_its_message_and_out() {
        fn refused<T: Serialize + ?Sized>(value: &T) {
            let mut out = vec![9, 9, 9];
            match encode_bounded(value, &mut out, DEFAULT) {
                Err(CodecError::Custom(message)) => {
                    assert_eq!(message, "cannot encode a closed handle")
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(out, [9, 9, 9]);
        }
        let closed = || Handle { closed: true };
        let open = || Handle { closed: false };
        refused(&closed());
        // After other bytes of the same value were written.
        refused(&(1u32, "abc", closed()));
        refused(&[open(), closed()]);
        refused(&vec![Some(open()), Some(closed())]);
        refused(&BTreeMap::from([(1u8, open()), (2, closed())]));
        refused(&Holder::Tuple(3, closed()));
        refused(&Holder::Struct {
            first: "abc".into(),
            handle: closed(),
        });
        let mut out = vec![9];
        encode_bounded(
            &Holder::Struct {
                first: "a".into(),
                handle: open(),
            },
            &mut out,
            DEFAULT,
        )
        .unwrap();
        assert_eq!(out, [9, 1, 1, b'a', 7]);
    }

    #[test]
    fn other_encoding_errors_are_postcards() {
        /// Refuses only the first time: the second run finds no message.
        struct Once(std::cell::Cell<bool>);
        impl Serialize for Once {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if self.0.replace(false) {
                    return Err(ser::Error::custom("first time"));
                }
                serializer.serialize_unit()
            }
        }
        /// A sequence whose length is not known ahead.
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq((0..3u8).filter(|n| n % 2 == 0))
            }
        }
        let mut out = vec![1];
        // Encoding once, `encode_bounded` has the message.
        let error = encode_bounded(&(5u8, Once(true.into())), &mut out, DEFAULT).unwrap_err();
        assert!(
            matches!(&error, CodecError::Custom(m) if m == "first time"),
            "{error:?}"
        );
        let error = encode_bounded(&(5u8, Unsized), &mut out, DEFAULT).unwrap_err();
        assert!(
            matches!(
                error,
                CodecError::Postcard(postcard::Error::SerializeSeqLengthUnknown)
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            postcard::Error::SerializeSeqLengthUnknown.to_string()
        );
        assert_eq!(out, [1]);
    }

    #[test]
    fn trailing_bytes() {
        let error = whole::<u8>(&[1, 2, 3], DEFAULT).unwrap_err();
        assert!(matches!(error, CodecError::TrailingBytes(2)), "{error:?}");
        assert_eq!(error.to_string(), "2 bytes are left after the value");
        assert_eq!(
            whole::<u8>(&[1, 2], DEFAULT).unwrap_err().to_string(),
            "1 byte is left after the value"
        );
        // Arguments one after another, as a call sends them.
        let mut bytes = encoded("name");
        encode_bounded(&(5u64, 'é'), &mut bytes, DEFAULT).unwrap();
        let (name, rest) = take::<&str>(&bytes, DEFAULT).unwrap();
        assert_eq!(name, "name");
        let (args, rest) = take::<(u64, char)>(rest, DEFAULT).unwrap();
        assert_eq!((args, rest), ((5, 'é'), &[][..]));
        assert!(matches!(
            take::<u64>(rest, DEFAULT),
            Err(CodecError::Postcard(
                postcard::Error::DeserializeUnexpectedEnd
            ))
        ));
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Unit;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Meters(f64);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Empty,
        Circle(f32),
        Line(i16, i16),
        Named { name: String, sides: Option<u8> },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Everything {
        unit: Unit,
        meters: Meters,
        shapes: Vec<Shape>,
        flags: (bool, bool),
        small: (i8, i16, i32, i64, i128),
        large: (u8, u16, u32, u64, u128),
        chars: [char; 3],
        text: String,
        bytes: Vec<u8>,
        map: HashMap<String, Vec<Option<u32>>>,
        sorted: BTreeMap<u8, ()>,
        nothing: Option<Box<Everything>>,
    }

    /// `encode` and `encode_bounded` write what postcard writes, and `whole`
    /// reads it back as postcard does.
    fn agrees<T: Serialize + for<'de> Deserialize<'de> + PartialEq + Debug>(value: &T) {
        let expected = postcard::to_stdvec(value).unwrap();
        let mut out = vec![0xAA];
        encode_bounded(value, &mut out, DEFAULT).unwrap();
        assert_eq!((out[0], &out[1..]), (0xAA, &expected[..]));
        let ours: T = whole(&expected, DEFAULT).unwrap();
        assert_eq!(ours, postcard::from_bytes::<T>(&expected).unwrap());
        assert_eq!(&ours, value);
    }

    #[test]
    fn ordinary_values_agree_with_postcard() {
        let everything = Everything {
            unit: Unit,
            meters: Meters(-1.5),
            shapes: vec![
                Shape::Empty,
                Shape::Circle(2.5),
                Shape::Line(-300, 300),
                Shape::Named {
                    name: "hexagon".into(),
                    sides: Some(6),
                },
            ],
            flags: (true, false),
            small: (i8::MIN, -2, i32::MIN, i64::MAX, i128::MIN),
            large: (u8::MAX, 300, u32::MAX, u64::MAX, u128::MAX),
            chars: ['a', 'é', '🦀'],
            text: "héllo".into(),
            bytes: vec![0, 1, 255],
            map: HashMap::from([("k".into(), vec![None, Some(u32::MAX)])]),
            sorted: BTreeMap::from([(1, ()), (2, ())]),
            nothing: None,
        };
        agrees(&everything);
        agrees(&Some(Box::new(List {
            next: Some(Box::new(List { next: None })),
        })));
        agrees(&negations(3));
        agrees(&Expr::Add(
            Box::new(Expr::Num(1)),
            Box::new(Expr::Neg(Box::new(Expr::Num(-1)))),
        ));
        agrees(&nodes(4));
        agrees(&MapTree(BTreeMap::from([(1, MapTree(BTreeMap::new()))])));
        agrees(&u128::MAX);
        agrees(&'\u{10FFFF}');
        agrees(&String::new());
        agrees(&());
        agrees(&(1u8, "two".to_string(), [3u16; 3], (4u32, 5u64)));

        // Borrowed, not copied.
        let bytes = encoded(&("borrowed", &b"bytes"[..]));
        let (text, raw): (&str, &[u8]) = whole(&bytes, DEFAULT).unwrap();
        assert_eq!((text, raw), ("borrowed", &b"bytes"[..]));
        assert!(bytes.as_ptr_range().contains(&text.as_ptr()));
        assert!(bytes.as_ptr_range().contains(&raw.as_ptr()));
    }

    #[test]
    fn malformed_input_gets_postcards_error() {
        let cases: [(&[u8], postcard::Error); 5] = [
            (&[2], postcard::Error::DeserializeBadOption),
            (&[1, 1, 0xFF], postcard::Error::DeserializeBadUtf8),
            (&[1, 2, b'a'], postcard::Error::DeserializeUnexpectedEnd),
            (
                &[
                    1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1,
                ],
                postcard::Error::DeserializeBadVarint,
            ),
            (&[], postcard::Error::DeserializeUnexpectedEnd),
        ];
        for (bytes, expected) in cases {
            let ours = whole::<Option<String>>(bytes, DEFAULT).unwrap_err();
            let theirs = postcard::from_bytes::<Option<String>>(bytes).unwrap_err();
            assert!(
                matches!(&ours, CodecError::Postcard(e) if *e == expected && *e == theirs),
                "{ours:?}"
            );
            assert_eq!(ours.to_string(), expected.to_string());
        }
        #[derive(Debug, Deserialize)]
        #[serde(untagged)]
        enum SelfDescribed {
            Nothing,
        }
        let error = whole::<SelfDescribed>(&[1], DEFAULT).unwrap_err();
        assert!(
            matches!(error, CodecError::Postcard(postcard::Error::WontImplement)),
            "{error:?}"
        );
    }

    #[derive(Debug, PartialEq, Deserialize)]
    enum Tree {
        Leaf(u8),
        Pair(Box<Tree>, Box<Tree>),
        Many(Vec<Tree>),
        Maybe(Option<Box<Tree>>),
        Named { label: String, child: Box<Tree> },
        Empty,
        Map(BTreeMap<u16, Tree>),
        Wrapped(Box<Email>),
    }

    /// Ours and postcard's decodings of the front of `bytes` agree, when
    /// ours has no limit in the way; within `limits`, ours decodes no more
    /// than postcard.
    fn same_as_postcard<'de, T: Deserialize<'de> + PartialEq + Debug>(
        bytes: &'de [u8],
        limits: Limits,
    ) {
        let theirs = postcard::take_from_bytes::<T>(bytes);
        match (take::<T>(bytes, limit(usize::MAX)), &theirs) {
            (Ok(ours), Ok(theirs)) => assert_eq!(&ours, theirs),
            (Err(CodecError::Postcard(ours)), Err(theirs)) => assert_eq!(&ours, theirs),
            (Err(CodecError::Custom(_)), Err(postcard::Error::SerdeDeCustom)) => {}
            (ours, theirs) => panic!("ours {ours:?}, postcard's {theirs:?}"),
        }
        if let Ok(ours) = take::<T>(bytes, limits) {
            assert_eq!(Ok(ours), theirs);
        }
    }

    /// Arbitrary bytes, many of them small (tags, lengths, `Some`).
    fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop_oneof![0u8..4, any::<u8>()], 0..512)
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_decode_as_postcard_does(bytes in arbitrary_bytes(), max_depth in 0usize..8) {
            same_as_postcard::<Tree>(&bytes, limit(max_depth));
            same_as_postcard::<Vec<Option<String>>>(&bytes, limit(max_depth));
            same_as_postcard::<HashMap<u32, Vec<u8>>>(&bytes, limit(max_depth));
            same_as_postcard::<(Option<&str>, Vec<(i64, char)>, Expr)>(&bytes, limit(max_depth));
        }
    }
}
