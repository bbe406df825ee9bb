//! What the admin server asks Envoy's admin endpoint: whether an ECDS version was applied (or
//! rejected, and why), and breakwater's metrics from `/stats/prometheus`.

use std::collections::BTreeMap;
use std::time::Duration;

use breakwater_api::{EcdsState, PolicyStats};
use breakwater_policy::metrics::{self, BreakerState, Gauge, Metric};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

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

    /// The ECDS state of one filter, from its subscription's stats. (The config dump is no
    /// help here: it shows a rejected version as if it were in use.)
    pub async fn ecds(&self, filter: &str) -> Result<EcdsState, String> {
        let prefix = format!("extension_config_discovery.http_filter.{filter}.");
        let (status, body) = self.get(&format!("/stats?filter=^{}", prefix.replace('.', "\\."))).await?;
        if status != 200 {
            return Err(format!("Envoy's /stats answered {status}"));
        }
        Ok(ecds_state(&body, &prefix))
    }
}

/// Reads an ECDS subscription's stats (`PREFIX.version_text: "3"`, `PREFIX.update_rejected: 1`).
pub fn ecds_state(stats: &str, prefix: &str) -> EcdsState {
    let mut state = EcdsState::default();
    for line in stats.lines() {
        let Some((name, value)) = line.strip_prefix(prefix).and_then(|l| l.split_once(": ")) else {
            continue;
        };
        match name {
            "version_text" => {
                state.applied = Some(value.trim().trim_matches('"').to_string()).filter(|v| !v.is_empty())
            }
            "update_rejected" => state.rejected = value.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    state
}

/// Envoy's reasons for rejecting configuration, from the lines of its log written since `offset`
/// (bytes): the subscription's "config update rejected: …" and breakwater's own "configuration
/// rejected: …".
pub fn rejection_reasons(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in log.lines() {
        for marker in ["config update rejected: ", "configuration rejected: ", "Failed to load Wasm code"] {
            if let Some(i) = line.find(marker) {
                let reason = if marker.starts_with("Failed") { marker } else { &line[i + marker.len()..] };
                let reason = reason.trim().to_string();
                if !out.contains(&reason) {
                    out.push(reason);
                }
            }
        }
    }
    out
}

/// Reads breakwater's series out of Prometheus text: per policy, in name order.
pub fn policy_stats(prometheus: &str) -> BTreeMap<String, PolicyStats> {
    let mut out: BTreeMap<String, PolicyStats> = BTreeMap::new();
    for sample in prometheus.lines().filter_map(metrics::parse_prometheus_line) {
        let entry = out.entry(sample.policy).or_default();
        let value = sample.value.max(0.0) as u64;
        match sample.metric {
            Metric::Counter(c) => *entry.requests.entry(c).or_default() += value,
            Metric::Gauge(Gauge::BreakerState) => {
                entry.breaker = Some(BreakerState::from_gauge(value).unwrap_or(BreakerState::Closed))
            }
            Metric::Gauge(Gauge::InFlight) => entry.in_flight = Some(value),
            Metric::Gauge(Gauge::GlobalDegraded) => entry.global_degraded = Some(value > 0),
            Metric::Gauge(Gauge::FaultActive) => entry.fault_active = Some(value),
            Metric::Gauge(Gauge::QueueLength) => entry.queue_length = Some(value),
            Metric::Gauge(Gauge::ConcurrencyLimit) => entry.adaptive.get_or_insert_default().limit = value,
            Metric::Gauge(Gauge::MinRttMs) => entry.adaptive.get_or_insert_default().min_rtt_ms = value,
            Metric::Gauge(Gauge::SampleRttMs) => entry.adaptive.get_or_insert_default().sample_rtt_ms = value,
            Metric::Gauge(Gauge::MinRttCalculationActive) => {
                entry.adaptive.get_or_insert_default().probing = value > 0
            }
        }
    }
    // A policy that is no longer adaptive keeps its gauges at 0 (Envoy never forgets a metric); an
    // adaptive limit is never 0.
    for stats in out.values_mut() {
        stats.adaptive = stats.adaptive.filter(|a| a.limit > 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use breakwater_policy::metrics::Counter;

    #[test]
    fn reads_policy_series_from_prometheus_text() {
        let text = "# TYPE breakwater_requests counter\n\
            breakwater_requests{policy=\"api\",decision=\"allowed\"} 12\n\
            breakwater_requests{policy=\"api\",decision=\"rate_limited\"} 3\n\
            breakwater_breaker_state{policy=\"reco\"} 1\n\
            breakwater_in_flight{policy=\"writes\"} 7\n\
            breakwater_global_degraded{policy=\"orders\"} 1\n\
            breakwater_global_degraded{policy=\"api\"} 0\n\
            breakwater_fault_active{policy=\"api\"} 4\n\
            breakwater_queue_length{policy=\"writes\"} 2\n\
            breakwater_queue_wait_ms_bucket{policy=\"writes\",le=\"5\"} 2\n\
            breakwater_concurrency_limit{policy=\"writes\"} 23\n\
            breakwater_min_rtt_ms{policy=\"writes\"} 41\n\
            breakwater_sample_rtt_ms{policy=\"writes\"} 52\n\
            breakwater_min_rtt_calculation_active{policy=\"writes\"} 1\n\
            breakwater_concurrency_limit{policy=\"api\"} 0\n\
            breakwater_min_rtt_ms{policy=\"api\"} 0\n\
            envoy_cluster_upstream_rq{envoy_cluster_name=\"x\"} 5\n\
            breakwater_requests{decision=\"allowed\"} 99\n";
        let stats = policy_stats(text);
        assert_eq!(stats.keys().collect::<Vec<_>>(), ["api", "orders", "reco", "writes"]);
        assert_eq!(stats["api"].requests[&Counter::Allowed], 12);
        assert_eq!(stats["api"].requests[&Counter::RateLimited], 3);
        assert_eq!(stats["reco"].breaker, Some(BreakerState::Open));
        assert_eq!(stats["writes"].in_flight, Some(7));
        assert_eq!(
            (stats["orders"].global_degraded, stats["api"].global_degraded),
            (Some(true), Some(false))
        );
        assert_eq!(stats["reco"].global_degraded, None);
        assert_eq!((stats["api"].fault_active, stats["reco"].fault_active), (Some(4), None));
        assert_eq!((stats["writes"].queue_length, stats["api"].queue_length), (Some(2), None));
        let adaptive =
            breakwater_api::AdaptiveStats { limit: 23, min_rtt_ms: 41, sample_rtt_ms: 52, probing: true };
        assert_eq!((stats["writes"].adaptive, stats["api"].adaptive), (Some(adaptive), None));
    }

    #[test]
    fn reads_the_applied_version_and_rejections() {
        let stats = "extension_config_discovery.http_filter.breakwater.version_text: \"1\"\n\
            extension_config_discovery.http_filter.breakwater.config_reload: 2\n\
            extension_config_discovery.http_filter.breakwater.update_rejected: 1\n";
        let s = ecds_state(stats, "extension_config_discovery.http_filter.breakwater.");
        assert_eq!(s, EcdsState { applied: Some("1".into()), rejected: 1 });
        assert_eq!(ecds_state("", "x."), EcdsState::default());
    }

    #[test]
    fn finds_rejection_reasons_in_envoys_log() {
        let log = "[..][error][wasm] [wasm.cc:104] Wasm VM failed Failed to load Wasm code\n\
            [..][info][wasm] breakwater: loaded 2 policies\n\
            [..][warning][config] [filesystem_subscription_impl.cc:81] Filesystem config update rejected: Unable to create Wasm plugin breakwater\n";
        assert_eq!(
            rejection_reasons(log),
            ["Failed to load Wasm code", "Unable to create Wasm plugin breakwater"]
        );
    }
}
