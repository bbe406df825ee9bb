//! `breakwater compile`: the JSON the filter receives as plugin configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{emit, load_all};

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Indent the JSON.
    #[arg(long)]
    pretty: bool,
    /// Leave out every field whose value is its default (what `publish` sends; same document).
    #[arg(long)]
    compact: bool,
}

pub fn run(args: Args) -> ExitCode {
    let Some(doc) = load_all(&args.files) else { return ExitCode::FAILURE };
    let json = if args.compact {
        breakwater_policy::compile_compact(&doc)
    } else {
        breakwater_policy::compile(&doc)
    };
    let json = match (args.pretty, serde_json::from_str::<serde_json::Value>(&json)) {
        (true, Ok(v)) => serde_json::to_string_pretty(&v).unwrap_or(json),
        _ => json,
    };
    emit(&format!("{json}\n"));
    ExitCode::SUCCESS
}
