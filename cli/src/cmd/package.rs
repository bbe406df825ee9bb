//! `breakwater package`: the filter as an OCI image (what Istio's WasmPlugin pulls).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use breakwater_cli::oci;
use clap::ValueEnum;

use super::{FILTER_WASM, emit, fail};

#[derive(clap::Args)]
pub struct Args {
    /// Write an OCI image layout in this directory.
    #[arg(long)]
    oci: PathBuf,
    /// Tag of the image in the layout.
    #[arg(long, default_value = "latest")]
    tag: String,
    /// `compat`: a tar+gzip layer holding plugin.wasm; `artifact`: wasm media types.
    #[arg(long, value_enum, default_value_t = ImageFormat::Compat)]
    format: ImageFormat,
    /// The compiled filter.
    #[arg(long, default_value = FILTER_WASM)]
    wasm: PathBuf,
    /// Push to REGISTRY/REPO:TAG with skopeo after writing the layout.
    #[arg(long)]
    push: Option<String>,
    /// Allow a plain-HTTP or self-signed registry (loopback tests).
    #[arg(long)]
    insecure: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ImageFormat {
    Compat,
    Artifact,
}

pub fn run(args: Args) -> ExitCode {
    let format = match args.format {
        ImageFormat::Compat => oci::Format::Compat,
        ImageFormat::Artifact => oci::Format::Artifact,
    };
    package(&args.oci, &args.tag, format, &args.wasm, args.push.as_deref(), args.insecure)
}

fn package(
    dir: &Path,
    tag: &str,
    format: oci::Format,
    wasm: &Path,
    push: Option<&str>,
    insecure: bool,
) -> ExitCode {
    let bytes = match std::fs::read(wasm) {
        Ok(b) if b.starts_with(b"\0asm") => b,
        Ok(_) => {
            return fail(format!("{} is not a wasm module", wasm.display()));
        }
        Err(e) => {
            return fail(format!(
                "the filter {} is not there ({e}); build it with `./dev build-wasm`",
                wasm.display()
            ));
        }
    };
    let image = match oci::write_layout(dir, &bytes, tag, format) {
        Ok(i) => i,
        Err(e) => {
            return fail(format!("cannot write {}: {e}", dir.display()));
        }
    };
    let mut out = format!(
        "wrote {} (tag {tag}): manifest {}, plugin.wasm {}\npin it in a WasmPlugin with  sha256: {}\n",
        dir.display(),
        image.manifest_digest,
        image.wasm_digest,
        image.pin()
    );
    if let Some(reference) = push {
        if let Err(e) = oci::push(dir, tag, reference, insecure) {
            return fail(format!("push to {reference} failed: {e}"));
        }
        out.push_str(&format!("pushed to {reference}  (url: oci://{reference})\n"));
    }
    emit(&out);
    ExitCode::SUCCESS
}
