//! Shadow mode in real Envoy: decisions are counted, nothing is rejected.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use breakwater_e2e::{Envoy, Upstream};

#[test]
fn counts_but_never_rejects() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(
        "version: 1\npolicies:\n  - name: trial\n    mode: shadow\n    rate_limit: { rate: 1, per: 1m, burst: 5 }\n",
        upstream.port(),
    );
    let mut c = envoy.client();
    for _ in 0..30 {
        assert_eq!(c.get("/", &[]).status, 200);
    }
    assert_eq!(upstream.total(), 30);
    assert_eq!(envoy.decisions("trial", "allowed"), 5);
    assert_eq!(envoy.decisions("trial", "rate_limited"), 25);
}
