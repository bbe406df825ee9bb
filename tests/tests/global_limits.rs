//! Global rate limits end to end: real Envoys with the filter, the real rate-limit service and a
//! real Redis, all on loopback (docs/global-limits.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

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

/// A TCP server that accepts connections and never answers (a hung service or Redis).
struct Silent {
    port: u16,
}

impl Silent {
    fn start() -> Silent {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                held.push(conn);
            }
        });
        Silent { port }
    }
}

/// Sends `n` requests one after the other; the slowest answer's time and every status.
fn timed(client: &mut Client, n: usize) -> (Duration, Vec<u16>) {
    let mut slowest = Duration::ZERO;
    let mut statuses = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        statuses.push(client.get("/", &[("x-api-key", "k")]).status);
        slowest = slowest.max(started.elapsed());
    }
    (slowest, statuses)
}

/// However the service fails, no request waits much longer than the policy's `timeout` (50 ms):
/// no endpoint, connection refused, a service that accepts and never answers, and a service
/// whose Redis hangs. `failure_mode: deny` makes each such request a 429.
#[test]
fn no_request_waits_longer_than_the_timeout_whatever_the_service_does() {
    const DENY: &str = "version: 1
policies:
  - name: api
    global_rate_limit: { rate: 1000, key: [\"header:x-api-key\"], timeout: 50ms, failure_mode: deny }
";
    let upstream = Upstream::start();
    let hung = Silent::start();
    let hung_redis = Silent::start();
    let slow_service = RateLimitService::start(
        &policy_file(DENY),
        &format!("redis://127.0.0.1:{}", hung_redis.port),
        &["--redis-timeout", "2s"],
    );
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let no_endpoint = |b: String| {
        let b = with_ratelimit(b, &[refused]);
        let start = b.find("        cluster_name: breakwater-ratelimit").unwrap();
        format!("{}        cluster_name: breakwater-ratelimit\n        endpoints: []\n", &b[..start])
    };
    type Edit<'a> = Box<dyn Fn(String) -> String + 'a>;
    let cases: Vec<(&str, Edit<'_>)> = vec![
        ("no endpoint", Box::new(no_endpoint)),
        ("connection refused", Box::new(move |b| with_ratelimit(b, &[refused]))),
        ("hung service", Box::new(move |b| with_ratelimit(b, &[([127, 0, 0, 1], hung.port).into()]))),
        ("hung redis", Box::new(|b| with_ratelimit(b, &[slow_service.grpc]))),
    ];
    let mut report = Vec::new();
    for (name, edit) in cases {
        let envoy = Envoy::start_edited(DENY, upstream.port(), edit);
        let mut client = envoy.client();
        // The first request (a new connection, maybe a new gRPC stream) and then nine more.
        let (slowest, statuses) = timed(&mut client, 10);
        report.push(format!("{name}: slowest {slowest:?}, statuses {statuses:?}"));
        assert!(statuses.iter().all(|s| *s == 429), "{name}: {statuses:?}");
        // Measured: 2 ms (no endpoint, refused), 49 ms (hung service), 53 ms (hung Redis).
        assert!(slowest < Duration::from_millis(250), "{name}: a request waited {slowest:?}");
        assert_eq!(envoy.gauge("api", Gauge::GlobalDegraded), 1, "{name}");
        assert!(envoy.decisions("api", Counter::GlobalUnavailable.as_str()) >= 10, "{name}");
    }
    println!("{}", report.join("\n"));
}

const FLEET: &str = "version: 1
policies:
  - name: exact
    match: { path_prefix: /exact }
    global_rate_limit: { rate: 50, per: 1s, burst: 50, key: [\"header:x-key\"], timeout: 100ms }
  - name: leased
    match: { path_prefix: /leased }
    global_rate_limit: { rate: 50, per: 1s, burst: 50, key: [\"header:x-key\"], timeout: 100ms, mode: leased }
";

/// Three Envoys (2 workers each), two replicas of the service, one Redis; each Envoy's clients
/// send `path` on keys a and b as fast as they can for `seconds`. Admitted (200) and all requests
/// per key, and the seconds from the first request to the last.
fn overload(envoys: &[Envoy], path: &str, seconds: u64) -> (Vec<(u64, u64)>, f64) {
    let duration = Duration::from_secs(seconds);
    let results: Vec<(usize, breakwater_e2e::Hammered)> = std::thread::scope(|s| {
        let handles: Vec<_> = envoys
            .iter()
            .flat_map(|e| [0, 1].map(|k| (e.port, k)))
            .map(|(port, k)| {
                s.spawn(move || {
                    let key = ["a", "b"][k];
                    (k, breakwater_e2e::hammer(port, path, &[("x-key", key)], 2, duration, |_| {}))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut per_key = vec![(0, 0); 2];
    let mut seconds = 0f64;
    for (k, h) in results {
        per_key[k].0 += h.count(200);
        per_key[k].1 += h.statuses.values().sum::<u64>();
        assert_eq!(h.count(200) + h.count(429), h.statuses.values().sum::<u64>(), "{:?}", h.statuses);
        seconds = seconds.max(h.seconds);
    }
    (per_key, seconds)
}

/// The fleet-wide bound, on two keys at ten times the limit for 10 s: exact mode admits
/// `burst + rate·t` within ±1%; leased mode never more than that (its tokens are taken from the
/// same bucket before they are spent) and at most the unspent leases fewer.
#[test]
fn a_fleet_of_three_envoys_holds_the_limit_in_exact_and_leased_mode() {
    let redis = Redis::start();
    let policy = policy_file(FLEET);
    let services = [
        RateLimitService::start(&policy, &redis.url(), &[]),
        RateLimitService::start(&policy, &redis.url(), &[]),
    ];
    let addresses = [services[0].grpc, services[1].grpc];
    let upstream = Upstream::start();
    let envoys: Vec<Envoy> = (0..3)
        .map(|_| Envoy::start_edited(FLEET, upstream.port(), |b| with_ratelimit(b, &addresses)))
        .collect();
    let (rate, burst) = (50.0, 50.0);
    for (path, policy) in [("/exact", "exact"), ("/leased", "leased")] {
        let (per_key, seconds) = overload(&envoys, path, 10);
        let expected = burst + rate * seconds;
        let calls: u64 = envoys.iter().map(|e| e.decisions(policy, Counter::GlobalCalls.as_str())).sum();
        let unavailable: u64 =
            envoys.iter().map(|e| e.decisions(policy, Counter::GlobalUnavailable.as_str())).sum();
        let requests: u64 = per_key.iter().map(|(_, n)| n).sum();
        println!(
            "{policy}: admitted {:?} of {:?} requests in {seconds:.2} s (burst + rate·t = {expected:.0}); overload {:.1}×; {:.1} calls per 1,000 requests; {unavailable} without an answer",
            per_key.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            per_key.iter().map(|(_, n)| n).collect::<Vec<_>>(),
            per_key.iter().map(|(_, n)| *n as f64 / seconds / rate).fold(f64::MAX, f64::min),
            calls as f64 * 1000.0 / requests as f64,
        );
        for (admitted, offered) in &per_key {
            assert!(
                *offered as f64 >= 10.0 * rate * seconds * 0.8,
                "{policy}: only {offered} requests: not an overload"
            );
            let admitted = *admitted as f64;
            match policy {
                "exact" => assert!(
                    (admitted - expected).abs() <= expected * 0.01,
                    "{policy}: {admitted} vs {expected}"
                ),
                _ => {
                    assert!(admitted <= expected * 1.01, "{policy}: {admitted} over {expected}");
                    assert!(admitted >= expected * 0.9, "{policy}: {admitted} under {expected}");
                }
            }
        }
    }
}
