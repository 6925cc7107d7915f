//! One call's span, followed from its handler to a pool's thread and to a
//! worker process.
//!
//! ```text
//! cargo run -p ythread --example trace --features tracing
//! ```
//!
//! The program's subscriber (tracing-subscriber's `fmt`, at `DEBUG`, the
//! level of ythread's offload spans) prints each event with the spans it happened in: the event the
//! work emits on a `Pool` thread and the one it emits in a worker process
//! both print inside `request{id=..}:offload{..}`.

use tracing::{info, info_span};
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
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_thread_names(true)
        .init();
    info!(pid = std::process::id(), "parent");
    handle(1, vec![1, 2, 3]).run_with(&Pool::new(1));
    let workers = Processes::new(1).expect("a worker process");
    handle(2, vec![4, 5, 6]).run_with(&workers);
}
