//! `breakwater validate`: every problem of each file, with its line; exit 1 on errors.

use std::path::PathBuf;
use std::process::ExitCode;

use breakwater_policy::{Diagnostic, diag};
use clap::ValueEnum;
use serde::Serialize;

use super::{check_file, emit, plural};

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// One file's result, as `--format json` prints it (a list of these).
#[derive(Serialize)]
struct FileReport {
    file: String,
    valid: bool,
    diagnostics: Vec<Diagnostic>,
}

pub fn run(args: Args) -> ExitCode {
    let mut failed = false;
    let mut reports = Vec::new();
    let mut out = String::new();
    for path in &args.files {
        let name = path.display().to_string();
        let checked = match check_file(path) {
            Ok(c) => c,
            Err(e) => {
                failed = true;
                let d = Diagnostic::error("", e);
                out.push_str(&d.render(&name, None));
                reports.push(FileReport { file: name, valid: false, diagnostics: vec![d] });
                continue;
            }
        };
        let (valid, diagnostics) = match &checked.result {
            Ok(loaded) => (true, loaded.warnings.clone()),
            Err(diags) => (false, diags.clone()),
        };
        failed |= !valid;
        let rendered = diag::render_all(&diagnostics, &name, checked.source.as_deref());
        if !rendered.is_empty() {
            out.push_str(&rendered);
            out.push('\n');
        }
        let errors = diagnostics.iter().filter(|d| d.is_error()).count();
        let warnings = diagnostics.len() - errors;
        let summary = match (valid, warnings) {
            (true, 0) => format!("{name}: ok\n"),
            (true, w) => format!("{name}: ok ({w} warning{})\n", plural(w)),
            (false, w) => format!(
                "{name}: {errors} error{}{}\n",
                plural(errors),
                if w > 0 { format!(", {w} warning{}", plural(w)) } else { String::new() }
            ),
        };
        out.push_str(&summary);
        reports.push(FileReport { file: name, valid, diagnostics });
    }
    let text = match args.format {
        Format::Text => out,
        Format::Json => format!("{}\n", serde_json::to_string(&reports).unwrap_or_else(|_| "[]".into())),
    };
    emit(&text);
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
