//! The admin server against a real Envoy: a publish is confirmed applied (and a request through
//! Envoy then meets the new policy), a broken filter is reported rejected with Envoy's reason, and
//! the live status carries the policy's counters.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use breakwater_cli::serve;
use breakwater_e2e::{Envoy, Upstream, filter_wasm};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "e2e-token-0123456789";
const START: &str = "version: 1\npolicies:\n  - name: open\n    rate_limit: { rate: 1000, burst: 1000 }\n";
const STRICT: &str =
    "version: 1\npolicies:\n  - name: strict\n    rate_limit: { rate: 1, per: 1h, burst: 2 }\n";

fn admin_server(envoy: &Envoy, wasm: &Path) -> axum::Router {
    serve::app(envoy.admin_config(TOKEN, wasm.to_path_buf(), None)).unwrap()
}

async fn call(router: &axum::Router, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut r =
        Request::builder().method(method).uri(path).header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    let body = match body {
        Some(v) => {
            r = r.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let response = router.clone().oneshot(r.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_confirmed_by_envoy_and_enforced() {
    let upstream = Upstream::start();
    let envoy = Envoy::start(START, upstream.port());
    let router = admin_server(&envoy, &filter_wasm());

    let (status, body) = call(&router, "PUT", "/api/policy", Some(json!({ "text": STRICT }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&router, "POST", "/api/publish", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["applied"], true, "{body}");
    println!("publish confirmed after {} ms", body["elapsed_ms"]);

    // A real request through Envoy meets the published policy: 2 admitted, then 429.
    let statuses: Vec<u16> = tokio::task::spawn_blocking({
        let mut client = envoy.client();
        move || (0..4).map(|_| client.get("/", &[]).status).collect()
    })
    .await
    .unwrap();
    assert_eq!(statuses, [200, 200, 429, 429]);

    // The live status reads the counters back from Envoy.
    let stats_seen = {
        let mut last = Value::Null;
        for _ in 0..100 {
            let (_, s) = call(&router, "GET", "/api/status", None).await;
            if s["policies"]["strict"]["requests"]["rate_limited"] == 2 {
                last = s;
                break;
            }
            last = s;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        last
    };
    assert_eq!(stats_seen["envoy"]["reachable"], true, "{stats_seen}");
    assert_eq!(stats_seen["policies"]["strict"]["requests"]["allowed"], 2, "{stats_seen}");
    assert_eq!(stats_seen["policies"]["strict"]["requests"]["rate_limited"], 2, "{stats_seen}");
    assert_eq!(stats_seen["ecds"]["applied"], body["ecds_version"].as_u64().unwrap().to_string());
}

/// Without Prometheus the Live page's series come from the server's own samples of Envoy's stats
/// (every 5 s): rates of the decisions between samples, and Envoy's log's breaker transitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_series_are_sampled_from_envoy_without_prometheus() {
    const BREAKER: &str = "version: 1\npolicies:\n  - name: reco\n    circuit_breaker: { window: 10, minimum_calls: 3, failure_rate: 50, open_for: 5m }\n";
    let upstream = Upstream::start();
    let envoy = Envoy::start(BREAKER, upstream.port());
    let router = admin_server(&envoy, &filter_wasm());
    let start = std::time::Instant::now();
    // Requests across two samples at least: three failures open the breaker, the rest get 503.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = std::thread::spawn({
        let (mut client, stop) = (envoy.client(), stop.clone());
        move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                client.get("/", &[("x-test-status", "503")]);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    });
    let (mut seen, mut open, mut band) = (Value::Null, false, false);
    while start.elapsed() < Duration::from_secs(30) {
        let (status, body) = call(&router, "GET", "/api/live", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        open = body["policies"]["reco"]["decisions"]["circuit_open"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x.as_f64().is_some_and(|r| r > 0.0)));
        band = body["policies"]["reco"]["breaker"].as_array().is_some_and(|v| v.iter().any(|x| x == 1.0));
        seen = body;
        if open && band && !seen["transitions"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sender.join().unwrap();
    assert!(open && band, "the open breaker's rate and band: {seen}");
    assert_eq!(seen["source"], "envoy", "{seen}");
    assert_eq!((seen["step_s"].as_u64(), seen["points"].as_u64()), (Some(5), Some(180)), "{seen}");
    assert!(seen["alerts"].is_null(), "no Alertmanager configured: {seen}");
    let t = &seen["transitions"][0];
    assert_eq!(
        (t["policy"].as_str(), t["from"].as_str(), t["to"].as_str()),
        (Some("reco"), Some("closed"), Some("open")),
        "{seen}"
    );
    let rates = seen["policies"]["reco"]["decisions"]["circuit_open"].as_array().cloned().unwrap_or_default();
    // About 5 requests a second, all answered by the open breaker after the first three.
    let top = rates.iter().filter_map(Value::as_f64).fold(0.0, f64::max);
    assert!((2.0..=6.0).contains(&top), "circuit_open per second: {rates:?}");
}

/// Defect 1 of issue 20: a rejected version stayed in the ECDS file, so an Envoy restarted
/// afterwards loaded it and ran without the policy. Now the last applied version is written back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_publish_is_rolled_back_and_survives_an_envoy_restart() {
    let upstream = Upstream::start();
    let mut envoy = Envoy::start(STRICT, upstream.port());
    let broken = envoy.dir.join("broken.wasm");
    std::fs::write(&broken, b"\0asm\x01\0\0\0garbage").unwrap();
    let router = admin_server(&envoy, &broken);
    call(&router, "PUT", "/api/policy", Some(json!({ "text": START }))).await;
    let (status, body) = call(&router, "POST", "/api/publish", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["applied"], false, "{body}");
    println!("rejection: {}", body["message"]);
    let message = body["message"].as_str().unwrap();
    assert!(message.starts_with("Envoy rejected version 2 and keeps version 1"), "{body}");
    assert!(message.ends_with("the version Envoy runs (1) was written back as version 3"), "{body}");
    assert_eq!(body["restored"], 3, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("Unable to create Wasm plugin breakwater"), "{body}");
    // Only an applied version counts as published.
    let (_, status_body) = call(&router, "GET", "/api/status", None).await;
    assert_eq!(status_body["published"], Value::Null, "{status_body}");
    // Envoy takes the written-back version (the same policy, so no change in what it enforces).
    envoy.wait_for("version 3 applied", Duration::from_secs(10), || {
        envoy.admin_get("/stats?filter=version_text").is_some_and(|r| r.body.contains("version_text: \"3\""))
    });
    // A restarted Envoy (nothing kept in memory) loads the file: the strict policy, not the
    // rejected version and not the pass-through default.
    envoy.restart();
    let statuses: Vec<u16> = tokio::task::spawn_blocking({
        let mut client = envoy.client();
        move || (0..3).map(|_| client.get("/", &[]).status).collect()
    })
    .await
    .unwrap();
    assert_eq!(statuses, [200, 200, 429]);
}

/// Before Envoy has accepted any version of the ECDS file, the filter runs the bootstrap's
/// `default_config` (the demo's: no policies) instead of answering 500.
#[test]
fn without_an_accepted_version_the_default_config_serves() {
    let upstream = Upstream::start();
    let envoy = Envoy::start_with_configuration("this is not a policy", upstream.port());
    let mut client = envoy.client();
    assert_eq!(client.get("/", &[]).status, 200, "{}", envoy.log());
    assert!(envoy.stat("extension_config_discovery.http_filter.breakwater.update_rejected") >= 1);
}
