//! # breakwater-api
//!
//! The bodies of the admin API (`breakwater serve`, under `/api`), defined once: the server
//! answers with these types and the web admin reads them back as the same types, so a field
//! renamed on one side is a compile error on the other. docs/admin.md describes each endpoint.
//!
//! This is its own small crate because both ends need it and neither can depend on the other:
//! the admin builds for the browser, and the server's crate (`cli`) brings tokio, axum and
//! wasmtime.

use std::collections::BTreeMap;

use breakwater_policy::Diagnostic;
use breakwater_policy::metrics::{BreakerState, Counter};
use breakwater_scenario::Report;
use serde::{Deserialize, Serialize};

/// Every error answer: a message, and the validator's findings where it has some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<Diagnostic>,
}

/// A document's text: the body of `PUT /api/policy` and `POST /api/validate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextBody {
    pub text: String,
}

/// `GET /api/policy`: the active document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyAnswer {
    pub text: String,
    /// Its version in the history.
    pub version: u64,
    pub valid: bool,
    pub diagnostics: Vec<Diagnostic>,
    pub published: Option<Published>,
    /// The policy file on the server.
    pub file: String,
}

/// `POST /api/validate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub valid: bool,
    pub diagnostics: Vec<Diagnostic>,
}

/// The result of a save (`PUT /api/policy`) or a rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub version: u64,
    /// False when the document was already the active one (nothing new was written).
    pub changed: bool,
    pub warnings: Vec<Diagnostic>,
}

/// What was last published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    /// The history version published.
    pub version: u64,
    /// The ECDS `version_info` written.
    pub ecds_version: u64,
    pub at_ms: u64,
}

/// One version in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub id: u64,
    /// Unix time in milliseconds (the file's modification time).
    pub saved_at_ms: u64,
    pub bytes: u64,
    /// The policies' names (empty when a version no longer loads, e.g. after a language change).
    pub policies: Vec<String>,
}

/// `GET /api/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The active version.
    pub current: u64,
    /// The version last published, if any.
    pub published: Option<u64>,
    pub versions: Vec<Version>,
}

/// `GET /api/history/{version}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionText {
    pub version: u64,
    pub text: String,
}

/// `GET /api/diff?from=&to=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    pub from: u64,
    pub to: u64,
    /// A unified diff.
    pub diff: String,
    /// What changes, policy by policy and field by field, read from the two models; empty when
    /// either version does not load (then `diff` is all there is).
    #[serde(default)]
    pub changes: Vec<breakwater_policy::describe::Change>,
}

/// The body of `POST /api/rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    pub version: u64,
}

/// One shipped scenario (`GET /api/scenarios` answers a list of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioFile {
    pub file: String,
    /// The scenario's `name` (empty if it does not load).
    pub name: String,
    pub text: String,
}

/// The body of `POST /api/simulate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulateBody {
    /// The policy document (YAML or JSON); the scenario's own `policy` is replaced by it.
    pub policy: String,
    pub scenario: String,
}

/// `POST /api/simulate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Simulation {
    /// Wall time of the simulation.
    pub wall_ms: f64,
    pub report: Report,
}

/// `POST /api/publish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishAnswer {
    /// The history version published.
    pub version: u64,
    /// The ECDS `version_info` written.
    pub ecds_version: u64,
    pub policies: usize,
    /// True: Envoy applied it; false: Envoy rejected it or did not apply it in time; null: not
    /// confirmed (the server was started without `--envoy-admin`).
    pub applied: Option<bool>,
    pub message: String,
    /// Why Envoy rejected it (from its log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// After a rejection: the ECDS version under which the last applied configuration was
    /// written back (so a restarted Envoy does not load the rejected one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<u64>,
    /// From writing the file to Envoy's answer (when Envoy was asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<f64>,
}

/// `GET /api/status`: Envoy, what it runs, and breakwater's metrics per policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub envoy: EnvoyStatus,
    /// The ECDS subscription, when Envoy could be asked.
    pub ecds: Option<EcdsState>,
    /// The active saved version (what the editor loads; what Publish sends).
    #[serde(default)]
    pub saved: u64,
    /// The last publish this server made that Envoy applied (or wrote, without Envoy's admin).
    pub published: Option<Published>,
    /// What Envoy runs, in saved versions; None when publishing is off (no ECDS file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Running>,
    pub policies: BTreeMap<String, PolicyStats>,
}

/// What Envoy runs: its applied ECDS version, the saved version with that document, and a newer
/// ECDS version it did not apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The ECDS `version_info` Envoy applied (None: it could not be asked, or applied none).
    pub ecds_version: Option<u64>,
    /// Whether the document of that version could be read (from the ECDS file, or the copy of
    /// the last applied resource kept beside it).
    pub known: bool,
    /// The newest saved version with that document (None: in no saved version, i.e. published by
    /// something else, or not known).
    pub version: Option<u64>,
    /// Its policies' names.
    pub policies: Vec<String>,
    /// Whether this server published that ECDS version (else `breakwater publish`, a script...).
    pub from_admin: bool,
    /// The ECDS file holds a newer version than Envoy applied.
    pub not_applied: Option<NotApplied>,
}

/// A version in the ECDS file that Envoy did not apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotApplied {
    pub ecds_version: u64,
    /// Envoy rejected it (its `update_rejected` counter moved); false: not read yet, or Envoy
    /// could not be asked.
    pub rejected: bool,
    /// Envoy's reason, from its log (`--envoy-log`).
    pub reason: Option<String>,
}

/// Envoy's admin endpoint, as the server sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvoyStatus {
    /// False when the server was started without `--envoy-admin`.
    pub configured: bool,
    pub address: Option<String>,
    pub reachable: Option<bool>,
    pub error: Option<String>,
}

/// An ECDS subscription's state in Envoy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcdsState {
    /// The `version_info` of the configuration in use (`version_text`).
    pub applied: Option<String>,
    /// Updates rejected so far (`update_rejected`).
    pub rejected: u64,
}

/// breakwater's metrics for one policy, as Envoy reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyStats {
    /// `breakwater_requests` by counter (the decisions, and `retried`, `fallback`, ...).
    pub requests: BTreeMap<Counter, u64>,
    /// When the policy has a breaker.
    pub breaker: Option<BreakerState>,
    pub in_flight: Option<u64>,
    /// When the policy has a global limit: whether it is in degraded mode (the rate-limit service
    /// cannot answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_degraded: Option<bool>,
    /// When the policy injects delays: the requests they hold now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_active: Option<u64>,
    /// When the policy's concurrency limit has a queue: the requests waiting now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_length: Option<u64>,
    /// When the policy's concurrency limit is adaptive: what its controller shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveStats>,
}

/// `GET /api/live`: the last minutes of every policy, for the live page's charts, with the breaker
/// transitions from Envoy's log and the alerts firing in Alertmanager.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Live {
    /// Where the series come from: `prometheus` (the server's `--prometheus`), `envoy` (the
    /// server's own sampling of Envoy's stats), or `none` (no Envoy admin configured).
    pub source: String,
    /// Seconds between points.
    pub step_s: u64,
    /// Unix time of the first point, in seconds.
    pub start: u64,
    /// Points per series.
    pub points: usize,
    pub policies: BTreeMap<String, LivePolicy>,
    /// The last breaker transitions in Envoy's log, oldest first (empty without `--envoy-log`).
    pub transitions: Vec<BreakerTransition>,
    /// The breakwater alerts firing now; None when no Alertmanager is configured, or it could
    /// not be asked (`alerts_error` says why).
    pub alerts: Option<Vec<FiringAlert>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts_error: Option<String>,
    /// What went wrong reading a source, if anything did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One policy's series: one value per point, None where there is no data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LivePolicy {
    /// Requests per second, by decision.
    pub decisions: BTreeMap<String, Vec<Option<f64>>>,
    /// The breaker's state (0 closed, 1 open, 2 half-open), when the policy has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Vec<Option<f64>>>,
    /// Requests in flight, when the policy has a concurrency limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<Vec<Option<f64>>>,
    /// Its limit (fixed, or the adaptive limit's gauge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Vec<Option<f64>>>,
}

/// A breaker transition as the filter logs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerTransition {
    /// Envoy's timestamp of the line.
    pub at: String,
    pub policy: String,
    pub from: String,
    pub to: String,
    /// The window's counts and rates, or why (`a probe failed`).
    pub detail: String,
}

/// An alert firing in Alertmanager.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiringAlert {
    pub name: String,
    pub policy: Option<String>,
    pub severity: Option<String>,
    pub summary: Option<String>,
    /// When it started firing (RFC 3339).
    pub since: String,
}

/// An adaptive concurrency limit, as its gauges show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdaptiveStats {
    /// The limit in force.
    pub limit: u64,
    /// The last min RTT measured (milliseconds; 0 before the first).
    pub min_rtt_ms: u64,
    /// The latency sampled in the last interval (milliseconds).
    pub sample_rtt_ms: u64,
    /// Whether it measures the min RTT now (the limit is pinned at its `min`).
    pub probing: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The wire shapes the admin and API clients rely on.
    #[test]
    fn bodies_keep_their_wire_shape() {
        let stats = PolicyStats {
            requests: [(Counter::RateLimited, 3)].into_iter().collect(),
            breaker: Some(BreakerState::HalfOpen),
            in_flight: None,
            global_degraded: None,
            fault_active: None,
            queue_length: None,
            adaptive: None,
        };
        let json = serde_json::to_string(&stats).unwrap();
        assert_eq!(json, r#"{"requests":{"rate_limited":3},"breaker":"half_open","in_flight":null}"#);
        assert_eq!(serde_json::from_str::<PolicyStats>(&json).unwrap(), stats);
        let degraded = PolicyStats { global_degraded: Some(true), ..PolicyStats::default() };
        let json = serde_json::to_string(&degraded).unwrap();
        assert_eq!(json, r#"{"requests":{},"breaker":null,"in_flight":null,"global_degraded":true}"#);

        let error = ErrorBody { error: "wrong token".into(), diagnostics: Vec::new() };
        assert_eq!(serde_json::to_string(&error).unwrap(), r#"{"error":"wrong token"}"#);
        let invalid = r#"{"error":"invalid","diagnostics":[{"severity":"error","path":"policies[0].name","message":"m","line":3,"col":5}]}"#;
        let back: ErrorBody = serde_json::from_str(invalid).unwrap();
        assert_eq!(back.diagnostics[0].span.map(|s| (s.line, s.col)), Some((3, 5)));
        assert_eq!(serde_json::to_string(&back).unwrap(), invalid);

        assert!(serde_json::from_str::<TextBody>(r#"{"text":"x","extra":1}"#).is_err());

        // Without Envoy: the fields that need one are null.
        let status = Status {
            envoy: EnvoyStatus { configured: false, address: None, reachable: None, error: None },
            ecds: None,
            saved: 4,
            published: None,
            running: None,
            policies: BTreeMap::new(),
        };
        assert_eq!(
            serde_json::to_string(&status).unwrap(),
            r#"{"envoy":{"configured":false,"address":null,"reachable":null,"error":null},"ecds":null,"saved":4,"published":null,"policies":{}}"#
        );
        // An unconfirmed publish has no reason and no elapsed time.
        let answer = PublishAnswer {
            version: 3,
            ecds_version: 7,
            policies: 2,
            applied: None,
            message: "written".into(),
            reason: None,
            restored: None,
            elapsed_ms: None,
        };
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"version":3,"ecds_version":7,"policies":2,"applied":null,"message":"written"}"#
        );
        let rejected = PublishAnswer {
            applied: Some(false),
            reason: Some("bad".into()),
            restored: Some(8),
            elapsed_ms: Some(1.5),
            ..answer
        };
        let json = serde_json::to_string(&rejected).unwrap();
        assert!(
            json.ends_with(
                r#""applied":false,"message":"written","reason":"bad","restored":8,"elapsed_ms":1.5}"#
            ),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<PublishAnswer>(&json).unwrap(), rejected);
    }
}
