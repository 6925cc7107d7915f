//! Run with: `cargo run --release --example sumserver -- --port 10000`
//!
//! The seed's plain threaded server: one OS thread per connection reads `n`,
//! computes `sumn(n)` right there and writes the answer. No ythread at all;
//! compare with `ysumserver`.

use std::io;
use std::net::Ipv4Addr;
use std::process::ExitCode;

use clap::Parser;
use ythread_demo::server::{self, Server};

/// The seed's plain threaded sum server.
#[derive(Parser)]
struct Args {
    /// The port to listen on (127.0.0.1).
    #[arg(long, default_value_t = ythread_demo::DEFAULT_PORT)]
    port: u16,
    #[command(flatten)]
    limits: ythread_demo::server::LimitArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    ythread_demo::exit_code("sumserver", serve(&args))
}

/// Starts the server, then serves until the process is killed.
fn serve(args: &Args) -> io::Result<()> {
    let listener = server::bind((Ipv4Addr::LOCALHOST, args.port))?;
    let server = Server::start_plain(listener, args.limits.into())?;
    println!("sumserver (plain threads) listening on {}", server.addr());
    // Serve until killed.
    loop {
        std::thread::park();
    }
}
