//! Metrics in real Envoy: /stats/prometheus carries breakwater's counters with policy and decision
//! labels (from the shipped stats_tags), with exact counts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use breakwater_e2e::{Envoy, Upstream};

#[test]
fn prometheus_has_policy_and_decision_labels() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(
        r#"
version: 1
policies:
  - name: checkout
    rate_limit: { rate: 1, per: 1h, burst: 4 }
    circuit_breaker: { window: 10, minimum_calls: 5 }
"#,
        upstream.port(),
    );
    let mut c = envoy.client();
    for _ in 0..10 {
        c.get("/", &[]);
    }
    let prom = envoy.admin_get("/stats/prometheus").unwrap().body;
    let line = |m: &str| prom.lines().find(|l| l.starts_with(m)).map(str::to_string);
    assert_eq!(
        line("breakwater_requests{policy=\"checkout\",decision=\"allowed\"}").as_deref(),
        Some("breakwater_requests{policy=\"checkout\",decision=\"allowed\"} 4")
    );
    assert_eq!(
        line("breakwater_requests{policy=\"checkout\",decision=\"rate_limited\"}").as_deref(),
        Some("breakwater_requests{policy=\"checkout\",decision=\"rate_limited\"} 6")
    );
    assert!(line("breakwater_breaker_state{policy=\"checkout\"}").is_some(), "{prom}");
    assert!(prom.contains("# TYPE breakwater_requests counter"));
    // The filter's linear memory: whole wasm pages, at least the 1 MiB the filter starts with.
    let memory: u64 = line("breakwater_vm_memory_bytes{} ")
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no breakwater_vm_memory_bytes in {prom}"));
    assert!(memory >= 1 << 20 && memory.is_multiple_of(65536), "{memory}");
}
