//! The rate-limit service against a real Redis, through a real RLS v3 gRPC client: exact
//! decisions shared by replicas, leases, refunds, reloads, Redis outages, shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use breakwater_e2e::scratch_dir;
use breakwater_e2e::services::{RateLimitService, Redis};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use tonic::transport::Channel;

const POLICY: &str = "version: 1
policies:
  - name: api
    match: { path_prefix: /api }
    global_rate_limit: { rate: 5, per: 1s, key: [\"header:x-api-key\"] }
  - name: slow
    global_rate_limit: { rate: 1, per: 1h, burst: 10 }
";

fn policy_file(text: &str) -> PathBuf {
    let path = scratch_dir("bw-rls-policy").join("policy.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn client(service: &RateLimitService) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(format!("http://{}", service.grpc)).await.unwrap()
}

fn descriptor(entries: &[(&str, &str)], hits: Option<u64>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
        hits_addend: hits.map(|value| UInt64Value { value }),
        ..Default::default()
    }
}

fn api(key: &str) -> RateLimitDescriptor {
    descriptor(&[("policy", "api"), ("header:x-api-key", key)], None)
}

async fn call(
    c: &mut RateLimitServiceClient<Channel>,
    d: RateLimitDescriptor,
    lease: bool,
) -> Result<RateLimitResponse, tonic::Status> {
    let mut request = tonic::Request::new(RateLimitRequest {
        domain: "breakwater".into(),
        descriptors: vec![d],
        hits_addend: 0,
    });
    if lease {
        request.metadata_mut().insert("x-breakwater-lease", "1".parse().unwrap());
    }
    c.should_rate_limit(request).await.map(tonic::Response::into_inner)
}

fn code(r: &RateLimitResponse) -> Code {
    Code::try_from(r.overall_code).unwrap()
}

#[test]
fn two_replicas_share_one_exact_bucket_per_key() {
    let redis = Redis::start();
    let policy = policy_file(POLICY);
    let (a, b) = (
        RateLimitService::start(&policy, &redis.url(), &[]),
        RateLimitService::start(&policy, &redis.url(), &[]),
    );
    runtime().block_on(async {
        let (mut ca, mut cb) = (client(&a).await, client(&b).await);
        let mut codes = Vec::new();
        let mut remaining = Vec::new();
        for i in 0..7 {
            let c = if i % 2 == 0 { &mut ca } else { &mut cb };
            let r = call(c, api("k1"), false).await.unwrap();
            codes.push(code(&r));
            remaining.push(r.statuses[0].limit_remaining);
            if i == 0 {
                let limit = r.statuses[0].current_limit.as_ref().unwrap();
                assert_eq!((limit.name.as_str(), limit.requests_per_unit), ("api", 5));
            }
        }
        // Burst 5 (= rate): five admitted across both replicas, then over the limit.
        assert_eq!(
            codes,
            [Code::Ok, Code::Ok, Code::Ok, Code::Ok, Code::Ok, Code::OverLimit, Code::OverLimit]
        );
        assert_eq!(&remaining[..5], [4, 3, 2, 1, 0]);
        // Over the limit, the status says how long until the next token: at most 200 ms.
        let r = call(&mut ca, api("k1"), false).await.unwrap();
        let wait = r.statuses[0].duration_until_reset.unwrap();
        assert!(wait.seconds == 0 && wait.nanos > 0 && wait.nanos <= 200_000_000, "{wait:?}");
        // Another key has its own bucket.
        assert_eq!(code(&call(&mut cb, api("k2"), false).await.unwrap()), Code::Ok);
        // Hits: all or nothing.
        let r = call(&mut ca, descriptor(&[("policy", "slow")], Some(11)), false).await.unwrap();
        assert_eq!(code(&r), Code::OverLimit);
        let r = call(&mut ca, descriptor(&[("policy", "slow")], Some(10)), false).await.unwrap();
        assert_eq!((code(&r), r.statuses[0].limit_remaining), (Code::Ok, 0));
        // A descriptor the document does not name is not limited, and counted.
        let r = call(&mut ca, descriptor(&[("policy", "nope")], None), false).await.unwrap();
        assert_eq!(code(&r), Code::Ok);
        assert!(r.statuses[0].current_limit.is_none());
    });
    assert_eq!(a.metric("breakwater_ratelimit_unknown_descriptors_total"), 1.0);
    assert_eq!(
        a.metric("breakwater_ratelimit_checks_total{decision=\"over_limit\"}")
            + b.metric("breakwater_ratelimit_checks_total{decision=\"over_limit\"}"),
        4.0
    );
}

#[test]
fn leases_take_what_the_bucket_has_and_refunds_give_it_back() {
    let redis = Redis::start();
    let service = RateLimitService::start(&policy_file(POLICY), &redis.url(), &[]);
    runtime().block_on(async {
        let mut c = client(&service).await;
        let slow = |hits| descriptor(&[("policy", "slow")], Some(hits));
        let r = call(&mut c, slow(4), true).await.unwrap();
        assert_eq!((code(&r), r.statuses[0].quota.as_ref().map(|q| q.requests)), (Code::Ok, Some(4)));
        // Six left: a lease of ten gets six.
        let r = call(&mut c, slow(10), true).await.unwrap();
        assert_eq!((code(&r), r.statuses[0].quota.as_ref().map(|q| q.requests)), (Code::Ok, Some(6)));
        let r = call(&mut c, slow(10), true).await.unwrap();
        assert_eq!((code(&r), r.statuses[0].quota.as_ref()), (Code::OverLimit, None));
        // Give three back: the next lease gets them.
        let mut refund = slow(3);
        refund.is_negative_hits = true;
        assert_eq!(code(&call(&mut c, refund, true).await.unwrap()), Code::Ok);
        let r = call(&mut c, slow(10), true).await.unwrap();
        assert_eq!(r.statuses[0].quota.as_ref().map(|q| q.requests), Some(3));
    });
    assert_eq!(service.metric("breakwater_ratelimit_lease_tokens_total{event=\"granted\"}"), 13.0);
    assert_eq!(service.metric("breakwater_ratelimit_lease_tokens_total{event=\"refunded\"}"), 3.0);
}

#[test]
fn a_changed_policy_file_is_reloaded_and_an_invalid_one_refused() {
    let redis = Redis::start();
    let policy = policy_file(POLICY);
    let service = RateLimitService::start(&policy, &redis.url(), &["--reload-every", "50ms"]);
    let wait_for = |what: &str, check: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let rt = runtime();
    let mut c = rt.block_on(client(&service));
    let new = |d| rt.block_on(call(&mut c.clone(), d, false)).unwrap();
    assert!(new(descriptor(&[("policy", "later")], None)).statuses[0].current_limit.is_none());
    std::fs::write(
        &policy,
        format!("{POLICY}  - name: later\n    match: {{ path: /x }}\n    global_rate_limit: {{ rate: 2 }}\n"),
    )
    .unwrap();
    wait_for("the reload", &|| service.metric("breakwater_ratelimit_reloads_total{result=\"ok\"}") == 1.0);
    assert_eq!(service.metric("breakwater_ratelimit_limits"), 3.0);
    assert!(new(descriptor(&[("policy", "later")], None)).statuses[0].current_limit.is_some());
    std::fs::write(&policy, "version: 1\npolicies:\n  - name: later\n    global_rate_limit: { rate: -1 }\n")
        .unwrap();
    wait_for("the refusal", &|| {
        service.metric("breakwater_ratelimit_reloads_total{result=\"rejected\"}") == 1.0
    });
    assert!(service.log().contains("policies[0].global_rate_limit.rate"), "{}", service.log());
    assert_eq!(service.metric("breakwater_ratelimit_limits"), 3.0);
    let r = rt.block_on(call(&mut c, descriptor(&[("policy", "later")], None), false)).unwrap();
    assert!(r.statuses[0].current_limit.is_some());
}

#[test]
fn without_redis_calls_fail_fast_and_recover_when_it_is_back() {
    let redis = Redis::start();
    let url = redis.url();
    let service = RateLimitService::start(&policy_file(POLICY), &url, &["--redis-timeout", "20ms"]);
    let rt = runtime();
    let mut c = rt.block_on(client(&service));
    assert_eq!(code(&rt.block_on(call(&mut c, api("k"), false)).unwrap()), Code::Ok);
    let port = redis.kill();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let err = rt.block_on(call(&mut c, api("k"), false)).unwrap_err();
        slowest = slowest.max(started.elapsed());
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    }
    // Bounded by --redis-timeout (20 ms) plus the call itself; never a hang.
    assert!(slowest < Duration::from_millis(250), "a call without Redis took {slowest:?}");
    assert!(service.metric("breakwater_ratelimit_redis_errors_total") >= 20.0);
    let _redis = Redis::start_on(port);
    let start = Instant::now();
    loop {
        if let Ok(r) = rt.block_on(call(&mut c, api("k"), false)) {
            assert_eq!(code(&r), Code::Ok);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "the service did not reconnect to Redis");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("reconnected {:?} after Redis came back", start.elapsed());
}

#[test]
fn sigterm_stops_the_service_cleanly() {
    let redis = Redis::start();
    let service = RateLimitService::start(&policy_file(POLICY), &redis.url(), &[]);
    let status = service.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn an_invalid_policy_at_start_is_an_error_naming_the_problem() {
    let policy = policy_file("version: 1\npolicies:\n  - name: api\n    global_rate_limit: { rate: 0 }\n");
    let out = std::process::Command::new(breakwater_e2e::services::workspace_binary("breakwater-ratelimit"))
        .arg("--policy")
        .arg(&policy)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("policies[0].global_rate_limit.rate: must be between 1 and 1000000000"),
        "{stderr}"
    );
}

/// What `breakwater render istio` deploys runs: the Deployment's command and arguments start the
/// service (its addresses moved to loopback, the ConfigMap's files in a scratch folder standing
/// for the mount, the Redis URL in the environment as the Secret gives it), it is ready at the
/// readiness probe's path and alive at the liveness probe's, and it holds the WasmPlugin's limit.
#[test]
fn the_rendered_kubernetes_deployment_runs_the_service() {
    use breakwater_cli::render;
    let redis = Redis::start();
    let text = std::fs::read_to_string(breakwater_e2e::repo().join("policies/global-orders.yaml")).unwrap();
    let mut doc = breakwater_policy::load(&text).unwrap().document;
    let rl = render::IstioRateLimit {
        name: render::IstioRateLimit::service_name("breakwater-orders").unwrap(),
        image: "r.example/breakwater-ratelimit:0.1.0".into(),
        redis: render::Redis::Secret { name: "redis".into(), key: "url".into() },
        namespace: "shop".into(),
        replicas: 2,
        cluster_domain: "cluster.local".into(),
    };
    render::use_istio_cluster(&mut doc, &rl).unwrap();
    let manifests = render::ratelimit_manifests(&breakwater_policy::compile(&doc), &rl);
    let of_kind = |kind: &str| manifests.iter().find(|m| m["kind"] == kind).unwrap();
    let pod = &of_kind("Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert_eq!(pod["volumes"][0]["configMap"]["name"], of_kind("ConfigMap")["metadata"]["name"]);
    let dir = scratch_dir("bw-rendered-deployment");
    for (file, content) in of_kind("ConfigMap")["data"].as_object().unwrap() {
        std::fs::write(dir.join(file), content.as_str().unwrap()).unwrap();
    }
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            if a.starts_with("0.0.0.0:") {
                "127.0.0.1:0".to_string()
            } else {
                a.replacen(mount, dir.to_str().unwrap(), 1)
            }
        })
        .collect();
    let mut command = std::process::Command::new(breakwater_e2e::services::workspace_binary(
        container["command"][0].as_str().unwrap(),
    ));
    command.args(&args);
    assert_eq!(container["env"][0]["valueFrom"]["secretKeyRef"]["name"], "redis");
    command.env(container["env"][0]["name"].as_str().unwrap(), redis.url());
    let service = RateLimitService::spawn(command);
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().unwrap();
        assert_eq!(service.http(path).map(|(status, _)| status), Some(200), "{probe} {path}");
    }
    // orders-global: 5 per second, burst 5, per API key. The whole burst at once passes; one more
    // within the second is over the limit; another key has its own bucket.
    let rt = runtime();
    let mut c = rt.block_on(client(&service));
    let order = |key: &str, hits: u64| {
        descriptor(&[("policy", "orders-global"), ("header:x-api-key", key)], Some(hits))
    };
    let codes: Vec<Code> = [order("k1", 5), order("k1", 5), order("k2", 1)]
        .into_iter()
        .map(|d| code(&rt.block_on(call(&mut c, d, false)).unwrap()))
        .collect();
    assert_eq!(codes, [Code::Ok, Code::OverLimit, Code::Ok]);
}
