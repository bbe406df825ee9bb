//! The live page: breakwater's counters, breaker states and global limits' state from Envoy,
//! refreshed every 2 s; one column per counter of [`Counter::ALL`].

use breakwater_api::Live;
use breakwater_policy::metrics::Counter;
use leptos::prelude::*;
use leptos::task::spawn_local;

use super::charts::{Chart, StateBand};
use super::{Ctx, story};
use crate::{api, chart};

#[component]
pub(super) fn LivePage() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let live = RwSignal::new(None::<Live>);
    let failed = RwSignal::new(None::<String>);
    let refresh = move || {
        spawn_local(async move {
            match api::get::<Live>("/live").await {
                Ok(l) => {
                    live.set(Some(l));
                    failed.set(None);
                }
                // The charts stay, marked stale.
                Err(f) => failed.set(Some(f.message())),
            }
        })
    };
    refresh();
    if let Ok(handle) = set_interval_with_handle(refresh, std::time::Duration::from_secs(5)) {
        on_cleanup(move || handle.clear());
    }
    view! {
        <div class="live">
            <p>{move || ctx.status.with(|s| s.as_ref().map(|s| {
                let address = s.envoy.address.clone().unwrap_or_default();
                format!("Envoy {address} · {}", story(s).envoy)
            }))} " · refreshed every 2 s"</p>
            {move || failed.get().map(|e| view! { <p class="error" data-testid="live-stale">"Not refreshed: " {e}</p> })}
            {move || live.get().map(|l| view! { <Dashboard live=l/> })}
            <div class="table-scroll" tabindex="0" role="region" aria-label="counters per policy"><table data-testid="live-table">
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
            </table></div>
        </div>
    }
}

/// Firing alerts, then per policy its charts over the last 15 minutes, then the breaker
/// transitions from Envoy's log.
#[component]
fn Dashboard(live: Live) -> impl IntoView {
    let minutes = (live.points as u64 * live.step_s) / 60;
    let source = match live.source.as_str() {
        "prometheus" => "from Prometheus",
        "envoy" => "sampled from Envoy by the admin server",
        _ => "no Envoy configured",
    };
    let unreachable = live.alerts_error.clone().map(|e| view! {
        <section class="alerts firing" data-testid="live-alerts"><h3>"Alertmanager could not be asked"</h3><p>{e}</p></section>
    });
    let alerts = live.alerts.clone().map(|alerts| {
        let firing = !alerts.is_empty();
        view! {
            <section class="alerts" class:firing=firing data-testid="live-alerts">
                <h3>{match alerts.len() {
                    0 => "No alert firing".to_string(),
                    1 => "1 alert firing".to_string(),
                    n => format!("{n} alerts firing"),
                }}</h3>
                <ul>{alerts.into_iter().map(|a| view! {
                    <li data-testid=format!("alert-{}", a.name)>
                        <b>{a.name.clone()}</b> " " {a.severity.clone().unwrap_or_default()} " · "
                        {a.summary.clone().unwrap_or_default()} " · since " {chart::clock_of(&a.since)}
                    </li>
                }).collect_view()}</ul>
            </section>
        }
    });
    let transitions = live.transitions.clone();
    let time = chart::TimeAxis::Clock { start: live.start, step: live.step_s.max(1) };
    view! {
        <section class="dashboard" data-testid="live-dashboard">
            {alerts}
            {unreachable}
            <p class="hint">{format!("The last {minutes} minutes, {source}.")}
                {live.error.clone().map(|e| view! { <span class="error">" " {e}</span> })}</p>
            {live.policies.into_iter().map(|(name, p)| {
                let decisions = chart::live_series(&p.decisions);
                let band = p.breaker.as_ref().map(|b| chart::state_cells(b));
                let in_flight = p.in_flight.clone().map(|v| vec![chart::Series {
                    label: "in flight".into(),
                    color: "#1565c0",
                    values: v.iter().map(|x| x.unwrap_or(0.0)).collect(),
                }]);
                let limit = p.limit.clone().map(|l| ("limit".to_string(), l));
                view! {
                    <div class="policy-live" data-testid=format!("live-policy-{name}")>
                        <h3>{name.clone()}</h3>
                        <Summary name=name.clone() decisions=p.decisions.clone()/>
                        <Chart title="Decisions per second" id=format!("live-{name}-decisions") series=decisions time/>
                        {band.map(|cells| view! {
                            <StateBand label="breaker" testid=format!("live-{name}-breaker") cells time/>
                        })}
                        {in_flight.map(|series| match limit {
                            Some(line) => view! { <Chart title="In flight vs limit" id=format!("live-{name}-in-flight") series=series unit="" line=line time/> }.into_any(),
                            None => view! { <Chart title="In flight" id=format!("live-{name}-in-flight") series=series unit="" time/> }.into_any(),
                        })}
                    </div>
                }
            }).collect_view()}
            <section data-testid="live-transitions">
                <h3>"Breaker transitions"</h3>
                {if transitions.is_empty() {
                    view! { <p class="empty">"None in the end of Envoy's log (with --envoy-log; openings are logged at warn, the other transitions at info)."</p> }.into_any()
                } else {
                    view! { <ul>{transitions.into_iter().rev().map(|t| view! {
                        <li>{t.at} " · " <b>{t.policy}</b> " " {t.from} " → " {t.to} " " {t.detail}</li>
                    }).collect_view()}</ul> }.into_any()
                }}
            </section>
        </section>
    }
}

/// A policy at a glance: requests per second allowed, limited and failing over the last minute.
#[component]
fn Summary(name: String, decisions: std::collections::BTreeMap<String, Vec<Option<f64>>>) -> impl IntoView {
    let g = chart::glance(&decisions, 12);
    let tile = move |label: &'static str, class: &'static str, title: &'static str, v: Option<f64>| {
        view! {
            <div class=format!("tile {class}") title=title>
                <b data-testid=format!("glance-{name}-{class}")>{v.map_or("–".to_string(), |v| format!("{}/s", chart::number(v)))}</b>
                <span>{label}</span>
            </div>
        }
    };
    view! {
        <div class="glance" role="group" aria-label="the last minute at a glance">
            {tile("allowed", "allowed", "allowed", g.map(|g| g.allowed))}
            {tile("limited", "limited", "rate_limited, global_rate_limited, concurrency_limited, queue_timeout", g.map(|g| g.limited))}
            {tile("failing", "failing", "circuit_open, fault_aborted", g.map(|g| g.failing))}
            <span class="hint">"mean of the last minute"</span>
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
