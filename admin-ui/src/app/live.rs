//! The live page: breakwater's counters, breaker states and global limits' state from Envoy,
//! refreshed every 2 s; one column per counter of [`Counter::ALL`].

use breakwater_policy::metrics::Counter;
use leptos::prelude::*;

use super::{Ctx, envoy_state};

#[component]
pub(super) fn LivePage() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    view! {
        <div class="live">
            <p>{move || ctx.status.with(|s| envoy_state(s.as_ref()))} " · refreshed every 2 s"</p>
            <table data-testid="live-table">
                <tr><th>"policy"</th>
                    {Counter::ALL.map(|c| view! { <th>{c.as_str().replace('_', " ")}</th> }).to_vec()}
                    <th>"in flight"</th><th>"breaker"</th><th>"global"</th></tr>
                {move || {
                    let policies = ctx.status.with(|s| s.as_ref().map(|s| s.policies.clone()).unwrap_or_default());
                    policies.into_iter().map(|(name, p)| {
                        let breaker = p.breaker.map_or("–".to_string(), |b| b.to_string());
                        view! { <tr data-testid=format!("live-{name}")>
                            <td>{name.clone()}</td>
                            {Counter::ALL.map(|c| view! {
                                <td data-testid=format!("live-{name}-{c}")>{p.requests.get(&c).copied().unwrap_or(0)}</td>
                            }).to_vec()}
                            <td data-testid=format!("live-{name}-in-flight")>{in_flight(&p)}</td>
                            <td><span class=format!("breaker {breaker}")>{breaker.clone()}</span></td>
                            <td data-testid=format!("live-{name}-global")>{global_state(p.global_degraded)}</td>
                        </tr> }
                    }).collect::<Vec<_>>()
                }}
            </table>
        </div>
    }
}

/// Requests in flight, and an adaptive limit's limit beside them (`7 / 25`, and `probing` while
/// it measures the min RTT).
pub(super) fn in_flight(p: &breakwater_api::PolicyStats) -> String {
    let n = p.in_flight.map_or("–".to_string(), |v| v.to_string());
    match p.adaptive {
        Some(a) if a.probing => format!("{n} / {} (probing)", a.limit),
        Some(a) => format!("{n} / {} (min RTT {} ms)", a.limit, a.min_rtt_ms),
        None => n,
    }
}

/// A global limit's state as the live page shows it: `degraded` while the Envoy decides on its
/// local share because the rate-limit service does not answer (the `breakwater_global_degraded`
/// gauge), `service` while it asks the service, `–` for policies without a global limit.
pub(super) fn global_state(degraded: Option<bool>) -> &'static str {
    match degraded {
        Some(true) => "degraded",
        Some(false) => "service",
        None => "–",
    }
}
