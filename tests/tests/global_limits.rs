//! Global rate limits end to end: real Envoys with the filter, the real rate-limit service and a
//! real Redis, all on loopback (docs/global-limits.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use breakwater_e2e::services::{RateLimitService, Redis, with_ratelimit};
use breakwater_e2e::{Client, Envoy, Upstream, scratch_dir};
use breakwater_policy::metrics::{Counter, Gauge};

fn policy_file(text: &str) -> PathBuf {
    let path = scratch_dir("bw-global").join("policy.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

const EXACT: &str = "version: 1
policies:
  - name: api
    global_rate_limit: { rate: 5, per: 1s, key: [\"header:x-api-key\"], timeout: 100ms }
";

#[test]
fn two_envoys_share_one_exact_limit_per_key() {
    let redis = Redis::start();
    let service = RateLimitService::start(&policy_file(EXACT), &redis.url(), &[]);
    let upstream = Upstream::start();
    let envoys: Vec<Envoy> = (0..2)
        .map(|_| Envoy::start_edited(EXACT, upstream.port(), |b| with_ratelimit(b, &[service.grpc])))
        .collect();
    let mut clients: Vec<Client> = envoys.iter().map(|e| Client::new(e.port)).collect();
    let mut statuses = Vec::new();
    for i in 0..10 {
        let r = clients[i % 2].get("/", &[("x-api-key", "k1")]);
        statuses.push(r.status);
    }
    // Five tokens for the whole fleet (burst = rate = 5), taken in turn by two Envoys.
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5, "{statuses:?}");
    assert_eq!(&statuses[..5], [200; 5]);
    // A rejection says when to come back.
    let r = clients[0].get("/", &[("x-api-key", "k1")]);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    // Another key has its own bucket.
    assert_eq!(clients[1].get("/", &[("x-api-key", "k2")]).status, 200);
    let calls: u64 = envoys.iter().map(|e| e.decisions("api", Counter::GlobalCalls.as_str())).sum();
    assert_eq!(calls, 12);
    let rejected: u64 = envoys.iter().map(|e| e.decisions("api", Counter::GlobalRateLimited.as_str())).sum();
    assert_eq!(rejected, 6);
    assert_eq!(envoys[0].gauge("api", Gauge::GlobalDegraded), 0);
}
