//! The field names of the policy language, object by object: what the decoder accepts (and
//! suggests from when a name is misspelt), what the JSON reader borrows as `'static` keys, and what
//! a test compares with the JSON Schema. The lowest layer above [`crate::diag`], so that the
//! syntax ([`crate::source`]) and the semantics ([`crate::decode`]) both read it and neither
//! reaches into the other.

/// The fields each object accepts; also the source of "did you mean" suggestions. A test checks
/// these lists against the JSON Schema so that the two cannot drift apart.
pub const DOCUMENT_FIELDS: &[&str] =
    &["version", "debug_headers", "trust_attempt_count_header", "key_seed", "policies"];
pub const POLICY_FIELDS: &[&str] = &[
    "name",
    "match",
    "mode",
    "failure_mode",
    "rate_limit",
    "global_rate_limit",
    "concurrency_limit",
    "circuit_breaker",
    "retry",
    "timeout",
    "fallback",
    "fault",
    "alerts",
];
pub const MATCH_FIELDS: &[&str] = &["hosts", "path", "path_prefix", "methods", "headers"];
pub const RATE_LIMIT_FIELDS: &[&str] = &["rate", "per", "burst", "key", "max_keys", "response"];
pub const GLOBAL_RATE_LIMIT_FIELDS: &[&str] = &[
    "rate",
    "per",
    "burst",
    "key",
    "mode",
    "service",
    "domain",
    "timeout",
    "failure_mode",
    "degraded",
    "max_keys",
    "response",
];
pub const DEGRADED_FIELDS: &[&str] = &["envoys", "learn"];
pub const CONCURRENCY_FIELDS: &[&str] =
    &["max_in_flight", "adaptive", "key", "max_keys", "response", "queue"];
pub const ADAPTIVE_FIELDS: &[&str] =
    &["min", "max", "initial", "interval", "tolerance", "probe_interval", "probe_samples"];
pub const QUEUE_FIELDS: &[&str] = &["max_waiting", "max_wait"];
pub const BREAKER_FIELDS: &[&str] = &[
    "window",
    "minimum_calls",
    "failure_rate",
    "slow_call",
    "failure_on",
    "open_for",
    "half_open_calls",
    "response",
];
pub const SLOW_CALL_FIELDS: &[&str] = &["duration", "rate"];
pub const RETRY_FIELDS: &[&str] =
    &["max_retries", "retry_on", "statuses", "per_try_timeout", "methods", "budget"];
pub const BUDGET_FIELDS: &[&str] = &["percent", "min_per_second"];
pub const FALLBACK_FIELDS: &[&str] = &["on", "response"];
pub const RESPONSE_FIELDS: &[&str] = &["status", "headers", "body"];
pub const FAULT_FIELDS: &[&str] = &["abort", "delay", "headers", "max_active"];
pub const FAULT_ABORT_FIELDS: &[&str] = &["percent", "response", "reset", "count_in_breaker"];
pub const FAULT_DELAY_FIELDS: &[&str] = &["percent", "duration", "max"];
pub const ALERTS_FIELDS: &[&str] =
    &["enabled", "rejected_share", "for", "breaker_open_for", "in_flight_share"];

/// Every field list of the language.
pub const FIELD_LISTS: [&[&str]; 19] = [
    DOCUMENT_FIELDS,
    POLICY_FIELDS,
    MATCH_FIELDS,
    RATE_LIMIT_FIELDS,
    GLOBAL_RATE_LIMIT_FIELDS,
    DEGRADED_FIELDS,
    CONCURRENCY_FIELDS,
    QUEUE_FIELDS,
    ADAPTIVE_FIELDS,
    BREAKER_FIELDS,
    SLOW_CALL_FIELDS,
    RETRY_FIELDS,
    BUDGET_FIELDS,
    FALLBACK_FIELDS,
    RESPONSE_FIELDS,
    FAULT_FIELDS,
    FAULT_ABORT_FIELDS,
    FAULT_DELAY_FIELDS,
    ALERTS_FIELDS,
];

/// The field names of the policy language, as `'static` text (for readers that want to borrow
/// rather than copy a key they recognise).
///
/// Looked up by length, then by first and last byte, then compared: a configuration has tens of
/// keys per policy, and a binary search over all names compared each key with six of them.
pub fn field_name(text: &str) -> Option<&'static str> {
    static BY_LEN: std::sync::OnceLock<Vec<Vec<&'static str>>> = std::sync::OnceLock::new();
    let by_len = BY_LEN.get_or_init(|| {
        let all: Vec<&'static str> = FIELD_LISTS.concat();
        let mut by_len: Vec<Vec<&'static str>> = Vec::new();
        for name in all {
            if by_len.len() <= name.len() {
                by_len.resize(name.len().saturating_add(1), Vec::new());
            }
            if let Some(bucket) = by_len.get_mut(name.len())
                && !bucket.contains(&name)
            {
                bucket.push(name);
            }
        }
        by_len
    });
    let (t, first, last) = (text.as_bytes(), text.as_bytes().first()?, text.as_bytes().last()?);
    by_len.get(text.len())?.iter().copied().find(|name| {
        let n = name.as_bytes();
        n.first() == Some(first) && n.last() == Some(last) && n == t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_name_is_found_and_nothing_else() {
        for name in FIELD_LISTS.concat() {
            assert_eq!(field_name(name), Some(name));
            // Same length, same first and last byte, one byte off; a prefix; a longer word.
            let mut near = name.as_bytes().to_vec();
            if near.len() > 2 {
                near[1] = b'#';
                assert_eq!(field_name(std::str::from_utf8(&near).unwrap()), None, "{name}");
            }
            // Another word is found only as itself (`on` is a name and a prefix of none here).
            for other in [&name[..name.len() - 1], &format!("{name}s")] {
                assert!(field_name(other).is_none_or(|f| f == other), "{other}");
            }
        }
        assert_eq!(field_name(""), None);
    }
}
