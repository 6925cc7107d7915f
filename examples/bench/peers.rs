//! The peers: the seed's server written the way users of other tools would
//! write it, same wire protocol, same `sumn`. They are the bar to beat, so
//! each is the idiomatic version, not a strawman:
//!
//! - tokio, async accept/read/write on the multi-thread runtime (one worker
//!   per core, the default), the CPU step in `spawn_blocking`, as tokio's
//!   documentation recommends for CPU-bound work;
//! - the same, the CPU step on rayon's global pool (`rayon::spawn` plus a
//!   oneshot channel), the other recommended pattern;
//! - std threads, one per connection like the seed (the demo's own
//!   [`Server`], as in the plain row), the CPU step in `ThreadPool::install`
//!   on a rayon pool sized to the cores.
//!
//! They call [`ythread_demo::sumn`], which is never inlined: every row runs
//! the same machine code for the work (see there why that matters).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use ythread_demo::server::Server;
use ythread_demo::{MAX_REQUEST, cores, parse_decimal, read_request, sumn, write_reply};

use crate::variants::Running;

/// Where the tokio server runs `sumn`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TokioStep {
    /// `tokio::task::spawn_blocking`.
    SpawnBlocking,
    /// rayon's global pool, the answer coming back through a oneshot.
    Rayon,
}

/// The seed's server on tokio.
pub(crate) struct TokioServer {
    addr: SocketAddr,
    runtime: Runtime,
    stop: oneshot::Sender<()>,
    accept: tokio::task::JoinHandle<()>,
}

impl TokioServer {
    /// Starts a multi-thread runtime serving `listener`.
    pub(crate) fn start(listener: TcpListener, step: TokioStep) -> io::Result<TokioServer> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("tokio-peer")
            .enable_all()
            .build()?;
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (stop, stopped) = oneshot::channel();
        let accept = runtime.spawn(accept_loop(listener, step, stopped));
        Ok(TokioServer {
            addr,
            runtime,
            stop,
            accept,
        })
    }
}

impl Running for TokioServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn stop(self: Box<Self>) {
        let TokioServer {
            runtime,
            stop,
            accept,
            ..
        } = *self;
        // The accept loop may have ended on its own; then nobody listens.
        let _ = stop.send(());
        // It finishes the open connections before it returns.
        let _ = runtime.block_on(accept);
        // Only idle workers and blocking threads remain: wait for them.
        runtime.shutdown_timeout(Duration::from_secs(10));
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    step: TokioStep,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_async(stream, step));
                }
                // Out of descriptors: retrying at once would spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve_async(mut stream: tokio::net::TcpStream, step: TokioStep) -> io::Result<()> {
    let mut buf = [0u8; MAX_REQUEST];
    let len = stream.read(&mut buf).await?;
    let n = parse_decimal(&buf[..len])?;
    let sum = match step {
        TokioStep::SpawnBlocking => tokio::task::spawn_blocking(move || sumn(n))
            .await
            .map_err(io::Error::other)?,
        TokioStep::Rayon => {
            let (tx, rx) = oneshot::channel();
            rayon::spawn(move || {
                // The connection may have gone; nothing to tell anyone then.
                let _ = tx.send(sumn(n));
            });
            rx.await.map_err(io::Error::other)?
        }
    };
    stream.write_all(sum.to_string().as_bytes()).await
}

/// The seed's thread-per-connection server, its CPU step in
/// `rayon::ThreadPool::install` on a pool with one thread per core.
pub(crate) fn start_rayon_install(listener: TcpListener) -> io::Result<Server> {
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(cores())
            .thread_name(|i| format!("rayon-peer-{i}"))
            .build()
            .map_err(io::Error::other)?,
    );
    Server::start_threads(
        listener,
        "rayon-peer-conn",
        crate::variants::limits(),
        move |mut stream| {
            let n = read_request(&mut stream)?;
            let sum = pool.install(|| sumn(n));
            write_reply(&mut stream, sum)
        },
    )
}
