//! Calls and replies signed with the fleet's key (HMAC-SHA256), for fleets
//! whose requesters and workers share one NATS credential: whoever holds
//! that credential can read the calls and publish on any inbox, but without
//! the key cannot make a worker run a call, redirect its result, or have a
//! requester take a result no worker sent.
//!
//! A call's signature covers its subject (the function and its signature),
//! its reply subject (unique to the call), its deadline and expiry, and its
//! arguments; a reply's covers its subject (the call's reply subject) and
//! its payload. So a signed reply answers one call only, and a signed call
//! cannot be sent elsewhere with another reply subject or a longer life.
//! What it does not stop: the same call sent again, unchanged, before it
//! expires, runs again (its reply is dropped: its call has been answered).

use super::hex;
use std::io;

use ring::hmac;

/// The header that carries a call's or a reply's signature, 64 hex digits.
pub(super) const SIGNATURE_HEADER: &str = "Ythread-Signature";

/// The shortest key accepted, in bytes: HMAC-SHA256's own strength.
pub(super) const MIN_KEY_BYTES: usize = 32;

/// The fleet's signing key.
pub(super) struct Key(hmac::Key);

/// What is signed, in order. Each field is length-prefixed, so that no two
/// sequences of fields sign alike.
pub(super) enum Signed<'a> {
    Call {
        subject: &'a str,
        reply: &'a str,
        headers: &'a str,
        payload: &'a [u8],
    },
    Reply {
        subject: &'a str,
        payload: &'a [u8],
    },
    /// A requester's cancellation of calls it answered "may have run".
    Cancel {
        subject: &'a str,
        payload: &'a [u8],
    },
}

impl Key {
    /// # Errors
    ///
    /// `InvalidInput` if `bytes` is shorter than [`MIN_KEY_BYTES`].
    pub(super) fn new(bytes: &[u8], setting: &str) -> io::Result<Key> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "`{setting}`: a signing key of {} bytes; it takes at least {MIN_KEY_BYTES} \
                     random bytes",
                    bytes.len()
                ),
            ));
        }
        Ok(Key(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    fn tag(&self, signed: &Signed<'_>) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.0);
        let mut field = |bytes: &[u8]| {
            context.update(&(bytes.len() as u64).to_le_bytes());
            context.update(bytes);
        };
        match signed {
            Signed::Call {
                subject,
                reply,
                headers,
                payload,
            } => {
                field(b"ythread call 1");
                field(subject.as_bytes());
                field(reply.as_bytes());
                field(headers.as_bytes());
                field(payload);
            }
            Signed::Reply { subject, payload } => {
                field(b"ythread reply 1");
                field(subject.as_bytes());
                field(payload);
            }
            Signed::Cancel { subject, payload } => {
                field(b"ythread cancel 1");
                field(subject.as_bytes());
                field(payload);
            }
        }
        context.sign()
    }

    /// The signature of `signed`, as the header carries it.
    pub(super) fn sign(&self, signed: &Signed<'_>) -> String {
        hex::encode(self.tag(signed).as_ref())
    }

    /// Whether `signature` (the header's text, `None` if absent) signs
    /// `signed` with this key. Compared in constant time.
    pub(super) fn verify(&self, signed: &Signed<'_>, signature: Option<&str>) -> bool {
        let Some(signature) = signature.and_then(from_hex) else {
            return false;
        };
        let expected = self.tag(signed);
        // Every byte compared, whatever differs first: the time taken tells
        // nothing of where.
        let difference = expected
            .as_ref()
            .iter()
            .zip(signature)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

/// 64 hex digits as 32 bytes; `None` for anything else.
fn from_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode(text.as_bytes(), &mut out, true)?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(reply: &'a str, payload: &'a [u8]) -> Signed<'a> {
        Signed::Call {
            subject: "ythread.n.f.0",
            reply,
            headers: "1000 1700000000000",
            payload,
        }
    }

    #[test]
    fn a_signature_verifies_only_what_it_signed_with_its_key() {
        let key = Key::new(&[7; 32], "k").unwrap();
        let other = Key::new(&[8; 32], "k").unwrap();
        let signature = key.sign(&call("_INBOX.a.1", b"args"));
        assert!(key.verify(&call("_INBOX.a.1", b"args"), Some(&signature)));
        assert!(!other.verify(&call("_INBOX.a.1", b"args"), Some(&signature)));
        assert!(!key.verify(&call("_INBOX.evil.1", b"args"), Some(&signature)));
        assert!(!key.verify(&call("_INBOX.a.1", b"argz"), Some(&signature)));
        assert!(!key.verify(&call("_INBOX.a.1", b"args"), None));
        assert!(!key.verify(&call("_INBOX.a.1", b"args"), Some("zz")));
        // A call's signature is no reply's, even over the same bytes.
        let reply = Signed::Reply {
            subject: "_INBOX.a.1",
            payload: b"args",
        };
        assert!(!key.verify(&reply, Some(&signature)));
        // Fields cannot slide into each other.
        let a = Signed::Reply {
            subject: "ab",
            payload: b"c",
        };
        let b = Signed::Reply {
            subject: "a",
            payload: b"bc",
        };
        assert!(!key.verify(&b, Some(&key.sign(&a))));
        let upper = signature.to_uppercase();
        assert!(key.verify(&call("_INBOX.a.1", b"args"), Some(&upper)));
    }

    #[test]
    fn a_short_key_is_refused() {
        let error = Key::new(&[1; 31], "RemoteBuilder::signing_key")
            .err()
            .unwrap();
        assert!(error.to_string().contains("at least 32"), "{error}");
    }
}
