//! The commands of the `breakwater` binary, one module each; what they share is here: reading
//! policy files with their diagnostics printed, and writing to stdout.

pub mod compile;
pub mod package;
pub mod publish;
pub mod render;
pub mod serve;
pub mod test;
pub mod validate;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use breakwater_policy::{Diagnostic, Document, diag};

/// A file read for checking: its text (when UTF-8, for carets) and the load result.
pub struct Checked {
    source: Option<String>,
    result: Result<breakwater_policy::Loaded, Vec<Diagnostic>>,
}

pub fn check_file(path: &Path) -> Result<Checked, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let result = breakwater_policy::load_bytes(&bytes);
    Ok(Checked { source: String::from_utf8(bytes).ok(), result })
}

/// Loads a file for compile/publish, printing its diagnostics; None when it is invalid.
pub fn load_valid(path: &Path) -> Option<Document> {
    let name = path.display().to_string();
    let checked = match check_file(path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{}", Diagnostic::error("", e).render(&name, None));
            return None;
        }
    };
    match checked.result {
        Ok(loaded) => {
            if !loaded.warnings.is_empty() {
                eprintln!("{}", diag::render_all(&loaded.warnings, &name, checked.source.as_deref()));
            }
            Some(loaded.document)
        }
        Err(diags) => {
            eprintln!("{}", diag::render_all(&diags, &name, checked.source.as_deref()));
            None
        }
    }
}

/// Loads every file (reporting each one's problems), then merges them when there are several.
pub fn load_all(files: &[PathBuf]) -> Option<Document> {
    let docs: Vec<_> = files.iter().map(|f| load_valid(f).map(|d| (f.display().to_string(), d))).collect();
    let docs: Vec<_> = docs.into_iter().collect::<Option<_>>()?;
    if docs.len() == 1 {
        return docs.into_iter().next().map(|(_, d)| d);
    }
    match breakwater_policy::merge(docs) {
        Ok(loaded) => {
            if !loaded.warnings.is_empty() {
                eprintln!("{}", diag::render_all(&loaded.warnings, "merged policies", None));
            }
            Some(loaded.document)
        }
        Err(diags) => {
            eprintln!("{}", diag::render_all(&diags, "merged policies", None));
            None
        }
    }
}

/// Prints `error: MESSAGE` and fails.
pub fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

pub fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Writes to stdout, tolerating a closed pipe (`breakwater schema | head`).
pub fn emit(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

/// The filter's path when none is given: the workspace's release build.
pub const FILTER_WASM: &str = breakwater_host_test::FILTER_WASM;

/// What Envoy does with requests when the filter's VM fails; accepted as Istio spells it too.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
#[allow(clippy::enum_variant_names)]
pub enum FailStrategy {
    /// Later requests skip the filter.
    #[value(alias = "FAIL_OPEN")]
    FailOpen,
    /// Later requests on that worker get 503.
    #[value(alias = "FAIL_CLOSE", alias = "fail-closed", alias = "FAIL_CLOSED")]
    FailClose,
    /// A new VM is started.
    #[value(alias = "FAIL_RELOAD")]
    FailReload,
}

impl From<FailStrategy> for breakwater_cli::ecds::FailurePolicy {
    fn from(s: FailStrategy) -> Self {
        match s {
            FailStrategy::FailOpen => Self::FailOpen,
            FailStrategy::FailClose => Self::FailClosed,
            FailStrategy::FailReload => Self::FailReload,
        }
    }
}

/// A duration like `10s` or `500ms` (a clap value parser).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = n.parse().map_err(|_| format!("`{s}` is not a duration like 10s or 500ms"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" => Ok(std::time::Duration::from_secs(n)),
        _ => Err(format!("`{s}` is not a duration like 10s or 500ms")),
    }
}
