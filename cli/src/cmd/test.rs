//! `breakwater test`: scenario files run through the compiled filter in host-test.

use std::path::PathBuf;
use std::process::ExitCode;

use breakwater_cli::testing;

use super::{emit, fail};

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    /// Print one JSON object per scenario, with its per-second timeline.
    #[arg(long)]
    json: bool,
    /// The compiled filter (default: the workspace's release build).
    #[arg(long)]
    wasm: Option<PathBuf>,
}

pub fn run(args: Args) -> ExitCode {
    let files = &args.scenarios;
    let host = match testing::find_filter(args.wasm.as_deref())
        .and_then(|p| breakwater_host_test::Host::from_file(&p).map_err(|e| format!("{e:#}")))
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (mut failed, mut broken) = (0usize, 0usize);
    let mut results = Vec::new();
    for path in files {
        let file = path.display().to_string();
        let result = breakwater_host_test::sim::load_file(path)
            .map_err(|e| e.to_string())
            .and_then(|loaded| testing::run(&host, &file, &loaded));
        match result {
            Ok(r) => {
                failed += usize::from(!r.report.passed);
                if args.json {
                    results.push(r);
                } else {
                    emit(&testing::render(&r));
                }
            }
            Err(e) => {
                broken += 1;
                eprintln!("{file}: cannot run\n{e}");
            }
        }
    }
    if args.json {
        match serde_json::to_string(&results) {
            Ok(text) => emit(&format!("{text}\n")),
            Err(e) => return fail(format!("cannot encode the results: {e}")),
        }
    } else if files.len() > 1 {
        let passed = files.len() - failed - broken;
        emit(&format!("{passed} of {} scenarios passed\n", files.len()));
    }
    match (broken, failed) {
        (0, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::FAILURE,
        _ => ExitCode::from(2),
    }
}
