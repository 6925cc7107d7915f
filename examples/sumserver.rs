//! Run with: `cargo run --release --example sumserver -- --port 10000`
//!
//! The seed's plain threaded server: one OS thread per connection reads `n`,
//! computes `sumn(n)` right there and writes the answer. No ythread at all;
//! compare with `ysumserver`.

use std::io;
use std::net::Ipv4Addr;

use clap::Parser;
use ythread_demo::server::{self, Server};

/// The seed's plain threaded sum server.
#[derive(Parser)]
struct Args {
    /// The port to listen on (127.0.0.1).
    #[arg(long, default_value_t = ythread_demo::DEFAULT_PORT)]
    port: u16,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let server = Server::start_plain(server::bind((Ipv4Addr::LOCALHOST, args.port))?)?;
    println!("sumserver (plain threads) listening on {}", server.addr());
    // Serve until killed.
    loop {
        std::thread::park();
    }
}
