//! The seed's thread-per-connection server: one thread per connection reads
//! `n`, computes [`sumn`]`(n)`, writes the answer and closes.
//!
//! Two handlers do the same thing: [`handle_plain`] is the plain threaded
//! function, [`handle`] the yieldable one whose CPU step is `offload!(sumn,
//! n)`. A [`Server`] runs either one (or, on plain threads, any handler: see
//! [`Server::start_threads`]) on a background accept thread, and stops
//! cleanly: [`Server::stop`] returns once every thread it started has ended.

use std::collections::HashMap;
use std::io;
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use ythread::{Apply, YieldableThread, offload};

use crate::{read_request, sumn, write_reply};

/// The listen backlog [`bind`] asks for: room for a burst of connections far
/// larger than the benchmark's clients. The kernel caps it (Linux:
/// `net.core.somaxconn`).
pub const LISTEN_BACKLOG: i32 = 1024;

/// Binds a listener like [`TcpListener::bind`], with a listen backlog of
/// [`LISTEN_BACKLOG`] instead of std's 128.
///
/// With a thread-per-connection server, hundreds of clients connecting at
/// once outrun the accept thread, which spawns a thread per connection. Once
/// the backlog is full, Linux drops the client's SYN and the client retries
/// only after a second: with std's backlog of 128 and 256 clients, the
/// benchmark's tail latency measured that second, not the server.
///
/// # Errors
///
/// Any error of resolving `addr`, or of creating, binding or listening on the
/// socket.
pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std does, so a restarted server can bind its port at once.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The seed's handler on plain threads: reads `n`, computes `sumn(n)`, writes
/// it; the connection closes when `stream` is dropped.
///
/// # Errors
///
/// Any I/O error, or `InvalidData` if the request is not a decimal number
/// (the connection then closes without an answer).
pub fn handle_plain(mut stream: TcpStream) -> io::Result<()> {
    let n = read_request(&mut stream)?;
    let sum = sumn(n);
    write_reply(&mut stream, sum)
}

/// The same handler, yieldable: the CPU step is `offload!(sumn, n)` and runs
/// wherever the strategy of the thread driving it says. The handler names no
/// strategy.
///
/// Calling it returns the handler without running it; see
/// [`ythread::Yieldable`].
///
/// # Errors
///
/// As [`handle_plain`].
#[ythread::yieldable]
pub fn handle(mut stream: TcpStream) -> io::Result<()> {
    let n = read_request(&mut stream)?;
    let sum = offload!(sumn, n);
    write_reply(&mut stream, sum)
}

/// A thread-per-connection server: a background thread accepts connections
/// and starts one thread per connection, until [`stop`](Server::stop)ped or
/// dropped.
///
/// A connection that fails (the client resets it, sends garbage) only ends
/// its own thread; the server keeps serving.
///
/// # Example
///
/// ```
/// use ythread_demo::server::{self, Server};
///
/// let server = Server::start_yieldable(server::bind("127.0.0.1:0")?, ythread::Pool::new(2))?;
/// assert_eq!(ythread_demo::request(server.addr(), 100)?, 5050);
/// server.stop();
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Server {
    /// The address the listener is bound to.
    addr: SocketAddr,
    /// Set once to tell the accept thread to stop; it checks it after each
    /// `accept` returns.
    stopping: Arc<AtomicBool>,
    /// The accept thread; `None` once stopped. It joins every connection
    /// thread before it ends, so joining it joins them all.
    accept_thread: Option<JoinHandle<()>>,
}

/// How often, in accepted connections, the accept thread forgets the
/// handles of connection threads that have ended, so that a long-running
/// server's list does not grow forever.
const REAP_EVERY: u64 = 64;

impl Server {
    /// Serves with plain std threads, one per connection, running
    /// [`handle_plain`]: the seed's plain threaded server, no ythread
    /// involved.
    ///
    /// # Errors
    ///
    /// Fails if the listener's address cannot be read or the accept thread
    /// cannot be spawned.
    pub fn start_plain(listener: TcpListener) -> io::Result<Server> {
        Server::start_threads(listener, "sumserver-conn", handle_plain)
    }

    /// Serves with plain std threads named `thread_name`, one per
    /// connection, each running a clone of `serve` on its stream: the plain
    /// server with any handler (the benchmark's peers use it).
    ///
    /// # Errors
    ///
    /// Fails if the listener's address cannot be read or the accept thread
    /// cannot be spawned.
    pub fn start_threads<F>(
        listener: TcpListener,
        thread_name: &str,
        serve: F,
    ) -> io::Result<Server>
    where
        F: FnOnce(TcpStream) -> io::Result<()> + Clone + Send + 'static,
    {
        let thread_name = thread_name.to_owned();
        Server::start(listener, move |stream, registration| {
            let serve = serve.clone();
            thread::Builder::new()
                .name(thread_name.clone())
                .spawn(move || {
                    let result = serve(stream);
                    drop(registration);
                    result
                })
        })
    }

    /// Serves with one [`YieldableThread`] per connection running
    /// [`handle`], each given a clone of `apply`: the seed's yieldable
    /// server with `cpu_apply = apply`.
    ///
    /// # Errors
    ///
    /// Fails if the listener's address cannot be read or the accept thread
    /// cannot be spawned.
    pub fn start_yieldable<A>(listener: TcpListener, apply: A) -> io::Result<Server>
    where
        A: Apply + Clone + Send + 'static,
    {
        Server::start(listener, move |stream, registration| {
            YieldableThread::new()
                .name("ysumserver-conn")
                .apply(apply.clone())
                .spawn(handle_registered(stream, registration))
        })
    }

    /// Starts the accept thread; `spawn` starts the thread serving one
    /// connection, which must drop the [`Registration`] once the connection
    /// is closed.
    fn start<S>(listener: TcpListener, spawn: S) -> io::Result<Server>
    where
        S: FnMut(TcpStream, Registration) -> io::Result<JoinHandle<io::Result<()>>>
            + Send
            + 'static,
    {
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stopping);
        let accept_thread = thread::Builder::new()
            .name("sumserver-accept".into())
            .spawn(move || accept_loop(listener, &flag, spawn))?;
        Ok(Server {
            addr,
            stopping,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, waits for the accept thread and for every connection
    /// thread it started, then returns; the port is closed by then.
    ///
    /// A request already sent is still answered. The read side of every open
    /// connection is shut down, so a client that connects and never sends
    /// cannot keep the server alive: its connection closes without an answer.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Stops the server if it still runs; idempotent.
    fn shutdown(&mut self) {
        let Some(accept_thread) = self.accept_thread.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        // `accept` blocks until a connection comes: make one. If the connect
        // fails the accept thread has already ended.
        drop(TcpStream::connect_timeout(
            &wake_up_addr(self.addr),
            Duration::from_secs(5),
        ));
        // The accept thread cannot panic short of a bug (connection threads'
        // panics stay in their join handles); don't turn one into a panic in
        // `drop`.
        let _ = accept_thread.join();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// [`handle`], plus the connection's [`Registration`], dropped once
/// `handle` has closed the stream.
#[ythread::yieldable]
fn handle_registered(stream: TcpStream, registration: Registration) -> io::Result<()> {
    let result = ythread::yield_from!(handle(stream));
    drop(registration);
    result
}

/// The connections being served, by id: clones of their streams, so that
/// stopping can shut down connections still waiting for their request.
type Open = Arc<Mutex<HashMap<u64, TcpStream>>>;

/// One entry of [`Open`]; dropping it removes the clone, which closes the
/// socket for good (the client waits for that close to read its answer).
#[derive(Debug)]
struct Registration {
    open: Open,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.open).remove(&self.id);
    }
}

/// Locks `open`, ignoring poisoning: each insert or remove is a single call,
/// so the map is consistent whatever panicked while holding the lock.
fn lock(open: &Open) -> MutexGuard<'_, HashMap<u64, TcpStream>> {
    open.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where to connect to reach a listener bound to `addr`: an unspecified
/// address (`0.0.0.0`, `::`) is reached through loopback.
fn wake_up_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Accepts connections until `stopping` is set, then closes the listener,
/// shuts down the read side of open connections and joins every connection
/// thread.
fn accept_loop<S>(listener: TcpListener, stopping: &AtomicBool, mut spawn: S)
where
    S: FnMut(TcpStream, Registration) -> io::Result<JoinHandle<io::Result<()>>>,
{
    let open: Open = Arc::default();
    let mut threads: Vec<JoinHandle<io::Result<()>>> = Vec::new();
    for id in 0u64.. {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) if stopping.load(Ordering::SeqCst) => break,
            Err(e) => {
                // Out of file descriptors or memory: retrying at once would
                // spin. A connection reset before it was accepted is harmless.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                ) {
                    thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
        };
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        // Without a clone the connection cannot be ended from outside; serve
        // it anyway, stopping then waits for the client.
        if let Ok(clone) = stream.try_clone() {
            lock(&open).insert(id, clone);
        }
        let registration = Registration {
            open: Arc::clone(&open),
            id,
        };
        // If no thread can be started, the stream and the registration are
        // dropped with the failed spawn's closure: the connection closes.
        if let Ok(thread) = spawn(stream, registration) {
            threads.push(thread);
        }
        if id % REAP_EVERY == 0 {
            threads.retain(|t| !t.is_finished());
        }
    }
    // Close the port first, so that clients are refused rather than queued
    // while the last connections finish.
    drop(listener);
    for stream in lock(&open).values() {
        // The peer may have closed already; nothing to do then.
        let _ = stream.shutdown(Shutdown::Read);
    }
    for thread in threads {
        // A connection's error or panic ends only that connection.
        let _ = thread.join();
    }
}
