//! Timeouts and fallback replies in real Envoy: an overall timeout, a connect failure and a 5xx
//! all get the fallback reply.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use breakwater_e2e::{Envoy, Upstream, free_port};

const POLICY: &str = r#"
version: 1
policies:
  - name: recs
    timeout: 200ms
    fallback:
      on: [5xx, timeout, connect-failure, reset]
      response: { status: 200, headers: { content-type: application/json, x-fallback: "1" }, body: '{"items":[]}' }
"#;

#[test]
fn timeout_5xx_and_reset_get_the_fallback() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(POLICY, upstream.port());
    let mut c = envoy.client();
    let ok = c.get("/", &[]);
    assert_eq!((ok.status, ok.header("x-fallback")), (200, None));
    for headers in [[("x-test-delay-ms", "600")], [("x-test-status", "502")], [("x-test-reset", "1")]] {
        let r = c.get("/", &headers);
        assert_eq!(
            (r.status, r.body.as_str(), r.header("x-fallback"), r.header("content-type")),
            (200, "{\"items\":[]}", Some("1"), Some("application/json")),
            "{headers:?}"
        );
    }
    assert_eq!(envoy.decisions("recs", "fallback"), 3);
}

#[test]
fn connect_failure_gets_the_fallback() {
    let envoy = Envoy::start(POLICY, free_port());
    let r = envoy.client().get("/", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "{\"items\":[]}"));
}
