//! What a simulation produced: one record per request, the upstream's attempts, breaker states
//! sampled over time and the filter's metrics at the end. host-test fills it in.

use std::collections::BTreeMap;

use crate::model::*;

/// One simulated request, as the client and the filter's counters saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    pub traffic: u32,
    /// Since the scenario started.
    pub start_ns: u64,
    pub end_ns: u64,
    /// 0: the client gave up before an answer.
    pub status: u16,
    /// Index into [`Run::policies`] of the policy that decided, if any.
    pub policy: Option<u32>,
    pub decision: RequestDecision,
    pub fallback: bool,
    pub retried: u32,
    pub budget_exhausted: bool,
    /// The filter answered (a rejection, a fallback), not the upstream.
    pub local: bool,
    /// Attempts that reached the upstream, as a range of [`Run::tries`].
    pub tries: (u32, u32),
}

/// One policy's gauge at a sample time: (policy index, gauge, value).
pub type GaugeSample = (u32, Gauge, u64);

/// What a simulation produced.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub policies: Vec<String>,
    pub traffic: Vec<String>,
    pub records: Vec<Record>,
    /// Attempts in the upstream, (start, end) in ns since the scenario started.
    pub tries: Vec<(u64, u64)>,
    /// Breaker states sampled at times (ns since start), per policy (None: no breaker).
    pub breaker_samples: Vec<(u64, Vec<Option<BreakerState>>)>,
    /// The policies' other gauges (in flight, queue length, ...) sampled at the same times:
    /// (policy index, gauge, value).
    pub gauge_samples: Vec<(u64, Vec<GaugeSample>)>,
    /// Every metric at the end, by name.
    pub metrics: BTreeMap<String, u64>,
    pub duration_ns: u64,
    pub workers: u32,
    pub seed: u64,
}

/// The times at which a run must sample breaker states: every whole second, and every `at`.
pub fn sample_times(s: &Scenario) -> Vec<u64> {
    let end = s.duration.as_nanos();
    let mut t: Vec<u64> = (1..=end / NS_PER_S).map(|k| k * NS_PER_S).collect();
    if !end.is_multiple_of(NS_PER_S) {
        t.push(end);
    }
    t.extend(s.expect.iter().filter_map(|e| match &e.measure {
        Measure::Breaker { at, .. } => Some(at.as_nanos()),
        _ => None,
    }));
    t.sort_unstable();
    t.dedup();
    t
}
