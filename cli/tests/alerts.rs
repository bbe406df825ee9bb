//! `breakwater render alerts`: the rules pass `promtool check rules`, and `promtool test rules`
//! fires (and does not fire) every kind of rule on input series, as Prometheus would evaluate them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use breakwater_cli::alerts::{self, Thresholds};
use breakwater_policy::model::Duration;
use serde_json::{Value, json};

const DOCUMENT: &str = "version: 1
policies:
  - name: reco
    match: { path_prefix: /reco }
    circuit_breaker: { window: 10, minimum_calls: 5, failure_rate: 50 }
    retry: { max_retries: 2 }
    concurrency_limit: { max_in_flight: 10 }
  - name: api
    match: { path_prefix: /api }
    rate_limit: { rate: 10, per: 1s }
    alerts: { rejected_share: 40 }
  - name: orders
    match: { path_prefix: /orders }
    global_rate_limit: { rate: 100, per: 1s, service: rls }
    concurrency_limit: { adaptive: {} }
  - name: quiet
    match: { path_prefix: /quiet }
    rate_limit: { rate: 10, per: 1s }
    alerts: { enabled: false }
";

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("promtool (Debian `prometheus`; ./dev bootstrap installs it): {e}"));
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("breakwater-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The rules as `breakwater render alerts` prints them, with short windows for the tests.
fn rendered(d: &std::path::Path) -> (PathBuf, Value) {
    let policy = d.join("policy.yaml");
    std::fs::write(&policy, DOCUMENT).unwrap();
    let out = common::command()
        .args(["render", "alerts", "--window", "2m", "--for", "3m", "--breaker-open-for", "5m"])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rules = d.join("rules.yaml");
    std::fs::write(&rules, &out.stdout).unwrap();
    let value = breakwater_policy::yaml::from_yaml(&String::from_utf8(out.stdout).unwrap()).unwrap();
    (rules, value)
}

/// The annotations of the rule `alert` of `policy` as Prometheus expands them for `decision`.
fn annotations(rules: &Value, alert: &str, policy: Option<&str>, decision: &str) -> Value {
    let group = match policy {
        Some(p) => format!("breakwater-{p}"),
        None => "breakwater".into(),
    };
    let g = rules["groups"].as_array().unwrap().iter().find(|g| g["name"] == group.as_str()).unwrap();
    let r = g["rules"].as_array().unwrap().iter().find(|r| r["alert"] == alert).unwrap();
    let mut a = r["annotations"].clone();
    for v in a.as_object_mut().unwrap().values_mut() {
        *v = json!(v.as_str().unwrap().replace("{{ $labels.decision }}", decision));
    }
    a
}

/// One `alert_rule_test`: `alert` at `at`, expected firing with these labels (none: not firing).
fn expect(rules: &Value, alert: &str, at: &str, firing: &[(&str, Option<&str>, Value)]) -> Value {
    let exp: Vec<Value> = firing
        .iter()
        .map(|(decision, policy, labels)| {
            let mut l = labels.clone();
            l["severity"] =
                json!(if [alerts::BREAKER_STUCK_OPEN, alerts::STATE_UNAVAILABLE].contains(&alert) {
                    "critical"
                } else {
                    "warning"
                });
            if let Some(p) = policy {
                l["policy"] = json!(p);
            }
            json!({ "exp_labels": l, "exp_annotations": annotations(rules, alert, *policy, decision) })
        })
        .collect();
    json!({ "eval_time": at, "alertname": alert, "exp_alerts": exp })
}

#[test]
fn rendered_rules_check_and_fire_on_their_series() {
    let d = dir();
    let (rules_file, rules) = rendered(&d);
    let (ok, out) = promtool(&["check", "rules", rules_file.to_str().unwrap()]);
    assert!(ok, "{out}");
    // Three groups with rules (`quiet` has none) and Envoy's.
    assert_eq!(rules["groups"].as_array().unwrap().len(), 4, "{rules}");

    let e1 = json!({ "instance": "envoy-1" });
    let series = |s: &str, values: &str| json!({ "series": s, "values": values });
    // 1-minute steps. reco's breaker opens at 2m and stays open; api rejects half its requests
    // (share 50% > its 40%), orders a tenth (> the default 5%); budget exhausted and state
    // unavailable from 1m; orders degraded from 1m; limits full from 1m; a publish rejected at 2m.
    let input = vec![
        series(r#"breakwater_breaker_state{policy="reco",instance="envoy-1"}"#, "0 0 1 1 1 1 1 1 1 1 1"),
        series(r#"breakwater_requests{policy="api",decision="allowed",instance="envoy-1"}"#, "0+60x10"),
        series(r#"breakwater_requests{policy="api",decision="rate_limited",instance="envoy-1"}"#, "0+60x10"),
        series(r#"breakwater_requests{policy="orders",decision="allowed",instance="envoy-1"}"#, "0+540x10"),
        series(
            r#"breakwater_requests{policy="orders",decision="global_rate_limited",instance="envoy-1"}"#,
            "0+60x10",
        ),
        series(r#"breakwater_requests{policy="reco",decision="allowed",instance="envoy-1"}"#, "0+600x10"),
        series(r#"breakwater_requests{policy="reco",decision="circuit_open",instance="envoy-1"}"#, "0+6x10"),
        series(
            r#"breakwater_requests{policy="reco",decision="budget_exhausted",instance="envoy-1"}"#,
            "0 0+5x10",
        ),
        series(
            r#"breakwater_requests{policy="api",decision="state_unavailable",instance="envoy-1"}"#,
            "0 0+1x10",
        ),
        series(r#"breakwater_global_degraded{policy="orders",instance="envoy-1"}"#, "0 1 1 1 1 1 1 1 1 1 1"),
        series(r#"breakwater_in_flight{policy="reco",instance="envoy-1"}"#, "3 9 10 10 10 10 10 10 10 10 10"),
        series(
            r#"breakwater_in_flight{policy="orders",instance="envoy-1"}"#,
            "3 20 20 20 20 20 20 20 20 20 20",
        ),
        series(r#"breakwater_concurrency_limit{policy="orders",instance="envoy-1"}"#, "20x10"),
        series(
            r#"envoy_extension_config_discovery_http_filter_breakwater_update_rejected{instance="envoy-1"}"#,
            "0 0 1 1 1 1 1 1 1 1 1",
        ),
    ];
    let r = &rules;
    let tests = vec![
        // Open at once, and reported while open.
        expect(r, alerts::BREAKER_OPEN, "1m", &[]),
        expect(r, alerts::BREAKER_OPEN, "2m", &[("", Some("reco"), e1.clone())]),
        // Still open after breaker_open_for (5m).
        expect(r, alerts::BREAKER_STUCK_OPEN, "6m", &[]),
        expect(r, alerts::BREAKER_STUCK_OPEN, "7m", &[("", Some("reco"), e1.clone())]),
        // A share above the policy's threshold, held for 3m: api (50% > 40%) and orders (10% >
        // 5%); reco's 1% breaker rejections stay below 5%.
        expect(r, alerts::REJECTED_SHARE, "3m", &[]),
        expect(
            r,
            alerts::REJECTED_SHARE,
            "6m",
            &[
                ("rate_limited", Some("api"), json!({ "decision": "rate_limited" })),
                ("global_rate_limited", Some("orders"), json!({ "decision": "global_rate_limited" })),
            ],
        ),
        expect(r, alerts::BUDGET_EXHAUSTED, "3m", &[]),
        expect(r, alerts::BUDGET_EXHAUSTED, "5m", &[("", Some("reco"), json!({}))]),
        // State unavailable fires at once.
        expect(r, alerts::STATE_UNAVAILABLE, "2m", &[("", Some("api"), json!({}))]),
        expect(r, alerts::GLOBAL_DEGRADED, "1m", &[]),
        expect(r, alerts::GLOBAL_DEGRADED, "3m", &[("", Some("orders"), e1.clone())]),
        // At 90% of the fixed limit (9 of 10) from 1m, and at the adaptive limit's own gauge.
        expect(r, alerts::AT_LIMIT, "3m", &[]),
        expect(
            r,
            alerts::AT_LIMIT,
            "5m",
            &[("", Some("orders"), e1.clone()), ("", Some("reco"), e1.clone())],
        ),
        expect(r, alerts::PUBLISH_REJECTED, "1m", &[]),
        expect(r, alerts::PUBLISH_REJECTED, "3m", &[("", None, e1.clone())]),
    ];
    let covered: std::collections::BTreeSet<&str> =
        tests.iter().map(|t| t["alertname"].as_str().unwrap()).collect();
    assert_eq!(covered, alerts::ALL.into_iter().collect(), "every kind of rule is tested");
    let file = json!({
        "rule_files": [rules_file.to_str().unwrap()],
        "evaluation_interval": "1m",
        "tests": [{ "interval": "1m", "input_series": input, "alert_rule_test": tests }],
    });
    let test_file = d.join("test.yaml");
    std::fs::write(&test_file, breakwater_policy::yaml::to_yaml(&file)).unwrap();
    let (ok, out) = promtool(&["test", "rules", test_file.to_str().unwrap()]);
    assert!(ok, "{out}");
    if std::env::var_os("KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// The thresholds on the command line reach the rules; a policy's own win.
#[test]
fn thresholds_come_from_the_command_line_unless_the_policy_sets_them() {
    let doc = breakwater_policy::load(DOCUMENT).unwrap().document;
    let t = Thresholds { rejected_share: 25, window: Duration::from_millis(60_000), ..Thresholds::default() };
    let r = alerts::rules(&doc, &t, "breakwater");
    let share = |g: usize| {
        let rules = r["groups"][g]["rules"].as_array().unwrap();
        let rule = rules.iter().find(|x| x["alert"] == alerts::REJECTED_SHARE).unwrap();
        rule["expr"].as_str().unwrap().to_string()
    };
    assert!(share(0).contains("> 0.25 and") && share(0).contains("[1m]"), "{}", share(0));
    assert!(share(1).contains("> 0.4 and"), "{}", share(1));
}
