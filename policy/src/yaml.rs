//! JSON values as block-style YAML (the admin's editor, and the manifests `breakwater render` prints),
//! and YAML read back into JSON values.
//!
//! Strings stay plain where YAML would read them back as the same string, and are double-quoted
//! (JSON escaping, which YAML's double-quoted style accepts) otherwise: `"true"`, `"8080"`, `"a: b"`.
//! A test reads every rendered document back with the policy crate's YAML reader.

use serde_json::Value;

/// Reads a YAML (or JSON) document into a JSON value, with the policy crate's bounded reader.
pub fn from_yaml(text: &str) -> Result<Value, String> {
    let root = crate::source::parse(text)
        .map_err(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
    Ok(node_to_json(&root))
}

fn node_to_json(n: &crate::source::Node) -> Value {
    use crate::source::{Value as Y, key_text};
    match &n.value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Int(i) => Value::from(*i),
        Y::BigInt(s) => Value::String(s.clone()),
        Y::Str(s) => Value::String(s.to_string()),
        Y::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Y::Seq(items) => Value::Array(items.iter().map(node_to_json).collect()),
        Y::Map(entries) => {
            Value::Object(entries.iter().map(|(k, v)| (key_text(k), node_to_json(v))).collect())
        }
    }
}

pub fn to_yaml(value: &Value) -> String {
    to_yaml_ordered(value, &[])
}

/// The keys of a policy document in the order people write them (the admin's editor writes
/// YAML in this order; JSON objects have none of their own).
pub const DOCUMENT_KEY_ORDER: &[&str] = &[
    "version",
    "debug_headers",
    "trust_attempt_count_header",
    "key_seed",
    "policies",
    "name",
    "match",
    "hosts",
    "path",
    "path_prefix",
    "methods",
    "headers",
    "mode",
    "failure_mode",
    "rate_limit",
    "rate",
    "per",
    "burst",
    "key",
    "max_keys",
    "concurrency_limit",
    "max_in_flight",
    "adaptive",
    "min",
    "max",
    "initial",
    "interval",
    "tolerance",
    "probe_interval",
    "probe_samples",
    "queue",
    "max_waiting",
    "max_wait",
    "circuit_breaker",
    "window",
    "minimum_calls",
    "failure_rate",
    "slow_call",
    "duration",
    "failure_on",
    "open_for",
    "half_open_calls",
    "retry",
    "max_retries",
    "retry_on",
    "statuses",
    "per_try_timeout",
    "budget",
    "percent",
    "min_per_second",
    "timeout",
    "fallback",
    "on",
    "response",
    "status",
    "body",
    "alerts",
    "enabled",
    "rejected_share",
    "for",
    "breaker_open_for",
    "in_flight_share",
];

/// As [`to_yaml`], with the keys of every map in `order` (keys not in it follow, in name order).
pub fn to_yaml_ordered(value: &Value, order: &[&str]) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0, order),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0, order),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn write_map(out: &mut String, m: &serde_json::Map<String, Value>, level: usize, order: &[&str]) {
    let mut entries: Vec<(&String, &Value)> = m.iter().collect();
    entries.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(order.len()));
    for (i, (k, v)) in entries.into_iter().enumerate() {
        // The first key of a map inside a sequence item follows the "- " already written.
        if i > 0 || !out.ends_with("- ") {
            indent(out, level);
        }
        out.push_str(&string(k));
        out.push(':');
        write_value(out, v, level, order);
    }
}

fn write_seq(out: &mut String, a: &[Value], level: usize, order: &[&str]) {
    for v in a {
        indent(out, level);
        out.push_str("- ");
        match v {
            Value::Object(m) if !m.is_empty() => write_map(out, m, level.saturating_add(2), order),
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                write_seq(out, inner, level.saturating_add(2), order);
            }
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

fn write_value(out: &mut String, v: &Value, level: usize, order: &[&str]) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, level.saturating_add(2), order);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_seq(out, a, level.saturating_add(2), order);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

/// A string as a YAML scalar that reads back as the same string.
fn string(s: &str) -> String {
    let plain_chars = |c: char| c.is_ascii_alphanumeric() || "._/-@+=,()".contains(c) || c == ' ' || c == ':';
    let reserved = matches!(
        s.to_ascii_lowercase().as_str(),
        "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "~" | ".inf" | ".nan"
    );
    // Durations (`500ms`, `1h`) stay plain: digits then letters read back as a string.
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let duration_like = digits > 0
        && digits < s.len()
        && s[digits..].bytes().all(|b| b.is_ascii_lowercase())
        && !s.starts_with('0');
    let looks_numeric =
        !duration_like && (s.parse::<f64>().is_ok() || s.starts_with(['0', '+', '-', '.']) && s.len() > 1);
    let safe = !s.is_empty()
        && !reserved
        && !looks_numeric
        && s.chars().all(plain_chars)
        && (duration_like || s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '_'))
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !s.contains(" #");
    if safe { s.to_string() } else { serde_json::to_string(s).unwrap_or_default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_back_as_the_same_value() {
        let v = json!({
            "apiVersion": "extensions.istio.io/v1alpha1",
            "metadata": { "name": "breakwater", "labels": { "app": "shop" } },
            "spec": {
                "url": "oci://127.0.0.1:5000/breakwater/filter:1.0",
                "tricky": ["true", "8080", "0x1f", "1h", "500ms", "1e", "0s", "1inf", "a: b", "#x", "", " lead", "trail ", "1e5", "on", "-", "x # y",
                            "line\nbreak", "quote\"s", "é", "*star", "&amp", "[x]", "{y}", "%p", "@at", "`tick`", "!bang"],
                "numbers": [1, -2, 3.5, 0],
                "flags": [true, false, null],
                "nested": [{ "a": 1, "b": [{ "c": "d" }] }, [1, 2], {}],
                "empty": {}, "none": [],
                "policy": { "version": 1, "policies": [{ "name": "a", "rate_limit": { "rate": 5, "per": "1s" } }] }
            }
        });
        let text = to_yaml(&v);
        let back = from_yaml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, v, "\n{text}");
    }

    #[test]
    fn plain_where_it_is_safe() {
        assert_eq!(
            to_yaml(&json!({ "kind": "WasmPlugin", "phase": "AUTHZ", "url": "oci://r/x:1" })),
            "kind: WasmPlugin\nphase: AUTHZ\nurl: oci://r/x:1\n"
        );
        assert_eq!(to_yaml(&json!({ "a": "true", "b": "10" })), "a: \"true\"\nb: \"10\"\n");
    }

    #[test]
    fn writes_keys_in_the_order_given() {
        let v = json!({ "policies": [{ "rate_limit": { "burst": 2, "rate": 1 }, "name": "a", "zeta": 1, "alpha": 2 }], "version": 1 });
        assert_eq!(
            to_yaml_ordered(&v, DOCUMENT_KEY_ORDER),
            "version: 1\npolicies:\n  - name: a\n    rate_limit:\n      rate: 1\n      burst: 2\n    alpha: 2\n    zeta: 1\n"
        );
    }
}
