//! The editor's form: every field of policy v1 described once, and the edits it makes to the
//! document (a JSON value, written back to YAML for the raw view and the validator).
//!
//! A field that cannot be read as its type is kept as the text typed, so the validator reports it
//! (with its path) and the error appears next to the field, as for any other mistake.

use serde_json::{Map, Value};

/// How a field is edited and stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Text,
    /// An integer (kept as text when it is not one: the validator says why).
    Int,
    /// A number, decimals allowed (a percentage).
    Number,
    /// `500ms`, `2s`, `1m`.
    Duration,
    /// A count of calls (`100`) or a time window (`30s`).
    Window,
    /// Comma-separated strings.
    List,
    /// Comma-separated integers.
    IntList,
    Choice(&'static [&'static str]),
    /// `true` or `false`.
    Bool,
    /// A set of words, each a checkbox.
    Multi(&'static [&'static str]),
    /// `name: value` lines.
    Map,
    LongText,
}

#[derive(Debug)]
pub struct Field {
    /// Dot-separated, relative to the block (or the policy for the general block).
    pub path: &'static str,
    pub label: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

#[derive(Debug)]
pub struct Block {
    /// The policy's key for this block; "" for the fields directly on the policy.
    pub key: &'static str,
    pub title: &'static str,
    /// An optional block can be switched off (the key removed) and on (the template inserted).
    pub template: Option<&'static str>,
    pub fields: &'static [Field],
}

const fn f(path: &'static str, label: &'static str, kind: Kind, help: &'static str) -> Field {
    Field { path, label, kind, help }
}

pub const OUTCOMES: &[&str] = &["5xx", "gateway-error", "reset", "connect-failure", "timeout"];
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "envoy-ratelimited",
    "http3-post-connect-failure",
];

pub const BLOCKS: &[Block] = &[
    Block {
        key: "",
        title: "Policy",
        template: None,
        fields: &[
            f("name", "Name", Kind::Text, "lowercase letters, digits and dashes; used in metrics"),
            f("mode", "Mode", Kind::Choice(&["enforce", "shadow"]), "shadow: decide and count, never reject"),
            f(
                "failure_mode",
                "When state is unavailable",
                Kind::Choice(&["allow", "deny"]),
                "allow = fail open",
            ),
            f("timeout", "Timeout", Kind::Duration, "overall request timeout, e.g. 2s"),
        ],
    },
    Block {
        key: "match",
        title: "Match",
        template: None,
        fields: &[
            f("hosts", "Hosts", Kind::List, "comma-separated; *.example.com allowed"),
            f("path", "Exact path", Kind::Text, ""),
            f("path_prefix", "Path prefix", Kind::Text, "e.g. /api/"),
            f("methods", "Methods", Kind::List, "e.g. GET, POST"),
            f("headers", "Headers", Kind::Map, "name: value per line (* = present)"),
        ],
    },
    Block {
        key: "rate_limit",
        title: "Rate limit",
        template: Some(r#"{"rate": 100, "per": "1s", "burst": 100}"#),
        fields: &[
            f("rate", "Rate", Kind::Int, "requests per period"),
            f("per", "Per", Kind::Duration, "the period, e.g. 1s or 1m"),
            f("burst", "Burst", Kind::Int, "requests allowed at once"),
            f("key", "Key", Kind::List, "client_ip, header:NAME, path, …; empty = one shared bucket"),
            f("max_keys", "Max keys", Kind::Int, ""),
            f("response.status", "Reject status", Kind::Int, "default 429"),
            f("response.headers", "Reject headers", Kind::Map, ""),
            f("response.body", "Reject body", Kind::LongText, ""),
        ],
    },
    Block {
        key: "global_rate_limit",
        title: "Global rate limit (fleet-wide)",
        template: Some(r#"{"rate": 1000, "per": "1s", "burst": 1000}"#),
        fields: &[
            f("rate", "Rate", Kind::Int, "requests per period, for every Envoy together"),
            f("per", "Per", Kind::Duration, "the period, e.g. 1s or 1m"),
            f("burst", "Burst", Kind::Int, "requests allowed at once, fleet-wide"),
            f("key", "Key", Kind::List, "client_ip, header:NAME, path, …; empty = one shared bucket"),
            f(
                "mode",
                "Mode",
                Kind::Choice(&["exact", "leased"]),
                "exact: a call per request; leased: calls only to renew",
            ),
            f("service", "Service cluster", Kind::Text, "Envoy cluster of the rate-limit service"),
            f("domain", "Domain", Kind::Text, "default breakwater"),
            f("timeout", "Call timeout", Kind::Duration, "longest wait for the service, default 20ms"),
            f(
                "failure_mode",
                "When the service can't answer",
                Kind::Choice(&["local", "allow", "deny"]),
                "local: each Envoy enforces its share",
            ),
            f("degraded.envoys", "Degraded: Envoys", Kind::Int, "the share is rate / envoys"),
            f("degraded.learn", "Degraded: learn fleet size", Kind::Bool, "count Envoys from the service"),
            f("max_keys", "Max keys", Kind::Int, ""),
            f("response.status", "Reject status", Kind::Int, "default 429"),
            f("response.headers", "Reject headers", Kind::Map, ""),
            f("response.body", "Reject body", Kind::LongText, ""),
        ],
    },
    Block {
        key: "concurrency_limit",
        title: "Concurrency limit",
        template: Some(r#"{"max_in_flight": 50}"#),
        fields: &[
            f("max_in_flight", "Max in flight", Kind::Int, "a fixed limit; empty for an adaptive one"),
            f(
                "adaptive.min",
                "Adaptive: min",
                Kind::Int,
                "default 3; also the limit while min RTT is measured",
            ),
            f("adaptive.max", "Adaptive: max", Kind::Int, "default 1000"),
            f("adaptive.initial", "Adaptive: initial", Kind::Int, "default 20"),
            f(
                "adaptive.interval",
                "Adaptive: interval",
                Kind::Duration,
                "recomputed this often, default 100ms",
            ),
            f(
                "adaptive.tolerance",
                "Adaptive: tolerance %",
                Kind::Int,
                "latency over min RTT still fine, default 25",
            ),
            f(
                "adaptive.probe_interval",
                "Adaptive: probe interval",
                Kind::Duration,
                "min RTT measured again, default 60s",
            ),
            f(
                "adaptive.probe_samples",
                "Adaptive: probe samples",
                Kind::Int,
                "requests per measurement, default 50",
            ),
            f("key", "Key", Kind::List, "per key when given"),
            f("max_keys", "Max keys", Kind::Int, ""),
            f(
                "queue.max_waiting",
                "Queue: max waiting",
                Kind::Int,
                "requests that may wait for a slot; empty: none",
            ),
            f("queue.max_wait", "Queue: max wait", Kind::Duration, "default 1s, at most 60s"),
            f("response.status", "Reject status", Kind::Int, "default 503"),
            f("response.headers", "Reject headers", Kind::Map, ""),
            f("response.body", "Reject body", Kind::LongText, ""),
        ],
    },
    Block {
        key: "circuit_breaker",
        title: "Circuit breaker",
        template: Some(r#"{"window": 100, "minimum_calls": 20, "failure_rate": 50, "open_for": "30s"}"#),
        fields: &[
            f("window", "Window", Kind::Window, "last N calls (100) or a time window (30s)"),
            f("minimum_calls", "Minimum calls", Kind::Int, ""),
            f("failure_rate", "Failure rate %", Kind::Int, "opens at this share of failures"),
            f("slow_call.duration", "Slow call after", Kind::Duration, ""),
            f("slow_call.rate", "Slow call rate %", Kind::Int, ""),
            f("failure_on", "Failure on", Kind::Multi(OUTCOMES), ""),
            f("open_for", "Open for", Kind::Duration, ""),
            f("half_open_calls", "Half-open calls", Kind::Int, ""),
            f("response.status", "Open status", Kind::Int, "default 503"),
            f("response.headers", "Open headers", Kind::Map, ""),
            f("response.body", "Open body", Kind::LongText, ""),
        ],
    },
    Block {
        key: "retry",
        title: "Retry",
        template: Some(r#"{"max_retries": 2, "retry_on": ["5xx", "reset", "connect-failure"]}"#),
        fields: &[
            f("max_retries", "Max retries", Kind::Int, ""),
            f("retry_on", "Retry on", Kind::Multi(RETRY_ON), ""),
            f("statuses", "Retriable statuses", Kind::IntList, "with retriable-status-codes"),
            f("per_try_timeout", "Per-try timeout", Kind::Duration, ""),
            f("methods", "Methods", Kind::List, "default: idempotent methods"),
            f("budget.percent", "Budget %", Kind::Int, "retries as a share of requests"),
            f("budget.min_per_second", "Budget minimum /s", Kind::Int, ""),
        ],
    },
    Block {
        key: "fault",
        title: "Fault injection",
        template: Some(r#"{"abort": {"percent": 1}}"#),
        fields: &[
            f(
                "abort.percent",
                "Abort %",
                Kind::Number,
                "share of requests answered with the abort reply; 0 = off",
            ),
            f("abort.response.status", "Abort status", Kind::Int, "default 503"),
            f("abort.response.headers", "Abort headers", Kind::Map, ""),
            f("abort.response.body", "Abort body", Kind::LongText, ""),
            f("abort.reset", "Abort with a reset", Kind::Bool, "no response: the stream is reset"),
            f("abort.count_in_breaker", "Aborts count in the breaker", Kind::Bool, "default false"),
            f("delay.percent", "Delay %", Kind::Number, "share of requests held first; 0 = off"),
            f("delay.duration", "Delay", Kind::Duration, "how long, e.g. 200ms"),
            f("delay.max", "Delay up to", Kind::Duration, "with it, each delay is drawn between the two"),
            f("headers", "On request headers", Kind::Bool, "only requests with x-breakwater-fault-* headers"),
            f("max_active", "Max delayed at once", Kind::Int, "default 1000"),
        ],
    },
    Block {
        key: "fallback",
        title: "Fallback",
        template: Some(r#"{"on": ["5xx", "timeout"], "response": {"status": 200, "body": ""}}"#),
        fields: &[
            f("on", "On", Kind::Multi(OUTCOMES), ""),
            f("response.status", "Status", Kind::Int, ""),
            f("response.headers", "Headers", Kind::Map, ""),
            f("response.body", "Body", Kind::LongText, ""),
        ],
    },
    Block {
        key: "alerts",
        title: "Alerts (breakwater render alerts)",
        template: Some(r#"{"rejected_share": 5}"#),
        fields: &[
            f("enabled", "Enabled", Kind::Bool, "default true; false: no alerts for this policy"),
            f("rejected_share", "Rejected share %", Kind::Int, "one kind of rejection above it alerts"),
            f("for", "For", Kind::Duration, "how long a condition holds before it alerts"),
            f(
                "breaker_open_for",
                "Breaker open for",
                Kind::Duration,
                "open this long alerts again, critical",
            ),
            f("in_flight_share", "In flight at limit %", Kind::Int, "share of the concurrency limit"),
        ],
    },
];

/// The field's path relative to the policy (`rate_limit.rate`).
pub fn field_path(block: &Block, field: &Field) -> String {
    if block.key.is_empty() { field.path.to_string() } else { format!("{}.{}", block.key, field.path) }
}

/// A test id for a field of the form: `field-rate_limit-rate`.
pub fn test_id(path: &str) -> String {
    format!("field-{}", path.replace('.', "-"))
}

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// The policy at `index` in the document.
pub fn policy(doc: &Value, index: usize) -> Option<&Value> {
    doc.get("policies").and_then(|p| p.get(index))
}

/// A field's value as the form shows it.
pub fn display(policy: &Value, path: &str, kind: Kind) -> String {
    let Some(v) = get(policy, path) else { return String::new() };
    match (v, kind) {
        (Value::String(s), _) => s.clone(),
        (Value::Array(items), _) => items.iter().map(scalar_text).collect::<Vec<_>>().join(", "),
        (Value::Object(m), _) => {
            m.iter().map(|(k, v)| format!("{k}: {}", scalar_text(v))).collect::<Vec<_>>().join("\n")
        }
        (other, _) => scalar_text(other),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Whether a word of a Multi field is set.
pub fn has_word(policy: &Value, path: &str, word: &str) -> bool {
    get(policy, path).and_then(Value::as_array).is_some_and(|a| a.iter().any(|v| v.as_str() == Some(word)))
}

fn number_or_text(text: &str) -> Value {
    match text.trim().parse::<i64>() {
        Ok(n) => Value::from(n),
        Err(_) => Value::String(text.trim().to_string()),
    }
}

fn split_list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The JSON value for a field's input; None when the input is empty (the key is removed).
pub fn parse_input(kind: Kind, text: &str) -> Option<Value> {
    if text.trim().is_empty() {
        return None;
    }
    Some(match kind {
        Kind::Int => number_or_text(text),
        Kind::Number => match text.trim().parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => match text.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => Value::from(x),
                _ => Value::String(text.trim().to_string()),
            },
        },
        Kind::Window => number_or_text(text),
        Kind::List | Kind::Multi(_) => {
            Value::Array(split_list(text).map(|s| Value::String(s.into())).collect())
        }
        Kind::IntList => Value::Array(split_list(text).map(number_or_text).collect()),
        Kind::Map => Value::Object(
            text.lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    Some((k.trim().to_string(), Value::String(v.trim().to_string())))
                })
                .filter(|(k, _)| !k.is_empty())
                .collect(),
        ),
        Kind::LongText => Value::String(text.to_string()),
        Kind::Bool => match text.trim() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            other => Value::String(other.to_string()),
        },
        Kind::Text | Kind::Duration | Kind::Choice(_) => Value::String(text.trim().to_string()),
    })
}

/// Sets (or with None removes) the value at `path` in the policy at `index`; objects on the way
/// are created, and emptied ones removed.
pub fn set(doc: &mut Value, index: usize, path: &str, value: Option<Value>) {
    let Some(policy) = doc.get_mut("policies").and_then(|p| p.get_mut(index)) else { return };
    set_in(policy, path, value);
}

fn set_in(target: &mut Value, path: &str, value: Option<Value>) {
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { return };
    match path.split_once('.') {
        None => match value {
            Some(v) => {
                map.insert(path.to_string(), v);
            }
            None => {
                map.remove(path);
            }
        },
        Some((head, rest)) => {
            if value.is_none() && !map.contains_key(head) {
                return;
            }
            let child = map.entry(head.to_string()).or_insert_with(|| Value::Object(Map::new()));
            set_in(child, rest, value);
            if child.as_object().is_some_and(Map::is_empty) {
                map.remove(head);
            }
        }
    }
}

/// Turns a word of a Multi field on or off.
pub fn toggle_word(doc: &mut Value, index: usize, path: &str, word: &str, on: bool) {
    let current: Vec<String> = policy(doc, index)
        .and_then(|p| get(p, path))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let mut words: Vec<String> = current.into_iter().filter(|w| w != word).collect();
    if on {
        words.push(word.to_string());
    }
    let value = (!words.is_empty()).then(|| Value::Array(words.into_iter().map(Value::String).collect()));
    set(doc, index, path, value);
}

/// Switches an optional block on (its template) or off.
pub fn set_block(doc: &mut Value, index: usize, block: &Block, on: bool) {
    let value = if on { block.template.and_then(|t| serde_json::from_str(t).ok()) } else { None };
    set(doc, index, block.key, value);
}

/// Appends a new policy with a unique name; returns its index.
pub fn add_policy(doc: &mut Value) -> usize {
    if !doc.is_object() {
        *doc = serde_json::json!({ "version": 1 });
    }
    let names: Vec<String> = doc
        .get("policies")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|p| p.get("name")?.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let name = (1..).map(|n| format!("policy-{n}")).find(|n| !names.contains(n)).unwrap_or_default();
    let policies =
        doc.as_object_mut().map(|m| m.entry("policies").or_insert_with(|| Value::Array(Vec::new())));
    match policies {
        Some(Value::Array(list)) => {
            list.push(serde_json::json!({ "name": name, "match": { "path_prefix": "/" } }));
            list.len() - 1
        }
        Some(other) => {
            *other = Value::Array(vec![serde_json::json!({ "name": name, "match": { "path_prefix": "/" } })]);
            0
        }
        None => 0,
    }
}

pub fn remove_policy(doc: &mut Value, index: usize) {
    if let Some(Value::Array(list)) = doc.get_mut("policies")
        && index < list.len()
    {
        list.remove(index);
    }
}

/// Where a diagnostic belongs: the policy index and the form field's path in it, when it names
/// one (`policies[2].rate_limit.key[1]` → (2, `rate_limit.key`)); the longest field path that
/// is a prefix wins.
pub fn locate(diag_path: &str) -> Option<(usize, Option<String>)> {
    let rest = diag_path.strip_prefix("policies[")?;
    let (index, rest) = rest.split_once(']')?;
    let index: usize = index.parse().ok()?;
    let inner = rest.strip_prefix('.').unwrap_or("");
    let inner = inner.split('[').next().unwrap_or("");
    let mut best: Option<String> = None;
    for block in BLOCKS {
        for field in block.fields {
            let p = field_path(block, field);
            let fits = inner == p || inner.starts_with(&format!("{p}."));
            if fits && best.as_ref().is_none_or(|b| p.len() > b.len()) {
                best = Some(p);
            }
        }
    }
    Some((index, best))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({ "version": 1, "policies": [{ "name": "api", "match": { "path_prefix": "/" } }] })
    }

    #[test]
    fn every_field_of_policy_v1_is_in_the_form() {
        // The schema's property names of each block, against the form's fields.
        let schema: Value = serde_json::from_str(&breakwater_policy::schema::json_schema()).unwrap();
        let text = schema.to_string();
        for block in BLOCKS {
            for field in block.fields {
                let last = field.path.rsplit('.').next().unwrap();
                assert!(
                    text.contains(&format!("\"{last}\"")),
                    "{} is not in the schema",
                    field_path(block, field)
                );
            }
        }
        let paths: Vec<String> =
            BLOCKS.iter().flat_map(|b| b.fields.iter().map(move |f| field_path(b, f))).collect();
        for needed in [
            "name",
            "mode",
            "failure_mode",
            "timeout",
            "match.hosts",
            "match.headers",
            "rate_limit.per",
            "global_rate_limit.mode",
            "global_rate_limit.degraded.learn",
            "concurrency_limit.max_in_flight",
            "concurrency_limit.queue.max_waiting",
            "concurrency_limit.adaptive.min",
            "concurrency_limit.adaptive.max",
            "concurrency_limit.adaptive.initial",
            "concurrency_limit.adaptive.interval",
            "concurrency_limit.adaptive.tolerance",
            "concurrency_limit.adaptive.probe_interval",
            "concurrency_limit.adaptive.probe_samples",
            "concurrency_limit.queue.max_wait",
            "circuit_breaker.slow_call.rate",
            "retry.budget.percent",
            "fallback.response.body",
            "fault.abort.percent",
            "fault.abort.count_in_breaker",
            "fault.abort.reset",
            "fault.delay.max",
            "fault.headers",
            "fault.max_active",
            "alerts.enabled",
            "alerts.rejected_share",
            "alerts.for",
            "alerts.breaker_open_for",
            "alerts.in_flight_share",
        ] {
            assert!(paths.iter().any(|p| p == needed), "{needed}");
        }
    }

    #[test]
    fn templates_validate() {
        for block in BLOCKS.iter().filter(|b| b.template.is_some()) {
            let mut d = doc();
            set_block(&mut d, 0, block, true);
            let yaml = breakwater_policy::yaml::to_yaml(&d);
            assert!(breakwater_policy::load(&yaml).is_ok(), "{}: {yaml}", block.key);
            set_block(&mut d, 0, block, false);
            assert_eq!(d, doc());
        }
    }

    #[test]
    fn inputs_become_values_and_show_the_same() {
        let mut d = doc();
        set(&mut d, 0, "rate_limit.rate", parse_input(Kind::Int, "12"));
        set(&mut d, 0, "rate_limit.key", parse_input(Kind::List, "client_ip, header:x-api-key"));
        set(&mut d, 0, "match.headers", parse_input(Kind::Map, "x-a: 1\nx-b: *\n"));
        set(&mut d, 0, "retry.statuses", parse_input(Kind::IntList, "409, 503"));
        let p = policy(&d, 0).unwrap();
        assert_eq!(p["rate_limit"], json!({ "rate": 12, "key": ["client_ip", "header:x-api-key"] }));
        assert_eq!(display(p, "rate_limit.key", Kind::List), "client_ip, header:x-api-key");
        assert_eq!(display(p, "match.headers", Kind::Map), "x-a: 1\nx-b: *");
        assert_eq!(display(p, "retry.statuses", Kind::IntList), "409, 503");
        // Percentages keep their decimals; whole ones stay integers.
        set(&mut d, 0, "fault.abort.percent", parse_input(Kind::Number, "0.5"));
        set(&mut d, 0, "fault.delay.percent", parse_input(Kind::Number, "10"));
        let p = policy(&d, 0).unwrap();
        assert_eq!(p["fault"]["abort"]["percent"], json!(0.5));
        assert_eq!(display(p, "fault.delay.percent", Kind::Number), "10");
        // Not a number: kept as typed, for the validator to report.
        set(&mut d, 0, "global_rate_limit.degraded.learn", parse_input(Kind::Bool, "false"));
        assert_eq!(policy(&d, 0).unwrap()["global_rate_limit"]["degraded"]["learn"], json!(false));
        assert_eq!(display(policy(&d, 0).unwrap(), "global_rate_limit.degraded.learn", Kind::Bool), "false");
        set(&mut d, 0, "rate_limit.rate", parse_input(Kind::Int, "12x"));
        assert_eq!(policy(&d, 0).unwrap()["rate_limit"]["rate"], "12x");
        // Emptied fields go, and so do the objects they emptied.
        set(&mut d, 0, "retry.statuses", None);
        assert!(policy(&d, 0).unwrap().get("retry").is_none());
    }

    #[test]
    fn multi_words_toggle() {
        let mut d = doc();
        toggle_word(&mut d, 0, "retry.retry_on", "5xx", true);
        toggle_word(&mut d, 0, "retry.retry_on", "reset", true);
        assert!(has_word(policy(&d, 0).unwrap(), "retry.retry_on", "reset"));
        toggle_word(&mut d, 0, "retry.retry_on", "5xx", false);
        assert_eq!(policy(&d, 0).unwrap()["retry"]["retry_on"], json!(["reset"]));
    }

    #[test]
    fn diagnostics_find_their_field() {
        assert_eq!(locate("policies[2].rate_limit.key[1]"), Some((2, Some("rate_limit.key".into()))));
        assert_eq!(
            locate("policies[0].circuit_breaker.slow_call.rate"),
            Some((0, Some("circuit_breaker.slow_call.rate".into())))
        );
        assert_eq!(locate("policies[0].name"), Some((0, Some("name".into()))));
        assert_eq!(locate("policies[1]"), Some((1, None)));
        assert_eq!(locate("policies[1].nonsense"), Some((1, None)));
        assert_eq!(locate("version"), None);
    }

    #[test]
    fn new_policies_get_unique_names() {
        let mut d = doc();
        assert_eq!(add_policy(&mut d), 1);
        assert_eq!(add_policy(&mut d), 2);
        assert_eq!(policy(&d, 2).unwrap()["name"], "policy-2");
        remove_policy(&mut d, 0);
        assert_eq!(policy(&d, 0).unwrap()["name"], "policy-1");
    }
}
