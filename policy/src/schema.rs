//! The JSON Schema of the policy language, generated from [`crate::model`]; committed at
//! `policies/schema.json` (a test fails when it is stale) for editors and CI pipelines.

use crate::model::Document;

/// The schema as pretty JSON with a trailing newline.
pub fn json_schema() -> String {
    let mut schema = schemars::schema_for!(Document);
    // `burst` defaults to `rate`, a default that depends on another field and so cannot be
    // written as a schema `default`; the model keeps it a plain number (always present once
    // normalized), so it is taken out of `required` here.
    for block in ["RateLimit", "GlobalRateLimit"] {
        if let Some(required) =
            schema.pointer_mut(&format!("/$defs/{block}/required")).and_then(serde_json::Value::as_array_mut)
        {
            required.retain(|f| f != "burst");
        }
    }
    // A concurrency limit is fixed or adaptive: exactly one of the two fields.
    if let Some(cl) = schema.pointer_mut("/$defs/ConcurrencyLimit").and_then(serde_json::Value::as_object_mut)
    {
        cl.insert(
            "oneOf".into(),
            serde_json::json!([{ "required": ["max_in_flight"] }, { "required": ["adaptive"] }]),
        );
    }
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::*;
    use serde_json::Value;

    fn schema() -> Value {
        serde_json::from_str(&json_schema()).unwrap()
    }

    /// The committed schema is what the model generates. Regenerate with
    /// `cargo run -p breakwater-cli -- schema > policies/schema.json`.
    #[test]
    fn committed_schema_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/schema.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == json_schema(),
            "policies/schema.json is stale: run `cargo run -p breakwater-cli -- schema > policies/schema.json`"
        );
    }

    /// The decoder accepts exactly the fields the schema describes, object by object.
    #[test]
    fn decoder_fields_match_the_schema() {
        let s = schema();
        let objects: [(&str, &[&str]); FIELD_LISTS.len()] = [
            ("", DOCUMENT_FIELDS),
            ("/$defs/Policy", POLICY_FIELDS),
            ("/$defs/Match", MATCH_FIELDS),
            ("/$defs/RateLimit", RATE_LIMIT_FIELDS),
            ("/$defs/GlobalRateLimit", GLOBAL_RATE_LIMIT_FIELDS),
            ("/$defs/Degraded", DEGRADED_FIELDS),
            ("/$defs/ConcurrencyLimit", CONCURRENCY_FIELDS),
            ("/$defs/Queue", QUEUE_FIELDS),
            ("/$defs/Adaptive", ADAPTIVE_FIELDS),
            ("/$defs/CircuitBreaker", BREAKER_FIELDS),
            ("/$defs/SlowCall", SLOW_CALL_FIELDS),
            ("/$defs/Retry", RETRY_FIELDS),
            ("/$defs/Budget", BUDGET_FIELDS),
            ("/$defs/Fallback", FALLBACK_FIELDS),
            ("/$defs/Response", RESPONSE_FIELDS),
            ("/$defs/Fault", FAULT_FIELDS),
            ("/$defs/FaultAbort", FAULT_ABORT_FIELDS),
            ("/$defs/FaultDelay", FAULT_DELAY_FIELDS),
            ("/$defs/Alerts", ALERTS_FIELDS),
        ];
        for (pointer, fields) in objects {
            let props = s.pointer(&format!("{pointer}/properties")).and_then(Value::as_object).unwrap();
            let mut in_schema: Vec<&str> = props.keys().map(String::as_str).collect();
            let mut in_decoder = fields.to_vec();
            in_schema.sort();
            in_decoder.sort();
            assert_eq!(in_schema, in_decoder, "{pointer}");
            assert_eq!(s.pointer(&format!("{pointer}/additionalProperties")), Some(&Value::Bool(false)));
        }
        let required = |p: &str| s.pointer(&format!("{p}/required")).cloned().unwrap_or_default();
        assert_eq!(required(""), serde_json::json!(["version", "policies"]));
        assert_eq!(required("/$defs/Policy"), serde_json::json!(["name"]));
        assert_eq!(required("/$defs/RateLimit"), serde_json::json!(["rate"]));
        assert_eq!(required("/$defs/GlobalRateLimit"), serde_json::json!(["rate"]));
        assert_eq!(required("/$defs/Fallback"), serde_json::json!(["response"]));
    }
}
