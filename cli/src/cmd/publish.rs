//! `breakwater publish`: the next version of an ECDS resource file, written atomically; with
//! `--envoy-admin`, confirmed by Envoy, and replaced by the last applied version if Envoy rejects
//! it (docs/envoy.md, "When a publish is rejected").

use std::path::PathBuf;
use std::process::ExitCode;

use breakwater_cli::ecds;
use breakwater_cli::publish::Target;
use breakwater_cli::serve::envoy::Admin;

use super::{FILTER_WASM, FailStrategy, emit, fail, load_all, parse_duration};

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
    /// What Envoy does with requests when the filter's VM fails.
    #[arg(long, value_enum, default_value_t = FailStrategy::FailOpen)]
    fail_strategy: FailStrategy,
    /// Envoy's admin endpoint, HOST:PORT: wait for Envoy to apply the new version; if it rejects
    /// it (or does not apply it within --timeout), write the last applied version back and fail.
    #[arg(long)]
    envoy_admin: Option<String>,
    /// Envoy's log file: a rejection quotes Envoy's reason from it.
    #[arg(long, requires = "envoy_admin")]
    envoy_log: Option<PathBuf>,
    /// How long to wait for Envoy (with --envoy-admin).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: std::time::Duration,
}

pub fn run(args: Args) -> ExitCode {
    let Args { files, ecds: ecds_path, wasm, name, vm_id, fail_strategy, envoy_admin, envoy_log, timeout } =
        args;
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
    let settings = ecds::FilterSettings { name, vm_id, wasm, failure_policy: fail_strategy.into() };
    let target = Target {
        ecds: ecds_path,
        settings,
        admin: envoy_admin.map(|address| Admin { address }),
        log: envoy_log,
        timeout,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let outcome = runtime.block_on(async {
        let _file_lock = target.lock().await?;
        let before = target.before().await?;
        let version = target.write(&doc)?;
        Ok::<_, String>(target.confirm(&before, version).await)
    });
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let what = format!("{} ({} policies)", names.join(" + "), doc.policies.len());
    match outcome.applied {
        Some(false) => fail(format!("{what}: {}", outcome.message)),
        applied => {
            let confirmed = if applied == Some(true) { "; Envoy applied it" } else { "" };
            emit(&format!(
                "published {what} as version {} to {}{confirmed}\n",
                outcome.ecds_version,
                target.ecds.display()
            ));
            ExitCode::SUCCESS
        }
    }
}
