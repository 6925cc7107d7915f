//! The servers the benchmark compares, as one table: adding a strategy is
//! one line in [`all`].

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use ythread::{Apply, Bounded, Exclusive, Inline, Pool, Processes};
use ythread_demo::server::{self, Server};

use crate::peers::{self, TokioServer, TokioStep};

/// A server running on a loopback port.
pub(crate) trait Running {
    /// Where clients connect.
    fn addr(&self) -> SocketAddr;
    /// Stops accepting and returns once every thread the server started has
    /// ended.
    fn stop(self: Box<Self>);
}

impl Running for Server {
    fn addr(&self) -> SocketAddr {
        Server::addr(self)
    }

    fn stop(self: Box<Self>) {
        Server::stop(*self);
    }
}

/// Which family a row belongs to; the report groups rows by it and the
/// targets compare across families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// A row of the seed's table.
    Seed,
    /// A strategy of ours beyond the seed's.
    Ours,
    /// What users would write instead of ythread.
    Peer,
}

type Start = Box<dyn Fn(TcpListener) -> io::Result<Box<dyn Running>>>;

/// One row of every table.
pub(crate) struct Variant {
    pub(crate) name: &'static str,
    pub(crate) family: Family,
    start: Start,
}

/// The servers' limits: any `n` the benchmark may ask for (`--work-ms` sets
/// it) is taken, and `--scale`'s connections are all served at once, each
/// waiting up to a minute for its request.
pub(crate) fn limits() -> server::Limits {
    server::Limits {
        max_n: ythread_demo::MAX_SUMMABLE_N,
        max_connections: 2 * crate::scale::COUNTS[crate::scale::COUNTS.len() - 1],
        read_timeout: std::time::Duration::from_secs(60),
    }
}

impl Variant {
    /// The seed's plain threaded server, no ythread involved.
    fn plain(name: &'static str) -> Variant {
        Variant {
            name,
            family: Family::Seed,
            start: Box::new(|listener| Ok(Box::new(Server::start_plain(listener, limits())?))),
        }
    }

    /// The yieldable server with the strategy `make()` returns; one fresh
    /// strategy per server start, shared by all its connection threads.
    fn ythread<A>(name: &'static str, family: Family, make: fn() -> A) -> Variant
    where
        A: Apply + Clone + Send + 'static,
    {
        Variant {
            name,
            family,
            start: Box::new(move |listener| {
                Ok(Box::new(Server::start_yieldable(
                    listener,
                    limits(),
                    make(),
                )?))
            }),
        }
    }

    /// The yieldable server as the 2009 post runs it, a new thread for every
    /// connection, beside the rows that reuse threads: what the reuse saves.
    fn new_threads<A>(name: &'static str, make: fn() -> A) -> Variant
    where
        A: Apply + Clone + Send + 'static,
    {
        Variant {
            name,
            family: Family::Ours,
            start: Box::new(move |listener| {
                Ok(Box::new(Server::start_yieldable_new_threads(
                    listener,
                    limits(),
                    make(),
                )?))
            }),
        }
    }

    /// A peer server.
    fn peer(name: &'static str, start: fn(TcpListener) -> io::Result<Box<dyn Running>>) -> Variant {
        Variant {
            name,
            family: Family::Peer,
            start: Box::new(start),
        }
    }

    /// Starts this server on a free loopback port. Every row, peers
    /// included, gets a listener with the same 1024-connection backlog:
    /// with std's 128, 256 clients overflowed it and the tail latency
    /// measured the clients' one-second SYN retries, not the servers.
    pub(crate) fn start(&self) -> io::Result<Box<dyn Running>> {
        self.start_on(ythread_demo::server::bind("127.0.0.1:0")?)
    }

    /// Starts this server on `listener`.
    pub(crate) fn start_on(&self, listener: TcpListener) -> io::Result<Box<dyn Running>> {
        (self.start)(listener)
    }
}

/// The row names the targets refer to.
pub(crate) const PLAIN: &str = "plain threads";
pub(crate) const INLINE: &str = "ythread Inline";
pub(crate) const EXCLUSIVE: &str = "ythread Exclusive";
pub(crate) const TOKIO: &str = "tokio + spawn_blocking";
pub(crate) const INLINE_NEW_THREADS: &str = "ythread Inline, a new thread each";
pub(crate) const POOL: &str = "ythread Pool";
pub(crate) const BOUNDED: &str = "ythread Bounded(cores)";
pub(crate) const PROCESSES: &str = "ythread Processes";
pub(crate) const REMOTE: &str = "ythread Remote (NATS, 2 workers)";
pub(crate) const REMOTE_RANDOM: &str = "ythread Remote, no shared queue";

/// One worker process per core (the seed's `multiprocessing.Pool().apply`).
fn processes() -> Arc<Processes> {
    Arc::new(
        Processes::builder()
            .build()
            .expect("cannot start the worker processes"),
    )
}

/// Every server the benchmark runs, in table order. The `Remote` rows run
/// when `nats-server` is installed.
pub(crate) fn all() -> Vec<Variant> {
    let mut all = vec![
        Variant::plain(PLAIN),
        Variant::ythread(INLINE, Family::Seed, || Inline),
        Variant::ythread(EXCLUSIVE, Family::Seed, Exclusive::new),
        Variant::ythread(POOL, Family::Seed, Pool::default),
        Variant::ythread(PROCESSES, Family::Seed, processes),
        Variant::ythread(BOUNDED, Family::Ours, Bounded::per_core),
        Variant::new_threads(INLINE_NEW_THREADS, || Inline),
        Variant::ythread(REMOTE, Family::Ours, crate::remote::remote),
        Variant::ythread(REMOTE_RANDOM, Family::Ours, crate::remote::remote_random),
        Variant::peer(TOKIO, |l| {
            Ok(Box::new(TokioServer::start(l, TokioStep::SpawnBlocking)?))
        }),
        Variant::peer("tokio + rayon::spawn", |l| {
            Ok(Box::new(TokioServer::start(l, TokioStep::Rayon)?))
        }),
        Variant::peer("threads + rayon install", |l| {
            Ok(Box::new(peers::start_rayon_install(l)?))
        }),
    ];
    if ythread_demo::nats::binary().is_none() {
        all.retain(|v| v.name != REMOTE && v.name != REMOTE_RANDOM);
    }
    all
}
