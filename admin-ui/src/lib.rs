//! # breakwater-admin-ui
//!
//! The web admin: a Leptos client-side app compiled to `wasm32-unknown-unknown` and built by
//! trunk (`./dev build-admin`), served by `breakwater serve`. It validates as you type with the
//! very same Rust validator the CLI and the filter use (no round trip), and talks to the server's
//! JSON API for saving, simulating, publishing and live stats.

pub mod api;
pub mod app;
pub mod chart;
pub mod diff;
pub mod editor;
pub mod form;

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
