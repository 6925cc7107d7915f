//! A `Remote` round trip (requester → NATS → `Worker` → its local worker
//! process and back) against raw async-nats request-reply through the same
//! server, to a responder that answers at once:
//!
//! - `raw, one client`: the responder on the requester's own connection;
//! - `raw, two clients`: the responder on a connection and a runtime of its
//!   own, as a worker on another machine is (the fair baseline: a call
//!   crosses two clients);
//! - `local hop`: the worker's own round trip to its local process;
//! - `remote` and `remote, signed` (`signing_key`);
//! - `remote, threads`: a worker that runs the calls on threads of its own
//!   (`WorkerBuilder::threads`), no local hop.
//!
//! The variants take turns, round after round, in one run (this machine's
//! speed drifts over seconds: variants timed one after the other would
//! compare drifts); each is reported as the median over the rounds of its
//! mean per call. Two verdicts (issue 19's targets, at most 1.2 each): the
//! ratio of `remote` to `raw, two clients` plus `local hop`, and of
//! `remote, threads` to `raw, two clients`.
//!
//! Needs `nats-server` (the README's test command installs it); run with:
//! `cargo bench -p ythread --features remote --bench remote`
//! (`-- --rounds N --calls N` to change the run's size).

mod common;
// The `nats-server` launcher of the `Remote` tests (std only).
#[path = "../tests/common/nats.rs"]
#[allow(dead_code, unreachable_pub)]
mod nats;

use std::hint::black_box;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ythread::remote::{Remote, Worker, async_nats};
use ythread::{Processes, Yieldable};

use crate::common::offload_times;
use crate::nats::NatsServer;

/// One raw request-reply setup: a requester and a responder that echoes.
struct Raw {
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    subject: &'static str,
    /// The responder's own runtime, if it has one.
    _responder: Option<tokio::runtime::Runtime>,
}

fn new_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// An echo responder on `subject`, through `client`, on `runtime`.
fn echo(runtime: &tokio::runtime::Runtime, client: &async_nats::Client, subject: &str) {
    let mut requests = runtime
        .block_on(client.subscribe(subject.to_owned()))
        .unwrap();
    let answering = client.clone();
    runtime.spawn(async move {
        while let Some(message) = requests.next().await {
            if let Some(reply) = message.reply {
                let _ = answering.publish(reply, message.payload).await;
            }
        }
    });
    runtime.block_on(client.flush()).unwrap();
}

impl Raw {
    fn new(url: &str, own_responder: bool, subject: &'static str) -> Raw {
        let runtime = new_runtime();
        let client = runtime.block_on(async_nats::connect(url)).unwrap();
        let responder = if own_responder {
            let responder_runtime = new_runtime();
            let responder = responder_runtime
                .block_on(async_nats::connect(url))
                .unwrap();
            echo(&responder_runtime, &responder, subject);
            Some(responder_runtime)
        } else {
            echo(&runtime, &client, subject);
            None
        };
        Raw {
            runtime,
            client,
            subject,
            _responder: responder,
        }
    }

    fn calls(&self, calls: u64) {
        for i in 0..calls {
            let payload = i.to_le_bytes().to_vec();
            let reply = self
                .runtime
                .block_on(self.client.request(self.subject, payload.into()))
                .unwrap();
            black_box(reply);
        }
    }
}

/// A worker and a requester of `namespace`, signed with `key` if given; the
/// worker on one thread of its own if `threads`, else one local process.
fn pair(url: &str, namespace: &str, key: Option<[u8; 32]>, threads: bool) -> (Worker, Remote) {
    let mut worker = Worker::builder(url)
        .namespace(namespace)
        .processes(Processes::builder().workers(1));
    if threads {
        worker = worker.threads(1);
    }
    let mut remote = Remote::builder(url).namespace(namespace);
    if let Some(key) = key {
        worker = worker.signing_key(key);
        remote = remote.signing_key(key);
    }
    (worker.start().unwrap(), remote.connect().unwrap())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // The worker's local processes are this program started again.
    ythread::processes::init();
    let mut rounds = 21;
    let mut calls = 400u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => rounds = args.next().and_then(|n| n.parse().ok()).unwrap_or(rounds),
            "--calls" => calls = args.next().and_then(|n| n.parse().ok()).unwrap_or(calls),
            _ => {} // `--bench`, from cargo
        }
    }
    let server = NatsServer::start(&["-js"]).unwrap_or_else(|error| {
        eprintln!("the remote bench needs nats-server: {error}");
        std::process::exit(2);
    });
    let url = server.url();
    let one_client = Raw::new(url, false, "bench.echo1");
    let two_clients = Raw::new(url, true, "bench.echo2");
    let (worker, remote) = pair(url, "bench", None, false);
    let (signed_worker, signed) = pair(url, "bench-signed", Some([7; 32]), false);
    let (threads_worker, on_threads) = pair(url, "bench-threads", None, true);

    type Variant<'a> = (&'static str, Box<dyn Fn(u64) + 'a>);
    let variants: Vec<Variant<'_>> = vec![
        ("raw, one client", Box::new(|n| one_client.calls(n))),
        ("raw, two clients", Box::new(|n| two_clients.calls(n))),
        (
            "local hop",
            Box::new(|n| {
                assert_eq!(
                    offload_times(n).run_with(worker.processes().expect("a worker on processes")),
                    n
                )
            }),
        ),
        (
            "remote",
            Box::new(|n| assert_eq!(offload_times(n).run_with(&remote), n)),
        ),
        (
            "remote, signed",
            Box::new(|n| assert_eq!(offload_times(n).run_with(&signed), n)),
        ),
        (
            "remote, threads",
            Box::new(|n| assert_eq!(offload_times(n).run_with(&on_threads), n)),
        ),
    ];
    // Warm up: connections, processes, caches.
    for (_, run) in &variants {
        run(calls / 4 + 1);
    }
    let mut per_call: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..rounds {
        for (i, (_, run)) in variants.iter().enumerate() {
            let started = Instant::now();
            run(calls);
            per_call[i].push(started.elapsed().as_secs_f64() * 1e6 / calls as f64);
        }
    }
    println!(
        "remote round trip, {rounds} rounds of {calls} calls per variant, taking turns \
         (median of the rounds' means, with the rounds' spread):"
    );
    let medians: Vec<f64> = per_call.iter().cloned().map(median).collect();
    for ((name, _), (times, median)) in variants.iter().zip(per_call.iter().zip(&medians)) {
        let low = times.iter().copied().fold(f64::INFINITY, f64::min);
        let high = times.iter().copied().fold(0.0, f64::max);
        println!("  {name:<18} {median:>7.1} µs   ({low:.1} to {high:.1})");
    }
    let [raw1, raw2, hop, remote_us, signed_us, threads_us] = medians[..] else {
        unreachable!("six variants")
    };
    let floor = raw2 + hop;
    let ratio = remote_us / floor;
    let signed_ratio = signed_us / floor;
    println!(
        "  remote / (raw, two clients + local hop) = {ratio:.2}; signed: {signed_ratio:.2}; \
         remote / (raw, one client + local hop) = {:.2}",
        remote_us / (raw1 + hop)
    );
    let threads_ratio = threads_us / raw2;
    println!(
        "  remote, threads / raw, two clients = {threads_ratio:.2}; / raw, one client = {:.2}",
        threads_us / raw1
    );
    let verdict = |ratio: f64| if ratio <= 1.2 { "met" } else { "missed" };
    println!(
        "verdict: {} (target: remote within 1.2x of a raw request-reply between two clients \
         plus the local process hop)",
        verdict(ratio)
    );
    println!(
        "verdict: {} (target: remote, threads within 1.2x of a raw request-reply between two \
         clients)",
        verdict(threads_ratio)
    );
    drop(variants);
    drop((remote, signed, on_threads));
    worker.stop(Duration::from_secs(5));
    signed_worker.stop(Duration::from_secs(5));
    threads_worker.stop(Duration::from_secs(5));
}
