//! Scenarios: a policy document under simulated traffic, with expectations.
//!
//! This is the pure half of `breakwater test`: the scenario language (read with the same reader as
//! policy documents, so every error carries its path, line and column) and the evaluation of a
//! finished run into expectation results and a per-second [`Timeline`]. The simulation itself
//! runs the compiled filter in host-test, which produces a [`Run`]. This module builds for the
//! browser too: the admin checks scenarios as they are typed and charts the timeline.
//!
//! ```yaml
//! name: keys are limited one by one
//! policy: api-per-key.yaml        # a file next to the scenario, or an inline document
//! workers: 2
//! duration: 10s
//! traffic:
//!   - name: clients
//!     rate: 500/s
//!     host: api.example.com
//!     path: /v1/items
//!     headers: { x-api-key: { zipf: 1000, prefix: key- } }
//! upstream: { latency: 20ms, status: { 200: 99, 503: 1 } }
//! expect:
//!   - requests: { decision: rate_limited }
//!     at_most: 100
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decode::{Decoder, Fields, Path, join, suggest};
use crate::diag::Diagnostic;
use crate::model::{Document, Duration};
use crate::source::{Node, Value, key_text};

pub const SCENARIO_FIELDS: &[&str] =
    &["name", "description", "policy", "seed", "workers", "duration", "traffic", "upstream", "expect"];
pub const TRAFFIC_FIELDS: &[&str] = &[
    "name",
    "rate",
    "concurrency",
    "think",
    "arrivals",
    "start",
    "duration",
    "connections",
    "timeout",
    "method",
    "host",
    "path",
    "headers",
    "client_ip",
    "upstream",
];
pub const VALUES_FIELDS: &[&str] = &["one_of", "uniform", "zipf", "cycle", "prefix", "exponent"];
pub const UPSTREAM_FIELDS: &[&str] = &["latency", "status", "reset", "connect_failure", "phases"];
pub const PHASE_FIELDS: &[&str] = &["from", "to", "latency", "status", "reset", "connect_failure", "down"];
pub const LATENCY_FIELDS: &[&str] = &["uniform", "exponential"];
/// What an expectation can measure; each expectation names exactly one.
pub const MEASURES: &[&str] = &[
    "requests",
    "share",
    "retries",
    "budget_exhausted",
    "upstream_attempts",
    "max_upstream_concurrency",
    "max_in_flight",
    "metric",
    "breaker",
];
/// How an expectation compares; each names exactly one.
pub const CHECKS: &[&str] = &["equals", "at_least", "at_most", "between", "is"];
pub const SELECT_FIELDS: &[&str] = &["status", "decision", "policy", "traffic", "from", "to", "fallback"];

/// Most simulated VMs (Envoy workers).
pub const MAX_WORKERS: u64 = 64;
/// Longest simulated time.
pub const MAX_DURATION_MS: u64 = 3_600_000;
/// Most distinct values one header may draw from.
pub const MAX_VALUES: u64 = 1_000_000;
/// Most requests one scenario may simulate (a bound on memory and time).
pub const MAX_REQUESTS: u64 = 20_000_000;
/// Highest rate of one traffic generator, per second.
pub const MAX_RATE: f64 = 1_000_000.0;
/// Most clients of one closed-loop generator.
pub const MAX_CLIENTS: u64 = 100_000;

const NS_PER_MS: u64 = 1_000_000;
const NS_PER_S: u64 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub policy: PolicyRef,
    pub seed: u64,
    pub workers: u32,
    pub duration: Duration,
    pub traffic: Vec<Traffic>,
    pub upstream: Upstream,
    pub expect: Vec<Expectation>,
}

/// The policy document a scenario runs against.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyRef {
    /// A file, relative to the scenario's own folder.
    File(String),
    Inline(Document),
}

/// One traffic generator.
#[derive(Debug, Clone, PartialEq)]
pub struct Traffic {
    pub name: String,
    pub load: Load,
    pub arrivals: Arrivals,
    pub start: Duration,
    /// None: until the scenario ends.
    pub duration: Option<Duration>,
    /// Connections the requests are spread over; connection `c` belongs to worker `c % workers`,
    /// as Envoy assigns each connection to one worker. Default: one per worker.
    pub connections: Option<u32>,
    /// The client gives up (resets the stream) after this long.
    pub timeout: Option<Duration>,
    pub method: String,
    pub host: String,
    pub path: String,
    pub headers: Vec<(String, Values)>,
    pub client_ip: Values,
    /// This traffic's own upstream; the scenario's otherwise.
    pub upstream: Option<Upstream>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Load {
    /// Open loop: requests per second, whatever the answers.
    Rate(f64),
    /// Closed loop: this many clients, each sending its next request `think` after an answer.
    Concurrency { clients: u32, think: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrivals {
    /// Evenly spaced.
    Uniform,
    /// Exponentially distributed gaps (a Poisson process).
    Poisson,
}

/// Where a header value (or the client address) comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Fixed(String),
    OneOf(Vec<String>),
    /// `prefix` followed by a number from 1 to `n`, picked as `pick` says.
    Numbered {
        n: u32,
        prefix: String,
        pick: Pick,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pick {
    Uniform,
    /// Zipf with this exponent: value 1 is the most frequent.
    Zipf(f64),
    /// 1, 2, …, n, 1, 2, …
    Cycle,
}

/// The upstream: a behaviour, changed during phases.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub base: Behaviour,
    pub phases: Vec<Phase>,
}

/// How the upstream answers an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    pub latency: Latency,
    /// Status codes with their weights.
    pub status: Vec<(u16, f64)>,
    /// Share of attempts reset by the upstream after their latency, in 0..=1.
    pub reset: f64,
    /// Share of attempts that cannot connect, in 0..=1.
    pub connect_failure: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            latency: Latency::Fixed(Duration::from_millis(10)),
            status: vec![(200, 1.0)],
            reset: 0.0,
            connect_failure: 0.0,
        }
    }
}

/// A time window in which parts of the upstream's behaviour differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub from: Duration,
    pub to: Duration,
    pub latency: Option<Latency>,
    pub status: Option<Vec<(u16, f64)>>,
    pub reset: Option<f64>,
    pub connect_failure: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    Fixed(Duration),
    Uniform(Duration, Duration),
    /// Exponentially distributed with this mean.
    Exponential(Duration),
}

/// The upstream's behaviour at one moment, phases applied (later phases win).
#[derive(Debug, Clone, Copy)]
pub struct Effective<'a> {
    pub latency: Latency,
    pub status: &'a [(u16, f64)],
    pub reset: f64,
    pub connect_failure: f64,
}

impl Upstream {
    pub fn at(&self, t_ns: u64) -> Effective<'_> {
        let mut e = Effective {
            latency: self.base.latency,
            status: &self.base.status,
            reset: self.base.reset,
            connect_failure: self.base.connect_failure,
        };
        for p in &self.phases {
            if p.from.as_nanos() <= t_ns && t_ns < p.to.as_nanos() {
                e.latency = p.latency.unwrap_or(e.latency);
                if let Some(s) = &p.status {
                    e.status = s;
                }
                e.reset = p.reset.unwrap_or(e.reset);
                e.connect_failure = p.connect_failure.unwrap_or(e.connect_failure);
            }
        }
        e
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    /// `expect[2]`, for reports.
    pub path: String,
    pub name: Option<String>,
    pub measure: Measure,
    pub check: Check,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    /// Requests selected.
    Requests(Select),
    /// Requests selected, as a share of those `of` selects.
    Share { select: Select, of: Select },
    /// Retries Envoy made for the selected requests (the filter's `retried` counter).
    Retries(Select),
    /// Selected requests that got fewer retries than allowed because the budget was short.
    BudgetExhausted(Select),
    /// Attempts of the selected requests that reached the upstream.
    UpstreamAttempts(Select),
    /// Most attempts of the selected requests in the upstream at once.
    MaxUpstreamConcurrency(Select),
    /// Most selected requests in flight (client side) at once.
    MaxInFlight(Select),
    /// A metric's value at the end, by its Envoy name.
    Metric(String),
    /// A policy's breaker state (its gauge) at a time.
    Breaker { policy: String, at: Duration },
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Select {
    pub status: Option<StatusSelect>,
    pub decision: Option<Verdict>,
    pub policy: Option<String>,
    pub traffic: Option<String>,
    /// Requests that arrived in [from, to).
    pub from: Option<Duration>,
    pub to: Option<Duration>,
    pub fallback: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusSelect {
    Exact(u16),
    /// `5xx` is Class(5).
    Class(u16),
    /// The client gave up before an answer.
    Aborted,
}

/// The decision the filter took for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allowed,
    RateLimited,
    ConcurrencyLimited,
    CircuitOpen,
    /// No policy matched (or the VM had failed).
    Unmatched,
}

pub const VERDICTS: [(&str, Verdict); 5] = [
    ("allowed", Verdict::Allowed),
    ("rate_limited", Verdict::RateLimited),
    ("concurrency_limited", Verdict::ConcurrencyLimited),
    ("circuit_open", Verdict::CircuitOpen),
    ("unmatched", Verdict::Unmatched),
];

impl Verdict {
    pub fn as_str(self) -> &'static str {
        VERDICTS.iter().find(|(_, v)| *v == self).map_or("unmatched", |(n, _)| n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// From the breaker-state gauge: 0 closed, 1 open, 2 half-open.
    pub fn from_gauge(v: u64) -> Option<BreakerState> {
        [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen].get(v as usize).copied()
    }
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    Equals { value: f64, tolerance: Tolerance },
    AtLeast(f64),
    AtMost(f64),
    Between(f64, f64),
    Is(BreakerState),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    Absolute(f64),
    /// A fraction of the expected value.
    Relative(f64),
}

// ---- reading ----

/// Reads a scenario from YAML or JSON text. `Err` holds every problem, in document order.
pub fn load(text: &str) -> Result<Scenario, Vec<Diagnostic>> {
    load_inner(text, None)
}

/// As [`load`], for a scenario run against a document chosen elsewhere (the admin's editor): the
/// scenario's own `policy` field may be left out, and is replaced by `document` when present.
/// The expectations are checked against `document` too.
pub fn load_with_policy(text: &str, document: &Document) -> Result<Scenario, Vec<Diagnostic>> {
    let scenario = load_inner(text, Some(document))?;
    let problems = check_against(&scenario, document);
    if problems.iter().any(Diagnostic::is_error) { Err(problems) } else { Ok(scenario) }
}

fn load_inner(text: &str, given: Option<&Document>) -> Result<Scenario, Vec<Diagnostic>> {
    let root = crate::source::parse(text)?;
    let mut d = Decoder::default();
    let scenario = d.scenario(&root, given);
    let mut diags = d.diags;
    diags.sort_by_key(|d| d.span.map(|s| (s.line, s.col)));
    match scenario {
        Some(s) if !diags.iter().any(Diagnostic::is_error) => Ok(s),
        _ => Err(diags),
    }
}

/// Checks a scenario against the document it runs: the policies it names exist, and breakers
/// are asked about policies that have one.
pub fn check_against(s: &Scenario, doc: &Document) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let names: Vec<&str> = doc.policies.iter().map(|p| p.name.as_str()).collect();
    for e in &s.expect {
        let (policy, path, needs_breaker) = match &e.measure {
            Measure::Breaker { policy, .. } => (Some(policy), join(&e.path, "breaker"), true),
            Measure::Share { select, of } => {
                for (sel, field) in [(select, "share"), (of, "of")] {
                    if let Some(p) = &sel.policy {
                        unknown_policy(&mut out, &names, p, &format!("{}.{field}.policy", e.path));
                    }
                }
                (None, String::new(), false)
            }
            Measure::Requests(sel)
            | Measure::Retries(sel)
            | Measure::BudgetExhausted(sel)
            | Measure::UpstreamAttempts(sel)
            | Measure::MaxUpstreamConcurrency(sel)
            | Measure::MaxInFlight(sel) => {
                (sel.policy.as_ref(), format!("{}.{}.policy", e.path, measure_name(&e.measure)), false)
            }
            Measure::Metric(_) => (None, String::new(), false),
        };
        let Some(policy) = policy else { continue };
        if unknown_policy(&mut out, &names, policy, &path) {
            continue;
        }
        let has_breaker = doc.policies.iter().any(|p| &p.name == policy && p.circuit_breaker.is_some());
        if needs_breaker && !has_breaker {
            out.push(Diagnostic::error(path, format!("policy `{policy}` has no circuit_breaker")));
        }
    }
    out
}

fn unknown_policy(out: &mut Vec<Diagnostic>, names: &[&str], policy: &str, path: &str) -> bool {
    if names.contains(&policy) {
        return false;
    }
    let message = match suggest(policy, names) {
        Some(s) => format!("no policy named `{policy}`; did you mean `{s}`?"),
        None => format!("no policy named `{policy}`; the document has: {}", names.join(", ")),
    };
    out.push(Diagnostic::error(path, message));
    true
}

fn measure_name(m: &Measure) -> &'static str {
    match m {
        Measure::Requests(_) => "requests",
        Measure::Share { .. } => "share",
        Measure::Retries(_) => "retries",
        Measure::BudgetExhausted(_) => "budget_exhausted",
        Measure::UpstreamAttempts(_) => "upstream_attempts",
        Measure::MaxUpstreamConcurrency(_) => "max_upstream_concurrency",
        Measure::MaxInFlight(_) => "max_in_flight",
        Measure::Metric(_) => "metric",
        Measure::Breaker { .. } => "breaker",
    }
}

/// The one field of `f` among `names` that is present; an error unless exactly one is.
fn one_of<'n, 'f>(
    d: &mut Decoder,
    f: &'f Fields<'n, '_>,
    node: &Node,
    names: &[&'static str],
) -> Option<(&'static str, &'n Node, Path<'f>)> {
    let present: Vec<(&'static str, &'n Node, Path<'_>)> =
        names.iter().filter_map(|n| f.get(n).map(|(node, path)| (*n, node, path))).collect();
    match present.len() {
        1 => present.into_iter().next(),
        0 => {
            d.error(&f.path, node, format!("expected one of: {}", names.join(", ")));
            None
        }
        _ => {
            let listed: Vec<&str> = present.iter().map(|(n, _, _)| *n).collect();
            d.error(&f.path, node, format!("write only one of {}", listed.join(", ")));
            None
        }
    }
}

impl Decoder {
    fn scenario(&mut self, node: &Node, given: Option<&Document>) -> Option<Scenario> {
        let f = self.fields(node, &Path::ROOT, SCENARIO_FIELDS)?;
        let name = match f.get("name") {
            Some((n, p)) => self.string(n, &p).unwrap_or_default(),
            None => {
                self.error(&Path::ROOT, node, "missing field `name` (a title for the scenario)");
                String::new()
            }
        };
        let description = f.get("description").and_then(|(n, p)| self.string(n, &p)).unwrap_or_default();
        let policy = match (f.get("policy"), given) {
            (_, Some(doc)) => Some(PolicyRef::Inline(doc.clone())),
            (Some((n, p)), None) => self.policy_ref(n, &p),
            (None, None) => {
                self.error(&Path::ROOT, node, "missing field `policy` (a file name or an inline document)");
                None
            }
        };
        let seed = f.get("seed").and_then(|(n, p)| self.int(n, &p, 0, u64::MAX)).unwrap_or(1);
        let workers = f.get("workers").and_then(|(n, p)| self.int_as(n, &p, 1, MAX_WORKERS)).unwrap_or(2);
        let duration = match f.get("duration") {
            Some((n, p)) => self.bounded_duration(n, &p, 1, MAX_DURATION_MS),
            None => {
                self.error(&Path::ROOT, node, "missing field `duration` (how long to simulate, e.g. 10s)");
                None
            }
        };
        let end = duration.unwrap_or(Duration::from_millis(MAX_DURATION_MS));
        let upstream = match f.get("upstream") {
            Some((n, p)) => self.upstream(n, &p, end),
            None => Some(Upstream { base: Behaviour::default(), phases: Vec::new() }),
        };
        let traffic = match f.get("traffic") {
            Some((n, p)) => self.traffic_list(n, &p, end),
            None => {
                self.error(&Path::ROOT, node, "missing field `traffic` (at least one generator)");
                None
            }
        };
        let names = f.get("traffic").map(|(n, _)| traffic_names(n)).unwrap_or_default();
        let expect = match f.get("expect") {
            Some((n, p)) => self.list(n, &p, |d, n, p| d.expectation(n, p, &names, end)),
            None => Some(Vec::new()),
        };
        Some(Scenario {
            name,
            description,
            policy: policy?,
            seed,
            workers,
            duration: duration?,
            traffic: traffic?,
            upstream: upstream?,
            expect: expect?,
        })
    }

    fn policy_ref(&mut self, node: &Node, path: &Path<'_>) -> Option<PolicyRef> {
        match &node.value {
            Value::Str(_) => self.string(node, path).map(PolicyRef::File),
            Value::Map(_) => {
                let (doc, diags, spans) = crate::decode::decode(node);
                let checks = crate::check::check(&doc, &spans);
                let before = self.diags.len();
                for mut d in diags.into_iter().chain(checks) {
                    d.path = join(&path.to_string(), &d.path);
                    self.diags.push(d);
                }
                let failed = self.diags[before..].iter().any(Diagnostic::is_error);
                (!failed).then_some(PolicyRef::Inline(doc))
            }
            _ => {
                self.expected(path, node, "a file name or an inline policy document");
                None
            }
        }
    }

    fn bounded_duration(
        &mut self,
        node: &Node,
        path: &Path<'_>,
        min_ms: u64,
        max_ms: u64,
    ) -> Option<Duration> {
        let d = self.duration(node, path)?;
        if (min_ms..=max_ms).contains(&d.as_millis()) {
            return Some(d);
        }
        self.error(
            path,
            node,
            format!(
                "must be between {} and {}",
                Duration::from_millis(min_ms),
                Duration::from_millis(max_ms)
            ),
        );
        None
    }

    /// A number: an integer, a decimal, or a percentage (`40%` is 0.4).
    fn number(&mut self, node: &Node, path: &Path<'_>) -> Option<f64> {
        self.visit(path, node);
        match &node.value {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) if f.is_finite() => Some(*f),
            Value::Str(s) if s.trim().ends_with('%') => self.percent(node, path),
            _ => {
                self.expected(path, node, "a number");
                None
            }
        }
    }

    /// A percentage written `2%` or `0.5%`, as a fraction.
    fn percent(&mut self, node: &Node, path: &Path<'_>) -> Option<f64> {
        self.parsed(node, path, |s| {
            s.trim()
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<f64>().ok())
                .filter(|v| (0.0..=100.0).contains(v))
                .map(|v| v / 100.0)
                .ok_or_else(|| format!("`{s}` is not a percentage; write one between 0% and 100%, e.g. 2%"))
        })
    }

    fn traffic_list(&mut self, node: &Node, path: &Path<'_>, end: Duration) -> Option<Vec<Traffic>> {
        if matches!(&node.value, Value::Seq(items) if items.is_empty()) {
            self.error(path, node, "a scenario needs at least one traffic generator");
            return None;
        }
        let items = self.seq(node, path)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (i, n) in items.iter().enumerate() {
            let p = path.index(i);
            match self.traffic(n, &p, i, end) {
                Some(t) if out.iter().any(|o: &Traffic| o.name == t.name) => {
                    let at = p.field("name");
                    self.error(&at, n, format!("two traffic generators are named `{}`", t.name));
                    ok = false;
                }
                Some(t) => out.push(t),
                None => ok = false,
            }
        }
        let requests: f64 = out
            .iter()
            .filter_map(|t| match t.load {
                Load::Rate(r) => {
                    let active = t.duration.unwrap_or(end).as_millis().min(end.as_millis()) as f64 / 1000.0;
                    Some(r * active)
                }
                Load::Concurrency { .. } => None,
            })
            .sum();
        if requests > MAX_REQUESTS as f64 {
            self.error(
                path,
                node,
                format!("these generators send about {requests:.0} requests; the limit is {MAX_REQUESTS}"),
            );
            ok = false;
        }
        ok.then_some(out)
    }

    fn traffic(&mut self, node: &Node, path: &Path<'_>, i: usize, end: Duration) -> Option<Traffic> {
        let f = self.fields(node, path, TRAFFIC_FIELDS)?;
        let name =
            f.get("name").and_then(|(n, p)| self.string(n, &p)).unwrap_or_else(|| format!("traffic[{i}]"));
        let load = match (f.get("rate"), f.get("concurrency")) {
            (Some((n, p)), None) => self.rate(n, &p).map(Load::Rate),
            (None, Some((n, p))) => {
                let clients = self.int_as(n, &p, 1, MAX_CLIENTS);
                let think = match f.get("think") {
                    Some((n, p)) => self.bounded_duration(n, &p, 1, MAX_DURATION_MS),
                    None => Some(Duration::from_millis(1)),
                };
                Some(Load::Concurrency { clients: clients?, think: think? })
            }
            (Some(_), Some(_)) => {
                self.error(
                    path,
                    node,
                    "write either `rate` (open loop) or `concurrency` (closed loop), not both",
                );
                None
            }
            (None, None) => {
                self.error(path, node, "missing `rate` (requests per second) or `concurrency` (clients)");
                None
            }
        };
        if let (Some((n, p)), Some(Load::Rate(_))) = (f.get("think"), &load) {
            self.error(&p, n, "`think` applies to `concurrency` traffic only");
        }
        let arrivals = match f.get("arrivals") {
            Some((n, p)) => {
                self.word(n, &p, &[("uniform", Arrivals::Uniform), ("poisson", Arrivals::Poisson)])
            }
            None => Some(Arrivals::Uniform),
        };
        let start = match f.get("start") {
            Some((n, p)) => {
                let d = self.duration(n, &p);
                if d.is_some_and(|d| d >= end) {
                    self.error(&p, n, format!("starts after the scenario ends ({end})"));
                }
                d
            }
            None => Some(Duration::from_millis(0)),
        };
        let duration = match f.get("duration") {
            Some((n, p)) => self.bounded_duration(n, &p, 1, MAX_DURATION_MS).map(Some),
            None => Some(None),
        };
        let connections = match f.get("connections") {
            Some((n, p)) => self.int_as(n, &p, 1, 100_000).map(Some),
            None => Some(None),
        };
        let timeout = match f.get("timeout") {
            Some((n, p)) => self.bounded_duration(n, &p, 1, MAX_DURATION_MS).map(Some),
            None => Some(None),
        };
        let method = match f.get("method") {
            Some((n, p)) => self.method(n, &p),
            None => Some("GET".into()),
        };
        let host = f.get("host").map_or(Some("example.com".into()), |(n, p)| self.string(n, &p));
        let path_value = match f.get("path") {
            Some((n, p)) => self.parsed(n, &p, |s| {
                if s.starts_with('/') { Ok(s.to_string()) } else { Err(format!("`{s}` must start with /")) }
            }),
            None => Some("/".into()),
        };
        let headers = match f.get("headers") {
            Some((n, p)) => self.header_values(n, &p),
            None => Some(Vec::new()),
        };
        let client_ip = match f.get("client_ip") {
            Some((n, p)) => self.values(n, &p),
            None => Some(Values::Fixed("10.0.0.1".into())),
        };
        let upstream = match f.get("upstream") {
            Some((n, p)) => self.upstream(n, &p, end).map(Some),
            None => Some(None),
        };
        Some(Traffic {
            name,
            load: load?,
            arrivals: arrivals?,
            start: start?,
            duration: duration?,
            connections: connections?,
            timeout: timeout?,
            method: method?.into_owned(),
            host: host?,
            path: path_value?,
            headers: headers?,
            client_ip: client_ip?,
            upstream: upstream?,
        })
    }

    /// `200`, `200/s`, `6000/m`, `10/h`: requests per second.
    fn rate(&mut self, node: &Node, path: &Path<'_>) -> Option<f64> {
        let hint = "write requests per second: 200, 200/s, 6000/m";
        let per_second = match &node.value {
            Value::Int(_) | Value::Float(_) => self.number(node, path)?,
            _ => self.parsed(node, path, |s| {
                let (n, unit) = s.split_once('/').unwrap_or((s, "s"));
                let factor = match unit.trim() {
                    "s" => 1.0,
                    "m" => 1.0 / 60.0,
                    "h" => 1.0 / 3600.0,
                    _ => return Err(format!("`{s}` is not a rate; {hint}")),
                };
                n.trim()
                    .parse::<f64>()
                    .map(|n| n * factor)
                    .map_err(|_| format!("`{s}` is not a rate; {hint}"))
            })?,
        };
        if per_second > 0.0 && per_second <= MAX_RATE {
            return Some(per_second);
        }
        self.error(path, node, format!("must be above 0 and at most {MAX_RATE} per second"));
        None
    }

    fn header_values(&mut self, node: &Node, path: &Path<'_>) -> Option<Vec<(String, Values)>> {
        self.visit(path, node);
        let Value::Map(entries) = &node.value else {
            self.expected(path, node, "a mapping of header names to values");
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (k, v) in entries {
            let name = key_text(k).to_ascii_lowercase();
            let p = path.field(&name);
            if name.starts_with(':') || name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                self.error(&p, k, format!("`{name}` is not a header name a client can send"));
                ok = false;
                continue;
            }
            match self.values(v, &p) {
                Some(values) => out.push((name, values)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn values(&mut self, node: &Node, path: &Path<'_>) -> Option<Values> {
        match &node.value {
            Value::Str(s) => {
                self.visit(path, node);
                Some(Values::Fixed(s.to_string()))
            }
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                self.visit(path, node);
                Some(Values::Fixed(key_text(node)))
            }
            _ => {
                let f = self.fields(node, path, VALUES_FIELDS)?;
                let kinds = ["one_of", "uniform", "zipf", "cycle"];
                let (kind, n, p) = one_of(self, &f, node, &kinds)?;
                let prefix = f.get("prefix").and_then(|(n, p)| self.string(n, &p)).unwrap_or_default();
                let exponent = f.get("exponent").and_then(|(n, p)| self.number(n, &p));
                if kind != "zipf"
                    && let Some((n, p)) = f.get("exponent")
                {
                    self.error(&p, n, "`exponent` applies to `zipf` only");
                }
                if kind == "one_of" {
                    if let Some((n, p)) = f.get("prefix") {
                        self.error(&p, n, "`prefix` applies to numbered values (uniform, zipf, cycle)");
                    }
                    let items = self.non_empty_list(n, &p, "list at least one value", |d, n, p| {
                        d.values(n, p).and_then(|v| match v {
                            Values::Fixed(s) => Some(s),
                            _ => {
                                d.expected(p, n, "a string");
                                None
                            }
                        })
                    })?;
                    return Some(Values::OneOf(items));
                }
                let count = self.int_as(n, &p, 1, MAX_VALUES)?;
                let pick = match kind {
                    "uniform" => Pick::Uniform,
                    "cycle" => Pick::Cycle,
                    _ => {
                        let s = exponent.unwrap_or(1.0);
                        if !(0.0..=10.0).contains(&s) {
                            let (n, p) = f.get("exponent")?;
                            self.error(&p, n, "must be between 0 and 10");
                            return None;
                        }
                        Pick::Zipf(s)
                    }
                };
                Some(Values::Numbered { n: count, prefix, pick })
            }
        }
    }

    fn upstream(&mut self, node: &Node, path: &Path<'_>, end: Duration) -> Option<Upstream> {
        let f = self.fields(node, path, UPSTREAM_FIELDS)?;
        let mut base = Behaviour::default();
        let mut ok = true;
        if let Some((n, p)) = f.get("latency") {
            self.latency(n, &p).map(|l| base.latency = l).unwrap_or_else(|| ok = false);
        }
        if let Some((n, p)) = f.get("status") {
            self.status_mix(n, &p).map(|s| base.status = s).unwrap_or_else(|| ok = false);
        }
        if let Some((n, p)) = f.get("reset") {
            self.percent(n, &p).map(|v| base.reset = v).unwrap_or_else(|| ok = false);
        }
        if let Some((n, p)) = f.get("connect_failure") {
            self.percent(n, &p).map(|v| base.connect_failure = v).unwrap_or_else(|| ok = false);
        }
        let phases = match f.get("phases") {
            Some((n, p)) => self.list_of(n, &p, |d, n, p| d.phase(n, p, end)),
            None => Some((Vec::new(), true)),
        };
        let (phases, complete) = phases?;
        (ok && complete).then_some(Upstream { base, phases })
    }

    fn phase(&mut self, node: &Node, path: &Path<'_>, end: Duration) -> Option<Phase> {
        let f = self.fields(node, path, PHASE_FIELDS)?;
        let from = match f.get("from") {
            Some((n, p)) => self.duration(n, &p),
            None => Some(Duration::from_millis(0)),
        };
        let to = match f.get("to") {
            Some((n, p)) => self.duration(n, &p),
            None => Some(end),
        };
        let (from, to) = (from?, to?);
        if from >= to {
            self.error(path, node, format!("`from` ({from}) must come before `to` ({to})"));
            return None;
        }
        let latency = f.get("latency").map(|(n, p)| self.latency(n, &p));
        let status = f.get("status").map(|(n, p)| self.status_mix(n, &p));
        let reset = f.get("reset").map(|(n, p)| self.percent(n, &p));
        let mut connect_failure = f.get("connect_failure").map(|(n, p)| self.percent(n, &p));
        if let Some((n, p)) = f.get("down") {
            match (self.bool(n, &p), &connect_failure) {
                (Some(_), Some(_)) => {
                    self.error(&p, n, "write either `down` or `connect_failure`, not both");
                    return None;
                }
                (Some(true), None) => connect_failure = Some(Some(1.0)),
                (Some(false), None) => {}
                (None, _) => return None,
            }
        }
        Some(Phase {
            from,
            to,
            latency: latency.map(|l| l.ok_or(())).transpose().ok()?,
            status: status.map(|s| s.ok_or(())).transpose().ok()?,
            reset: reset.map(|r| r.ok_or(())).transpose().ok()?,
            connect_failure: connect_failure.map(|c| c.ok_or(())).transpose().ok()?,
        })
    }

    fn latency(&mut self, node: &Node, path: &Path<'_>) -> Option<Latency> {
        if !matches!(node.value, Value::Map(_)) {
            return self.bounded_duration(node, path, 0, MAX_DURATION_MS).map(Latency::Fixed);
        }
        let f = self.fields(node, path, LATENCY_FIELDS)?;
        let (kind, n, p) = one_of(self, &f, node, LATENCY_FIELDS)?;
        if kind == "exponential" {
            return self.bounded_duration(n, &p, 1, MAX_DURATION_MS).map(Latency::Exponential);
        }
        let items = self.seq(n, &p)?;
        let [lo, hi] = items else {
            self.error(&p, n, "write the bounds as a pair: [10ms, 50ms]");
            return None;
        };
        let lo = self.bounded_duration(lo, &p.index(0), 0, MAX_DURATION_MS);
        let hi = self.bounded_duration(hi, &p.index(1), 0, MAX_DURATION_MS);
        let (lo, hi) = (lo?, hi?);
        if lo > hi {
            self.error(&p, n, format!("the lower bound ({lo}) is above the upper one ({hi})"));
            return None;
        }
        Some(Latency::Uniform(lo, hi))
    }

    /// `200`, or weights: `{ 200: 95, 503: 5 }`.
    fn status_mix(&mut self, node: &Node, path: &Path<'_>) -> Option<Vec<(u16, f64)>> {
        self.visit(path, node);
        if let Value::Int(_) = node.value {
            return self.int_as(node, path, 100, 599).map(|s| vec![(s, 1.0)]);
        }
        let Value::Map(entries) = &node.value else {
            self.expected(path, node, "a status code or a mapping of status codes to weights");
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let code = key_text(k);
            let p = path.field(&code);
            let status = code.parse::<u16>().ok().filter(|c| (100..=599).contains(c));
            let weight = self.number(v, &p);
            match (status, weight) {
                (None, _) => self.error(&p, k, format!("`{code}` is not an HTTP status code (100-599)")),
                (Some(_), Some(w)) if w < 0.0 => self.error(&p, v, "a weight cannot be negative"),
                (Some(s), Some(w)) => out.push((s, w)),
                (Some(_), None) => {}
            }
        }
        if out.len() == entries.len() && out.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            self.error(path, node, "the weights add up to 0");
            return None;
        }
        (out.len() == entries.len()).then_some(out)
    }

    fn expectation(
        &mut self,
        node: &Node,
        path: &Path<'_>,
        traffic: &[String],
        end: Duration,
    ) -> Option<Expectation> {
        let mut known: Vec<&str> = vec!["name", "of", "tolerance", "at"];
        known.extend(MEASURES);
        known.extend(CHECKS);
        let f = self.fields(node, path, &known)?;
        let name = f.get("name").and_then(|(n, p)| self.string(n, &p));
        let (measure_name, mn, mp) = one_of(self, &f, node, MEASURES)?;
        let measure = match measure_name {
            "metric" => self.string(mn, &mp).map(Measure::Metric),
            "breaker" => {
                let policy = self.string(mn, &mp);
                let at = match f.get("at") {
                    Some((n, p)) => self.bounded_duration(n, &p, 0, end.as_millis()),
                    None => {
                        self.error(path, node, "a breaker expectation needs `at` (a time in the scenario)");
                        None
                    }
                };
                match (policy, at) {
                    (Some(policy), Some(at)) => Some(Measure::Breaker { policy, at }),
                    _ => None,
                }
            }
            _ => {
                let select = self.select(mn, &mp, traffic);
                match measure_name {
                    "share" => {
                        let of = match f.get("of") {
                            Some((n, p)) => self.select(n, &p, traffic),
                            None => Some(Select::default()),
                        };
                        match (select, of) {
                            (Some(select), Some(of)) => Some(Measure::Share { select, of }),
                            _ => None,
                        }
                    }
                    "requests" => select.map(Measure::Requests),
                    "retries" => select.map(Measure::Retries),
                    "budget_exhausted" => select.map(Measure::BudgetExhausted),
                    "upstream_attempts" => select.map(Measure::UpstreamAttempts),
                    "max_upstream_concurrency" => select.map(Measure::MaxUpstreamConcurrency),
                    _ => select.map(Measure::MaxInFlight),
                }
            }
        };
        if measure_name != "share"
            && let Some((n, p)) = f.get("of")
        {
            self.error(&p, n, "`of` applies to `share` only");
        }
        if measure_name != "breaker"
            && let Some((n, p)) = f.get("at")
        {
            self.error(&p, n, "`at` applies to `breaker` only; select a time window with `from` and `to`");
        }
        let (check_name, cn, cp) = one_of(self, &f, node, CHECKS)?;
        let check = match check_name {
            "is" if measure_name != "breaker" => {
                self.error(&cp, cn, "`is` compares breaker states; use equals, at_least, at_most or between");
                None
            }
            "is" => self
                .word(
                    cn,
                    &cp,
                    &[
                        ("closed", BreakerState::Closed),
                        ("open", BreakerState::Open),
                        ("half_open", BreakerState::HalfOpen),
                    ],
                )
                .map(Check::Is),
            _ if measure_name == "breaker" => {
                self.error(&cp, cn, "a breaker state is checked with `is: open` (closed, open, half_open)");
                None
            }
            "equals" => {
                let value = self.number(cn, &cp);
                let tolerance = match f.get("tolerance") {
                    Some((n, p)) => self.tolerance(n, &p),
                    None => Some(Tolerance::Absolute(0.0)),
                };
                Some(Check::Equals { value: value?, tolerance: tolerance? })
            }
            "at_least" => self.number(cn, &cp).map(Check::AtLeast),
            "at_most" => self.number(cn, &cp).map(Check::AtMost),
            _ => {
                let items = self.seq(cn, &cp)?;
                let [lo, hi] = items else {
                    self.error(&cp, cn, "write the bounds as a pair: [0.4, 0.6]");
                    return None;
                };
                let lo = self.number(lo, &cp.index(0));
                let hi = self.number(hi, &cp.index(1));
                let (lo, hi) = (lo?, hi?);
                if lo > hi {
                    self.error(&cp, cn, format!("the lower bound ({lo}) is above the upper one ({hi})"));
                    return None;
                }
                Some(Check::Between(lo, hi))
            }
        };
        if check_name != "equals"
            && let Some((n, p)) = f.get("tolerance")
        {
            self.error(&p, n, "`tolerance` applies to `equals` only");
        }
        Some(Expectation { path: path.to_string(), name, measure: measure?, check: check? })
    }

    /// `5%` (of the expected value) or an absolute number.
    fn tolerance(&mut self, node: &Node, path: &Path<'_>) -> Option<Tolerance> {
        match &node.value {
            Value::Str(_) => self.percent(node, path).map(Tolerance::Relative),
            _ => self.number(node, path).filter(|v| *v >= 0.0).map(Tolerance::Absolute).or_else(|| {
                self.error(path, node, "write a percentage (2%) or a non-negative number");
                None
            }),
        }
    }

    fn select(&mut self, node: &Node, path: &Path<'_>, traffic: &[String]) -> Option<Select> {
        if let Value::Null = node.value {
            self.visit(path, node);
            return Some(Select::default());
        }
        let f = self.fields(node, path, SELECT_FIELDS)?;
        let mut s = Select::default();
        let mut ok = true;
        if let Some((n, p)) = f.get("status") {
            s.status = self.status_select(n, &p);
            ok &= s.status.is_some();
        }
        if let Some((n, p)) = f.get("decision") {
            s.decision = self.word(n, &p, &VERDICTS);
            ok &= s.decision.is_some();
        }
        if let Some((n, p)) = f.get("policy") {
            s.policy = self.string(n, &p);
            ok &= s.policy.is_some();
        }
        if let Some((n, p)) = f.get("traffic") {
            let names: Vec<&str> = traffic.iter().map(String::as_str).collect();
            s.traffic = self.string(n, &p);
            if let Some(t) = &s.traffic
                && !names.contains(&t.as_str())
            {
                let message = match suggest(t, &names) {
                    Some(near) => format!("no traffic named `{t}`; did you mean `{near}`?"),
                    None => format!("no traffic named `{t}`; the scenario has: {}", names.join(", ")),
                };
                self.error(&p, n, message);
                ok = false;
            }
        }
        if let Some((n, p)) = f.get("from") {
            s.from = self.duration(n, &p);
            ok &= s.from.is_some();
        }
        if let Some((n, p)) = f.get("to") {
            s.to = self.duration(n, &p);
            ok &= s.to.is_some();
        }
        if let (Some(from), Some(to)) = (s.from, s.to)
            && from >= to
        {
            self.error(path, node, format!("`from` ({from}) must come before `to` ({to})"));
            ok = false;
        }
        if let Some((n, p)) = f.get("fallback") {
            s.fallback = self.bool(n, &p);
            ok &= s.fallback.is_some();
        }
        ok.then_some(s)
    }

    fn status_select(&mut self, node: &Node, path: &Path<'_>) -> Option<StatusSelect> {
        if let Value::Int(_) = node.value {
            return self.int_as(node, path, 100, 599).map(StatusSelect::Exact);
        }
        self.parsed(node, path, |s| {
            if s == "aborted" {
                return Ok(StatusSelect::Aborted);
            }
            match s.as_bytes() {
                [c @ b'1'..=b'5', b'x', b'x'] => Ok(StatusSelect::Class(u16::from(c - b'0'))),
                _ => Err(format!("`{s}` is not a status; write a code (429), a class (5xx) or `aborted`")),
            }
        })
    }
}

/// The names of the traffic generators as written (also of those with errors), so expectations
/// naming them are checked even when a generator did not decode.
fn traffic_names(node: &Node) -> Vec<String> {
    let Value::Seq(items) = &node.value else { return Vec::new() };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let name = match &item.value {
                Value::Map(entries) => {
                    entries.iter().find(|(k, _)| key_text(k) == "name").and_then(|(_, v)| match &v.value {
                        Value::Str(s) => Some(s.to_string()),
                        _ => None,
                    })
                }
                _ => None,
            };
            name.unwrap_or_else(|| format!("traffic[{i}]"))
        })
        .fold(Vec::new(), |mut names, n| {
            if !names.contains(&n) {
                names.push(n);
            }
            names
        })
}

// ---- a finished run ----

/// One simulated request, as the client and the filter's counters saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    pub traffic: u32,
    /// Since the scenario started.
    pub start_ns: u64,
    pub end_ns: u64,
    /// 0: the client gave up before an answer.
    pub status: u16,
    /// Index into [`Run::policies`] of the policy that decided, if any.
    pub policy: Option<u32>,
    pub verdict: Verdict,
    pub fallback: bool,
    pub retried: u32,
    pub budget_exhausted: bool,
    /// The filter answered (a rejection, a fallback), not the upstream.
    pub local: bool,
    /// Attempts that reached the upstream, as a range of [`Run::tries`].
    pub tries: (u32, u32),
}

/// What a simulation produced.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub policies: Vec<String>,
    pub traffic: Vec<String>,
    pub records: Vec<Record>,
    /// Attempts in the upstream, (start, end) in ns since the scenario started.
    pub tries: Vec<(u64, u64)>,
    /// Breaker states sampled at times (ns since start), per policy (None: no breaker).
    pub breaker_samples: Vec<(u64, Vec<Option<BreakerState>>)>,
    /// Every metric at the end, by name.
    pub metrics: BTreeMap<String, u64>,
    pub duration_ns: u64,
    pub workers: u32,
    pub seed: u64,
}

/// The times at which a run must sample breaker states: every whole second, and every `at`.
pub fn sample_times(s: &Scenario) -> Vec<u64> {
    let end = s.duration.as_nanos();
    let mut t: Vec<u64> = (1..=end / NS_PER_S).map(|k| k * NS_PER_S).collect();
    if !end.is_multiple_of(NS_PER_S) {
        t.push(end);
    }
    t.extend(s.expect.iter().filter_map(|e| match &e.measure {
        Measure::Breaker { at, .. } => Some(at.as_nanos()),
        _ => None,
    }));
    t.sort_unstable();
    t.dedup();
    t
}

/// The results of a scenario: one line per expectation, and the timeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub name: String,
    pub seed: u64,
    pub workers: u32,
    pub duration_s: f64,
    pub requests: u64,
    pub passed: bool,
    pub expectations: Vec<Outcome>,
    pub timeline: Timeline,
}

/// One expectation's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub path: String,
    pub name: Option<String>,
    /// What was measured: `requests{decision=rate_limited}`.
    pub measured: String,
    /// The comparison: `= 1200 ± 2%`.
    pub expected: String,
    /// The value found, as text (`1,187`, `42.10%`, `open`).
    pub actual: String,
    /// The value found, as a number (a breaker state is its gauge value).
    pub value: f64,
    pub passed: bool,
}

/// Per-second series of a run, for charts. Requests are counted in the second they arrived.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Timeline {
    pub policies: Vec<String>,
    pub seconds: Vec<Second>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Second {
    /// Seconds since the start.
    pub t: u64,
    pub requests: u64,
    pub by_decision: BTreeMap<String, u64>,
    /// By status code; `aborted` for clients that gave up.
    pub by_status: BTreeMap<String, u64>,
    /// Decisions per policy.
    pub by_policy: BTreeMap<String, BTreeMap<String, u64>>,
    pub fallback: u64,
    pub retries: u64,
    pub budget_exhausted: u64,
    pub upstream_attempts: u64,
    /// Most requests in flight at once during the second (client side).
    pub max_in_flight: u64,
    /// Most attempts in the upstream at once during the second.
    pub max_upstream_concurrency: u64,
    /// Breaker state per policy at the end of the second.
    pub breaker: BTreeMap<String, BreakerState>,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

impl Select {
    fn matches(&self, r: &Record, run: &Run) -> bool {
        let status_ok = match self.status {
            None => true,
            Some(StatusSelect::Exact(s)) => r.status == s,
            Some(StatusSelect::Class(c)) => r.status / 100 == c,
            Some(StatusSelect::Aborted) => r.status == 0,
        };
        status_ok
            && self.decision.is_none_or(|d| d == r.verdict)
            && self.policy.as_ref().is_none_or(|p| {
                r.policy.and_then(|i| run.policies.get(i as usize)).is_some_and(|name| name == p)
            })
            && self
                .traffic
                .as_ref()
                .is_none_or(|t| run.traffic.get(r.traffic as usize).is_some_and(|n| n == t))
            && self.from.is_none_or(|f| r.start_ns >= f.as_nanos())
            && self.to.is_none_or(|t| r.start_ns < t.as_nanos())
            && self.fallback.is_none_or(|f| f == r.fallback)
    }

    fn label(&self) -> String {
        let mut parts = Vec::new();
        match self.status {
            Some(StatusSelect::Exact(s)) => parts.push(format!("status={s}")),
            Some(StatusSelect::Class(c)) => parts.push(format!("status={c}xx")),
            Some(StatusSelect::Aborted) => parts.push("status=aborted".into()),
            None => {}
        }
        if let Some(d) = self.decision {
            parts.push(format!("decision={}", d.as_str()));
        }
        if let Some(p) = &self.policy {
            parts.push(format!("policy={p}"));
        }
        if let Some(t) = &self.traffic {
            parts.push(format!("traffic={t}"));
        }
        if let Some(f) = self.fallback {
            parts.push(format!("fallback={f}"));
        }
        match (self.from, self.to) {
            (None, None) => {}
            (f, t) => parts.push(format!(
                "{}..{}",
                f.map_or("0s".to_string(), |f| f.to_string()),
                t.map_or("end".to_string(), |t| t.to_string())
            )),
        }
        if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(", ")) }
    }
}

/// The starts (+1) and ends (-1) of non-empty intervals, in time order. Ends sort before starts
/// at the same instant: back-to-back intervals do not overlap.
fn edges(intervals: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, i8)> {
    let mut edges: Vec<(u64, i8)> = Vec::new();
    for (s, e) in intervals {
        if e > s {
            edges.push((s, 1));
            edges.push((e, -1));
        }
    }
    edges.sort_unstable();
    edges
}

/// The highest number of overlapping intervals.
fn max_overlap(intervals: impl Iterator<Item = (u64, u64)>) -> u64 {
    let (mut level, mut max) = (0i64, 0i64);
    for (_, d) in edges(intervals) {
        level += i64::from(d);
        max = max.max(level);
    }
    max as u64
}

/// Per-bucket maximum of overlapping intervals, buckets of `width` ns.
fn max_overlap_per_bucket(
    intervals: impl Iterator<Item = (u64, u64)>,
    buckets: usize,
    width: u64,
) -> Vec<u64> {
    let mut out = vec![0u64; buckets];
    let mut level = 0i64;
    let mut bucket = 0usize;
    for (t, d) in edges(intervals) {
        let b = (t / width) as usize;
        while bucket < b.min(buckets) {
            bucket += 1;
            if let Some(slot) = out.get_mut(bucket) {
                *slot = level.max(0) as u64; // carried into the next second
            }
        }
        level += i64::from(d);
        if let Some(slot) = out.get_mut(b) {
            *slot = (*slot).max(level.max(0) as u64);
        }
    }
    while bucket + 1 < buckets {
        bucket += 1;
        if let Some(slot) = out.get_mut(bucket) {
            *slot = level.max(0) as u64;
        }
    }
    out
}

fn breaker_at(run: &Run, policy: &str, at_ns: u64) -> Option<BreakerState> {
    let index = run.policies.iter().position(|p| p == policy)?;
    let (_, states) = run.breaker_samples.iter().find(|(t, _)| *t == at_ns)?;
    states.get(index).copied().flatten()
}

/// Formats a measured number: whole numbers with thousands separators, others with 4 decimals.
pub fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let digits = format!("{}", v.abs() as u64);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else {
        format!("{v:.4}")
    }
}

impl Check {
    fn passes(&self, v: f64) -> bool {
        match *self {
            Check::Equals { value, tolerance } => {
                let allowed = match tolerance {
                    Tolerance::Absolute(a) => a,
                    Tolerance::Relative(r) => r * value.abs(),
                };
                (v - value).abs() <= allowed + 1e-9
            }
            Check::AtLeast(min) => v >= min - 1e-9,
            Check::AtMost(max) => v <= max + 1e-9,
            Check::Between(lo, hi) => v >= lo - 1e-9 && v <= hi + 1e-9,
            Check::Is(state) => BreakerState::from_gauge(v as u64) == Some(state),
        }
    }

    fn text(&self) -> String {
        match *self {
            Check::Equals { value, tolerance: Tolerance::Absolute(0.0) } => {
                format!("= {}", format_number(value))
            }
            Check::Equals { value, tolerance: Tolerance::Absolute(a) } => {
                format!("= {} ± {}", format_number(value), format_number(a))
            }
            Check::Equals { value, tolerance: Tolerance::Relative(r) } => {
                format!("= {} ± {}%", format_number(value), format_number(r * 100.0))
            }
            Check::AtLeast(v) => format!("≥ {}", format_number(v)),
            Check::AtMost(v) => format!("≤ {}", format_number(v)),
            Check::Between(lo, hi) => format!("between {} and {}", format_number(lo), format_number(hi)),
            Check::Is(s) => format!("is {}", s.as_str()),
        }
    }
}

/// Evaluates every expectation of `s` on a finished run, and builds its timeline.
pub fn evaluate(s: &Scenario, run: &Run) -> Report {
    let expectations: Vec<Outcome> = s.expect.iter().map(|e| outcome(e, run)).collect();
    Report {
        name: s.name.clone(),
        seed: run.seed,
        workers: run.workers,
        duration_s: run.duration_ns as f64 / NS_PER_S as f64,
        requests: run.records.len() as u64,
        passed: expectations.iter().all(|o| o.passed),
        expectations,
        timeline: timeline(run),
    }
}

fn selected<'a>(run: &'a Run, sel: &'a Select) -> impl Iterator<Item = &'a Record> + 'a {
    run.records.iter().filter(move |r| sel.matches(r, run))
}

fn outcome(e: &Expectation, run: &Run) -> Outcome {
    let selected = |sel| selected(run, sel);
    let tries_of = |r: &Record| {
        run.tries.get(r.tries.0 as usize..r.tries.1 as usize).unwrap_or_default().iter().copied()
    };
    let (measured, value, actual) = match &e.measure {
        Measure::Requests(sel) => {
            let n = selected(sel).count() as f64;
            (format!("requests{}", sel.label()), n, format_number(n))
        }
        Measure::Share { select, of } => {
            let whole = selected(of).count();
            let part = selected(of).filter(|r| select.matches(r, run)).count();
            let share = if whole == 0 { 0.0 } else { part as f64 / whole as f64 };
            let label = format!("share{} of requests{}", select.label(), of.label());
            (label, share, format!("{:.4} ({part} of {whole})", share))
        }
        Measure::Retries(sel) => {
            let n = selected(sel).map(|r| f64::from(r.retried)).sum::<f64>();
            (format!("retries{}", sel.label()), n, format_number(n))
        }
        Measure::BudgetExhausted(sel) => {
            let n = selected(sel).filter(|r| r.budget_exhausted).count() as f64;
            (format!("budget_exhausted{}", sel.label()), n, format_number(n))
        }
        Measure::UpstreamAttempts(sel) => {
            let n = selected(sel).map(|r| f64::from(r.tries.1 - r.tries.0)).sum::<f64>();
            (format!("upstream_attempts{}", sel.label()), n, format_number(n))
        }
        Measure::MaxUpstreamConcurrency(sel) => {
            let n = max_overlap(selected(sel).flat_map(tries_of)) as f64;
            (format!("max_upstream_concurrency{}", sel.label()), n, format_number(n))
        }
        Measure::MaxInFlight(sel) => {
            let n = max_overlap(selected(sel).map(|r| (r.start_ns, r.end_ns))) as f64;
            (format!("max_in_flight{}", sel.label()), n, format_number(n))
        }
        Measure::Metric(name) => match run.metrics.get(name) {
            Some(v) => (format!("metric {name}"), *v as f64, format_number(*v as f64)),
            None => (format!("metric {name}"), f64::NAN, "not defined by the filter".into()),
        },
        Measure::Breaker { policy, at } => {
            let state = breaker_at(run, policy, at.as_nanos());
            let value = state.map_or(f64::NAN, |s| match s {
                BreakerState::Closed => 0.0,
                BreakerState::Open => 1.0,
                BreakerState::HalfOpen => 2.0,
            });
            (
                format!("breaker {policy} at {at}"),
                value,
                state.map_or("unknown".into(), |s| s.as_str().into()),
            )
        }
    };
    Outcome {
        path: e.path.clone(),
        name: e.name.clone(),
        measured,
        expected: e.check.text(),
        actual,
        value,
        passed: !value.is_nan() && e.check.passes(value),
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted.get(i).map_or(0.0, |v| *v as f64 / NS_PER_MS as f64)
}

/// The per-second series of a run.
pub fn timeline(run: &Run) -> Timeline {
    let buckets = run.duration_ns.div_ceil(NS_PER_S).max(1) as usize;
    let mut seconds: Vec<Second> =
        (0..buckets).map(|t| Second { t: t as u64, ..Second::default() }).collect();
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); buckets];
    for r in &run.records {
        let b = ((r.start_ns / NS_PER_S) as usize).min(buckets - 1);
        let (Some(sec), Some(lat)) = (seconds.get_mut(b), latencies.get_mut(b)) else { continue };
        sec.requests += 1;
        *sec.by_decision.entry(r.verdict.as_str().into()).or_default() += 1;
        let status = if r.status == 0 { "aborted".to_string() } else { r.status.to_string() };
        *sec.by_status.entry(status).or_default() += 1;
        if let Some(p) = r.policy.and_then(|i| run.policies.get(i as usize)) {
            *sec.by_policy.entry(p.clone()).or_default().entry(r.verdict.as_str().into()).or_default() += 1;
        }
        sec.fallback += u64::from(r.fallback);
        sec.retries += u64::from(r.retried);
        sec.budget_exhausted += u64::from(r.budget_exhausted);
        sec.upstream_attempts += u64::from(r.tries.1 - r.tries.0);
        if r.status != 0 {
            lat.push(r.end_ns - r.start_ns);
        }
    }
    let in_flight =
        max_overlap_per_bucket(run.records.iter().map(|r| (r.start_ns, r.end_ns)), buckets, NS_PER_S);
    let upstream = max_overlap_per_bucket(run.tries.iter().copied(), buckets, NS_PER_S);
    for (i, sec) in seconds.iter_mut().enumerate() {
        sec.max_in_flight = in_flight.get(i).copied().unwrap_or(0);
        sec.max_upstream_concurrency = upstream.get(i).copied().unwrap_or(0);
        if let Some(lat) = latencies.get_mut(i) {
            lat.sort_unstable();
            sec.latency_p50_ms = percentile(lat, 0.5);
            sec.latency_p99_ms = percentile(lat, 0.99);
        }
        let end = ((i as u64 + 1) * NS_PER_S).min(run.duration_ns);
        if let Some((_, states)) = run.breaker_samples.iter().find(|(t, _)| *t == end) {
            for (p, state) in run.policies.iter().zip(states) {
                if let Some(state) = state {
                    sec.breaker.insert(p.clone(), *state);
                }
            }
        }
    }
    Timeline { policies: run.policies.clone(), seconds }
}
