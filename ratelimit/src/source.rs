//! Reading the policy document the service takes its limits from: a policy file (YAML or JSON),
//! or the ECDS file that `breakwater publish` writes for Envoy (so the service and the filters
//! read one document), checked exactly as `breakwater validate` checks it.

use std::path::Path;

use breakwater_policy::model::Document;
use serde_json::Value;

/// The policy document in a file's bytes: an ECDS DiscoveryResponse's Wasm plugin configuration,
/// or the bytes themselves.
pub fn read_document(bytes: &[u8]) -> Result<Document, Vec<String>> {
    let embedded = ecds_configuration(bytes);
    let policy = embedded.as_deref().map_or(bytes, str::as_bytes);
    match breakwater_policy::load_bytes(policy) {
        Ok(loaded) => Ok(loaded.document),
        Err(diags) => Err(diags.iter().filter(|d| d.is_error()).map(ToString::to_string).collect()),
    }
}

/// `resources[0].typed_config.config.configuration.value` of a DiscoveryResponse, if the bytes
/// are one.
fn ecds_configuration(bytes: &[u8]) -> Option<String> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()).is_none_or(|b| *b != b'{') {
        return None;
    }
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let resource = v.get("resources")?.as_array()?.first()?;
    let value = resource.pointer("/typed_config/config/configuration/value")?;
    value.as_str().map(str::to_string)
}

pub fn read_file(path: &Path) -> Result<(Vec<u8>, Document), Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    let doc = read_document(&bytes)?;
    Ok((bytes, doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "version: 1\npolicies:\n  - name: api\n    global_rate_limit: { rate: 5 }\n";

    #[test]
    fn a_policy_file_and_an_ecds_file_give_the_same_document() {
        let direct = read_document(POLICY.as_bytes()).unwrap();
        let compiled = serde_json::to_string(&direct).unwrap();
        let ecds = serde_json::json!({
            "version_info": "3",
            "resources": [{ "name": "breakwater", "typed_config": { "config": {
                "configuration": { "@type": "type.googleapis.com/google.protobuf.StringValue", "value": compiled }
            } } }]
        });
        assert_eq!(read_document(ecds.to_string().as_bytes()).unwrap(), direct);
    }

    #[test]
    fn invalid_documents_are_refused_with_the_validators_messages() {
        let errors =
            read_document(b"version: 1\npolicies:\n  - name: api\n    global_rate_limit: { rate: 0 }\n")
                .unwrap_err();
        assert_eq!(
            errors,
            ["error: policies[0].global_rate_limit.rate: must be between 1 and 1000000000, found 0"]
        );
    }
}
