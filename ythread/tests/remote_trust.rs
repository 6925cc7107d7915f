//! What a `Remote` fleet can trust, against a real `nats-server` on
//! 127.0.0.1 and an attacker that is one more client of the same server
//! (raw async-nats publishes and subscriptions): only the asked worker's
//! answer counts, a busy worker's memory is bounded, the requester's
//! deadline stops the work, every outcome says what is known of the call,
//! what ythread finds on the server is checked and made again after a
//! restart, permission mistakes fail at once, and payloads go as far as the
//! server allows.
//!
//! `nats-server` must be installed: the README's test command
//! (`scripts/test`) installs it. Without it these tests fail, naming it;
//! they never skip.

mod common;

use common::nats::NatsServer;
use common::worker_processes as local_workers;
use common::{EntryProcess, eventually, scratch};

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use ythread::remote::{Remote, Worker, async_nats};
use ythread::{OffloadError, OffloadErrorKind, Yieldable, offloadable, try_offload, yieldable};

// --- the work -------------------------------------------------------------

#[offloadable]
fn slow_sum(n: u64, ms: u64) -> u64 {
    thread::sleep(Duration::from_millis(ms));
    (1..=n).sum()
}

#[yieldable]
fn call_slow_sum(n: u64, ms: u64) -> Result<u64, OffloadError> {
    try_offload!(slow_sum, n, ms)
}

/// The sum of 1 to `n`, once the file `gate` exists or `most_ms` have
/// passed, after writing the file `marker`: the test knows when it runs
/// and can decide when it ends.
#[offloadable]
fn gated_sum(marker: String, gate: String, n: u64, most_ms: u64) -> u64 {
    std::fs::write(&marker, b"started").expect("the marker is written");
    let until = std::time::Instant::now() + Duration::from_millis(most_ms);
    while !std::path::Path::new(&gate).exists() && std::time::Instant::now() < until {
        thread::sleep(Duration::from_millis(5));
    }
    (1..=n).sum()
}

#[yieldable]
fn call_gated_sum(marker: String, gate: String, n: u64, most_ms: u64) -> Result<u64, OffloadError> {
    try_offload!(gated_sum, marker, gate, n, most_ms)
}

/// A call of [`gated_sum`] on `cpu`, running once this returns; it ends
/// when the test writes the returned gate file, or after `most_ms`.
fn gated_call(
    cpu: &Arc<Remote>,
    test: &str,
    n: u64,
    most_ms: u64,
) -> (
    thread::JoinHandle<Result<u64, OffloadError>>,
    std::path::PathBuf,
) {
    let dir = scratch(test);
    let (marker, gate) = (dir.join("running"), dir.join("gate"));
    let call = {
        let cpu = Arc::clone(cpu);
        let (marker, gate) = (marker.display().to_string(), gate.display().to_string());
        thread::spawn(move || call_gated_sum(marker, gate, n, most_ms).run_with(&*cpu))
    };
    eventually("the gated call runs", || marker.exists());
    (call, gate)
}

/// Never returns.
#[offloadable]
fn forever() -> u64 {
    loop {
        thread::sleep(Duration::from_secs(1));
    }
}

#[yieldable]
fn call_forever() -> Result<u64, OffloadError> {
    try_offload!(forever)
}

/// Appends `<id> <ms since the epoch>` to the file `path` when it starts,
/// then takes `ms`.
#[offloadable]
fn record(path: String, id: u64, ms: u64) -> u64 {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    // One write: runs in two processes append to the file at once.
    file.write_all(format!("{id} {}\n", epoch_ms()).as_bytes())
        .unwrap();
    drop(file);
    thread::sleep(Duration::from_millis(ms));
    id
}

#[yieldable]
fn call_record(path: String, id: u64, ms: u64) -> Result<u64, OffloadError> {
    try_offload!(record, path, id, ms)
}

#[offloadable]
fn echo(data: Vec<u8>) -> Vec<u8> {
    data
}

#[yieldable]
fn call_echo(data: Vec<u8>) -> Result<Vec<u8>, OffloadError> {
    try_offload!(echo, data)
}

#[offloadable]
fn zeros(len: usize) -> Vec<u8> {
    vec![0; len]
}

#[yieldable]
fn call_zeros(len: usize) -> Result<Vec<u8>, OffloadError> {
    try_offload!(zeros, len)
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The runs `record` logged in `path`: `(id, started at, ms since the epoch)`.
fn records(path: &std::path::Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let (id, at) = line.split_once(' ').unwrap();
            (id.parse().unwrap(), at.parse().unwrap())
        })
        .collect()
}

// --- servers and clients --------------------------------------------------

fn nats(extra: &[&str]) -> NatsServer {
    NatsServer::started(extra)
}

/// A server with `config` (nats-server's configuration format), written to
/// a file of the test's; `extra` are more flags.
fn nats_with(name: &str, config: &str, extra: &[&str]) -> NatsServer {
    let path = scratch(name).join("nats.conf");
    std::fs::write(&path, config).unwrap();
    let path = path.display().to_string();
    nats(&[&["-c", path.as_str()], extra].concat())
}

/// A raw async-nats client: the attacker, or a look at the server.
struct Raw {
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    /// What the server told this client (permission violations, ...).
    errors: Arc<Mutex<Vec<String>>>,
}

impl Raw {
    fn connect(url: &str, options: async_nats::ConnectOptions) -> Raw {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&errors);
        let options = options.event_callback(move |event| {
            let seen = Arc::clone(&seen);
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    seen.lock().unwrap().push(error.to_string());
                }
            }
        });
        let client = runtime.block_on(options.connect(url)).unwrap();
        Raw {
            runtime,
            client,
            errors,
        }
    }

    /// Subscribes to `subject`; every message is handed to `each`, on the
    /// runtime.
    fn on(&self, subject: &str, mut each: impl FnMut(async_nats::Message) + Send + 'static) {
        let mut messages = self
            .runtime
            .block_on(self.client.subscribe(subject.to_owned()))
            .unwrap();
        self.runtime.spawn(async move {
            while let Some(message) = messages.next().await {
                each(message);
            }
        });
        self.runtime.block_on(self.client.flush()).unwrap();
    }

    fn publish(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: async_nats::HeaderMap,
        payload: Vec<u8>,
    ) {
        let client = self.client.clone();
        let (subject, reply) = (subject.to_owned(), reply.map(str::to_owned));
        self.runtime.block_on(async move {
            match reply {
                Some(reply) => client
                    .publish_with_reply_and_headers(subject, reply, headers, payload.into())
                    .await
                    .unwrap(),
                None => client
                    .publish_with_headers(subject, headers, payload.into())
                    .await
                    .unwrap(),
            }
            client.flush().await.unwrap();
        });
    }

    /// The subject of the calls of `namespace` that `call` makes, as this
    /// client sees one go by. `call` runs on a thread of its own, again
    /// each second until a call is seen (once, under the load of the other
    /// tests, a single one was not seen within 10 s).
    fn subject_of(&self, namespace: &str, call: impl Fn() + Send + Sync + 'static) -> String {
        let seen: Arc<Mutex<Option<String>>> = Arc::default();
        let found = Arc::clone(&seen);
        self.on(&format!("ythread.{namespace}.>"), move |message| {
            found
                .lock()
                .unwrap()
                .get_or_insert(message.subject.to_string());
        });
        let call = Arc::new(call);
        let mut called = Instant::now() - Duration::from_secs(1);
        eventually("a call was seen", || {
            if called.elapsed() >= Duration::from_secs(1) {
                called = Instant::now();
                let call = Arc::clone(&call);
                thread::spawn(move || call());
            }
            seen.lock().unwrap().is_some()
        });
        seen.lock().unwrap().clone().unwrap()
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

/// A reply as a ythread worker encodes it: `Done` (tag 0) with the result,
/// `n` as postcard encodes a `u64` (a varint).
fn forged_done(n: u64) -> Vec<u8> {
    let mut result = Vec::new();
    let mut rest = n;
    loop {
        let byte = (rest & 0x7f) as u8;
        rest >>= 7;
        if rest == 0 {
            result.push(byte);
            break;
        }
        result.push(byte | 0x80);
    }
    let mut reply = vec![0, result.len() as u8];
    reply.extend(result);
    reply
}

const KEY: [u8; 32] = *b"the fleet's key, 32 bytes long!!";

fn worker(url: &str, namespace: &str, processes: usize) -> ythread::remote::WorkerBuilder {
    Worker::builder(url)
        .namespace(namespace)
        .processes(local_workers(processes))
}

// --- 1. only the asked worker's answer counts -------------------------------

/// The attacker holds the fleet's NATS credential (here: anyone may
/// connect) but not its signing key. It reads every call, answers each
/// first with a forged result (unsigned, and with a made-up signature), sends
/// each again with its own inbox as the reply subject, and sends calls of
/// its own, directly and through the shared queue. None of it counts.
#[test]
fn without_the_signing_key_no_one_forges_redirects_or_injects() {
    common::watchdog(Duration::from_secs(120), || {
        let server = nats(&["-js"]);
        let url = server.url();
        let dir = scratch("forge");
        let log = dir.join("runs").display().to_string();
        let _worker = worker(url, "forge", 2).signing_key(KEY).start().unwrap();
        let cpu = Remote::builder(url)
            .namespace("forge")
            .signing_key(KEY)
            .connect()
            .unwrap();

        let attacker = Arc::new(Raw::connect(url, async_nats::ConnectOptions::new()));
        let stolen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sniffed: Arc<Mutex<Vec<async_nats::Message>>> = Arc::default();
        {
            let stolen = Arc::clone(&stolen);
            attacker.on("attacker.inbox.>", move |message| {
                stolen.lock().unwrap().push(message.payload.to_vec());
            });
        }
        {
            let client = attacker.client.clone();
            let sniffed = Arc::clone(&sniffed);
            attacker.on("ythread.forge.>", move |message| {
                sniffed.lock().unwrap().push(message.clone());
                // (Not its own redirections, which it sees too.)
                let Some(reply) = message
                    .reply
                    .clone()
                    .filter(|r| !r.starts_with("attacker."))
                else {
                    return;
                };
                let client = client.clone();
                tokio::spawn(async move {
                    // First: a forged result, unsigned and signed at random.
                    let _ = client.publish(reply.clone(), forged_done(666).into()).await;
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Ythread-Signature", "ab".repeat(32).as_str());
                    let _ = client
                        .publish_with_headers(reply.clone(), headers, forged_done(667).into())
                        .await;
                    // A call of its own with the victim's reply subject: the
                    // worker's refusal of it must not count as the answer.
                    let _ = client
                        .publish_with_reply(message.subject.clone(), reply.clone(), vec![].into())
                        .await;
                    // Then: the call again, its answer to come to us.
                    let _ = client
                        .publish_with_reply_and_headers(
                            message.subject.clone(),
                            "attacker.inbox.redirected",
                            message.headers.clone().unwrap_or_default(),
                            message.payload.clone(),
                        )
                        .await;
                });
            });
        }

        // Each call runs long enough (1.5 s) for the attacker's forged
        // results to reach its requester, even on a loaded machine.
        for n in [10, 20, 30] {
            assert_eq!(
                call_slow_sum(n, 1_500).run_with(&cpu).unwrap(),
                n * (n + 1) / 2,
                "a forged result was taken"
            );
        }
        assert!(cpu.rejected() >= 6, "{}", cpu.rejected());

        // The real subject of `record`, from a real call.
        let id = call_record(log.clone(), 1, 0).run_with(&cpu).unwrap();
        assert_eq!(id, 1);
        let seen = || {
            sniffed
                .lock()
                .unwrap()
                .iter()
                .find(|message| message.subject.contains("record"))
                .cloned()
        };
        eventually("the attacker saw the call of record", || seen().is_some());
        let record_call = seen().unwrap();
        // Sent again unsigned with other arguments, and into the shared
        // queue with a reply subject of the attacker's.
        let args = {
            let mut args = Vec::new();
            args.push(log.len() as u8);
            args.extend(log.as_bytes());
            args.extend([2, 0]);
            args
        };
        attacker.publish(
            &record_call.subject,
            Some("attacker.inbox.injected"),
            async_nats::HeaderMap::new(),
            args.clone(),
        );
        let mut queued = async_nats::HeaderMap::new();
        queued.insert("Ythread-Reply-To", "attacker.inbox.queued");
        attacker.publish(
            &record_call
                .subject
                .replacen("ythread.", "ythread-queue.", 1),
            None,
            queued,
            args,
        );
        thread::sleep(Duration::from_secs(2));

        let runs = records(std::path::Path::new(&log));
        assert_eq!(runs.len(), 1, "the attacker's calls ran: {runs:?}");
        let stolen = stolen.lock().unwrap();
        assert!(!stolen.is_empty(), "the attacker heard nothing back");
        for reply in stolen.iter() {
            assert_ne!(reply.first(), Some(&0), "a result reached the attacker");
        }
    });
}

/// Requester and worker with different keys: the worker refuses the call
/// unrun, the requester cannot trust that refusal, and its deadline error
/// says what it dropped and what to check.
#[test]
fn different_keys_fail_naming_the_key() {
    common::watchdog(Duration::from_secs(60), || {
        let server = nats(&[]);
        let worker = worker(server.url(), "keys", 1)
            .signing_key(KEY)
            .start()
            .unwrap();
        // The refusal comes back within the deadline, even on a loaded
        // machine.
        let cpu = Remote::builder(server.url())
            .namespace("keys")
            .deadline(Duration::from_secs(3))
            .signing_key([9; 32])
            .connect()
            .unwrap();
        let error = call_slow_sum(3, 0).run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded, "{error}");
        assert!(
            error
                .to_string()
                .contains("did not verify with the signing key")
                && error.to_string().contains("same key"),
            "{error}"
        );
        assert_eq!((worker.refused(), cpu.rejected()), (1, 1));
    });
}

/// A worker never answers on the system's subjects or ythread's own, where
/// a caller's made-up reply subject would have it publish with its own
/// permissions.
#[test]
fn a_worker_answers_on_no_subject_of_its_own_or_the_systems() {
    common::watchdog(Duration::from_secs(60), || {
        let server = nats(&["-js"]);
        let url = server.url();
        let worker = worker(url, "reply", 1).start().unwrap();
        let cpu = Arc::new(Remote::builder(url).namespace("reply").connect().unwrap());
        let sniffer = Raw::connect(url, async_nats::ConnectOptions::new());
        let published: Arc<Mutex<Vec<String>>> = Arc::default();
        for subject in ["$JS.API.>", "ythread-queue.>", "ythread-cancel.>"] {
            let published = Arc::clone(&published);
            sniffer.on(subject, move |message| {
                published.lock().unwrap().push(message.subject.to_string());
            });
        }
        assert_eq!(call_slow_sum(3, 0).run_with(&*cpu).unwrap(), 6);
        let subject = sniffer.subject_of("reply", move || {
            let _ = call_slow_sum(3, 0).run_with(&*cpu);
        });
        published.lock().unwrap().clear();
        for reply in [
            "$JS.API.STREAM.DELETE.ythread-reply",
            "ythread-queue.reply.x",
            "ythread-cancel.reply",
            "ythread.reply.y",
        ] {
            sniffer.publish(
                &subject,
                Some(reply),
                async_nats::HeaderMap::new(),
                vec![3, 0],
            );
        }
        eventually("the worker refuses the four", || worker.refused() == 4);
        // Time for a reply it should not have sent to reach the sniffer.
        thread::sleep(Duration::from_millis(500));
        assert_eq!(*published.lock().unwrap(), Vec::<String>::new());
        assert_eq!(worker.refused(), 4);
    });
}

/// The deployment without a shared credential: per-role NATS permissions.
/// Each requester has a user of its own that may publish calls and read its
/// own inbox prefix only; workers may read calls and answer. A second
/// requester (the attacker) can neither read the calls nor answer them.
#[test]
fn per_role_permissions_keep_one_requester_out_of_anothers_calls() {
    common::watchdog(Duration::from_secs(120), || {
        let config = r#"
            authorization {
              requester = {
                publish = ["ythread.roles.>", "ythread-cancel.roles"]
                subscribe = ["_INBOX.requester.>"]
              }
              users = [
                { user: alice, password: a, permissions: $requester }
                { user: mallory, password: m, permissions: {
                    publish = ["ythread.roles.>", "ythread-cancel.roles"]
                    subscribe = ["_INBOX.mallory.>"]
                } }
                { user: worker, password: w, permissions: {
                    publish = ["$JS.API.>", "$JS.ACK.>", "ythread-queue.roles.>", "_INBOX.>"]
                    subscribe = ["ythread.roles.>", "ythread-cancel.roles", "_INBOX.worker.>"]
                } }
              ]
            }
        "#;
        let server = nats_with("roles", config, &["-js"]);
        let url = server.url();
        let _worker = worker(url, "roles", 1)
            .connect_options(
                async_nats::ConnectOptions::with_user_and_password("worker".into(), "w".into())
                    .custom_inbox_prefix("_INBOX.worker"),
            )
            .start()
            .unwrap();
        let cpu = Arc::new(
            Remote::builder(url)
                .namespace("roles")
                .connect_options(
                    async_nats::ConnectOptions::with_user_and_password("alice".into(), "a".into())
                        .custom_inbox_prefix("_INBOX.requester"),
                )
                .connect()
                .unwrap(),
        );
        let mallory = Raw::connect(
            url,
            async_nats::ConnectOptions::with_user_and_password("mallory".into(), "m".into())
                .custom_inbox_prefix("_INBOX.mallory"),
        );
        let heard: Arc<Mutex<Vec<String>>> = Arc::default();
        for subject in ["ythread.roles.>", "_INBOX.requester.>", ">"] {
            let heard = Arc::clone(&heard);
            mallory.on(subject, move |message| {
                heard.lock().unwrap().push(message.subject.to_string());
            });
        }
        // Two calls at once: the second goes through the shared queue.
        let calls: Vec<_> = [(10, 500), (20, 0)]
            .into_iter()
            .map(|(n, ms)| {
                let cpu = Arc::clone(&cpu);
                thread::spawn(move || call_slow_sum(n, ms).run_with(&*cpu))
            })
            .collect();
        let answers: Vec<u64> = calls
            .into_iter()
            .map(|call| call.join().unwrap().unwrap())
            .collect();
        assert_eq!(answers, [55, 210]);
        // Mallory answering Alice's inbox is refused by the server.
        mallory.publish(
            "_INBOX.requester.x.1",
            None,
            async_nats::HeaderMap::new(),
            forged_done(666),
        );
        eventually("the server refused Mallory", || {
            let errors = mallory.errors().join("\n").to_lowercase();
            errors.contains("subscription to \"ythread.roles.>\"")
                && errors.contains("subscription to \"_inbox.requester.>\"")
                && errors.contains("publish to \"_inbox.requester.x.1\"")
        });
        assert_eq!(*heard.lock().unwrap(), Vec::<String>::new());
    });
}

// --- 2. a busy worker's memory is bounded ----------------------------------

const TRUST_WORKER_ENV: &str = "YTHREAD_TEST_TRUST_WORKER";

/// In a remote worker process: serve the server named by the variable
/// (`URL NAMESPACE`) with one local process, print "ready", and serve until
/// killed. A no-op in the test run.
#[test]
#[ignore = "an entry point of the processes other tests start, not a test"]
fn trust_worker_entry() {
    let Ok(setting) = std::env::var(TRUST_WORKER_ENV) else {
        return;
    };
    let (url, namespace) = setting.split_once(' ').unwrap();
    let worker = worker(url, namespace, 1).start().unwrap();
    println!("ready {}", std::process::id());
    worker.wait();
}

/// Remote worker processes (see `trust_worker_entry`).
struct RemoteWorker;

impl RemoteWorker {
    fn start(url: &str, namespace: &str) -> EntryProcess {
        EntryProcess::start(
            "trust_worker_entry",
            TRUST_WORKER_ENV,
            &format!("{url} {namespace}"),
        )
    }
}

/// 1,200 calls of 1 MB at a worker whose one process is busy, with and
/// without the shared queue: the worker holds 64 MiB of calls at most and
/// refuses the rest at once, unrun, saying it is busy. (Before: 1.29 GiB.)
#[test]
fn a_flood_of_large_calls_at_a_busy_worker_is_bounded_and_refused() {
    common::watchdog(Duration::from_secs(240), || {
        // The third round: small arguments behind 900 KB of a header that
        // parses small (the arguments' slice of the client's read buffer
        // would keep the header alive).
        for (jetstream, in_headers) in [(false, false), (true, false), (false, true)] {
            let server = nats(if jetstream { &["-js"] } else { &[] });
            let url = server.url();
            let remote_worker = RemoteWorker::start(url, "flood");
            let cpu = Arc::new(Remote::builder(url).namespace("flood").connect().unwrap());
            // A call holds one of the worker's processes for 6 s (the
            // calls that wait meanwhile are answered once it is done).
            let (busy, _gate) = gated_call(&cpu, "flood", 1, 6_000);
            let base = remote_worker.peak_kib();

            let flood = Raw::connect(url, async_nats::ConnectOptions::new());
            let replies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
            {
                let replies = Arc::clone(&replies);
                flood.on("flood.inbox.>", move |message| {
                    replies.lock().unwrap().push(message.payload.to_vec());
                });
            }
            // A call of `echo` with 1,000,000 bytes of arguments.
            let subject = {
                let cpu = Arc::clone(&cpu);
                flood.subject_of("flood", move || {
                    let _ = call_echo(vec![]).run_with(&*cpu);
                })
            };
            let mut args = vec![0xc0, 0x84, 0x3d]; // the varint of 1,000,000
            args.extend(vec![7u8; 1_000_000]);
            let mut headers = async_nats::HeaderMap::new();
            if in_headers {
                // 66,000 bytes of arguments (`[0xd0, 0x83, 0x04]` is the
                // varint), behind 900 KB of a header that parses as "v".
                args = vec![0xd0, 0x83, 0x04];
                args.extend(vec![7u8; 66_000]);
                headers.insert("X-Junk", format!("{}v", " ".repeat(900_000)).as_str());
            }
            let client = flood.client.clone();
            flood.runtime.block_on(async {
                for i in 0..1_200 {
                    client
                        .publish_with_reply_and_headers(
                            subject.clone(),
                            format!("flood.inbox.{i}"),
                            headers.clone(),
                            args.clone().into(),
                        )
                        .await
                        .unwrap();
                }
                client.flush().await.unwrap();
            });
            eventually("every flooding call was answered or queued", || {
                replies.lock().unwrap().len() >= 1_000
            });
            let peak = remote_worker.peak_kib();
            let refused = replies
                .lock()
                .unwrap()
                .iter()
                .filter(|reply| String::from_utf8_lossy(reply).contains("the worker is busy"))
                .count();
            eprintln!(
                "jetstream {jetstream}, in headers {in_headers}: peak {} MiB (from {} MiB), \
                 {refused} of {} replies refused",
                peak / 1024,
                base / 1024,
                replies.lock().unwrap().len()
            );
            assert!(
                peak - base < 300 * 1024,
                "the worker grew by {} MiB",
                (peak - base) / 1024
            );
            // (Headers are not kept: those calls are held at the cost of
            // their arguments, and most wait.)
            if !in_headers {
                assert!(refused >= 900, "{refused} refused");
            }
            match busy.join().unwrap() {
                Ok(n) => assert_eq!(n, 1),
                // A gigabyte of headers is slow for the worker's client to
                // read: the server drops it as a slow consumer, and the
                // reply it had written is lost. (Honest: it may have run.)
                Err(error) if in_headers => {
                    assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded, "{error}");
                }
                Err(error) => panic!("{error}"),
            }
        }
    });
}

/// A burst of short calls, buffered at the worker all at once: each is
/// answered. (Short calls run on a runtime thread; a reply sent from there
/// once waited, forever, for the task's cooperative budget, after 63.)
#[test]
fn a_burst_of_short_calls_is_answered_whole() {
    common::watchdog(Duration::from_secs(120), || {
        let server = nats(&[]);
        let url = server.url();
        let _worker = worker(url, "burst", 2).start().unwrap();
        let cpu = Arc::new(Remote::builder(url).namespace("burst").connect().unwrap());
        let sniffer = Raw::connect(url, async_nats::ConnectOptions::new());
        // Known as short here, after a few calls.
        for n in 0..10 {
            assert_eq!(
                call_slow_sum(n, 0).run_with(&*cpu).unwrap(),
                n * (n + 1) / 2
            );
        }
        let subject = sniffer.subject_of("burst", move || {
            let _ = call_slow_sum(3, 0).run_with(&*cpu);
        });
        let answers: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        {
            let answers = Arc::clone(&answers);
            sniffer.on("burst.inbox.>", move |message| {
                answers.lock().unwrap().push(message.payload.to_vec());
            });
        }
        let client = sniffer.client.clone();
        sniffer.runtime.block_on(async {
            for i in 0..500u32 {
                // `slow_sum(3, 0)`: two varints.
                client
                    .publish_with_reply(
                        subject.clone(),
                        format!("burst.inbox.{i}"),
                        vec![3, 0].into(),
                    )
                    .await
                    .unwrap();
            }
            client.flush().await.unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while answers.lock().unwrap().len() < 500 {
            assert!(
                Instant::now() < deadline,
                "{} of 500 answered",
                answers.lock().unwrap().len()
            );
            thread::sleep(Duration::from_millis(10));
        }
        for answer in answers.lock().unwrap().iter() {
            assert_eq!(answer, &forged_done(6), "a wrong answer");
        }
    });
}

// --- 3. the requester's deadline stops the work ----------------------------

/// A default-built worker (no deadline of its own on its processes): calls
/// that never end are killed at their requester's deadline, and the worker
/// serves the next calls at once.
#[test]
fn a_call_is_killed_at_its_requesters_deadline() {
    common::watchdog(Duration::from_secs(120), || {
        let server = nats(&["-js"]);
        let url = server.url();
        let worker = worker(url, "stops", 2).start().unwrap();
        let impatient = Arc::new(
            Remote::builder(url)
                .namespace("stops")
                .deadline(Duration::from_secs(1))
                .connect()
                .unwrap(),
        );
        let hung: Vec<_> = (0..2)
            .map(|_| {
                let cpu = Arc::clone(&impatient);
                thread::spawn(move || call_forever().run_with(&*cpu))
            })
            .collect();
        for call in hung {
            let error = call.join().unwrap().unwrap_err();
            assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded, "{error}");
        }
        let patient = Remote::builder(url)
            .namespace("stops")
            .deadline(Duration::from_secs(10))
            .connect()
            .unwrap();
        let started = Instant::now();
        for n in 1..=4 {
            assert_eq!(
                call_slow_sum(n, 0).run_with(&patient).unwrap(),
                n * (n + 1) / 2
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(
            worker
                .processes()
                .expect("a worker on processes")
                .restarts()
                >= 2,
            "{:?}",
            worker.processes().expect("a worker on processes")
        );
    });
}

/// The worker's own deadline bounds a call whose requester would wait an
/// hour.
#[test]
fn a_worker_kills_a_call_at_its_own_deadline() {
    common::watchdog(Duration::from_secs(120), || {
        let server = nats(&[]);
        let url = server.url();
        let _worker = worker(url, "own", 1)
            .deadline(Duration::from_millis(1500))
            .start()
            .unwrap();
        let cpu = Remote::builder(url)
            .namespace("own")
            .deadline(Duration::from_secs(3600))
            .connect()
            .unwrap();
        let started = Instant::now();
        let error = call_forever().run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded, "{error}");
        assert!(error.to_string().contains("1.5s"), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(call_slow_sum(3, 0).run_with(&cpu).unwrap(), 6);
    });
}

// --- 4. outcomes that say what is known -------------------------------------

/// Calls made across a server restart: a call answered `Unavailable` never
/// ran, a call answered with its result ran once, and no call started after
/// its requester was answered (a lost connection cancels the calls it
/// answered "may have run").
#[test]
fn across_a_restart_every_outcome_tells_the_truth() {
    common::watchdog(Duration::from_secs(180), || {
        let mut server = nats(&["-js"]);
        let port = server.port().to_owned();
        let url = server.url().to_owned();
        let dir = scratch("outcomes");
        let log = dir.join("runs");
        let _worker = worker(&url, "truth", 2).start().unwrap();
        let cpu = Arc::new(
            Remote::builder(&url)
                .namespace("truth")
                .deadline(Duration::from_secs(4))
                .connect()
                .unwrap(),
        );
        let stop_at = Instant::now() + Duration::from_secs(6);
        let callers: Vec<_> = (0..4u64)
            .map(|caller| {
                let cpu = Arc::clone(&cpu);
                let log = log.display().to_string();
                thread::spawn(move || {
                    let mut outcomes = Vec::new();
                    let mut id = caller * 1_000_000;
                    while Instant::now() < stop_at {
                        id += 1;
                        let outcome = call_record(log.clone(), id, 100).run_with(&*cpu);
                        outcomes.push((id, outcome.map_err(|e| e.kind()), epoch_ms()));
                        if outcomes.last().unwrap().1.is_err() {
                            thread::sleep(Duration::from_millis(20));
                        }
                    }
                    outcomes
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(1500));
        server.stop();
        thread::sleep(Duration::from_millis(1000));
        let _server = NatsServer::start_on(&port, &["-js"]).unwrap();
        let outcomes: Vec<_> = callers
            .into_iter()
            .flat_map(|caller| caller.join().unwrap())
            .collect();
        // Late runs, if any, have had time to start.
        thread::sleep(Duration::from_secs(5));
        let runs = records(&log);
        let count = |kind: Option<OffloadErrorKind>| {
            outcomes
                .iter()
                .filter(|(_, outcome, _)| outcome.as_ref().err().copied() == kind)
                .count()
        };
        eprintln!(
            "{} calls: {} ok, {} unavailable, {} may have run, {} out of time; {} runs",
            outcomes.len(),
            count(None),
            count(Some(OffloadErrorKind::Unavailable)),
            count(Some(OffloadErrorKind::MayHaveRun)),
            count(Some(OffloadErrorKind::DeadlineExceeded)),
            runs.len()
        );
        assert!(count(None) > 10 && count(Some(OffloadErrorKind::Unavailable)) > 0);
        for (id, outcome, answered) in &outcomes {
            let started: Vec<u64> = runs
                .iter()
                .filter(|(ran, _)| ran == id)
                .map(|&(_, at)| at)
                .collect();
            match outcome {
                Ok(_) => assert_eq!(started.len(), 1, "call {id} ran {started:?}"),
                Err(OffloadErrorKind::Unavailable) => {
                    assert!(
                        started.is_empty(),
                        "call {id} was Unavailable and ran {started:?}"
                    );
                }
                Err(kind) => {
                    assert!(started.len() <= 1, "call {id} ({kind:?}) ran {started:?}");
                    // A call already handed to a worker process when the
                    // connection dropped logs its start a little later
                    // (more than 20 ms on a loaded machine); one started
                    // after the server came back would be 1 s later.
                    for at in started {
                        assert!(
                            at <= answered + 300,
                            "call {id} started {} ms after it was answered {kind:?}",
                            at - answered
                        );
                    }
                }
            }
        }
    });
}

// --- 5. what is found on the server is checked, and made again -------------

/// A restarted server has lost the in-memory queue: the workers make it
/// again, and calls go through it again.
#[test]
fn the_shared_queue_is_made_again_after_a_restart() {
    common::watchdog(Duration::from_secs(120), || {
        let mut server = nats(&["-js"]);
        let port = server.port().to_owned();
        let url = server.url().to_owned();
        let worker = worker(&url, "again", 1).start().unwrap();
        assert_eq!(worker.shared_queue(), Ok(()));
        server.stop();
        let _server = NatsServer::start_on(&port, &["-js"]).unwrap();
        let look = Raw::connect(&url, async_nats::ConnectOptions::new());
        let jetstream = {
            let _inside = look.runtime.enter();
            async_nats::jetstream::new(look.client.clone())
        };
        eventually("the stream is made again", || {
            look.runtime
                .block_on(jetstream.get_stream("ythread-again"))
                .is_ok()
        });
        eventually("the worker uses it", || worker.shared_queue().is_ok());
        // Two calls at once to the one process: the second goes through the
        // queue.
        let cpu = Arc::new(Remote::builder(&url).namespace("again").connect().unwrap());
        let (first, gate) = gated_call(&cpu, "again", 10, 60_000);
        let second = {
            let cpu = Arc::clone(&cpu);
            thread::spawn(move || call_slow_sum(20, 0).run_with(&*cpu))
        };
        eventually("the second call is put in the queue", || {
            worker.forwarded() == 1
        });
        std::fs::write(&gate, b"").unwrap();
        assert_eq!(first.join().unwrap().unwrap(), 55);
        assert_eq!(second.join().unwrap().unwrap(), 210);
        assert_eq!((worker.forwarded(), worker.dequeued()), (1, 1));
    });
}

/// A stream or consumer of the queue's name that ythread did not make, with
/// settings that break at most once, is refused, the setting named, and the
/// worker serves without the queue.
#[test]
fn a_queue_found_on_the_server_is_checked() {
    use async_nats::jetstream::{consumer, stream};
    common::watchdog(Duration::from_secs(120), || {
        let server = nats(&["-js"]);
        let url = server.url();
        let look = Raw::connect(url, async_nats::ConnectOptions::new());
        let jetstream = {
            let _inside = look.runtime.enter();
            async_nats::jetstream::new(look.client.clone())
        };
        // A stream that keeps what is acknowledged: a call could run again.
        look.runtime
            .block_on(jetstream.create_stream(stream::Config {
                name: "ythread-kept".into(),
                subjects: vec!["ythread-queue.kept.>".into()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::Memory,
                max_bytes: 1 << 20,
                ..Default::default()
            }))
            .unwrap();
        let kept = worker(url, "kept", 1).start().unwrap();
        let problem = kept.shared_queue().unwrap_err();
        assert!(problem.contains("retention Limits"), "{problem}");
        // It serves without: the second call waits for the process.
        let cpu = Arc::new(Remote::builder(url).namespace("kept").connect().unwrap());
        let calls: Vec<_> = [(1, 300), (2, 0)]
            .into_iter()
            .map(|(n, ms)| {
                let cpu = Arc::clone(&cpu);
                let call = thread::spawn(move || call_slow_sum(n, ms).run_with(&*cpu));
                thread::sleep(Duration::from_millis(100));
                call
            })
            .collect();
        for call in calls {
            call.join().unwrap().unwrap();
        }
        assert_eq!(kept.forwarded(), 0);

        // The right stream, and consumers that redeliver too soon.
        let stream = look
            .runtime
            .block_on(jetstream.create_stream(stream::Config {
                name: "ythread-noack".into(),
                subjects: vec!["ythread-queue.noack.>".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::Memory,
                max_bytes: 64 << 20,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            }))
            .unwrap();
        // The consumer's name is a hash of the function; make one for every
        // function by its filter, the way the worker names them: simplest,
        // let a worker make them, then replace them.
        let first = worker(url, "noack", 1).start().unwrap();
        eventually("the consumers are made", || {
            let names = look
                .runtime
                .block_on(async { stream.consumer_names().collect::<Vec<_>>().await });
            names.len() >= 5
        });
        first.stop(Duration::from_secs(1));
        let names: Vec<String> = look.runtime.block_on(async {
            stream
                .consumer_names()
                .map(|name| name.unwrap())
                .collect::<Vec<_>>()
                .await
        });
        for name in &names {
            let info = look.runtime.block_on(stream.consumer_info(name)).unwrap();
            let filter = info.config.filter_subject.clone();
            look.runtime.block_on(stream.delete_consumer(name)).unwrap();
            look.runtime
                .block_on(stream.create_consumer(consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: filter,
                    // The server gives a call to another worker if the
                    // first has not acknowledged it within a second: a
                    // call could run twice.
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(1),
                    ..Default::default()
                }))
                .unwrap();
        }
        let second = worker(url, "noack", 1).start().unwrap();
        eventually("the consumer is refused", || {
            second
                .shared_queue()
                .is_err_and(|problem| problem.contains("ack_wait 1s"))
        });
    });
}

#[offloadable]
fn identity(n: u64) -> u64 {
    n
}

#[offloadable]
fn plus_million(n: u64) -> u64 {
    n + 1_000_000
}

#[yieldable]
fn call_plus_million(n: u64) -> Result<u64, OffloadError> {
    try_offload!(plus_million, n)
}

/// The consumers of two functions of the same signature, swapped on the
/// server after the worker checked them: a call is never run as the other
/// function (its answer would look right).
#[test]
fn a_consumer_swapped_after_its_check_never_runs_another_functions_call() {
    use async_nats::jetstream::consumer;
    common::watchdog(Duration::from_secs(120), || {
        let server = nats(&["-js"]);
        let url = server.url();
        let worker = worker(url, "swap", 1).start().unwrap();
        let look = Raw::connect(url, async_nats::ConnectOptions::new());
        let jetstream = {
            let _inside = look.runtime.enter();
            async_nats::jetstream::new(look.client.clone())
        };
        let stream = look
            .runtime
            .block_on(jetstream.get_stream("ythread-swap"))
            .unwrap();
        let filters = || -> Vec<(String, String)> {
            look.runtime.block_on(async {
                let names: Vec<String> = stream
                    .consumer_names()
                    .map(|name| name.unwrap())
                    .collect()
                    .await;
                let mut filters = Vec::new();
                for name in names {
                    let info = stream.clone().consumer_info(&name).await.unwrap();
                    filters.push((name, info.config.filter_subject.clone()));
                }
                filters
            })
        };
        eventually("the consumers are made", || filters().len() >= 7);
        let of = |function: &str| {
            filters()
                .into_iter()
                .find(|(_, filter)| filter.contains(&format!("::{function}.")))
                .unwrap()
        };
        let (identity_consumer, identity_filter) = of("identity");
        let (plus_consumer, plus_filter) = of("plus_million");
        let cpu = Arc::new(
            Remote::builder(url)
                .namespace("swap")
                .deadline(Duration::from_secs(10))
                .connect()
                .unwrap(),
        );
        // The worker busy (until the gate opens): once their pulls under
        // way have ended (2 s), its pull loops wait, holding their
        // consumers, unchecked.
        let (busy, gate) = gated_call(&cpu, "swap", 1, 60_000);
        thread::sleep(Duration::from_millis(2_500));
        look.runtime.block_on(async {
            // (Both gone first: a work queue takes one consumer per filter.)
            for name in [&identity_consumer, &plus_consumer] {
                stream.delete_consumer(name).await.unwrap();
            }
            for (name, filter) in [
                (&identity_consumer, &plus_filter),
                (&plus_consumer, &identity_filter),
            ] {
                stream
                    .create_consumer(consumer::pull::Config {
                        durable_name: Some(name.clone()),
                        filter_subject: filter.clone(),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: Duration::from_secs(30),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        });
        // Goes to the queue (the worker is busy), then, once the worker is
        // free, reaches the consumer named after `identity`.
        let forwarded = worker.forwarded();
        let swapped = {
            let cpu = Arc::clone(&cpu);
            thread::spawn(move || call_plus_million(7).run_with(&*cpu))
        };
        eventually("the call is put in the queue", || {
            worker.forwarded() > forwarded
        });
        std::fs::write(&gate, b"").unwrap();
        let outcome = swapped.join().unwrap();
        match &outcome {
            Ok(n) => assert_eq!(*n, 1_000_007, "run as another function"),
            Err(error) => assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded, "{error}"),
        }
        assert_eq!(busy.join().unwrap().unwrap(), 1);
        eventually("the worker says what it found", || {
            worker.shared_queue().is_err_and(|problem| {
                problem.contains("another function's") || problem.contains("filter")
            })
        });
    });
}

/// A signed call replayed at a busy worker: the copies are dropped, and
/// none gives the requester a valid "did not run" while the first runs.
#[test]
fn a_replayed_signed_call_draws_no_answer() {
    common::watchdog(Duration::from_secs(120), || {
        let server = nats(&[]);
        let url = server.url();
        let worker = worker(url, "replay", 1)
            .signing_key(KEY)
            .max_pending_bytes(8 << 10)
            .start()
            .unwrap();
        let cpu = Remote::builder(url)
            .namespace("replay")
            .signing_key(KEY)
            .connect()
            .unwrap();
        let attacker = Raw::connect(url, async_nats::ConnectOptions::new());
        {
            let client = attacker.client.clone();
            attacker.on("ythread.replay.>", move |message| {
                let Some(reply) = message.reply.clone() else {
                    return;
                };
                if reply.starts_with("attacker.") {
                    return;
                }
                let client = client.clone();
                tokio::spawn(async move {
                    for _ in 0..200 {
                        let _ = client
                            .publish_with_reply_and_headers(
                                message.subject.clone(),
                                reply.clone(),
                                message.headers.clone().unwrap_or_default(),
                                message.payload.clone(),
                            )
                            .await;
                    }
                });
            });
        }
        let log = scratch("replay").join("runs");
        let id = call_record(log.display().to_string(), 9, 500)
            .run_with(&cpu)
            .unwrap();
        assert_eq!(id, 9);
        // The replays reach the worker as fast as the attacker's task sends
        // them: under load, that can take well over a second.
        let deadline = Instant::now() + Duration::from_secs(30);
        while worker.dropped() < 100 {
            assert!(Instant::now() < deadline, "{:?}", worker);
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(records(&log).len(), 1, "a replay ran");
    });
}

// --- 6. permission mistakes fail at once -------------------------------------

#[test]
fn permission_mistakes_fail_at_once_naming_the_permission() {
    common::watchdog(Duration::from_secs(120), || {
        let config = r#"
            authorization {
              users = [
                { user: good, password: g }
                { user: mute, password: m, permissions: {
                    publish = { deny = ["ythread.>"] }
                } }
                { user: deaf, password: d, permissions: {
                    subscribe = { deny = ["_INBOX.>"] }
                } }
                { user: nosub, password: n, permissions: {
                    subscribe = { deny = ["ythread.>"] }
                } }
                { user: noreply, password: r, permissions: {
                    publish = { deny = ["_INBOX.>"] }
                } }
              ]
            }
        "#;
        let server = nats_with("permissions", config, &[]);
        let url = server.url();
        let as_user = |user: &str, password: &str| {
            async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        };

        // A worker that may not subscribe to the calls does not start.
        let error = worker(url, "perm", 1)
            .connect_options(as_user("nosub", "n"))
            .start()
            .unwrap_err();
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::PermissionDenied,
            "{error}"
        );
        assert!(error.to_string().contains("ythread.perm."), "{error}");

        // A requester that may not read its inbox does not connect.
        let error = Remote::builder(url)
            .connect_options(as_user("deaf", "d"))
            .connect()
            .unwrap_err();
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::PermissionDenied,
            "{error}"
        );
        assert!(error.to_string().contains("_INBOX."), "{error}");

        let _good = worker(url, "perm", 1)
            .connect_options(as_user("good", "g"))
            .start()
            .unwrap();
        // A requester that may not send calls learns it at once.
        let mute = Remote::builder(url)
            .namespace("perm")
            .connect_options(as_user("mute", "m"))
            .connect()
            .unwrap();
        let started = Instant::now();
        let error = call_slow_sum(3, 0).run_with(&mute).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Unavailable, "{error}");
        assert!(
            error
                .to_string()
                .contains("Permissions Violation for Publish"),
            "{error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        drop(_good);

        // A worker that may not reply says so. With a signing key, a refused
        // reply to a call that verified proves it: it stops serving, and
        // the next call hears at once that no worker serves it.
        let noreply = worker(url, "perm2", 1)
            .connect_options(as_user("noreply", "r"))
            .signing_key(KEY)
            .start()
            .unwrap();
        let cpu = Remote::builder(url)
            .namespace("perm2")
            .deadline(Duration::from_secs(2))
            .signing_key(KEY)
            .connect_options(as_user("good", "g"))
            .connect()
            .unwrap();
        let error = call_slow_sum(3, 0).run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded, "{error}");
        eventually("the worker says why it does not serve", || {
            noreply.ready().is_err_and(|why| {
                why.contains("refused 1 of its replies") && why.contains("no longer takes calls")
            })
        });
        let started = Instant::now();
        let error = call_slow_sum(3, 0).run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Unavailable, "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        drop(noreply);

        // Without a key, a refused reply may be a caller's made-up reply
        // subject: the worker says what was refused, and goes on serving
        // (a caller cannot stop a fleet by naming reply subjects NATS
        // refuses).
        let unsure = worker(url, "perm3", 1)
            .connect_options(as_user("noreply", "r"))
            .start()
            .unwrap();
        let cpu = Remote::builder(url)
            .namespace("perm3")
            .deadline(Duration::from_secs(2))
            .connect_options(as_user("good", "g"))
            .connect()
            .unwrap();
        let error = call_slow_sum(3, 0).run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded, "{error}");
        eventually("the worker says what NATS refused", || {
            unsure
                .ready()
                .is_err_and(|why| why.contains("Permissions Violation for Publish"))
        });
        assert_eq!(unsure.refused_replies(), 1);
        let error = call_slow_sum(3, 0).run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::DeadlineExceeded, "{error}");
    });
}

/// A worker whose user may not read its own inbox (where JetStream's
/// answers come) fails to start at once, naming its inbox: it used to wait
/// out the queue's timeouts (10 s), then start, blaming JetStream.
#[test]
fn a_worker_that_may_not_read_its_inbox_fails_to_start_at_once() {
    common::watchdog(Duration::from_secs(60), || {
        let config = r#"
            authorization {
              users = [
                { user: blind, password: b, permissions: {
                    subscribe = ["ythread.>", "ythread-cancel.>"]
                } }
              ]
            }
        "#;
        let server = nats_with("inbox", config, &["-js"]);
        let started = Instant::now();
        let error = worker(server.url(), "inbox", 1)
            .connect_options(async_nats::ConnectOptions::with_user_and_password(
                "blind".into(),
                "b".into(),
            ))
            .start()
            .unwrap_err();
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::PermissionDenied,
            "{error}"
        );
        assert!(error.to_string().contains("its own inbox"), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    });
}

// --- 8. payloads as large as the server allows ------------------------------

#[test]
fn payloads_go_as_far_as_the_server_allows_and_say_what_raises_it() {
    common::watchdog(Duration::from_secs(120), || {
        let big = vec![5u8; 1_300_000];
        // The server's default cap, 1 MiB.
        let server = nats(&[]);
        let _worker = worker(server.url(), "payload", 1).start().unwrap();
        let cpu = Remote::builder(server.url())
            .namespace("payload")
            .connect()
            .unwrap();
        let error = call_echo(big.clone()).run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Protocol, "{error}");
        assert!(
            error.to_string().contains("it did not run")
                && error.to_string().contains("max_payload: 8MB"),
            "{error}"
        );
        let error = call_zeros(1_300_000).run_with(&cpu).unwrap_err();
        assert_eq!(error.kind(), OffloadErrorKind::Protocol, "{error}");
        assert!(
            error.to_string().contains("it ran, and its result takes")
                && error.to_string().contains("max_payload: 8MB"),
            "{error}"
        );

        // A server that allows 8 MB: the same calls go through.
        let server = nats_with("payload", "max_payload: 8MB\n", &[]);
        let _worker = worker(server.url(), "payload", 1).start().unwrap();
        let cpu = Remote::builder(server.url())
            .namespace("payload")
            .connect()
            .unwrap();
        assert_eq!(call_echo(big.clone()).run_with(&cpu).unwrap(), big);
        assert_eq!(
            call_zeros(1_300_000).run_with(&cpu).unwrap().len(),
            1_300_000
        );
    });
}
