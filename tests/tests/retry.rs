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
    outage(POLICY);
}

/// The same, counting the attempts from the router's response header.
#[test]
fn retries_stay_within_the_budget_under_a_total_outage_counted_from_the_header() {
    let trusting = POLICY.replace("version: 1\n", "version: 1\ntrust_attempt_count_header: true\n");
    assert_ne!(trusting, POLICY);
    outage(&trusting);
}

fn outage(policy: &str) {
    let upstream = Upstream::start();
    let envoy = Envoy::start(policy, upstream.port());
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

/// With `trust_attempt_count_header`, retries are counted from the router's `x-envoy-attempt-count`.
/// envoy/demo.yaml sets `include_attempt_count_in_response`, so Envoy writes the header over an
/// upstream's own; without that option an upstream's header reaches the filter, which is why the
/// trust is an explicit setting.
#[test]
fn a_trusted_attempt_count_header_counts_retries_and_envoy_overwrites_an_upstreams_own() {
    // The concurrency limit's gauge says when streams have ended (it drops in on_log).
    const TRUSTING: &str = "version: 1\ntrust_attempt_count_header: true\npolicies:\n  - name: t\n    retry: { max_retries: 2, retry_on: [5xx] }\n    concurrency_limit: { max_in_flight: 100 }\n";
    let ended = |e: &Envoy| e.stat("wasmcustom.breakwater.in_flight.policy.t") == 0;
    let lie = ("x-test-response-header", "x-envoy-attempt-count: 3");
    let upstream = Upstream::start();
    let envoy = Envoy::start(TRUSTING, upstream.port());
    let mut c = envoy.client();
    let r = c.get("/a", &[("x-test-script", "503,200")]);
    assert_eq!((r.status, r.header("x-envoy-attempt-count")), (200, Some("2")));
    let r = c.get("/b", &[lie]);
    assert_eq!((r.status, r.header("x-envoy-attempt-count")), (200, Some("1")));
    envoy.wait_for("both streams ended", Duration::from_secs(5), || ended(&envoy));
    assert_eq!(envoy.decisions("t", "retried"), 1);

    let without_option = Envoy::start_edited(TRUSTING, upstream.port(), |b| {
        b.replace("include_attempt_count_in_response: true", "include_attempt_count_in_response: false")
    });
    let r = without_option.client().get("/c", &[lie]);
    assert_eq!((r.status, r.header("x-envoy-attempt-count")), (200, Some("3")));
    without_option.wait_for("the stream ended", Duration::from_secs(5), || ended(&without_option));
    assert_eq!(without_option.decisions("t", "retried"), 2, "the upstream's count believed");
}
