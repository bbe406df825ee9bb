//! Alerts end to end: Envoy + the test upstream + Prometheus + Alertmanager on loopback, with the
//! rules `breakwater render alerts` writes (short windows). A failing upstream opens a breaker and
//! its alert fires in Prometheus and reaches Alertmanager; a 429 storm fires the rejected-share
//! alert; both resolve once the upstream recovers and the storm ends. A policy Envoy rejects
//! fires the publish alert (the ECDS stat's family name, checked against real Envoy).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use breakwater_cli::alerts::{self, Thresholds};
use breakwater_e2e::monitoring::{self, Process};
use breakwater_e2e::{Envoy, Upstream};
use breakwater_policy::model::Duration as Span;

const POLICY: &str = "version: 1
policies:
  - name: reco
    match: { path_prefix: /reco }
    circuit_breaker: { window: 10, minimum_calls: 5, failure_rate: 50, open_for: 3s, half_open_calls: 1 }
  - name: api
    match: { path_prefix: /api }
    rate_limit: { rate: 5, per: 1s, burst: 5 }
";

/// Firing alerts in Prometheus named `alert` (the `ALERTS` series), as (policy, decision) labels.
fn firing(prometheus: &Process, alert: &str) -> Vec<(String, String)> {
    monitoring::query(prometheus, &format!("ALERTS{{alertname=\"{alert}\",alertstate=\"firing\"}}"))
        .iter()
        .map(|s| {
            let label = |k: &str| s["metric"][k].as_str().unwrap_or_default().to_string();
            (label("policy"), label("decision"))
        })
        .collect()
}

/// Whether Alertmanager holds an active alert `alert` for `policy`.
fn received(am: &Process, alert: &str, policy: &str) -> bool {
    monitoring::alertmanager_alerts(am).iter().any(|a| {
        a["labels"]["alertname"] == alert
            && a["labels"]["policy"] == policy
            && a["status"]["state"] == "active"
    })
}

fn wait(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn breaker_and_rejection_alerts_fire_reach_alertmanager_and_resolve() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(POLICY, upstream.port());
    let t = Thresholds {
        window: Span::from_millis(10_000),
        hold_for: Span::from_millis(2_000),
        breaker_open_for: Span::from_millis(60_000),
        ..Thresholds::default()
    };
    let doc = breakwater_policy::load(POLICY).unwrap().document;
    let rules = breakwater_policy::yaml::to_yaml(&alerts::rules(&doc, &t, "breakwater"));
    let am = monitoring::alertmanager();
    let prometheus = monitoring::prometheus(envoy.admin, &rules, Some(am.port));
    wait("Prometheus to scrape Envoy", Duration::from_secs(30), || {
        !monitoring::query(&prometheus, "breakwater_requests{policy=\"api\"}").is_empty()
            || !monitoring::query(&prometheus, "up{job=\"envoy\"} == 1").is_empty()
    });

    // The upstream fails: five 503s open reco's breaker.
    let mut c = envoy.client();
    for _ in 0..5 {
        assert_eq!(c.get("/reco", &[("x-test-status", "503")]).status, 503);
    }
    assert_eq!(c.get("/reco", &[]).status, 503, "open: the breaker answers");
    let fired = wait("the breaker alert in Prometheus", Duration::from_secs(30), || {
        firing(&prometheus, alerts::BREAKER_OPEN) == [("reco".into(), String::new())]
    });
    let reached = wait("the breaker alert in Alertmanager", Duration::from_secs(30), || {
        received(&am, alerts::BREAKER_OPEN, "reco")
    });

    // A 429 storm on api: 10 requests a second for 4 s against 5 a second.
    let storm = Instant::now();
    let mut statuses = Vec::new();
    while storm.elapsed() < Duration::from_secs(4) {
        statuses.push(c.get("/api", &[]).status);
        std::thread::sleep(Duration::from_millis(100));
    }
    let rejected = statuses.iter().filter(|s| **s == 429).count();
    assert!(rejected * 4 >= statuses.len(), "{rejected} of {} rejected", statuses.len());
    let storm_fired = wait("the rejected-share alert in Prometheus", Duration::from_secs(30), || {
        firing(&prometheus, alerts::REJECTED_SHARE) == [("api".into(), "rate_limited".into())]
    });
    wait("the rejected-share alert in Alertmanager", Duration::from_secs(30), || {
        received(&am, alerts::REJECTED_SHARE, "api")
    });

    // Recovery: the upstream answers again, so the breaker's probe closes it; the storm is over.
    wait("the breaker to close", Duration::from_secs(30), || {
        c.get("/reco", &[]).status == 200
            && envoy.gauge("reco", breakwater_policy::metrics::Gauge::BreakerState) == 0
    });
    let recovered = Instant::now();
    wait("both alerts to resolve in Prometheus", Duration::from_secs(60), || {
        firing(&prometheus, alerts::BREAKER_OPEN).is_empty()
            && firing(&prometheus, alerts::REJECTED_SHARE).is_empty()
    });
    let resolved = recovered.elapsed();
    wait("Alertmanager to see them resolved", Duration::from_secs(30), || {
        !received(&am, alerts::BREAKER_OPEN, "reco") && !received(&am, alerts::REJECTED_SHARE, "api")
    });

    // A policy Envoy rejects: the publish alert, on Envoy's own ECDS stat.
    envoy.publish_raw("{ not a policy").unwrap();
    wait("the publish alert in Prometheus", Duration::from_secs(30), || {
        !monitoring::query(
            &prometheus,
            &format!("ALERTS{{alertname=\"{}\",alertstate=\"firing\"}}", alerts::PUBLISH_REJECTED),
        )
        .is_empty()
    });
    println!(
        "breaker alert firing {:.1} s after the breaker opened, in Alertmanager {:.1} s after that; \
         rejected-share alert {:.1} s after the storm's end ({rejected} of {} requests rejected); \
         both resolved {:.1} s after recovery",
        fired.as_secs_f64(),
        reached.as_secs_f64(),
        storm_fired.as_secs_f64(),
        statuses.len(),
        resolved.as_secs_f64()
    );
}

const DASHBOARD_POLICY: &str = "version: 1
policies:
  - name: reco
    match: { path_prefix: /reco }
    circuit_breaker: { window: 10, minimum_calls: 5, failure_rate: 50 }
    retry: { max_retries: 1 }
    concurrency_limit: { max_in_flight: 10, queue: { max_waiting: 5 } }
  - name: search
    match: { path_prefix: /search }
    concurrency_limit: { adaptive: {} }
  - name: api
    match: { path_prefix: /api }
    rate_limit: { rate: 5, per: 1s }
";

/// Every query of every panel `breakwater render dashboard` writes parses in a real Prometheus
/// and returns series from a real Envoy's metrics.
#[test]
fn every_dashboard_query_returns_series() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(DASHBOARD_POLICY, upstream.port());
    let prometheus = monitoring::prometheus(envoy.admin, "groups: []\n", None);
    let doc = breakwater_policy::load(DASHBOARD_POLICY).unwrap().document;
    let mut c = envoy.client();
    let start = Instant::now();
    let queries: Vec<(String, String)> = doc
        .policies
        .iter()
        .flat_map(breakwater_cli::dashboard::panels)
        .flat_map(|p| {
            p.queries.into_iter().map(move |(_, q)| (p.title.clone(), q.replace("$__rate_interval", "30s")))
        })
        .collect();
    assert!(queries.len() >= 8, "{queries:?}");
    for (title, q) in &queries {
        monitoring::parses(&prometheus, q).unwrap_or_else(|e| panic!("{title}: {q}: {e}"));
    }
    let mut empty: Vec<&(String, String)> = queries.iter().collect();
    while !empty.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(60), "no series for: {empty:#?}");
        for path in ["/reco", "/search", "/api"] {
            let _ = c.get(path, &[]);
        }
        std::thread::sleep(Duration::from_millis(200));
        empty.retain(|(_, q)| monitoring::query(&prometheus, q).is_empty());
    }
    println!(
        "{} dashboard queries return series after {:.1} s",
        queries.len(),
        start.elapsed().as_secs_f64()
    );
}
