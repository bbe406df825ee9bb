//! What the CLI's integration tests share: the workspace root and the `breakwater` binary.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (the examples, policies and envoy/ configurations are read from there).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `breakwater` binary, run in the workspace root.
pub fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_breakwater"));
    c.current_dir(repo());
    c
}

/// Runs `breakwater ARGS` in the workspace root.
pub fn breakwater(args: &[&str]) -> Output {
    command().args(args).output().unwrap()
}

/// An admin server's configuration for the tests: its files under `dir`, the shipped scenarios,
/// the built filter, no UI (a missing folder), no Envoy; publishing off.
pub fn serve_config(dir: &Path, token: &str) -> breakwater_cli::serve::Config {
    breakwater_cli::serve::Config {
        policy: dir.join("active.yaml"),
        state_dir: dir.join("state"),
        token: token.into(),
        ui_dir: Some(dir.join("no-ui")),
        scenarios_dir: repo().join("policies"),
        filter_wasm: repo().join(breakwater_host_test::FILTER_WASM),
        ecds: None,
        filter_name: "breakwater".into(),
        vm_id: "breakwater".into(),
        failure_policy: Default::default(),
        envoy_admin: None,
        envoy_log: None,
        prometheus: None,
        alertmanager: None,
        publish_timeout: std::time::Duration::from_secs(2),
        simulation: breakwater_cli::serve::SimulationLimits::default(),
    }
}
