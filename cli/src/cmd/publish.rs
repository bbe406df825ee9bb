//! `breakwater publish`: the next version of an ECDS resource file, written atomically.

use std::path::PathBuf;
use std::process::ExitCode;

use breakwater_cli::ecds;

use super::{FILTER_WASM, emit, fail, load_all};

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The ECDS file Envoy watches (its `path_config_source.path`).
    #[arg(long)]
    ecds: PathBuf,
    /// The compiled filter.
    #[arg(long, default_value = FILTER_WASM)]
    wasm: PathBuf,
    /// The filter's name in Envoy's HTTP filter chain.
    #[arg(long, default_value = "breakwater")]
    name: String,
    /// Envoy VM id; shared state is scoped by it.
    #[arg(long, default_value = "breakwater")]
    vm_id: String,
}

pub fn run(args: Args) -> ExitCode {
    let Args { files, ecds: ecds_path, wasm, name, vm_id } = args;
    let Some(doc) = load_all(&files) else { return ExitCode::FAILURE };
    let wasm = match std::fs::canonicalize(&wasm) {
        Ok(p) => p,
        Err(e) => {
            return fail(format!(
                "the filter {} is not there ({e}); build it with `./dev build-wasm`",
                wasm.display()
            ));
        }
    };
    let settings = ecds::FilterSettings { name, vm_id, wasm };
    match ecds::publish_document(&ecds_path, &settings, &doc) {
        Ok(version) => {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            emit(&format!(
                "published {} ({} policies) as version {version} to {}\n",
                names.join(" + "),
                doc.policies.len(),
                ecds_path.display()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("cannot write {}: {e}", ecds_path.display())),
    }
}
