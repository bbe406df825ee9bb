//! Fidelity: the same traffic through real Envoy 1.40 and through host-test (our wasmtime host),
//! compared and printed.
//!
//! 1. Deterministic sequences (1 worker, one client, requests one after another): every response
//!    (status, body, the headers a client would look at) and the number of attempts that reached
//!    the upstream must be identical, and so must every breakwater counter and gauge at the end
//!    (but an adaptive limit's latency gauges: real time in Envoy, the replay's in host-test).
//!    host-test replays each request at the moment (since the first request) it reached Envoy, so
//!    time-dependent rules (refill, open_for) see the same clock.
//! 2. Counts under load (2 workers, 4 clients as fast as they can): the admitted count of a rate
//!    limit in Envoy and in a simulation of the same duration and offered rate must agree within 1%.
//!
//! The upstream is scripted by request headers in both (`x-test-status`, `x-test-script`,
//! `x-test-delay-ms`, `x-test-reset`; see `breakwater_e2e::upstream`), so both see the same
//! upstream behaviour. Runs without libtest (`harness = false`) so the comparison is always printed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use breakwater_e2e::{Client, Envoy, Upstream, repo};
use breakwater_host_test::router::{Attempt, route};
use breakwater_host_test::state::HeaderMap;
use breakwater_host_test::{Begun, FILTER_WASM, Host, Request, Vm, World};
use breakwater_policy::metrics::{self, Counter, Gauge};

/// One document for all sequences: each case has its own path prefix and policy.
const DOCUMENT: &str = r#"
version: 1
debug_headers: true
trust_attempt_count_header: true
policies:
  - name: limited
    match: { path_prefix: /limited }
    rate_limit: { rate: 1, per: 1m, burst: 3 }
  - name: custom
    match: { path_prefix: /custom }
    rate_limit: { rate: 1, per: 1m, burst: 1, response: { status: 429, body: "slow down" } }
  - name: keyed
    match: { path_prefix: /keyed }
    rate_limit: { rate: 1, per: 1m, burst: 1, key: ["header:x-api-key"] }
  - name: retried
    match: { path_prefix: /retried }
    retry: { max_retries: 2, retry_on: [5xx], methods: [GET] }
  - name: per-try
    match: { path_prefix: /per-try }
    retry: { max_retries: 1, retry_on: [5xx], per_try_timeout: 100ms }
  - name: deadline
    match: { path_prefix: /deadline }
    timeout: 200ms
  - name: budget
    match: { path_prefix: /budget }
    retry: { max_retries: 3, retry_on: [5xx], budget: { percent: 0, min_per_second: 2 } }
  - name: breaker
    match: { path_prefix: /breaker }
    circuit_breaker: { window: 4, minimum_calls: 4, failure_rate: 50, open_for: 1s, half_open_calls: 1 }
  - name: fallback
    match: { path_prefix: /fallback }
    fallback: { on: [5xx], response: { status: 200, headers: { x-fallback: "yes" }, body: '{"items":[]}' } }
  - name: shadow
    match: { path_prefix: /shadow }
    mode: shadow
    rate_limit: { rate: 1, per: 1m, burst: 2 }
  - name: concurrency
    match: { path_prefix: /concurrency }
    concurrency_limit: { max_in_flight: 1 }
  - name: faulted
    match: { path_prefix: /faulted }
    fault: { abort: { percent: 50, response: { status: 503, body: "injected" } } }
  - name: delayed
    match: { path_prefix: /delayed }
    fault: { delay: { percent: 100, duration: 150ms }, abort: { percent: 50 } }
  - name: queued
    match: { path_prefix: /queued }
    concurrency_limit: { max_in_flight: 1, queue: { max_waiting: 1, max_wait: 300ms } }
  - name: lined
    match: { path_prefix: /lined }
    concurrency_limit: { max_in_flight: 1, queue: { max_waiting: 1, max_wait: 5s } }
  - name: adaptive
    match: { path_prefix: /adaptive }
    concurrency_limit: { adaptive: { min: 1, initial: 2, probe_samples: 2, interval: 60s } }
"#;

/// Requests under `/delayed` are held 150 ms by the filter's timer: Envoy's 1 ms tick fires a
/// few ms late (docs/envoy-facts.md), the client's time adds the request's own, and a loaded
/// machine more (so Envoy's side is only bounded by a second: a stream never let go fails it);
/// host-test's virtual clock lets them go at the first tick at or after 150 ms.
const DELAY: Duration = Duration::from_millis(150);
/// Requests under `/queued/late` wait out the queue's `max_wait` on the same timer.
const QUEUE_WAIT: Duration = Duration::from_millis(300);
const ENVOY_DELAY_SLACK: Duration = Duration::from_millis(1000);
const HOST_DELAY_SLACK: Duration = Duration::from_millis(1);

/// The response headers compared (besides status and body).
const HEADERS: [&str; 7] = [
    "content-type",
    "x-envoy-attempt-count",
    "retry-after",
    "ratelimit-policy",
    "x-breakwater-policy",
    "x-breakwater-decision",
    "x-fallback",
];

#[derive(Clone, Copy)]
enum Step {
    Send(&'static str, &'static str, &'static [(&'static str, &'static str)]),
    /// Starts a request that stays in the upstream (give it a delay) until `Release`.
    Hold(&'static str, &'static [(&'static str, &'static str)]),
    Release,
    /// Starts a request that waits in a queue (the slot is held) until `Admit`, after `Release`.
    Queue(&'static str),
    Admit,
    Wait(u64),
}
use Step::*;

fn cases() -> Vec<(&'static str, Vec<Step>)> {
    let get = |path| Send("GET", path, &[]);
    vec![
        ("rate limit: burst, then 429", vec![get("/limited"); 5]),
        ("own rejection without a content-type", vec![get("/custom"); 2]),
        (
            "rate limit per key",
            vec![
                Send("GET", "/keyed", &[("x-api-key", "a")]),
                Send("GET", "/keyed", &[("x-api-key", "a")]),
                Send("GET", "/keyed", &[("x-api-key", "b")]),
                get("/keyed"),
            ],
        ),
        (
            "retries by the router",
            vec![
                Send("GET", "/retried/1", &[("x-test-script", "503,503,200")]),
                Send("GET", "/retried/2", &[("x-test-script", "503,503,503,200")]),
                Send("GET", "/retried/3", &[("x-test-script", "reset,200")]),
                Send("POST", "/retried/4", &[("x-test-script", "503,200")]),
                Send("GET", "/retried/5", &[("x-test-status", "404")]),
            ],
        ),
        (
            "client x-envoy-* headers are stripped",
            vec![Send(
                "GET",
                "/none",
                &[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "3"), ("x-test-script", "503,200")],
            )],
        ),
        ("per-try timeout", vec![Send("GET", "/per-try", &[("x-test-delay-ms", "300")])]),
        (
            "route timeout",
            vec![
                Send("GET", "/deadline/slow", &[("x-test-delay-ms", "400")]),
                Send("GET", "/deadline/fast", &[]),
            ],
        ),
        (
            "retry budget",
            vec![
                Send("GET", "/budget/1", &[("x-test-status", "503")]),
                Send("GET", "/budget/2", &[("x-test-status", "503")]),
            ],
        ),
        (
            "breaker: open, fail fast, probe, close",
            vec![
                Send("GET", "/breaker", &[("x-test-status", "503")]),
                Send("GET", "/breaker", &[("x-test-status", "200")]),
                Send("GET", "/breaker", &[("x-test-status", "503")]),
                Send("GET", "/breaker", &[("x-test-status", "503")]),
                get("/breaker"),
                get("/breaker"),
                Wait(1_200),
                get("/breaker"),
                get("/breaker"),
            ],
        ),
        (
            "fallback replaces upstream failures",
            vec![
                Send("GET", "/fallback", &[("x-test-status", "503")]),
                Send("GET", "/fallback", &[("x-test-reset", "1")]),
                Send("GET", "/fallback", &[("x-test-status", "404")]),
            ],
        ),
        ("shadow mode counts, rejects nothing", vec![get("/shadow"); 4]),
        ("injected aborts: every other request, exactly", vec![get("/faulted"); 4]),
        ("injected delay, then every other one aborted", vec![get("/delayed"); 2]),
        (
            "concurrency limit",
            vec![
                Hold("/concurrency/slow", &[("x-test-delay-ms", "500")]),
                get("/concurrency/fast"),
                Release,
                get("/concurrency/fast"),
            ],
        ),
        (
            "queue: waits out max_wait, then the block's reply",
            vec![
                Hold("/queued/slow", &[("x-test-delay-ms", "600")]),
                get("/queued/late"),
                Release,
                get("/queued/free"),
            ],
        ),
        (
            "queue: admitted when the slot comes back",
            vec![Hold("/lined/slow", &[("x-test-delay-ms", "300")]), Queue("/lined/waits"), Release, Admit],
        ),
        (
            "adaptive limit: min while it measures the min RTT, then the initial limit",
            vec![
                Hold("/adaptive/slow", &[("x-test-delay-ms", "300")]),
                get("/adaptive/over"),
                Release,
                get("/adaptive/ends-the-measurement"),
                Hold("/adaptive/slow", &[("x-test-delay-ms", "300")]),
                get("/adaptive/second-slot"),
                Release,
            ],
        ),
    ]
}

/// What a client saw for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    status: u16,
    body: String,
    headers: Vec<String>,
    /// Attempts that reached the upstream.
    hits: u64,
    /// For requests the filter delays: whether the answer came after the delay, within the
    /// timer's slack.
    on_time: Option<bool>,
}

impl Seen {
    fn new(status: u16, body: String, header: impl Fn(&str) -> Option<String>, hits: u64) -> Seen {
        let headers = HEADERS.iter().filter_map(|h| header(h).map(|v| format!("{h}: {v}"))).collect();
        Seen { status, body, headers, hits, on_time: None }
    }

    /// Marks a request the filter holds for a known time (a delay, a wait out of `max_wait`):
    /// answered between that time and that time plus `slack`.
    fn timed(mut self, path: &str, took: Duration, slack: Duration) -> Seen {
        let held = if path.starts_with("/delayed") {
            DELAY
        } else if path.starts_with("/queued/late") {
            QUEUE_WAIT
        } else {
            return self;
        };
        self.on_time = Some(took >= held && took <= held + slack);
        self
    }

    fn short(&self) -> String {
        let body: String = self.body.trim_end().chars().take(38).collect();
        let timing = match self.on_time {
            Some(true) => " held as long as due",
            Some(false) => " NOT held as long as due",
            None => "",
        };
        format!("{} ×{} {body:?}{timing}", self.status, self.hits)
    }
}

/// A request as sent, and when it reached Envoy (since the first one).
struct Sent {
    case: usize,
    label: String,
    at: Duration,
    seen: Seen,
}

fn send_to_envoy(
    c: &mut Client,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> breakwater_e2e::Response {
    let h: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    c.send(method, path, &h)
}

fn envoy_seen(r: &breakwater_e2e::Response, hits: u64) -> Seen {
    Seen::new(r.status, r.body.clone(), |h| r.header(h).map(str::to_string), hits)
}

/// Runs every case against real Envoy (1 worker), recording what each request got and when.
fn run_envoy(envoy: &Envoy, upstream: &Upstream, cases: &[(&str, Vec<Step>)]) -> Vec<Sent> {
    let mut c = envoy.client();
    let mut out = Vec::new();
    let start = Instant::now();
    for (case, (_, steps)) in cases.iter().enumerate() {
        let mut held = None;
        let mut waiting = None;
        for step in steps {
            match *step {
                Send(method, path, headers) => {
                    let at = start.elapsed();
                    let before = upstream.total();
                    let r = send_to_envoy(&mut c, method, path, headers);
                    let took = start.elapsed() - at;
                    let seen = envoy_seen(&r, upstream.total() - before).timed(path, took, ENVOY_DELAY_SLACK);
                    out.push(Sent { case, label: format!("{method} {path}"), at, seen });
                }
                Hold(path, headers) => {
                    let at = start.elapsed();
                    let before = upstream.total();
                    let mut other = envoy.client();
                    let h: Vec<(String, String)> =
                        headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                    let thread = std::thread::spawn(move || {
                        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        send_to_envoy(&mut other, "GET", path, &h)
                    });
                    envoy.wait_for("the held request to reach the upstream", Duration::from_secs(10), || {
                        upstream.in_flight() == 1
                    });
                    held = Some((path, at, upstream.total() - before, thread));
                }
                Release => {
                    let (path, at, hits, thread) = held.take().expect("Release follows Hold");
                    let r = thread.join().unwrap();
                    out.push(Sent {
                        case,
                        label: format!("GET {path} (held)"),
                        at,
                        seen: envoy_seen(&r, hits),
                    });
                }
                Queue(path) => {
                    let at = start.elapsed();
                    let before = upstream.total();
                    let mut other = envoy.client();
                    let thread = std::thread::spawn(move || send_to_envoy(&mut other, "GET", path, &[]));
                    let policy = path.trim_start_matches('/').split('/').next().unwrap_or_default();
                    envoy.wait_for("the request to wait in the queue", Duration::from_secs(10), || {
                        envoy.gauge(policy, Gauge::QueueLength) == 1
                    });
                    waiting = Some((path, at, before, thread));
                }
                Admit => {
                    let (path, at, before, thread) = waiting.take().expect("Admit follows Queue");
                    let r = thread.join().unwrap();
                    out.push(Sent {
                        case,
                        label: format!("GET {path} (queued)"),
                        at,
                        seen: envoy_seen(&r, upstream.total() - before),
                    });
                }
                Wait(ms) => std::thread::sleep(Duration::from_millis(ms)),
            }
        }
    }
    out
}

/// The test upstream's behaviour (tests/src/upstream.rs) for attempt `k` of a request.
fn scripted(headers: &HeaderMap, k: u32) -> Attempt {
    let get =
        |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    let mut status = get("x-test-status").unwrap_or_else(|| "200".into());
    if let Some(script) = get("x-test-script") {
        let steps: Vec<&str> = script.split(',').map(str::trim).collect();
        status = steps.get(k as usize - 1).or(steps.last()).unwrap_or(&"200").to_string();
    }
    let delay_ns = get("x-test-delay-ms").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1_000_000;
    let latency_ns = delay_ns.max(200_000);
    if status == "reset" || get("x-test-reset").as_deref() == Some("1") {
        return Attempt::Reset { after_ns: latency_ns };
    }
    let path = get(":path").unwrap_or_default();
    let body = format!("upstream {path} attempt {k}\n").into_bytes();
    Attempt::Response {
        status: status.parse().unwrap_or(500),
        headers: vec![
            ("content-type".into(), b"text/plain".to_vec()),
            ("content-length".into(), body.len().to_string().into_bytes()),
            ("x-upstream-attempt".into(), k.to_string().into_bytes()),
        ],
        body,
        latency_ns,
    }
}

const START_NS: u64 = 1_700_000_000_000_000_000;

fn host() -> Host {
    Host::from_workspace().unwrap_or_else(|e| panic!("{e:#}"))
}

fn compiled(document: &str) -> Vec<u8> {
    breakwater_policy::compile(&breakwater_policy::load(document).unwrap().document).into_bytes()
}

fn host_request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
    let mut req = Request::get("localhost", path);
    req.method = method.into();
    for (k, v) in headers {
        req = req.header(k, v.as_bytes());
    }
    req
}

/// Through the router with the scripted upstream; returns the outcome and how many attempts
/// reached the upstream.
fn upstream_side(world: &World, forwarded: &HeaderMap) -> (breakwater_host_test::UpstreamAnswer, u64) {
    let mut hits = 0;
    let mut headers = forwarded.clone();
    let up = route(
        &mut headers,
        |k, _, h| {
            let a = scripted(h, k);
            if a != Attempt::ConnectFailure {
                hits += 1;
            }
            a
        },
        || world.next_random(),
    );
    (up, hits)
}

fn host_seen(r: &breakwater_host_test::ClientResponse, hits: u64) -> Seen {
    Seen::new(r.status, String::from_utf8_lossy(&r.body).into_owned(), |h| r.header(h), hits)
}

/// Replays the cases in host-test, each request at the time it reached Envoy.
fn run_host(world: &Rc<World>, vm: &mut Vm, cases: &[(&str, Vec<Step>)], times: &[Duration]) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut at = times.iter();
    for (_, steps) in cases {
        let mut held = None;
        let mut waiting = None;
        for step in steps {
            match *step {
                Send(method, path, headers) => {
                    world.clock_ns.set(START_NS + at.next().unwrap().as_nanos() as u64);
                    let req = host_request(method, path, headers);
                    let mut hits = 0;
                    let sent = world.clock_ns.get();
                    let r = vm
                        .request(&req, |fwd| {
                            let (up, n) = upstream_side(world, fwd);
                            hits = n;
                            up
                        })
                        .unwrap();
                    let took = Duration::from_nanos(world.clock_ns.get() - sent);
                    out.push(host_seen(&r, hits).timed(path, took, HOST_DELAY_SLACK));
                }
                Hold(path, headers) => {
                    world.clock_ns.set(START_NS + at.next().unwrap().as_nanos() as u64);
                    match vm.begin(&host_request("GET", path, headers)).unwrap() {
                        Begun::Forwarded { stream } => {
                            held = Some((stream, vm.forwarded(stream).cloned().unwrap_or_default()))
                        }
                        other => panic!("the held request was not forwarded: {other:?}"),
                    }
                }
                Release => {
                    let (stream, headers) = held.take().expect("Release follows Hold");
                    let (up, hits) = upstream_side(world, &headers);
                    let r = vm.complete(stream, Some(up)).unwrap();
                    out.push(host_seen(&r, hits));
                }
                Queue(path) => {
                    world.clock_ns.set(START_NS + at.next().unwrap().as_nanos() as u64);
                    match vm.begin(&host_request("GET", path, &[])).unwrap() {
                        Begun::Paused { stream } => waiting = Some(stream),
                        other => panic!("the queued request did not wait: {other:?}"),
                    }
                }
                Admit => {
                    // The slot is back: the waiter's worker lets it go at its next tick.
                    let stream = waiting.take().expect("Admit follows Queue");
                    let woken = (0..10_000)
                        .find_map(|_| {
                            world.clock_ns.set(world.clock_ns.get() + 1_000_000);
                            vm.tick().unwrap();
                            vm.take_woken().into_iter().find(|b| b.stream() == Some(stream))
                        })
                        .expect("the queued request is let go");
                    let (r, hits) = match woken {
                        Begun::Forwarded { stream } => {
                            let headers = vm.forwarded(stream).cloned().unwrap_or_default();
                            let (up, hits) = upstream_side(world, &headers);
                            (vm.complete(stream, Some(up)).unwrap(), hits)
                        }
                        other => (vm.complete(other.stream().unwrap(), None).unwrap(), 0),
                    };
                    out.push(host_seen(&r, hits));
                }
                Wait(_) => {}
            }
        }
    }
    out
}

/// Every breakwater stat of the document's policies, as Envoy and as host-test have them.
fn stats(policies: &[String]) -> Vec<String> {
    let mut names = Vec::new();
    for p in policies {
        names.extend(Counter::ALL.map(|c| metrics::counter_name(p, c)));
        // An adaptive limit's latencies are real time in Envoy and the replay's virtual time in
        // host-test (the cases keep them from changing the limit: its interval is a minute).
        let timed = [Gauge::MinRttMs, Gauge::SampleRttMs];
        names
            .extend(Gauge::ALL.into_iter().filter(|g| !timed.contains(g)).map(|g| metrics::gauge_name(p, g)));
    }
    names
}

fn sequences(host: &Host) -> usize {
    let cases = cases();
    let upstream = Upstream::start();
    let envoy = Envoy::start_workers(DOCUMENT, upstream.port(), 1);
    let sent = run_envoy(&envoy, &upstream, &cases);

    let world = World::new(START_NS, 7);
    let mut vm = host.vm(world.clone(), 0).unwrap();
    assert!(vm.configure(&compiled(DOCUMENT)).unwrap(), "{:?}", world.logs.borrow());
    // In step order (a held request is recorded when it is released, after the steps that
    // followed it; each step's time was taken as it began, so the order of steps is the order
    // of times).
    let mut times: Vec<Duration> = sent.iter().map(|s| s.at).collect();
    times.sort();
    let replayed = run_host(&world, &mut vm, &cases, &times);

    println!("\n== Deterministic sequences: real Envoy 1.40 (1 worker) vs host-test ==");
    println!("status ×attempts-in-upstream \"body\"; every compared header listed on a difference\n");
    let mut differences = 0;
    let mut last_case = usize::MAX;
    for (s, h) in sent.iter().zip(&replayed) {
        if s.case != last_case {
            println!("{}", cases[s.case].0);
            last_case = s.case;
        }
        let same = s.seen == *h;
        println!(
            "  {:<32} {:>7.1}ms  envoy {:<48} host {}",
            s.label,
            s.at.as_secs_f64() * 1e3,
            s.seen.short(),
            { if same { "same".to_string() } else { h.short() } }
        );
        if !same {
            differences += 1;
            println!("      DIFFERENT\n      envoy: {:?}\n      host:  {:?}", s.seen, h);
        }
    }
    // Envoy updates stats when streams end (after the client has its answer): wait until they
    // agree, or report the difference.
    let document = breakwater_policy::load(DOCUMENT).unwrap().document;
    let names = stats(&document.policies.iter().map(|p| p.name.clone()).collect::<Vec<_>>());
    let host_stats: Vec<u64> = names.iter().map(|n| world.metric(n).unwrap_or(0)).collect();
    let envoy_stats = || names.iter().map(|n| envoy.stat(&format!("wasmcustom.{n}"))).collect::<Vec<u64>>();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = envoy_stats();
    while seen != host_stats && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        seen = envoy_stats();
    }
    let nonzero = names.iter().zip(&seen).zip(&host_stats).filter(|((_, e), h)| **e != 0 || **h != 0).count();
    println!("\nstats: {} breakwater stats compared ({nonzero} non-zero)", names.len());
    for ((n, e), h) in names.iter().zip(&seen).zip(&host_stats) {
        if e != h {
            differences += 1;
            println!("  DIFFERENT {n}: envoy {e}, host {h}");
        }
    }
    println!("requests: {} compared, {differences} differences", sent.len());
    differences
}

/// The load case's limit, per API key: burst + rate·t is what each key should get.
const LOAD_RATE: u64 = 200;
const LOAD_BURST: u64 = 20;
const LOAD_KEYS: [&str; 2] = ["k1", "k2"];

/// Counts under load: 2 workers, 4 clients (2 per API key) sending back to back for 3 s through
/// real Envoy; then a simulation of the same span at the same offered rate. Admitted counts per key
/// must agree within 1% (and both are shown against burst + rate·t).
fn counts(host: &Host) -> usize {
    let document = format!(
        "version: 1\npolicies:\n  - name: load\n    rate_limit: {{ rate: {LOAD_RATE}, per: 1s, burst: {LOAD_BURST}, key: [\"header:x-api-key\"] }}\n"
    );
    let upstream = Upstream::start();
    let envoy = Envoy::start_workers(&document, upstream.port(), 2);
    let run_for = Duration::from_secs(3);
    let start = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let mut c = envoy.client();
            let key = LOAD_KEYS[i % 2];
            std::thread::spawn(move || {
                let (mut sent, mut admitted, mut first, mut last) = (0u64, 0u64, None, Duration::ZERO);
                while start.elapsed() < run_for {
                    let at = start.elapsed();
                    first.get_or_insert(at);
                    last = at;
                    sent += 1;
                    if c.get("/load", &[("x-api-key", key)]).status == 200 {
                        admitted += 1;
                    }
                }
                (key, sent, admitted, first.unwrap_or_default(), last)
            })
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    let first = results.iter().map(|r| r.3).min().unwrap_or_default();
    let last = results.iter().map(|r| r.4).max().unwrap_or_default();
    let span = last - first;
    let sent: u64 = results.iter().map(|r| r.1).sum();
    let envoy_admitted = |key: &str| results.iter().filter(|r| r.0 == key).map(|r| r.2).sum::<u64>();

    // The same span and offered rate per key in the simulation (2 workers, one generator per key).
    let per_key_rate = (sent as f64 / span.as_secs_f64().max(1e-3) / 2.0).round() as u64;
    let mut scenario = format!(
        "name: fidelity load\nworkers: 2\nduration: {}ms\nupstream: {{ latency: 1ms }}\n\
         policy: {{ version: 1, policies: [ {{ name: load, rate_limit: {{ rate: {LOAD_RATE}, per: 1s, \
         burst: {LOAD_BURST}, key: [\"header:x-api-key\"] }} }} ] }}\ntraffic:\n",
        span.as_millis().max(1)
    );
    for key in LOAD_KEYS {
        scenario += &format!(
            "  - {{ name: {key}, rate: {per_key_rate}/s, path: /load, headers: {{ x-api-key: {key} }} }}\n"
        );
    }
    let loaded = breakwater_host_test::sim::load_text(&scenario, "fidelity-load", Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    let run = breakwater_host_test::sim::run(host, &loaded.scenario, &loaded.document).unwrap();
    let sim_admitted = |key: &str| {
        let traffic = run.traffic.iter().position(|t| t == key).expect("a generator per key") as u32;
        run.records.iter().filter(|r| r.traffic == traffic && r.status == 200).count() as u64
    };

    println!("\n== Counts under load: real Envoy 1.40 (2 workers, 4 clients) vs host-test simulation ==");
    println!(
        "{sent} requests in {:.3} s ({:.0}/s offered), {:.1} per key allowed by burst + rate·t",
        span.as_secs_f64(),
        sent as f64 / span.as_secs_f64().max(1e-3),
        LOAD_BURST as f64 + LOAD_RATE as f64 * span.as_secs_f64()
    );
    let mut differences = 0;
    for key in LOAD_KEYS {
        let (e, h) = (envoy_admitted(key), sim_admitted(key));
        let off = (e as f64 - h as f64).abs() / (h.max(1) as f64);
        let ok = off <= 0.01;
        if !ok {
            differences += 1;
        }
        println!(
            "  key {key}: envoy admitted {e}, host-test {h} ({:.2}% apart) {}",
            off * 100.0,
            if ok { "ok" } else { "DIFFERENT (over 1%)" }
        );
    }
    differences
}

fn main() {
    let wasm = repo().join(FILTER_WASM);
    assert!(Path::new(&wasm).exists(), "{} is missing: build it with `./dev build-wasm`", wasm.display());
    let host = host();
    let differences = sequences(&host) + counts(&host);
    if differences > 0 {
        eprintln!("fidelity: {differences} differences between Envoy and host-test");
        std::process::exit(1);
    }
    println!("fidelity: host-test agrees with Envoy");
}
