//! What Envoy runs, told in the admin's own numbering. Envoy reports only the ECDS version it
//! applied (`version_text`); the document behind that number is read from the ECDS file (when
//! Envoy runs its current version) or from the copy of the last applied resource kept beside it,
//! and then found among the saved versions by its compiled form, the very text a publish writes.
//! So the admin knows what Envoy runs also when something else published it (`breakwater
//! publish`, a script, the demo), and can diff against it.

use std::path::Path;

use breakwater_api::{NotApplied, Running};
use breakwater_policy::Document;
use serde_json::Value;

use super::store::Store;

/// Saved versions searched for the running document, newest first.
const SEARCHED: usize = 200;

/// The policy document inside an ECDS resource (a DiscoveryResponse) and its `version_info`.
pub fn resource_document(bytes: &[u8]) -> Option<(u64, Document)> {
    let response: Value = serde_json::from_slice(bytes).ok()?;
    let version = response.get("version_info")?.as_str()?.parse().ok()?;
    let compiled =
        response.pointer("/resources/0/typed_config/config/configuration/value").and_then(Value::as_str)?;
    let document = breakwater_policy::load(compiled).ok()?.document;
    Some((version, document))
}

/// A document as a publish compiles it, without the deployment's key seed (which a publish adds
/// and a saved version does not carry).
fn compiled_without_seed(
    doc: &Document,
    deployment_seed: Option<&breakwater_policy::engine::keys::KeySeed>,
) -> String {
    let mut doc = doc.clone();
    if doc.key_seed.is_some() && doc.key_seed.as_ref() == deployment_seed {
        doc.key_seed = None;
    }
    breakwater_policy::compile_compact(&doc)
}

/// The document of ECDS version `applied`: from the file, or from the applied copy beside it.
pub fn document_of(ecds: &Path, applied: u64) -> Option<Document> {
    [ecds.to_path_buf(), crate::ecds::applied_path(ecds)]
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|b| resource_document(&b))
        .find(|(v, _)| *v == applied)
        .map(|(_, d)| d)
}

/// The newest saved version whose document is `running` (compared compiled, seeds aside).
pub fn find_saved(store: &Store, ecds: &Path, running: &Document) -> Option<u64> {
    let seed = crate::ecds::read_deployment_seed(ecds);
    let wanted = compiled_without_seed(running, seed.as_ref());
    store.list().into_iter().take(SEARCHED).find_map(|v| {
        let text = store.get(v.id)?;
        let doc = breakwater_policy::load(&text).ok()?.document;
        (compiled_without_seed(&doc, seed.as_ref()) == wanted).then_some(v.id)
    })
}

/// The running document as YAML, for a diff: the deployment's seed left out (a secret, and not
/// part of what the user wrote).
pub fn as_yaml(ecds: &Path, running: &Document) -> String {
    let seed = crate::ecds::read_deployment_seed(ecds);
    let compiled = compiled_without_seed(running, seed.as_ref());
    match serde_json::from_str::<Value>(&compiled) {
        Ok(v) => breakwater_policy::yaml::to_yaml_ordered(&v, breakwater_policy::yaml::DOCUMENT_KEY_ORDER),
        Err(_) => compiled,
    }
}

/// The last answer of [`running`] and what it depended on: the admin polls the status every 2 s
/// per tab, and searching the saved versions compiles each of them.
#[derive(Debug, Default)]
pub struct Cache(std::sync::Mutex<Option<(String, Running)>>);

impl Cache {
    /// [`running`], or its last answer when nothing it reads has changed: Envoy's answer, the
    /// ECDS file and its applied copy (size and time), the saved versions and the publish record.
    pub fn running(
        &self,
        store: &Store,
        ecds: &Path,
        applied: Option<&str>,
        rejected: u64,
        reason: impl FnOnce() -> Option<String>,
    ) -> Running {
        let stamp = |p: &Path| {
            std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok())).map(|s| format!("{s:?}"))
        };
        let key = format!(
            "{applied:?}|{rejected}|{:?}|{:?}|{}|{:?}",
            stamp(ecds),
            stamp(&crate::ecds::applied_path(ecds)),
            store.current(),
            store.published()
        );
        let Ok(mut cached) = self.0.lock() else { return running(store, ecds, applied, rejected, reason) };
        if let Some((k, r)) = cached.as_ref()
            && *k == key
        {
            return r.clone();
        }
        let r = running(store, ecds, applied, rejected, reason);
        *cached = Some((key, r.clone()));
        r
    }
}

/// The story of what Envoy runs, from its applied ECDS version (`applied`, None when Envoy could
/// not be asked or has applied nothing yet), its rejected-update count, and the publishes this
/// server recorded. `reason` finds Envoy's last rejection reason (from its log) when needed.
pub fn running(
    store: &Store,
    ecds: &Path,
    applied: Option<&str>,
    rejected: u64,
    reason: impl FnOnce() -> Option<String>,
) -> Running {
    let applied_version = applied.and_then(|a| a.parse::<u64>().ok());
    let document = applied_version.and_then(|v| document_of(ecds, v));
    let version = document.as_ref().and_then(|d| find_saved(store, ecds, d));
    let from_admin =
        matches!((store.published(), applied_version), (Some(p), Some(a)) if p.ecds_version == a);
    let newest = crate::ecds::current_version(ecds);
    let not_applied = (newest > 0 && Some(newest) != applied_version).then(|| {
        // A newer version in the file than Envoy applied: Envoy rejected it, or has not read it
        // yet (or cannot be asked).
        let rejected = applied_version.is_some() && rejected > 0;
        NotApplied { ecds_version: newest, rejected, reason: if rejected { reason() } else { None } }
    });
    Running {
        ecds_version: applied_version,
        known: document.is_some(),
        version,
        policies: document.map(|d| d.policies.into_iter().map(|p| p.name).collect()).unwrap_or_default(),
        from_admin,
        not_applied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecds::{FilterSettings, publish_document};

    fn doc(text: &str) -> Document {
        breakwater_policy::load(text).unwrap().document
    }

    #[test]
    fn finds_the_saved_version_a_cli_publish_wrote() {
        let dir = std::env::temp_dir().join(format!("bw-running-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ecds = dir.join("ecds/breakwater.json");
        let policy = dir.join("policy.yaml");
        let a = "version: 1\npolicies:\n  - name: a\n    rate_limit: { rate: 10 }\n";
        let b = "version: 1\npolicies:\n  - name: b\n    rate_limit: { rate: 20 }\n";
        std::fs::write(&policy, a).unwrap();
        let store = Store::open(&policy, &dir.join("state")).unwrap();
        store.save(b).unwrap();
        store.save("# the same as b, written otherwise\nversion: 1\npolicies: [{name: b, rate_limit: {rate: 20, burst: 20}}]\n").unwrap();
        // Published from the command line (a key seed added), twice: Envoy runs version 2 of the file.
        let settings = FilterSettings::breakwater("/x.wasm".into());
        assert_eq!(publish_document(&ecds, &settings, &doc(a)).unwrap(), 1);
        assert_eq!(publish_document(&ecds, &settings, &doc(b)).unwrap(), 2);
        let r = running(&store, &ecds, Some("2"), 0, || None);
        assert_eq!((r.ecds_version, r.known, r.version, r.from_admin), (Some(2), true, Some(3), false));
        assert_eq!(r.policies, ["b"]);
        assert_eq!(r.not_applied, None);
        // Version 1 of the file is gone from it, but kept as the applied copy after Envoy applied it.
        crate::ecds::remember_applied(&ecds, "2").unwrap();
        assert_eq!(publish_document(&ecds, &settings, &doc(a)).unwrap(), 3);
        let r = running(&store, &ecds, Some("2"), 1, || Some("bad".into()));
        assert_eq!((r.known, r.version), (true, Some(3)));
        assert_eq!(
            r.not_applied,
            Some(NotApplied { ecds_version: 3, rejected: true, reason: Some("bad".into()) })
        );
        // A document in no saved version: known, but not found.
        let c = "version: 1\npolicies:\n  - name: c\n    retry: { max_retries: 1 }\n";
        assert_eq!(publish_document(&ecds, &settings, &doc(c)).unwrap(), 4);
        let r = running(&store, &ecds, Some("4"), 1, || None);
        assert_eq!((r.known, r.version, r.not_applied.clone()), (true, None, None));
        // The cache answers the same, and sees a new saved version with that document.
        let cache = Cache::default();
        assert_eq!(cache.running(&store, &ecds, Some("4"), 1, || None), r);
        store.save(c).unwrap();
        assert_eq!(cache.running(&store, &ecds, Some("4"), 1, || None).version, Some(store.current()));
        let yaml = as_yaml(&ecds, &document_of(&ecds, 4).unwrap());
        assert!(yaml.contains("name: c") && !yaml.contains("key_seed"), "{yaml}");
        // Envoy never applied anything: nothing is known.
        let r = running(&store, &ecds, None, 0, || None);
        assert_eq!((r.ecds_version, r.known, r.not_applied.map(|n| n.rejected)), (None, false, Some(false)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
