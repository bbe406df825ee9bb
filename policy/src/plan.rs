//! The immutable form of a document that every request reads.
//!
//! Compiled once per configuration (in the filter's on_configure), so that per request nothing is
//! parsed, allocated for matching, or looked up by name: the request's host, path and method are
//! compared against pre-normalized matchers in order, and the first match wins.

use std::sync::Arc;

use crate::engine::breaker::BreakerConfig;
use crate::engine::budget::RetryBudget;
use crate::engine::keys::{KeySeed, KeyTable};
use crate::engine::rate_limit::Gcra;
use crate::engine::{NANOS_PER_SEC, Nanos, concurrency};
use crate::model::{self, Document, KeyPart, Mode, Policy};

pub use crate::request::{RequestView, SimpleRequest, compose_key, key_fingerprint, key_part, until};

/// `Default`: a plan of no policies, which matches no request.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub debug_headers: bool,
    /// The document's `trust_attempt_count_header`.
    pub trust_attempt_count_header: bool,
    pub policies: Vec<PolicyPlan>,
    /// Every request header a matcher or key reads, so the filter fetches each once.
    pub header_names: Vec<String>,
    /// Whether any key uses the client IP (so the filter reads `source.address` only then).
    pub needs_client_ip: bool,
    /// Whether any matcher or key reads the host (so the filter reads `:authority` only then).
    pub needs_host: bool,
    /// Whether any matcher, key or retry reads the method (so the filter reads `:method` only then).
    pub needs_method: bool,
    index: PolicyIndex,
}

/// Which policies can match a request, by the first segment of its path, so that a request is
/// not compared with every policy of a large document (1,000 policies scanned in order cost more
/// than the rest of the filter's decision).
///
/// A policy whose path names a first segment (an exact path, or a prefix such as `/orders/` that
/// closes its first segment with `/`) can only match requests with that segment; every other
/// policy is tried for all requests. Candidates are tried in document order, so the first match is
/// the one a scan in order finds (a property test checks).
#[derive(Debug, Clone, Default)]
struct PolicyIndex {
    /// FNV-1a: its keys come from the configuration, so a request cannot pick keys that collide.
    by_segment: std::collections::HashMap<String, Vec<usize>, crate::fnv::BuildFnv>,
    everywhere: Vec<usize>,
}

/// The first segment of an absolute path (`/orders/7?x` → `orders`), without the query.
fn first_segment(path: &str) -> Option<&str> {
    Some(until(until(path, b'?').strip_prefix('/')?, b'/'))
}

impl PolicyIndex {
    fn new(policies: &[PolicyPlan]) -> Self {
        let mut index = PolicyIndex::default();
        for (i, p) in policies.iter().enumerate() {
            let segment = match &p.matcher.path {
                Some(PathPattern::Exact(e)) => first_segment(e),
                Some(PathPattern::Prefix(prefix)) => {
                    prefix.strip_prefix('/').and_then(|rest| rest.split_once('/')).map(|(seg, _)| seg)
                }
                None => None,
            };
            match segment {
                Some(seg) => index.by_segment.entry(seg.to_string()).or_default().push(i),
                None => index.everywhere.push(i),
            }
        }
        index
    }

    /// The policies that can match, in document order.
    fn candidates<'a>(&'a self, path: &str) -> impl Iterator<Item = usize> + 'a {
        let listed: &[usize] =
            first_segment(path).and_then(|s| self.by_segment.get(s)).map_or(&[], Vec::as_slice);
        let (mut a, mut b) = (self.everywhere.iter().copied().peekable(), listed.iter().copied().peekable());
        std::iter::from_fn(move || match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x < y => a.next(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct PolicyPlan {
    pub policy: Policy,
    pub matcher: Matcher,
    pub rate_limit: Option<Gcra>,
    /// The global limit's calls and degraded state.
    pub global: Option<crate::global::GlobalPlan>,
    /// The fault block's shares and its record.
    pub fault: Option<crate::fault::FaultPlan>,
    pub breaker: Option<BreakerConfig>,
    pub budget: Option<RetryBudget>,
    /// Header values that do not change between requests, rendered once.
    pub headers: FixedHeaders,
    /// Where this policy's state lives in shared data (computed once, not per request).
    pub state: StateKeys,
    /// The bucket width of its concurrency leases ([`lease_width`]).
    pub lease_width: Nanos,
}

/// How long a concurrency hold lasts without its release (a VM that trapped or was replaced with
/// streams in flight never releases) when the policy has no `timeout`.
pub const DEFAULT_CONCURRENCY_LEASE: Nanos = 600 * NANOS_PER_SEC;

/// The bucket width of a policy's concurrency leases ([`concurrency::lease_width`]): a lease is
/// the policy's `timeout` plus a minute, or [`DEFAULT_CONCURRENCY_LEASE`], plus its longest
/// injected delay (a delayed request holds its slot, and the delay is not part of `timeout`).
pub fn lease_width(p: &Policy) -> Nanos {
    let lease =
        p.timeout.map_or(DEFAULT_CONCURRENCY_LEASE, |t| t.as_nanos().saturating_add(60 * NANOS_PER_SEC));
    let delay =
        p.fault.as_ref().and_then(|f| f.delay.as_ref()).map_or(0, |d| d.max.unwrap_or(d.duration).as_nanos());
    concurrency::lease_width(lease.saturating_add(delay))
}

/// What bounds a concurrency limit's slots: its `max_in_flight`, or its `adaptive` controller.
pub fn concurrency_limit(cl: &crate::model::ConcurrencyLimit) -> concurrency::Limit {
    match &cl.adaptive {
        Some(a) => concurrency::Limit::Adaptive(crate::engine::adaptive::Gradient {
            min: a.min,
            max: a.max.max(a.min),
            initial: a.initial,
            interval: a.interval.as_nanos(),
            tolerance_ppm: u32::from(a.tolerance).saturating_mul(10_000),
            probe_interval: a.probe_interval.as_nanos(),
            probe_samples: a.probe_samples,
        }),
        // Validation requires one of the two.
        None => concurrency::Limit::Fixed(cl.max_in_flight.unwrap_or(1)),
    }
}

/// Shared-data names of a policy's state: keyed blocks in bounded tables `bw/<policy>/<block>/<slot>`,
/// everything without a request key in the policy's record `bw/<policy>/p` (see
/// [`crate::engine::record`]).
#[derive(Debug, Clone)]
pub struct StateKeys {
    /// The rate limit's table, None when it has no key (its state is in the record).
    pub rate_limit: Option<KeyTable>,
    /// The concurrency limit's table, None when it has no key (its state is in the record).
    pub concurrency: Option<KeyTable>,
    pub record: String,
}

impl StateKeys {
    fn new(p: &Policy, seed: KeySeed) -> Self {
        let name = &p.name;
        let table = |block: &str, key: &[KeyPart], max_keys: u32| {
            (!key.is_empty()).then(|| KeyTable::new(format!("bw/{name}/{block}"), max_keys).with_seed(seed))
        };
        StateKeys {
            rate_limit: p.rate_limit.as_ref().and_then(|r| table("rl", &r.key, r.max_keys)),
            concurrency: p.concurrency_limit.as_ref().and_then(|c| table("cl", &c.key, c.max_keys)),
            record: ["bw/", name, "/p"].concat(),
        }
    }
}

/// A policy's header values that are the same for every request, rendered once at configuration
/// rather than formatted per request. Shared (`Arc`), so that a request setting them copies a
/// pointer, not the text.
#[derive(Debug, Clone, Default)]
pub struct FixedHeaders {
    /// `ratelimit-policy` (empty without a rate limit).
    pub rate_limit_policy: Arc<str>,
    /// `x-envoy-retry-on` (empty without retries).
    pub retry_on: Arc<str>,
    pub retriable_status_codes: Option<Arc<str>>,
    pub per_try_timeout_ms: Option<Arc<str>>,
    pub timeout_ms: Option<Arc<str>>,
}

impl FixedHeaders {
    fn new(p: &Policy, rate_limit: Option<&Gcra>) -> Self {
        // Comma-separated, written into one string.
        fn joined<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> Arc<str> {
            use std::fmt::Write;
            let mut out = String::new();
            for (i, item) in items.enumerate() {
                let _ = write!(out, "{}{item}", if i == 0 { "" } else { "," });
            }
            out.into()
        }
        let retry = p.retry.as_ref();
        FixedHeaders {
            rate_limit_policy: rate_limit.map(|g| g.policy_header(&p.name).into()).unwrap_or_default(),
            retry_on: retry.map(|r| joined(r.retry_on.iter().map(|o| o.as_str()))).unwrap_or_default(),
            retriable_status_codes: retry
                .filter(|r| !r.statuses.is_empty())
                .map(|r| joined(r.statuses.iter())),
            per_try_timeout_ms: retry
                .and_then(|r| r.per_try_timeout)
                .map(|t| t.as_millis().to_string().into()),
            timeout_ms: p.timeout.map(|t| t.as_millis().to_string().into()),
        }
    }
}

impl PolicyPlan {
    pub fn name(&self) -> &str {
        &self.policy.name
    }
    pub fn enforcing(&self) -> bool {
        self.policy.mode == Mode::Enforce
    }
}

#[derive(Debug, Clone, Default)]
pub struct Matcher {
    hosts: Option<Vec<HostPattern>>,
    path: Option<PathPattern>,
    methods: Option<Vec<crate::model::Text>>,
    headers: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone)]
enum PathPattern {
    Exact(String),
    Prefix(String),
}

impl Matcher {
    pub fn new(m: &model::Match) -> Self {
        let hosts = m.hosts.as_ref().map(|hs| {
            hs.iter()
                .map(|h| match h.strip_prefix('*') {
                    Some(suffix) => HostPattern::Suffix(suffix.to_ascii_lowercase()),
                    None => HostPattern::Exact(h.to_ascii_lowercase()),
                })
                .collect()
        });
        let path = match (&m.path, &m.path_prefix) {
            (Some(p), _) => Some(PathPattern::Exact(p.clone())),
            (None, Some(p)) => Some(PathPattern::Prefix(p.clone())),
            (None, None) => None,
        };
        let headers = m.headers.iter().map(|(k, v)| (k.clone(), (v != "*").then(|| v.clone()))).collect();
        Matcher { hosts, path, methods: m.methods.clone(), headers }
    }

    pub fn matches(&self, req: &impl RequestView) -> bool {
        if let Some(methods) = &self.methods
            && !methods.iter().any(|m| m == req.method())
        {
            return false;
        }
        if let Some(path) = &self.path {
            let p = until(req.path(), b'?');
            let ok = match path {
                PathPattern::Exact(e) => p == e,
                PathPattern::Prefix(prefix) => p.starts_with(prefix.as_str()),
            };
            if !ok {
                return false;
            }
        }
        if let Some(hosts) = &self.hosts {
            let host = strip_port(req.authority());
            let ok = hosts.iter().any(|h| match h {
                HostPattern::Exact(e) => host.eq_ignore_ascii_case(e),
                HostPattern::Suffix(s) => {
                    host.len() > s.len()
                        && host
                            .get(host.len().saturating_sub(s.len())..)
                            .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
                }
            });
            if !ok {
                return false;
            }
        }
        self.headers.iter().all(|(name, want)| match (req.header(name), want) {
            (Some(_), None) => true,
            (Some(v), Some(w)) => v == w,
            (None, _) => false,
        })
    }
}

/// `host:port` → `host`; `[::1]:80` → `[::1]`.
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').and_then(|i| authority.get(..=i)).unwrap_or(authority);
    }
    until(authority, b':')
}

impl Plan {
    /// Compiles a validated document (taking it: each policy moves into its plan, uncopied).
    pub fn new(doc: Document) -> Result<Plan, String> {
        let mut policies = Vec::with_capacity(doc.policies.len());
        let mut header_names: Vec<String> = Vec::new();
        let mut needs_client_ip = false;
        let mut needs_host = false;
        let mut needs_method = false;
        for p in doc.policies {
            needs_host |= p.matcher.hosts.is_some();
            // Retries apply to the retry methods only.
            needs_method |= p.matcher.methods.is_some() || p.retry.is_some();
            let rate_limit = match &p.rate_limit {
                Some(rl) => Some(
                    Gcra::try_new(rl.rate, rl.per.as_nanos(), rl.burst)
                        .map_err(|e| format!("policy {}: rate_limit: {e}", p.name))?,
                ),
                None => None,
            };
            header_names.extend(p.matcher.headers.keys().cloned());
            let fault = p.fault.as_ref().map(|f| crate::fault::FaultPlan::new(&p.name, f));
            header_names.extend(fault.iter().flat_map(|f| f.header_names()).map(|h| h.to_string()));
            let keys = p
                .rate_limit
                .iter()
                .flat_map(|r| &r.key)
                .chain(p.global_rate_limit.iter().flat_map(|g| &g.key))
                .chain(p.concurrency_limit.iter().flat_map(|c| &c.key));
            for k in keys {
                match k {
                    KeyPart::Header(h) => header_names.push(h.clone()),
                    KeyPart::ClientIp => needs_client_ip = true,
                    KeyPart::Host => needs_host = true,
                    KeyPart::Method => needs_method = true,
                    KeyPart::Path => {}
                }
            }
            policies.push(PolicyPlan {
                matcher: Matcher::new(&p.matcher),
                rate_limit,
                global: p
                    .global_rate_limit
                    .as_ref()
                    .map(|g| crate::global::GlobalPlan::new(&p, g, doc.key_seed.unwrap_or_default())),
                fault,
                breaker: p.circuit_breaker.as_ref().map(BreakerConfig::from_model),
                budget: p.retry.as_ref().map(|r| RetryBudget::new(r.budget.percent, r.budget.min_per_second)),
                headers: FixedHeaders::new(&p, rate_limit.as_ref()),
                state: StateKeys::new(&p, doc.key_seed.unwrap_or_default()),
                lease_width: lease_width(&p),
                policy: p,
            });
        }
        header_names.sort();
        header_names.dedup();
        let index = PolicyIndex::new(&policies);
        Ok(Plan {
            debug_headers: doc.debug_headers,
            trust_attempt_count_header: doc.trust_attempt_count_header,
            policies,
            header_names,
            needs_client_ip,
            needs_host,
            needs_method,
            index,
        })
    }

    /// The first policy whose match holds.
    pub fn select(&self, req: &impl RequestView) -> Option<&PolicyPlan> {
        self.first_match(req).map(|(_, p)| p)
    }

    /// The first policy whose match holds, with its index in the document.
    pub fn first_match(&self, req: &impl RequestView) -> Option<(usize, &PolicyPlan)> {
        self.index
            .candidates(req.path())
            .filter_map(|i| self.policies.get(i).map(|p| (i, p)))
            .find(|(_, p)| p.matcher.matches(req))
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;
    use proptest::prelude::*;

    const PATHS: &[&str] = &["/", "/a", "/a/", "/a/b", "/a/b/", "/ab", "/ab/", "/b", "/b/", "/b/c"];
    const REQUESTS: &[&str] = &[
        "/", "/a", "/a/", "/a/b", "/a/b?x=1", "/a?q", "/ab", "/abc/d", "/b", "/b/c", "//a", "", "a", "?a",
        "/a/b/c",
    ];

    proptest! {
        /// The index finds the policy a scan in document order finds, for any mix of exact paths,
        /// prefixes and policies without a path.
        #[test]
        fn index_finds_what_a_scan_finds(
            specs in proptest::collection::vec((0..3u8, 0..PATHS.len()), 1..12),
        ) {
            let mut yaml = String::from("version: 1\npolicies:\n");
            for (i, (kind, path)) in specs.iter().enumerate() {
                let path = PATHS[*path];
                let matcher = match kind {
                    0 => format!("{{ path: \"{path}\" }}"),
                    1 => format!("{{ path_prefix: \"{path}\" }}"),
                    _ => "{ methods: [GET] }".to_string(),
                };
                yaml.push_str(&format!("  - name: p{i}\n    match: {matcher}\n"));
            }
            let doc = crate::load(&yaml).map_err(|e| TestCaseError::fail(format!("{e:?}")))?.document;
            let plan = Plan::new(doc).map_err(TestCaseError::fail)?;
            for path in REQUESTS {
                let req = SimpleRequest::new("GET", "h", path);
                let scan = plan.policies.iter().position(|p| p.matcher.matches(&req));
                prop_assert_eq!(plan.first_match(&req).map(|(i, _)| i), scan, "{}", path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn req(authority: &str, path: &str, method: &str) -> SimpleRequest {
        SimpleRequest::new(method, authority, path)
    }

    #[test]
    fn first_matching_policy_wins() {
        let doc = crate::load(
            r#"
version: 1
policies:
  - name: checkout
    match: { hosts: ["shop.example.com", "*.shop.test"], path_prefix: /api/checkout, methods: [POST] }
  - name: tenant-gold
    match: { headers: { x-tenant: gold } }
  - name: any-tenant
    match: { headers: { x-tenant: "*" } }
  - name: exact
    match: { path: /health }
"#,
        )
        .unwrap()
        .document;
        let plan = Plan::new(doc).unwrap();
        let name = |r: &SimpleRequest| plan.select(r).map(|p| p.name().to_string());
        assert_eq!(
            name(&req("shop.example.com:8443", "/api/checkout/1?x=1", "POST")).as_deref(),
            Some("checkout")
        );
        assert_eq!(name(&req("SHOP.example.com", "/api/checkout", "POST")).as_deref(), Some("checkout"));
        assert_eq!(name(&req("eu.shop.test", "/api/checkout", "POST")).as_deref(), Some("checkout"));
        assert_eq!(name(&req("shop.test", "/api/checkout", "POST")), None);
        assert_eq!(name(&req("shop.example.com", "/api/checkout", "GET")), None);
        assert_eq!(name(&req("a", "/", "GET").header("x-tenant", "gold")).as_deref(), Some("tenant-gold"));
        assert_eq!(name(&req("a", "/", "GET").header("x-tenant", "silver")).as_deref(), Some("any-tenant"));
        assert_eq!(name(&req("a", "/health?full", "GET")).as_deref(), Some("exact"));
        assert_eq!(name(&req("a", "/healthz", "GET")), None);
        assert_eq!(plan.header_names, vec!["x-tenant"]);
    }

    #[test]
    fn ports_are_stripped_from_authorities() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.com"), "a.com");
    }

    #[test]
    fn text_is_cut_at_the_first_byte_and_paths_give_their_first_segment() {
        assert_eq!(until("/a/b?x=1?y", b'?'), "/a/b");
        assert_eq!(until("héllo:1", b':'), "héllo");
        assert_eq!(until("", b':'), "");
        assert_eq!(until(":", b':'), "");
        assert_eq!(until("abc", b':'), "abc");
        assert_eq!(first_segment("/orders/7?x"), Some("orders"));
        assert_eq!(first_segment("/orders?x/y"), Some("orders"));
        assert_eq!(first_segment("/"), Some(""));
        assert_eq!(first_segment("orders/7"), None);
    }
}
