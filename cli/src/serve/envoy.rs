//! What the admin server asks Envoy's admin endpoint: whether an ECDS version was applied (or
//! rejected, and why), and breakwater's metrics from `/stats/prometheus`.

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde::Serialize;
use serde_json::Value;

/// Each admin request gets this long (Envoy answers on loopback in milliseconds).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Admin answers larger than this are cut off (a config dump of 1,000 policies is ~1 MB).
const MAX_BODY: usize = 32 << 20;

/// Envoy's admin endpoint, `HOST:PORT`.
#[derive(Debug, Clone)]
pub struct Admin {
    pub address: String,
}

impl Admin {
    /// GET a path; the status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.get_inner(path)).await.map_err(|_| {
            format!("Envoy's admin at {} did not answer within {REQUEST_TIMEOUT:?}", self.address)
        })?
    }

    async fn get_inner(&self, path: &str) -> Result<(u16, String), String> {
        let unreachable = |e: &dyn std::fmt::Display| format!("Envoy's admin at {}: {e}", self.address);
        let stream = tokio::net::TcpStream::connect(&self.address).await.map_err(|e| unreachable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, &self.address)
            .body(Empty::<Bytes>::new())
            .map_err(|e| unreachable(&e))?;
        let response = sender.send_request(request).await.map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The ECDS state of one filter: the version Envoy applied, and its last rejection.
    pub async fn ecds(&self, filter: &str) -> Result<EcdsState, String> {
        let (status, body) = self.get("/config_dump?resource=ecds_filters").await?;
        if status != 200 {
            return Err(format!("Envoy's /config_dump answered {status}"));
        }
        let dump: Value = serde_json::from_str(&body).map_err(|e| format!("Envoy's /config_dump: {e}"))?;
        Ok(ecds_state(&dump, filter))
    }

    /// The `update_rejected` counter of a filter's ECDS subscription.
    pub async fn rejected_count(&self, filter: &str) -> Result<u64, String> {
        let name = format!("extension_config_discovery.http_filter.{filter}.update_rejected");
        let (_, body) = self.get(&format!("/stats?filter=^{}$", name.replace('.', "\\."))).await?;
        Ok(body
            .lines()
            .find_map(|l| l.strip_prefix(name.as_str())?.strip_prefix(": ")?.trim().parse().ok())
            .unwrap_or(0))
    }
}

/// What `/config_dump?resource=ecds_filters` says about one filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EcdsState {
    /// The `version_info` of the configuration in use.
    pub applied: Option<String>,
    /// The last rejected update: its version and Envoy's reason.
    pub rejected_version: Option<String>,
    pub rejected_reason: Option<String>,
}

/// Reads a filter's entry out of a config dump (one `EcdsConfigDump.EcdsFilterConfig` per
/// resource, with `error_state` after a rejected update).
pub fn ecds_state(dump: &Value, filter: &str) -> EcdsState {
    let entries = dump.get("configs").and_then(Value::as_array).into_iter().flatten();
    let mut state = EcdsState::default();
    for entry in entries.filter(|e| e.pointer("/ecds_filter/name").and_then(Value::as_str) == Some(filter)) {
        state.applied = entry.get("version_info").and_then(Value::as_str).map(str::to_string);
        if let Some(error) = entry.get("error_state") {
            state.rejected_reason = error.get("details").and_then(Value::as_str).map(str::to_string);
            state.rejected_version = error.get("version_info").and_then(Value::as_str).map(str::to_string);
        }
    }
    state
}

/// breakwater's metrics for one policy, as Envoy reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PolicyStats {
    /// `breakwater_requests` by decision (`allowed`, `rate_limited`, …, and `retried`).
    pub requests: BTreeMap<String, u64>,
    /// `closed`, `open` or `half_open`, when the policy has a breaker.
    pub breaker: Option<&'static str>,
    pub in_flight: Option<u64>,
}

/// Reads breakwater's series out of Prometheus text: per policy, in name order.
pub fn policy_stats(prometheus: &str) -> BTreeMap<String, PolicyStats> {
    let mut out: BTreeMap<String, PolicyStats> = BTreeMap::new();
    for line in prometheus.lines() {
        let Some(rest) = line.strip_prefix("breakwater_") else { continue };
        let Some((series, value)) = rest.rsplit_once(' ') else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, labels(l.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        let Some(policy) = labels.get("policy") else { continue };
        let entry = out.entry(policy.clone()).or_default();
        let value = value.max(0.0) as u64;
        match name {
            "requests" => {
                if let Some(decision) = labels.get("decision") {
                    *entry.requests.entry(decision.clone()).or_default() += value;
                }
            }
            "breaker_state" => {
                entry.breaker = Some(match value {
                    1 => "open",
                    2 => "half_open",
                    _ => "closed",
                })
            }
            "in_flight" => entry.in_flight = Some(value),
            _ => {}
        }
    }
    out
}

/// `a="x",b="y"` → {a: x, b: y} (label values are policy names and decisions: no escapes).
fn labels(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_policy_series_from_prometheus_text() {
        let text = "# TYPE breakwater_requests counter\n\
            breakwater_requests{policy=\"api\",decision=\"allowed\"} 12\n\
            breakwater_requests{policy=\"api\",decision=\"rate_limited\"} 3\n\
            breakwater_breaker_state{policy=\"reco\"} 1\n\
            breakwater_in_flight{policy=\"writes\"} 7\n\
            envoy_cluster_upstream_rq{envoy_cluster_name=\"x\"} 5\n\
            breakwater_requests{decision=\"allowed\"} 99\n";
        let stats = policy_stats(text);
        assert_eq!(stats.keys().collect::<Vec<_>>(), ["api", "reco", "writes"]);
        assert_eq!(stats["api"].requests["allowed"], 12);
        assert_eq!(stats["api"].requests["rate_limited"], 3);
        assert_eq!(stats["reco"].breaker, Some("open"));
        assert_eq!(stats["writes"].in_flight, Some(7));
    }

    #[test]
    fn reads_the_applied_version_and_a_rejection() {
        let dump = json!({ "configs": [
            { "ecds_filter": { "name": "other" }, "version_info": "9" },
            { "ecds_filter": { "name": "breakwater" }, "version_info": "3",
              "error_state": { "version_info": "4", "details": "bad config" } },
        ]});
        let s = ecds_state(&dump, "breakwater");
        assert_eq!(s.applied.as_deref(), Some("3"));
        assert_eq!(s.rejected_version.as_deref(), Some("4"));
        assert_eq!(s.rejected_reason.as_deref(), Some("bad config"));
        assert_eq!(ecds_state(&dump, "missing"), EcdsState::default());
    }
}
