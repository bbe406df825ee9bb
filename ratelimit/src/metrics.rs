//! The service's Prometheus metrics, kept in atomics and written out in the text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Latency buckets of a check, in microseconds (the last is +Inf).
const LATENCY_BUCKETS_US: [u64; 10] = [250, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 500_000];

#[derive(Debug, Default)]
pub struct Metrics {
    pub checks_ok: AtomicU64,
    pub checks_over_limit: AtomicU64,
    /// Descriptors that name no limit of the loaded document (answered OK, nothing counted).
    pub unknown_descriptors: AtomicU64,
    /// Calls answered UNAVAILABLE because Redis did not answer in time (or failed).
    pub redis_errors: AtomicU64,
    /// Tokens handed out in leases, and given back.
    pub lease_tokens_granted: AtomicU64,
    pub lease_tokens_refunded: AtomicU64,
    /// Script runs (one Redis round trip each).
    pub redis_calls: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Policies with a global limit in the loaded document.
    pub limits: AtomicU64,
    /// Envoys that called in the last minute (what `degraded.learn` uses).
    pub envoys: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
}

impl Metrics {
    pub fn observe_latency(&self, micros: u64) {
        let i = LATENCY_BUCKETS_US.iter().position(|b| micros <= *b).unwrap_or(LATENCY_BUCKETS_US.len());
        if let Some(bucket) = self.latency.get(i) {
            bucket.fetch_add(1, Relaxed);
        }
        self.latency_sum_us.fetch_add(micros, Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, labels: &[(&str, &AtomicU64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (label, value) in labels {
                let _ = writeln!(out, "{name}{label} {}", value.load(Relaxed));
            }
        };
        counter(
            "breakwater_ratelimit_checks_total",
            "Descriptors checked, by decision.",
            &[("{decision=\"ok\"}", &self.checks_ok), ("{decision=\"over_limit\"}", &self.checks_over_limit)],
        );
        counter(
            "breakwater_ratelimit_unknown_descriptors_total",
            "Descriptors that name no global limit of the loaded policy document.",
            &[("", &self.unknown_descriptors)],
        );
        counter(
            "breakwater_ratelimit_redis_errors_total",
            "Calls answered UNAVAILABLE because Redis failed or did not answer in time.",
            &[("", &self.redis_errors)],
        );
        counter(
            "breakwater_ratelimit_redis_calls_total",
            "Bucket updates sent to Redis.",
            &[("", &self.redis_calls)],
        );
        counter(
            "breakwater_ratelimit_lease_tokens_total",
            "Tokens handed out in leases, and given back unspent.",
            &[
                ("{event=\"granted\"}", &self.lease_tokens_granted),
                ("{event=\"refunded\"}", &self.lease_tokens_refunded),
            ],
        );
        counter(
            "breakwater_ratelimit_reloads_total",
            "Policy documents loaded after a change, by result.",
            &[("{result=\"ok\"}", &self.reloads_ok), ("{result=\"rejected\"}", &self.reloads_failed)],
        );
        for (name, help, value) in [
            ("breakwater_ratelimit_limits", "Global limits in the loaded policy document.", &self.limits),
            ("breakwater_ratelimit_envoys", "Envoys that called in the last minute.", &self.envoys),
        ] {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", value.load(Relaxed));
        }
        let name = "breakwater_ratelimit_check_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Time to answer one call.\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.latency.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le =
                LATENCY_BUCKETS_US.get(i).map_or("+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum {}", self.latency_sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_cumulative_buckets() {
        let m = Metrics::default();
        for us in [100, 900, 3000, 10_000_000] {
            m.observe_latency(us);
        }
        let text = m.render();
        assert!(
            text.contains("breakwater_ratelimit_check_duration_seconds_bucket{le=\"0.00025\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("breakwater_ratelimit_check_duration_seconds_bucket{le=\"0.001\"} 2\n"));
        assert!(text.contains("breakwater_ratelimit_check_duration_seconds_bucket{le=\"0.5\"} 3\n"));
        assert!(text.contains("breakwater_ratelimit_check_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("breakwater_ratelimit_check_duration_seconds_count 4\n"));
    }
}
