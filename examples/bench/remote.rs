//! The `Remote` row's fleet: a `nats-server` of the benchmark's own on
//! loopback, and two remote workers in this process, each with one local
//! worker process (so that two processes do the work, as in the
//! `Processes` row, and NATS picks between two queue-group members).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ythread::Processes;
use ythread::remote::{Remote, Worker};
use ythread_demo::nats::NatsServer;

struct Fleet {
    server: NatsServer,
    workers: Vec<Worker>,
}

static FLEET: OnceLock<Mutex<Option<Fleet>>> = OnceLock::new();

/// A `Remote` strategy on the fleet, started on first use.
///
/// # Panics
///
/// If `nats-server` is missing or the fleet cannot start (the row is only
/// listed when `nats-server` is installed).
pub(crate) fn remote() -> Arc<Remote> {
    let fleet = FLEET.get_or_init(|| Mutex::new(Some(start_fleet())));
    let url = fleet
        .lock()
        .unwrap()
        .as_ref()
        .expect("the fleet is stopped")
        .server
        .url()
        .to_owned();
    Arc::new(Remote::connect(&url).expect("cannot connect to the benchmark's nats-server"))
}

fn start_fleet() -> Fleet {
    let server = NatsServer::start(&[]).unwrap_or_else(|error| panic!("the Remote row: {error}"));
    let workers = (0..2)
        .map(|_| {
            Worker::builder(server.url())
                .processes(Processes::builder().workers(1))
                .start()
                .expect("cannot start a remote worker")
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
