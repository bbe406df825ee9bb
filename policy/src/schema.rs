//! The JSON Schema of the policy language, generated from [`crate::model`]; committed at
//! `policies/schema.json` (a test fails when it is stale) for editors and CI pipelines.

use crate::model::Document;

/// The schema as pretty JSON with a trailing newline.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Document);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
