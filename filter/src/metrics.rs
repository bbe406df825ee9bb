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
//!
//! Envoy hands out a new metric id on every `define_metric` call, also for a name defined before,
//! and keeps every id for the life of the VM. Defining a policy's metrics again on each
//! reconfiguration would cost a host call per metric (10 per policy: 11 ms for 1,000 policies) and
//! grow Envoy's id tables on every publish, so each VM keeps the ids of the policies it has
//! defined and asks the host only for policies (or gauges) that are new.

use std::cell::RefCell;
use std::collections::HashMap;

use breakwater_policy::enforce::{Decision, Event};
use breakwater_policy::plan::Plan;

use crate::host;

/// The counters of one policy, in their order.
pub use breakwater_policy::enforce::COUNTERS as DECISIONS;

#[derive(Debug, Clone, Copy, Default)]
struct PolicyMetrics {
    decisions: [Option<u32>; DECISIONS.len()],
    breaker_state: Option<u32>,
    in_flight: Option<u32>,
}

thread_local! {
    /// The ids this VM holds, by policy name: the policies of its current configuration (statics
    /// are per VM and survive a reconfiguration).
    static DEFINED: RefCell<HashMap<String, PolicyMetrics>> = RefCell::default();
}

/// `id`, or a new id from the host when there is none yet (a refused definition is asked again).
fn ensure(id: &mut Option<u32>, define: impl FnOnce() -> Option<u32>) {
    if id.is_none() {
        *id = define();
    }
}

pub struct Metrics {
    policies: Vec<PolicyMetrics>,
}

/// The counter an event increments, as an index into [`DECISIONS`], and by how much.
fn counter(event: Event) -> Option<(usize, u64)> {
    Some(match event {
        Event::Decision(Decision::Allowed) => (0, 1),
        Event::Decision(Decision::RateLimited) => (1, 1),
        Event::Decision(Decision::ConcurrencyLimited) => (2, 1),
        Event::Decision(Decision::CircuitOpen) => (3, 1),
        Event::Fallback => (4, 1),
        Event::Retried(n) => (5, u64::from(n)),
        Event::BudgetExhausted => (6, 1),
        Event::StateUnavailable => (7, 1),
        Event::Breaker(_) | Event::InFlight(_) => return None,
    })
}

impl Metrics {
    /// The metrics of every policy of a plan: the ids this VM already holds, and new ones from the
    /// host for what it does not hold yet. Policies no longer in the plan are forgotten.
    pub fn define(plan: &Plan) -> Self {
        DEFINED.with_borrow_mut(|defined| {
            let mut kept = HashMap::with_capacity(plan.policies.len());
            let policies = plan
                .policies
                .iter()
                .map(|p| {
                    let name = p.name();
                    let mut m = defined.remove(name).unwrap_or_default();
                    for (id, d) in m.decisions.iter_mut().zip(DECISIONS) {
                        ensure(id, || {
                            host::define_counter(&format!("breakwater.requests.policy.{name}.decision.{d}"))
                        });
                    }
                    if p.breaker.is_some() {
                        ensure(&mut m.breaker_state, || {
                            host::define_gauge(&format!("breakwater.breaker_state.policy.{name}"))
                        });
                    }
                    if p.policy.concurrency_limit.is_some() {
                        ensure(&mut m.in_flight, || {
                            host::define_gauge(&format!("breakwater.in_flight.policy.{name}"))
                        });
                    }
                    kept.insert(name.to_string(), m);
                    m
                })
                .collect();
            *defined = kept;
            Metrics { policies }
        })
    }

    pub fn count(&self, policy: usize, events: impl Iterator<Item = Event>) {
        let Some(m) = self.policies.get(policy) else { return };
        for event in events {
            match event {
                Event::Breaker(t) => host::record(m.breaker_state, t.to.gauge()),
                Event::InFlight(n) => host::record(m.in_flight, u64::from(n)),
                other => {
                    if let Some((i, by)) = counter(other) {
                        host::increment(m.decisions.get(i).copied().flatten(), by);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every counted event lands on the counter of its own name.
    #[test]
    fn events_map_to_their_counters() {
        let cases = [
            (Event::Decision(Decision::Allowed), "allowed"),
            (Event::Decision(Decision::RateLimited), "rate_limited"),
            (Event::Decision(Decision::ConcurrencyLimited), "concurrency_limited"),
            (Event::Decision(Decision::CircuitOpen), "circuit_open"),
            (Event::Fallback, "fallback"),
            (Event::Retried(3), "retried"),
            (Event::BudgetExhausted, "budget_exhausted"),
            (Event::StateUnavailable, "state_unavailable"),
        ];
        for (event, name) in cases {
            let (i, _) = counter(event).unwrap();
            assert_eq!(DECISIONS[i], name);
        }
        assert_eq!(counter(Event::Retried(3)).map(|c| c.1), Some(3));
        for d in
            [Decision::Allowed, Decision::RateLimited, Decision::ConcurrencyLimited, Decision::CircuitOpen]
        {
            assert_eq!(DECISIONS[counter(Event::Decision(d)).unwrap().0], d.as_str());
        }
    }
}
