//! The circuit breaker in real Envoy: opens at the failure rate after minimum_calls, fails fast
//! without touching the upstream, probes after open_for, closes on successes, re-opens on a failed
//! probe; and the slow-call rule.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use breakwater_e2e::{Client, Envoy, Upstream};

const POLICY: &str = r#"
version: 1
policies:
  - name: flaky
    match: { path_prefix: /flaky }
    circuit_breaker:
      window: 10
      minimum_calls: 5
      failure_rate: 50
      open_for: 1s
      half_open_calls: 2
  - name: slow
    match: { path_prefix: /slow }
    circuit_breaker:
      window: 10
      minimum_calls: 4
      failure_rate: 100
      slow_call: { duration: 150ms, rate: 50 }
      open_for: 30s
"#;

fn phase(envoy: &Envoy, policy: &str) -> u64 {
    envoy.stat(&format!("wasmcustom.breakwater.breaker_state.policy.{policy}"))
}

/// Sends requests until one is admitted (a half-open probe), at most for `limit`.
fn first_admitted(c: &mut Client, status: &str, limit: Duration) -> (u16, Duration) {
    let start = Instant::now();
    loop {
        let r = c.get("/flaky", &[("x-test-status", status)]);
        if r.body != "circuit open\n" || start.elapsed() > limit {
            return (r.status, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn lifecycle() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(POLICY, upstream.port());
    let mut c = envoy.client();
    // 2 successes, then failures: after the 5th call (3 of 5 failed = 60%) the breaker opens.
    for status in ["200", "200", "500", "500"] {
        assert_eq!(c.get("/flaky", &[("x-test-status", status)]).status.to_string(), status);
    }
    assert_eq!(phase(&envoy, "flaky"), 0);
    assert_eq!(c.get("/flaky", &[("x-test-status", "500")]).status, 500);
    assert_eq!(phase(&envoy, "flaky"), 1, "open");
    // Open: fail fast, upstream untouched.
    let before = upstream.count("/flaky");
    for _ in 0..20 {
        let r = c.get("/flaky", &[]);
        assert_eq!((r.status, r.body.as_str()), (503, "circuit open\n"));
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(upstream.count("/flaky"), before);
    assert_eq!(envoy.decisions("flaky", "circuit_open"), 20);
    // After open_for (1 s): a probe goes through; it fails: open again.
    let (status, waited) = first_admitted(&mut c, "500", Duration::from_secs(3));
    println!("first probe admitted after {waited:?}");
    assert_eq!(status, 500);
    assert!(waited <= Duration::from_millis(1300), "{waited:?}");
    assert_eq!(phase(&envoy, "flaky"), 1, "re-opened by the failed probe");
    // Next round: two successful probes close it.
    let (status, _) = first_admitted(&mut c, "200", Duration::from_secs(3));
    assert_eq!(status, 200);
    assert_eq!(phase(&envoy, "flaky"), 2, "half-open after one good probe");
    assert_eq!(c.get("/flaky", &[]).status, 200);
    assert_eq!(phase(&envoy, "flaky"), 0, "closed");
    for _ in 0..5 {
        assert_eq!(c.get("/flaky", &[]).status, 200);
    }
}

#[test]
fn slow_calls_open_the_breaker() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(POLICY, upstream.port());
    let mut c = envoy.client();
    for delay in ["0", "300", "300", "0"] {
        assert_eq!(c.get("/slow", &[("x-test-delay-ms", delay)]).status, 200);
    }
    // 2 of 4 calls slower than 150 ms = 50%: open.
    assert_eq!(phase(&envoy, "slow"), 1);
    assert_eq!(c.get("/slow", &[]).status, 503);
}
