//! The scenario language: what it accepts, the errors it gives (with paths and lines), and how a
//! finished run is evaluated.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use breakwater_scenario as scenario;
use breakwater_scenario::{
    Arrivals, BreakerState, Check, Decision, Gauge, Latency, Load, Measure, PolicyRef, Record,
    RequestDecision, Run, StatusSelect, Tolerance, Values,
};

const MINIMAL: &str = "name: t\npolicy: p.yaml\nduration: 10s\ntraffic:\n  - rate: 10\n";

fn errors(text: &str) -> Vec<String> {
    match scenario::load(text) {
        Ok(s) => panic!("accepted: {s:?}"),
        Err(d) => d
            .iter()
            .map(|d| match d.span {
                Some(s) => format!("{}:{}: {}", s.line, s.col, d),
                None => d.to_string(),
            })
            .collect(),
    }
}

#[test]
fn a_minimal_scenario_gets_the_defaults() {
    let s = scenario::load(MINIMAL).unwrap();
    assert_eq!(s.policy, PolicyRef::File("p.yaml".into()));
    assert_eq!((s.seed, s.workers, s.duration.as_millis()), (1, 2, 10_000));
    let t = &s.traffic[0];
    assert_eq!(t.name, "traffic[0]");
    assert_eq!(t.load, Load::Rate(10.0));
    assert_eq!(t.arrivals, Arrivals::Uniform);
    assert_eq!((t.method.as_str(), t.host.as_str(), t.path.as_str()), ("GET", "example.com", "/"));
    assert_eq!(t.client_ip, Values::Fixed("10.0.0.1".into()));
    assert_eq!(s.upstream.base.status, [(200, 1.0)]);
    assert!(s.expect.is_empty());
}

#[test]
fn everything_a_scenario_can_say() {
    let text = r#"
name: all
description: every field
policy:
  version: 1
  policies:
    - name: api
      rate_limit: { rate: 10, per: 1s }
      circuit_breaker: { window: 10, minimum_calls: 5, failure_rate: 50 }
seed: 9
workers: 3
duration: 1m
traffic:
  - name: a
    rate: 6000/m
    arrivals: poisson
    start: 5s
    duration: 10s
    connections: 8
    timeout: 2s
    method: POST
    host: api.example.com
    path: /v1/x
    headers:
      X-Key: { zipf: 1000, exponent: 1.2, prefix: k- }
      x-region: { one_of: [eu, us] }
      x-n: 7
    client_ip: { cycle: 20, prefix: "10.0.0." }
    upstream: { latency: 5ms }
  - name: b
    concurrency: 40
    think: 20ms
upstream:
  latency: { uniform: [10ms, 30ms] }
  status: { 200: 95, 503: 5 }
  reset: 1%
  connect_failure: 0.5%
  phases:
    - { from: 10s, to: 20s, down: true }
    - { from: 20s, latency: { exponential: 100ms }, status: 500 }
expect:
  - requests: { status: 5xx, decision: rate_limited, policy: api, traffic: a, from: 1s, to: 2s, fallback: false }
    equals: 100
    tolerance: 2%
  - share: { status: aborted }
    of: { traffic: b }
    between: [0.1, 20%]
  - retries:
    at_most: 5
  - max_upstream_concurrency: {}
    equals: 3
    tolerance: 1
  - metric: breakwater.requests.policy.api.decision.allowed
    at_least: 1
  - breaker: api
    at: 30s
    is: half_open
"#;
    let s = scenario::load(text).unwrap();
    let PolicyRef::Inline(doc) = &s.policy else { panic!() };
    assert_eq!(doc.policies[0].name, "api");
    assert_eq!((s.seed, s.workers, s.duration.as_millis()), (9, 3, 60_000));
    let a = &s.traffic[0];
    assert_eq!(a.load, Load::Rate(100.0));
    assert_eq!(
        (a.start.as_millis(), a.duration.unwrap().as_millis(), a.connections),
        (5000, 10_000, Some(8))
    );
    assert_eq!(a.headers[0].0, "x-key", "header names are lower-cased");
    assert!(
        matches!(a.headers[0].1, Values::Numbered { n: 1000, pick: scenario::Pick::Zipf(e), .. } if e == 1.2)
    );
    assert_eq!(a.headers[2].1, Values::Fixed("7".into()));
    assert!(matches!(s.traffic[1].load, Load::Concurrency { clients: 40, think } if think.as_millis() == 20));
    let up = &s.upstream;
    assert_eq!((up.base.reset, up.base.connect_failure), (0.01, 0.005));
    // Phases apply in their windows; later phases win; the end defaults to the scenario's.
    assert_eq!(up.at(15_000_000_000).connect_failure, 1.0);
    assert_eq!(up.at(25_000_000_000).status, [(500, 1.0)]);
    assert!(matches!(up.at(59_000_000_000).latency, Latency::Exponential(_)));
    assert!(matches!(up.at(5_000_000_000).latency, Latency::Uniform(..)));
    assert_eq!(s.expect.len(), 6);
    let Measure::Requests(sel) = &s.expect[0].measure else { panic!() };
    assert_eq!(sel.status, Some(StatusSelect::Class(5)));
    assert_eq!(sel.decision, Some(RequestDecision::Decided(Decision::RateLimited)));
    assert_eq!(s.expect[0].check, Check::Equals { value: 100.0, tolerance: Tolerance::Relative(0.02) });
    assert_eq!(s.expect[1].check, Check::Between(0.1, 0.2));
    assert_eq!(s.expect[5].check, Check::Is(BreakerState::HalfOpen));
    assert!(scenario::check_against(&s, doc).is_empty());
}

#[test]
fn errors_have_paths_lines_and_suggestions() {
    let text = r#"name: bad
policy: p.yaml
duration: 10s
workers: 0
traffic:
  - name: a
    rate: fast
    hedaers: {}
  - name: a
    concurrency: 5
    rate: 5
upstream:
  status: { 200: 1, 999: 1 }
  reset: 2
  capacity: 0
expect:
  - requests: { traffic: c, decison: allowed }
    equals: 1
  - breaker: api
    at_least: 1
  - requests: {}
    is: open
"#;
    let e = errors(text);
    let expected = [
        "4:10: error: workers: must be between 1 and 64, found 0",
        "7:11: error: traffic[0].rate: `fast` is not a rate; write requests per second: 200, 200/s, 6000/m",
        "8:5: error: traffic[0].hedaers: unknown field `hedaers`; did you mean `headers`?",
        "9:5: error: traffic[1]: write either `rate` (open loop) or `concurrency` (closed loop), not both",
        "13:21: error: upstream.status.999: `999` is not an HTTP status code (100-599)",
        "14:10: error: upstream.reset: expected a string, found an integer",
        "15:13: error: upstream.capacity: must be between 1 and 1000000, found 0",
        "17:29: error: expect[0].requests.decison: unknown field `decison`; did you mean `decision`?",
        "17:26: error: expect[0].requests.traffic: no traffic named `c`; the scenario has: a",
        "19:5: error: expect[1]: a breaker expectation needs `at` (a time in the scenario)",
        "20:15: error: expect[1].at_least: a breaker state is checked with `is: open` (closed, open, half_open)",
        "22:9: error: expect[2].is: `is` compares breaker states; use equals, at_least, at_most or between",
    ];
    for want in expected {
        assert!(e.iter().any(|got| got == want), "missing {want:?} in\n{}", e.join("\n"));
    }
}

#[test]
fn missing_fields_and_bad_combinations() {
    let e = errors("name: x\n");
    for want in ["missing field `policy`", "missing field `duration`", "missing field `traffic`"] {
        assert!(e.iter().any(|got| got.contains(want)), "{want}: {e:?}");
    }
    let e = errors("name: x\npolicy: p\nduration: 10\ntraffic: []\n");
    assert!(e.iter().any(|g| g.contains("duration: a duration needs a unit")), "{e:?}");
    assert!(
        e.iter().any(|g| g.contains("traffic: a scenario needs at least one traffic generator")),
        "{e:?}"
    );
    let e = errors(&format!("{MINIMAL}    think: 5ms\n"));
    assert!(e.iter().any(|g| g.contains("`think` applies to `concurrency` traffic only")), "{e:?}");
    let e = errors(&format!("{MINIMAL}    headers: {{ x: {{ uniform: 5, one_of: [a] }} }}\n"));
    assert!(e.iter().any(|g| g.contains("write only one of one_of, uniform")), "{e:?}");
    let e = errors(&format!("{MINIMAL}    headers: {{ ':path': a }}\n"));
    assert!(e.iter().any(|g| g.contains("`:path` is not a header name a client can send")), "{e:?}");
    let e = errors(&format!("{MINIMAL}    start: 20s\n"));
    assert!(e.iter().any(|g| g.contains("starts after the scenario ends (10s)")), "{e:?}");
    let e = errors(&format!("{MINIMAL}upstream: {{ phases: [{{ from: 5s, to: 2s }}] }}\n"));
    assert!(e.iter().any(|g| g.contains("`from` (5s) must come before `to` (2s)")), "{e:?}");
    let e = errors(&format!("{MINIMAL}upstream: {{ latency: {{ uniform: [30ms, 10ms] }} }}\n"));
    assert!(e.iter().any(|g| g.contains("the lower bound (30ms) is above the upper one (10ms)")), "{e:?}");
    let e = errors(&format!("{MINIMAL}expect:\n  - requests: {{}}\n    at_most: 1\n    tolerance: 1\n"));
    assert!(e.iter().any(|g| g.contains("`tolerance` applies to `equals` only")), "{e:?}");
    let e = errors(&format!("{MINIMAL}expect:\n  - requests: {{ status: 6xx }}\n    at_most: 1\n"));
    assert!(e.iter().any(|g| g.contains("write a code (429), a class (5xx) or `aborted`")), "{e:?}");
    let e = errors("name: x\npolicy: p\nduration: 1h\ntraffic:\n  - rate: 100000\n");
    assert!(e.iter().any(|g| g.contains("the limit is 20000000")), "{e:?}");
}

#[test]
fn an_inline_policy_reports_its_errors_under_policy() {
    let e = errors(
        "name: x\npolicy:\n  version: 1\n  policies:\n    - name: Bad\nduration: 1s\ntraffic: [{ rate: 1 }]\n",
    );
    assert!(
        e.iter().any(|g| g.starts_with("5:13: error: policy.policies[0].name: `Bad` is not a valid name")),
        "{e:?}"
    );
}

#[test]
fn expectations_must_name_policies_of_the_document() {
    let s = scenario::load(&format!(
        "{MINIMAL}expect:\n  - requests: {{ policy: ap }}\n    at_most: 1\n  - breaker: api\n    at: 1s\n    is: open\n"
    ))
    .unwrap();
    let doc = breakwater_policy::load(
        "version: 1\npolicies:\n  - name: api\n    rate_limit: { rate: 1, per: 1s }\n",
    )
    .unwrap()
    .document;
    let problems: Vec<String> = scenario::check_against(&s, &doc).iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        [
            "error: expect[0].requests.policy: no policy named `ap`; did you mean `api`?",
            "error: expect[1].breaker: policy `api` has no circuit_breaker",
        ]
    );
}

fn record(
    traffic: u32,
    start_ms: u64,
    end_ms: u64,
    status: u16,
    decision: Decision,
    tries: (u32, u32),
) -> Record {
    Record {
        traffic,
        start_ns: start_ms * 1_000_000,
        end_ns: end_ms * 1_000_000,
        status,
        policy: Some(0),
        decision: RequestDecision::Decided(decision),
        fallback: false,
        retried: 0,
        budget_exhausted: false,
        local: status != 200,
        tries,
    }
}

/// A hand-made run: 2 seconds, 5 requests.
fn run() -> Run {
    let ms = 1_000_000;
    Run {
        policies: vec!["api".into()],
        traffic: vec!["a".into(), "b".into()],
        records: vec![
            record(0, 0, 100, 200, Decision::Allowed, (0, 1)),
            record(0, 50, 150, 200, Decision::Allowed, (1, 3)),
            record(0, 120, 120, 429, Decision::RateLimited, (3, 3)),
            record(1, 1200, 1300, 200, Decision::Allowed, (3, 4)),
            record(1, 1250, 1400, 0, Decision::Allowed, (4, 4)),
        ],
        // The second request was retried: two attempts, back to back (no overlap with each other).
        tries: vec![(0, 100 * ms), (50 * ms, 90 * ms), (90 * ms, 150 * ms), (1200 * ms, 1300 * ms)],
        breaker_samples: vec![
            (1_000_000_000, vec![Some(BreakerState::Open)]),
            (2_000_000_000, vec![Some(BreakerState::Closed)]),
        ],
        gauge_samples: vec![(1_000_000_000, vec![(0, Gauge::QueueLength, 4)]), (2_000_000_000, vec![])],
        metrics: [("m".to_string(), 7)].into_iter().collect(),
        duration_ns: 2_000_000_000,
        workers: 1,
        seed: 1,
    }
}

fn evaluate(expect: &str) -> Vec<(bool, f64, String)> {
    let text = format!(
        "name: t\npolicy: p.yaml\nduration: 2s\ntraffic:\n  - {{ name: a, rate: 1 }}\n  - {{ name: b, rate: 1 }}\nexpect:\n{expect}"
    );
    let s = scenario::load(&text).unwrap();
    scenario::evaluate(&s, &run()).expectations.into_iter().map(|o| (o.passed, o.value, o.actual)).collect()
}

#[test]
fn measures_and_checks() {
    let r = evaluate(
        "  - { requests: {}, equals: 5 }
  - { requests: { status: 4xx }, equals: 1 }
  - { requests: { traffic: b, status: aborted }, equals: 1 }
  - { requests: { from: 1s }, equals: 2 }
  - { share: { decision: rate_limited }, of: { traffic: a }, equals: 0.3333, tolerance: 1% }
  - { upstream_attempts: { traffic: a }, equals: 3 }
  - { max_upstream_concurrency: {}, equals: 2 }
  - { max_in_flight: {}, equals: 2 }
  - { metric: m, equals: 7 }
  - { metric: nope, equals: 0 }
  - { breaker: api, at: 1s, is: open }
  - { breaker: api, at: 2s, is: open }
  - { requests: {}, equals: 100, tolerance: 5% }
  - { requests: {}, between: [4, 6] }
",
    );
    let values: Vec<f64> = r.iter().map(|(_, v, _)| *v).collect();
    assert_eq!(values[..9], [5.0, 1.0, 1.0, 2.0, 1.0 / 3.0, 3.0, 2.0, 2.0, 7.0]);
    let passed: Vec<bool> = r.iter().map(|(p, _, _)| *p).collect();
    assert_eq!(
        passed,
        [true, true, true, true, true, true, true, true, true, false, true, false, false, true]
    );
    assert_eq!(r[9].2, "not defined by the filter");
    assert_eq!(r[11].2, "closed");
    assert_eq!(r[4].2, "0.3333 (1 of 3)");
}

#[test]
fn the_timeline_counts_each_second() {
    let t = scenario::timeline(&run());
    assert_eq!(t.seconds.len(), 2);
    let (s0, s1) = (&t.seconds[0], &t.seconds[1]);
    assert_eq!((s0.requests, s1.requests), (3, 2));
    assert_eq!(s0.by_decision.get("rate_limited"), Some(&1));
    assert_eq!(s0.by_status.get("429"), Some(&1));
    assert_eq!(s1.by_status.get("aborted"), Some(&1));
    assert_eq!(s0.by_policy["api"]["allowed"], 2);
    assert_eq!((s0.upstream_attempts, s1.upstream_attempts), (3, 1));
    assert_eq!((s0.max_upstream_concurrency, s1.max_upstream_concurrency), (2, 1));
    assert_eq!((s0.max_in_flight, s1.max_in_flight), (2, 2));
    assert_eq!(s0.breaker["api"], BreakerState::Open);
    assert_eq!(s1.breaker["api"], BreakerState::Closed);
    // Other gauges at the end of each second, where sampled.
    assert_eq!(s0.gauges["api"]["queue_length"], 4);
    assert!(s1.gauges.is_empty());
    // Latencies of answered requests: 100, 100, 0 ms in second 0.
    assert_eq!((s0.latency_p50_ms, s0.latency_p99_ms), (100.0, 100.0));
    // The JSON the admin charts reads back to the same timeline.
    let json = serde_json::to_string(&t).unwrap();
    assert_eq!(serde_json::from_str::<scenario::Timeline>(&json).unwrap(), t);
}

#[test]
fn sample_times_cover_every_second_and_every_breaker_check() {
    let s = scenario::load(&format!(
        "{}expect:\n  - {{ breaker: x, at: 1500ms, is: open }}\n",
        MINIMAL.replace("10s", "2500ms")
    ))
    .unwrap();
    assert_eq!(scenario::sample_times(&s), [1_000_000_000, 1_500_000_000, 2_000_000_000, 2_500_000_000]);
}
