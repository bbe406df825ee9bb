//! `breakwater render alerts`: Prometheus alerting rules derived from the policies.
//!
//! One rule group per policy (`breakwater-<policy>`), with a rule for each thing of that policy
//! worth waking someone for: its breaker open, and open too long; a share of its requests rejected
//! by one of its limits; its retry budget exhausted; its shared state unavailable; its global limit
//! decided without the rate-limit service; its concurrency limit full for long. One more group
//! (`breakwater`) watches Envoy itself: a published policy that Envoy rejected.
//!
//! The series are those Envoy exports with the `stats_tags` breakwater ships
//! ([`breakwater_policy::metrics::STATS_TAGS`]): `breakwater_requests{policy, decision}` and the
//! gauges `breakwater_<gauge>{policy}`. Gauges are per Envoy (each keeps its own state), so their
//! rules keep the series' own labels (`instance`, ...); counters are summed over the fleet.
//! docs/observability.md explains every rule and what to do when it fires.

use breakwater_policy::metrics::{Counter, Decision, Gauge, PREFIX};
use breakwater_policy::model::{Document, Duration, Policy};
use serde_json::{Value, json};

/// The thresholds a policy's `alerts` block does not set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// The range of every `rate()` / `increase()`.
    pub window: Duration,
    /// How long a condition holds before it alerts.
    pub hold_for: Duration,
    /// Percent of a policy's requests one kind of rejection may take.
    pub rejected_share: u8,
    /// How long a breaker may stay open or half-open.
    pub breaker_open_for: Duration,
    /// Percent of the concurrency limit in flight that counts as at the limit.
    pub in_flight_share: u8,
    /// Requests per second below which a policy's rejected share is not judged (a handful of
    /// requests is no storm).
    pub min_rate: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            window: Duration::from_millis(300_000),
            hold_for: Duration::from_millis(300_000),
            rejected_share: 5,
            breaker_open_for: Duration::from_millis(600_000),
            in_flight_share: 90,
            min_rate: 0.1,
        }
    }
}

/// The alert names, one per kind of rule.
pub const BREAKER_OPEN: &str = "BreakwaterBreakerOpen";
pub const BREAKER_STUCK_OPEN: &str = "BreakwaterBreakerStuckOpen";
pub const REJECTED_SHARE: &str = "BreakwaterRejectedShareHigh";
pub const BUDGET_EXHAUSTED: &str = "BreakwaterRetryBudgetExhausted";
pub const STATE_UNAVAILABLE: &str = "BreakwaterStateUnavailable";
pub const GLOBAL_DEGRADED: &str = "BreakwaterGlobalLimitDegraded";
pub const AT_LIMIT: &str = "BreakwaterConcurrencyAtLimit";
pub const PUBLISH_REJECTED: &str = "BreakwaterPublishRejected";

/// Every alert name.
pub const ALL: [&str; 8] = [
    BREAKER_OPEN,
    BREAKER_STUCK_OPEN,
    REJECTED_SHARE,
    BUDGET_EXHAUSTED,
    STATE_UNAVAILABLE,
    GLOBAL_DEGRADED,
    AT_LIMIT,
    PUBLISH_REJECTED,
];

/// The decisions that reject a request (an injected abort is chaos on purpose, not a rejection).
pub fn rejections() -> impl Iterator<Item = Decision> {
    Decision::ALL.into_iter().filter(|d| !matches!(d, Decision::Allowed | Decision::FaultAborted))
}

/// The rules file (`groups:`) for `doc`; `ecds_name` is the name of the filter's ECDS resource
/// (the `publish rejected` rule watches its subscription's stats).
pub fn rules(doc: &Document, t: &Thresholds, ecds_name: &str) -> Value {
    let mut groups: Vec<Value> = doc
        .policies
        .iter()
        .filter(|p| p.alerts.as_ref().is_none_or(|a| a.enabled))
        .map(|p| json!({ "name": format!("{PREFIX}-{}", p.name), "rules": policy_rules(p, t) }))
        .collect();
    let family =
        format!("envoy_extension_config_discovery_http_filter_{}_update_rejected", metric_word(ecds_name));
    groups.push(json!({
        "name": PREFIX,
        "rules": [rule(
            PUBLISH_REJECTED,
            &format!("increase({family}[{}]) > 0", t.window),
            None,
            "warning",
            None,
            "Envoy rejected a published breakwater policy",
            "Envoy refused the last policy published to it (its ECDS update was rejected) and keeps \
             enforcing the one before. Its log has the validator's messages; `breakwater validate` \
             shows them too. Fix the policy and publish again.",
        )],
    }));
    json!({ "groups": groups })
}

/// A name as it appears inside a Prometheus family (Envoy turns what is not `[a-zA-Z0-9_]` to `_`).
fn metric_word(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

fn policy_rules(p: &Policy, t: &Thresholds) -> Vec<Value> {
    let a = p.alerts.clone().unwrap_or_default();
    let hold = a.hold_for.unwrap_or(t.hold_for);
    let share = a.rejected_share.unwrap_or(t.rejected_share);
    let name = p.name.as_str();
    let w = t.window;
    let sel = |extra: &str| format!("{{policy=\"{name}\"{extra}}}");
    let requests = format!("{PREFIX}_requests");
    let gauge = |g: Gauge| format!("{PREFIX}_{g}{}", sel(""));
    let counter_rate =
        |c: Counter| format!("sum by (policy) (rate({requests}{}[{w}]))", sel(&format!(",decision=\"{c}\"")));
    let mut out = Vec::new();
    if p.circuit_breaker.is_some() {
        out.push(rule(
            BREAKER_OPEN,
            &format!("{} >= 1", gauge(Gauge::BreakerState)),
            None,
            "warning",
            Some(name),
            &format!("{name}: circuit breaker open"),
            "The upstream failed often enough that the breaker opened (or is probing it, half-open): \
             requests get the breaker's reply without reaching it. Look at the upstream's health; the \
             breaker probes it after `open_for` and closes when the probes succeed.",
        ));
        let stuck = a.breaker_open_for.unwrap_or(t.breaker_open_for);
        // Only while it still answers requests: the gauge changes at a request (open turns
        // half-open when one arrives after `open_for`), so a breaker nobody calls keeps showing
        // open.
        out.push(rule(
            BREAKER_STUCK_OPEN,
            &format!(
                "{} >= 1 and on (policy) {} > 0",
                gauge(Gauge::BreakerState),
                counter_rate(Counter::CircuitOpen)
            ),
            Some(stuck),
            "critical",
            Some(name),
            &format!("{name}: circuit breaker open for {stuck}"),
            "The breaker has stayed open (or half-open) while requests kept coming: its probes keep \
             failing, the upstream has not recovered. Its callers get the breaker's reply (or the \
             fallback). Restore the upstream, or route around it.",
        ));
    }
    let limits = [
        p.rate_limit.is_some(),
        p.global_rate_limit.is_some(),
        p.concurrency_limit.is_some(),
        p.circuit_breaker.is_some(),
    ];
    if limits.iter().any(|l| *l) {
        let all = Decision::promql_any();
        let rejected = rejections().map(|d| d.as_str()).collect::<Vec<_>>().join("|");
        let total =
            format!("sum by (policy) (rate({requests}{}[{w}]))", sel(&format!(",decision=~\"{all}\"")));
        let expr = format!(
            "sum by (policy, decision) (rate({requests}{}[{w}])) / ignoring (decision) group_left {total} > {} \
             and ignoring (decision) {total} > {}",
            sel(&format!(",decision=~\"{rejected}\"")),
            f64::from(share) / 100.0,
            t.min_rate,
        );
        out.push(rule(
            REJECTED_SHARE,
            &expr,
            Some(hold),
            "warning",
            Some(name),
            &format!("{name}: more than {share}% of requests rejected ({{{{ $labels.decision }}}})"),
            "One of the policy's limits rejects more than its share of requests: a traffic surge, \
             a client gone wild (look at the rejected keys), or a limit set too low. Raise the \
             limit if the traffic is legitimate; in `shadow` mode this counts what it would reject.",
        ));
    }
    if p.retry.is_some() {
        out.push(rule(
            BUDGET_EXHAUSTED,
            &format!("{} > 0", counter_rate(Counter::BudgetExhausted)),
            Some(hold),
            "warning",
            Some(name),
            &format!("{name}: retry budget exhausted"),
            "Requests get fewer retries than `max_retries` because the retry budget is spent: the \
             upstream fails often enough that retrying everything would add load. The failures \
             themselves are the problem; the budget keeps retries from making it worse.",
        ));
    }
    out.push(rule(
        STATE_UNAVAILABLE,
        &format!("{} > 0", counter_rate(Counter::StateUnavailable)),
        Some(Duration::from_millis(0)),
        "critical",
        Some(name),
        &format!("{name}: shared state unavailable, failure_mode decides"),
        "The filter could not read or write its shared state (Envoy's shared data), so the policy's \
         `failure_mode` decided requests instead of its limits. Check Envoy's log for wasm errors \
         and the filter's memory (`breakwater_vm_memory_bytes`).",
    ));
    if p.global_rate_limit.is_some() {
        out.push(rule(
            GLOBAL_DEGRADED,
            &format!("{} == 1", gauge(Gauge::GlobalDegraded)),
            Some(Duration::from_millis(60_000)),
            "warning",
            Some(name),
            &format!("{name}: global limit decided without the rate-limit service"),
            "The rate-limit service does not answer, so each Envoy enforces its own share of the \
             global limit (degraded mode): the fleet-wide bound is only approximate. Check the \
             service (`/readyz`) and its Redis.",
        ));
    }
    if let Some(cl) = &p.concurrency_limit {
        let fraction = f64::from(a.in_flight_share.unwrap_or(t.in_flight_share)) / 100.0;
        let limit = match cl.max_in_flight {
            Some(n) => format!("{}", (f64::from(n) * fraction).ceil()),
            None => format!("{fraction} * {}", gauge(Gauge::ConcurrencyLimit)),
        };
        out.push(rule(
            AT_LIMIT,
            &format!("{} >= {limit}", gauge(Gauge::InFlight)),
            Some(hold),
            "warning",
            Some(name),
            &format!("{name}: concurrency limit full"),
            "Requests in flight have stayed at the concurrency limit: the upstream is slower than \
             usual or the traffic grew. Requests over the limit wait in its queue or are rejected; \
             check the upstream's latency before raising the limit.",
        ));
    }
    out
}

/// One alerting rule.
fn rule(
    alert: &str,
    expr: &str,
    hold: Option<Duration>,
    severity: &str,
    policy: Option<&str>,
    summary: &str,
    description: &str,
) -> Value {
    let mut labels = json!({ "severity": severity });
    if let Some(p) = policy {
        labels["policy"] = json!(p);
    }
    let mut r = json!({
        "alert": alert,
        "expr": expr,
        "labels": labels,
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook": format!("docs/observability.md#{}", alert.to_ascii_lowercase()),
        },
    });
    if let Some(h) = hold.filter(|h| h.as_millis() > 0) {
        r["for"] = json!(h.to_string());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Document {
        breakwater_policy::load(yaml).unwrap_or_else(|e| panic!("{e:?}")).document
    }

    #[test]
    fn each_policy_gets_the_rules_of_its_blocks() {
        let d = doc("version: 1
policies:
  - name: api
    rate_limit: { rate: 10, per: 1s }
  - name: reco
    circuit_breaker: { window: 10, minimum_calls: 5, failure_rate: 50 }
    retry: { max_retries: 2 }
    concurrency_limit: { max_in_flight: 10 }
    alerts: { rejected_share: 20, breaker_open_for: 2m }
  - name: quiet
    rate_limit: { rate: 10, per: 1s }
    alerts: { enabled: false }
");
        let r = rules(&d, &Thresholds::default(), "breakwater");
        let names = |g: usize| -> Vec<String> {
            r["groups"][g]["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["alert"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(r["groups"].as_array().unwrap().len(), 3, "quiet has none; Envoy's group last");
        assert_eq!(names(0), [REJECTED_SHARE, STATE_UNAVAILABLE]);
        assert_eq!(
            names(1),
            [BREAKER_OPEN, BREAKER_STUCK_OPEN, REJECTED_SHARE, BUDGET_EXHAUSTED, STATE_UNAVAILABLE, AT_LIMIT]
        );
        assert_eq!(names(2), [PUBLISH_REJECTED]);
        let reco = &r["groups"][1]["rules"];
        assert_eq!(reco[1]["for"], "2m");
        assert!(reco[2]["expr"].as_str().unwrap().contains("> 0.2 and"), "{}", reco[2]["expr"]);
        assert_eq!(reco[5]["expr"], "breakwater_in_flight{policy=\"reco\"} >= 9");
        assert_eq!(reco[0]["labels"]["policy"], "reco");
    }

    #[test]
    fn an_adaptive_limit_is_full_at_its_own_gauge() {
        let d = doc("version: 1\npolicies:\n  - name: a\n    concurrency_limit: { adaptive: {} }\n");
        let r = rules(&d, &Thresholds { in_flight_share: 80, ..Thresholds::default() }, "my.filter");
        let rules = r["groups"][0]["rules"].as_array().unwrap();
        let at = rules.iter().find(|x| x["alert"] == AT_LIMIT).unwrap();
        assert_eq!(
            at["expr"],
            "breakwater_in_flight{policy=\"a\"} >= 0.8 * breakwater_concurrency_limit{policy=\"a\"}"
        );
        assert!(
            r["groups"][1]["rules"][0]["expr"]
                .as_str()
                .unwrap()
                .contains("http_filter_my_filter_update_rejected")
        );
    }
}
