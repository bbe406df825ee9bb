//! What a policy does, in a few words per block: the admin's chips, read from the model after
//! decoding, so every default is applied (a rate limit without `burst` shows its burst as the
//! rate, not `null`) and every value is written as a user writes it (`30s`, not `"30s"`).
//!
//! One chip per block, in the order the filter applies them; a chip leaves out what is usual
//! (a burst equal to the rate, the `1s` of a rate, the default replies) so the unusual stands out.
//!
//! [`changes`] says what a new version changes, policy by policy and field by field, from the
//! two models: what Publish and History show above the text diff.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Document;
use crate::model::{
    Adaptive, CircuitBreaker, ConcurrencyLimit, Duration, Fault, GlobalRateLimit, KeyPart, Match, Mode,
    Outcome, Policy, RateLimit, Retry, Window,
};

/// One chip: its kind (the block, also its CSS class) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chip {
    pub kind: &'static str,
    pub text: String,
}

fn chip(kind: &'static str, text: String) -> Chip {
    Chip { kind, text }
}

/// The chips of a policy: what it matches, then each block it has.
pub fn chips(p: &Policy) -> Vec<Chip> {
    let mut out = Vec::new();
    if let Some(m) = matched(&p.matcher) {
        out.push(chip("match", m));
    }
    if p.mode == Mode::Shadow {
        out.push(chip("shadow", "shadow: counts, never rejects".into()));
    }
    if let Some(f) = &p.fault {
        out.push(chip("fault", fault(f)));
    }
    if let Some(r) = &p.rate_limit {
        out.push(chip("rate", rate(r)));
    }
    if let Some(g) = &p.global_rate_limit {
        out.push(chip("global", global(g)));
    }
    if let Some(c) = &p.concurrency_limit {
        out.push(chip("concurrency", concurrency(c)));
    }
    if let Some(b) = &p.circuit_breaker {
        out.push(chip("breaker", breaker(b)));
    }
    if let Some(r) = &p.retry {
        out.push(chip("retry", retry(r)));
    }
    if let Some(t) = p.timeout {
        out.push(chip("timeout", format!("timeout {t}")));
    }
    if let Some(f) = &p.fallback {
        out.push(chip("fallback", format!("fallback {} on {}", f.response.status, outcomes(&f.on))));
    }
    out
}

fn matched(m: &Match) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(methods) = &m.methods {
        parts.push(methods.iter().map(|t| t.as_ref()).collect::<Vec<_>>().join("|"));
    }
    match &m.hosts {
        Some(hosts) if !hosts.is_empty() => parts.push(hosts.join(", ")),
        _ => {}
    }
    if let Some(path) = &m.path {
        parts.push(path.clone());
    } else if let Some(prefix) = &m.path_prefix {
        parts.push(format!("{prefix}*"));
    }
    for (name, value) in &m.headers {
        parts.push(if value == "*" { format!("{name} present") } else { format!("{name}: {value}") });
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// `10/s`, `100/min`, `5/2s`.
fn per(rate: u64, per: Duration) -> String {
    match per.as_millis() {
        1000 => format!("{rate}/s"),
        60_000 => format!("{rate}/min"),
        3_600_000 => format!("{rate}/h"),
        _ => format!("{rate}/{per}"),
    }
}

fn keyed(key: &[KeyPart]) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" per {}", key.iter().map(ToString::to_string).collect::<Vec<_>>().join("+"))
    }
}

fn rate(r: &RateLimit) -> String {
    let burst = if r.burst == r.rate { String::new() } else { format!(", burst {}", r.burst) };
    format!("{}{}{burst}", per(r.rate, r.per), keyed(&r.key))
}

fn global(g: &GlobalRateLimit) -> String {
    let burst = if g.burst == g.rate { String::new() } else { format!(", burst {}", g.burst) };
    let mode = match g.mode {
        crate::model::GlobalMode::Exact => "exact",
        crate::model::GlobalMode::Leased => "leased",
    };
    format!("{} across the fleet{}{burst} ({mode})", per(g.rate, g.per), keyed(&g.key))
}

fn concurrency(c: &ConcurrencyLimit) -> String {
    let limit = match (&c.adaptive, c.max_in_flight) {
        (Some(Adaptive { min, max, .. }), _) => format!("adaptive {min}–{max} in flight"),
        (None, Some(n)) => format!("≤ {n} in flight"),
        (None, None) => "no limit".into(),
    };
    let queue =
        c.queue.as_ref().map(|q| format!(", queue {} for {}", q.max_waiting, q.max_wait)).unwrap_or_default();
    format!("{limit}{}{queue}", keyed(&c.key))
}

fn breaker(b: &CircuitBreaker) -> String {
    let window = match b.window {
        Window::Calls(n) => format!("{n} calls"),
        Window::Time(d) => d.to_string(),
    };
    let slow = b
        .slow_call
        .as_ref()
        .map(|s| format!(" or {}% slower than {}", s.rate, s.duration))
        .unwrap_or_default();
    format!("opens at {}% failed{slow} of {window}, for {}", b.failure_rate, b.open_for)
}

fn retry(r: &Retry) -> String {
    let times = if r.max_retries == 1 { "1 retry".to_string() } else { format!("{} retries", r.max_retries) };
    let on = r.retry_on.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(", ");
    let each = r.per_try_timeout.map(|t| format!(", {t} each")).unwrap_or_default();
    format!("{times} on {on}{each}, budget {}%", r.budget.percent)
}

fn outcomes(on: &[Outcome]) -> String {
    on.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn fault(f: &Fault) -> String {
    let mut parts = Vec::new();
    if let Some(a) = &f.abort {
        let how = if a.reset { "reset".to_string() } else { a.response.status.to_string() };
        parts.push(format!("abort {}% ({how})", a.percent));
    }
    if let Some(d) = &f.delay {
        let by = d.max.map_or(d.duration.to_string(), |m| format!("{}–{m}", d.duration));
        parts.push(format!("delay {}% by {by}", d.percent));
    }
    let on_request = if f.headers { " on request" } else { "" };
    format!("{}{on_request}", parts.join(", "))
}

/// What changes between two documents, policy by policy: read from the models (defaults applied,
/// so `burst` left out and `burst: 100` at a rate of 100 are the same), not from the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A new policy, with its chips.
    Added {
        policy: String,
        chips: Vec<String>,
    },
    Removed {
        policy: String,
    },
    /// A policy (or, with `policy` empty, the document's own settings) whose fields changed.
    Changed {
        policy: String,
        fields: Vec<FieldChange>,
    },
    /// The policies both documents have are in another order (the first that matches a request
    /// applies): the new order of those policies.
    Reordered {
        order: Vec<String>,
    },
}

/// One field: its path within the policy (`rate_limit.rate`) and its values, as YAML writes them
/// (None: not set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// The changes from `old` to `new`: removed policies, then changed and added ones in `new`'s order.
pub fn changes(old: &Document, new: &Document) -> Vec<Change> {
    let mut out = Vec::new();
    let settings = |d: &Document| {
        let mut v = serde_json::to_value(d).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.remove("policies");
            // A secret: whether it changed is worth saying, not its value.
            if let Some(seed) = m.get_mut("key_seed").filter(|s| !s.is_null()) {
                *seed = Value::String("(set)".into());
            }
        }
        v
    };
    let fields = field_changes(&settings(old), &settings(new));
    if !fields.is_empty() {
        out.push(Change::Changed { policy: String::new(), fields });
    }
    for p in &old.policies {
        if !new.policies.iter().any(|n| n.name == p.name) {
            out.push(Change::Removed { policy: p.name.clone() });
        }
    }
    let common = |of: &Document, other: &Document| -> Vec<String> {
        of.policies
            .iter()
            .filter(|p| other.policies.iter().any(|o| o.name == p.name))
            .map(|p| p.name.clone())
            .collect()
    };
    let order = common(new, old);
    if common(old, new) != order {
        out.push(Change::Reordered { order });
    }
    for p in &new.policies {
        match old.policies.iter().find(|o| o.name == p.name) {
            None => out.push(Change::Added {
                policy: p.name.clone(),
                chips: chips(p).into_iter().map(|c| c.text).collect(),
            }),
            Some(o) => {
                let as_value = |p: &Policy| serde_json::to_value(p).unwrap_or(Value::Null);
                let fields = field_changes(&as_value(o), &as_value(p));
                if !fields.is_empty() {
                    out.push(Change::Changed { policy: p.name.clone(), fields });
                }
            }
        }
    }
    out
}

fn field_changes(old: &Value, new: &Value) -> Vec<FieldChange> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", old, &mut a);
    flatten("", new, &mut b);
    let mut out = Vec::new();
    for (field, value) in &a {
        let other = b.get(field);
        if other != Some(value) {
            out.push(FieldChange { field: field.clone(), old: Some(value.clone()), new: other.cloned() });
        }
    }
    for (field, value) in &b {
        if !a.contains_key(field) {
            out.push(FieldChange { field: field.clone(), old: None, new: Some(value.clone()) });
        }
    }
    // In the order of the fields, wherever they came from.
    out.sort_by(|x, y| x.field.cmp(&y.field));
    out
}

/// Leaves as `path → value`: mappings are walked, lists of plain values are one value
/// (`[5xx, reset]`), lists of mappings are walked by index.
fn flatten(path: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&join(k), v, out);
            }
        }
        Value::Array(items) if items.iter().any(|i| i.is_object()) => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{path}[{i}]"), item, out);
            }
        }
        other => {
            out.insert(path.to_string(), plain(other));
        }
    }
}

/// A value as YAML shows it: `30s`, `100`, `[GET, HEAD]`, never JSON quotes.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => format!("[{}]", items.iter().map(plain).collect::<Vec<_>>().join(", ")),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

impl FieldChange {
    /// `rate_limit.rate: 100 → 50`, `retry: added`.
    pub fn text(&self) -> String {
        match (&self.old, &self.new) {
            (Some(o), Some(n)) => format!("{}: {o} → {n}", self.field),
            (None, Some(n)) => format!("{}: {n} (new)", self.field),
            (Some(o), None) => format!("{}: {o} (removed)", self.field),
            (None, None) => self.field.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;

    fn chips_of(yaml: &str) -> Vec<(String, String)> {
        let doc = crate::load(yaml).unwrap().document;
        chips(&doc.policies[0]).into_iter().map(|c| (c.kind.to_string(), c.text)).collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, t)| (k.to_string(), t.to_string())).collect()
    }

    #[test]
    fn defaults_are_applied_and_nothing_is_quoted() {
        // No burst: the burst is the rate, and then it is not worth a word.
        assert_eq!(
            chips_of("version: 1\npolicies:\n  - name: a\n    rate_limit: { rate: 10 }\n"),
            pairs(&[("rate", "10/s")])
        );
        assert_eq!(
            chips_of(
                "version: 1\npolicies:\n  - name: a\n    rate_limit: { rate: 100, per: 1m, burst: 150, key: [client_ip] }\n"
            ),
            pairs(&[("rate", "100/min per client_ip, burst 150")])
        );
        // A time window, written as the user writes it.
        assert_eq!(
            chips_of(
                "version: 1\npolicies:\n  - name: a\n    circuit_breaker: { window: 30s, failure_rate: 25 }\n"
            ),
            pairs(&[("breaker", "opens at 25% failed of 30s, for 30s")])
        );
        assert_eq!(
            chips_of(
                "version: 1\npolicies:\n  - name: a\n    concurrency_limit: { adaptive: {}, queue: { max_waiting: 20 } }\n"
            ),
            pairs(&[("concurrency", "adaptive 3–1000 in flight, queue 20 for 1s")])
        );
        assert_eq!(
            chips_of(
                "version: 1\npolicies:\n  - name: a\n    match: { path_prefix: /api, methods: [GET] }\n    mode: shadow\n    retry: { max_retries: 1 }\n    timeout: 2s\n"
            ),
            pairs(&[
                ("match", "GET /api*"),
                ("shadow", "shadow: counts, never rejects"),
                ("retry", "1 retry on connect-failure, reset, gateway-error, budget 20%"),
                ("timeout", "timeout 2s"),
            ])
        );
    }

    /// Every shipped example: each policy has a chip per block it has, and no chip shows an
    /// internal value (`null`, JSON quotes or braces, Rust's debug forms).
    #[test]
    fn every_example_policy_reads_well() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.to_string_lossy().into_owned();
            if !name.ends_with(".yaml") || name.ends_with(".scenario.yaml") {
                continue;
            }
            let doc = crate::load(&std::fs::read_to_string(&path).unwrap()).unwrap().document;
            for p in &doc.policies {
                let list = chips(p);
                let blocks = [
                    p.rate_limit.is_some(),
                    p.global_rate_limit.is_some(),
                    p.concurrency_limit.is_some(),
                    p.circuit_breaker.is_some(),
                    p.retry.is_some(),
                    p.timeout.is_some(),
                    p.fallback.is_some(),
                    p.fault.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                let block_chips = list.iter().filter(|c| !matches!(c.kind, "match" | "shadow")).count();
                assert_eq!(block_chips, blocks, "{name}: {}: {list:?}", p.name);
                for c in &list {
                    assert!(!c.text.is_empty(), "{name}: {}: empty {} chip", p.name, c.kind);
                    for bad in ["null", "\"", "{", "}", "Some(", "None", "Duration", "ms ms"] {
                        assert!(!c.text.contains(bad), "{name}: {}: {:?} shows {bad}", p.name, c.text);
                    }
                }
                seen += 1;
            }
        }
        assert!(seen >= 10, "only {seen} example policies");
    }

    #[test]
    fn changes_are_read_from_the_models() {
        let old = crate::load(
            "version: 1\npolicies:\n  - name: checkout\n    rate_limit: { rate: 100 }\n  - name: gone\n    timeout: 1s\n  - name: same\n    retry: { max_retries: 2 }\n",
        )
        .unwrap()
        .document;
        // `burst: 50` is the default once the rate is 50: only the rate changes.
        let new = crate::load(
            "version: 1\ndebug_headers: true\npolicies:\n  - name: checkout\n    rate_limit: { rate: 50, burst: 50 }\n    timeout: 2s\n  - name: same\n    retry: { max_retries: 2, budget: { percent: 20 } }\n  - name: fresh\n    rate_limit: { rate: 5, per: 1m }\n",
        )
        .unwrap()
        .document;
        let list = changes(&old, &new);
        let text: Vec<String> = list
            .iter()
            .map(|c| match c {
                Change::Added { policy, chips } => format!("+ {policy}: {}", chips.join("; ")),
                Change::Removed { policy } => format!("- {policy}"),
                Change::Reordered { order } => format!("order: {}", order.join(", ")),
                Change::Changed { policy, fields } => {
                    format!(
                        "~ {policy}: {}",
                        fields.iter().map(FieldChange::text).collect::<Vec<_>>().join("; ")
                    )
                }
            })
            .collect();
        assert_eq!(
            text,
            [
                "~ : debug_headers: false → true",
                "- gone",
                "~ checkout: rate_limit.burst: 100 → 50; rate_limit.rate: 100 → 50; timeout: 2s (new)",
                "+ fresh: 5/min",
            ]
        );
        assert!(changes(&new, &new).is_empty());
        // Two policies swapped: the first that matches applies, so the order is a change.
        let swapped = crate::load(
            "version: 1\ndebug_headers: true\npolicies:\n  - name: same\n    retry: { max_retries: 2 }\n  - name: checkout\n    rate_limit: { rate: 50 }\n    timeout: 2s\n  - name: fresh\n    rate_limit: { rate: 5, per: 1m }\n",
        )
        .unwrap()
        .document;
        assert_eq!(
            changes(&new, &swapped),
            [Change::Reordered { order: vec!["same".into(), "checkout".into(), "fresh".into()] }]
        );
    }
}
