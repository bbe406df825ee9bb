//! Envoy Extension Config Discovery (ECDS) over the filesystem: the resource file that carries the
//! compiled policy to Envoy, written atomically so Envoy never reads half a file.
//!
//! Envoy watches the file's directory and notices a rename, not an in-place write; so a new
//! version goes to a temporary file in the same directory and is renamed over the old one.

use std::path::{Path, PathBuf};

use breakwater_policy::Document;
use breakwater_policy::engine::keys::KeySeed;
use serde_json::{Value, json};

/// What goes into the resource besides the policy.
#[derive(Debug, Clone)]
pub struct FilterSettings {
    /// The filter's name in the HCM (`http_filters[].name` and the resource name).
    pub name: String,
    pub vm_id: String,
    /// The compiled filter (`breakwater_filter.wasm`); written as an absolute path.
    pub wasm: PathBuf,
}

/// The DiscoveryResponse Envoy reads from `path_config_source`.
pub fn discovery_response(settings: &FilterSettings, compiled_policy: &str, version: u64) -> Value {
    json!({
        "version_info": version.to_string(),
        "type_url": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": settings.name,
            "typed_config": {
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
                },
            },
        }],
    })
}

/// The version of an existing ECDS file (0 when missing or unreadable).
pub fn current_version(path: &Path) -> u64 {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("version_info").and_then(Value::as_str).and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// Writes `content` to `path` atomically and durably: a temporary file in the same directory
/// (Envoy's directory watch sees only the rename), flushed to disk, given the permissions of the
/// file it replaces, renamed over `path`, and the directory flushed so the rename survives a
/// crash. On any failure (a full disk, say) the temporary file is removed and `path` is untouched.
pub fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
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
        if let Ok(meta) = std::fs::metadata(path) {
            file.set_permissions(meta.permissions())?;
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
    let dir = ecds.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = ecds.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let path = dir.join(format!(".{name}.key-seed"));
    let read = |path: &Path| -> std::io::Result<KeySeed> {
        let text = std::fs::read_to_string(path)?;
        KeySeed::parse(text.trim()).map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
    };
    match read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    std::fs::create_dir_all(dir)?;
    let seed = KeySeed::parse(&random_hex(16)?).map_err(std::io::Error::other)?;
    // Owner-only from the start, then renamed into place (two publishers racing: the first
    // rename wins for good, as both then read the file back).
    let tmp = dir.join(format!(".{name}.key-seed.{}.tmp", std::process::id()));
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
