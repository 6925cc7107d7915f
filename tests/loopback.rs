//! The seed's server and clients, end to end over loopback: every strategy
//! answers every request right, the seed's Python client agrees, and
//! stopping the server leaves nothing behind. (Bad clients: `hostile.rs`.)

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use ythread::apply_fn;
use ythread::{Bounded, Exclusive, Inline, Pool};
use ythread_demo::client::closed_loop;
use ythread_demo::server::{self, Limits, Server};
use ythread_demo::{SEED_N, expected_sum, request};

/// The servers under test: the plain threaded one, and the yieldable one
/// with each strategy.
const KINDS: [&str; 5] = ["plain", "inline", "exclusive", "bounded(2)", "pool(2)"];

/// Starts the server `kind` on a free loopback port.
fn start(kind: &str) -> Server {
    let listener = server::bind("127.0.0.1:0").expect("bind a free port");
    match kind {
        "plain" => Server::start_plain(listener, Limits::default()),
        "inline" => Server::start_yieldable(listener, Limits::default(), Inline),
        "exclusive" => Server::start_yieldable(listener, Limits::default(), Exclusive::new()),
        "bounded(2)" => Server::start_yieldable(listener, Limits::default(), Bounded::new(2)),
        "pool(2)" => Server::start_yieldable(listener, Limits::default(), Pool::new(2)),
        _ => unreachable!("unknown server kind {kind}"),
    }
    .expect("start the server")
}

/// Stops `server`, failing the test instead of hanging if it does not return.
fn stop(server: Server) {
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        server.stop();
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("Server::stop did not return");
}

#[test]
fn every_server_answers_every_request_of_the_seeds_client() {
    for kind in KINDS {
        let server = start(kind);
        let report = closed_loop(server.addr(), SEED_N, 200, 8);
        assert_eq!(report.requests, 200, "{kind}");
        assert_eq!((report.wrong, report.errors), (0, 0), "{kind}: {report:?}");
        assert_eq!(report.latency_us.len(), 200, "{kind}");
        stop(server);
    }
}

#[test]
fn every_server_computes_the_sum_of_any_n() {
    for kind in KINDS {
        let server = start(kind);
        for n in [0, 1, 2, 10, 99_999, 1 << 20] {
            assert_eq!(
                request(server.addr(), n).unwrap(),
                expected_sum(n),
                "{kind}, n = {n}"
            );
        }
        stop(server);
    }
}

#[test]
fn many_clients_at_once_are_all_served() {
    // More simultaneous connections than std's default listen backlog of 128.
    let server = start("pool(2)");
    let report = closed_loop(server.addr(), 1000, 512, 256);
    assert!(report.all_ok(), "{report:?}");
    assert_eq!(report.latency_us.len(), 512);
    stop(server);
}

#[test]
fn stop_answers_the_request_in_progress_and_leaves_no_thread() {
    let (started_tx, started_rx) = mpsc::channel();
    let work_done = Arc::new(AtomicBool::new(false));
    let done = Arc::clone(&work_done);
    // A strategy that reports the work has started, then takes its time, so
    // that `stop` comes while the handler is suspended at `offload!`.
    let slow = apply_fn(move |job| {
        let _ = started_tx.send(());
        thread::sleep(Duration::from_millis(200));
        job.run();
        done.store(true, Ordering::SeqCst);
    });
    let server = Server::start_yieldable(
        server::bind("127.0.0.1:0").unwrap(),
        Limits::default(),
        slow,
    )
    .unwrap();
    let addr = server.addr();
    let client = thread::spawn(move || request(addr, 1000));
    started_rx.recv().expect("the handler reached offload!");

    stop(server);

    assert!(
        work_done.load(Ordering::SeqCst),
        "stop returned before the work ran"
    );
    // Each connection thread held a clone of the strategy (and so of
    // `work_done`): only ours is left, so no connection thread is.
    assert_eq!(
        Arc::strong_count(&work_done),
        1,
        "a connection thread outlived stop"
    );
    assert_eq!(client.join().unwrap().unwrap(), expected_sum(1000));
    // The port is closed.
    let refused = TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
}

#[test]
fn stop_frees_the_port_and_ends_idle_connections() {
    for kind in KINDS {
        let server = start(kind);
        let addr = server.addr();
        assert_eq!(request(addr, 10).unwrap(), 55, "{kind}");
        // A client that connects and never sends must not keep the server up.
        let mut idle = TcpStream::connect(addr).unwrap();
        // Make sure the server has accepted it before stopping.
        assert_eq!(request(addr, 3).unwrap(), 6, "{kind}");

        stop(server);

        // It is closed, with an error line at most.
        let mut answer = String::new();
        idle.read_to_string(&mut answer).unwrap();
        assert!(
            answer.is_empty() || answer.starts_with("error: no request"),
            "{kind}: {answer:?}"
        );
        let refused = TcpStream::connect(addr).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused, "{kind}");
        drop(TcpListener::bind(addr).expect("the port is free again"));
    }
}

#[test]
fn dropping_the_server_stops_it() {
    let server = start("pool(2)");
    let addr = server.addr();
    assert_eq!(request(addr, 4).unwrap(), 10);
    drop(server);
    let refused = TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
}

/// Whether `python3` can be run; tests that need it say so and skip if not.
fn python3_available() -> bool {
    let found = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED: python3 is not installed; the Python client was not checked");
    }
    found
}

/// Runs `examples/NAME` with python3 and the given arguments.
fn python(name: &str, args: &[String]) -> Command {
    let mut command = Command::new("python3");
    command
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join(name),
        )
        .args(args);
    command
}

#[test]
fn the_seeds_python_client_gets_right_answers_from_every_server() {
    if !python3_available() {
        return;
    }
    for kind in KINDS {
        let server = start(kind);
        let output = python(
            "sumclient.py",
            &["4".into(), server.addr().port().to_string()],
        )
        .output()
        .expect("run sumclient.py");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{kind}: {stdout}{stderr}");
        // Like the seed, it prints the wall time in seconds.
        let wall: f64 = stdout.trim().parse().unwrap_or_else(|_| {
            panic!("{kind}: sumclient.py printed {stdout:?}, not a number of seconds")
        });
        assert!(wall > 0.0, "{kind}: {wall}");
        stop(server);
    }
}

#[test]
fn the_python_client_fails_on_a_wrong_answer() {
    if !python3_available() {
        return;
    }
    // A server that answers every request with a wrong sum.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let liar = thread::spawn(move || {
        for stream in listener.incoming().take(1000) {
            let mut stream = stream.unwrap();
            let mut buf = [0; 16];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"42");
        }
    });
    let output = python("sumclient.py", &["2".into(), port.to_string()])
        .output()
        .expect("run sumclient.py");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("wrong answer"));
    liar.join().unwrap();
}

#[test]
fn the_rust_client_speaks_the_seeds_python_server_protocol() {
    if !python3_available() {
        return;
    }
    // Port 0 is not an option for the seed's server; take a free port and
    // hand it over (SO_REUSEADDR on both sides).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = python("sumserver.py", &[port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sumserver.py");
    // It prints one line once it listens.
    let mut line = [0u8; 1];
    let mut stdout = child.stdout.take().unwrap();
    while stdout.read(&mut line).unwrap() == 1 && line[0] != b'\n' {}

    let report = closed_loop(([127, 0, 0, 1], port).into(), 1000, 50, 4);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(report.all_ok(), "{report:?}");
    assert_eq!(report.requests, 50);
}
