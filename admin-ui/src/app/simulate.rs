//! The simulate page: a scenario run through the compiled filter against the editor's document,
//! with its expectations and charts.

use leptos::prelude::*;
use leptos::task::spawn_local;

use breakwater_api::{ScenarioFile, SimulateBody, Simulation};
use breakwater_policy::Diagnostic;
use breakwater_policy::metrics::Gauge;

use super::Ctx;
use super::charts::{Chart, StateBand};
use crate::api;
use crate::chart;
use crate::editor::CodeEditor;

#[component]
pub(super) fn SimulatePage() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let scenarios = RwSignal::new(Vec::<ScenarioFile>::new());
    let scenario = RwSignal::new(String::from(
        "name: a steady 50 requests a second\nduration: 10s\nworkers: 2\ntraffic:\n  - rate: 50/s\n    host: api.example.com\n    path: /\n",
    ));
    let result = RwSignal::new(None::<Simulation>);
    let error = RwSignal::new(None::<(String, Vec<Diagnostic>)>);
    let running = RwSignal::new(false);
    // The scenario checked as it is typed, against the edited document when that one is valid.
    let scenario_diags = Memo::new(move |_| {
        let text = scenario.get();
        // The model the shell already decoded (the last valid one: the current one when valid).
        let valid = ctx.diags.with(|(valid, _)| *valid);
        let checked = ctx.model.with(|model| match model.as_ref().filter(|_| valid) {
            Some(document) => breakwater_scenario::load_with_policy(&text, document).map(|_| ()),
            None => breakwater_scenario::load(&text).map(|_| ()),
        });
        checked.err().unwrap_or_default()
    });
    spawn_local(async move {
        if let Ok(list) = api::get::<Vec<ScenarioFile>>("/scenarios").await {
            scenarios.set(list);
        }
    });
    let run = move |_| {
        running.set(true);
        error.set(None);
        let body = SimulateBody { policy: ctx.text.get_untracked(), scenario: scenario.get_untracked() };
        spawn_local(async move {
            let answer = api::send::<_, Simulation>("POST", "/simulate", Some(&body)).await;
            running.set(false);
            match answer {
                Ok(simulation) => result.set(Some(simulation)),
                Err(e) => {
                    error.set(Some((e.message(), e.body.diagnostics)));
                    result.set(None);
                }
            }
        });
    };
    view! {
        <div class="simulate">
            <div class="toolbar">
                <label>"Scenario "
                    <select data-testid="scenario-pick" on:change=move |ev| {
                        let file = event_target_value(&ev);
                        if let Some(s) = scenarios.get_untracked().iter().find(|s| s.file == file) {
                            scenario.set(s.text.clone());
                        }
                    }>
                        <option value="">"(write your own)"</option>
                        {move || scenarios.get().into_iter().map(|s| {
                            view! { <option value=s.file.clone()>{format!("{} — {}", s.file, s.name)}</option> }
                        }).collect_view()}
                    </select>
                </label>
                <span class="hint">"runs against the editor's document (saved or not); the scenario's own policy is ignored"</span>
                <button class="primary" data-testid="run-simulation" disabled=move || running.get() || !ctx.diags.get().0
                    on:click=run>{move || if running.get() { "Running…" } else { "Run" }}</button>
            </div>
            <CodeEditor text=scenario on_change=Callback::new(move |t| scenario.set(t)) diagnostics=scenario_diags
                label="scenario (YAML)" testid="scenario" class="scenario"/>
            {move || error.get().map(|(m, d)| view! {
                <div class="notice" data-testid="simulation-error">{m}
                    <ul>{d.into_iter().map(|d| view! { <li>{format!("{}: {}", d.path, d.message)}</li> }).collect_view()}</ul>
                </div>
            })}
            {move || result.get().map(|r| view! { <SimulationResult r/> })}
        </div>
    }
}

#[component]
fn SimulationResult(r: Simulation) -> impl IntoView {
    let report = r.report;
    let timeline = &report.timeline;
    let decisions = chart::series_of(timeline, |s| &s.by_decision);
    let statuses = chart::series_of(timeline, |s| &s.by_status);
    let retries = chart::series_of_numbers(
        timeline,
        &[("retries", |s| s.retries), ("budget_exhausted", |s| s.budget_exhausted)],
    );
    let bands = chart::breaker_bands(timeline);
    let queues = chart::gauge_series(timeline, Gauge::QueueLength.as_str());
    let limits = chart::gauge_series(timeline, Gauge::ConcurrencyLimit.as_str());
    let summary = format!(
        "{} requests over {} s on {} workers, simulated in {:.0} ms",
        report.requests, report.duration_s, report.workers, r.wall_ms
    );
    let no_expectations = report.expectations.is_empty();
    let expectations = report.expectations;
    view! {
        <section class="result" data-testid="simulation-result">
            <p>{summary}</p>
            {no_expectations.then(|| view! {
                <p class="hint">"This scenario has no expectations (add an `expect:` list to check numbers)."</p>
            })}
            <table class="expectations" data-testid="expectations" class:empty=no_expectations>
                <tr><th scope="col"><span class="sr-only">"verdict"</span></th><th scope="col">"measured"</th><th scope="col">"expected"</th><th scope="col">"found"</th></tr>
                {expectations.into_iter().map(|e| {
                    let passed = e.passed;
                    view! { <tr class:fail=!passed>
                        <td class="verdict">{if passed { "PASS" } else { "FAIL" }}</td>
                        <td>{e.name.unwrap_or(e.measured)}</td>
                        <td>{e.expected}</td>
                        <td>{e.actual}</td>
                    </tr> }
                }).collect_view()}
            </table>
            <Chart title="Requests per second by decision" id="chart-decisions" series=decisions/>
            <Chart title="Requests per second by status" id="chart-status" series=statuses/>
            <Chart title="Retries and exhausted budget per second" id="chart-retries" series=retries/>
            {(!queues.is_empty()).then(|| view! {
                <Chart title="Requests waiting in a queue, at the end of each second" id="chart-queue" series=queues unit=""/>
            })}
            {(!limits.is_empty()).then(|| view! {
                <Chart title="Adaptive concurrency limit, at the end of each second" id="chart-adaptive" series=limits unit=""/>
            })}
            {(!bands.is_empty()).then(|| view! {
                <h3>"Breaker state"</h3>
                <div class="bands" data-testid="chart-breaker">
                    {bands.into_iter().map(|(policy, cells)| view! {
                        <StateBand label=policy.clone() testid=format!("band-{policy}") cells/>
                    }).collect_view()}
                </div>
            })}
        </section>
    }
}
