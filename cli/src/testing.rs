//! `breakwater test`: scenario files run through the compiled filter in host-test, reported one
//! line per expectation with the numbers found.

use std::path::{Path, PathBuf};
use std::time::Instant;

use breakwater_host_test::Host;
use breakwater_host_test::sim::{self, LoadedScenario};
use breakwater_policy::model::Document;
use breakwater_scenario::{self as scenario, Report, Scenario};
use serde::Serialize;

/// Where `breakwater test` looks for the compiled filter when `--wasm` is not given: the
/// workspace's build output, from the current folder or from the folder of the binary
/// (`target/debug/breakwater` → `target/wasm32-wasip1/release/`).
pub fn find_filter(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = given {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(format!("the compiled filter {} does not exist", path.display()))
        };
    }
    let relative = Path::new(breakwater_host_test::FILTER_WASM);
    let mut candidates = vec![relative.to_path_buf()];
    if let Ok(exe) = std::env::current_exe()
        && let Some(target) = exe.parent().and_then(Path::parent)
    {
        let under_target = relative.strip_prefix("target").unwrap_or(relative);
        candidates.push(target.join(under_target));
    }
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        format!(
            "the compiled filter is not at {}; build it with `./dev build-wasm` or pass --wasm FILE",
            relative.display()
        )
    })
}

/// One scenario file's result, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct FileResult {
    pub file: String,
    pub policy: String,
    /// Wall time of the simulation, and simulated requests per wall second.
    pub wall_ms: f64,
    pub requests_per_second: f64,
    pub report: Report,
}

/// Simulates a scenario against a document through the compiled filter and evaluates the run:
/// what `breakwater test` does for each file and the admin's `POST /api/simulate` for the editor's
/// document. Returns the report and the wall time in milliseconds.
pub fn simulate(host: &Host, scenario: &Scenario, document: &Document) -> Result<(Report, f64), String> {
    simulate_within(host, scenario, document, &sim::Budget::default())
}

/// [`simulate`] within a budget (the admin API's).
pub fn simulate_within(
    host: &Host,
    scenario: &Scenario,
    document: &Document,
    budget: &sim::Budget,
) -> Result<(Report, f64), String> {
    let started = Instant::now();
    let run = sim::run_within(host, scenario, document, budget)?;
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok((scenario::evaluate(scenario, &run), wall_ms))
}

/// Runs one loaded scenario.
pub fn run(host: &Host, file: &str, loaded: &LoadedScenario) -> Result<FileResult, String> {
    let (report, wall_ms) = simulate(host, &loaded.scenario, &loaded.document)?;
    Ok(FileResult {
        file: file.to_string(),
        policy: loaded.policy_source.clone(),
        wall_ms,
        requests_per_second: if wall_ms > 0.0 { report.requests as f64 / (wall_ms / 1000.0) } else { 0.0 },
        report,
    })
}

/// The human-readable report of one scenario.
pub fn render(r: &FileResult) -> String {
    let rep = &r.report;
    let mut out = format!("{}: {}\n", r.file, rep.name);
    out.push_str(&format!(
        "  {} requests over {} s on {} worker{} (seed {}), policy {}; simulated in {:.0} ms ({} requests/s)\n",
        scenario::format_number(rep.requests as f64),
        rep.duration_s,
        rep.workers,
        if rep.workers == 1 { "" } else { "s" },
        rep.seed,
        r.policy,
        r.wall_ms,
        scenario::format_number(r.requests_per_second.round()),
    ));
    if rep.expectations.is_empty() {
        out.push_str("  (no expectations)\n");
    }
    for e in &rep.expectations {
        let verdict = if e.passed { "PASS" } else { "FAIL" };
        let name = e.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
        out.push_str(&format!(
            "  {verdict}  {}{name}: {} (expected {})  [{}]\n",
            e.measured, e.actual, e.expected, e.path
        ));
    }
    let failed = rep.expectations.iter().filter(|e| !e.passed).count();
    out.push_str(&match failed {
        0 => format!("  ok: {} expectation{} met\n", rep.expectations.len(), plural(rep.expectations.len())),
        n => format!(
            "  FAILED: {n} of {} expectation{} not met\n",
            rep.expectations.len(),
            plural(rep.expectations.len())
        ),
    });
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
