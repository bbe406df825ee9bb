//! Checking a Kubernetes manifest against a CustomResourceDefinition's `openAPIV3Schema`, offline,
//! the way the API server would with strict field validation (`kubectl apply --validate=strict`):
//! types, required fields, enums, patterns, lengths, bounds, and unknown fields as errors (except
//! under `x-kubernetes-preserve-unknown-fields`). Object metadata (name, namespace, labels) is
//! checked by Kubernetes' own rules.
//!
//! Not evaluated: the CEL rules of `x-kubernetes-validations`; they are listed by
//! [`cel_rules`] so a caller can say which ones it did not check.

use regex::Regex;
use serde_json::Value;

/// The openAPIV3Schema of the served version of a CRD (read with [`crate::yaml::from_yaml`]).
#[derive(Debug)]
pub struct Crd {
    group: String,
    version: String,
    kind: String,
    schema: Value,
}

impl Crd {
    pub fn new(crd: &Value) -> Result<Crd, String> {
        let spec = &crd["spec"];
        let version = spec["versions"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["served"] != false))
            .ok_or("the CRD has no served version")?;
        Ok(Crd {
            group: spec["group"].as_str().ok_or("spec.group missing")?.to_string(),
            version: version["name"].as_str().ok_or("version name missing")?.to_string(),
            kind: spec["names"]["kind"].as_str().ok_or("spec.names.kind missing")?.to_string(),
            schema: version["schema"]["openAPIV3Schema"].clone(),
        })
    }

    /// Every problem of `manifest`, as `path: message`; empty when it is valid.
    pub fn validate(&self, manifest: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        let api_version = format!("{}/{}", self.group, self.version);
        if manifest["apiVersion"] != api_version.as_str() {
            errors.push(format!("apiVersion: must be {api_version}, found {}", manifest["apiVersion"]));
        }
        if manifest["kind"] != self.kind.as_str() {
            errors.push(format!("kind: must be {}, found {}", self.kind, manifest["kind"]));
        }
        metadata(&manifest["metadata"], &mut errors);
        if let Some(obj) = manifest.as_object() {
            for key in obj.keys() {
                if !matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    let sub = &self.schema["properties"][key];
                    if sub.is_null() {
                        errors.push(format!("{key}: unknown field"));
                    } else {
                        check(sub, &obj[key], key, &mut errors);
                    }
                }
            }
        }
        errors
    }
}

/// The CEL rules (message, rule) in a schema, which [`Crd::validate`] does not evaluate.
pub fn cel_rules(schema: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut todo = vec![schema];
    while let Some(s) = todo.pop() {
        match s {
            Value::Object(m) => {
                if let Some(Value::Array(rules)) = m.get("x-kubernetes-validations") {
                    for r in rules {
                        out.push((
                            r["message"].as_str().unwrap_or("").into(),
                            r["rule"].as_str().unwrap_or("").into(),
                        ));
                    }
                }
                todo.extend(m.values());
            }
            Value::Array(a) => todo.extend(a),
            _ => {}
        }
    }
    out
}

fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
            .is_ok_and(|r| r.is_match(s))
}

fn dns_label(s: &str) -> bool {
    s.len() <= 63 && Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").is_ok_and(|r| r.is_match(s))
}

/// The documents of a YAML stream (`---` lines between them), each read with
/// [`crate::yaml::from_yaml`]; documents of only comments and blank lines are skipped.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut flush = |current: &mut String| -> Result<(), String> {
        let blank = current.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        if !blank {
            docs.push(crate::yaml::from_yaml(current)?);
        }
        current.clear();
        Ok(())
    };
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" {
            flush(&mut current)?;
        } else {
            current.push_str(line);
        }
    }
    flush(&mut current)?;
    Ok(docs)
}

/// A DNS-1035 label: what a Kubernetes Service may be named.
pub fn dns_1035_label(s: &str) -> bool {
    s.len() <= 63 && Regex::new(r"^[a-z]([-a-z0-9]*[a-z0-9])?$").is_ok_and(|r| r.is_match(s))
}

fn label_value(s: &str) -> bool {
    s.len() <= 63 && Regex::new(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$").is_ok_and(|r| r.is_match(s))
}

fn label_key(k: &str) -> bool {
    let (prefix, name) = k.rsplit_once('/').map_or((None, k), |(p, n)| (Some(p), n));
    prefix.is_none_or(dns_subdomain) && !name.is_empty() && label_value(name)
}

fn metadata(m: &Value, errors: &mut Vec<String>) {
    match m["name"].as_str() {
        Some(n) if dns_subdomain(n) => {}
        Some(n) => errors.push(format!("metadata.name: `{n}` is not a DNS-1123 subdomain")),
        None => errors.push("metadata.name: required".into()),
    }
    if let Some(ns) = m.get("namespace")
        && !ns.as_str().is_some_and(dns_label)
    {
        errors.push(format!("metadata.namespace: {ns} is not a DNS-1123 label"));
    }
    if let Some(labels) = m.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if !label_key(k) {
                errors.push(format!("metadata.labels: `{k}` is not a valid label key"));
            }
            if !v.as_str().is_some_and(label_value) {
                errors.push(format!("metadata.labels.{k}: {v} is not a valid label value"));
            }
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    if v.is_null() && schema["nullable"] == true {
        return;
    }
    if let Some(branches) = schema["anyOf"].as_array() {
        let fits = branches.iter().any(|b| {
            let mut e = Vec::new();
            check(b, v, path, &mut e);
            e.is_empty()
        });
        if !fits {
            errors.push(format!("{path}: matches none of the allowed forms"));
        }
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !matches!(type_name(v), "integer" | "string") {
            errors.push(format!("{path}: must be an integer or a string, found {}", type_name(v)));
        }
        return;
    }
    if let Some(want) = schema["type"].as_str() {
        let found = type_name(v);
        if !(found == want || (want == "number" && found == "integer")) {
            errors.push(format!("{path}: must be of type {want}, found {found}"));
            return;
        }
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(v)
    {
        errors.push(format!("{path}: {v} is not one of {}", Value::Array(options.clone())));
    }
    match v {
        Value::String(s) => {
            let chars = s.chars().count() as u64;
            if schema["maxLength"].as_u64().is_some_and(|m| chars > m) {
                errors.push(format!("{path}: longer than {} characters", schema["maxLength"]));
            }
            if schema["minLength"].as_u64().is_some_and(|m| chars < m) {
                errors.push(format!("{path}: shorter than {} characters", schema["minLength"]));
            }
            if let Some(p) = schema["pattern"].as_str() {
                match Regex::new(p) {
                    Ok(r) if r.is_match(s) => {}
                    Ok(_) => errors.push(format!("{path}: `{s}` does not match {p}")),
                    Err(e) => errors.push(format!("{path}: the schema's pattern {p} does not compile: {e}")),
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if schema["maximum"].as_f64().is_some_and(|m| x > m) {
                errors.push(format!("{path}: {n} is above {}", schema["maximum"]));
            }
            if schema["minimum"].as_f64().is_some_and(|m| x < m) {
                errors.push(format!("{path}: {n} is below {}", schema["minimum"]));
            }
            if schema["format"] == "int32" && (x < f64::from(i32::MIN) || x > f64::from(i32::MAX)) {
                errors.push(format!("{path}: {n} does not fit in int32"));
            }
        }
        Value::Array(items) => {
            if schema["maxItems"].as_u64().is_some_and(|m| items.len() as u64 > m) {
                errors.push(format!("{path}: more than {} items", schema["maxItems"]));
            }
            if let Some(item) = schema.get("items") {
                for (i, x) in items.iter().enumerate() {
                    check(item, x, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(m) => {
            if schema["maxProperties"].as_u64().is_some_and(|max| m.len() as u64 > max) {
                errors.push(format!("{path}: more than {} entries", schema["maxProperties"]));
            }
            for r in schema["required"].as_array().into_iter().flatten() {
                if let Some(name) = r.as_str()
                    && !m.contains_key(name)
                {
                    errors.push(format!("{path}.{name}: required"));
                }
            }
            let props = schema["properties"].as_object();
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
            for (k, x) in m {
                let at = format!("{path}.{k}");
                match (props.and_then(|p| p.get(k)), schema.get("additionalProperties")) {
                    (Some(sub), _) => check(sub, x, &at, errors),
                    (None, Some(sub)) if sub.is_object() => check(sub, x, &at, errors),
                    (None, _) if preserve => {}
                    (None, _) => errors.push(format!("{at}: unknown field")),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_splits_into_its_documents() {
        let docs = documents("# a comment\n---\na: 1\n---\n# only a comment\n---\nb: [2]\n").unwrap();
        assert_eq!(docs, [serde_json::json!({ "a": 1 }), serde_json::json!({ "b": [2] })]);
        assert!(documents("a: [\n---\nb: 1\n").is_err());
    }

    #[test]
    fn service_names_are_dns_1035_labels() {
        for good in ["breakwater-ratelimit", "r", "a1"] {
            assert!(dns_1035_label(good), "{good}");
        }
        for bad in ["1st", "Ratelimit", "rate_limit", "a.b", "end-", "", &"a".repeat(64)] {
            assert!(!dns_1035_label(bad), "{bad}");
        }
    }
}
