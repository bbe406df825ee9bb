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

/// A document as a publish compiles it, without a key seed: a publish adds the deployment's seed
/// to a document that has none, and whatever seed it carries (this deployment's, another's when
/// the file was written elsewhere) is a secret the admin never shows.
fn compiled_without_seed(doc: &Document) -> String {
    let mut doc = doc.clone();
    doc.key_seed = None;
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

/// The newest saved version whose document is `running`, compared compiled: a saved version
/// with a `key_seed` of its own must carry the same one; one without matches whatever seed the
/// publish added.
pub fn find_saved(store: &Store, running: &Document) -> Option<u64> {
    let with_seed = breakwater_policy::compile_compact(running);
    let without_seed = compiled_without_seed(running);
    store.list().into_iter().take(SEARCHED).find_map(|v| {
        let text = store.get(v.id)?;
        let doc = breakwater_policy::load(&text).ok()?.document;
        let wanted = if doc.key_seed.is_some() { &with_seed } else { &without_seed };
        (breakwater_policy::compile_compact(&doc) == *wanted).then_some(v.id)
    })
}

/// The running document as YAML, for a diff: its key seed left out (a secret, and not part of
/// what the user wrote).
pub fn as_yaml(running: &Document) -> String {
    let compiled = compiled_without_seed(running);
    match serde_json::from_str::<Value>(&compiled) {
        Ok(v) => breakwater_policy::yaml::to_yaml_ordered(&v, breakwater_policy::yaml::DOCUMENT_KEY_ORDER),
        Err(_) => compiled,
    }
}

/// How long a version may sit in the file unapplied before a rejection counted earlier is taken
/// as its own: Envoy reads a renamed file within milliseconds (the server may first see the
/// version after Envoy rejected it, when the counter has already moved).
const READ_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

/// The last answer of [`running`] and what it depended on (the admin polls the status every 2 s
/// per tab, and searching the saved versions compiles each of them), and Envoy's rejection count
/// when the file's newest version was first seen.
#[derive(Debug, Default)]
pub struct Cache(std::sync::Mutex<Memory>);

#[derive(Debug, Default)]
struct Memory {
    answer: Option<(String, Running)>,
    /// The file's newest version and Envoy's `update_rejected` when this server first saw it.
    baseline: Option<(u64, u64)>,
}

impl Cache {
    /// [`running`], or its last answer when nothing it reads has changed: Envoy's answer, the
    /// ECDS file and its applied copy (size and time), the saved versions and the publish record.
    ///
    /// The file's newest version counts as rejected when Envoy has not applied it and its
    /// rejection counter moved since this server first saw that version, or the version has been
    /// in the file for longer than Envoy takes to read it while the counter is above 0 (a
    /// rejection from before this server started). A counter that only grows says nothing more.
    pub fn running(
        &self,
        store: &Store,
        ecds: &Path,
        applied: Option<&str>,
        rejected_count: u64,
        reason: impl FnOnce() -> Option<String>,
    ) -> Running {
        let meta = |p: &Path| std::fs::metadata(p).ok();
        let stamp = |p: &Path| meta(p).map(|m| format!("{}:{:?}", m.len(), m.modified().ok()));
        let newest = crate::ecds::current_version(ecds);
        let Ok(mut memory) = self.0.lock() else {
            return running(store, ecds, applied, rejected_count > 0, reason);
        };
        let baseline = match memory.baseline {
            Some((v, count)) if v == newest => count,
            _ => {
                memory.baseline = Some((newest, rejected_count));
                rejected_count
            }
        };
        let settled = meta(ecds)
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > READ_WITHIN);
        let rejected = rejected_count > baseline || (settled && rejected_count > 0);
        let key = format!(
            "{applied:?}|{rejected}|{:?}|{:?}|{}|{:?}",
            stamp(ecds),
            stamp(&crate::ecds::applied_path(ecds)),
            store.current(),
            store.published()
        );
        if let Some((k, r)) = memory.answer.as_ref()
            && *k == key
        {
            return r.clone();
        }
        let r = running(store, ecds, applied, rejected, reason);
        // A rejection whose reason is not in Envoy's log yet is asked again next time.
        let reason_pending = r.not_applied.as_ref().is_some_and(|n| n.rejected && n.reason.is_none());
        memory.answer = (!reason_pending).then(|| (key, r.clone()));
        r
    }
}

/// The story of what Envoy runs, from its applied ECDS version (`applied`, None when Envoy could
/// not be asked or has applied nothing yet), whether it rejected the file's newest version, and
/// the publishes this server recorded. `reason` finds Envoy's rejection reason (from its log).
pub fn running(
    store: &Store,
    ecds: &Path,
    applied: Option<&str>,
    rejected: bool,
    reason: impl FnOnce() -> Option<String>,
) -> Running {
    let applied_version = applied.and_then(|a| a.parse::<u64>().ok());
    let document = applied_version.and_then(|v| document_of(ecds, v));
    let version = document.as_ref().and_then(|d| find_saved(store, d));
    let from_admin =
        matches!((store.published(), applied_version), (Some(p), Some(a)) if p.ecds_version == a);
    let newest = crate::ecds::current_version(ecds);
    // A newer version in the file than Envoy applied: Envoy rejected it, or has not read it yet.
    // (Without Envoy's answer nothing is said: the file alone does not tell what Envoy runs.)
    let not_applied = applied_version.filter(|a| newest > *a).map(|_| NotApplied {
        ecds_version: newest,
        rejected,
        reason: if rejected { reason() } else { None },
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

    /// A scratch folder (removed when dropped), a store whose first version is `first`, and
    /// where the ECDS file goes.
    struct Fixture {
        dir: std::path::PathBuf,
        store: Store,
        ecds: std::path::PathBuf,
    }

    impl Fixture {
        fn new(name: &str, first: &str) -> Fixture {
            let dir = std::env::temp_dir().join(format!("bw-running-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let policy = dir.join("policy.yaml");
            std::fs::write(&policy, first).unwrap();
            let store = Store::open(&policy, &dir.join("state")).unwrap();
            Fixture { ecds: dir.join("ecds/breakwater.json"), dir, store }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn finds_the_saved_version_a_cli_publish_wrote() {
        let a = "version: 1\npolicies:\n  - name: a\n    rate_limit: { rate: 10 }\n";
        let b = "version: 1\npolicies:\n  - name: b\n    rate_limit: { rate: 20 }\n";
        let f = Fixture::new("cli", a);
        let (store, ecds) = (&f.store, &f.ecds);
        store.save(b).unwrap();
        store.save("# the same as b, written otherwise\nversion: 1\npolicies: [{name: b, rate_limit: {rate: 20, burst: 20}}]\n").unwrap();
        // Published from the command line (a key seed added), twice: Envoy runs version 2 of the file.
        let settings = FilterSettings::breakwater("/x.wasm".into());
        assert_eq!(publish_document(ecds, &settings, &doc(a)).unwrap(), 1);
        assert_eq!(publish_document(ecds, &settings, &doc(b)).unwrap(), 2);
        let r = running(store, ecds, Some("2"), false, || None);
        assert_eq!((r.ecds_version, r.known, r.version, r.from_admin), (Some(2), true, Some(3), false));
        assert_eq!(r.policies, ["b"]);
        assert_eq!(r.not_applied, None);
        // Version 1 of the file is gone from it, but kept as the applied copy after Envoy applied it.
        crate::ecds::remember_applied(ecds, "2").unwrap();
        assert_eq!(publish_document(ecds, &settings, &doc(a)).unwrap(), 3);
        let r = running(store, ecds, Some("2"), true, || Some("bad".into()));
        assert_eq!((r.known, r.version), (true, Some(3)));
        assert_eq!(
            r.not_applied,
            Some(NotApplied { ecds_version: 3, rejected: true, reason: Some("bad".into()) })
        );
        // A document in no saved version: known, but not found.
        let c = "version: 1\npolicies:\n  - name: c\n    retry: { max_retries: 1 }\n";
        assert_eq!(publish_document(ecds, &settings, &doc(c)).unwrap(), 4);
        let r = running(store, ecds, Some("4"), false, || None);
        assert_eq!((r.known, r.version, r.not_applied.clone()), (true, None, None));
        // The cache answers the same, and sees a new saved version with that document.
        let cache = Cache::default();
        assert_eq!(cache.running(store, ecds, Some("4"), 1, || None), r);
        store.save(c).unwrap();
        assert_eq!(cache.running(store, ecds, Some("4"), 1, || None).version, Some(store.current()));
        let yaml = as_yaml(&document_of(ecds, 4).unwrap());
        assert!(yaml.contains("name: c") && !yaml.contains("key_seed"), "{yaml}");
        // Envoy never applied anything (or cannot be asked): nothing is said of the file.
        let r = running(store, ecds, None, false, || None);
        assert_eq!((r.ecds_version, r.known, r.not_applied), (None, false, None));
        // A file that starts again from 1 while Envoy runs 4 holds nothing newer.
        std::fs::remove_file(ecds).unwrap();
        assert_eq!(publish_document(ecds, &settings, &doc(a)).unwrap(), 1);
        assert_eq!(running(store, ecds, Some("4"), true, || None).not_applied, None);
    }

    /// A seed other than the deployment's (another machine's publish, a recreated seed file)
    /// neither hides the saved version nor shows in the admin; a saved seed must match.
    #[test]
    fn seeds_neither_hide_nor_leak() {
        let a = "version: 1\npolicies:\n  - name: a\n    rate_limit: { rate: 10 }\n";
        let f = Fixture::new("seed", a);
        let store = &f.store;
        let mut running_doc = doc(a);
        running_doc.key_seed = Some(
            breakwater_policy::engine::keys::KeySeed::parse("0123456789abcdef0123456789abcdef").unwrap(),
        );
        assert_eq!(find_saved(store, &running_doc), Some(1));
        assert!(!as_yaml(&running_doc).contains("key_seed"));
        let seeded = "version: 1\nkey_seed: ffffffffffffffffffffffffffffffff\npolicies:\n  - name: a\n    rate_limit: { rate: 10 }\n";
        store.save(seeded).unwrap();
        assert_eq!(find_saved(store, &running_doc), Some(1), "a saved seed must be the one running");
        running_doc.key_seed = Some(
            breakwater_policy::engine::keys::KeySeed::parse("ffffffffffffffffffffffffffffffff").unwrap(),
        );
        assert_eq!(find_saved(store, &running_doc), Some(2));
    }

    /// A rejection counted before the file's newest version was written is not that version's.
    #[test]
    fn an_old_rejection_is_not_the_new_versions() {
        let a = "version: 1\npolicies:\n  - name: a\n    rate_limit: { rate: 10 }\n";
        let f = Fixture::new("rejected", a);
        let (store, ecds) = (&f.store, &f.ecds);
        let settings = FilterSettings::breakwater("/x.wasm".into());
        publish_document(ecds, &settings, &doc(a)).unwrap();
        publish_document(ecds, &settings, &doc(a)).unwrap();
        let cache = Cache::default();
        // Envoy runs 1, has rejected something once before, and has not read 2 yet (just written).
        let pending = cache.running(store, ecds, Some("1"), 1, || Some("old".into()));
        assert_eq!(pending.not_applied, Some(NotApplied { ecds_version: 2, rejected: false, reason: None }));
        // Its counter moves: version 2 is rejected, with the reason found now.
        let rejected = cache.running(store, ecds, Some("1"), 2, || Some("new".into()));
        assert_eq!(
            rejected.not_applied,
            Some(NotApplied { ecds_version: 2, rejected: true, reason: Some("new".into()) })
        );
    }
}
