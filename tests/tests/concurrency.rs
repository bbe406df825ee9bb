//! Concurrency limits in real Envoy: never more than max_in_flight reach the upstream, and slots
//! come back after client aborts and upstream resets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use breakwater_e2e::{Envoy, Upstream};

const POLICY: &str = r#"
version: 1
policies:
  - name: slow
    concurrency_limit: { max_in_flight: 3, response: { status: 503, body: "busy\n" } }
"#;

/// `n` clients each send one slow request at once; returns the statuses.
fn burst(envoy: &Envoy, n: usize, delay_ms: &'static str) -> Vec<u16> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let mut c = envoy.client();
            std::thread::spawn(move || c.get("/", &[("x-test-delay-ms", delay_ms)]).status)
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn in_flight(envoy: &Envoy) -> u64 {
    envoy.stat("wasmcustom.breakwater.in_flight.policy.slow")
}

#[test]
fn never_more_than_max_in_flight_and_no_leaks() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(POLICY, upstream.port());

    let statuses = burst(&envoy, 12, "400");
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let busy = statuses.iter().filter(|s| **s == 503).count();
    println!(
        "12 concurrent slow requests: {ok} admitted, {busy} rejected; upstream max in flight {}",
        upstream.max_in_flight()
    );
    assert_eq!(ok + busy, 12);
    assert!((1..=3).contains(&ok), "{statuses:?}");
    assert!(upstream.max_in_flight() <= 3);
    assert_eq!(envoy.decisions("slow", "concurrency_limited"), busy as u64);

    // Client aborts: send slow requests and hang up before the answer.
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nx-test-delay-ms: 300\r\n\r\n").unwrap();
        drop(s);
    }
    // Upstream resets.
    for _ in 0..3 {
        assert_eq!(envoy.client().get("/", &[("x-test-reset", "1")]).status, 503);
    }
    // Every slot comes back: the in-flight gauge returns to 0 once the aborted streams end...
    envoy.wait_for("in-flight back to 0", Duration::from_secs(5), || {
        in_flight(&envoy) == 0 && upstream.in_flight() == 0
    });
    // ...and three requests at once are all admitted again.
    let statuses = burst(&envoy, 3, "200");
    assert_eq!(statuses, vec![200, 200, 200]);
    assert!(!envoy.log().contains("panic"));
}
