//! Retries in real Envoy, driven by the filter's router headers and bounded by the budget.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use breakwater_e2e::{Envoy, Upstream};

const POLICY: &str = r#"
version: 1
policies:
  - name: reads
    match: { path_prefix: /reads }
    retry:
      max_retries: 2
      retry_on: [5xx]
      methods: [GET]
  - name: budgeted
    match: { path_prefix: /budgeted }
    retry:
      max_retries: 3
      retry_on: [5xx]
      budget: { percent: 20, min_per_second: 5 }
"#;

#[test]
fn fails_twice_then_succeeds() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(POLICY, upstream.port());
    let r = envoy.client().get("/reads/a", &[("x-test-script", "503,503,200")]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-envoy-attempt-count"), Some("3"));
    assert_eq!(upstream.count("/reads/a"), 3);
    assert_eq!(envoy.decisions("reads", "retried"), 2);
    // Three failures: retries exhausted, the last failure is returned.
    let r = envoy.client().get("/reads/b", &[("x-test-script", "503,503,503,200")]);
    assert_eq!(r.status, 503);
    assert_eq!(upstream.count("/reads/b"), 3);
}

#[test]
fn non_idempotent_methods_are_not_retried() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(POLICY, upstream.port());
    let r = envoy.client().send("POST", "/reads/post", &[("x-test-script", b"503,200")]);
    assert_eq!(r.status, 503);
    assert_eq!(upstream.count("/reads/post"), 1);
}

#[test]
fn retries_stay_within_the_budget_under_a_total_outage() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(POLICY, upstream.port());
    upstream.set_outage(true);
    let start = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let mut c = envoy.client();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while start.elapsed() < Duration::from_secs(2) {
                    assert_eq!(c.get("/budgeted", &[]).status, 503);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let requests: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let secs = start.elapsed().as_secs_f64();
    let retries = upstream.count("/budgeted") - requests;
    // Allowed: 5/s floor + 20% of requests. The budget holds in every sliding 1 s window at the
    // moment of each grant; summed over a run that allows one extra second of floor and a few
    // percent at the window edges. Without the budget it would be 3 × requests.
    let allowed = (5.0 * (secs + 1.0) + 0.2 * requests as f64) * 1.05;
    println!(
        "outage: {requests} requests, {retries} retries (budget allows ≈{allowed:.0}; unbounded would be {})",
        3 * requests
    );
    assert!(retries as f64 <= allowed, "{retries} retries > {allowed:.0}");
    // The budget, not something else, is what bounds them: most of it gets used.
    assert!(retries as f64 >= 0.5 * (0.2 * requests as f64), "{retries} retries: the budget did not bind");
    assert_eq!(envoy.decisions("budgeted", "retried"), retries);
    assert!(envoy.decisions("budgeted", "budget_exhausted") > 0);
}
