//! Injected faults in real Envoy (2 workers): exact abort and delay shares, delays let go by the
//! root context's timer, `max_active`, no place leaked when a client leaves during its delay,
//! faults on request headers, and the breaker left out of injected aborts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use breakwater_e2e::{Envoy, Upstream};
use breakwater_policy::metrics::Gauge;

fn active(envoy: &Envoy) -> u64 {
    envoy.gauge("f", Gauge::FaultActive)
}

#[test]
fn abort_and_delay_shares_are_exact_over_a_thousand_requests() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(
        "version: 1\npolicies:\n  - name: f\n    fault:\n      abort: { percent: 5, response: { status: 503, body: \"chaos\\n\" } }\n      delay: { percent: 2, duration: 20ms }\n",
        upstream.port(),
    );
    // Two connections: Envoy may give them to both workers; the shares are counted in shared data.
    let mut clients = [envoy.client(), envoy.client()];
    let (mut aborted, mut slow, mut fast_max) = (0, Vec::new(), Duration::ZERO);
    for i in 0..1000 {
        let start = Instant::now();
        let r = clients[i % 2].get("/", &[]);
        let took = start.elapsed();
        if r.status == 503 {
            assert_eq!(r.body, "chaos\n");
            aborted += 1;
        }
        if took >= Duration::from_millis(20) {
            slow.push(took);
        } else {
            fast_max = fast_max.max(took);
        }
    }
    let late: Vec<u128> = slow.iter().map(|d| d.as_millis() - 20).collect();
    println!(
        "1000 requests: {aborted} aborted, {} delayed (20 ms asked, late by {:?} ms), slowest other {fast_max:?}",
        slow.len(),
        late
    );
    assert_eq!(aborted, 50);
    assert_eq!(envoy.decisions("f", "fault_aborted"), 50);
    assert_eq!(envoy.decisions("f", "fault_delayed"), 20);
    // A slow machine may make an undelayed request slow too; never fewer than the delayed ones.
    assert!(slow.len() >= 20, "{}", slow.len());
    envoy.wait_for("no delay held", Duration::from_secs(5), || active(&envoy) == 0);
}

#[test]
fn delays_hold_at_most_max_active_and_free_their_place_when_the_client_leaves() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(
        "version: 1\npolicies:\n  - name: f\n    fault: { delay: { percent: 100, duration: 600ms }, max_active: 2 }\n",
        upstream.port(),
    );
    // Two requests take both places...
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut c = envoy.client();
            std::thread::spawn(move || {
                let start = Instant::now();
                let status = c.get("/", &[]).status;
                (status, start.elapsed())
            })
        })
        .collect();
    envoy.wait_for("two delays", Duration::from_secs(5), || active(&envoy) == 2);
    // ...so the next three go on at once.
    let mut c = envoy.client();
    for _ in 0..3 {
        let start = Instant::now();
        assert_eq!(c.get("/", &[]).status, 200);
        assert!(start.elapsed() < Duration::from_millis(600), "{:?}", start.elapsed());
    }
    assert_eq!(envoy.decisions("f", "fault_delay_skipped"), 3);
    let seen: Vec<(u16, Duration)> = held.into_iter().map(|h| h.join().unwrap()).collect();
    println!("the two held requests: {seen:?}");
    assert!(seen.iter().all(|(s, d)| *s == 200 && *d >= Duration::from_millis(600)), "{seen:?}");
    envoy.wait_for("no delay held", Duration::from_secs(5), || active(&envoy) == 0);

    // Clients that hang up during their delay leave nothing held.
    for _ in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").unwrap();
        envoy.wait_for("the delay to begin", Duration::from_secs(5), || active(&envoy) >= 1);
        drop(s);
        envoy.wait_for("the place to be free", Duration::from_secs(5), || active(&envoy) == 0);
    }
    // And the places are there for the next requests.
    let start = Instant::now();
    assert_eq!(envoy.client().get("/", &[]).status, 200);
    assert!(start.elapsed() >= Duration::from_millis(600));
}

#[test]
fn faults_on_request_headers_only_for_requests_that_ask() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(
        "version: 1\npolicies:\n  - name: f\n    fault:\n      abort: { percent: 100 }\n      delay: { percent: 100, duration: 10ms, max: 200ms }\n      headers: true\n",
        upstream.port(),
    );
    let mut c = envoy.client();
    assert_eq!(c.get("/", &[]).status, 200);
    assert_eq!(c.get("/", &[("x-breakwater-fault-abort", "418")]).status, 418);
    assert_eq!(c.get("/", &[("x-breakwater-fault-abort", "nonsense")]).status, 200);
    let start = Instant::now();
    assert_eq!(c.get("/", &[("x-breakwater-fault-delay", "5000")]).status, 200);
    let took = start.elapsed();
    // Asked for 5 s, held for the block's longest: 200 ms.
    assert!((Duration::from_millis(200)..Duration::from_millis(1000)).contains(&took), "{took:?}");
}

#[test]
fn injected_aborts_do_not_open_the_breaker_unless_counted() {
    for (count, state) in [(false, 0), (true, 1)] {
        let upstream = Upstream::start();
        let envoy = Envoy::start(
            &format!(
                "version: 1\npolicies:\n  - name: f\n    circuit_breaker: {{ window: 10, minimum_calls: 5, failure_rate: 50 }}\n    fault: {{ abort: {{ percent: 100, count_in_breaker: {count} }} }}\n"
            ),
            upstream.port(),
        );
        let mut c = envoy.client();
        for _ in 0..10 {
            assert_eq!(c.get("/", &[]).status, 503);
        }
        assert_eq!(envoy.gauge("f", Gauge::BreakerState), state, "count_in_breaker: {count}");
        // Nothing reached the upstream: every request was aborted before it.
        assert_eq!(upstream.total(), 0);
    }
}

/// A configuration published while a request is held: the old configuration's root context keeps
/// its timer (Envoy keeps it while its streams live), and the request goes on after its delay.
#[test]
fn a_request_held_across_a_reload_still_goes_on() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(
        "version: 1\npolicies:\n  - name: f\n    fault: { delay: { percent: 100, duration: 800ms } }\n",
        upstream.port(),
    );
    let mut c = envoy.client();
    let held = std::thread::spawn(move || {
        let start = Instant::now();
        (c.get("/", &[]).status, start.elapsed())
    });
    envoy.wait_for("the delay to begin", Duration::from_secs(5), || active(&envoy) == 1);
    envoy.publish("version: 1\npolicies:\n  - name: g\n    rate_limit: { rate: 1000 }\n").unwrap();
    let (status, took) = held.join().unwrap();
    println!("held across a reload: {status} after {took:?}");
    assert_eq!(status, 200);
    assert!((Duration::from_millis(800)..Duration::from_secs(5)).contains(&took), "{took:?}");
    // The new configuration serves without a delay.
    let start = Instant::now();
    assert_eq!(envoy.client().get("/", &[]).status, 200);
    assert!(start.elapsed() < Duration::from_millis(800));
}

/// `abort.reset`: Envoy resets the stream; an HTTP/1 client sees its connection closed without a
/// response, and the abort is counted.
#[test]
fn an_abort_can_reset_the_stream() {
    use std::io::Read;
    let upstream = Upstream::start();
    let envoy = Envoy::start(
        "version: 1\npolicies:\n  - name: f\n    match: { path_prefix: /reset }\n    fault: { abort: { percent: 100, reset: true } }\n",
        upstream.port(),
    );
    let mut s = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /reset HTTP/1.1\r\nhost: t\r\n\r\n").unwrap();
    let mut got = Vec::new();
    // A reset connection ends the read (0 bytes) or fails it (connection reset): no response.
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    envoy
        .wait_for("the abort counted", Duration::from_secs(5), || envoy.decisions("f", "fault_aborted") == 1);
    assert_eq!(upstream.total(), 0);
    // Other paths are untouched.
    assert_eq!(envoy.client().get("/other", &[]).status, 200);
    assert!(!envoy.log().contains("panic"));
}
