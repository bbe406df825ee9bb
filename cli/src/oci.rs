//! OCI images of the filter, in the layouts Istio pulls for a `WasmPlugin`.
//!
//! Istio's image fetcher accepts (see its pkg/wasm/imagefetcher.go):
//! - **compat** (default here): an OCI image whose last layer is
//!   `application/vnd.oci.image.layer.v1.tar+gzip` holding a file `plugin.wasm`;
//! - **artifact**: exactly two layers, a wasm config JSON layer
//!   (`application/vnd.module.wasm.config.v1+json`) and the raw module
//!   (`application/vnd.module.wasm.content.layer.v1+wasm`).
//!
//! Istio verifies a WasmPlugin's `sha256` against the **image manifest digest**, which is what
//! [`Image::manifest_digest`] gives. The output is reproducible: tar and gzip headers carry fixed
//! times, so the same filter always gives the same digest.
//!
//! The layout on disk is an OCI image layout (`oci-layout`, `index.json` — an image index naming the
//! manifest by tag — and `blobs/sha256/…`), which `skopeo copy oci:DIR:TAG docker://…` pushes.

use std::io::{Read, Write};
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const TAR_GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
pub const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Compat,
    Artifact,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `sha256:<hex>` of the manifest: what a WasmPlugin's `sha256` pins (as bare hex).
    pub manifest_digest: String,
    /// `sha256:<hex>` of the wasm module itself.
    pub wasm_digest: String,
    pub tag: String,
}

impl Image {
    /// The bare hex digest, as WasmPlugin's `sha256` field wants it.
    pub fn pin(&self) -> &str {
        self.manifest_digest.trim_start_matches("sha256:")
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256(bytes), "size": bytes.len() })
}

/// A one-file ustar archive with fixed metadata.
fn tar_one(name: &str, content: &[u8]) -> Vec<u8> {
    fn put(h: &mut [u8; 512], at: usize, field: &[u8]) {
        if let Some(slot) = h.get_mut(at..at + field.len()) {
            slot.copy_from_slice(field);
        }
    }
    let mut h = [0u8; 512];
    put(&mut h, 0, name.as_bytes());
    put(&mut h, 100, b"0000644\0");
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{:011o}\0", content.len()).as_bytes());
    put(&mut h, 136, b"00000000000\0");
    put(&mut h, 148, b"        ");
    put(&mut h, 156, b"0");
    put(&mut h, 257, b"ustar\x0000");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut e = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    e.write_all(bytes)?;
    e.finish()
}

/// Writes the filter as an OCI image layout in `dir` under `tag`. Existing blobs are kept, so one
/// layout can hold several tags.
pub fn write_layout(dir: &Path, wasm: &[u8], tag: &str, format: Format) -> std::io::Result<Image> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> std::io::Result<()> {
        let name = sha256(bytes).trim_start_matches("sha256:").to_string();
        std::fs::write(blobs.join(name), bytes)
    };
    let (config, config_type, layers) = match format {
        Format::Compat => {
            let tar = tar_one("plugin.wasm", wasm);
            let layer = gzip(&tar)?;
            let config = json!({
                "architecture": "wasm",
                "os": "wasip1",
                "rootfs": { "type": "layers", "diff_ids": [sha256(&tar)] },
                "config": {},
            });
            (serde_json::to_vec(&config)?, IMAGE_CONFIG, vec![(TAR_GZIP_LAYER, layer)])
        }
        Format::Artifact => {
            let module_config = serde_json::to_vec(
                &json!({ "type": "envoy_proxy_wasm_http_filter", "abiVersions": ["v0.2.1"] }),
            )?;
            let layers = vec![(WASM_CONFIG, module_config.clone()), (WASM_LAYER, wasm.to_vec())];
            (module_config, WASM_CONFIG, layers)
        }
    };
    put(&config)?;
    let mut layer_descriptors = Vec::new();
    for (media_type, bytes) in &layers {
        put(bytes)?;
        let mut d = descriptor(media_type, bytes);
        if *media_type == WASM_LAYER {
            d["annotations"] = json!({ "org.opencontainers.image.title": "plugin.wasm" });
        }
        layer_descriptors.push(d);
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(config_type, &config),
        "layers": layer_descriptors,
        "annotations": { "org.opencontainers.image.title": "breakwater", "org.opencontainers.image.version": env!("CARGO_PKG_VERSION") },
    }))?;
    put(&manifest)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    // The index: other tags stay, this tag points at the new manifest.
    let index_path = dir.join("index.json");
    let mut manifests: Vec<Value> = std::fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("manifests").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
    let mut entry = descriptor(MANIFEST, &manifest);
    entry["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
    manifests.push(entry);
    let index = json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": manifests });
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index)?)?;
    Ok(Image { manifest_digest: sha256(&manifest), wasm_digest: sha256(wasm), tag: tag.to_string() })
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

fn read_blob(dir: &Path, digest: &str) -> std::io::Result<Vec<u8>> {
    let hex =
        digest.strip_prefix("sha256:").ok_or_else(|| invalid(format!("unsupported digest {digest}")))?;
    let bytes = std::fs::read(dir.join("blobs/sha256").join(hex))?;
    if sha256(&bytes) != digest {
        return Err(invalid(format!("blob {digest} does not match its digest")));
    }
    Ok(bytes)
}

/// The manifest digest of `tag` in a layout.
pub fn manifest_digest(dir: &Path, tag: &str) -> std::io::Result<String> {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    index["manifests"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag))
        .and_then(|m| m["digest"].as_str())
        .map(String::from)
        .ok_or_else(|| invalid(format!("no tag {tag} in {}", dir.display())))
}

/// Reads the wasm module of `tag` back out of a layout, the way Istio does (either variant),
/// checking every digest on the way.
pub fn read_wasm(dir: &Path, tag: &str) -> std::io::Result<Vec<u8>> {
    let manifest: Value = serde_json::from_slice(&read_blob(dir, &manifest_digest(dir, tag)?)?)?;
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    if let Some(wasm) = layers.iter().find(|l| l["mediaType"] == WASM_LAYER) {
        return read_blob(dir, wasm["digest"].as_str().unwrap_or_default());
    }
    let last = layers.last().ok_or_else(|| invalid("the image has no layers".into()))?;
    if last["mediaType"] != TAR_GZIP_LAYER {
        return Err(invalid(format!("unexpected layer type {}", last["mediaType"])));
    }
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(read_blob(dir, last["digest"].as_str().unwrap_or_default())?.as_slice())
        .read_to_end(&mut tar)?;
    let mut at = 0;
    while let Some(header) = tar.get(at..at + 512) {
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let name =
            String::from_utf8_lossy(header.get(..100).unwrap_or_default()).trim_end_matches('\0').to_string();
        let size_field = String::from_utf8_lossy(header.get(124..136).unwrap_or_default()).into_owned();
        let size = usize::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .map_err(|e| invalid(format!("bad tar size: {e}")))?;
        let body = tar.get(at + 512..at + 512 + size).ok_or_else(|| invalid("truncated tar".into()))?;
        if Path::new(&name).file_name().is_some_and(|n| n == "plugin.wasm") {
            return Ok(body.to_vec());
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    Err(invalid("plugin.wasm not found in the layer".into()))
}

/// Pushes `tag` of a layout to a registry with skopeo (Debian's `skopeo`), keeping the manifest
/// bytes (and so the digest). `insecure` allows plain HTTP / unverified TLS (loopback registries).
pub fn push(dir: &Path, tag: &str, reference: &str, insecure: bool) -> std::io::Result<()> {
    skopeo(&[
        "copy",
        &format!("--dest-tls-verify={}", !insecure),
        &format!("oci:{}:{tag}", dir.display()),
        &format!("docker://{reference}"),
    ])
}

/// Pulls an image from a registry into a layout under `tag` (for checks and tests).
pub fn pull(reference: &str, dir: &Path, tag: &str, insecure: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    skopeo(&[
        "copy",
        &format!("--src-tls-verify={}", !insecure),
        &format!("docker://{reference}"),
        &format!("oci:{}:{tag}", dir.display()),
    ])
}

fn skopeo(args: &[&str]) -> std::io::Result<()> {
    let out = std::process::Command::new("skopeo").args(args).output().map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot run skopeo ({e}); install it (Debian: apt-get install skopeo)"),
        )
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "skopeo {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("bw-oci-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn both_variants_round_trip_with_checked_digests() {
        let wasm = b"\0asm\x01\0\0\0 not really a module but bytes".repeat(100);
        let dir = tmp("rt");
        let compat = write_layout(&dir, &wasm, "v1", Format::Compat).unwrap();
        let artifact = write_layout(&dir, &wasm, "v1-artifact", Format::Artifact).unwrap();
        assert_eq!(read_wasm(&dir, "v1").unwrap(), wasm);
        assert_eq!(read_wasm(&dir, "v1-artifact").unwrap(), wasm);
        assert_eq!(manifest_digest(&dir, "v1").unwrap(), compat.manifest_digest);
        assert_ne!(compat.manifest_digest, artifact.manifest_digest);
        assert_eq!(compat.wasm_digest, sha256(&wasm));
        assert_eq!(compat.pin().len(), 64);
        // The index holds both tags; the layout is valid JSON with the OCI media types.
        let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
        assert_eq!(index["mediaType"], INDEX);
        // A damaged blob is detected.
        let blob = dir.join("blobs/sha256").join(compat.pin());
        std::fs::write(&blob, b"{}").unwrap();
        assert!(read_wasm(&dir, "v1").unwrap_err().to_string().contains("does not match"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn output_is_reproducible() {
        let (a, b) = (tmp("a"), tmp("b"));
        let x = write_layout(&a, b"module", "t", Format::Compat).unwrap();
        let y = write_layout(&b, b"module", "t", Format::Compat).unwrap();
        assert_eq!(x, y);
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn tar_headers_are_valid_ustar() {
        let t = tar_one("plugin.wasm", b"abc");
        assert_eq!(t.len(), 512 + 512 + 1024);
        let stored = u32::from_str_radix(String::from_utf8_lossy(&t[148..154]).trim(), 8).unwrap();
        let mut h = t[..512].to_vec();
        h[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, h.iter().map(|b| u32::from(*b)).sum::<u32>());
    }
}
