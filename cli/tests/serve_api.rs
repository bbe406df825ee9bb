//! The admin server's API, driven in-process with `oneshot` on the router `serve::app` builds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use breakwater_cli::serve::{self, Config};
use common::repo;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789";
const VALID: &str = "version: 1\npolicies:\n  - name: api\n    rate_limit: { rate: 10, burst: 5 }\n";

struct Server {
    dir: PathBuf,
    router: axum::Router,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn server_with(edit: impl FnOnce(&mut Config)) -> Server {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("bw-serve-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = common::serve_config(&dir, TOKEN);
    edit(&mut c);
    let router = serve::app(c).unwrap();
    Server { dir, router }
}

fn server() -> Server {
    server_with(|_| {})
}

impl Server {
    async fn raw(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        let body = match body {
            Some(v) => {
                r = r.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.raw(r.body(body).unwrap()).await
    }

    fn active(&self) -> String {
        std::fs::read_to_string(self.dir.join("active.yaml")).unwrap()
    }
}

#[tokio::test]
async fn every_api_call_needs_the_token() {
    let s = server();
    for (method, path) in
        [("GET", "/api/policy"), ("PUT", "/api/policy"), ("POST", "/api/publish"), ("GET", "/api/nope")]
    {
        let (status, body) =
            s.raw(Request::builder().method(method).uri(path).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert!(body["error"].as_str().unwrap().contains("missing token"), "{body}");
        let wrong = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, "Bearer test-token-0123456788")
            .body(Body::empty())
            .unwrap();
        let (status, body) = s.raw(wrong).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("wrong token")));
    }
    // Outside /api: the health check and the UI need none.
    let (status, _) = s.raw(Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s.raw(Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.as_str().unwrap().contains("./dev build-admin"), "{body}");
}

#[tokio::test]
async fn saves_are_validated_written_and_kept_in_history() {
    let s = server();
    let (status, body) = s.call("GET", "/api/policy", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((body["version"].as_u64(), body["valid"].as_bool()), (Some(1), Some(true)));

    let (status, body) = s.call("PUT", "/api/policy", Some(json!({ "text": VALID }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["version"].as_u64(), body["changed"].as_bool()), (Some(2), Some(true)));
    assert_eq!(s.active(), VALID);

    // Invalid: 422 with the validator's diagnostics (path, line, col); nothing written.
    let invalid = VALID.replace("rate: 10,", "rate: ten,");
    let (status, body) = s.call("PUT", "/api/policy", Some(json!({ "text": invalid }))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let d = &body["diagnostics"][0];
    assert_eq!(d["path"], "policies[0].rate_limit.rate", "{body}");
    assert_eq!((d["line"].as_u64(), d["col"].as_u64()), (Some(4), Some(25)));
    assert_eq!(s.active(), VALID);

    let second = VALID.replace("burst: 5", "burst: 7");
    s.call("PUT", "/api/policy", Some(json!({ "text": second }))).await;
    let (_, history) = s.call("GET", "/api/history", None).await;
    let ids: Vec<u64> =
        history["versions"].as_array().unwrap().iter().map(|v| v["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [3, 2, 1]);
    assert_eq!(history["versions"][0]["policies"], json!(["api"]));

    let (status, body) = s.call("GET", "/api/diff?from=2&to=active", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["diff"]
            .as_str()
            .unwrap()
            .contains("-    rate_limit: { rate: 10, burst: 5 }\n+    rate_limit: { rate: 10, burst: 7 }"),
        "{body}"
    );

    let (status, body) = s.call("GET", "/api/history/2", None).await;
    assert_eq!((status, body["text"].as_str()), (StatusCode::OK, Some(VALID)));

    let (status, body) = s.call("POST", "/api/rollback", Some(json!({ "version": 2 }))).await;
    assert_eq!((status, body["version"].as_u64()), (StatusCode::OK, Some(4)));
    assert_eq!(s.active(), VALID);
    let (status, _) = s.call("POST", "/api/rollback", Some(json!({ "version": 40 }))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let s = server();
    let bad_json = Request::put("/api/policy")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"text\": "))
        .unwrap();
    let (status, body) = s.raw(bad_json).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("EOF"), "{body}");

    let (status, body) = s.call("PUT", "/api/policy", Some(json!({ "text": 5 }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("invalid type"), "{body}");
    let (status, body) = s.call("POST", "/api/validate", Some(json!({ "text": VALID, "extra": 1 }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("unknown field `extra`"), "{body}");

    let no_type = Request::post("/api/validate")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::from(json!({ "text": VALID }).to_string()))
        .unwrap();
    let (status, body) = s.raw(no_type).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(body["error"].is_string());

    let huge = "#".repeat(serve::MAX_BODY + 1);
    let (status, body) = s.call("PUT", "/api/policy", Some(json!({ "text": huge }))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["error"].is_string());
    assert_eq!(s.active(), serve::store::EMPTY_DOCUMENT);
}

#[tokio::test]
async fn version_names_cannot_leave_the_history_folder() {
    let s = server();
    std::fs::write(s.dir.join("secret.yaml"), "version: 1\npolicies: []\n").unwrap();
    for name in
        ["..%2F..%2Fsecret", "..%2Fsecret", "%2Fetc%2Fpasswd", "1.yaml", "-1", "99999999999999999999999"]
    {
        let (status, body) = s.call("GET", &format!("/api/history/{name}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        assert!(body["error"].as_str().unwrap().contains("is not a version"), "{body}");
        let (status, _) = s.call("GET", &format!("/api/diff?from={name}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}");
    }
    let (status, body) = s.call("GET", "/api/history/..", None).await;
    assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND, "{status} {body}");
    let (status, _) = s.call("GET", "/api/diff?from=published", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = s.call("GET", "/api/diff", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("from"), "{body}");
}

#[tokio::test]
async fn validate_returns_every_diagnostic() {
    let s = server();
    let (status, body) = s.call("POST", "/api/validate", Some(json!({ "text": VALID }))).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "valid": true, "diagnostics": [] })));
    let text = "version: 1\npolicies:\n  - name: A\n    retry: { max_retries: 99 }\n";
    let (status, body) = s.call("POST", "/api/validate", Some(json!({ "text": text }))).await;
    assert_eq!((status, body["valid"].as_bool()), (StatusCode::OK, Some(false)));
    let paths: Vec<&str> =
        body["diagnostics"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["policies[0].name", "policies[0].retry.max_retries"]);
}

#[tokio::test]
async fn simulates_a_shipped_scenario_against_the_posted_policy() {
    let s = server();
    let (_, list) = s.call("GET", "/api/scenarios", None).await;
    let files: Vec<&str> = list.as_array().unwrap().iter().map(|v| v["file"].as_str().unwrap()).collect();
    assert!(files.contains(&"api-per-key.scenario.yaml"), "{files:?}");

    let scenario = "name: ten a second\nduration: 3s\nworkers: 1\ntraffic:\n  - rate: 50/s\n    path: /\n\
        expect:\n  - requests: { decision: rate_limited }\n    equals: 115\n    tolerance: 2%\n";
    let (status, body) =
        s.call("POST", "/api/simulate", Some(json!({ "policy": VALID, "scenario": scenario }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let report = &body["report"];
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["timeline"]["seconds"].as_array().unwrap().len(), 3);
    // One request every 20 ms: the burst of 5, then one per 100 ms up to t = 980 ms.
    assert_eq!(report["timeline"]["seconds"][0]["by_decision"]["allowed"], 5 + 9);

    // The same scenario against a looser policy: the expectation fails and says what was found.
    let loose = VALID.replace("rate: 10,", "rate: 50,");
    let (_, body) =
        s.call("POST", "/api/simulate", Some(json!({ "policy": loose, "scenario": scenario }))).await;
    assert_eq!(body["report"]["passed"], false);
    assert_eq!(body["report"]["expectations"][0]["actual"], "0");

    let bad = scenario.replace("3s", "three");
    let (status, body) =
        s.call("POST", "/api/simulate", Some(json!({ "policy": VALID, "scenario": bad }))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["diagnostics"][0]["path"], "duration", "{body}");
    let unknown = scenario.replace("decision: rate_limited", "decision: rate_limited, policy: nope");
    let (status, body) =
        s.call("POST", "/api/simulate", Some(json!({ "policy": VALID, "scenario": unknown }))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

/// Issue 20, defect 2: a simulation is bounded. A scenario beyond the API's limits is refused at
/// once; a run that takes too long is stopped at its wall budget and frees the slot; while it
/// runs, further simulations get 429 at once and the server answers within 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulations_are_bounded_and_the_server_stays_responsive() {
    let s = std::sync::Arc::new(server_with(|c| {
        c.simulation.wall = Duration::from_secs(2);
        c.simulation.max_requests = 20_000_000;
    }));
    let post = |s: std::sync::Arc<Server>, scenario: String| async move {
        s.call("POST", "/api/simulate", Some(json!({ "policy": VALID, "scenario": scenario }))).await
    };
    let wide = "name: wide\nduration: 10s\nworkers: 64\ntraffic:\n  - rate: 10/s\n    path: /\n".to_string();
    let (status, body) = post(s.clone(), wide).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("at most 8 workers"), "{body}");
    let long = "name: long\nduration: 1h\nworkers: 1\ntraffic:\n  - rate: 10/s\n    path: /\n".to_string();
    let (status, body) = post(s.clone(), long).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("at most 600 simulated seconds"), "{body}");

    // Closed loop, 2,000 clients for 10 minutes: far more than 2 s of work.
    let heavy = "name: heavy\nduration: 600s\nworkers: 2\ntraffic:\n  - concurrency: 2000\n    path: /\n\
        upstream:\n  latency: 1ms\n"
        .to_string();
    let mut started = std::time::Instant::now();
    let mut running = tokio::spawn(post(s.clone(), heavy.clone()));
    // The slot is taken by the run: a burst of simulations is refused at once.
    let small = "name: small\nduration: 1s\nworkers: 1\ntraffic:\n  - rate: 5/s\n    path: /\n".to_string();
    let mut refused = 0;
    while refused < 4 {
        if running.is_finished() {
            // The heavy run found the slot taken by a small one (429): send it again.
            let (status, body) = running.await.unwrap();
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "the heavy run ended early: {body}");
            assert_eq!(refused, 0, "{body}");
            started = std::time::Instant::now();
            running = tokio::spawn(post(s.clone(), heavy.clone()));
            continue;
        }
        let (status, body) = post(s.clone(), small.clone()).await;
        match status {
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            StatusCode::OK => {} // the heavy run had not taken the slot yet
            other => panic!("{other}: {body}"),
        }
    }
    let mut slowest = Duration::ZERO;
    while !running.is_finished() {
        slowest = slowest.max(healthz_on_a_worker(&s).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(slowest < Duration::from_millis(100), "/healthz took {slowest:?} during a simulation");
    let (status, body) = running.await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("stopped after 2 s of wall time"), "{body}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    // The slot is free again.
    let (status, body) = post(s.clone(), small).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// How long `/healthz` takes when asked from a task on the runtime's workers (where a server's
/// connections run; the test's own future runs on a thread of its own).
async fn healthz_on_a_worker(s: &std::sync::Arc<Server>) -> Duration {
    let s = s.clone();
    let asked = std::time::Instant::now();
    tokio::spawn(async move {
        let (status, _) = s.raw(Request::get("/healthz").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
    })
    .await
    .unwrap();
    asked.elapsed()
}

/// Issue 20, defect 3: validation runs off the runtime. On a one-thread runtime (the sharpest
/// case of the server's two), `/healthz` answers within 100 ms while a 1.8 MB document of 200,000
/// keys is validated and saved (both refused: at most 64 entries).
#[tokio::test(flavor = "current_thread")]
async fn validation_runs_off_the_runtime() {
    let s = std::sync::Arc::new(server());
    // Four letters per key: 200,000 keys in 1.8 MB, under the 2 MiB body limit.
    let key = |mut i: usize| -> String {
        (0..4)
            .map(|_| {
                let c = char::from(b'a' + (i % 26) as u8);
                i /= 26;
                c
            })
            .collect()
    };
    let keys: Vec<String> = (0..200_000).map(|i| format!("{}: 1", key(i))).collect();
    let wide =
        format!("version: 1\npolicies:\n  - name: a\n    match: {{ headers: {{{}}} }}\n", keys.join(", "));
    assert!(wide.len() < 2 << 20, "{}", wide.len());
    for (method, path) in [("POST", "/api/validate"), ("PUT", "/api/policy")] {
        let started = std::time::Instant::now();
        let call = {
            let (s, text) = (s.clone(), wide.clone());
            tokio::spawn(async move { s.call(method, path, Some(json!({ "text": text }))).await })
        };
        let healthz = healthz_on_a_worker(&s).await;
        let (status, body) = call.await.unwrap();
        println!("{method} {path} of 200,000 keys: {:?}; /healthz meanwhile {healthz:?}", started.elapsed());
        let refused = status == StatusCode::UNPROCESSABLE_ENTITY || body["valid"] == false;
        assert!(refused, "{status} {body}");
        assert!(healthz < Duration::from_millis(100), "{method} {path}: /healthz took {healthz:?}");
    }
}

/// Issue 20, defect 3: the history of large versions is listed from the index written at save
/// time (not by parsing every version under the store's lock), and their diff is bounded (the
/// line diff has a deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_diff_of_large_documents_are_bounded() {
    let s = server();
    // Versions of 10,000 policies whose lines interleave differently.
    let many = |seed: u64| -> String {
        let mut x = seed;
        let mut doc = String::from("version: 1\npolicies:\n");
        for i in 0..10_000 {
            doc.push_str(&format!("  - name: p{i}\n"));
            let mut coin = || {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (x >> 33).is_multiple_of(2)
            };
            doc.push_str(if coin() { "    mode: shadow\n" } else { "    mode: enforce\n" });
            doc.push_str(if coin() { "    failure_mode: deny\n" } else { "    failure_mode: allow\n" });
        }
        doc
    };
    let mut first = None;
    for v in 0..20 {
        let (status, body) = s.call("PUT", "/api/policy", Some(json!({ "text": many(v) }))).await;
        assert_eq!(status, StatusCode::OK, "{:.500}", body.to_string());
        first = first.or(body["version"].as_u64());
    }
    let started = std::time::Instant::now();
    let (status, body) = s.call("GET", "/api/history", None).await;
    let took = started.elapsed();
    println!("history of 20 versions of 10,000 policies: {took:?}");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["versions"][0]["policies"].as_array().unwrap().len(), 10_000);
    assert!(took < Duration::from_secs(1), "history took {took:?}");
    let started = std::time::Instant::now();
    let (status, body) = s.call("GET", &format!("/api/diff?from={}", first.unwrap()), None).await;
    let took = started.elapsed();
    println!("diff of two versions of 30,000 lines: {took:?}");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["diff"].as_str().unwrap().contains("+    mode: shadow"));
    assert!(took < Duration::from_secs(10), "diff took {took:?}");
}

/// Issue 20, defect 9: the auth scheme is case-insensitive (RFC 9110): `bearer`, `BEARER` work.
#[tokio::test]
async fn the_bearer_scheme_is_matched_in_any_case() {
    let s = server();
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let request = Request::builder()
            .uri("/api/policy")
            .header(header::AUTHORIZATION, format!("{scheme} {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let (status, body) = s.raw(request).await;
        assert_eq!(status, StatusCode::OK, "{scheme}: {body}");
    }
    let request = Request::builder()
        .uri("/api/policy")
        .header(header::AUTHORIZATION, format!("Basic {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(s.raw(request).await.0, StatusCode::UNAUTHORIZED);
}

/// Issue 20, defect 12: a filter that cannot be loaded is not remembered: once it is built, the
/// next simulation runs.
#[tokio::test]
async fn a_failed_filter_load_is_retried() {
    let missing = std::env::temp_dir().join(format!("bw-late-filter-{}.wasm", std::process::id()));
    let _ = std::fs::remove_file(&missing);
    let s = server_with(|c| c.filter_wasm = missing.clone());
    let scenario = "name: one\nduration: 1s\nworkers: 1\ntraffic:\n  - rate: 5/s\n    path: /\n";
    let post = || s.call("POST", "/api/simulate", Some(json!({ "policy": VALID, "scenario": scenario })));
    let (status, body) = post().await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body["error"].as_str().unwrap().contains("cannot load the compiled filter"), "{body}");
    std::fs::copy(repo().join("target/wasm32-wasip1/release/breakwater_filter.wasm"), &missing).unwrap();
    let (status, body) = post().await;
    std::fs::remove_file(&missing).unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Issue 20, defect 4: lost updates. `GET /api/policy` sends the active version's ETag; a save or
/// a publish that sends it back in `If-Match` is refused with 412 once another version is active,
/// so a second editor cannot overwrite the first unknowingly, and Publish ships what its user
/// reviewed. Without `If-Match` (curl, scripts) nothing changes.
#[tokio::test]
async fn stale_saves_and_publishes_are_refused_with_412() {
    let ecds = std::env::temp_dir().join(format!("bw-serve-etag-{}.json", std::process::id()));
    let s = server_with(|c| c.ecds = Some(ecds.clone()));
    let request = |method: &str, path: &str, if_match: Option<&str>, body: Option<Value>| {
        let mut r = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(tag) = if_match {
            r = r.header(header::IF_MATCH, tag);
        }
        r.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap()
    };
    let response = s.router.clone().oneshot(request("GET", "/api/policy", None, None)).await.unwrap();
    let loaded = response.headers()[header::ETAG].to_str().unwrap().to_string();
    assert_eq!(loaded, "\"v1\"");
    // Two editors loaded version 1. The first saves: fine, and gets the new tag.
    let first = VALID.to_string();
    let response = s
        .router
        .clone()
        .oneshot(request("PUT", "/api/policy", Some(&loaded), Some(json!({ "text": first }))))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::ETAG], "\"v2\"");
    // The second saves over version 1: refused, and told what is active now.
    let second = VALID.replace("burst: 5", "burst: 7");
    let (status, body) =
        s.raw(request("PUT", "/api/policy", Some(&loaded), Some(json!({ "text": second })))).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    assert!(body["error"].as_str().unwrap().contains("version 2 is active now"), "{body}");
    let (_, body) = s.call("GET", "/api/policy", None).await;
    assert_eq!(body["text"], first.as_str());
    // Publish: what the user reviewed (version 1) is no longer active.
    let (status, _) = s.raw(request("POST", "/api/publish", Some(&loaded), None)).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert!(!ecds.exists(), "nothing was published");
    let (status, body) = s.raw(request("POST", "/api/publish", Some("\"v2\""), None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    // `*` and no If-Match at all: no condition.
    let (status, _) = s.raw(request("PUT", "/api/policy", Some("*"), Some(json!({ "text": second })))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.raw(request("POST", "/api/publish", None, None)).await;
    assert_eq!(status, StatusCode::OK);
    std::fs::remove_file(&ecds).unwrap();
    let name = ecds.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::remove_file(ecds.with_file_name(format!(".{name}.key-seed"))).unwrap();
}

#[tokio::test]
async fn publishing_writes_the_next_ecds_version() {
    let off = server();
    let (status, body) = off.call("POST", "/api/publish", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["error"].as_str().unwrap().contains("--ecds"), "{body}");

    let ecds = std::env::temp_dir().join(format!("bw-serve-ecds-{}.json", std::process::id()));
    let s = server_with(|c| c.ecds = Some(ecds.clone()));
    s.call("PUT", "/api/policy", Some(json!({ "text": VALID }))).await;
    let (status, body) = s.call("POST", "/api/publish", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["version"].as_u64(), body["ecds_version"].as_u64()), (Some(2), Some(1)));
    assert!(body["applied"].is_null());
    let written: Value = serde_json::from_slice(&std::fs::read(&ecds).unwrap()).unwrap();
    assert_eq!(written["version_info"], "1");
    let config =
        written["resources"][0]["typed_config"]["config"]["configuration"]["value"].as_str().unwrap();
    assert!(config.contains("\"name\":\"api\""), "{config}");
    // What was published is what `diff?from=published` compares against.
    s.call("PUT", "/api/policy", Some(json!({ "text": VALID.replace("burst: 5", "burst: 6") }))).await;
    let (_, body) = s.call("GET", "/api/diff?from=published", None).await;
    assert_eq!((body["from"].as_u64(), body["to"].as_u64()), (Some(2), Some(3)));
    let (_, body) = s.call("GET", "/api/status", None).await;
    assert_eq!(body["envoy"]["configured"], false);
    assert_eq!(body["published"]["version"], 2);
    let _ = std::fs::remove_file(&ecds);
}

#[test]
fn a_generated_token_is_private_and_kept() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("bw-serve-token-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (token, file) = serve::token(None, &dir).unwrap();
    let file = file.unwrap();
    assert_eq!(token.len(), 48);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(serve::token(None, &dir).unwrap().0, token);
    assert!(serve::token(Some("short".into()), &dir).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The admin's files are sent precompressed to a browser that accepts it (brotli first, then
/// gzip), as they are to one that does not; a page path falls back to index.html, compressed too.
#[tokio::test]
async fn the_ui_is_served_precompressed() {
    let ui = std::env::temp_dir().join(format!("bw-serve-ui-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&ui);
    std::fs::create_dir_all(&ui).unwrap();
    for (name, body) in [("index.html", "<html>index</html>"), ("app.wasm", "plain wasm")] {
        std::fs::write(ui.join(name), body).unwrap();
        std::fs::write(ui.join(format!("{name}.br")), format!("br of {name}")).unwrap();
        std::fs::write(ui.join(format!("{name}.gz")), format!("gz of {name}")).unwrap();
    }
    let s = server_with(|c| c.ui_dir = Some(ui.clone()));
    let get = |path: &'static str, accept: Option<&'static str>| {
        let router = s.router.clone();
        async move {
            let mut r = Request::get(path);
            if let Some(a) = accept {
                r = r.header(header::ACCEPT_ENCODING, a);
            }
            let res = router.oneshot(r.body(Body::empty()).unwrap()).await.unwrap();
            let encoding =
                res.headers().get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap().to_string());
            let kind = res.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string());
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (encoding, kind, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (enc, kind, body) = get("/app.wasm", Some("gzip, deflate, br, zstd")).await;
    assert_eq!(
        (enc.as_deref(), kind.as_deref(), body.as_str()),
        (Some("br"), Some("application/wasm"), "br of app.wasm")
    );
    let (enc, _, body) = get("/app.wasm", Some("gzip")).await;
    assert_eq!((enc.as_deref(), body.as_str()), (Some("gzip"), "gz of app.wasm"));
    let (enc, _, body) = get("/app.wasm", None).await;
    assert_eq!((enc, body.as_str()), (None, "plain wasm"));
    let (enc, kind, body) = get("/publish", Some("br")).await;
    assert_eq!((enc.as_deref(), body.as_str()), (Some("br"), "br of index.html"));
    assert!(kind.unwrap().starts_with("text/html"));
    let _ = std::fs::remove_dir_all(&ui);
}
