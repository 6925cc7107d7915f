//! One call's span, followed from its handler to a pool's thread and to a
//! worker process.
//!
//! ```text
//! cargo run -p ythread --example trace --features tracing
//! nats-server -a 127.0.0.1 -p 4222 &   # then, through NATS too:
//! cargo run -p ythread --example trace --features tracing,remote -- nats://127.0.0.1:4222
//! ```
//!
//! The program's subscriber (tracing-subscriber's `fmt`, at `DEBUG` for
//! ythread, whose offload spans are at that level, and `INFO` for the rest)
//! prints each event with the spans it happened in: the event the work
//! emits on a `Pool` thread and the one it emits in a worker process both
//! print inside `request{id=..}:offload{..}`. Given a NATS URL, the program
//! also starts a `remote::Worker` (on threads; it would be on another
//! machine) and calls it through `remote::Remote`: there the work's event
//! prints inside the worker's `remote_call` span, whose `trace_id` is the
//! one in the caller's `offload` span, sent in the call's `traceparent`
//! header.

use tracing::{Level, info, info_span};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::prelude::*;
use ythread::{Pool, Processes, Yieldable, offload, offloadable, yieldable};

#[offloadable]
fn digest(data: Vec<u8>) -> u32 {
    info!(len = data.len(), pid = std::process::id(), "digesting");
    data.iter()
        .fold(0u32, |sum, &b| sum.rotate_left(5) ^ u32::from(b))
}

#[yieldable]
fn handle(id: u64, data: Vec<u8>) -> u32 {
    let span = info_span!("request", id);
    let _entered = span.enter();
    info!("received {} bytes", data.len());
    offload!(digest, data)
}

fn main() {
    // A worker process starts here, and runs calls from then on.
    ythread::processes::init();
    // ythread's spans are at `DEBUG`; the rest at `INFO`. A span prints a
    // line when it closes, with the fields recorded by then (the offload's
    // times and outcome).
    let filter = Targets::new()
        .with_default(Level::INFO)
        .with_target("ythread", Level::DEBUG);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_thread_names(true)
                .with_span_events(FmtSpan::CLOSE),
        )
        .with(filter)
        .init();
    info!(pid = std::process::id(), "parent");
    handle(1, vec![1, 2, 3]).run_with(&Pool::new(1));
    let workers = Processes::new(1).expect("a worker process");
    handle(2, vec![4, 5, 6]).run_with(&workers);
    if let Some(url) = std::env::args().nth(1) {
        through_nats(&url);
    }
}

#[cfg(feature = "remote")]
fn through_nats(url: &str) {
    use ythread::remote::{Remote, Worker};
    let _worker = Worker::builder(url)
        .namespace("trace-example")
        .threads(1)
        .start()
        .expect("a worker connected to NATS");
    let remote = Remote::builder(url)
        .namespace("trace-example")
        .connect()
        .expect("a connection to NATS");
    handle(3, vec![7, 8, 9]).run_with(&remote);
}

#[cfg(not(feature = "remote"))]
fn through_nats(_: &str) {
    eprintln!("calling through NATS needs `--features tracing,remote`");
}
