//! Scenarios through the compiled filter: the simulation is deterministic, exact where the
//! arithmetic is, and streams, clients and the upstream behave as the scenario says.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use breakwater_host_test::Host;
use breakwater_host_test::sim::{self, LoadedScenario};
use breakwater_scenario::{self as scenario, Decision, RequestDecision, Run};

fn host() -> Host {
    Host::from_workspace().unwrap_or_else(|e| panic!("{e:#}"))
}

fn load(text: &str) -> LoadedScenario {
    sim::load_text(text, "test.scenario.yaml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
}

fn run(host: &Host, text: &str) -> (LoadedScenario, Run) {
    let loaded = load(text);
    let run = sim::run(host, &loaded.scenario, &loaded.document).unwrap();
    (loaded, run)
}

fn count(run: &Run, f: impl Fn(&scenario::Record) -> bool) -> usize {
    run.records.iter().filter(|r| f(r)).count()
}

const RATE_LIMIT: &str = r#"
name: rate limit
policy:
  version: 1
  policies:
    - name: api
      rate_limit: { rate: 50, per: 1s, burst: 10 }
duration: 4s
workers: WORKERS
traffic:
  - { rate: 200/s, arrivals: ARRIVALS }
"#;

#[test]
fn a_rate_limit_admits_burst_plus_rate_times_t_on_any_number_of_workers() {
    let host = host();
    for workers in [1, 2, 4] {
        let text = RATE_LIMIT.replace("WORKERS", &workers.to_string()).replace("ARRIVALS", "uniform");
        let (_, r) = run(&host, &text);
        assert_eq!(r.records.len(), 800);
        // Arrivals every 5 ms from 0 to 3.995 s: 10 + floor(50 · 3.995) = 209 admitted.
        assert_eq!(
            count(&r, |r| r.decision == RequestDecision::Decided(Decision::Allowed) && r.status == 200),
            209,
            "{workers} workers"
        );
        assert_eq!(
            count(&r, |r| r.decision == RequestDecision::Decided(Decision::RateLimited) && r.status == 429),
            591
        );
        assert_eq!(r.metrics["breakwater.requests.policy.api.decision.allowed"], 209);
    }
}

#[test]
fn runs_are_deterministic_for_a_seed() {
    let host = host();
    let text = RATE_LIMIT.replace("WORKERS", "2").replace("ARRIVALS", "poisson");
    let (_, a) = run(&host, &text);
    let (_, b) = run(&host, &text);
    assert_eq!(a.records, b.records);
    let (_, c) = run(&host, &text.replace("name: rate limit", "name: rate limit\nseed: 99"));
    assert_ne!(a.records, c.records);
    // Poisson arrivals at 200/s for 4 s: about 800 (5 standard deviations: ±141).
    assert!((659..=941).contains(&a.records.len()), "{}", a.records.len());
    assert!(a.records.windows(2).all(|w| w[0].start_ns <= w[1].start_ns));
}

#[test]
fn concurrency_slots_are_held_by_open_streams_and_released_by_aborts() {
    let host = host();
    let (loaded, r) = run(
        &host,
        r#"
name: slow upstream, impatient clients
policy:
  version: 1
  policies:
    - name: slow
      concurrency_limit: { max_in_flight: 5 }
duration: 3s
traffic:
  - name: clients
    concurrency: 20
    think: 50ms
    timeout: 300ms
upstream: { latency: 1s }
expect:
  - max_upstream_concurrency: {}
    equals: 5
  - requests: { status: aborted }
    at_least: 1
"#,
    );
    // Every forwarded request outlives the client's 300 ms: all are aborted, none answered 200.
    assert_eq!(count(&r, |r| r.status == 200), 0);
    let aborted = count(&r, |r| r.status == 0);
    let limited = count(&r, |r| {
        r.decision == RequestDecision::Decided(Decision::ConcurrencyLimited) && r.status == 503
    });
    assert_eq!(aborted + limited, r.records.len());
    // Aborts release their slots: new requests are admitted every 300 ms or so (3 s / 350 ms ≈ 8
    // rounds of 5), not only the first 5.
    assert!(aborted >= 5 * 8, "{aborted}");
    assert_eq!(r.metrics["breakwater.in_flight.policy.slow"], 0);
    let report = scenario::evaluate(&loaded.scenario, &r);
    assert!(report.passed, "{report:#?}");
    // Attempts of aborted requests end when the client leaves.
    assert!(r.tries.iter().all(|(s, e)| e - s == 300_000_000));
}

#[test]
fn the_upstream_follows_its_phases_and_the_router_retries() {
    let host = host();
    let (_, r) = run(
        &host,
        r#"
name: outage
policy:
  version: 1
  policies:
    - name: api
      retry: { max_retries: 2, retry_on: [connect-failure], budget: { percent: 100, min_per_second: 1000 } }
duration: 3s
workers: 1
traffic:
  - rate: 100/s
upstream:
  latency: 10ms
  phases:
    - { from: 1s, to: 2s, down: true }
"#,
    );
    let ms = 1_000_000;
    let in_window =
        |r: &scenario::Record, from: u64, to: u64| r.start_ns >= from * ms && r.start_ns < to * ms;
    assert_eq!(count(&r, |x| !in_window(x, 1000, 2000) && x.status == 200 && x.retried == 0), 200);
    // Down: every attempt fails to connect; the router retries twice, then answers 503 (UF).
    assert_eq!(count(&r, |x| in_window(x, 1000, 1900) && x.status == 503 && x.retried == 2), 90);
    assert_eq!(count(&r, |x| in_window(x, 1000, 2000) && x.tries.0 != x.tries.1 && x.status != 200), 0);
    // Near the end of the outage, a retry after the backoff reaches the recovered upstream.
    let late: Vec<_> = r.records.iter().filter(|x| in_window(x, 1900, 2000)).collect();
    assert!(late.iter().all(|x| (x.status == 503 && x.retried == 2) || (x.status == 200 && x.retried >= 1)));
    assert!(late.iter().any(|x| x.status == 200), "{late:?}");
    let retried: u32 = r.records.iter().map(|x| x.retried).sum();
    assert_eq!(r.metrics["breakwater.requests.policy.api.decision.retried"], u64::from(retried));
}

#[test]
fn a_rejected_policy_stops_the_run_with_the_filters_reason() {
    let host = host();
    let loaded = load(
        "name: x\npolicy:\n  version: 1\n  policies:\n    - name: api\n      rate_limit: { rate: 1, per: 1s }\nduration: 1s\ntraffic: [{ rate: 1 }]\n",
    );
    let mut doc = loaded.document.clone();
    doc.version = 2;
    let e = sim::run(&host, &loaded.scenario, &doc).unwrap_err();
    assert!(e.starts_with("the filter rejected the policy: "), "{e}");
    assert!(e.contains("version"), "{e}");
}

#[test]
fn the_shipped_scenarios_pass() {
    let host = host();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".scenario.yaml") {
            continue;
        }
        seen += 1;
        let loaded = sim::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!loaded.scenario.expect.is_empty(), "{}: no expectations", path.display());
        let r = sim::run(&host, &loaded.scenario, &loaded.document).unwrap();
        let report = scenario::evaluate(&loaded.scenario, &r);
        let failed: Vec<_> = report.expectations.iter().filter(|e| !e.passed).collect();
        assert!(failed.is_empty(), "{}: {failed:#?}", path.display());
    }
    // Every example policy has its scenario.
    let examples = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name().to_string_lossy().into_owned();
            name.ends_with(".yaml") && !name.ends_with(".scenario.yaml")
        })
        .count();
    assert_eq!(seen, examples);
}

/// Requests still waiting in a queue when the traffic ends are decided all the same (the
/// workers' timers run on while any request is held), and the timeline has the line's length.
#[test]
fn requests_waiting_at_the_end_are_decided_and_the_line_is_charted() {
    let (_, run) = run(
        &host(),
        r#"
name: a queue fills
policy:
  version: 1
  policies:
    - name: q
      concurrency_limit: { max_in_flight: 2, queue: { max_waiting: 20, max_wait: 2s } }
duration: 5s
traffic:
  - rate: 40/s
upstream:
  latency: 100ms
"#,
    );
    assert_eq!(count(&run, |r| r.decision == RequestDecision::Unmatched), 0);
    let decided = |d| count(&run, |r| r.decision == RequestDecision::Decided(d));
    // 2 slots of 100 ms serve 20 a second: half of the 200 requests get through, a line of 20
    // takes a second to drain, so nobody times out and the rest are rejected.
    assert!((95..=125).contains(&decided(Decision::Allowed)), "{}", decided(Decision::Allowed));
    assert_eq!(decided(Decision::QueueTimeout), 0);
    let timeline = scenario::timeline(&run);
    let lengths: Vec<u64> = timeline.seconds.iter().map(|s| s.gauges["q"]["queue_length"]).collect();
    assert!(lengths[1..].iter().all(|n| (15..=20).contains(n)), "{lengths:?}");
    assert_eq!(timeline.seconds[0].gauges["q"]["in_flight"], 2);
}

/// An upstream with a `capacity` serves that many at its latency; more share it and each takes
/// longer, in proportion: 20 clients against a capacity of 10 wait twice as long as 5 clients do.
#[test]
fn an_upstream_with_a_capacity_slows_down_under_its_own_load() {
    let scenario = |clients: u32| {
        format!(
            "name: load
policy:
  version: 1
  policies:
    - name: api
      rate_limit: {{ rate: 1000000, per: 1s }}
duration: 5s
traffic:
  - concurrency: {clients}
upstream:
  latency: 100ms
  capacity: 10
"
        )
    };
    let host = host();
    let p50 = |clients| {
        let (_, run) = run(&host, &scenario(clients));
        let mut l: Vec<u64> =
            run.records.iter().filter(|r| r.status == 200).map(|r| r.end_ns - r.start_ns).collect();
        l.sort_unstable();
        l[l.len() / 2] / 1_000_000
    };
    assert_eq!(p50(5), 100);
    // 20 in the upstream when a request starts (19 with its client thinking for a millisecond).
    assert!((190..=200).contains(&p50(20)), "{}", p50(20));
}
