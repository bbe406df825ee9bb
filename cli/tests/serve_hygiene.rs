//! Issue 20, defect 9: the admin server on a real socket: a client that sends its headers slowly
//! is disconnected, connections past the cap are refused at once, the server keeps answering
//! others meanwhile; a non-loopback `--listen` needs `--insecure-remote`; the token is never
//! printed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use breakwater_cli::serve::{self, ServerLimits};

const TOKEN: &str = "test-token-0123456789";

/// `GET /healthz` on a new connection: the status line.
fn healthz(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_string()
}

/// Reads until the server closes the connection (or 10 s pass); what it sent.
fn until_closed(s: &mut TcpStream) -> (String, bool) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let closed = s.read_to_end(&mut got).is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

#[test]
fn slow_and_surplus_connections_do_not_wedge_the_server() {
    let dir = std::env::temp_dir().join(format!("bw-hygiene-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let router = serve::app(common::serve_config(&dir, TOKEN)).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = ServerLimits { header_read_timeout: Duration::from_millis(500), max_connections: 3 };
    let server = runtime.spawn(serve::serve_until(listener, router, limits, async {
        let _ = stopped.await;
    }));
    assert_eq!(healthz(port), "HTTP/1.1 200 OK");

    // Slowloris: half a request's headers, then nothing. Disconnected after the header timeout.
    let started = Instant::now();
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\n").unwrap();
    // Meanwhile the server answers others.
    assert_eq!(healthz(port), "HTTP/1.1 200 OK");
    let (_, closed) = until_closed(&mut slow);
    assert!(closed, "the slow client was not disconnected");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "disconnected before the timeout: {waited:?}");

    // Three connections that say nothing fill the cap; the fourth is refused with 503 at once.
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let mut surplus = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (answer, closed) = until_closed(&mut surplus);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(closed);
    // The idle ones are disconnected by the header timeout, and the server serves again.
    for mut c in idle {
        assert!(until_closed(&mut c).1);
    }
    assert_eq!(healthz(port), "HTTP/1.1 200 OK");

    stop.send(()).unwrap();
    runtime.block_on(server).unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_remote_listen_address_needs_an_explicit_flag() {
    let mut child = common::command()
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--policy",
            "/nonexistent/bw/a.yaml",
            "--state-dir",
            "/nonexistent/bw",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Refused at once; a server that started instead is stopped and the test fails.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the server started on 0.0.0.0");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("plain HTTP") && stderr.contains("--insecure-remote"), "{stderr}");
}

#[test]
fn the_token_is_not_printed() {
    let dir = std::env::temp_dir().join(format!("bw-token-print-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = common::command()
        .args(["serve", "--listen", "127.0.0.1:0", "--ui", "/nonexistent"])
        .arg("--policy")
        .arg(dir.join("active.yaml"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env_remove("BREAKWATER_TOKEN")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let printed: Vec<String> = (0..3).map_while(|_| lines.next().and_then(Result::ok)).collect();
    child.kill().unwrap();
    child.wait().unwrap();
    let token = std::fs::read_to_string(dir.join("state/token")).unwrap();
    let printed = printed.join("\n");
    assert!(printed.contains("breakwater admin on http://127.0.0.1:"), "{printed}");
    assert!(printed.contains("$(cat "), "{printed}");
    assert!(!printed.contains(token.trim()), "the token was printed: {printed}");
    std::fs::remove_dir_all(&dir).unwrap();
}
