//! The policy language v1: what users write, as Rust types.
//!
//! These types serialize to the *normalized* document (every default filled in, durations in their
//! shortest exact unit). That normalized JSON is what `breakwater compile` prints and what the
//! filter receives as plugin configuration; it is itself a valid policy document, so the filter
//! reads it with the same loader and reports the same errors as the CLI.
//!
//! User input is decoded by [`crate::decode`], which reports every problem with its position; the
//! serde `Deserialize` impls here are the fast path for documents already known to be normalized.
//! Defaults live in one place, the `default_*` functions below, and appear in the JSON Schema.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most entries in any list or mapping of a policy (hosts, methods, headers, key parts, statuses,
/// outcomes, reply headers). The filter walks some of these on every request (60,000 `match.headers`
/// would be read for each one), and no sensible policy comes near it.
pub const MAX_ITEMS: usize = 64;

/// A policy document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "breakwater policy document", extend("$id" = "https://breakwater.dev/schema/policy-v1.json"))]
pub struct Document {
    /// Version of the policy language. Always 1.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// Add `x-breakwater-policy` and `x-breakwater-decision` headers to responses (for debugging).
    #[serde(default)]
    pub debug_headers: bool,
    /// Take each request's attempt count from the `x-envoy-attempt-count` response header instead
    /// of Envoy's `upstream.request_attempt_count` property (which costs several µs per request).
    /// Set it only where every route the filter serves has Envoy's
    /// `include_attempt_count_in_response` on its virtual host: Envoy's router then writes the
    /// header itself; without it, an upstream could send the header and skew the retry budget.
    // Left out of the compiled form when off, so that a document without it still loads in a
    // filter built before the field existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("default" = false))]
    pub trust_attempt_count_header: bool,
    /// The secret (32 hex digits) that keys the hash placing request keys in their tables, so that
    /// a client cannot aim keys at someone else's slots. The tools add one per deployment when
    /// publishing (docs/policy.md, "Key seed"); left out of the compiled form when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_seed: Option<KeySeed>,
    /// Ordered: the first policy whose `match` holds applies to a request; later ones are not
    /// consulted. A request that matches no policy passes untouched.
    pub policies: Vec<Policy>,
}

/// The secret that keys the fingerprints of one deployment (the document's `key_seed`, 128 bits).
/// Without one, the fingerprint is still stable but public: anyone could compute which slot a key
/// lands in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeySeed(pub u64, pub u64);

impl TryFrom<String> for KeySeed {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        KeySeed::parse(&s)
    }
}

impl From<KeySeed> for String {
    fn from(k: KeySeed) -> String {
        k.to_string()
    }
}

impl JsonSchema for KeySeed {
    fn schema_name() -> Cow<'static, str> {
        "KeySeed".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "pattern": "^[0-9a-fA-F]{32}$" })
    }
}

impl KeySeed {
    /// From 32 hexadecimal digits.
    pub fn parse(hex: &str) -> Result<KeySeed, String> {
        let ok = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        let half = |s: Option<&str>| s.and_then(|s| u64::from_str_radix(s, 16).ok());
        match (ok, half(hex.get(..16)), half(hex.get(16..))) {
            (true, Some(a), Some(b)) => Ok(KeySeed(a, b)),
            _ => Err(format!("`{hex}` is not a key seed: 32 hexadecimal digits (128 bits)")),
        }
    }
}

impl std::fmt::Display for KeySeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}{:016x}", self.0, self.1)
    }
}

impl Default for Document {
    /// An empty version-1 document.
    fn default() -> Self {
        Document {
            version: 1,
            debug_headers: false,
            trust_attempt_count_header: false,
            key_seed: None,
            policies: Vec::new(),
        }
    }
}

/// One named set of resilience rules for the requests it matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Unique name; appears in metrics (`policy` label) and debug headers.
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"))]
    pub name: String,
    /// Which requests this policy applies to. Every given condition must hold; omitted = all.
    #[serde(rename = "match", default)]
    pub matcher: Match,
    /// `enforce` rejects; `shadow` decides and counts but never rejects.
    #[serde(default)]
    pub mode: Mode,
    /// What to do when the filter's shared state cannot be read or written.
    #[serde(default)]
    pub failure_mode: FailureMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_rate_limit: Option<GlobalRateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<ConcurrencyLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Overall time for the request, retries included (Envoy's route timeout for this request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// What `breakwater render alerts` watches for this policy (the filter ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Alerts>,
}

/// The thresholds of the Prometheus alerts `breakwater render alerts` writes for a policy; a
/// field left out takes the command line's value (docs/observability.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    /// `false`: no alerts for this policy.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Percent of the policy's requests one kind of rejection may take before it alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub rejected_share: Option<u8>,
    /// How long a condition (a rejected share, an exhausted budget, a full limit) must hold
    /// before it alerts.
    #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
    pub hold_for: Option<Duration>,
    /// How long a breaker may stay open (or half-open) before that alerts too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_open_for: Option<Duration>,
    /// Percent of the concurrency limit in flight that counts as "at the limit".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub in_flight_share: Option<u8>,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            enabled: true,
            rejected_share: None,
            hold_for: None,
            breaker_open_for: None,
            in_flight_share: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// Conditions on a request; all given ones must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// `:authority` without its port: exact (`shop.example.com`) or a `*.` suffix (`*.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ITEMS))]
    pub hosts: Option<Vec<String>>,
    /// Exact path (query string excluded). Not together with `path_prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix (query string excluded). Not together with `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// HTTP methods, upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ITEMS))]
    pub methods: Option<Vec<Text>>,
    /// Header name (lower case) → exact value, or `*` for "present with any value".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_ITEMS))]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Let the request through when state is unavailable (fail open).
    #[default]
    Allow,
    /// Reject the request with the block's response when state is unavailable (fail closed).
    Deny,
}

/// Token-bucket rate limit (GCRA), shared by all Envoy workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens added per `per`.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub rate: u64,
    /// The period `rate` refers to.
    #[serde(default = "default_per")]
    pub per: Duration,
    /// Bucket size: requests admitted at once after a quiet period. Default: `rate`.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub burst: u64,
    /// What the bucket is per; omitted = one bucket for all requests of the policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ITEMS))]
    pub key: Vec<KeyPart>,
    /// Bound on tracked keys for this policy.
    #[serde(default = "default_max_keys")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_keys: u32,
    /// Reply when rate limited. Default: 429 `rate limited`.
    #[serde(default = "default_rate_limit_response")]
    pub response: Response,
}

/// A rate limit that holds across every Envoy of a fleet: the bucket is kept by the breakwater
/// rate-limit service in Redis (docs/global-limits.md), with the same meaning as `rate_limit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalRateLimit {
    /// Tokens added per `per`, for the whole fleet.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub rate: u64,
    /// The period `rate` refers to.
    #[serde(default = "default_per")]
    pub per: Duration,
    /// Bucket size for the whole fleet. Default: `rate`.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub burst: u64,
    /// What the bucket is per; omitted = one bucket for all requests of the policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ITEMS))]
    pub key: Vec<KeyPart>,
    /// `exact`: every request asks the service; `leased`: each Envoy holds a small lease of the
    /// bucket and asks only to renew it.
    #[serde(default)]
    pub mode: GlobalMode,
    /// The Envoy cluster (HTTP/2) that reaches the rate-limit service.
    #[serde(default = "default_global_service")]
    pub service: String,
    /// The rate-limit domain the service keeps this policy's buckets under.
    #[serde(default = "default_global_domain")]
    pub domain: String,
    /// The longest a request waits for the service: after it, `failure_mode` decides.
    #[serde(default = "default_global_timeout")]
    pub timeout: Duration,
    /// When the service cannot answer in time: `local` (a share of the limit, per Envoy),
    /// `allow` or `deny`.
    #[serde(default)]
    pub failure_mode: GlobalFailureMode,
    /// The local limit of `failure_mode: local`: the limit split `envoys` ways.
    #[serde(default)]
    pub degraded: Degraded,
    /// Bound on keys this Envoy tracks for the policy (leases and degraded buckets).
    #[serde(default = "default_max_keys")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_keys: u32,
    /// Reply when rate limited. Default: 429 `rate limited`.
    #[serde(default = "default_rate_limit_response")]
    pub response: Response,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GlobalMode {
    /// One call to the service per request: exact to the token.
    #[default]
    Exact,
    /// Each Envoy spends a lease of tokens taken from the global bucket, and renews it.
    Leased,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GlobalFailureMode {
    /// Degraded mode: each Envoy enforces its share of the limit (`degraded`) by itself.
    #[default]
    Local,
    /// Let requests through.
    Allow,
    /// Reject requests with the block's response.
    Deny,
}

/// How the limit is shared out when the service cannot answer (`failure_mode: local`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Degraded {
    /// The number of Envoys the limit is split between: each admits `rate/envoys` per `per`
    /// (and `burst/envoys`), rounded up.
    #[serde(default = "default_degraded_envoys")]
    #[schemars(range(min = 1, max = 100_000))]
    pub envoys: u32,
    /// Use the number of Envoys the service saw in the last minute instead of `envoys`, once the
    /// service has answered.
    #[serde(default = "default_degraded_learn")]
    pub learn: bool,
}

impl Default for Degraded {
    fn default() -> Self {
        Degraded { envoys: default_degraded_envoys(), learn: default_degraded_learn() }
    }
}

/// Bound on requests in flight at once, shared by all Envoy workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimit {
    /// A fixed limit. Exactly one of `max_in_flight` and `adaptive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_in_flight: Option<u32>,
    /// A limit that follows the upstream's latency (a gradient controller). Exactly one of
    /// `max_in_flight` and `adaptive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<Adaptive>,
    /// What the limit is per; omitted = one limit for all requests of the policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ITEMS))]
    pub key: Vec<KeyPart>,
    /// Bound on tracked keys for this policy.
    #[serde(default = "default_max_keys")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_keys: u32,
    /// Reply when the limit is reached (and the queue, if any, is full), or when a request waited
    /// `queue.max_wait` in vain. Default: 503 `too many requests in flight`.
    #[serde(default = "default_concurrency_response")]
    pub response: Response,
    /// Let requests wait for a slot instead of rejecting them at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queue>,
}

/// A waiting line in front of a concurrency limit (a bulkhead that waits): first come, first
/// served across the Envoy's workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    /// Requests that may wait at once (per key, across workers); the next is rejected.
    #[schemars(range(min = 1, max = 1000))]
    pub max_waiting: u32,
    /// How long a request may wait for its slot; one still waiting then gets the block's
    /// response. Default 1s, at most 60s.
    #[serde(default = "default_queue_max_wait")]
    pub max_wait: Duration,
}

/// A concurrency limit that finds itself: a gradient controller (as Envoy's
/// `adaptive_concurrency` filter) raises it while the upstream answers about as fast as unloaded
/// and lowers it when latency grows. See docs/policy.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Adaptive {
    /// The lowest limit, and the limit while the unloaded latency (min RTT) is measured.
    #[serde(default = "default_adaptive_min")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub min: u32,
    /// The highest limit.
    #[serde(default = "default_adaptive_max")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max: u32,
    /// The limit after the first min RTT measurement (kept within `min` and `max`).
    #[serde(default = "default_adaptive_initial")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub initial: u32,
    /// How often the limit is recomputed from the latency sampled since the last change.
    #[serde(default = "default_adaptive_interval")]
    pub interval: Duration,
    /// Latency above the min RTT, in percent, still taken for an unloaded upstream.
    #[serde(default = "default_adaptive_tolerance")]
    #[schemars(range(min = 0, max = 100))]
    pub tolerance: u8,
    /// Time from the end of one min RTT measurement to the start of the next.
    #[serde(default = "default_adaptive_probe_interval")]
    pub probe_interval: Duration,
    /// Requests a min RTT measurement takes (admitted at `min` in flight or fewer).
    #[serde(default = "default_adaptive_probe_samples")]
    #[schemars(range(min = 1, max = 10_000))]
    pub probe_samples: u32,
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive {
            min: default_adaptive_min(),
            max: default_adaptive_max(),
            initial: default_adaptive_initial(),
            interval: default_adaptive_interval(),
            tolerance: default_adaptive_tolerance(),
            probe_interval: default_adaptive_probe_interval(),
            probe_samples: default_adaptive_probe_samples(),
        }
    }
}

pub fn default_adaptive_min() -> u32 {
    3
}
pub fn default_adaptive_max() -> u32 {
    1000
}
pub fn default_adaptive_initial() -> u32 {
    20
}
pub fn default_adaptive_interval() -> Duration {
    Duration::from_millis(100)
}
pub fn default_adaptive_tolerance() -> u8 {
    25
}
pub fn default_adaptive_probe_interval() -> Duration {
    Duration::from_millis(60_000)
}
pub fn default_adaptive_probe_samples() -> u32 {
    50
}

/// The longest `concurrency_limit.queue.max_wait`.
pub const MAX_QUEUE_WAIT_MS: u64 = 60_000;

pub fn default_queue_max_wait() -> Duration {
    Duration::from_millis(1000)
}

/// Circuit breaker: stop calling an upstream that keeps failing, probe it after a pause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// An integer = the last N calls; a duration (`10s`) = the calls of the last period.
    #[serde(default = "default_window")]
    pub window: Window,
    /// Calls needed in the window before the failure rate is judged.
    #[serde(default = "default_minimum_calls")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub minimum_calls: u32,
    /// Percent of failed calls in the window that opens the breaker.
    #[serde(default = "default_failure_rate")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_rate: u8,
    /// Calls slower than `duration` count as slow; `rate` percent of slow calls opens the breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_call: Option<SlowCall>,
    /// Outcomes that count as failures: classes or exact status codes.
    #[serde(default = "default_failure_on")]
    #[schemars(length(max = MAX_ITEMS))]
    pub failure_on: Vec<Outcome>,
    /// How long the breaker stays open before probing.
    #[serde(default = "default_open_for")]
    pub open_for: Duration,
    /// Probes admitted while half-open; all must succeed to close.
    #[serde(default = "default_half_open_calls")]
    #[schemars(range(min = 1, max = 1000))]
    pub half_open_calls: u32,
    /// Reply while open. Default: 503 `circuit open`.
    #[serde(default = "default_breaker_response")]
    pub response: Response,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlowCall {
    pub duration: Duration,
    #[schemars(range(min = 1, max = 100))]
    pub rate: u8,
}

/// Retries, done by Envoy's router on the filter's instructions, within a budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    #[serde(default = "default_max_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub max_retries: u32,
    /// Envoy retry conditions (`x-envoy-retry-on`).
    #[serde(default = "default_retry_on")]
    #[schemars(length(max = MAX_ITEMS))]
    pub retry_on: Vec<RetryOn>,
    /// Status codes retried under `retriable-status-codes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ITEMS))]
    pub statuses: Vec<u16>,
    /// Time limit of each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Methods that may be retried. Default: the idempotent ones.
    #[serde(default = "default_retry_methods")]
    #[schemars(length(max = MAX_ITEMS))]
    pub methods: Vec<Text>,
    /// Retries allowed per second: `percent` of requests plus `min_per_second`.
    #[serde(default)]
    pub budget: Budget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default = "default_budget_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: u8,
    #[serde(default = "default_budget_min_per_second")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub min_per_second: u32,
}

impl Default for Budget {
    fn default() -> Self {
        Budget { percent: default_budget_percent(), min_per_second: default_budget_min_per_second() }
    }
}

/// A reply in place of an upstream failure left after retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    #[serde(default = "default_fallback_on")]
    #[schemars(length(max = MAX_ITEMS))]
    pub on: Vec<Outcome>,
    pub response: Response,
}

/// A reply the filter sends itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Response {
    #[schemars(range(min = 200, max = 599))]
    pub status: u16,
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub body: Text,
}

impl Response {
    /// A reply with a fixed plain-text body (the defaults: no copy of the text).
    pub fn with_status(status: u16, body: &'static str) -> Self {
        let mut headers = Headers::default();
        if !body.is_empty() {
            headers.insert(Cow::Borrowed("content-type"), Cow::Borrowed("text/plain"));
        }
        Response { status, headers, body: Cow::Borrowed(body) }
    }
}

/// A reply's headers: each name once, in name order, written as a mapping (the same shape and
/// schema as a `BTreeMap`). A sorted vector rather than a map because every policy carries up to
/// four replies, most with one header: a `BTreeMap`'s first node makes room for eleven entries
/// (about 560 bytes here), which made the default replies most of a loaded policy's memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(Text, Text)>);

impl Headers {
    /// Sets `name` to `value`, replacing an earlier value.
    pub fn insert(&mut self, name: Text, value: Text) {
        match self.0.binary_search_by(|(k, _)| k.as_ref().cmp(name.as_ref())) {
            Ok(i) => {
                if let Some(slot) = self.0.get_mut(i) {
                    slot.1 = value;
                }
            }
            Err(i) => self.0.insert(i, (name, value)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Text, &Text)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl FromIterator<(Text, Text)> for Headers {
    fn from_iter<I: IntoIterator<Item = (Text, Text)>>(items: I) -> Self {
        let mut headers = Headers::default();
        for (name, value) in items {
            headers.insert(name, value);
        }
        headers
    }
}

impl Serialize for Headers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(deserializer)?;
        Ok(map.into_iter().map(|(k, v)| (Text::Owned(k), Text::Owned(v))).collect())
    }
}

impl JsonSchema for Headers {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        BTreeMap::<String, String>::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = BTreeMap::<String, String>::json_schema(generator);
        schema.insert("maxProperties".into(), MAX_ITEMS.into());
        schema
    }
}

// ---- defaults: the single place they are defined (docs/policy.md lists them) ----

pub fn default_per() -> Duration {
    Duration::from_millis(1000)
}
pub fn default_max_keys() -> u32 {
    100_000
}
pub fn default_rate_limit_response() -> Response {
    Response::with_status(429, "rate limited\n")
}
pub fn default_global_service() -> String {
    "breakwater-ratelimit".to_string()
}
pub fn default_global_domain() -> String {
    "breakwater".to_string()
}
pub fn default_global_timeout() -> Duration {
    Duration::from_millis(20)
}
pub fn default_degraded_envoys() -> u32 {
    1
}
pub fn default_degraded_learn() -> bool {
    true
}
pub fn default_concurrency_response() -> Response {
    Response::with_status(503, "too many requests in flight\n")
}
pub fn default_window() -> Window {
    Window::Calls(100)
}
pub fn default_minimum_calls() -> u32 {
    20
}
pub fn default_failure_rate() -> u8 {
    50
}
pub fn default_failure_on() -> Vec<Outcome> {
    vec![Outcome::Status5xx, Outcome::Reset, Outcome::ConnectFailure, Outcome::Timeout]
}
pub fn default_open_for() -> Duration {
    Duration::from_millis(30_000)
}
pub fn default_half_open_calls() -> u32 {
    5
}
pub fn default_breaker_response() -> Response {
    Response::with_status(503, "circuit open\n")
}
pub fn default_max_retries() -> u32 {
    1
}
pub fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::GatewayError]
}
pub fn default_retry_methods() -> Vec<Text> {
    ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"].map(Cow::Borrowed).to_vec()
}
pub fn default_budget_percent() -> u8 {
    20
}
pub fn default_budget_min_per_second() -> u32 {
    10
}
pub fn default_fallback_on() -> Vec<Outcome> {
    vec![Outcome::Status5xx, Outcome::Timeout, Outcome::Reset, Outcome::ConnectFailure]
}

/// Text of the model that is often one of a few fixed words (HTTP methods, the default replies):
/// those are borrowed, not copied, so a document of many policies loads with fewer allocations.
/// Reads and writes as a plain string.
pub type Text = Cow<'static, str>;

/// HTTP methods a policy may name.
pub const METHODS: [&str; 9] =
    ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"];

/// Faults injected into the requests the other blocks let through, standing in for a failing or
/// slow upstream (chaos testing without touching the service): after the limits and the breaker
/// have admitted a request, a share of requests is delayed, aborted, or both (delay first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Faults on request: only requests carrying `x-breakwater-fault-abort: STATUS` are aborted
    /// (with that status) and only those carrying `x-breakwater-fault-delay: MILLISECONDS` are
    /// delayed (by that long, at most the delay's `max`), each at the block's `percent`.
    #[serde(default)]
    pub headers: bool,
    /// At most this many requests held by delays at once, across the Envoy's workers; a request
    /// that would wait beyond it goes on without the delay.
    #[serde(default = "default_fault_max_active")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_active: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// Share of requests aborted, 0 to 100: exact over time (a request counter, not a coin per
    /// request).
    pub percent: Percent,
    /// The reply. Default: 503 `fault injected`.
    #[serde(default = "default_fault_response")]
    pub response: Response,
    /// Reset the stream instead of replying (the client gets no response: HTTP/1 sees its
    /// connection closed, HTTP/2 the stream reset).
    #[serde(default)]
    pub reset: bool,
    /// Count injected aborts as failures in the policy's circuit breaker. Off: the breaker judges
    /// the upstream, and an injected abort says nothing about it.
    #[serde(default)]
    pub count_in_breaker: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// Share of requests delayed, exact over time like the abort's.
    pub percent: Percent,
    /// How long a delayed request waits before it goes upstream.
    pub duration: Duration,
    /// With `max`, each delay is drawn uniformly between `duration` and `max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Duration>,
}

pub fn default_fault_max_active() -> u32 {
    1000
}
pub fn default_fault_response() -> Response {
    Response::with_status(503, "fault injected\n")
}

/// A share of requests: 0 to 100 percent in steps of 0.0001, kept as parts per million (exact
/// arithmetic). 0 turns a fault off and keeps its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent {
    ppm: u32,
}

impl Percent {
    pub const MILLION: u32 = 1_000_000;
    /// From parts per million; None above 1,000,000.
    pub const fn from_ppm(ppm: u32) -> Option<Percent> {
        if ppm <= Self::MILLION { Some(Percent { ppm }) } else { None }
    }
    pub const fn ppm(self) -> u32 {
        self.ppm
    }
    /// From a percentage with at most four decimals (0 to 100).
    pub fn from_percent(p: f64) -> Result<Percent, String> {
        if !(0.0..=100.0).contains(&p) {
            return Err(format!("must be between 0 and 100, found {p}"));
        }
        let ppm = (p * 10_000.0).round();
        if (ppm - p * 10_000.0).abs() > 1e-6 {
            return Err(format!("at most four decimals (0.0001 is the smallest share), found {p}"));
        }
        Percent::from_ppm(ppm as u32).ok_or_else(|| format!("must be between 0 and 100, found {p}"))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, part) = (self.ppm / 10_000, self.ppm % 10_000);
        if part == 0 {
            write!(f, "{whole}")
        } else {
            let decimals = format!("{part:04}");
            write!(f, "{whole}.{}", decimals.trim_end_matches('0'))
        }
    }
}

impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.ppm.is_multiple_of(10_000) {
            s.serialize_u32(self.ppm / 10_000)
        } else {
            s.serialize_f64(f64::from(self.ppm) / 10_000.0)
        }
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Percent::from_percent(f64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Percent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Percent".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "number",
            "minimum": 0,
            "maximum": 100,
            "description": "A percentage of requests, 0 to 100, with at most four decimals (0 turns the fault off).",
            "examples": [5, 0.5, 100]
        })
    }
}

// ---- value types with their own text forms ----

/// A duration written as a whole number and a unit: `250ms`, `1s`, `2m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    millis: u64,
}

/// The longest duration a policy may name (one day).
pub const MAX_DURATION_MS: u64 = 86_400_000;

impl Duration {
    pub const fn from_millis(millis: u64) -> Self {
        Duration { millis }
    }
    pub const fn as_millis(self) -> u64 {
        self.millis
    }
    pub const fn as_nanos(self) -> u64 {
        self.millis.saturating_mul(1_000_000)
    }

    /// Parses `250ms`, `1s`, `2m`, `1h`. The error says what is wrong in the user's words.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let hint = "write a whole number and a unit: 250ms, 1s, 2m, 1h";
        if digits.is_empty() {
            return Err(format!("`{text}` is not a duration; {hint}"));
        }
        let factor = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => return Err(format!("`{text}` has no unit; {hint}")),
            _ => {
                return Err(match fractional_millis(text) {
                    Some(ms) => format!("durations are whole numbers: write {ms}ms instead of {text}"),
                    None => format!("`{text}` has an unknown unit `{unit}`; {hint}"),
                });
            }
        };
        let n: u64 = digits.parse().map_err(|_| format!("`{text}` is too long a duration"))?;
        let millis = n.checked_mul(factor).filter(|m| *m <= MAX_DURATION_MS);
        match millis {
            Some(0) => Err("must be longer than 0".to_string()),
            Some(millis) => Ok(Duration { millis }),
            None => Err(format!("`{text}` is longer than the maximum of 24h")),
        }
    }
}

/// `1.5s` → 1500: the whole milliseconds a fractional duration stands for, if it is exact.
fn fractional_millis(text: &str) -> Option<u64> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = text.split_at(unit_at);
    let factor = match unit {
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    let ms = number.parse::<f64>().ok()? * factor;
    (ms.fract() == 0.0 && ms >= 1.0 && ms <= MAX_DURATION_MS as f64).then_some(ms as u64)
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.millis;
        match () {
            _ if m > 0 && m.is_multiple_of(3_600_000) => write!(f, "{}h", m / 3_600_000),
            _ if m > 0 && m.is_multiple_of(60_000) => write!(f, "{}m", m / 60_000),
            _ if m > 0 && m.is_multiple_of(1000) => write!(f, "{}s", m / 1000),
            _ => write!(f, "{m}ms"),
        }
    }
}

/// Text forms shared by the value types: Display for output, `parse` for input.
macro_rules! text_serde {
    ($ty:ty, $($schema:tt)+) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                <$ty>::parse(&text).map_err(serde::de::Error::custom)
            }
        }
        impl JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!($($schema)+)
            }
        }
    };
}

text_serde!(Duration, {
    "type": "string",
    "pattern": "^[0-9]+(ms|s|m|h)$",
    "description": "A whole number and a unit: 250ms, 1s, 2m, 1h (at most 24h).",
    "examples": ["250ms", "1s", "2m"]
});

/// A circuit-breaker window: the last N calls, or the calls of the last period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Calls(u32),
    Time(Duration),
}

/// Most calls a count-based window may hold (its state is a bitmap in shared data).
pub const MAX_WINDOW_CALLS: u32 = 10_000;

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Window::Calls(n) => s.serialize_u32(*n),
            Window::Time(d) => d.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Calls(u32),
            Time(Duration),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Calls(n) => Window::Calls(n),
            Raw::Time(t) => Window::Time(t),
        })
    }
}

impl JsonSchema for Window {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Window".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let duration = generator.subschema_for::<Duration>();
        schemars::json_schema!({
            "description": "An integer = the last N calls (1..10000); a duration = the calls of the last period (1s..1h).",
            "oneOf": [
                { "type": "integer", "minimum": 1, "maximum": MAX_WINDOW_CALLS },
                duration
            ]
        })
    }
}

/// One part of a rate-limit or concurrency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyPart {
    ClientIp,
    Host,
    Method,
    Path,
    /// A request header, by lower-case name.
    Header(String),
}

impl KeyPart {
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "client_ip" => KeyPart::ClientIp,
            "host" => KeyPart::Host,
            "method" => KeyPart::Method,
            "path" => KeyPart::Path,
            _ => match text.strip_prefix("header:") {
                Some(name) if is_header_name(name) => KeyPart::Header(name.to_string()),
                Some(name) => {
                    return Err(format!(
                        "`{name}` is not a header name (lower-case letters, digits, `-` and `_`)"
                    ));
                }
                None => {
                    return Err(format!(
                        "unknown key part `{text}`; use client_ip, host, method, path or header:NAME"
                    ));
                }
            },
        })
    }
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::ClientIp => f.write_str("client_ip"),
            KeyPart::Host => f.write_str("host"),
            KeyPart::Method => f.write_str("method"),
            KeyPart::Path => f.write_str("path"),
            KeyPart::Header(h) => write!(f, "header:{h}"),
        }
    }
}

text_serde!(KeyPart, {
    "type": "string",
    "pattern": "^(client_ip|host|method|path|header:[a-z0-9_-]+)$",
    "description": "client_ip | host | method | path | header:NAME"
});

/// True for lower-case HTTP header names as Envoy normalizes them.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A class of upstream outcome, or an exact status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Any 5xx response, also Envoy's own (503 on connect failure, 504 on timeout).
    Status5xx,
    /// 502, 503, 504.
    GatewayError,
    /// The upstream connection was reset (before or after response headers).
    Reset,
    /// The upstream could not be connected to.
    ConnectFailure,
    /// The overall or per-try timeout expired.
    Timeout,
    /// This exact status code.
    Status(u16),
}

pub const OUTCOME_CLASSES: [&str; 5] = ["5xx", "gateway-error", "reset", "connect-failure", "timeout"];

impl Outcome {
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "5xx" => Outcome::Status5xx,
            "gateway-error" => Outcome::GatewayError,
            "reset" => Outcome::Reset,
            "connect-failure" => Outcome::ConnectFailure,
            "timeout" => Outcome::Timeout,
            _ => match text.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => Outcome::Status(code),
                Ok(_) => return Err(format!("status {text} is outside 100..599")),
                Err(_) => {
                    return Err(format!(
                        "unknown outcome `{text}`; use {}, or a status code",
                        OUTCOME_CLASSES.join(", ")
                    ));
                }
            },
        })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Status5xx => f.write_str("5xx"),
            Outcome::GatewayError => f.write_str("gateway-error"),
            Outcome::Reset => f.write_str("reset"),
            Outcome::ConnectFailure => f.write_str("connect-failure"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Status(code) => write!(f, "{code}"),
        }
    }
}

impl Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Outcome::Status(code) => s.serialize_u16(*code),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Code(u16),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Code(c) => Outcome::parse(&c.to_string()),
            Raw::Text(t) => Outcome::parse(&t),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Outcome {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Outcome".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An outcome class or an exact status code.",
            "oneOf": [
                { "type": "string", "enum": OUTCOME_CLASSES },
                { "type": "integer", "minimum": 100, "maximum": 599 }
            ]
        })
    }
}

/// Envoy's retry conditions, as `x-envoy-retry-on` spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    #[serde(rename = "5xx")]
    Status5xx,
    GatewayError,
    Reset,
    ResetBeforeRequest,
    ConnectFailure,
    RefusedStream,
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    RetriableStatusCodes,
    EnvoyRatelimited,
    #[serde(rename = "http3-post-connect-failure")]
    Http3PostConnectFailure,
}

impl RetryOn {
    pub const ALL: [RetryOn; 10] = [
        RetryOn::Status5xx,
        RetryOn::GatewayError,
        RetryOn::Reset,
        RetryOn::ResetBeforeRequest,
        RetryOn::ConnectFailure,
        RetryOn::RefusedStream,
        RetryOn::Retriable4xx,
        RetryOn::RetriableStatusCodes,
        RetryOn::EnvoyRatelimited,
        RetryOn::Http3PostConnectFailure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::Status5xx => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::Reset => "reset",
            RetryOn::ResetBeforeRequest => "reset-before-request",
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::RefusedStream => "refused-stream",
            RetryOn::Retriable4xx => "retriable-4xx",
            RetryOn::RetriableStatusCodes => "retriable-status-codes",
            RetryOn::EnvoyRatelimited => "envoy-ratelimited",
            RetryOn::Http3PostConnectFailure => "http3-post-connect-failure",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_headers_keep_one_value_per_name_in_name_order_and_serialize_as_a_mapping() {
        let t = |s: &str| Text::Owned(s.to_string());
        let mut h: Headers =
            [(t("x-b"), t("1")), (t("content-type"), t("a")), (t("x-a"), t("2"))].into_iter().collect();
        h.insert(t("content-type"), t("b"));
        let pairs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
        assert_eq!(pairs, [("content-type", "b"), ("x-a", "2"), ("x-b", "1")]);
        assert_eq!(h.len(), 3);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, r#"{"content-type":"b","x-a":"2","x-b":"1"}"#);
        assert_eq!(serde_json::from_str::<Headers>(&json).unwrap(), h);
        assert!(serde_json::from_str::<Headers>(r#"["content-type"]"#).is_err());
    }

    #[test]
    fn durations_parse_and_print_in_their_shortest_exact_unit() {
        for (text, ms, shown) in [
            ("250ms", 250, "250ms"),
            ("1s", 1000, "1s"),
            ("1500ms", 1500, "1500ms"),
            ("120s", 120_000, "2m"),
            ("1h", 3_600_000, "1h"),
        ] {
            let d = Duration::parse(text).unwrap();
            assert_eq!(d.as_millis(), ms);
            assert_eq!(d.to_string(), shown);
        }
        for bad in ["", "1", "1.5s", "s", "1d", "-1s", "0s", "25h", "99999999999999999999999s"] {
            assert!(Duration::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn key_parts_and_outcomes_round_trip() {
        for text in ["client_ip", "host", "method", "path", "header:x-api-key"] {
            assert_eq!(KeyPart::parse(text).unwrap().to_string(), text);
        }
        assert!(KeyPart::parse("header:X-Api-Key").is_err());
        assert!(KeyPart::parse("ip").is_err());
        for text in ["5xx", "gateway-error", "reset", "connect-failure", "timeout", "429"] {
            assert_eq!(Outcome::parse(text).unwrap().to_string(), text);
        }
        assert!(Outcome::parse("600").is_err());
        for r in RetryOn::ALL {
            assert_eq!(RetryOn::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), serde_json::json!(r.as_str()));
        }
    }
}
