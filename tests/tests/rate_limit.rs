//! Rate limits in real Envoy with 2 workers: exact across workers, per key, with headers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use breakwater_e2e::{Envoy, Upstream};

const POLICY: &str = r#"
version: 1
policies:
  - name: keyed
    match: { path_prefix: /keyed }
    rate_limit: { rate: 200, per: 1s, burst: 50, key: ["header:x-api-key"] }
"#;

/// Each of `threads` clients sends requests for `key` as fast as it can for `duration`.
/// Returns (admitted, rejected, seconds from the first request sent to the last).
fn hammer(envoy: &Envoy, key: &'static str, threads: usize, duration: Duration) -> (u64, u64, f64) {
    let seen = breakwater_e2e::hammer(envoy.port, "/keyed", &[("x-api-key", key)], threads, duration, |r| {
        match r.status {
            200 => {}
            429 => {
                assert!(r.header("retry-after").is_some_and(|v| v.parse::<u64>().unwrap() >= 1));
                assert_eq!(r.header("ratelimit-policy"), Some("\"keyed\";q=50;w=1"));
            }
            other => panic!("unexpected status {other}: {}", r.body),
        }
    });
    (seen.count(200), seen.count(429), seen.seconds)
}

#[test]
fn per_key_limit_is_exact_across_two_workers() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(POLICY, upstream.port());
    // Two keys hammered at once from eight connections each (connections spread over workers).
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| hammer(&envoy, "alice", 8, Duration::from_secs(3)));
        let b = s.spawn(|| hammer(&envoy, "bob", 8, Duration::from_secs(3)));
        (a.join().unwrap(), b.join().unwrap())
    });
    for (key, (admitted, rejected, secs)) in [("alice", a), ("bob", b)] {
        let expected = 50.0 + 200.0 * secs;
        let error = (admitted as f64 - expected) / expected;
        println!(
            "{key}: admitted {admitted}, rejected {rejected}, expected {expected:.1} over {secs:.3} s: error {:+.3}%",
            error * 100.0
        );
        assert!(rejected > admitted, "{key}: the load must exceed the limit to measure it");
        assert!(error.abs() <= 0.01, "{key}: admitted {admitted}, expected {expected:.1} (±1%)");
    }
    // The upstream saw exactly the admitted requests, and both workers served traffic.
    assert_eq!(upstream.count("/keyed"), a.0 + b.0);
    assert_eq!(envoy.decisions("keyed", "allowed"), a.0 + b.0);
    assert_eq!(envoy.decisions("keyed", "rate_limited"), a.1 + b.1);
    let stats = envoy.admin_get("/stats?filter=downstream_cx_total").unwrap().body;
    let workers: Vec<u64> = stats
        .lines()
        .filter(|l| l.starts_with("listener.") && l.contains(".worker_"))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse().ok())
        .collect();
    println!("connections per worker: {workers:?}");
    assert!(workers.len() == 2 && workers.iter().all(|n| *n > 0), "both workers must serve: {workers:?}");
}
