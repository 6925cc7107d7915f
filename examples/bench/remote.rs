//! The `Remote` rows' fleets: a `nats-server` of the benchmark's own on
//! loopback (with JetStream), and for each row two remote workers in this
//! process, each with one local worker process (so that two processes do
//! the work, as in the `Processes` row, and NATS picks between two
//! queue-group members). One row's workers share a queue for the calls that
//! find them busy; the other's do not (NATS's random dispatch alone).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ythread::Processes;
use ythread::remote::{Remote, Worker};
use ythread_demo::nats::NatsServer;

struct Fleet {
    server: NatsServer,
    workers: Vec<Worker>,
}

/// The namespaces of the two fleets: with and without the shared queue.
const SHARED: &str = "bench";
const RANDOM: &str = "bench-random";

static FLEET: OnceLock<Mutex<Option<Fleet>>> = OnceLock::new();

/// A `Remote` strategy on the fleet whose workers share a queue, started on
/// first use.
///
/// # Panics
///
/// If `nats-server` is missing or the fleet cannot start (the row is only
/// listed when `nats-server` is installed).
pub(crate) fn remote() -> Arc<Remote> {
    connect(SHARED)
}

/// A `Remote` strategy on the fleet whose workers do not share a queue.
///
/// # Panics
///
/// As [`remote`].
pub(crate) fn remote_random() -> Arc<Remote> {
    connect(RANDOM)
}

fn connect(namespace: &str) -> Arc<Remote> {
    let fleet = FLEET.get_or_init(|| Mutex::new(Some(start_fleet())));
    let url = fleet
        .lock()
        .unwrap()
        .as_ref()
        .expect("the fleet is stopped")
        .server
        .url()
        .to_owned();
    Arc::new(
        Remote::builder(&url)
            .namespace(namespace)
            .connect()
            .expect("cannot connect to the benchmark's nats-server"),
    )
}

fn start_fleet() -> Fleet {
    let server =
        NatsServer::start(&["-js"]).unwrap_or_else(|error| panic!("the Remote row: {error}"));
    let workers = [SHARED, SHARED, RANDOM, RANDOM]
        .into_iter()
        .map(|namespace| {
            let worker = Worker::builder(server.url())
                .namespace(namespace)
                .processes(Processes::builder().workers(1))
                .shared_queue(namespace == SHARED)
                .start()
                .expect("cannot start a remote worker");
            if namespace == SHARED
                && let Err(error) = worker.shared_queue()
            {
                panic!("the Remote row's workers have no shared queue: {error}");
            }
            worker
        })
        .collect();
    Fleet { server, workers }
}

/// Stops the fleet, if it was started.
pub(crate) fn stop() {
    if let Some(fleet) = FLEET.get().and_then(|fleet| fleet.lock().unwrap().take()) {
        for worker in fleet.workers {
            worker.stop(Duration::from_secs(5));
        }
        drop(fleet.server);
    }
}
