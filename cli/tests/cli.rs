//! The `breakwater` command as users run it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use common::{breakwater, repo};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_accepts_the_examples() {
    let out = breakwater(&[
        "validate",
        "policies/api-per-key.yaml",
        "policies/flaky-backend.yaml",
        "policies/gateway-shadow.yaml",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stdout),
        "policies/api-per-key.yaml: ok\npolicies/flaky-backend.yaml: ok\npolicies/gateway-shadow.yaml: ok\n"
    );
}

#[test]
fn validate_shows_the_line_and_a_caret_and_exits_1() {
    let out = breakwater(&["validate", "policies/invalid/per-try-timeout.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        "error: policies[0].retry.per_try_timeout: must be shorter than timeout (3s)\n\
         \x20 --> policies/invalid/per-try-timeout.yaml:6:24\n\
         \x20 |\n\
         6 |       per_try_timeout: 5s\n\
         \x20 |                        ^\n\
         \n\
         policies/invalid/per-try-timeout.yaml: 1 error\n"
    );
}

#[test]
fn validate_reports_every_file_and_fails_if_any_fails() {
    let out =
        breakwater(&["validate", "policies/invalid/unknown-fields.yaml", "policies/gateway-shadow.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("did you mean `rate_limit`?"), "{stdout}");
    assert!(stdout.contains("policies/invalid/unknown-fields.yaml: 3 errors\n"), "{stdout}");
    assert!(stdout.ends_with("policies/gateway-shadow.yaml: ok\n"), "{stdout}");
}

#[test]
fn validate_json_for_machines() {
    let out = breakwater(&["validate", "--format", "json", "policies/invalid/retry-statuses.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &v[0];
    assert_eq!(report["file"], "policies/invalid/retry-statuses.yaml");
    assert_eq!(report["valid"], false);
    let first = &report["diagnostics"][0];
    assert_eq!(first["path"], "policies[0].retry.statuses");
    assert_eq!(first["severity"], "error");
    assert_eq!((first["line"].as_u64(), first["col"].as_u64()), (Some(6), Some(17)));
    let warnings = report["diagnostics"].as_array().unwrap().iter().filter(|d| d["severity"] == "warning");
    assert_eq!(warnings.count(), 1);
}

#[test]
fn validate_missing_file_is_an_error_not_a_crash() {
    let out = breakwater(&["validate", "policies/does-not-exist.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("cannot read policies/does-not-exist.yaml"), "{}", text(&out.stdout));
}

#[test]
fn compile_prints_normalized_json_with_defaults() {
    let out = breakwater(&["compile", "policies/gateway-shadow.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["policies"][0];
    assert_eq!(p["mode"], "shadow");
    assert_eq!(p["failure_mode"], "allow");
    assert_eq!(p["circuit_breaker"]["window"], "10s");
    assert_eq!(p["circuit_breaker"]["open_for"], "30s");
    assert_eq!(p["circuit_breaker"]["half_open_calls"], 5);
    assert_eq!(p["rate_limit"]["response"]["status"], 429);
    assert_eq!(p["concurrency_limit"]["max_keys"], 100000);
    // And it is a valid document in its own right.
    breakwater_policy::load(&text(&out.stdout)).unwrap();
}

#[test]
fn compile_refuses_invalid_documents() {
    let out = breakwater(&["compile", "policies/invalid/duplicate-names.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("duplicate policy name `api`"));
}

#[test]
fn schema_is_the_committed_file() {
    let out = breakwater(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), std::fs::read_to_string(repo().join("policies/schema.json")).unwrap());
}

#[test]
fn publish_writes_the_next_ecds_version_and_refuses_invalid_documents() {
    let dir = std::env::temp_dir().join(format!("bw-publish-{}", std::process::id()));
    let ecds = dir.join("ecds/breakwater.json");
    let ecds_arg = ecds.to_string_lossy().into_owned();
    // Any existing file stands in for the filter here; Envoy is not involved.
    let wasm = ["--wasm", "Cargo.toml"];
    let out =
        breakwater(&[&["publish", "policies/flaky-backend.yaml", "--ecds", &ecds_arg][..], &wasm].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("(2 policies) as version 1"), "{}", text(&out.stdout));
    let out =
        breakwater(
            &[
                &[
                    "publish",
                    "policies/api-per-key.yaml",
                    "policies/gateway-shadow.yaml",
                    "--ecds",
                    &ecds_arg,
                ][..],
                &wasm,
            ]
            .concat(),
        );
    assert!(text(&out.stdout).contains("(4 policies) as version 2"), "{}", text(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ecds).unwrap()).unwrap();
    assert_eq!(v["version_info"], "2");
    let config = &v["resources"][0]["typed_config"]["config"];
    assert_eq!(config["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
    assert!(config["vm_config"]["code"]["local"]["filename"].as_str().unwrap().starts_with('/'));
    let policy = config["configuration"]["value"].as_str().unwrap();
    let doc = breakwater_policy::load(policy).unwrap().document;
    assert_eq!(doc.policies.len(), 4);
    // Issue 20, defect 6: the deployment's key seed, made once beside the ECDS file (owner-only)
    // and carried by every version published there.
    let seed_file = ecds.parent().unwrap().join(".breakwater.json.key-seed");
    let seed = std::fs::read_to_string(&seed_file).unwrap();
    assert_eq!(doc.key_seed.map(|s| s.to_string()), Some(seed.trim().to_string()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&seed_file).unwrap().permissions().mode() & 0o777, 0o600);
    // An invalid document: refused, the file keeps version 2, no temporary file is left behind.
    let out = breakwater(
        &[&["publish", "policies/invalid/per-try-timeout.yaml", "--ecds", &ecds_arg][..], &wasm].concat(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("must be shorter than timeout"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ecds).unwrap()).unwrap();
    assert_eq!(v["version_info"], "2");
    let mut names: Vec<String> = std::fs::read_dir(ecds.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".breakwater.json.key-seed", ".breakwater.json.lock", "breakwater.json"]);
    assert_eq!(config["failure_policy"], "FAIL_OPEN");
    // Confirmed by an Envoy that cannot be reached: not applied, so the command fails; not knowing
    // what Envoy runs, it writes nothing back.
    let out = breakwater(
        &[
            &["publish", "policies/flaky-backend.yaml", "--ecds", &ecds_arg, "--fail-strategy", "FAIL_CLOSE"]
                [..],
            &["--envoy-admin", "127.0.0.1:1", "--timeout", "200ms"],
            &wasm,
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("Envoy could not be asked whether it applied version 3"), "{stderr}");
    assert!(
        stderr.contains("Envoy could not be asked which version it ran before, so nothing was written back"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ecds).unwrap()).unwrap();
    assert_eq!(v["resources"][0]["typed_config"]["config"]["failure_policy"], "FAIL_CLOSED");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A scenario file in a fresh folder, next to a policy file.
fn scenario_dir(name: &str, scenario: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("breakwater-cli-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("limit.yaml"),
        "version: 1\npolicies:\n  - name: api\n    rate_limit: { rate: 10, per: 1s, burst: 5 }\n",
    )
    .unwrap();
    std::fs::write(dir.join("t.scenario.yaml"), scenario).unwrap();
    dir
}

const LIMIT_SCENARIO: &str = "name: ten per second\npolicy: limit.yaml\nduration: 2s\nworkers: 1\ntraffic:\n  - rate: 50/s\nexpect:\n  - requests: { decision: allowed }\n    equals: ALLOWED\n";

#[test]
fn test_runs_scenarios_and_reports_each_expectation() {
    let dir = scenario_dir("pass", &LIMIT_SCENARIO.replace("ALLOWED", "24"));
    let file = dir.join("t.scenario.yaml");
    let out = breakwater(&["test", file.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    // 5 + floor(10 · 1.98) = 24 of 100 requests.
    assert!(
        stdout.contains("  PASS  requests{decision=allowed}: 24 (expected = 24)  [expect[0]]\n"),
        "{stdout}"
    );
    assert!(stdout.contains("100 requests over 2 s on 1 worker (seed 1)"), "{stdout}");

    std::fs::write(&file, LIMIT_SCENARIO.replace("ALLOWED", "30")).unwrap();
    let out = breakwater(&["test", file.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("  FAIL  requests{decision=allowed}: 24 (expected = 30)"), "{stdout}");
    assert!(stdout.contains("FAILED: 1 of 1 expectation not met"), "{stdout}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn test_json_has_the_timeline() {
    let dir = scenario_dir("json", &LIMIT_SCENARIO.replace("ALLOWED", "24"));
    let out = breakwater(&["test", "--json", dir.join("t.scenario.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &v[0]["report"];
    assert_eq!(report["passed"], true);
    let seconds = report["timeline"]["seconds"].as_array().unwrap();
    assert_eq!(seconds.len(), 2);
    // Second 0: the burst of 5 plus the refill; second 1: 10 more.
    assert_eq!(seconds[0]["by_decision"]["allowed"], 14);
    assert_eq!(seconds[1]["by_decision"]["allowed"], 10);
    assert_eq!(seconds[0]["by_status"]["429"], 36);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn test_refuses_broken_scenarios_with_their_lines() {
    let dir = scenario_dir(
        "broken",
        "name: x\npolicy: limit.yaml\nduration: 2s\ntraffic:\n  - rate: 5\n    hots: a\n",
    );
    let out = breakwater(&["test", dir.join("t.scenario.yaml").to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("error: traffic[0].hots: unknown field `hots`; did you mean `host`?"),
        "{stderr}"
    );
    assert!(stderr.contains("t.scenario.yaml:6:5"), "{stderr}");

    std::fs::write(
        dir.join("t.scenario.yaml"),
        "name: x\npolicy: missing.yaml\nduration: 2s\ntraffic: [{ rate: 1 }]\n",
    )
    .unwrap();
    let out = breakwater(&["test", dir.join("t.scenario.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read"), "{}", text(&out.stderr));

    let out =
        breakwater(&["test", "--wasm", "/nonexistent.wasm", dir.join("t.scenario.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("the compiled filter /nonexistent.wasm does not exist"));
    std::fs::remove_dir_all(dir).unwrap();
}
