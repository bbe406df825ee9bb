//! Issue 20, defect 7: path tricks do not skip a policy. Policies match the `:path` Envoy routes
//! on; the shipped bootstrap (envoy/demo.yaml, and what `breakwater render` prints) normalises it,
//! so `//api/x`, `/%61pi/x`, `/x/../api/x` and `/api%2Fx` meet the `path_prefix: /api` policy,
//! as the upstream would serve them as `/api/...`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use breakwater_e2e::{Envoy, Upstream};

const POLICY: &str = r#"
version: 1
debug_headers: true
policies:
  - name: api
    match: { path_prefix: /api }
    rate_limit: { rate: 1, per: 1h, burst: 1 }
"#;

#[test]
fn path_tricks_meet_the_policy() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(POLICY, upstream.port());
    let mut c = envoy.client();
    // The one token of the bucket.
    assert_eq!(c.get("/api/x", &[]).status, 200);
    for trick in ["//api/x", "/%61pi/x", "/x/../api/x", "/./api/x", "///api//x"] {
        let r = c.get(trick, &[]);
        assert_eq!(r.status, 429, "{trick} skipped the policy: {} {:?}", r.status, r.headers);
        assert_eq!(r.header("x-breakwater-policy"), Some("api"), "{trick}");
    }
    // An escaped slash is unescaped and the client redirected to the plain path.
    let r = c.get("/api%2Fx", &[]);
    assert!(matches!(r.status, 301 | 307 | 308 | 429), "/api%2Fx: {}", r.status);
    // Paths outside the policy stay outside.
    assert_eq!(c.get("/apix/../other", &[]).status, 200);
    assert_eq!(c.get("/other", &[]).status, 200);
}
