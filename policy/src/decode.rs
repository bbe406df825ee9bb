//! Turning a [`Node`] tree into a [`Document`], reporting *every* problem, each at its path.
//!
//! A field with a bad value is reported and replaced by its default so that decoding goes on and
//! the rest of the document is checked too; the result is only used when no error was found.
//! Positions of every visited path are kept in a [`SpanIndex`] so that the cross-field checks in
//! [`crate::check`] can point at lines as well.

use std::collections::BTreeMap;

use crate::diag::Diagnostic;
use crate::engine::concurrency;
use crate::fields::*;
use crate::model::*;
use crate::read::{Fields, Path, Reader, SpanIndex};
use crate::source::{Node, Value};

/// Most policies in one document.
pub const MAX_POLICIES: usize = 10_000;
/// Longest reply body a policy may configure.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Decodes a document tree. Returns the document (meaningful only if no error was reported), the
/// diagnostics, and the position of every path.
pub fn decode(root: &Node) -> (Document, Vec<Diagnostic>, SpanIndex) {
    let mut r = Reader::default();
    let doc = document(&mut r, root);
    let (diags, spans) = r.finish();
    (doc, diags, spans)
}

/// As [`decode`], without the position index (the filter reports errors by path only, and
/// indexing every path of a large document costs more than decoding it).
pub fn decode_without_spans(root: &Node) -> (Document, Vec<Diagnostic>) {
    let mut r = Reader::without_spans();
    let doc = document(&mut r, root);
    (doc, r.finish().0)
}

fn document(r: &mut Reader, node: &Node) -> Document {
    let mut doc = Document::default();
    let Some(f) = r.fields(node, &Path::ROOT, DOCUMENT_FIELDS) else {
        return doc;
    };
    match f.get("version") {
        Some((n, p)) => {
            if let Some(v) = r.int(n, &p, 0, u64::MAX)
                && v != 1
            {
                r.error(&p, n, format!("unsupported version {v}; this breakwater reads version 1"));
            }
        }
        None => r.error(&Path::ROOT.field("version"), node, "missing field `version` (write `version: 1`)"),
    }
    if let Some((n, p)) = f.get("debug_headers") {
        doc.debug_headers = r.bool(n, &p).unwrap_or_default();
    }
    if let Some((n, p)) = f.get("key_seed") {
        doc.key_seed = r.parsed(n, &p, KeySeed::parse);
    }
    if let Some((n, p)) = f.get("trust_attempt_count_header") {
        doc.trust_attempt_count_header = r.bool(n, &p).unwrap_or_default();
    }
    match f.get("policies") {
        Some((n, p)) => {
            if let Value::Seq(items) = &n.value
                && items.len() > MAX_POLICIES
            {
                r.error(&p, n, format!("at most {MAX_POLICIES} policies, found {}", items.len()));
                return doc;
            }
            if matches!(&n.value, Value::Seq(items) if items.is_empty()) {
                r.push(
                    Diagnostic::warning(
                        p.to_string(),
                        "the document has no policies: every request passes untouched",
                    )
                    .with_span(n.span),
                );
            }
            // All or nothing: cross-field checks name policies by index, which must stay
            // the document's own.
            doc.policies = match r.list_of(n, &p, policy) {
                Some((policies, true)) => policies,
                _ => Vec::new(),
            };
        }
        None => r.error(&Path::ROOT.field("policies"), node, "missing field `policies`"),
    }
    doc
}

fn policy(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<Policy> {
    let f = r.fields(node, path, POLICY_FIELDS)?;
    let name = match f.get("name") {
        Some((n, p)) => r.parsed(n, &p, check_name).unwrap_or_default(),
        None => {
            r.error(&path.field("name"), node, "missing field `name`");
            String::new()
        }
    };
    let mut policy = Policy {
        name,
        matcher: Match::default(),
        mode: Mode::default(),
        failure_mode: FailureMode::default(),
        rate_limit: None,
        global_rate_limit: None,
        concurrency_limit: None,
        circuit_breaker: None,
        retry: None,
        timeout: None,
        fallback: None,
        fault: None,
        alerts: None,
    };
    if let Some((n, p)) = f.get("match") {
        policy.matcher = matcher(r, n, &p);
    }
    if let Some((n, p)) = f.get("mode") {
        policy.mode =
            r.word(n, &p, &[("enforce", Mode::Enforce), ("shadow", Mode::Shadow)]).unwrap_or_default();
    }
    if let Some((n, p)) = f.get("failure_mode") {
        policy.failure_mode =
            r.word(n, &p, &[("allow", FailureMode::Allow), ("deny", FailureMode::Deny)]).unwrap_or_default();
    }
    if let Some((n, p)) = f.get("rate_limit") {
        policy.rate_limit = rate_limit(r, n, &p);
    }
    if let Some((n, p)) = f.get("global_rate_limit") {
        policy.global_rate_limit = global_rate_limit(r, n, &p);
    }
    if let Some((n, p)) = f.get("concurrency_limit") {
        policy.concurrency_limit = concurrency_limit(r, n, &p);
    }
    if let Some((n, p)) = f.get("circuit_breaker") {
        policy.circuit_breaker = circuit_breaker(r, n, &p);
    }
    if let Some((n, p)) = f.get("retry") {
        policy.retry = retry(r, n, &p);
    }
    if let Some((n, p)) = f.get("timeout") {
        policy.timeout = r.duration(n, &p);
    }
    if let Some((n, p)) = f.get("fallback") {
        policy.fallback = fallback(r, n, &p);
    }
    if let Some((n, p)) = f.get("fault") {
        policy.fault = fault(r, n, &p);
    }
    if let Some((n, p)) = f.get("alerts") {
        policy.alerts = alerts(r, n, &p);
    }
    Some(policy)
}

fn alerts(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<Alerts> {
    let f = r.fields(node, path, ALERTS_FIELDS)?;
    let mut a = Alerts::default();
    if let Some((n, p)) = f.get("enabled") {
        a.enabled = r.bool(n, &p).unwrap_or(true);
    }
    a.rejected_share = f.get("rejected_share").and_then(|(n, p)| r.int_as(n, &p, 1, 100));
    a.in_flight_share = f.get("in_flight_share").and_then(|(n, p)| r.int_as(n, &p, 1, 100));
    a.hold_for = f.get("for").and_then(|(n, p)| r.duration(n, &p));
    a.breaker_open_for = f.get("breaker_open_for").and_then(|(n, p)| r.duration(n, &p));
    Some(a)
}

fn matcher(r: &mut Reader, node: &Node, path: &Path<'_>) -> Match {
    let mut m = Match::default();
    let Some(f) = r.fields(node, path, MATCH_FIELDS) else {
        return m;
    };
    if let Some((n, p)) = capped(r, f.get("hosts")) {
        let why = "an empty list matches nothing; remove `hosts` to match all";
        m.hosts = r.non_empty_list(n, &p, why, |d, n, p| d.parsed(n, p, check_host));
    }
    if let Some((n, p)) = f.get("path") {
        m.path = r.parsed(n, &p, check_path);
    }
    if let Some((n, p)) = f.get("path_prefix") {
        m.path_prefix = r.parsed(n, &p, check_path);
    }
    if let Some((n, p)) = capped(r, f.get("methods")) {
        let why = "an empty list matches nothing; remove `methods` to match all";
        m.methods = r.non_empty_list(n, &p, why, |d, n, p| d.method(n, p));
    }
    if let Some((n, p)) = capped(r, f.get("headers")) {
        m.headers = r.string_map(n, &p, |d, name, value, key, p| {
            if !is_header_name(name) {
                d.error(p, key, format!("`{name}` is not a lower-case header name"));
            } else if value.is_empty() {
                d.error(p, key, "give a value, or `*` for \"present with any value\"");
            }
        });
    }
    m
}

fn keys(r: &mut Reader, f: &Fields<'_, '_>) -> Vec<KeyPart> {
    match capped(r, f.get("key")) {
        Some((n, p)) => r.list(n, &p, |d, n, p| d.parsed(n, p, KeyPart::parse)).unwrap_or_default(),
        None => Vec::new(),
    }
}

fn max_keys(r: &mut Reader, f: &Fields<'_, '_>) -> u32 {
    f.get("max_keys").and_then(|(n, p)| r.int_as(n, &p, 1, 10_000_000)).unwrap_or_else(default_max_keys)
}

fn rate_limit(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<RateLimit> {
    let f = r.fields(node, path, RATE_LIMIT_FIELDS)?;
    let rate = match f.get("rate") {
        Some((n, p)) => r.int(n, &p, 1, 1_000_000_000).unwrap_or(1),
        None => {
            r.error(&path.field("rate"), node, "missing field `rate` (tokens per `per`)");
            1
        }
    };
    let per = f.get("per").and_then(|(n, p)| r.duration(n, &p)).unwrap_or_else(default_per);
    let burst = f.get("burst").and_then(|(n, p)| r.int(n, &p, 1, 1_000_000_000)).unwrap_or(rate);
    let key = keys(r, &f);
    let max_keys = max_keys(r, &f);
    let response = response_or(r, &f, default_rate_limit_response);
    Some(RateLimit { rate, per, burst, key, max_keys, response })
}

/// The finest a global bucket counts: the service keeps its times in whole microseconds (exact
/// integers in Redis's Lua), so one token may not stand for less than 1 µs.
pub const MAX_GLOBAL_RATE_PER_SECOND: u64 = 1_000_000;

/// The longest a global bucket may take to refill from empty (`burst` tokens at `rate` per `per`):
/// 2^50 µs, about 35 years, keeps every time the service computes an exact integer in Redis.
pub const MAX_GLOBAL_REFILL_MICROS: u64 = 1 << 50;

fn global_rate_limit(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<GlobalRateLimit> {
    let f = r.fields(node, path, GLOBAL_RATE_LIMIT_FIELDS)?;
    let rate = match f.get("rate") {
        Some((n, p)) => r.int(n, &p, 1, 1_000_000_000).unwrap_or(1),
        None => {
            r.error(
                &path.field("rate"),
                node,
                "missing field `rate` (tokens per `per`, for the whole fleet)",
            );
            1
        }
    };
    let per = f.get("per").and_then(|(n, p)| r.duration(n, &p)).unwrap_or_else(default_per);
    let burst = f.get("burst").and_then(|(n, p)| r.int(n, &p, 1, 1_000_000_000)).unwrap_or(rate);
    // One token every `per / rate`, in whole microseconds (rounded up, as the service counts).
    let interval_us = per.as_millis().saturating_mul(1000).div_ceil(rate);
    if rate.saturating_mul(1000) > per.as_millis().saturating_mul(MAX_GLOBAL_RATE_PER_SECOND) {
        if let Some((n, p)) = f.get("rate") {
            r.error(
                &p,
                n,
                format!(
                    "a global limit counts at most {MAX_GLOBAL_RATE_PER_SECOND} tokens per second ({rate} per {per} is more); use a local `rate_limit` for finer limits"
                ),
            );
        }
    } else if interval_us.saturating_mul(burst) > MAX_GLOBAL_REFILL_MICROS
        && let Some((n, p)) = f.get("burst")
    {
        r.error(&p, n, format!("a bucket of {burst} at {rate} per {per} would take over 35 years to refill"));
    }
    let key = keys(r, &f);
    let mode = f
        .get("mode")
        .and_then(|(n, p)| r.word(n, &p, &[("exact", GlobalMode::Exact), ("leased", GlobalMode::Leased)]))
        .unwrap_or_default();
    let service = f
        .get("service")
        .and_then(|(n, p)| r.parsed(n, &p, check_cluster))
        .unwrap_or_else(default_global_service);
    let domain = f
        .get("domain")
        .and_then(|(n, p)| r.parsed(n, &p, check_domain))
        .unwrap_or_else(default_global_domain);
    let timeout = f
        .get("timeout")
        .and_then(|(n, p)| {
            let d = r.duration(n, &p)?;
            if d.as_millis() > MAX_GLOBAL_TIMEOUT_MS {
                r.error(
                    &p,
                    n,
                    format!(
                        "at most {MAX_GLOBAL_TIMEOUT_MS}ms: every request of the policy may wait this long"
                    ),
                );
                return None;
            }
            Some(d)
        })
        .unwrap_or_else(default_global_timeout);
    let failure_mode = f
        .get("failure_mode")
        .and_then(|(n, p)| {
            r.word(
                n,
                &p,
                &[
                    ("local", GlobalFailureMode::Local),
                    ("allow", GlobalFailureMode::Allow),
                    ("deny", GlobalFailureMode::Deny),
                ],
            )
        })
        .unwrap_or_default();
    let degraded = f
        .get("degraded")
        .and_then(|(n, p)| {
            let d = r.fields(n, &p, DEGRADED_FIELDS)?;
            Some(Degraded {
                envoys: d
                    .get("envoys")
                    .and_then(|(n, p)| r.int_as(n, &p, 1, 100_000))
                    .unwrap_or_else(default_degraded_envoys),
                learn: d.get("learn").and_then(|(n, p)| r.bool(n, &p)).unwrap_or_else(default_degraded_learn),
            })
        })
        .unwrap_or_default();
    let max_keys = max_keys(r, &f);
    let response = response_or(r, &f, default_rate_limit_response);
    Some(GlobalRateLimit {
        rate,
        per,
        burst,
        key,
        mode,
        service,
        domain,
        timeout,
        failure_mode,
        degraded,
        max_keys,
        response,
    })
}

/// The longest `global_rate_limit.timeout`.
pub const MAX_GLOBAL_TIMEOUT_MS: u64 = 1000;

/// An Envoy cluster name as a bootstrap or Istio would spell it.
fn check_cluster(name: &str) -> Result<String, String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"-_.|:".contains(&b);
    if name.is_empty() || name.len() > 255 || !name.bytes().all(ok) {
        return Err(format!("`{name}` is not an Envoy cluster name: 1-255 letters, digits and `-_.|:`"));
    }
    crate::rls::grpc_target(name)?;
    if !name.contains(['|', ':']) && may_parse_as_protobuf(name.as_bytes()) {
        return Err(format!(
            "Envoy would read `{name}` as a serialized gRPC service definition, not a cluster name (its bytes happen to be valid protobuf); rename the cluster"
        ));
    }
    Ok(name.to_string())
}

/// Whether bytes may be a well-formed protobuf message. Envoy first tries to read a gRPC call's
/// target as a serialized `GrpcService` and takes it as a cluster name only when that fails; a
/// name that parses (`h2`: field 13, varint 50) would reach no cluster, and the proxy-wasm SDK
/// panics on the status Envoy then returns. Conservative: groups count as parsing.
fn may_parse_as_protobuf(mut bytes: &[u8]) -> bool {
    fn varint(bytes: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (first, rest) = bytes.split_first()?;
            *bytes = rest;
            value |= u64::from(first & 0x7f).checked_shl(shift).unwrap_or(0);
            if first & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    while !bytes.is_empty() {
        let Some(tag) = varint(&mut bytes) else { return false };
        if tag >> 3 == 0 {
            return false;
        }
        let skip = match tag & 7 {
            0 => varint(&mut bytes).map(|_| 0),
            1 => Some(8),
            2 => varint(&mut bytes).and_then(|n| usize::try_from(n).ok()),
            3 | 4 => return true,
            5 => Some(4),
            _ => None,
        };
        match skip.and_then(|n| bytes.get(n..)) {
            Some(rest) => bytes = rest,
            None => return false,
        }
    }
    true
}

/// A rate-limit domain (the RLS `domain` field, and part of every Redis key of the policy).
fn check_domain(name: &str) -> Result<String, String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
    if name.is_empty() {
        return Err("must not be empty (the default is `breakwater`)".into());
    }
    if name.len() > 64 || !name.bytes().all(ok) {
        return Err(format!("`{name}` is not a domain: 1-64 letters, digits and `-_.`"));
    }
    Ok(name.to_string())
}

fn concurrency_limit(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<ConcurrencyLimit> {
    let f = r.fields(node, path, CONCURRENCY_FIELDS)?;
    let max_in_flight = f.get("max_in_flight").map(|(n, p)| r.int_as(n, &p, 1, 1_000_000).unwrap_or(1));
    let adaptive = f.get("adaptive").and_then(|(n, p)| adaptive(r, n, &p));
    match (f.get("max_in_flight"), f.get("adaptive")) {
        (None, None) => r.error(
            &path.field("max_in_flight"),
            node,
            "missing field `max_in_flight` (or `adaptive`, for a limit that follows the upstream's latency)",
        ),
        (Some((n, p)), Some(_)) => r.error(
            &p,
            n,
            "a limit is either fixed or adaptive: write `max_in_flight` or `adaptive`, not both",
        ),
        _ => {}
    }
    let key = keys(r, &f);
    let max_keys = max_keys(r, &f);
    let response = response_or(r, &f, default_concurrency_response);
    let queue = f.get("queue").and_then(|(n, p)| queue(r, n, &p));
    Some(ConcurrencyLimit { max_in_flight, adaptive, key, max_keys, response, queue })
}

fn adaptive(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<Adaptive> {
    let f = r.fields(node, path, ADAPTIVE_FIELDS)?;
    let d = Adaptive::default();
    let int = |r: &mut Reader, name: &str, default: u32, max: u64| {
        f.get(name).map_or(Some(default), |(n, p)| r.int_as(n, &p, 1, max))
    };
    let min = int(r, "min", d.min, 1_000_000);
    let max = int(r, "max", d.max, 1_000_000);
    let initial = int(r, "initial", d.initial, 1_000_000);
    let probe_samples = int(r, "probe_samples", d.probe_samples, 10_000);
    let tolerance = f.get("tolerance").map_or(Some(d.tolerance), |(n, p)| r.int_as(n, &p, 0, 100));
    let mut bounded = |name: &str, default: Duration, least: u64, most: u64| {
        let Some((n, p)) = f.get(name) else { return Some(default) };
        let v = r.duration(n, &p)?;
        if !(least..=most).contains(&v.as_millis()) {
            let (least, most) = (Duration::from_millis(least), Duration::from_millis(most));
            r.error(&p, n, format!("must be between {least} and {most}"));
            return None;
        }
        Some(v)
    };
    let interval = bounded("interval", d.interval, 10, 60_000);
    let probe_interval = bounded("probe_interval", d.probe_interval, 1_000, 3_600_000);
    if let (Some(lo), Some(hi), Some((n, p))) = (min, max, f.get("max").or(f.get("min")))
        && lo > hi
    {
        r.error(&p, n, format!("`min` ({lo}) is above `max` ({hi})"));
        return None;
    }
    Some(Adaptive {
        min: min?,
        max: max?,
        initial: initial?,
        interval: interval?,
        tolerance: tolerance?,
        probe_interval: probe_interval?,
        probe_samples: probe_samples?,
    })
}

// The engine drops waiters further away than the language's longest wait (a wall clock that
// stepped back): the two bounds are one.
const _: () = assert!(MAX_QUEUE_WAIT_MS * 1_000_000 == concurrency::MAX_LINE_WAIT);

fn queue(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<Queue> {
    let f = r.fields(node, path, QUEUE_FIELDS)?;
    let max_waiting = match f.get("max_waiting") {
        Some((n, p)) => r.int_as(n, &p, 1, u64::from(concurrency::MAX_WAITING)),
        None => {
            r.error(
                &path.field("max_waiting"),
                node,
                "missing field `max_waiting` (how many requests may wait at once)",
            );
            None
        }
    };
    let max_wait = f
        .get("max_wait")
        .and_then(|(n, p)| {
            let d = r.duration(n, &p)?;
            if d.as_millis() > MAX_QUEUE_WAIT_MS {
                let most = Duration::from_millis(MAX_QUEUE_WAIT_MS);
                r.error(&p, n, format!("at most {most}: a proxy should not hold a request longer"));
                return None;
            }
            Some(d)
        })
        .unwrap_or_else(default_queue_max_wait);
    Some(Queue { max_waiting: max_waiting?, max_wait })
}

fn outcomes(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<Vec<Outcome>> {
    let why = "an empty list names no outcome; list outcomes or remove the field for the defaults";
    r.non_empty_list(node, path, why, |d, n, p| match &n.value {
        Value::Int(code) => {
            d.visit(p, n);
            match Outcome::parse(&code.to_string()) {
                Ok(o) => Some(o),
                Err(m) => {
                    d.error(p, n, m);
                    None
                }
            }
        }
        _ => d.parsed(n, p, Outcome::parse),
    })
}

fn circuit_breaker(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<CircuitBreaker> {
    let f = r.fields(node, path, BREAKER_FIELDS)?;
    let window = match f.get("window") {
        Some((n, p)) => match &n.value {
            Value::Int(_) | Value::BigInt(_) | Value::Float(_) => {
                r.int_as(n, &p, 1, u64::from(MAX_WINDOW_CALLS)).map(Window::Calls)
            }
            _ => r.duration(n, &p).and_then(|d| {
                if (1000..=3_600_000).contains(&d.as_millis()) {
                    Some(Window::Time(d))
                } else {
                    r.error(&p, n, "a time window must be between 1s and 1h");
                    None
                }
            }),
        },
        None => None,
    }
    .unwrap_or_else(default_window);
    let minimum_calls = f
        .get("minimum_calls")
        .and_then(|(n, p)| r.int_as(n, &p, 1, 1_000_000))
        .unwrap_or_else(default_minimum_calls);
    let failure_rate =
        f.get("failure_rate").and_then(|(n, p)| r.int_as(n, &p, 1, 100)).unwrap_or_else(default_failure_rate);
    let slow_call = f.get("slow_call").and_then(|(n, p)| {
        let s = r.fields(n, &p, SLOW_CALL_FIELDS)?;
        let duration = match s.get("duration") {
            Some((n, p)) => r.duration(n, &p),
            None => {
                r.error(&p.field("duration"), n, "missing field `duration`");
                None
            }
        };
        let rate = match s.get("rate") {
            Some((n, p)) => r.int_as(n, &p, 1, 100),
            None => {
                r.error(&p.field("rate"), n, "missing field `rate` (percent of slow calls)");
                None
            }
        };
        Some(SlowCall { duration: duration?, rate: rate? })
    });
    let failure_on = capped(r, f.get("failure_on"))
        .and_then(|(n, p)| outcomes(r, n, &p))
        .unwrap_or_else(default_failure_on);
    let open_for = f.get("open_for").and_then(|(n, p)| r.duration(n, &p)).unwrap_or_else(default_open_for);
    let half_open_calls = f
        .get("half_open_calls")
        .and_then(|(n, p)| r.int_as(n, &p, 1, 1000))
        .unwrap_or_else(default_half_open_calls);
    let response = response_or(r, &f, default_breaker_response);
    Some(CircuitBreaker {
        window,
        minimum_calls,
        failure_rate,
        slow_call,
        failure_on,
        open_for,
        half_open_calls,
        response,
    })
}

fn retry(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<Retry> {
    let f = r.fields(node, path, RETRY_FIELDS)?;
    let max_retries =
        f.get("max_retries").and_then(|(n, p)| r.int_as(n, &p, 0, 10)).unwrap_or_else(default_max_retries);
    let words = RetryOn::ALL.map(|r| (r.as_str(), r));
    let retry_on = capped(r, f.get("retry_on"))
        .and_then(|(n, p)| {
            let why = "name at least one condition to retry on";
            r.non_empty_list(n, &p, why, |d, n, p| d.word(n, p, &words))
        })
        .unwrap_or_else(default_retry_on);
    let statuses = capped(r, f.get("statuses"))
        .and_then(|(n, p)| r.list(n, &p, |d, n, p| d.int_as(n, p, 100, 599)))
        .unwrap_or_default();
    let per_try_timeout = f.get("per_try_timeout").and_then(|(n, p)| r.duration(n, &p));
    let methods = capped(r, f.get("methods"))
        .and_then(|(n, p)| {
            let why = "an empty list retries nothing; remove it for the idempotent methods";
            r.non_empty_list(n, &p, why, |d, n, p| d.method(n, p))
        })
        .unwrap_or_else(default_retry_methods);
    let budget = f
        .get("budget")
        .and_then(|(n, p)| {
            let b = r.fields(n, &p, BUDGET_FIELDS)?;
            Some(Budget {
                percent: b
                    .get("percent")
                    .and_then(|(n, p)| r.int_as(n, &p, 0, 100))
                    .unwrap_or_else(default_budget_percent),
                min_per_second: b
                    .get("min_per_second")
                    .and_then(|(n, p)| r.int_as(n, &p, 0, 1_000_000))
                    .unwrap_or_else(default_budget_min_per_second),
            })
        })
        .unwrap_or_default();
    Some(Retry { max_retries, retry_on, statuses, per_try_timeout, methods, budget })
}

fn fallback(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<Fallback> {
    let f = r.fields(node, path, FALLBACK_FIELDS)?;
    let on = capped(r, f.get("on")).and_then(|(n, p)| outcomes(r, n, &p)).unwrap_or_else(default_fallback_on);
    let response = match f.get("response") {
        Some((n, p)) => response(r, n, &p, None)?,
        None => {
            r.error(&path.field("response"), node, "missing field `response` (the reply to send instead)");
            return None;
        }
    };
    Some(Fallback { on, response })
}

fn fault(r: &mut Reader, node: &Node, path: &Path<'_>) -> Option<Fault> {
    let f = r.fields(node, path, FAULT_FIELDS)?;
    let abort = f.get("abort").and_then(|(n, p)| {
        let fa = r.fields(n, &p, FAULT_ABORT_FIELDS)?;
        let percent = required_percent(r, &fa, n, &p);
        let response = response_or(r, &fa, default_fault_response);
        let count_in_breaker = fa.get("count_in_breaker").and_then(|(n, p)| r.bool(n, &p)).unwrap_or(false);
        let reset = fa.get("reset").and_then(|(n, p)| r.bool(n, &p)).unwrap_or(false);
        // (A compiled document writes the default reply out: that one goes with a reset.)
        if let (true, Some((n, p))) = (reset, fa.get("response"))
            && response != default_fault_response()
        {
            r.error(&p, n, "a reset sends no response: write either `response` or `reset: true`");
        }
        Some(FaultAbort { percent: percent?, response, reset, count_in_breaker })
    });
    let delay = f.get("delay").and_then(|(n, p)| {
        let fd = r.fields(n, &p, FAULT_DELAY_FIELDS)?;
        let percent = required_percent(r, &fd, n, &p);
        let duration = match fd.get("duration") {
            Some((n, p)) => r.duration(n, &p),
            None => {
                r.error(
                    &p.field("duration"),
                    n,
                    "missing field `duration` (how long a delayed request waits)",
                );
                None
            }
        };
        let max = fd.get("max").and_then(|(n, p)| {
            let max = r.duration(n, &p)?;
            if duration.is_some_and(|d| max <= d) {
                r.error(
                    &p,
                    n,
                    format!(
                        "must be longer than duration ({})",
                        duration.map(|d| d.to_string()).unwrap_or_default()
                    ),
                );
                return None;
            }
            Some(max)
        });
        Some(FaultDelay { percent: percent?, duration: duration?, max })
    });
    let headers = f.get("headers").and_then(|(n, p)| r.bool(n, &p)).unwrap_or(false);
    let max_active = f
        .get("max_active")
        .and_then(|(n, p)| r.int_as(n, &p, 1, 1_000_000))
        .unwrap_or_else(default_fault_max_active);
    if f.get("abort").is_none() && f.get("delay").is_none() {
        r.error(path, node, "a fault needs `abort`, `delay` or both");
    }
    Some(Fault { abort, delay, headers, max_active })
}

fn required_percent(r: &mut Reader, f: &Fields<'_, '_>, node: &Node, path: &Path<'_>) -> Option<Percent> {
    match f.get("percent") {
        Some((n, p)) => r.percent(n, &p),
        None => {
            r.error(&path.field("percent"), node, "missing field `percent` (the share of requests, e.g. 5)");
            None
        }
    }
}

fn response_or(r: &mut Reader, f: &Fields<'_, '_>, default: fn() -> Response) -> Response {
    match f.get("response") {
        Some((n, p)) => {
            let d = default();
            response(r, n, &p, Some(d.status)).unwrap_or(d)
        }
        None => default(),
    }
}

fn response(r: &mut Reader, node: &Node, path: &Path<'_>, default_status: Option<u16>) -> Option<Response> {
    let f = r.fields(node, path, RESPONSE_FIELDS)?;
    let status = match (f.get("status"), default_status) {
        (Some((n, p)), _) => r.int_as(n, &p, 200, 599)?,
        (None, Some(s)) => s,
        (None, None) => {
            r.error(&path.field("status"), node, "missing field `status`");
            return None;
        }
    };
    let headers = match capped(r, f.get("headers")) {
        Some((n, p)) => r.string_map(n, &p, |d, name, value, key, p| {
            if !is_header_name(name) {
                d.error(p, key, format!("`{name}` is not a lower-case header name"));
            } else if value.contains(['\r', '\n', '\0']) {
                d.error(p, key, "header values must not contain line breaks or NUL");
            } else if matches!(name, "content-length" | "transfer-encoding" | "connection") {
                d.error(p, key, format!("`{name}` is set by Envoy; remove it"));
            }
        }),
        None => BTreeMap::new(),
    };
    let body = match f.get("body") {
        Some((n, p)) => {
            let body = r.string(n, &p)?;
            if body.len() > MAX_BODY_BYTES {
                r.error(&p, n, format!("a reply body may have at most {MAX_BODY_BYTES} bytes"));
                return None;
            }
            body
        }
        None => String::new(),
    };
    let headers = headers.into_iter().map(|(k, v)| (Text::Owned(k), Text::Owned(v))).collect();
    Some(Response { status, headers, body: Text::Owned(body) })
}

/// The field's node, unless it is a list or mapping longer than [`MAX_ITEMS`] (then reported and
/// left out, so that nothing walks it).
fn capped<'n, 'p>(r: &mut Reader, field: Option<(&'n Node, Path<'p>)>) -> Option<(&'n Node, Path<'p>)> {
    let (node, path) = field?;
    let (len, what) = match &node.value {
        Value::Seq(items) => (items.len(), "items"),
        Value::Map(entries) => (entries.len(), "entries"),
        _ => return Some((node, path)),
    };
    if len > MAX_ITEMS {
        r.visit(&path, node);
        r.error(&path, node, format!("at most {MAX_ITEMS} {what}, found {len}"));
        return None;
    }
    Some((node, path))
}

fn check_name(name: &str) -> Result<String, String> {
    let b = name.as_bytes();
    let ok_inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let ok_edge = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if b.len() > 63 || !b.iter().all(ok_inner) || !ok_edge(b.first()) || !ok_edge(b.last()) {
        return Err(format!(
            "`{name}` is not a valid name: 1-63 lower-case letters, digits and `-`, starting and ending with a letter or digit"
        ));
    }
    Ok(name.to_string())
}

fn check_host(host: &str) -> Result<String, String> {
    let bare = host.strip_prefix("*.").unwrap_or(host);
    let label_ok =
        |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if host.contains(':') {
        return Err(format!(
            "`{host}`: hosts are matched without their port; remove `:{}`",
            host.rsplit(':').next().unwrap_or_default()
        ));
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("`{host}`: write hosts in lower case"));
    }
    if bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(format!("`{host}` is not a host name (exact, or `*.` followed by a suffix)"));
    }
    Ok(host.to_string())
}

fn check_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with `/`"));
    }
    if path.contains('?') || path.contains('#') {
        return Err("paths are matched without the query string; remove `?...`".into());
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("paths must not contain spaces or control characters".into());
    }
    Ok(path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::suggest;

    #[test]
    fn suggestions_find_near_misses_only() {
        assert_eq!(suggest("rate_limt", POLICY_FIELDS), Some("rate_limit"));
        // Cluster names Envoy would read as a serialized GrpcService are refused.
        assert!(may_parse_as_protobuf(b"h2"));
        assert!(check_cluster("h2").is_err());
        for fine in [
            "breakwater-ratelimit",
            "outbound|8081||breakwater-ratelimit.ns.svc.cluster.local",
            "rls",
            "ratelimit",
        ] {
            assert!(check_cluster(fine).is_ok(), "{fine}");
        }
        assert_eq!(suggest("max_retry", RETRY_FIELDS), Some("max_retries"));
        assert_eq!(suggest("zzz", POLICY_FIELDS), None);
    }

    #[test]
    fn names_hosts_and_paths() {
        assert!(check_name("checkout-v2").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_host("*.example.com").is_ok());
        assert!(check_host("shop.example.com:8080").unwrap_err().contains("port"));
        assert!(check_host("Shop.example.com").is_err());
        assert!(check_host("*").is_err());
        assert!(check_path("/api").is_ok());
        assert!(check_path("api").is_err());
        assert!(check_path("/a?b").is_err());
    }
}
