//! Simulated requests per second through the compiled filter, on one core (one thread).
//!
//! `cargo bench -p breakwater-host-test --bench speed` (release build of the host; the filter is
//! the release wasm). A policy with a rate limit and a circuit breaker, one worker, requests
//! spread over 1,000 keys so that both engines do real work; the upstream answers 200 after 5 ms
//! with 2% 503s. Prints the best of several rounds, and the median.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Instant;

use breakwater_host_test::Host;
use breakwater_host_test::sim;

const SCENARIO: &str = r#"
name: speed
policy:
  version: 1
  policies:
    - name: api
      match: { hosts: [api.example.com] }
      rate_limit: { rate: 100, per: 1s, burst: 50, key: ["header:x-api-key"], max_keys: 10000 }
      circuit_breaker: { window: 10s, minimum_calls: 100, failure_rate: 50 }
workers: 1
duration: 10s
traffic:
  - rate: RATE/s
    host: api.example.com
    path: /v1/items
    headers: { x-api-key: { uniform: 1000, prefix: key- } }
upstream: { latency: 5ms, status: { 200: 98, 503: 2 } }
"#;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let host = Host::from_workspace().unwrap_or_else(|e| panic!("{e:#}"));
    let rate = if quick { 1_000 } else { 20_000 };
    let rounds = if quick { 1 } else { 5 };
    let text = SCENARIO.replace("RATE", &rate.to_string());
    let loaded = sim::load_text(&text, "speed", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let mut rates = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let run = sim::run(&host, &loaded.scenario, &loaded.document).unwrap();
        let secs = started.elapsed().as_secs_f64();
        let allowed = run.records.iter().filter(|r| r.status == 200).count();
        assert!(allowed > 0 && allowed < run.records.len(), "the policy did no work");
        rates.push(run.records.len() as f64 / secs);
    }
    rates.sort_by(f64::total_cmp);
    let best = rates.last().copied().unwrap_or(0.0);
    let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
    println!(
        "host-test: {} simulated requests per run; best {best:.0} requests/s, median {median:.0} requests/s on one core ({rounds} rounds)",
        rate * 10
    );
}
