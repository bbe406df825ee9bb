//! # breakwater-policy
//!
//! The policy language and the decisions it drives, with no dependency on proxy-wasm: this crate
//! builds natively (CLI, admin server, host-test), for `wasm32-wasip1` (the Envoy filter) and for
//! `wasm32-unknown-unknown` (the admin UI validates in the browser with this exact code).
//!
//! - [`load`] reads a YAML or JSON document and reports every problem at once with its path,
//!   line and column ([`source`] → [`decode`] → [`check`]).
//! - [`compile`] turns a valid [`model::Document`] into the normalized JSON the filter receives,
//!   and [`plan::Plan`] is the immutable form every request reads.
//! - [`engine`] holds the pure decision engines (rate limit, concurrency limit, circuit breaker,
//!   retry budget). They take `now` as an argument (never reading a clock) and keep their state
//!   in small byte values updated by compare-and-swap, the shape of proxy-wasm shared data.

// No index that can be out of bounds, no arithmetic that can overflow or divide by zero: a panic
// in the filter turns every later request on that Envoy worker into a 503. Each exception says
// why it cannot happen (`#[expect(..., reason = ...)]`). Tests are exempt.
#![cfg_attr(not(test), warn(clippy::indexing_slicing, clippy::arithmetic_side_effects))]

pub mod check;
pub mod decode;
pub mod describe;
pub mod diag;
pub mod enforce;
pub mod engine;
pub mod fault;
pub mod fields;
pub mod fnv;
pub mod global;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod read;
pub mod request;
pub mod rls;
pub mod schema;
pub mod source;
pub mod yaml;

pub use diag::{Diagnostic, Severity, Span};
pub use model::Document;

/// A document that passed validation, with the warnings it drew.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub document: Document,
    pub warnings: Vec<Diagnostic>,
}

/// Reads, decodes and checks a document. `Err` holds every error and warning, in document order.
pub fn load(text: &str) -> Result<Loaded, Vec<Diagnostic>> {
    finish(source::parse(text))
}

/// As [`load`], from bytes that may not be UTF-8.
pub fn load_bytes(bytes: &[u8]) -> Result<Loaded, Vec<Diagnostic>> {
    finish(source::parse_bytes(bytes))
}

/// What the filter runs on every (re)configuration: the same reading and the same errors as
/// [`load_bytes`], without positions and without the warnings (which only an author can act on,
/// and which `breakwater validate` prints before a document is published): the JSON reader skips
/// counting lines and columns, and no position index is built.
pub fn load_config(bytes: &[u8]) -> Result<Document, Vec<Diagnostic>> {
    let root = source::parse_bytes_without_spans(bytes)?;
    let (document, mut diags) = decode::decode_without_spans(&root);
    diags.extend(check::check_errors(&document));
    diags.retain(Diagnostic::is_error);
    if diags.is_empty() { Ok(document) } else { Err(diags) }
}

fn finish(root: Result<source::Node, Vec<Diagnostic>>) -> Result<Loaded, Vec<Diagnostic>> {
    let root = root?;
    let (document, mut diags, spans) = decode::decode(&root);
    // Cross-field rules only make sense on fields that decoded; but run them anyway when the
    // failures are elsewhere, so users see everything in one pass.
    diags.extend(check::check(&document, &spans));
    diags.sort_by_key(|d| d.span.map(|s| (s.line, s.col)));
    if diags.iter().any(Diagnostic::is_error) { Err(diags) } else { Ok(Loaded { document, warnings: diags }) }
}

/// Merges valid documents into one, policies in the order given (teams often keep one file per
/// service), and checks the rules across them again: duplicate names, shadowing. Diagnostics name
/// the file and its own policy index: `b.yaml: policies[0].name`.
pub fn merge(docs: Vec<(String, Document)>) -> Result<Loaded, Vec<Diagnostic>> {
    let mut origin = Vec::new();
    let mut seeds_differ = Vec::new();
    let mut merged = Document::default();
    for (file, doc) in docs {
        merged.debug_headers |= doc.debug_headers;
        merged.trust_attempt_count_header |= doc.trust_attempt_count_header;
        match (merged.key_seed, doc.key_seed) {
            (Some(a), Some(b)) if a != b => seeds_differ.push(file.clone()),
            (None, seed) => merged.key_seed = seed,
            _ => {}
        }
        for (i, p) in doc.policies.into_iter().enumerate() {
            origin.push(format!("{file}: policies[{i}]"));
            merged.policies.push(p);
        }
    }
    let mut diags = check::check(&merged, &read::SpanIndex::default());
    for file in seeds_differ {
        diags.push(Diagnostic::error(
            format!("{file}: key_seed"),
            "differs from the key_seed of an earlier file: one document has one seed",
        ));
    }
    for d in &mut diags {
        d.path = rename_policy_indices(&d.path, &origin);
        d.message = rename_policy_indices(&d.message, &origin);
    }
    if diags.iter().any(Diagnostic::is_error) {
        Err(diags)
    } else {
        Ok(Loaded { document: merged, warnings: diags })
    }
}

/// Rewrites `policies[N]` (merged index) to the file and index it came from.
fn rename_policy_indices(text: &str, origin: &[String]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("policies[") {
        let (before, tail) = rest.split_at(at);
        out.push_str(before);
        let digits = tail.get(9..).unwrap_or_default();
        let end = digits.find(']').unwrap_or(0);
        match digits.get(..end).and_then(|n| n.parse::<usize>().ok()).and_then(|n| origin.get(n)) {
            Some(o) => {
                out.push_str(o);
                rest = digits.get(end.saturating_add(1)..).unwrap_or_default();
            }
            None => {
                out.push_str("policies[");
                rest = digits;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The normalized JSON the filter receives as plugin configuration: every default filled in.
/// It is itself a valid policy document, and loading it gives back the same [`Document`].
pub fn compile(doc: &Document) -> String {
    // Serializing plain data structs with string keys cannot fail.
    serde_json::to_string(doc).unwrap_or_default()
}

/// As [`compile`], leaving out every field whose value is its default: the same document in a
/// fraction of the bytes (a policy with every block goes from about 850 bytes to about 200). This
/// is what `breakwater publish` sends. Envoy parses the ECDS resource, and the filter parses its
/// configuration on the main thread and every worker, so the size sets the time a change takes
/// to apply.
///
/// Each field is left out only if deserializing the policy without it gives the same policy. The
/// whole result must then load through [`load_config`] to exactly `doc`, or the full form is
/// returned instead.
pub fn compile_compact(doc: &Document) -> String {
    use serde_json::Value;
    let full = compile(doc);
    let Ok(mut value) = serde_json::to_value(doc) else { return full };
    if let Value::Object(d) = &mut value {
        for flag in ["debug_headers", "trust_attempt_count_header"] {
            if d.get(flag) == Some(&Value::Bool(false)) {
                d.remove(flag);
            }
        }
        if let Some(Value::Array(policies)) = d.get_mut("policies") {
            for (p, model) in policies.iter_mut().zip(&doc.policies) {
                strip_defaults(p, model);
            }
        }
    }
    let compact = value.to_string();
    match load_config(compact.as_bytes()) {
        Ok(again) if &again == doc => compact,
        _ => full,
    }
}

/// Removes the fields of one serialized policy that deserialize back to the same value when
/// absent: a whole object first (a default `response`), else its fields one by one.
fn strip_defaults(policy: &mut serde_json::Value, model: &model::Policy) {
    fn paths(v: &serde_json::Value, prefix: &[String], out: &mut Vec<Vec<String>>) {
        if let serde_json::Value::Object(map) = v {
            for (k, child) in map {
                let mut path = prefix.to_vec();
                path.push(k.clone());
                out.push(path.clone());
                paths(child, &path, out);
            }
        }
    }
    fn parent<'v>(
        v: &'v mut serde_json::Value,
        path: &[String],
    ) -> Option<&'v mut serde_json::Map<String, serde_json::Value>> {
        let mut at = v;
        for k in path {
            at = at.as_object_mut()?.get_mut(k)?;
        }
        at.as_object_mut()
    }
    let mut candidates = Vec::new();
    paths(policy, &[], &mut candidates);
    let mut removed: Vec<Vec<String>> = Vec::new();
    for path in candidates {
        if removed.iter().any(|r| path.starts_with(r)) {
            continue;
        }
        let Some((field, at)) = path.split_last() else { continue };
        let Some(value) = parent(policy, at).and_then(|m| m.remove(field)) else { continue };
        let same = serde_json::from_value::<model::Policy>(policy.clone()).is_ok_and(|p| &p == model);
        if same {
            removed.push(path);
        } else if let Some(m) = parent(policy, at) {
            m.insert(field.clone(), value);
        }
    }
}
