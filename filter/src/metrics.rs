//! Envoy metrics per policy and decision, named by [`breakwater_policy::metrics`] (which shows
//! the names and the Prometheus labels they become).
//!
//! Envoy hands out a new metric id on every `define_metric` call, also for a name defined before,
//! and keeps every id for the life of the VM. Defining a policy's metrics again on each
//! reconfiguration would cost a host call per metric (ten per policy, so milliseconds for a large
//! document) and
//! grow Envoy's id tables on every publish, so each VM keeps the ids of the policies it has
//! defined and asks the host only for policies (or gauges) that are new.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use breakwater_policy::enforce::Event;
use breakwater_policy::engine::store;
use breakwater_policy::metrics::{
    BreakerState, Counter, Gauge, Histogram, VM_MEMORY_GAUGE, VM_MEMORY_KEY, counter_name, gauge_name,
    histogram_name,
};
use breakwater_policy::plan::Plan;

use crate::host::{self, HostStore};
use proxy_wasm::types::LogLevel;

#[derive(Debug, Clone, Copy, Default)]
struct PolicyMetrics {
    /// By [`Counter::index`].
    counters: [Option<u32>; Counter::ALL.len()],
    breaker_state: Option<u32>,
    in_flight: Option<u32>,
    global_degraded: Option<u32>,
    fault_active: Option<u32>,
    queue_length: Option<u32>,
    queue_wait: Option<u32>,
    latency: Option<u32>,
    /// An adaptive limit's gauges: the limit, min RTT, sampled latency, probing.
    adaptive: [Option<u32>; 4],
}

/// An adaptive limit's gauges, in [`PolicyMetrics::adaptive`]'s order.
const ADAPTIVE_GAUGES: [Gauge; 4] =
    [Gauge::ConcurrencyLimit, Gauge::MinRttMs, Gauge::SampleRttMs, Gauge::MinRttCalculationActive];

thread_local! {
    /// The ids this VM holds, by policy name: the policies of its current configuration (statics
    /// are per VM and survive a reconfiguration).
    static DEFINED: RefCell<HashMap<String, PolicyMetrics>> = RefCell::default();
}

thread_local! {
    /// The memory gauge's id and this VM's size when it last raised the mark (wasm pages).
    static MEMORY: Cell<(Option<u32>, usize)> = const { Cell::new((None, 0)) };
}

/// When this VM's linear memory grew since it last looked: raises the high-water mark in shared
/// data ([`VM_MEMORY_KEY`]) if it is now the largest, and sets [`VM_MEMORY_GAUGE`] to the mark.
/// One compare on every call; host calls only after a growth.
pub fn record_memory() {
    #[cfg(target_arch = "wasm32")]
    let pages = core::arch::wasm32::memory_size::<0>();
    #[cfg(not(target_arch = "wasm32"))]
    let pages = 0;
    let (mut id, seen) = MEMORY.get();
    if pages == seen {
        return;
    }
    let bytes = (pages as u64).saturating_mul(64 * 1024);
    let mark = store::update(&HostStore, VM_MEMORY_KEY, |stored| {
        let stored = stored.and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
        if bytes > stored { (bytes, Some(bytes.to_le_bytes().to_vec())) } else { (stored, None) }
    });
    ensure(&mut id, || host::define_gauge(VM_MEMORY_GAUGE));
    host::record(id, mark.unwrap_or(bytes));
    MEMORY.set((id, pages));
}

/// `id`, or a new id from the host when there is none yet (a refused definition is asked again).
fn ensure(id: &mut Option<u32>, define: impl FnOnce() -> Option<u32>) {
    if id.is_none() {
        *id = define();
    }
}

#[derive(Default)]
pub struct Metrics {
    policies: Vec<PolicyMetrics>,
    /// The policies' names, by index (breaker transitions are logged with them).
    names: Vec<String>,
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
                    let queue = p.policy.concurrency_limit.as_ref().is_some_and(|c| c.queue.is_some());
                    for (id, c) in m.counters.iter_mut().zip(Counter::ALL) {
                        if (p.global.is_some() || !c.global_only())
                            && (p.fault.is_some() || !c.fault_only())
                            && (queue || !c.queue_only())
                        {
                            ensure(id, || host::define_counter(&counter_name(name, c)));
                        }
                    }
                    if queue {
                        ensure(&mut m.queue_length, || {
                            host::define_gauge(&gauge_name(name, Gauge::QueueLength))
                        });
                        ensure(&mut m.queue_wait, || {
                            host::define_histogram(&histogram_name(name, Histogram::QueueWaitMs))
                        });
                    }
                    ensure(&mut m.latency, || {
                        host::define_histogram(&histogram_name(name, Histogram::UpstreamLatencyMs))
                    });
                    if p.breaker.is_some() {
                        ensure(&mut m.breaker_state, || {
                            host::define_gauge(&gauge_name(name, Gauge::BreakerState))
                        });
                    }
                    if let Some(cl) = &p.policy.concurrency_limit {
                        ensure(&mut m.in_flight, || host::define_gauge(&gauge_name(name, Gauge::InFlight)));
                        if cl.adaptive.is_some() {
                            for (id, gauge) in m.adaptive.iter_mut().zip(ADAPTIVE_GAUGES) {
                                ensure(id, || host::define_gauge(&gauge_name(name, gauge)));
                            }
                        } else {
                            // No longer adaptive (a reload): its gauges say so (a limit is never 0).
                            for id in m.adaptive {
                                host::record(id, 0);
                            }
                        }
                    }
                    if p.global.is_some() {
                        ensure(&mut m.global_degraded, || {
                            host::define_gauge(&gauge_name(name, Gauge::GlobalDegraded))
                        });
                    }
                    if p.fault.as_ref().is_some_and(|f| f.delays()) {
                        ensure(&mut m.fault_active, || {
                            host::define_gauge(&gauge_name(name, Gauge::FaultActive))
                        });
                    }
                    kept.insert(name.to_string(), m);
                    m
                })
                .collect();
            *defined = kept;
            Metrics { policies, names: plan.policies.iter().map(|p| p.name().to_string()).collect() }
        })
    }

    /// Sets a policy's breaker-state gauge.
    pub fn breaker_state(&self, policy: usize, state: BreakerState) {
        if let Some(m) = self.policies.get(policy) {
            host::record(m.breaker_state, state.gauge());
        }
    }

    pub fn count(&self, policy: usize, events: impl Iterator<Item = Event>) {
        let Some(m) = self.policies.get(policy) else { return };
        for event in events {
            match event {
                Event::Breaker(t) => {
                    host::record(m.breaker_state, t.to.state().gauge());
                    if let Some(name) = self.names.get(policy) {
                        // An opening at warn: Envoys (Istio's sidecars among them) often log
                        // nothing below it.
                        let level =
                            if t.to.state() == BreakerState::Open { LogLevel::Warn } else { LogLevel::Info };
                        host::log(level, &t.log_line(name));
                    }
                }
                Event::InFlight(n) => host::record(m.in_flight, u64::from(n)),
                Event::GlobalDegraded(on) => host::record(m.global_degraded, u64::from(on)),
                Event::FaultActive(n) => host::record(m.fault_active, u64::from(n)),
                Event::QueueLength(n) => host::record(m.queue_length, u64::from(n)),
                Event::QueueWaited(ms) => host::record(m.queue_wait, ms),
                Event::UpstreamLatency(ms) => host::record(m.latency, ms),
                Event::Adaptive(r) => {
                    let [limit, min_rtt, sampled, probing] = m.adaptive;
                    host::record(limit, u64::from(r.limit));
                    host::record(min_rtt, r.min_rtt / 1_000_000);
                    host::record(sampled, r.sampled / 1_000_000);
                    host::record(probing, u64::from(r.probing));
                }
                other => {
                    if let Some((c, by)) = other.counter() {
                        host::increment(m.counters.get(c.index()).copied().flatten(), by);
                    }
                }
            }
        }
    }
}
