//! The seed's thread-per-connection server: one thread per connection reads
//! `n`, computes [`sumn`]`(n)`, writes the answer and closes.
//!
//! Two handlers do the same thing: [`handle_plain`] is the plain threaded
//! function, [`handle`] the yieldable one whose CPU step is `offload!(sumn,
//! n)`. A [`Server`] runs either one (or, on plain threads, any handler: see
//! [`Server::start_threads`]) on a background accept thread, and stops
//! cleanly: [`Server::stop`] returns once every thread it started has ended.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use ythread::{Apply, CachedJoinHandle, ThreadCache, YieldableThread, try_offload};

use crate::{check_n, read_request, sumn, write_reply};

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
/// it; the connection closes when `stream` is dropped. A request it refuses
/// (not a number, `n` over `max_n`: see [`check_n`]) gets an error line
/// (`error: ...`) instead, before any CPU is spent.
///
/// # Errors
///
/// Any I/O error, or why the request was refused.
pub fn handle_plain(mut stream: TcpStream, max_n: u64) -> io::Result<()> {
    let n = match read_request(&mut stream).and_then(|n| check_n(n, max_n)) {
        Ok(n) => n,
        Err(error) => return refuse(&mut stream, error),
    };
    let sum = sumn(n);
    write_reply(&mut stream, sum)
}

/// The same handler, yieldable: the CPU step is `offload!(sumn, n)` and runs
/// wherever the strategy of the thread driving it says. The handler names no
/// strategy. (It is `try_offload!`, so that work the strategy fails, past
/// its deadline for example, is an error line for the client.)
///
/// Calling it returns the handler without running it; see
/// [`ythread::Yieldable`].
///
/// # Errors
///
/// As [`handle_plain`], and the strategy's [`ythread::OffloadError`].
#[ythread::yieldable]
pub fn handle(mut stream: TcpStream, max_n: u64) -> io::Result<()> {
    let n = match read_request(&mut stream).and_then(|n| check_n(n, max_n)) {
        Ok(n) => n,
        Err(error) => return refuse(&mut stream, error),
    };
    match try_offload!(sumn, n) {
        Ok(sum) => write_reply(&mut stream, sum),
        Err(error) => refuse(&mut stream, io::Error::other(error)),
    }
}

/// Tells the client why its request gets no answer (`error: <why>` and a
/// newline), then closes the connection. Returns `error`.
///
/// If the client sent more than its request, what is left is read and
/// dropped first (what arrives within 100 ms in all, at most 64 KiB): closing with
/// unread bytes would reset the connection, and the client could lose the
/// error line.
fn refuse(stream: &mut TcpStream, error: io::Error) -> io::Result<()> {
    let timed_out = matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    );
    let why = if timed_out {
        "no request in time (the server's read time-out)".to_owned()
    } else {
        error.to_string().replace(['\n', '\r'], " ")
    };
    // The client may be gone: nothing more to do then.
    let told = stream
        .write_all(format!("error: {why}\n").as_bytes())
        .and_then(|()| stream.shutdown(Shutdown::Write));
    let sent_something = matches!(
        error.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
    );
    if told.is_ok() && sent_something {
        // 100 ms for the whole drain, not for each read: a client that
        // trickles bytes must not hold its connection.
        let until = std::time::Instant::now() + Duration::from_millis(100);
        let mut rest = [0u8; 4096];
        let mut dropped = 0;
        while dropped < 64 << 10 {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match stream.read(&mut rest) {
                Ok(0) | Err(_) => break,
                Ok(len) => dropped += len,
            }
        }
    }
    Err(error)
}

/// What a [`Server`] accepts: bounds on the cost of one request and on the
/// connections it holds, so that no client can take the server's cores or
/// threads for good.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest `n` a request may ask for (its cost is O(n)); larger ones
    /// get an error line. Default 100,000,000: at most about 50 ms of CPU.
    /// (Whatever this says, `n` is at most [`MAX_SUMMABLE_N`](crate::MAX_SUMMABLE_N).)
    pub max_n: u64,
    /// How long a connection may take to send its request; then it gets an
    /// error line and is closed. Default 10 s.
    pub read_timeout: Duration,
    /// How many connections are served at once, at most; more wait in the
    /// listen backlog (the accept thread stops accepting meanwhile).
    /// Default 1024.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_n: 100_000_000,
            read_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// A thread-per-connection server: a background thread accepts connections
/// and serves each on a thread of its own (a new one, or under
/// [`start_yieldable`](Server::start_yieldable) one that served a connection
/// before), until [`stop`](Server::stop)ped or dropped.
///
/// A connection that fails (the client resets it, sends garbage) only ends
/// its own thread; the server keeps serving.
///
/// # Example
///
/// ```
/// use ythread_demo::server::{self, Server};
///
/// let listener = server::bind("127.0.0.1:0")?;
/// let server = Server::start_yieldable(listener, server::Limits::default(), ythread::Pool::new(2))?;
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
    connections: Arc<Connections>,
    /// The threads that served connections and wait for the next, if the
    /// server keeps them; shut down once the accept thread has ended.
    threads: Option<ThreadCache>,
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
    pub fn start_plain(listener: TcpListener, limits: Limits) -> io::Result<Server> {
        Server::start_threads(listener, "sumserver-conn", limits, move |stream| {
            handle_plain(stream, limits.max_n)
        })
    }

    /// Serves with plain std threads named `thread_name`, one per
    /// connection, each running a clone of `serve` on its stream: the plain
    /// server with any handler (the benchmark's peers use it). Of `limits`,
    /// the read time-out and the bound on connections apply; `max_n` is the
    /// handler's to check.
    ///
    /// # Errors
    ///
    /// Fails if the listener's address cannot be read or the accept thread
    /// cannot be spawned.
    pub fn start_threads<F>(
        listener: TcpListener,
        thread_name: &str,
        limits: Limits,
        serve: F,
    ) -> io::Result<Server>
    where
        F: FnOnce(TcpStream) -> io::Result<()> + Clone + Send + 'static,
    {
        let thread_name = thread_name.to_owned();
        Server::start(listener, limits, move |stream, registration| {
            let serve = serve.clone();
            thread::Builder::new()
                .name(thread_name.clone())
                .spawn(move || {
                    let result = serve(stream);
                    drop(registration);
                    result
                })
                .map(Served::Thread)
        })
    }

    /// Serves each connection with a yieldable handler running [`handle`],
    /// each given a clone of `apply`: the seed's yieldable server with
    /// `cpu_apply = apply`. The handlers run on a [`ThreadCache`]: a
    /// connection gets a thread that served one before when one is idle, a
    /// new one otherwise, so the server pays for a thread per connection in
    /// flight, not per connection.
    ///
    /// # Errors
    ///
    /// Fails if the listener's address cannot be read or the accept thread
    /// cannot be spawned.
    pub fn start_yieldable<A>(listener: TcpListener, limits: Limits, apply: A) -> io::Result<Server>
    where
        A: Apply + Clone + Send + 'static,
    {
        let threads = ThreadCache::builder()
            .name("ysumserver-conn".into())
            .build();
        let cache = threads.clone();
        let mut server = Server::start(listener, limits, move |stream, registration| {
            cache
                .spawn(
                    apply.clone(),
                    handle_registered(stream, limits.max_n, registration),
                )
                .map(Served::Cached)
        })?;
        server.threads = Some(threads);
        Ok(server)
    }

    /// As [`start_yieldable`](Server::start_yieldable), but with a new
    /// [`YieldableThread`] for every connection, as the 2009 post's server
    /// does: what the thread cache saves, measured side by side.
    ///
    /// # Errors
    ///
    /// As [`start_yieldable`](Server::start_yieldable).
    pub fn start_yieldable_new_threads<A>(
        listener: TcpListener,
        limits: Limits,
        apply: A,
    ) -> io::Result<Server>
    where
        A: Apply + Clone + Send + 'static,
    {
        Server::start(listener, limits, move |stream, registration| {
            YieldableThread::new()
                .name("ysumserver-conn".into())
                .apply(apply.clone())
                .spawn(handle_registered(stream, limits.max_n, registration))
                .map(Served::Thread)
        })
    }

    /// Starts the accept thread; `spawn` starts the thread serving one
    /// connection, which must drop the [`Registration`] once the connection
    /// is closed.
    fn start<S>(listener: TcpListener, limits: Limits, spawn: S) -> io::Result<Server>
    where
        S: FnMut(TcpStream, Registration) -> io::Result<Served> + Send + 'static,
    {
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stopping);
        let connections = Arc::new(Connections::default());
        let open = Arc::clone(&connections);
        let accept_thread = thread::Builder::new()
            .name("sumserver-accept".into())
            .spawn(move || accept_loop(listener, limits, &flag, &open, spawn))?;
        Ok(Server {
            addr,
            stopping,
            accept_thread: Some(accept_thread),
            connections,
            threads: None,
        })
    }

    /// How many connections are open now (accepted, not yet closed): at
    /// most [`Limits::max_connections`].
    pub fn connections(&self) -> usize {
        self.connections.lock().count
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
        if let Some(threads) = self.threads.take() {
            threads.shutdown();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The thread serving a connection: its own, or one of a [`ThreadCache`].
#[derive(Debug)]
enum Served {
    Thread(JoinHandle<io::Result<()>>),
    Cached(CachedJoinHandle<io::Result<()>>),
}

impl Served {
    fn is_finished(&self) -> bool {
        match self {
            Served::Thread(thread) => thread.is_finished(),
            Served::Cached(handle) => handle.is_finished(),
        }
    }

    /// Waits for the connection to be served. Its error or panic ends
    /// only that connection: nothing to report here.
    fn join(self) {
        let _ = match self {
            Served::Thread(thread) => thread.join(),
            Served::Cached(handle) => handle.join(),
        };
    }
}

/// [`handle`], plus the connection's [`Registration`], dropped once
/// `handle` has closed the stream.
#[ythread::yieldable]
fn handle_registered(stream: TcpStream, max_n: u64, registration: Registration) -> io::Result<()> {
    let result = ythread::yield_from!(handle(stream, max_n));
    drop(registration);
    result
}

/// The connections being served: how many, and clones of their streams by
/// id, so that stopping can shut down connections still waiting for their
/// request.
#[derive(Debug, Default)]
struct Connections {
    state: Mutex<Open>,
    /// Signalled when a connection ends.
    ended: Condvar,
}

#[derive(Debug, Default)]
struct Open {
    count: usize,
    streams: HashMap<u64, TcpStream>,
}

impl Connections {
    /// Locks the state, ignoring poisoning: each change is a single call,
    /// so the state is consistent whatever panicked while holding the lock.
    fn lock(&self) -> MutexGuard<'_, Open> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One open connection; dropping it removes the stream's clone, which
/// closes the socket for good (the client waits for that close to read its
/// answer), and makes room for another connection.
#[derive(Debug)]
struct Registration {
    connections: Arc<Connections>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = self.connections.lock();
        open.streams.remove(&self.id);
        open.count -= 1;
        drop(open);
        self.connections.ended.notify_one();
    }
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

/// Accepts connections until `stopping` is set, at most
/// `limits.max_connections` open at once, then closes the listener, shuts
/// down the read side of open connections and joins every connection
/// thread.
fn accept_loop<S>(
    listener: TcpListener,
    limits: Limits,
    stopping: &AtomicBool,
    connections: &Arc<Connections>,
    mut spawn: S,
) where
    S: FnMut(TcpStream, Registration) -> io::Result<Served>,
{
    let mut threads: Vec<Served> = Vec::new();
    for id in 0u64.. {
        // Back-pressure: while the server holds as many connections as it
        // may, it accepts no more; new ones wait in the listen backlog.
        {
            let mut open = connections.lock();
            while open.count >= limits.max_connections.max(1) && !stopping.load(Ordering::SeqCst) {
                // (A timeout, so that stopping is seen without a signal.)
                open = connections
                    .ended
                    .wait_timeout(open, Duration::from_millis(100))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
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
        // A client that never sends must not hold its thread for good.
        let _ = stream.set_read_timeout(Some(limits.read_timeout));
        {
            let mut open = connections.lock();
            open.count += 1;
            // Without a clone the connection cannot be ended from outside;
            // serve it anyway, stopping then waits for the client.
            if let Ok(clone) = stream.try_clone() {
                open.streams.insert(id, clone);
            }
        }
        let registration = Registration {
            connections: Arc::clone(connections),
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
    for stream in connections.lock().streams.values() {
        // The peer may have closed already; nothing to do then.
        let _ = stream.shutdown(Shutdown::Read);
    }
    for thread in threads {
        thread.join();
    }
}

/// The command-line flags of [`Limits`], shared by the example servers.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct LimitArgs {
    /// The largest `n` a request may ask for: its work is O(n) (about
    /// 0.3 ns per unit here); larger ones get an error line. At most
    /// 6074000999, the largest whose sum fits in 64 bits.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_n,
          value_parser = clap::value_parser!(u64).range(0..=crate::MAX_SUMMABLE_N))]
    pub max_n: u64,
    /// How long a client may take to send its request, in milliseconds,
    /// counted from when the server accepts the connection.
    #[arg(long, value_name = "MS", default_value_t = Limits::default().read_timeout.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub read_timeout_ms: u64,
    /// How many connections are served at once; more wait in the listen
    /// backlog, not yet accepted (behind idle clients, up to a read
    /// time-out per `--max-connections` of them).
    #[arg(long, value_name = "COUNT", default_value_t = Limits::default().max_connections,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
}

impl From<LimitArgs> for Limits {
    fn from(args: LimitArgs) -> Limits {
        Limits {
            max_n: args.max_n,
            read_timeout: Duration::from_millis(args.read_timeout_ms),
            max_connections: args.max_connections,
        }
    }
}
