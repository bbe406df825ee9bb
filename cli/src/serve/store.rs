//! The admin's policy store: one document in a file (default `policies/active.yaml`), every saved
//! version kept in a history folder (`000001.yaml`, `000002.yaml`, …), and the version last
//! published to Envoy.
//!
//! A save is validated first (an invalid document is refused and nothing is written), then written
//! atomically (temp file + rename, the same code that writes the ECDS file), then recorded in the
//! history. Versions are numbers, so a name from a request can never point outside the folder.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use breakwater_api::{Published, Saved, Version};
use breakwater_policy::Diagnostic;

use crate::ecds::write_atomically;

/// The document a new store starts with when the policy file does not exist yet.
pub const EMPTY_DOCUMENT: &str = "version: 1\npolicies: []\n";

#[derive(Debug)]
pub struct Store {
    policy: PathBuf,
    history: PathBuf,
    published: PathBuf,
}

#[derive(Debug)]
pub enum SaveError {
    /// The document does not validate: nothing was written.
    Invalid(Vec<Diagnostic>),
    Io(String),
}

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("cannot {what} {}: {e}", path.display())
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Store {
    /// Opens (and creates, when missing) the store. A policy file that exists but is not in the
    /// history yet becomes its first version, so the history always holds the active document.
    pub fn open(policy: &Path, state_dir: &Path) -> Result<Store, String> {
        let store = Store {
            policy: policy.to_path_buf(),
            history: state_dir.join("history"),
            published: state_dir.join("published.json"),
        };
        std::fs::create_dir_all(&store.history).map_err(|e| io("create", &store.history, e))?;
        let active = match std::fs::read_to_string(policy) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomically(policy, EMPTY_DOCUMENT.as_bytes()).map_err(|e| io("write", policy, e))?;
                EMPTY_DOCUMENT.to_string()
            }
            Err(e) => return Err(io("read", policy, e)),
        };
        let latest = store.latest_id().and_then(|id| store.get(id));
        if latest.as_deref() != Some(active.as_str()) {
            store.record(&active, policy_names(&active))?;
        }
        Ok(store)
    }

    pub fn policy_path(&self) -> &Path {
        &self.policy
    }

    /// The active document's text.
    pub fn active(&self) -> Result<String, String> {
        std::fs::read_to_string(&self.policy).map_err(|e| io("read", &self.policy, e))
    }

    fn version_path(&self, id: u64) -> PathBuf {
        self.history.join(format!("{id:06}.yaml"))
    }

    fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = std::fs::read_dir(&self.history)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".yaml")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    fn latest_id(&self) -> Option<u64> {
        self.ids().last().copied()
    }

    /// The latest version's id (the active document).
    pub fn current(&self) -> u64 {
        self.latest_id().unwrap_or(0)
    }

    /// The text of a version.
    pub fn get(&self, id: u64) -> Option<String> {
        std::fs::read_to_string(self.version_path(id)).ok()
    }

    /// Every version, newest first.
    pub fn list(&self) -> Vec<Version> {
        let mut out: Vec<Version> = self
            .ids()
            .into_iter()
            .filter_map(|id| {
                let path = self.version_path(id);
                let meta = std::fs::metadata(&path).ok()?;
                let saved_at_ms = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                // The index written at save time; versions saved before it existed are parsed.
                let policies = std::fs::read(self.index_path(id))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Index>(&b).ok())
                    .map(|i| i.policies)
                    .or_else(|| std::fs::read_to_string(&path).ok().map(|t| policy_names(&t)))
                    .unwrap_or_default();
                Some(Version { id, saved_at_ms, bytes: meta.len(), policies })
            })
            .collect();
        out.reverse();
        out
    }

    fn index_path(&self, id: u64) -> PathBuf {
        self.history.join(format!("{id:06}.json"))
    }

    /// Adds a version to the history: its index (what `list` shows), then its text, which is what
    /// makes the version exist.
    fn record(&self, text: &str, policies: Vec<String>) -> Result<u64, String> {
        let id = self.latest_id().unwrap_or(0) + 1;
        let index = self.index_path(id);
        let bytes = serde_json::to_vec(&Index { policies }).map_err(|e| e.to_string())?;
        write_atomically(&index, &bytes).map_err(|e| io("write", &index, e))?;
        let path = self.version_path(id);
        write_atomically(&path, text.as_bytes()).map_err(|e| {
            let _ = std::fs::remove_file(&index);
            io("write", &path, e)
        })?;
        Ok(id)
    }

    /// Validates and saves a document as the active one.
    pub fn save(&self, text: &str) -> Result<Saved, SaveError> {
        let loaded = breakwater_policy::load(text).map_err(SaveError::Invalid)?;
        if self.active().ok().as_deref() == Some(text)
            && let Some(id) = self.latest_id()
            && self.get(id).as_deref() == Some(text)
        {
            return Ok(Saved { version: id, changed: false, warnings: loaded.warnings });
        }
        // The history first: if the active file cannot be replaced, the new version is taken
        // back, so the latest version is always the active document.
        let names = loaded.document.policies.iter().map(|p| p.name.clone()).collect();
        let version = self.record(text, names).map_err(SaveError::Io)?;
        if let Err(e) = write_atomically(&self.policy, text.as_bytes()) {
            let _ = std::fs::remove_file(self.version_path(version));
            let _ = std::fs::remove_file(self.index_path(version));
            return Err(SaveError::Io(io("write", &self.policy, e)));
        }
        Ok(Saved { version, changed: true, warnings: loaded.warnings })
    }

    /// Makes an earlier version the active one again (as a new version: history only grows).
    pub fn rollback(&self, id: u64) -> Result<Option<Saved>, SaveError> {
        match self.get(id) {
            Some(text) => self.save(&text).map(Some),
            None => Ok(None),
        }
    }

    /// What was last published. `published.json` holds the API's [`Published`] as JSON: a field
    /// added to the API type must keep a default, or markers written before would no longer load.
    pub fn published(&self) -> Option<Published> {
        std::fs::read(&self.published).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    pub fn set_published(&self, p: &Published) -> Result<(), String> {
        let text = serde_json::to_vec(p).map_err(|e| e.to_string())?;
        write_atomically(&self.published, &text).map_err(|e| io("write", &self.published, e))
    }
}

/// What the history keeps beside each version (`000042.json`), so that listing the history does
/// not parse every version.
#[derive(serde::Serialize, serde::Deserialize)]
struct Index {
    policies: Vec<String>,
}

/// The names of a document's policies (none when it does not load).
fn policy_names(text: &str) -> Vec<String> {
    breakwater_policy::load(text)
        .map(|l| l.document.policies.into_iter().map(|p| p.name).collect())
        .unwrap_or_default()
}

/// The first document of a new store, from one or more policy files: one file is taken as it is
/// (comments and all); the policies of further files are appended to the first file's list. The
/// result must validate.
pub fn init_document(files: &[PathBuf]) -> Result<String, String> {
    let mut out = String::new();
    for (i, file) in files.iter().enumerate() {
        let text = std::fs::read_to_string(file).map_err(|e| io("read", file, e))?;
        if i == 0 {
            out = text;
        } else {
            let items = text
                .split_once("\npolicies:\n")
                .map(|(_, items)| items)
                .ok_or_else(|| format!("{}: no block list under `policies:` to merge", file.display()))?;
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("\n  # from {}\n", file.display()));
            out.push_str(items);
        }
    }
    breakwater_policy::load(&out).map_err(|d| {
        format!(
            "the merged document is invalid: {}",
            d.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        )
    })?;
    Ok(out)
}

/// A unified diff of two texts (three lines of context), with headers naming them.
/// How long a diff may search for the smallest edit: two large documents that differ everywhere
/// would otherwise take the line diff quadratic time. Past the deadline the diff is still correct,
/// only coarser (larger hunks).
pub const DIFF_DEADLINE: std::time::Duration = std::time::Duration::from_millis(500);

pub fn diff(from_name: &str, from: &str, to_name: &str, to: &str) -> String {
    similar::TextDiff::configure()
        .timeout(DIFF_DEADLINE)
        .diff_lines(from, to)
        .unified_diff()
        .context_radius(3)
        .header(from_name, to_name)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "version: 1\npolicies:\n  - name: a\n";
    const B: &str = "version: 1\npolicies:\n  - name: b\n";

    fn temp() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("bw-store-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_new_store_starts_empty_and_records_saves() {
        let dir = temp();
        let store = Store::open(&dir.join("active.yaml"), &dir.join("state")).unwrap();
        assert_eq!(store.active().unwrap(), EMPTY_DOCUMENT);
        assert_eq!(store.current(), 1);
        let saved = store.save(A).unwrap();
        assert_eq!((saved.version, saved.changed), (2, true));
        assert_eq!(store.save(A).unwrap(), Saved { version: 2, changed: false, warnings: vec![] });
        store.save(B).unwrap();
        let list = store.list();
        assert_eq!(list.iter().map(|v| v.id).collect::<Vec<_>>(), [3, 2, 1]);
        assert_eq!(list[0].policies, ["b"]);
        // Rolling back writes the old text as a new version.
        let back = store.rollback(2).unwrap().unwrap();
        assert_eq!(back.version, 4);
        assert_eq!(store.active().unwrap(), A);
        assert!(store.rollback(99).unwrap().is_none());
        // A reopened store finds the same history and adds nothing.
        let again = Store::open(&dir.join("active.yaml"), &dir.join("state")).unwrap();
        assert_eq!(again.current(), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_invalid_document_writes_nothing() {
        let dir = temp();
        let store = Store::open(&dir.join("active.yaml"), &dir.join("state")).unwrap();
        store.save(A).unwrap();
        match store.save("version: 1\npolicies:\n  - name: A B\n") {
            Err(SaveError::Invalid(d)) => assert_eq!(d[0].path, "policies[0].name"),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.active().unwrap(), A);
        assert_eq!(store.current(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_edited_file_becomes_a_version_on_open() {
        let dir = temp();
        let policy = dir.join("active.yaml");
        Store::open(&policy, &dir.join("state")).unwrap().save(A).unwrap();
        std::fs::write(&policy, B).unwrap();
        let store = Store::open(&policy, &dir.join("state")).unwrap();
        assert_eq!((store.current(), store.get(3).unwrap().as_str()), (3, B));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn diff_shows_changed_lines() {
        let d = diff("v1", A, "v2", B);
        assert!(d.contains("--- v1\n+++ v2\n"), "{d}");
        assert!(d.contains("-  - name: a\n+  - name: b\n"), "{d}");
        assert_eq!(diff("v1", A, "v2", A), "");
    }
}
