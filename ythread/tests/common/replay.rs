//! A raw NATS client that catches one call of a requester's as it goes by
//! and sends it again, with other headers or another reply subject: a peer
//! that speaks to a `Worker` directly, as a hostile one would.

use std::time::Duration;

use futures_util::StreamExt;
use ythread::remote::async_nats;

/// A call caught on its way to namespace `namespace`'s workers, and the
/// raw client that caught it.
pub struct Replay {
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    /// The call as the requester sent it: subject, arguments, headers.
    pub call: async_nats::Message,
}

impl Replay {
    /// Catches the call `make_call` makes (run on a thread of its own,
    /// after the raw client has subscribed) and returns what `make_call`
    /// returned.
    pub fn catch<T: Send + 'static>(
        url: &str,
        namespace: &str,
        make_call: impl FnOnce() -> T + Send + 'static,
    ) -> (Replay, T) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(async_nats::connect(url)).unwrap();
        let mut calls = runtime
            .block_on(client.subscribe(format!("ythread.{namespace}.>")))
            .unwrap();
        runtime.block_on(client.flush()).unwrap();
        let called = std::thread::spawn(make_call);
        let call = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), calls.next()).await })
            .expect("the requester's call went by")
            .unwrap();
        let made = called.join().unwrap();
        (
            Replay {
                runtime,
                client,
                call,
            },
            made,
        )
    }

    /// A new reply subject of the raw client's.
    pub fn inbox(&self) -> String {
        self.client.new_inbox()
    }

    /// Sends the call again with `headers`, answered to `reply`, and returns
    /// the answer's payload, or `None` if none comes within `wait`.
    ///
    /// # Errors
    /// When the client will not publish it (a subject it refuses).
    pub fn request(
        &self,
        reply: String,
        headers: async_nats::HeaderMap,
        wait: Duration,
    ) -> Result<Option<Vec<u8>>, async_nats::PublishError> {
        self.runtime.block_on(async {
            let mut replies = self.client.subscribe(reply.clone()).await.unwrap();
            self.client
                .publish_with_reply_and_headers(
                    self.call.subject.clone(),
                    reply,
                    headers,
                    self.call.payload.clone(),
                )
                .await?;
            self.client.flush().await.unwrap();
            Ok(tokio::time::timeout(wait, replies.next())
                .await
                .ok()
                .flatten()
                .map(|reply| reply.payload.to_vec()))
        })
    }
}
