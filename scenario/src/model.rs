//! What a scenario says: its traffic, its upstream, and what it expects.

pub use breakwater_policy::metrics::{BreakerState, Decision, Gauge};
use breakwater_policy::model::{Document, Duration};

pub const SCENARIO_FIELDS: &[&str] = &[
    "name",
    "description",
    "policy",
    "seed",
    "workers",
    "duration",
    "traffic",
    "upstream",
    "ratelimit_service",
    "expect",
];
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
pub const UPSTREAM_FIELDS: &[&str] = &["latency", "capacity", "status", "reset", "connect_failure", "phases"];
pub const PHASE_FIELDS: &[&str] =
    &["from", "to", "latency", "capacity", "status", "reset", "connect_failure", "down"];
pub const LATENCY_FIELDS: &[&str] = &["uniform", "exponential"];
pub const SERVICE_FIELDS: &[&str] = &["latency", "envoys", "phases"];
pub const SERVICE_PHASE_FIELDS: &[&str] = &["from", "to", "latency", "down", "hang"];

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

pub(crate) const NS_PER_MS: u64 = 1_000_000;
pub(crate) const NS_PER_S: u64 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub policy: PolicyRef,
    pub seed: u64,
    pub workers: u32,
    pub duration: Duration,
    pub traffic: Vec<Traffic>,
    pub upstream: SimulatedUpstream,
    /// The rate-limit service the policy's global limits call.
    pub ratelimit_service: SimulatedService,
    pub expect: Vec<Expectation>,
}

/// The simulated rate-limit service (global limits): its buckets are the document's global
/// limits, counted as the real service counts them.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedService {
    /// Time to answer a call. Default 1ms.
    pub latency: Latency,
    /// The fleet's size it reports (what `degraded.learn` splits a limit by). Default 1.
    pub envoys: u32,
    pub phases: Vec<ServicePhase>,
}

impl Default for SimulatedService {
    fn default() -> Self {
        SimulatedService { latency: Latency::Fixed(Duration::from_millis(1)), envoys: 1, phases: Vec::new() }
    }
}

/// The service from `from` to `to`: slower, refusing connections (`down`), or accepting and
/// never answering (`hang`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePhase {
    pub from: Duration,
    pub to: Duration,
    pub latency: Option<Latency>,
    pub down: bool,
    pub hang: bool,
}

/// How the service answers at a moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServiceState {
    Answers(Latency),
    Down,
    Hangs,
}

impl SimulatedService {
    /// Its behaviour at `t_ns` (later phases win).
    pub fn at(&self, t_ns: u64) -> ServiceState {
        let mut state = ServiceState::Answers(self.latency);
        for p in &self.phases {
            if p.from.as_nanos() <= t_ns && t_ns < p.to.as_nanos() {
                state = match (p.down, p.hang, p.latency) {
                    (true, _, _) => ServiceState::Down,
                    (_, true, _) => ServiceState::Hangs,
                    (_, _, Some(l)) => ServiceState::Answers(l),
                    _ => state,
                };
            }
        }
        state
    }
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
    pub upstream: Option<SimulatedUpstream>,
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
pub struct SimulatedUpstream {
    pub base: Behaviour,
    pub phases: Vec<UpstreamPhase>,
}

/// How the upstream answers an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    pub latency: Latency,
    /// Attempts the upstream serves at once at `latency`; an attempt that starts with k > capacity
    /// in the upstream (itself included) takes `latency · k / capacity`. None: no limit.
    pub capacity: Option<u32>,
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
            capacity: None,
            status: vec![(200, 1.0)],
            reset: 0.0,
            connect_failure: 0.0,
        }
    }
}

/// A time window in which parts of the upstream's behaviour differ.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamPhase {
    pub from: Duration,
    pub to: Duration,
    pub latency: Option<Latency>,
    pub capacity: Option<u32>,
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
    pub capacity: Option<u32>,
    pub status: &'a [(u16, f64)],
    pub reset: f64,
    pub connect_failure: f64,
}

impl SimulatedUpstream {
    pub fn at(&self, t_ns: u64) -> Effective<'_> {
        let mut e = Effective {
            latency: self.base.latency,
            capacity: self.base.capacity,
            status: &self.base.status,
            reset: self.base.reset,
            connect_failure: self.base.connect_failure,
        };
        for p in &self.phases {
            if p.from.as_nanos() <= t_ns && t_ns < p.to.as_nanos() {
                e.latency = p.latency.unwrap_or(e.latency);
                e.capacity = p.capacity.or(e.capacity);
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
    pub decision: Option<RequestDecision>,
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

/// What the filter decided for a simulated request: a policy's [`Decision`], or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RequestDecision {
    Decided(Decision),
    /// No policy matched (or the VM had failed).
    Unmatched,
}

impl RequestDecision {
    /// The word for a request no policy decided (every other word is a [`Decision`]'s).
    pub const UNMATCHED: &'static str = "unmatched";

    /// Every value, in order.
    pub fn all() -> impl Iterator<Item = RequestDecision> {
        Decision::ALL.into_iter().map(RequestDecision::Decided).chain([RequestDecision::Unmatched])
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RequestDecision::Decided(d) => d.as_str(),
            RequestDecision::Unmatched => Self::UNMATCHED,
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
