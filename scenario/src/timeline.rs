//! The per-second series of a run, for charts (the admin's simulation view and `breakwater test`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::*;
use crate::run::Run;

/// Per-second series of a run, for charts. Requests are counted in the second they arrived.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Timeline {
    pub policies: Vec<String>,
    pub seconds: Vec<Second>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Second {
    /// Seconds since the start.
    pub t: u64,
    pub requests: u64,
    pub by_decision: BTreeMap<String, u64>,
    /// By status code; `aborted` for clients that gave up.
    pub by_status: BTreeMap<String, u64>,
    /// Decisions per policy.
    pub by_policy: BTreeMap<String, BTreeMap<String, u64>>,
    pub fallback: u64,
    pub retries: u64,
    pub budget_exhausted: u64,
    pub upstream_attempts: u64,
    /// Most requests in flight at once during the second (client side).
    pub max_in_flight: u64,
    /// Most attempts in the upstream at once during the second.
    pub max_upstream_concurrency: u64,
    /// Breaker state per policy at the end of the second.
    pub breaker: BTreeMap<String, BreakerState>,
    /// The policies' other gauges at the end of the second (`in_flight`, `queue_length`, ...):
    /// policy → gauge → value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gauges: BTreeMap<String, BTreeMap<String, u64>>,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

/// The per-second series of a run.
pub fn timeline(run: &Run) -> Timeline {
    let buckets = run.duration_ns.div_ceil(NS_PER_S).max(1) as usize;
    let mut seconds: Vec<Second> =
        (0..buckets).map(|t| Second { t: t as u64, ..Second::default() }).collect();
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); buckets];
    for r in &run.records {
        let b = ((r.start_ns / NS_PER_S) as usize).min(buckets - 1);
        let (Some(sec), Some(lat)) = (seconds.get_mut(b), latencies.get_mut(b)) else { continue };
        sec.requests += 1;
        *sec.by_decision.entry(r.decision.as_str().into()).or_default() += 1;
        let status = if r.status == 0 { "aborted".to_string() } else { r.status.to_string() };
        *sec.by_status.entry(status).or_default() += 1;
        if let Some(p) = r.policy.and_then(|i| run.policies.get(i as usize)) {
            *sec.by_policy.entry(p.clone()).or_default().entry(r.decision.as_str().into()).or_default() += 1;
        }
        sec.fallback += u64::from(r.fallback);
        sec.retries += u64::from(r.retried);
        sec.budget_exhausted += u64::from(r.budget_exhausted);
        sec.upstream_attempts += u64::from(r.tries.1 - r.tries.0);
        if r.status != 0 {
            lat.push(r.end_ns - r.start_ns);
        }
    }
    let in_flight =
        max_overlap_per_bucket(run.records.iter().map(|r| (r.start_ns, r.end_ns)), buckets, NS_PER_S);
    let upstream = max_overlap_per_bucket(run.tries.iter().copied(), buckets, NS_PER_S);
    for (i, sec) in seconds.iter_mut().enumerate() {
        sec.max_in_flight = in_flight.get(i).copied().unwrap_or(0);
        sec.max_upstream_concurrency = upstream.get(i).copied().unwrap_or(0);
        if let Some(lat) = latencies.get_mut(i) {
            lat.sort_unstable();
            sec.latency_p50_ms = percentile(lat, 0.5);
            sec.latency_p99_ms = percentile(lat, 0.99);
        }
        let end = ((i as u64 + 1) * NS_PER_S).min(run.duration_ns);
        if let Some((_, states)) = run.breaker_samples.iter().find(|(t, _)| *t == end) {
            for (p, state) in run.policies.iter().zip(states) {
                if let Some(state) = state {
                    sec.breaker.insert(p.clone(), *state);
                }
            }
        }
        if let Some((_, gauges)) = run.gauge_samples.iter().find(|(t, _)| *t == end) {
            for (p, gauge, value) in gauges {
                if let Some(name) = run.policies.get(*p as usize) {
                    sec.gauges.entry(name.clone()).or_default().insert(gauge.as_str().to_string(), *value);
                }
            }
        }
    }
    Timeline { policies: run.policies.clone(), seconds }
}

/// The `p` quantile (0 to 1) of sorted nanoseconds, in milliseconds (0 for no values).
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted.get(i).map_or(0.0, |v| *v as f64 / NS_PER_MS as f64)
}

/// The starts (+1) and ends (-1) of non-empty intervals, in time order. Ends sort before starts
/// at the same instant: back-to-back intervals do not overlap.
fn edges(intervals: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, i8)> {
    let mut edges: Vec<(u64, i8)> = Vec::new();
    for (s, e) in intervals {
        if e > s {
            edges.push((s, 1));
            edges.push((e, -1));
        }
    }
    edges.sort_unstable();
    edges
}

/// The highest number of overlapping intervals.
pub(crate) fn max_overlap(intervals: impl Iterator<Item = (u64, u64)>) -> u64 {
    let (mut level, mut max) = (0i64, 0i64);
    for (_, d) in edges(intervals) {
        level += i64::from(d);
        max = max.max(level);
    }
    max as u64
}

/// Per-bucket maximum of overlapping intervals, buckets of `width` ns.
fn max_overlap_per_bucket(
    intervals: impl Iterator<Item = (u64, u64)>,
    buckets: usize,
    width: u64,
) -> Vec<u64> {
    let mut out = vec![0u64; buckets];
    let mut level = 0i64;
    let mut bucket = 0usize;
    for (t, d) in edges(intervals) {
        let b = (t / width) as usize;
        while bucket < b.min(buckets) {
            bucket += 1;
            if let Some(slot) = out.get_mut(bucket) {
                *slot = level.max(0) as u64; // carried into the next second
            }
        }
        level += i64::from(d);
        if let Some(slot) = out.get_mut(b) {
            *slot = (*slot).max(level.max(0) as u64);
        }
    }
    while bucket + 1 < buckets {
        bucket += 1;
        if let Some(slot) = out.get_mut(bucket) {
            *slot = level.max(0) as u64;
        }
    }
    out
}
