//! Envoy Extension Config Discovery (ECDS) over the filesystem: the resource file that carries the
//! compiled policy to Envoy, written atomically so Envoy never reads half a file.
//!
//! Envoy watches the file's directory and notices a rename, not an in-place write; so a new
//! version goes to a temporary file in the same directory and is renamed over the old one.

use std::path::{Path, PathBuf};

use breakwater_policy::Document;
use breakwater_policy::engine::keys::KeySeed;
use serde_json::{Value, json};

/// What Envoy does with requests when the filter's VM fails at run time (Envoy's
/// `PluginConfig.failure_policy`; Istio's `failStrategy`). It does not cover a configuration
/// Envoy rejects: then the last applied one keeps serving, or `default_config` before any
/// (docs/envoy.md, "When a publish is rejected").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Later requests skip the filter: an outage of the resilience layer is not an outage of the
    /// service. breakwater's default.
    #[default]
    FailOpen,
    /// Later requests on that worker get 503.
    FailClosed,
    /// A new VM is started (shared state kept).
    FailReload,
}

impl FailurePolicy {
    /// Envoy's spelling (`FAIL_OPEN`, `FAIL_CLOSED`, `FAIL_RELOAD`).
    pub fn envoy_word(self) -> &'static str {
        match self {
            FailurePolicy::FailOpen => "FAIL_OPEN",
            FailurePolicy::FailClosed => "FAIL_CLOSED",
            FailurePolicy::FailReload => "FAIL_RELOAD",
        }
    }

    /// Istio's spelling (`FAIL_OPEN`, `FAIL_CLOSE`, `FAIL_RELOAD`).
    pub fn istio_word(self) -> &'static str {
        match self {
            FailurePolicy::FailClosed => "FAIL_CLOSE",
            other => other.envoy_word(),
        }
    }
}

/// What goes into the resource besides the policy.
#[derive(Debug, Clone)]
pub struct FilterSettings {
    /// The filter's name in the HCM (`http_filters[].name` and the resource name).
    pub name: String,
    pub vm_id: String,
    /// The compiled filter (`breakwater_filter.wasm`); written as an absolute path.
    pub wasm: PathBuf,
    pub failure_policy: FailurePolicy,
}

impl FilterSettings {
    /// The usual settings: filter and VM named `breakwater`, failing open.
    pub fn breakwater(wasm: PathBuf) -> FilterSettings {
        FilterSettings {
            name: "breakwater".into(),
            vm_id: "breakwater".into(),
            wasm,
            failure_policy: FailurePolicy::default(),
        }
    }
}

/// The filter's typed config (`envoy.extensions.filters.http.wasm.v3.Wasm`) carrying a compiled
/// policy: what an ECDS resource, an inline bootstrap and a `default_config` all hold.
pub fn wasm_filter_config(settings: &FilterSettings, compiled_policy: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": settings.name,
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": compiled_policy,
            },
            "vm_config": {
                "vm_id": settings.vm_id,
                "runtime": "envoy.wasm.runtime.v8",
                "code": { "local": { "filename": settings.wasm.to_string_lossy() } },
            },
            "failure_policy": settings.failure_policy.envoy_word(),
        },
    })
}

/// The DiscoveryResponse Envoy reads from `path_config_source`.
pub fn discovery_response(settings: &FilterSettings, compiled_policy: &str, version: u64) -> Value {
    json!({
        "version_info": version.to_string(),
        "type_url": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": settings.name,
            "typed_config": wasm_filter_config(settings, compiled_policy),
        }],
    })
}

/// The version of an existing ECDS file (0 when missing or unreadable).
pub fn current_version(path: &Path) -> u64 {
    std::fs::read(path).ok().and_then(|b| version_of(&b)).unwrap_or(0)
}

/// The `version_info` of a DiscoveryResponse's bytes.
fn version_of(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.get("version_info").and_then(Value::as_str).and_then(|s| s.parse().ok()))
}

/// A file kept beside the ECDS file: `.<file name>.<suffix>`.
fn beside(ecds: &Path, suffix: &str) -> PathBuf {
    let dir = ecds.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = ecds.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.join(format!(".{name}.{suffix}"))
}

/// Where the last resource Envoy applied is kept (`.<file name>.applied`): Envoy keeps its last
/// good configuration only in memory, so after a rejected publish this is what goes back into
/// the file, or a restarted Envoy would load the rejected one.
pub fn applied_path(ecds: &Path) -> PathBuf {
    beside(ecds, "applied")
}

/// Takes the ECDS file's publishing lock (`.<file name>.lock`, an exclusive `flock`), waiting for
/// another publisher (another admin server, a `breakwater publish`) to finish: versions are then
/// numbered one at a time, and a write-back cannot land on another's version. Held until the
/// returned file is dropped. Blocking.
pub fn lock(ecds: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = beside(ecds, "lock");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path)?;
    file.lock()?;
    Ok(file)
}

/// Records that Envoy runs the file's current content (when its version is `applied`, the
/// version Envoy reports). Returns whether it did. Call under [`lock`].
pub fn remember_applied(ecds: &Path, applied: &str) -> std::io::Result<bool> {
    let content = match std::fs::read(ecds) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if version_of(&content).map(|v| v.to_string()).as_deref() != Some(applied) {
        return Ok(false);
    }
    let kept = applied_path(ecds);
    if std::fs::read(&kept).ok().as_deref() != Some(content.as_slice()) {
        // As readable as the ECDS file itself (it holds the same key seed), no more.
        let permissions = std::fs::metadata(ecds).map(|m| m.permissions()).ok();
        write_atomically_with(&kept, &content, permissions)?;
    }
    Ok(true)
}

/// Writes the last applied resource back as the next version of the file, after Envoy rejected
/// (or did not confirm) the one written over it, when that resource is the one Envoy runs
/// (`running`, the version it reported before the publish). Returns the version written, or
/// None when no resource of that version is on record (the file is then left as it is: writing
/// back anything else would change what a running Envoy enforces). Call under [`lock`].
pub fn restore_applied(ecds: &Path, running: &str) -> std::io::Result<Option<u64>> {
    let kept = match std::fs::read(applied_path(ecds)) {
        Ok(k) => k,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if version_of(&kept).map(|v| v.to_string()).as_deref() != Some(running) {
        return Ok(None);
    }
    let mut response: Value = serde_json::from_slice(&kept).map_err(std::io::Error::other)?;
    let version = current_version(ecds) + 1;
    response["version_info"] = json!(version.to_string());
    let mut text = serde_json::to_string_pretty(&response).map_err(std::io::Error::other)?;
    text.push('\n');
    write_atomically(ecds, text.as_bytes())?;
    Ok(Some(version))
}

/// Writes `content` to `path` atomically and durably: a temporary file in the same directory
/// (Envoy's directory watch sees only the rename), flushed to disk, given the permissions of the
/// file it replaces, renamed over `path`, and the directory flushed so the rename survives a
/// crash. On any failure (a full disk, say) the temporary file is removed and `path` is untouched.
pub fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    write_atomically_with(path, content, None)
}

/// As [`write_atomically`]; a file that does not exist yet gets `permissions` (else the umask's).
pub fn write_atomically_with(
    path: &Path,
    content: &[u8],
    permissions: Option<std::fs::Permissions>,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    // Unique per process and per call: two threads writing the same file must not share a temp.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        if let Some(p) = std::fs::metadata(path).ok().map(|m| m.permissions()).or(permissions) {
            file.set_permissions(p)?;
        }
        file.write_all(content)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename has happened: the new content is what readers see. Flushing the folder makes it
    // survive a crash; if that fails the write still took place, so it is not reported as failed
    // (a caller would otherwise undo what others may already have read).
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

/// The key seed of the deployment that `ecds` belongs to: kept beside it
/// (`.<file name>.key-seed`, owner-only), created from 16 random bytes on first use. A document
/// published without a `key_seed` of its own gets this one, so every Envoy fed from this file
/// places request keys alike, and no client can compute where (docs/policy.md, "Key seed").
pub fn deployment_seed(ecds: &Path) -> std::io::Result<KeySeed> {
    let path = beside(ecds, "key-seed");
    let read = |path: &Path| -> std::io::Result<KeySeed> {
        let text = std::fs::read_to_string(path)?;
        KeySeed::parse(text.trim()).map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
    };
    match read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let seed = KeySeed::parse(&random_hex(16)?).map_err(std::io::Error::other)?;
    // Owner-only from the start, then renamed into place (two publishers racing: the first
    // rename wins for good, as both then read the file back).
    let tmp = beside(ecds, &format!("key-seed.{}.tmp", std::process::id()));
    let written = (|| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(format!("{seed}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, &path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok(seed),
        // Another publisher made it first: theirs stands.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
        Err(e) => Err(e),
    }
}

/// `bytes` random bytes from the kernel, as lower-case hex: the tools' secrets (the admin's token,
/// a deployment's key seed).
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Publishes a document: compiled (compact), with the deployment's key seed unless it has its
/// own. Returns the version written.
pub fn publish_document(path: &Path, settings: &FilterSettings, doc: &Document) -> std::io::Result<u64> {
    let mut doc = doc.clone();
    if doc.key_seed.is_none() {
        doc.key_seed = Some(deployment_seed(path)?);
    }
    publish(path, settings, &breakwater_policy::compile_compact(&doc))
}

/// Publishes a compiled policy: the next version of the ECDS file. Returns the version written.
pub fn publish(path: &Path, settings: &FilterSettings, compiled_policy: &str) -> std::io::Result<u64> {
    let version = current_version(path) + 1;
    let mut text = serde_json::to_string_pretty(&discovery_response(settings, compiled_policy, version))
        .map_err(std::io::Error::other)?;
    text.push('\n');
    write_atomically(path, text.as_bytes())?;
    Ok(version)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Only the version Envoy reports is kept as applied; a rejected one is replaced by it,
    /// written back as the next version.
    #[test]
    fn the_applied_version_is_kept_and_written_back() {
        let dir = std::env::temp_dir().join(format!("bw-ecds-applied-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ecds = dir.join("breakwater.json");
        let settings = FilterSettings::breakwater(PathBuf::from("/filter.wasm"));
        assert_eq!(restore_applied(&ecds, "1").unwrap(), None, "nothing applied yet");
        publish(&ecds, &settings, "good").unwrap();
        assert!(!remember_applied(&ecds, "7").unwrap(), "Envoy runs another version");
        assert!(remember_applied(&ecds, "1").unwrap());
        publish(&ecds, &settings, "rejected").unwrap();
        assert!(!remember_applied(&ecds, "1").unwrap(), "the file moved on");
        assert_eq!(restore_applied(&ecds, "7").unwrap(), None, "Envoy runs a version not on record");
        assert_eq!(restore_applied(&ecds, "1").unwrap(), Some(3));
        assert_eq!(current_version(&ecds), 3);
        let restored: Value = serde_json::from_slice(&std::fs::read(&ecds).unwrap()).unwrap();
        assert_eq!(restored, discovery_response(&settings, "good", 3));
        // The kept copy is no more readable than the file it copies.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ecds, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(applied_path(&ecds)).unwrap();
        assert!(remember_applied(&ecds, "3").unwrap());
        assert_eq!(std::fs::metadata(applied_path(&ecds)).unwrap().permissions().mode() & 0o777, 0o600);
        // Publishers take turns: while one holds the lock, another cannot take it.
        let held = lock(&ecds).unwrap();
        let other = std::fs::OpenOptions::new().write(true).open(beside(&ecds, "lock")).unwrap();
        assert!(matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
        drop(held);
        assert!(other.try_lock().is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
