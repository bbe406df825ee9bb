//! The request lifecycle natively: plan + in-memory shared data + fake clock. The same behaviours
//! are tested through the compiled filter in real Envoy (tests/ at the workspace root).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use breakwater_policy::enforce::{self, Admitted, Event, Exchange, HeaderValue, Verdict, flags};
use breakwater_policy::engine::clock::FakeClock;
use breakwater_policy::engine::store::{CountingStore, MemoryStore, SharedStore, StoreError};
use breakwater_policy::metrics::{BreakerState, Decision};
use breakwater_policy::plan::{Plan, SimpleRequest};

type Req = SimpleRequest;

fn get(path: &str) -> Req {
    SimpleRequest::new("GET", "shop.example.com", path).from_ip("10.0.0.1")
}

struct Sim<S: SharedStore = MemoryStore> {
    plan: Plan,
    store: S,
    clock: FakeClock,
}

fn sim(yaml: &str) -> Sim {
    sim_with(yaml, MemoryStore::default())
}

fn sim_with<S: SharedStore>(yaml: &str, store: S) -> Sim<S> {
    let doc = breakwater_policy::load(yaml).unwrap_or_else(|e| panic!("{e:#?}")).document;
    Sim { plan: Plan::new(doc).unwrap(), store, clock: FakeClock::at(1_000_000_000_000) }
}

impl<S: SharedStore> Sim<S> {
    fn admit(&self, req: &Req) -> Admitted {
        enforce::admit(&self.plan, &self.store, req, self.clock.now())
            .and_then(enforce::Step::decided)
            .expect("a policy matches")
    }
    fn finish(&self, a: &mut Admitted, status: u16, attempts: u32) {
        let ex = Exchange { status: Some(status), ..Exchange::default() };
        enforce::finish(&self.plan, &self.store, a, &ex, Some(attempts), self.clock.now());
    }
    /// A whole request: admitted, and if forwarded, answered with `status`.
    fn call(&self, req: &Req, status: u16) -> Decision {
        let mut a = self.admit(req);
        if a.forwarded() {
            self.finish(&mut a, status, 1);
        }
        a.decision
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn rejection(a: &Admitted) -> &enforce::Reply {
    match &a.verdict {
        Verdict::Reject(r) => r,
        Verdict::Forward { .. } | Verdict::Wait => panic!("expected a rejection, got {:?}", a.decision),
    }
}

fn router_headers(a: &Admitted) -> &[(&'static str, HeaderValue)] {
    match &a.verdict {
        Verdict::Forward { request_headers } => request_headers,
        Verdict::Reject(_) | Verdict::Wait => panic!("expected forwarding"),
    }
}

fn router_pairs(a: &Admitted) -> Vec<(&str, &str)> {
    router_headers(a).iter().map(|(k, v)| (*k, &**v)).collect()
}

#[test]
fn rate_limit_per_key_with_headers() {
    let s = sim(r#"
version: 1
policies:
  - name: api
    rate_limit: { rate: 10, per: 1s, burst: 5, key: ["header:x-api-key"] }
"#);
    let alice = get("/").header("x-api-key", "alice");
    let bob = get("/").header("x-api-key", "bob");
    let decisions: Vec<Decision> = (0..6).map(|_| s.call(&alice, 200)).collect();
    assert_eq!(decisions.iter().filter(|d| **d == Decision::Allowed).count(), 5);
    let a = s.admit(&alice);
    let r = rejection(&a);
    assert_eq!(r.status, 429);
    assert_eq!(header(&r.headers, "retry-after"), Some("1"));
    assert_eq!(header(&r.headers, "ratelimit-policy"), Some("\"api\";q=5;w=1"));
    assert_eq!(header(&r.headers, "ratelimit"), Some("\"api\";r=0;t=1"));
    assert_eq!(r.body, "rate limited\n");
    // Bob is independent.
    assert_eq!(s.call(&bob, 200), Decision::Allowed);
    // One token per 100 ms.
    s.clock.advance_ms(100);
    assert_eq!(s.call(&alice, 200), Decision::Allowed);
    assert_eq!(s.call(&alice, 200), Decision::RateLimited);
}

#[test]
fn rate_limit_is_exact_over_time() {
    let s = sim("version: 1\npolicies:\n  - name: api\n    rate_limit: { rate: 100, per: 1s, burst: 20 }\n");
    let mut admitted = 0;
    for _ in 0..10_000 {
        if s.call(&get("/"), 200) == Decision::Allowed {
            admitted += 1;
        }
        s.clock.advance_ms(1);
    }
    // 20 + 100/s · 9.999 s
    assert_eq!(admitted, 20 + 999);
}

#[test]
fn concurrency_slots_are_held_until_finish_and_released_once() {
    let s = sim("version: 1\npolicies:\n  - name: api\n    concurrency_limit: { max_in_flight: 2 }\n");
    let mut a1 = s.admit(&get("/"));
    let mut a2 = s.admit(&get("/"));
    let a3 = s.admit(&get("/"));
    assert_eq!(
        (a1.decision, a2.decision, a3.decision),
        (Decision::Allowed, Decision::Allowed, Decision::ConcurrencyLimited)
    );
    assert_eq!(rejection(&a3).status, 503);
    // A client abort (no response) releases too; finishing twice releases once.
    enforce::finish(&s.plan, &s.store, &mut a1, &Exchange::default(), None, s.clock.now());
    enforce::finish(&s.plan, &s.store, &mut a1, &Exchange::default(), None, s.clock.now());
    let mut a4 = s.admit(&get("/"));
    assert_eq!(a4.decision, Decision::Allowed);
    assert_eq!(s.admit(&get("/")).decision, Decision::ConcurrencyLimited);
    s.finish(&mut a2, 200, 1);
    s.finish(&mut a4, 200, 1);
    assert!(a4.events.contains(&Event::InFlight(0)));
}

#[test]
fn breaker_lifecycle() {
    let s = sim(r#"
version: 1
policies:
  - name: flaky
    circuit_breaker: { window: 10, minimum_calls: 4, failure_rate: 50, open_for: 1s, half_open_calls: 2 }
"#);
    for _ in 0..3 {
        assert_eq!(s.call(&get("/"), 503), Decision::Allowed);
    }
    let mut a = s.admit(&get("/"));
    s.finish(&mut a, 503, 1);
    assert!(
        a.events.iter().any(|e| matches!(e, Event::Breaker(t) if t.to.state() == BreakerState::Open)),
        "{:?}",
        a.events
    );
    let open = s.admit(&get("/"));
    assert_eq!(open.decision, Decision::CircuitOpen);
    assert_eq!(rejection(&open).status, 503);
    assert_eq!(header(&rejection(&open).headers, "retry-after"), Some("1"));
    s.clock.advance_ms(1000);
    let mut p1 = s.admit(&get("/"));
    let mut p2 = s.admit(&get("/"));
    assert_eq!(s.admit(&get("/")).decision, Decision::CircuitOpen);
    s.finish(&mut p1, 200, 1);
    s.finish(&mut p2, 200, 1);
    assert!(p2.events.iter().any(|e| matches!(e, Event::Breaker(t) if t.to.state() == BreakerState::Closed)));
    assert_eq!(s.call(&get("/"), 200), Decision::Allowed);
}

#[test]
fn retries_only_for_the_methods_and_within_the_budget() {
    let s = sim(r#"
version: 1
policies:
  - name: api
    retry:
      max_retries: 2
      retry_on: [5xx, retriable-status-codes]
      statuses: [409]
      per_try_timeout: 250ms
      methods: [GET]
      budget: { percent: 0, min_per_second: 3 }
    timeout: 2s
"#);
    let mut first = s.admit(&get("/"));
    assert_eq!(
        router_pairs(&first),
        [
            ("x-envoy-retry-on", "5xx,retriable-status-codes"),
            ("x-envoy-max-retries", "2"),
            ("x-envoy-retriable-status-codes", "409"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "250"),
            ("x-envoy-upstream-rq-timeout-ms", "2000"),
        ]
    );
    let post = s.admit(&Req { method: "POST".into(), ..get("/") });
    assert_eq!(router_pairs(&post), [("x-envoy-upstream-rq-timeout-ms", "2000")]);
    // Budget: 3 per second, 2 reserved by the first request; the next gets 1, then 0.
    let second = s.admit(&get("/"));
    assert_eq!(header_of(&second, "x-envoy-max-retries"), Some("1"));
    assert!(second.events.contains(&Event::BudgetExhausted));
    let third = s.admit(&get("/"));
    assert_eq!(header_of(&third, "x-envoy-max-retries"), Some("0"));
    // The first used one retry of its two: one comes back.
    s.finish(&mut first, 200, 2);
    assert!(first.events.contains(&Event::Retried(1)));
    assert_eq!(header_of(&s.admit(&get("/")), "x-envoy-max-retries"), Some("1"));
}

fn header_of<'a>(a: &'a Admitted, name: &str) -> Option<&'a str> {
    router_headers(a).iter().find(|(k, _)| *k == name).map(|(_, v)| &**v)
}

#[test]
fn fallback_replaces_failures_but_not_our_own_replies() {
    let s = sim(r#"
version: 1
debug_headers: true
policies:
  - name: recs
    rate_limit: { rate: 1, burst: 1 }
    fallback:
      on: [5xx, timeout]
      response: { status: 200, headers: { content-type: application/json }, body: '{"items":[]}' }
"#);
    let mut a = s.admit(&get("/"));
    assert_eq!(
        enforce::fallback(&s.plan, &mut a, &Exchange { status: Some(200), ..Exchange::default() }),
        None
    );
    let fb =
        enforce::fallback(&s.plan, &mut a, &Exchange { status: Some(503), ..Exchange::default() }).unwrap();
    assert_eq!((fb.status, fb.body.as_str()), (200, "{\"items\":[]}"));
    assert_eq!(header(&fb.headers, "x-breakwater-decision"), Some("fallback"));
    assert!(a.events.contains(&Event::Fallback));
    // A rate-limited request's own 429 passes through response processing untouched.
    let mut limited = s.admit(&get("/"));
    assert_eq!(limited.decision, Decision::RateLimited);
    assert_eq!(header(&rejection(&limited).headers, "x-breakwater-policy"), Some("recs"));
    assert_eq!(
        enforce::fallback(&s.plan, &mut limited, &Exchange { status: Some(429), ..Exchange::default() }),
        None
    );
}

#[test]
fn shadow_mode_counts_but_forwards() {
    let s = sim(
        "version: 1\npolicies:\n  - name: api\n    mode: shadow\n    rate_limit: { rate: 1, burst: 1 }\n",
    );
    assert_eq!(s.call(&get("/"), 200), Decision::Allowed);
    let a = s.admit(&get("/"));
    assert_eq!(a.decision, Decision::RateLimited);
    assert!(a.forwarded());
    assert!(a.events.contains(&Event::Decision(Decision::RateLimited)));
}

/// A store that refuses every call: failure_mode decides.
struct Broken;
impl SharedStore for Broken {
    fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Err(StoreError::Unavailable("test".into()))
    }
    fn set(&self, _: &str, _: &[u8], _: u32) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("test".into()))
    }
}

#[test]
fn failure_mode_applies_when_state_is_unavailable() {
    let open = sim_with("version: 1\npolicies:\n  - name: a\n    rate_limit: { rate: 1 }\n", Broken);
    let a = open.admit(&get("/"));
    assert!(a.forwarded());
    assert!(a.events.contains(&Event::StateUnavailable));
    let closed = sim_with(
        "version: 1\npolicies:\n  - name: a\n    failure_mode: deny\n    rate_limit: { rate: 1 }\n",
        Broken,
    );
    assert_eq!(rejection(&closed.admit(&get("/"))).status, 429);
}

#[test]
fn client_ip_keys_and_unmatched_requests() {
    let s = sim(r#"
version: 1
policies:
  - name: per-ip
    match: { path_prefix: /api }
    rate_limit: { rate: 1, burst: 1, key: [client_ip] }
"#);
    assert!(s.plan.needs_client_ip);
    assert_eq!(s.call(&get("/api/a"), 200), Decision::Allowed);
    assert_eq!(s.call(&get("/api/a"), 200), Decision::RateLimited);
    assert_eq!(s.call(&get("/api/a").from_ip("10.0.0.2"), 200), Decision::Allowed);
    assert!(enforce::admit(&s.plan, &s.store, &get("/other"), s.clock.now()).is_none());
}

#[test]
fn outcomes_are_classified_from_status_flags_and_details() {
    let ex = |status, flags, details: &str| Exchange { status: Some(status), flags, details: details.into() };
    use breakwater_policy::model::Outcome::*;
    let connect = ex(
        503,
        flags::UPSTREAM_CONNECTION_FAILURE,
        "upstream_reset_before_response_started{remote_connection_failure}",
    );
    assert!(
        connect.is(ConnectFailure) && connect.is(Status5xx) && connect.is(GatewayError) && !connect.is(Reset)
    );
    let reset = ex(503, flags::UPSTREAM_REMOTE_RESET, "upstream_reset_before_response_started{remote_reset}");
    assert!(reset.is(Reset) && !reset.is(ConnectFailure) && !reset.is(Timeout));
    let timeout = ex(504, flags::UPSTREAM_REQUEST_TIMEOUT, "response_timeout");
    assert!(timeout.is(Timeout) && timeout.is(Status5xx) && !timeout.is(Reset));
    let teapot = ex(418, 0, "via_upstream");
    assert!(teapot.is(Status(418)) && !teapot.is(Status5xx));
}

#[test]
fn below_500_the_status_alone_decides_the_outcome() {
    use breakwater_policy::model::Outcome;
    // The filter skips reading flags and details for such responses: they must not matter.
    let with = |status, flags, details: &str| Exchange { status, flags, details: details.into() };
    for outcome in [Outcome::Timeout, Outcome::Reset, Outcome::ConnectFailure] {
        assert!(!with(Some(200), u64::MAX, "response_timeout upstream_reset connection_failure").is(outcome));
        assert!(!with(Some(429), u64::MAX, "").is(outcome));
    }
    assert!(Exchange::status_decides(Some(499)) && !Exchange::status_decides(Some(500)));
    assert!(!Exchange::status_decides(None));
    assert!(with(Some(504), flags::UPSTREAM_REQUEST_TIMEOUT, "").is(Outcome::Timeout));
    assert!(with(Some(503), flags::UPSTREAM_CONNECTION_FAILURE, "").is(Outcome::ConnectFailure));
    assert!(with(None, 0, "upstream_reset_before_response_started{remote_reset}").is(Outcome::Reset));
    assert!(with(Some(200), 0, "").is(Outcome::Status(200)));
}

const EVERY_BLOCK: &str = r#"
version: 1
policies:
  - name: api
    rate_limit: { rate: 1000, burst: 1000 }
    concurrency_limit: { max_in_flight: 100 }
    circuit_breaker: { window: 100, minimum_calls: 20, failure_rate: 50 }
    retry: { max_retries: 2, budget: { percent: 20, min_per_second: 10 } }
"#;

/// The unkeyed state of a policy (rate limit, concurrency, breaker, budget) is one shared value:
/// a request costs one read and one write when admitted, and one of each when it ends.
#[test]
fn unkeyed_state_costs_one_read_and_one_write_per_stream_point() {
    let s = sim_with(EVERY_BLOCK, CountingStore::default());
    for _ in 0..3 {
        let mut a = s.admit(&get("/"));
        assert_eq!((a.decision, s.store.take()), (Decision::Allowed, (1, 1)));
        assert!(a.events.contains(&Event::InFlight(1)), "{:?}", a.events);
        assert_eq!(router_headers(&a).iter().find(|(k, _)| *k == "x-envoy-max-retries").unwrap().1, "2");
        s.finish(&mut a, 200, 1);
        assert_eq!(s.store.take(), (1, 1));
        assert!(a.events.contains(&Event::InFlight(0)), "{:?}", a.events);
        s.clock.advance_ms(1);
    }
    assert_eq!(s.store.inner.len(), 1, "one shared value for the whole policy");
}

/// A keyed concurrency limit between two unkeyed blocks keeps the order rate limit → concurrency
/// → breaker: a rate-limited request takes no slot; a breaker rejection gives the slot back.
#[test]
fn keyed_and_unkeyed_blocks_keep_their_order() {
    let s = sim(r#"
version: 1
policies:
  - name: api
    rate_limit: { rate: 1, per: 1h, burst: 3 }
    concurrency_limit: { max_in_flight: 1, key: ["header:x-user"] }
    circuit_breaker: { window: 4, minimum_calls: 2, failure_rate: 50, open_for: 10s }
"#);
    let alice = get("/").header("x-user", "alice");
    // Two failures open the breaker; each held alice's slot and gave it back at the end.
    assert_eq!(s.call(&alice, 503), Decision::Allowed);
    assert_eq!(s.call(&alice, 503), Decision::Allowed);
    // Open: rejected by the breaker after taking a token and a slot; the slot is given back.
    let open = s.admit(&alice);
    assert_eq!(open.decision, Decision::CircuitOpen);
    assert!(open.events.contains(&Event::InFlight(0)), "{:?}", open.events);
    // The bucket (burst 3) is now empty: rate limited before the concurrency limit is asked.
    let limited = s.admit(&alice);
    assert_eq!(limited.decision, Decision::RateLimited);
    assert!(!limited.events.iter().any(|e| matches!(e, Event::InFlight(_))), "{:?}", limited.events);
}

/// A breaker rejection decided in the same update as the concurrency slot does not keep the slot:
/// many rejected requests leave the in-flight count where it was.
#[test]
fn breaker_rejections_take_no_concurrency_slot() {
    let s = sim(r#"
version: 1
policies:
  - name: api
    concurrency_limit: { max_in_flight: 2 }
    circuit_breaker: { window: 4, minimum_calls: 2, failure_rate: 50, open_for: 10s }
"#);
    assert_eq!(s.call(&get("/"), 503), Decision::Allowed);
    assert_eq!(s.call(&get("/"), 503), Decision::Allowed);
    for _ in 0..10 {
        let a = s.admit(&get("/"));
        assert_eq!(a.decision, Decision::CircuitOpen);
        assert!(!a.events.iter().any(|e| matches!(e, Event::InFlight(_))), "{:?}", a.events);
    }
    s.clock.advance_ms(10_000);
    // Half-open: both probes get a slot (none leaked while open).
    let (mut p1, mut p2) = (s.admit(&get("/")), s.admit(&get("/")));
    assert_eq!((p1.decision, p2.decision), (Decision::Allowed, Decision::Allowed));
    assert!(p2.events.contains(&Event::InFlight(2)), "{:?}", p2.events);
    s.finish(&mut p1, 200, 1);
    s.finish(&mut p2, 200, 1);
}

/// In shadow mode a request the rate limit would reject still goes upstream, so it still gets its
/// retries from the budget.
#[test]
fn shadow_rejections_still_get_retries() {
    let s = sim(r#"
version: 1
policies:
  - name: api
    mode: shadow
    rate_limit: { rate: 1, per: 1h, burst: 1 }
    retry: { max_retries: 1, budget: { percent: 20, min_per_second: 10 } }
"#);
    assert_eq!(s.call(&get("/"), 200), Decision::Allowed);
    let a = s.admit(&get("/"));
    assert_eq!(a.decision, Decision::RateLimited);
    assert_eq!(router_headers(&a).iter().find(|(k, _)| *k == "x-envoy-max-retries").unwrap().1, "1");
}

/// Without shared data, every block of the record applies its failure_mode, and a request that is
/// let through gets no retries.
#[test]
fn a_missing_record_lets_failure_mode_decide_for_every_block() {
    let open = sim_with(EVERY_BLOCK, Broken);
    let a = open.admit(&get("/"));
    assert!(a.forwarded());
    assert_eq!(a.events.iter().filter(|e| **e == Event::StateUnavailable).count(), 4, "{:?}", a.events);
    assert!(!router_headers(&a).iter().any(|(k, _)| *k == "x-envoy-max-retries"));
    let closed =
        sim_with(&EVERY_BLOCK.replace("  - name: api\n", "  - name: api\n    failure_mode: deny\n"), Broken);
    assert_eq!(rejection(&closed.admit(&get("/"))).status, 429);
}

#[test]
fn the_attempt_count_header_is_read_only_when_trusted_and_only_within_the_grant() {
    let policy = |trust: bool| {
        format!(
            "version: 1\ntrust_attempt_count_header: {trust}\npolicies:\n  - name: api\n    retry:\n      max_retries: 2\n      budget: {{ percent: 0, min_per_second: 3 }}\n"
        )
    };
    let untrusted = sim(&policy(false));
    assert!(!untrusted.admit(&get("/")).reads_attempt_count_header(&untrusted.plan));
    let s = sim(&policy(true));
    // 3 retries per second: the first request is granted 2, the second 1, the third none.
    let (two, one, none) = (s.admit(&get("/")), s.admit(&get("/")), s.admit(&get("/")));
    assert_eq!(
        [&two, &one, &none].map(|a| a.reads_attempt_count_header(&s.plan)),
        [true, true, false],
        "a request without retries needs no count"
    );
    let read = |a: &Admitted| {
        ["1", "2", "3", "4", "0", "", "+2", " 2", "2x", "99999999999"].map(|v| a.attempts_from_header(v))
    };
    assert_eq!(read(&two), [Some(1), Some(2), Some(3), None, None, None, None, None, None, None]);
    assert_eq!(read(&one), [Some(1), Some(2), None, None, None, None, None, None, None, None]);
}

#[test]
fn the_outcome_is_needed_only_by_a_breaker_or_a_fallback() {
    let needs = |yaml: &str| {
        let s = sim(yaml);
        let a = s.admit(&get("/"));
        a.needs_outcome(&s.plan)
    };
    let doc = |blocks: &str| format!("version: 1\npolicies:\n  - name: p\n{blocks}");
    assert!(!needs(&doc(
        "    rate_limit: { rate: 5, per: 1s }\n    concurrency_limit: { max_in_flight: 9 }\n"
    )));
    assert!(!needs(&doc("    retry: { max_retries: 2 }\n    timeout: 1s\n")));
    assert!(needs(&doc("    circuit_breaker: {}\n")));
    assert!(needs(&doc("    fallback: { response: { status: 200 } }\n")));
    // Our own rejection passing through response headers: nothing to learn from it.
    let s = sim(&doc("    rate_limit: { rate: 1, per: 1h, burst: 1 }\n    circuit_breaker: {}\n"));
    assert!(s.admit(&get("/")).needs_outcome(&s.plan));
    let rejected = s.admit(&get("/"));
    assert_eq!(rejected.decision, Decision::RateLimited);
    assert!(!rejected.needs_outcome(&s.plan));
}

#[test]
fn the_plan_says_which_request_parts_the_filter_must_read() {
    let reads = |blocks: &str| {
        let p = sim(&format!("version: 1\npolicies:\n  - name: p\n{blocks}")).plan;
        (p.needs_host, p.needs_method, p.needs_client_ip)
    };
    assert_eq!(reads("    rate_limit: { rate: 5, per: 1s }\n"), (false, false, false));
    assert_eq!(reads("    match: { methods: [GET] }\n"), (false, true, false));
    assert_eq!(reads("    retry: {}\n"), (false, true, false));
    assert_eq!(reads("    rate_limit: { rate: 5, key: [method] }\n"), (false, true, false));
    assert_eq!(reads("    match: { hosts: [a.example.com] }\n"), (true, false, false));
    assert_eq!(
        reads("    concurrency_limit: { max_in_flight: 5, key: [host, client_ip] }\n"),
        (true, false, true)
    );
}

proptest::proptest! {
    /// A key's fingerprint computed part by part is the fingerprint of the composed key, so slot
    /// ownership written by a build that composed keys is still recognised.
    #[test]
    fn key_fingerprints_part_by_part_match_the_composed_key(
        kinds in proptest::collection::vec(0u8..5, 0..5),
        values in proptest::collection::vec("[ -~]{0,24}", 5),
        query in proptest::option::of("[a-z=&]{0,8}"),
        seed in (proptest::prelude::any::<u64>(), proptest::prelude::any::<u64>()),
    ) {
        let seed = breakwater_policy::engine::keys::KeySeed(seed.0, seed.1);
        use breakwater_policy::engine::keys::fingerprint;
        use breakwater_policy::model::KeyPart;
        let mut path = format!("/{}", values[3]);
        if let Some(q) = &query {
            path.push('?');
            path.push_str(q);
        }
        let req = SimpleRequest::new(&values[0], &values[1], &path)
            .header("x-a", &values[2])
            .header("x-b", &values[4])
            .from_ip(&values[4]);
        let parts: Vec<KeyPart> = kinds
            .iter()
            .map(|k| match k {
                0 => KeyPart::ClientIp,
                1 => KeyPart::Host,
                2 => KeyPart::Method,
                3 => KeyPart::Path,
                _ => KeyPart::Header(if values[2].len() % 2 == 0 { "x-a" } else { "x-missing" }.into()),
            })
            .collect();
        proptest::prop_assert_eq!(
            enforce::key_fingerprint(seed, &parts, &req),
            fingerprint(seed, &enforce::compose_key(&parts, &req))
        );
    }
}

/// Every counted event lands on the counter of its own name; gauges count nothing.
const QUEUED: &str = "version: 1
policies:
  - name: api
    mode: MODE
    concurrency_limit:
      max_in_flight: 1
      key: KEY
      queue: { max_waiting: 2, max_wait: 1s }
";

fn queued(mode: &str, key: &str) -> Sim {
    sim(&QUEUED.replace("MODE", mode).replace("KEY", key))
}

impl<S: SharedStore> Sim<S> {
    /// A waiting request looks at its line; true once decided.
    fn poll(&self, a: &mut Admitted, req: &Req) -> bool {
        enforce::poll(&self.plan, &self.plan, &self.store, a, self.clock.now(), || req.clone())
    }
}

/// A full limit makes requests wait (up to `max_waiting`, then it rejects); a freed slot goes to
/// the oldest waiter even when a younger one looks first, in the policy's record and per key.
#[test]
fn a_full_limit_queues_and_serves_the_oldest_waiter_first() {
    for key in ["[]", "[\"header:x-tenant\"]"] {
        let s = queued("enforce", key);
        let req = get("/").header("x-tenant", "a");
        let mut held = s.admit(&req);
        assert_eq!(held.decision, Decision::Allowed);
        let (mut older, mut younger) = (s.admit(&req), s.admit(&req));
        assert_eq!((&older.verdict, &younger.verdict), (&Verdict::Wait, &Verdict::Wait));
        assert!(older.events.contains(&Event::Queued) && older.events.contains(&Event::QueueLength(1)));
        assert!(older.waits_until().is_some_and(|t| t == s.clock.now() + 1_000_000_000));
        assert!(younger.behind(&older) && !older.behind(&younger));
        // The line is full.
        assert_eq!(s.admit(&req).decision, Decision::ConcurrencyLimited);
        // Another tenant has its own slot and line.
        if key != "[]" {
            assert_eq!(s.admit(&get("/").header("x-tenant", "b")).decision, Decision::Allowed);
        }
        assert!(!s.poll(&mut younger, &req) && !s.poll(&mut older, &req));
        s.clock.advance_ms(30);
        s.finish(&mut held, 200, 1);
        assert!(!s.poll(&mut younger, &req), "the older waiter is first");
        older.events.clear();
        assert!(s.poll(&mut older, &req));
        assert_eq!((older.decision, older.forwarded()), (Decision::Allowed, true));
        for e in [Event::QueueAdmitted, Event::QueueWaited(30), Event::QueueLength(1), Event::InFlight(1)] {
            assert!(older.events.contains(&e), "{e:?} in {:?}", older.events);
        }
        s.finish(&mut older, 200, 1);
        assert!(s.poll(&mut younger, &req));
        assert_eq!(younger.decision, Decision::Allowed);
    }
}

/// A request that waited `max_wait` in vain gets the block's response and holds nothing; one
/// whose client left frees its place and has no decision.
#[test]
fn waiters_time_out_or_leave() {
    let s = queued("enforce", "[]");
    let req = get("/");
    let mut held = s.admit(&req);
    let mut gone = s.admit(&req);
    let mut late = s.admit(&req);
    gone.events.clear();
    enforce::finish(&s.plan, &s.store, &mut gone, &Exchange::default(), None, s.clock.now());
    assert_eq!(gone.events, vec![Event::QueueAbandoned, Event::QueueLength(1)]);
    s.clock.advance_ms(999);
    assert!(!s.poll(&mut late, &req));
    s.clock.advance_ms(1);
    assert!(s.poll(&mut late, &req));
    assert_eq!((late.decision, rejection(&late).status), (Decision::QueueTimeout, 503));
    assert!(late.events.contains(&Event::Decision(Decision::QueueTimeout)));
    assert!(late.events.contains(&Event::QueueWaited(1000)));
    s.finish(&mut late, 503, 0);
    s.finish(&mut held, 200, 1);
    // Nothing was left behind: one slot, an empty line.
    let mut next = s.admit(&req);
    assert_eq!(next.decision, Decision::Allowed);
    assert_eq!(s.admit(&req).verdict, Verdict::Wait);
    s.finish(&mut next, 200, 1);
}

/// In shadow mode nobody waits: a request that would is counted and goes on.
#[test]
fn shadow_mode_counts_waiters_but_holds_none() {
    for key in ["[]", "[\"header:x-tenant\"]"] {
        let s = queued("shadow", key);
        let req = get("/").header("x-tenant", "a");
        let _held = s.admit(&req);
        let would = s.admit(&req);
        assert!(would.forwarded() && would.events.contains(&Event::Queued), "{key}");
        assert_eq!(would.decision, Decision::Allowed);
        assert!(would.waits_until().is_none());
    }
}

#[test]
fn events_map_to_their_counters() {
    use breakwater_policy::metrics::Counter;
    let cases = [
        (Event::Decision(Decision::Allowed), "allowed", 1),
        (Event::Decision(Decision::RateLimited), "rate_limited", 1),
        (Event::Decision(Decision::ConcurrencyLimited), "concurrency_limited", 1),
        (Event::Decision(Decision::CircuitOpen), "circuit_open", 1),
        (Event::Fallback, "fallback", 1),
        (Event::Retried(3), "retried", 3),
        (Event::BudgetExhausted, "budget_exhausted", 1),
        (Event::StateUnavailable, "state_unavailable", 1),
        (Event::Decision(Decision::QueueTimeout), "queue_timeout", 1),
        (Event::Queued, "queued", 1),
        (Event::QueueAdmitted, "queue_admitted", 1),
        (Event::QueueAbandoned, "queue_abandoned", 1),
    ];
    for (event, name, by) in cases {
        assert_eq!(event.counter(), Some((Counter::parse(name).unwrap(), by)), "{name}");
    }
    assert_eq!(Event::InFlight(2).counter(), None);
    assert_eq!(Event::QueueLength(2).counter(), None);
    assert_eq!(Event::QueueWaited(2).counter(), None);
}

/// `abort.reset`: the rejection resets the stream; the compiled document (which writes the
/// default reply out) loads back in the filter.
#[test]
fn an_abort_with_a_reset_compiles_and_resets() {
    let yaml = "version: 1\npolicies:\n  - name: f\n    fault: { abort: { percent: 100, reset: true } }\n";
    let doc = breakwater_policy::load(yaml).unwrap().document;
    let compiled = breakwater_policy::compile(&doc);
    assert!(breakwater_policy::load_config(compiled.as_bytes()).is_ok(), "{compiled}");
    let s = sim(yaml);
    let a = s.admit(&get("/"));
    assert_eq!((a.decision, rejection(&a).reset), (Decision::FaultAborted, true));
}

/// A reset counted in the breaker is a reset, whatever status a request header asked for (a
/// reset sends none). Found by review: with `x-breakwater-fault-abort: 429` the breaker recorded
/// a 429, a success, and never opened.
#[test]
fn an_injected_reset_counts_as_a_reset_whatever_the_header_asked() {
    let s = sim("version: 1
policies:
  - name: f
    circuit_breaker: { window: 4, minimum_calls: 2, failure_rate: 50, failure_on: [reset] }
    fault: { abort: { percent: 100, reset: true, count_in_breaker: true }, headers: true }
");
    let req = get("/").header("x-breakwater-fault-abort", "429");
    let mut opened = false;
    for _ in 0..2 {
        let mut a = s.admit(&req);
        assert_eq!((a.decision, rejection(&a).reset), (Decision::FaultAborted, true));
        enforce::finish(&s.plan, &s.store, &mut a, &Exchange::default(), None, s.clock.now());
        opened |=
            a.events.iter().any(|e| matches!(e, Event::Breaker(t) if t.to.state() == BreakerState::Open));
    }
    assert!(opened, "two resets of two calls open the breaker");
}

const ADAPTIVE: &str = "
version: 1
policies:
  - name: api
    concurrency_limit:
      adaptive: { min: 2, max: 200, initial: 10, interval: 100ms, probe_samples: 5 }
      key: KEY
      QUEUE
";

/// A closed loop of `clients` against an upstream that serves `knee` at once in `base_ms`; a
/// request that finds k > knee in it takes `base_ms · k / knee`. Runs `ms` milliseconds in 1 ms
/// steps (a waiter looks at its line each step, as the filter's tick has it; a refused client
/// tries again 10 ms later); at the end, every request still out is finished. Returns, for each
/// second, the limit the adaptive events showed at its end and the most requests in the upstream
/// during it.
fn closed_loop(s: &Sim, req: &Req, clients: usize, knee: u64, base_ms: u64, ms: u64) -> Vec<(u32, u64)> {
    closed_loop_from(s, req, clients, (knee, base_ms), ms, &std::cell::Cell::new(0))
}

/// As [`closed_loop`], with the last limit the adaptive events showed kept in `limit` (across
/// calls: a phase in which the limit never changes shows the one before it).
fn closed_loop_from(
    s: &Sim,
    req: &Req,
    clients: usize,
    (knee, base_ms): (u64, u64),
    ms: u64,
    limit: &std::cell::Cell<u32>,
) -> Vec<(u32, u64)> {
    struct Client {
        a: Option<Admitted>,
        at: u64,
    }
    let mut clients: Vec<Client> = (0..clients).map(|_| Client { a: None, at: 0 }).collect();
    let (mut seconds, mut most) = (Vec::new(), 0);
    let seen = |a: &mut Admitted| {
        for e in a.events.drain(..) {
            if let Event::Adaptive(r) = e {
                limit.set(r.limit);
            }
        }
    };
    let mut upstream = 0u64;
    for t in 0..ms {
        for c in &mut clients {
            if c.at > t {
                continue;
            }
            match &mut c.a {
                Some(a) if a.forwarded() => {
                    a.answered(s.clock.now());
                    s.finish(a, 200, 1);
                    seen(a);
                    c.a = None;
                    upstream -= 1;
                }
                Some(a) => {
                    if s.poll(a, req) && a.forwarded() {
                        upstream += 1;
                        c.at = t + base_ms * upstream.max(knee) / knee;
                    }
                    seen(a);
                    continue;
                }
                None => {}
            }
            let mut a = s.admit(req);
            seen(&mut a);
            if a.forwarded() {
                upstream += 1;
                c.at = t + base_ms * upstream.max(knee) / knee;
            } else if a.verdict != Verdict::Wait {
                c.at = t + 10;
                continue;
            }
            c.a = Some(a);
        }
        most = most.max(upstream);
        s.clock.advance_ms(1);
        if (t + 1) % 1000 == 0 {
            seconds.push((limit.get(), std::mem::take(&mut most)));
        }
    }
    for c in &mut clients {
        if let Some(a) = c.a.as_mut() {
            enforce::finish(&s.plan, &s.store, a, &Exchange::default(), None, s.clock.now());
        }
    }
    seconds
}

/// The adaptive limit finds an upstream's knee: it probes the unloaded latency at `min`, then
/// settles where latency meets the tolerance, just above the knee; per key and in the record,
/// with or without a queue (a queue keeps the limit busy as the closed loop's clients do).
#[test]
fn an_adaptive_limit_settles_near_the_upstreams_knee() {
    for key in ["[]", "[\"header:x-tenant\"]"] {
        for queue in ["", "queue: { max_waiting: 100, max_wait: 5s }"] {
            let s = sim(&ADAPTIVE.replace("KEY", key).replace("QUEUE", queue));
            let req = get("/").header("x-tenant", "a");
            let seconds = closed_loop(&s, &req, 80, 20, 50, 15_000);
            // The knee is 20; the tolerance (25%) allows 25, and √25 of headroom over that.
            assert!(
                seconds[5..].iter().all(|(limit, most)| (20..=32).contains(limit) && *most <= 32),
                "{key} {queue}: (limit, most in the upstream) by second: {seconds:?}"
            );
        }
    }
}

/// The limit follows a slowed upstream down and comes back up; the gauges' reading starts with
/// the first request (at `min`, probing).
#[test]
fn an_adaptive_limit_follows_the_upstream_and_reports_its_readings() {
    let s = sim(&ADAPTIVE.replace("KEY", "[]").replace("QUEUE", ""));
    let req = get("/");
    let mut first = s.admit(&req);
    let reading = first.events.iter().find_map(|e| match e {
        Event::Adaptive(r) => Some(*r),
        _ => None,
    });
    let r = reading.expect("the first request starts the controller");
    assert_eq!((r.limit, r.probing, r.min_rtt), (2, true, 0));
    enforce::finish(&s.plan, &s.store, &mut first, &Exchange::default(), None, s.clock.now());
    let last = |v: &[(u32, u64)]| v.last().unwrap().0;
    let limit = std::cell::Cell::new(r.limit);
    let fast = closed_loop_from(&s, &req, 100, (40, 20), 10_000, &limit);
    assert!(last(&fast) >= 40, "{fast:?}");
    let slow = closed_loop_from(&s, &req, 100, (5, 100), 10_000, &limit);
    assert!(last(&slow) < 20, "a slowed upstream lowers the limit: {fast:?} then {slow:?}");
    let again = closed_loop_from(&s, &req, 100, (40, 20), 70_000, &limit);
    assert!(last(&again) >= 40, "and it recovers: {again:?}");
}

/// A request that ends without response headers (client gone, reset), one the filter answers, and
/// one answered while an injected delay held it give no sample; one answered by the upstream does.
/// (One sample ends the measurement of the min RTT here: a sample taken shows as a reading.)
#[test]
fn only_answered_upstream_requests_are_latency_samples() {
    let yaml = "version: 1
policies:
  - name: api
    concurrency_limit: { adaptive: { min: 2, probe_samples: 1 } }
    FAULT
";
    let reading = |a: &Admitted| a.events.iter().any(|e| matches!(e, Event::Adaptive(_)));
    let s = sim(&yaml.replace("FAULT", ""));
    let req = get("/");
    let mut gone = s.admit(&req);
    assert!(gone.times_answer());
    s.clock.advance_ms(5);
    gone.events.clear();
    enforce::finish(&s.plan, &s.store, &mut gone, &Exchange::default(), None, s.clock.now());
    assert_eq!(gone.events, vec![Event::InFlight(0)], "no sample: no reading");
    let mut answered = s.admit(&req);
    s.clock.advance_ms(5);
    answered.answered(s.clock.now());
    answered.events.clear();
    s.finish(&mut answered, 200, 1);
    assert!(reading(&answered), "one sample ends the measurement: {:?}", answered.events);

    // Answered by the filter (an injected abort): not even asked for the time.
    let s = sim(&yaml.replace("FAULT", "fault: { abort: { percent: 100 } }"));
    let mut aborted = s.admit(&req);
    assert!(!aborted.forwarded() && !aborted.times_answer());
    aborted.events.clear();
    s.finish(&mut aborted, 503, 0);
    assert!(!reading(&aborted), "{:?}", aborted.events);

    // Answered while an injected delay holds it (a local reply of Envoy's): no sample.
    let s = sim(&yaml.replace("FAULT", "fault: { delay: { percent: 100, duration: 1s } }"));
    let mut held = s.admit(&req);
    assert!(held.delay.is_some());
    s.clock.advance_ms(200);
    held.answered(s.clock.now());
    held.events.clear();
    s.finish(&mut held, 504, 0);
    assert!(!reading(&held), "{:?}", held.events);

    // Under a fixed limit a request is timed too (the latency histogram), without a sample.
    let fixed = sim("version: 1\npolicies:\n  - name: api\n    concurrency_limit: { max_in_flight: 1 }\n");
    let mut taken = fixed.admit(&req);
    assert!(taken.times_answer());
    fixed.clock.advance_ms(7);
    taken.answered(fixed.clock.now());
    taken.events.clear();
    fixed.finish(&mut taken, 200, 1);
    assert_eq!(taken.events, vec![Event::UpstreamLatency(7), Event::InFlight(0)]);
}

/// The upstream latency runs from when the request went on: after its wait in a queue, its
/// injected delay, or its call to the rate-limit service; a request answered by the filter, or
/// while an injected delay holds it, has none.
#[test]
fn upstream_latency_leaves_out_what_the_filter_held() {
    let s = sim("version: 1
policies:
  - name: q
    match: { path_prefix: /q }
    concurrency_limit: { max_in_flight: 1, queue: { max_waiting: 1, max_wait: 1s } }
  - name: d
    match: { path_prefix: /d }
    fault: { delay: { percent: 100, duration: 100ms } }
");
    let latency = |a: &Admitted| {
        a.events.iter().find_map(|e| match e {
            Event::UpstreamLatency(ms) => Some(*ms),
            _ => None,
        })
    };
    let q = get("/q");
    let mut first = s.admit(&q);
    let mut waiter = s.admit(&q);
    s.clock.advance_ms(40);
    first.answered(s.clock.now());
    s.finish(&mut first, 200, 1);
    assert_eq!(latency(&first), Some(40));
    assert!(s.poll(&mut waiter, &q));
    s.clock.advance_ms(15);
    waiter.answered(s.clock.now());
    waiter.events.clear();
    s.finish(&mut waiter, 200, 1);
    assert_eq!(latency(&waiter), Some(15), "the wait is not the upstream's");
    let mut delayed = s.admit(&get("/d"));
    s.clock.advance_ms(100);
    enforce::delay_over(&s.plan, &s.store, &mut delayed, s.clock.now());
    s.clock.advance_ms(9);
    delayed.answered(s.clock.now());
    delayed.events.clear();
    s.finish(&mut delayed, 200, 1);
    assert_eq!(latency(&delayed), Some(9), "nor the delay");
}
