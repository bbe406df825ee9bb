//! # breakwater-admin-ui
//!
//! The web admin, compiled to `wasm32-unknown-unknown`. Its first job already works: validating a
//! document in the browser with the very same Rust validator the CLI and the filter use, so that
//! the editor can show errors next to their field without a round trip to the server. The Leptos
//! interface arrives with the admin issue.

/// Validates a document and returns the diagnostics as JSON (`[{severity, path, message, line,
/// col}]`, empty when the document is valid and has no warnings).
pub fn validate_to_json(text: &str) -> String {
    let diags = match breakwater_policy::load(text) {
        Ok(loaded) => loaded.warnings,
        Err(diags) => diags,
    };
    serde_json::to_string(&diags).unwrap_or_else(|_| "[]".to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_errors_with_positions() {
        let json = super::validate_to_json("version: 1\npolicies:\n  - name: A\n");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v[0]["path"], "policies[0].name");
        assert_eq!((v[0]["line"].as_u64(), v[0]["col"].as_u64()), (Some(3), Some(11)));
        assert_eq!(super::validate_to_json("version: 1\npolicies: [{name: a}]\n"), "[]");
    }
}
