//! ythread's metrics, served in Prometheus' text format.
//!
//! ```text
//! cargo run -p ythread --example prometheus --features metrics [-- PORT]
//! curl -s 127.0.0.1:9898/metrics | grep ythread_
//! ```
//!
//! Handlers on a `ThreadCache` offload checksums to a `Pool` and to
//! `Bounded`, some of which panic on purpose (caught by `try_offload!`);
//! `metrics-exporter-prometheus` is the recorder, and a plain `std` TCP
//! listener answers `GET /metrics` with its rendering. `--once` prints one
//! rendering after the first round of work and exits.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use ythread::{Apply, Bounded, Pool, ThreadCache, try_offload, yieldable};

fn checksum(data: Vec<u8>) -> u32 {
    if data.first() == Some(&0) {
        panic!("refusing a block that starts with 0");
    }
    data.iter()
        .fold(0u32, |sum, &b| sum.rotate_left(5) ^ u32::from(b))
}

#[yieldable]
fn handle(request: u32) -> bool {
    let block: Vec<u8> = (0..64 * 1024).map(|i| (i as u32 ^ request) as u8).collect();
    try_offload!(checksum, block).is_ok()
}

/// One round: 64 requests on each strategy.
fn round(cache: &ThreadCache, strategies: &[Arc<dyn Apply + Send + Sync>]) {
    let handles: Vec<_> = strategies
        .iter()
        .flat_map(|cpu| (0..64).map(|request| cache.spawn(Arc::clone(cpu), handle(request))))
        .collect::<Result<_, _>>()
        .expect("a thread for each request");
    for handle in handles {
        handle.join().expect("handlers do not panic");
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let once = args.iter().any(|arg| arg == "--once");
    let port: u16 = args.iter().find_map(|arg| arg.parse().ok()).unwrap_or(9898);

    let recorder = PrometheusBuilder::new()
        // The panics are on purpose: keep them off the terminal.
        .build_recorder();
    let metrics = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder");
    ythread::describe_metrics();
    std::panic::set_hook(Box::new(|_| {}));

    let cache = ThreadCache::new();
    let strategies: Vec<Arc<dyn Apply + Send + Sync>> =
        vec![Arc::new(Pool::new(2)), Arc::new(Bounded::new(2))];
    round(&cache, &strategies);
    if once {
        print!("{}", metrics.render());
        return Ok(());
    }
    std::thread::spawn(move || {
        loop {
            round(&cache, &strategies);
            std::thread::sleep(Duration::from_millis(500));
        }
    });

    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("serving http://{}/metrics", listener.local_addr()?);
    for stream in listener.incoming() {
        let mut stream = stream?;
        let mut request_line = String::new();
        BufReader::new(&stream).read_line(&mut request_line)?;
        let (status, body) = if request_line.starts_with("GET /metrics ") {
            ("200 OK", metrics.render())
        } else {
            ("404 Not Found", "try /metrics\n".to_owned())
        };
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
    }
    Ok(())
}
