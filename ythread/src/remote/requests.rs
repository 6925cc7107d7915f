//! The requester's side of request-reply: its calls in flight, each with a
//! reply subject of its own under one inbox subscription, and what may
//! answer them.
//!
//! Not async-nats's `request`, which takes the first message on the inbox
//! as the answer: here a reply counts only if it verifies (with a signing
//! key), a lost connection or a refused publish answers the calls it
//! concerns at once and says what is known of them, and the calls a lost
//! connection answered "may have run" are cancelled at the workers, which
//! drop those still waiting there (in the shared queue, or for a process).
//! One that reached a worker just before the cancellation may still start:
//! "may have run" is the honest answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use futures_util::StreamExt;

use super::signing::{Key, Signed};
use super::wire::{Refused, signature_of};
use crate::sync::Mutex;

/// What answered a call.
#[derive(Debug)]
pub(super) enum Answer {
    /// A reply from a worker (verified, with a key): the payload.
    Reply(Bytes),
    /// The server says that no worker took the call: it did not run.
    NoResponders,
    /// The connection was lost while the call was in flight: it may have
    /// run (the call is cancelled at the workers, but one may have started
    /// it).
    Lost,
    /// The server refused to let the call be sent (a permission): the
    /// server's words. It did not run.
    Refused(String),
    /// The server refused the inbox's subscription after the call was sent
    /// (its permissions changed): the call may have run, and its reply
    /// cannot come. The server's words.
    Deaf(String),
}

/// A call in flight.
struct Pending {
    /// The subject it was sent on (a refused publish names it).
    subject: Arc<str>,
    /// When its requester stops waiting, in ms since the Unix epoch (for its
    /// cancellation).
    expires: u64,
    answer: Sender<Answer>,
    /// Replies to it that did not verify with the key.
    rejected: u32,
    /// Its name in texts (`observe::designation`).
    call: Arc<str>,
}

/// The calls in flight of one `Remote`.
pub(super) struct Calls {
    /// The inbox: every call's reply subject is `<inbox>.<number, hex>`.
    inbox: String,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    key: Option<Key>,
    /// Replies dropped because they did not verify with the key.
    rejected: AtomicU64,
    /// Why the server refused the inbox's subscription, if it did: no reply
    /// can come, so no call is sent.
    inbox_refused: Mutex<Option<String>>,
}

/// A call registered in flight; unregistered when dropped.
pub(super) struct InFlight<'a> {
    calls: &'a Calls,
    number: u64,
    pub(super) reply_to: String,
    pub(super) answer: Receiver<Answer>,
    /// Its name in texts (`observe::designation`).
    pub(super) call: Arc<str>,
}

impl InFlight<'_> {
    /// Replies to this call that did not verify with the key so far.
    pub(super) fn rejected(&self) -> u32 {
        self.calls
            .pending
            .lock()
            .get(&self.number)
            .map_or(0, |pending| pending.rejected)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.calls.pending.lock().remove(&self.number);
    }
}

impl Calls {
    pub(super) fn new(inbox: String, key: Option<Key>) -> Calls {
        Calls {
            inbox,
            next: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            key,
            rejected: AtomicU64::new(0),
            inbox_refused: Mutex::new(None),
        }
    }

    /// The subject of the inbox subscription.
    pub(super) fn inbox_subjects(&self) -> String {
        format!("{}.*", self.inbox)
    }

    pub(super) fn key(&self) -> Option<&Key> {
        self.key.as_ref()
    }

    /// Replies dropped because they did not verify.
    pub(super) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Why the server refused the inbox's subscription, if it did.
    pub(super) fn inbox_refused(&self) -> Option<String> {
        self.inbox_refused.lock().clone()
    }

    /// Registers a call to `subject` that expires at `expires`, named by
    /// `name` from its number as it travels (hex, the reply subject's last
    /// token).
    pub(super) fn register(
        &self,
        subject: Arc<str>,
        expires: u64,
        name: impl FnOnce(&str) -> String,
    ) -> InFlight<'_> {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let call: Arc<str> = name(&format!("{number:x}")).into();
        let (answer, answered) = crossbeam_channel::bounded(1);
        self.pending.lock().insert(
            number,
            Pending {
                subject,
                expires,
                answer,
                rejected: 0,
                call: Arc::clone(&call),
            },
        );
        InFlight {
            calls: self,
            number,
            reply_to: format!("{}.{number:x}", self.inbox),
            answer: answered,
            call,
        }
    }

    /// Answers the call `message` replies to, if it is in flight and the
    /// reply verifies.
    fn answer(&self, message: async_nats::Message) {
        let number = message
            .subject
            .strip_prefix(self.inbox.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|number| u64::from_str_radix(number, 16).ok());
        // (Anything else on the inbox, a late reply to a call out of time
        // included, answers nothing.)
        let Some(number) = number else {
            return;
        };
        let answer = if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            Answer::NoResponders
        } else if message.status.is_some() {
            // Another status (a server's notice, not a reply).
            return;
        } else {
            if let Some(key) = &self.key {
                let signed = Signed::Reply {
                    subject: &message.subject,
                    payload: &message.payload,
                };
                if !key.verify(&signed, signature_of(message.headers.as_ref())) {
                    let call = self.pending.lock().get_mut(&number).map(|pending| {
                        pending.rejected = pending.rejected.saturating_add(1);
                        Arc::clone(&pending.call)
                    });
                    let first = self.rejected.fetch_add(1, Ordering::Relaxed) == 0;
                    if first {
                        // (Named if it answers a call in flight: the
                        // subject's text is not repeated, it may be anyone's.)
                        let to = call.map_or_else(String::new, |call| format!(" to {call}"));
                        eprintln!(
                            "ythread::remote::Remote: dropped a reply{to} that does not verify \
                             with the signing key (from a worker with another key or none, or a \
                             forger); `Remote::rejected` counts them"
                        );
                    }
                    return;
                }
            }
            Answer::Reply(message.payload)
        };
        if let Some(pending) = self.pending.lock().remove(&number) {
            let _ = pending.answer.try_send(answer);
        }
    }

    /// The connection was lost: every call in flight is answered
    /// [`Answer::Lost`]; returns their cancellation, the payload to publish
    /// on the namespace's cancel subject (see `wire.rs`), if any.
    pub(super) fn lost(&self) -> Option<Vec<u8>> {
        let lost: Vec<(u64, Pending)> = self.pending.lock().drain().collect();
        if lost.is_empty() {
            return None;
        }
        let mut cancel = String::new();
        for (number, pending) in lost {
            let _ = pending.answer.try_send(Answer::Lost);
            cancel.push_str(&format!("{}.{number:x} {}\n", self.inbox, pending.expires));
        }
        Some(cancel.into_bytes())
    }

    /// The server refused something: the calls it concerns are answered.
    /// Returns whether it concerned this requester's calls or inbox.
    pub(super) fn refused(&self, refused: &Refused, text: &str) -> bool {
        match refused {
            Refused::Publish(subject) => {
                let mut pending = self.pending.lock();
                let numbers: Vec<u64> = pending
                    .iter()
                    .filter(|(_, call)| *call.subject == **subject)
                    .map(|(&number, _)| number)
                    .collect();
                let any = !numbers.is_empty();
                for number in numbers {
                    if let Some(call) = pending.remove(&number) {
                        let _ = call.answer.try_send(Answer::Refused(text.to_owned()));
                    }
                }
                any
            }
            Refused::Subscribe(subject) if *subject == self.inbox_subjects() => {
                *self.inbox_refused.lock() = Some(text.to_owned());
                for (_, call) in self.pending.lock().drain() {
                    let _ = call.answer.try_send(Answer::Deaf(text.to_owned()));
                }
                true
            }
            Refused::Subscribe(_) => false,
        }
    }
}

/// Answers calls from the inbox subscription until it ends.
pub(super) async fn dispatch(calls: Arc<Calls>, mut inbox: async_nats::Subscriber) {
    while let Some(message) = inbox.next().await {
        calls.answer(message);
    }
}
