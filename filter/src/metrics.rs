//! Envoy metrics per policy and decision.
//!
//! Names carry their labels as `.policy.<name>` and `.decision.<decision>` segments, which the
//! `stats_tags` of the shipped Envoy configurations (envoy/) turn into Prometheus labels:
//!
//! ```text
//! breakwater.requests.policy.checkout.decision.rate_limited
//!   → breakwater_requests{policy="checkout",decision="rate_limited"}
//! breakwater.breaker_state.policy.checkout   (gauge: 0 closed, 1 open, 2 half-open)
//! breakwater.in_flight.policy.checkout       (gauge: requests holding a concurrency slot)
//! ```
//!
//! `retried` counts retries performed (not requests); every other decision counts requests.

use breakwater_policy::enforce::{Decision, Event};
use breakwater_policy::plan::Plan;

use crate::host;

/// The counters of one policy, in the order of [`DECISIONS`].
pub const DECISIONS: [&str; 8] = [
    "allowed",
    "rate_limited",
    "concurrency_limited",
    "circuit_open",
    "fallback",
    "retried",
    "budget_exhausted",
    "state_unavailable",
];

struct PolicyMetrics {
    decisions: [Option<u32>; DECISIONS.len()],
    breaker_state: Option<u32>,
    in_flight: Option<u32>,
}

pub struct Metrics {
    policies: Vec<PolicyMetrics>,
}

fn slot(name: &str) -> usize {
    DECISIONS.iter().position(|d| *d == name).unwrap_or(0)
}

impl Metrics {
    /// Defines every metric of a plan (defining an existing name returns the same metric).
    pub fn define(plan: &Plan) -> Self {
        let policies =
            plan.policies
                .iter()
                .map(|p| {
                    let name = p.name();
                    PolicyMetrics {
                        decisions: DECISIONS.map(|d| {
                            host::define_counter(&format!("breakwater.requests.policy.{name}.decision.{d}"))
                        }),
                        breaker_state: p.breaker.as_ref().and_then(|_| {
                            host::define_gauge(&format!("breakwater.breaker_state.policy.{name}"))
                        }),
                        in_flight: p
                            .policy
                            .concurrency_limit
                            .as_ref()
                            .and_then(|_| host::define_gauge(&format!("breakwater.in_flight.policy.{name}"))),
                    }
                })
                .collect();
        Metrics { policies }
    }

    pub fn count(&self, policy: usize, events: impl Iterator<Item = Event>) {
        let Some(m) = self.policies.get(policy) else { return };
        let counter = |name: &str| m.decisions.get(slot(name)).copied().flatten();
        for event in events {
            match event {
                Event::Decision(d) => host::increment(counter(decision_name(d)), 1),
                Event::BudgetExhausted => host::increment(counter("budget_exhausted"), 1),
                Event::Retried(n) => host::increment(counter("retried"), u64::from(n)),
                Event::Fallback => host::increment(counter("fallback"), 1),
                Event::StateUnavailable => host::increment(counter("state_unavailable"), 1),
                Event::Breaker(t) => host::record(m.breaker_state, t.to.gauge()),
                Event::InFlight(n) => host::record(m.in_flight, u64::from(n)),
            }
        }
    }
}

fn decision_name(d: Decision) -> &'static str {
    d.as_str()
}
