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
