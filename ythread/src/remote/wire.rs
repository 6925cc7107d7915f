//! What a remote worker answers: the call's encoded result, or why there is
//! none. A request's payload is the call's encoded arguments alone: its
//! subject names the function and the signature.

use serde::{Deserialize, Serialize};

use crate::error::WireError;

/// A worker's reply (postcard).
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Reply<'a> {
    /// The result, as the function's registration encodes it.
    Done(#[serde(borrow)] &'a [u8]),
    /// The call failed on the worker's machine.
    Failed(WireError),
}

impl<'a> Reply<'a> {
    pub(crate) fn decode(bytes: &'a [u8]) -> Result<Reply<'a>, postcard::Error> {
        match postcard::take_from_bytes(bytes)? {
            (reply, []) => Ok(reply),
            _ => Err(postcard::Error::DeserializeBadEncoding),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        // Encoding a byte slice or strings into a `Vec` cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }
}
