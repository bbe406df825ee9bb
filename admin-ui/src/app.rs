//! The admin's pages: policies (list and editor), simulate, publish, history, live.

use breakwater_policy::Diagnostic;
use leptos::prelude::*;
use leptos::task::spawn_local;
use serde_json::{Value, json};

use crate::api;
use crate::chart;
use crate::form::{self, BLOCKS, Kind};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tab {
    Policies,
    Simulate,
    Publish,
    History,
    Live,
}

impl Tab {
    const ALL: [Tab; 5] = [Tab::Policies, Tab::Simulate, Tab::Publish, Tab::History, Tab::Live];
    fn title(self) -> &'static str {
        match self {
            Tab::Policies => "Policies",
            Tab::Simulate => "Simulate",
            Tab::Publish => "Publish",
            Tab::History => "History",
            Tab::Live => "Live",
        }
    }
    fn id(self) -> &'static str {
        match self {
            Tab::Policies => "policies",
            Tab::Simulate => "simulate",
            Tab::Publish => "publish",
            Tab::History => "history",
            Tab::Live => "live",
        }
    }
}

/// The state every page shares.
#[derive(Clone, Copy)]
struct Ctx {
    /// The document as the form sees it.
    doc: RwSignal<Value>,
    /// The document as YAML: what is validated, saved and simulated.
    text: RwSignal<String>,
    /// The text of the active version on the server.
    saved: RwSignal<String>,
    version: RwSignal<u64>,
    diags: Memo<(bool, Vec<Diagnostic>)>,
    selected: RwSignal<Option<usize>>,
    tab: RwSignal<Tab>,
    status: RwSignal<Value>,
    notice: RwSignal<Option<(bool, String)>>,
}

impl Ctx {
    /// A form edit: the document changes, the YAML follows.
    fn edit(&self, f: impl FnOnce(&mut Value)) {
        self.doc.update(f);
        let yaml = breakwater_policy::yaml::to_yaml_ordered(
            &self.doc.get_untracked(),
            breakwater_policy::yaml::DOCUMENT_KEY_ORDER,
        );
        self.text.set(yaml);
    }

    /// A YAML edit: the text changes, the form follows when the text parses.
    fn set_text(&self, t: String) {
        if let Ok(v) = breakwater_policy::yaml::from_yaml(&t) {
            self.doc.set(v);
        }
        self.text.set(t);
    }

    fn load(&self) {
        let ctx = *self;
        spawn_local(async move {
            let a = api::call("GET", "/policy", None).await;
            if a.ok() {
                let text = a.body["text"].as_str().unwrap_or_default().to_string();
                ctx.saved.set(text.clone());
                ctx.version.set(a.body["version"].as_u64().unwrap_or(0));
                ctx.set_text(text);
                let n = ctx.doc.get_untracked().get("policies").and_then(Value::as_array).map_or(0, Vec::len);
                if ctx.selected.get_untracked().is_none_or(|i| i >= n) {
                    ctx.selected.set((n > 0).then_some(0));
                }
            } else {
                ctx.notice.set(Some((false, a.error())));
            }
        });
    }
}

#[component]
pub fn App() -> impl IntoView {
    let authed = RwSignal::new(api::token().is_some());
    view! {
        <Show when=move || authed.get() fallback=move || view! { <Login authed/> }>
            <Admin/>
        </Show>
    }
}

#[component]
fn Login(authed: RwSignal<bool>) -> impl IntoView {
    let input = RwSignal::new(String::new());
    view! {
        <main class="login">
            <h1>"breakwater"</h1>
            <p>"Paste the admin token (printed by " <code>"breakwater serve"</code> ")."</p>
            <form on:submit=move |ev| {
                ev.prevent_default();
                api::set_token(input.get_untracked().trim());
                authed.set(true);
            }>
                <input type="password" data-testid="token" aria-label="token"
                    prop:value=move || input.get() on:input=move |ev| input.set(event_target_value(&ev))/>
                <button type="submit" data-testid="login">"Open"</button>
            </form>
        </main>
    }
}

#[component]
fn Admin() -> impl IntoView {
    let text = RwSignal::new(String::new());
    let diags = Memo::new(move |_| {
        let t = text.get();
        match breakwater_policy::load(&t) {
            Ok(l) => (true, l.warnings),
            Err(d) => (false, d),
        }
    });
    let ctx = Ctx {
        doc: RwSignal::new(json!({ "version": 1, "policies": [] })),
        text,
        saved: RwSignal::new(String::new()),
        version: RwSignal::new(0),
        diags,
        selected: RwSignal::new(None),
        tab: RwSignal::new(Tab::Policies),
        status: RwSignal::new(Value::Null),
        notice: RwSignal::new(None),
    };
    provide_context(ctx);
    ctx.load();
    let refresh = move || {
        spawn_local(async move {
            let a = api::call("GET", "/status", None).await;
            if a.ok() {
                ctx.status.set(a.body);
            }
        })
    };
    refresh();
    set_interval(refresh, std::time::Duration::from_secs(2));
    view! {
        <header>
            <span class="brand">"breakwater"</span>
            <nav role="tablist">
                {Tab::ALL.into_iter().map(|t| view! {
                    <button role="tab" data-testid=format!("tab-{}", t.id())
                        class:active=move || ctx.tab.get() == t
                        aria-selected=move || (ctx.tab.get() == t).to_string()
                        on:click=move |_| ctx.tab.set(t)>{t.title()}</button>
                }).collect_view()}
            </nav>
            <span class="envoy" data-testid="envoy-state">{move || envoy_state(&ctx.status.get())}</span>
        </header>
        {move || ctx.notice.get().map(|(good, m)| view! {
            <div class="notice" class:good=good data-testid="notice">{m}
                <button class="link" on:click=move |_| ctx.notice.set(None)>"dismiss"</button></div>
        })}
        <main>
            {move || match ctx.tab.get() {
                Tab::Policies => view! { <PoliciesPage/> }.into_any(),
                Tab::Simulate => view! { <SimulatePage/> }.into_any(),
                Tab::Publish => view! { <PublishPage/> }.into_any(),
                Tab::History => view! { <HistoryPage/> }.into_any(),
                Tab::Live => view! { <LivePage/> }.into_any(),
            }}
        </main>
    }
}

fn envoy_state(status: &Value) -> String {
    match (status["envoy"]["configured"].as_bool(), status["envoy"]["reachable"].as_bool()) {
        (Some(true), Some(true)) => format!(
            "Envoy {} · config v{}",
            status["envoy"]["address"].as_str().unwrap_or_default(),
            status["ecds"]["applied"].as_str().unwrap_or("–")
        ),
        (Some(true), _) => "Envoy unreachable".into(),
        (Some(false), _) => "no Envoy configured".into(),
        _ => String::new(),
    }
}

fn policies(doc: &Value) -> Vec<Value> {
    doc.get("policies").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// One-line summaries of a policy's blocks.
fn blocks_of(p: &Value) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(r) = p.get("rate_limit") {
        out.push((
            "rate",
            format!("{}/{} burst {}", r["rate"], r["per"].as_str().unwrap_or("1s"), r["burst"]),
        ));
    }
    if let Some(c) = p.get("concurrency_limit") {
        out.push(("concurrency", format!("≤ {} in flight", c["max_in_flight"])));
    }
    if let Some(b) = p.get("circuit_breaker") {
        out.push(("breaker", format!("{}% of {}", b["failure_rate"], b["window"])));
    }
    if let Some(r) = p.get("retry") {
        out.push(("retry", format!("{} retries", r["max_retries"])));
    }
    if let Some(t) = p.get("timeout") {
        out.push(("timeout", t.as_str().unwrap_or_default().to_string()));
    }
    if p.get("fallback").is_some() {
        out.push(("fallback", "fallback".into()));
    }
    out
}

#[component]
fn PoliciesPage() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    view! {
        <div class="split">
            <aside class="list" data-testid="policy-list">
                {move || policies(&ctx.doc.get()).into_iter().enumerate().map(|(i, p)| {
                    let name = p["name"].as_str().unwrap_or("(unnamed)").to_string();
                    let live_name = name.clone();
                    view! {
                        <button class="policy" data-testid=format!("policy-{name}")
                            class:selected=move || ctx.selected.get() == Some(i)
                            on:click=move |_| ctx.selected.set(Some(i))>
                            <strong>{name.clone()}</strong>
                            <span class="badges">{blocks_of(&p).into_iter().map(|(k, v)| view! {
                                <span class=format!("badge {k}")>{v}</span>
                            }).collect_view()}</span>
                            <span class="counters">{move || live_line(&ctx.status.get(), &live_name)}</span>
                        </button>
                    }
                }).collect_view()}
                <button data-testid="add-policy" on:click=move |_| {
                    let mut index = 0;
                    ctx.edit(|d| index = form::add_policy(d));
                    ctx.selected.set(Some(index));
                }>"+ New policy"</button>
            </aside>
            <Editor/>
        </div>
    }
}

fn live_line(status: &Value, name: &str) -> String {
    let p = &status["policies"][name];
    let Some(req) = p["requests"].as_object() else { return String::new() };
    let total: u64 = req.iter().filter(|(k, _)| *k != "retried").filter_map(|(_, v)| v.as_u64()).sum();
    let rejected: u64 = req
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "allowed" | "retried" | "fallback"))
        .filter_map(|(_, v)| v.as_u64())
        .sum();
    let breaker = p["breaker"].as_str().map(|b| format!(" · breaker {b}")).unwrap_or_default();
    format!("{total} requests · {rejected} rejected{breaker}")
}

#[component]
fn Editor() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let raw = RwSignal::new(false);
    let saving = RwSignal::new(false);
    let save = move |_| {
        saving.set(true);
        let text = ctx.text.get_untracked();
        spawn_local(async move {
            let a = api::call("PUT", "/policy", Some(json!({ "text": text }))).await;
            saving.set(false);
            if a.ok() {
                ctx.saved.set(ctx.text.get_untracked());
                ctx.version.set(a.body["version"].as_u64().unwrap_or(0));
                ctx.notice.set(Some((true, format!("Saved as version {}", a.body["version"]))));
            } else {
                ctx.notice.set(Some((false, a.error())));
            }
        });
    };
    let dirty = move || ctx.text.get() != ctx.saved.get();
    let valid = move || ctx.diags.get().0;
    let unplaced = move || {
        let sel = ctx.selected.get();
        ctx.diags
            .get()
            .1
            .into_iter()
            .filter(|d| match form::locate(&d.path) {
                Some((i, Some(_))) => raw.get() || Some(i) != sel,
                _ => true,
            })
            .collect::<Vec<_>>()
    };
    view! {
        <section class="editor">
            <div class="toolbar">
                <button data-testid="view-form" class:active=move || !raw.get() on:click=move |_| raw.set(false)>"Form"</button>
                <button data-testid="view-yaml" class:active=move || raw.get() on:click=move |_| raw.set(true)>"YAML"</button>
                <span class="state" data-testid="doc-state">{move || match (valid(), dirty()) {
                    (false, _) => "invalid: fix the errors to save".to_string(),
                    (true, true) => "unsaved changes".to_string(),
                    (true, false) => format!("saved (version {})", ctx.version.get()),
                }}</span>
                <button class="primary" data-testid="save" disabled=move || !valid() || !dirty() || saving.get()
                    on:click=save>"Save"</button>
            </div>
            <ul class="diagnostics" data-testid="diagnostics">
                {move || unplaced().into_iter().map(|d| view! {
                    <li class=if d.is_error() { "error" } else { "warning" }>{diag_text(&d)}</li>
                }).collect_view()}
            </ul>
            {move || if raw.get() {
                view! {
                    <textarea class="yaml" data-testid="yaml" spellcheck="false" aria-label="policy document (YAML)"
                        prop:value=move || ctx.text.get()
                        on:input=move |ev| ctx.set_text(event_target_value(&ev))></textarea>
                }.into_any()
            } else {
                view! { <PolicyForm/> }.into_any()
            }}
        </section>
    }
}

fn diag_text(d: &Diagnostic) -> String {
    let at = d.span.map(|s| format!(" ({}:{})", s.line, s.col)).unwrap_or_default();
    if d.path.is_empty() { format!("{}{at}", d.message) } else { format!("{}: {}{at}", d.path, d.message) }
}

#[component]
fn PolicyForm() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    move || {
        let Some(index) = ctx.selected.get() else {
            return view! { <p class="empty">"No policy selected. Add one with “+ New policy”."</p> }
                .into_any();
        };
        view! {
            <div class="form" data-testid="policy-form">
                {BLOCKS.iter().map(|block| view! { <BlockView block index/> }).collect_view()}
                <button class="danger" data-testid="delete-policy" on:click=move |_| {
                    ctx.edit(|d| form::remove_policy(d, index));
                    ctx.selected.set(None);
                }>"Delete this policy"</button>
            </div>
        }
        .into_any()
    }
}

#[component]
fn BlockView(block: &'static form::Block, index: usize) -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let present = move || {
        block.key.is_empty()
            || form::policy(&ctx.doc.get(), index).is_some_and(|p| p.get(block.key).is_some())
    };
    let toggle = block.template.map(|_| {
        view! {
            <label class="toggle">
                <input type="checkbox" data-testid=format!("block-{}", block.key)
                    prop:checked=present
                    on:change=move |ev| {
                        let on = event_target_checked(&ev);
                        ctx.edit(|d| form::set_block(d, index, block, on));
                    }/>
                "enabled"
            </label>
        }
    });
    view! {
        <fieldset class="block">
            <legend>{block.title} {toggle}</legend>
            <Show when=present>
                {block.fields.iter().map(|field| view! { <FieldView block field index/> }).collect_view()}
            </Show>
        </fieldset>
    }
}

#[component]
fn FieldView(block: &'static form::Block, field: &'static form::Field, index: usize) -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let path = form::field_path(block, field);
    let id = form::test_id(&path);
    let value = {
        let path = path.clone();
        move || {
            form::policy(&ctx.doc.get(), index)
                .map(|p| form::display(p, &path, field.kind))
                .unwrap_or_default()
        }
    };
    let errors = {
        let path = path.clone();
        move || {
            ctx.diags
                .get()
                .1
                .into_iter()
                .filter(|d| form::locate(&d.path) == Some((index, Some(path.clone()))))
                .map(|d| d.message)
                .collect::<Vec<_>>()
        }
    };
    let has_error = {
        let errors = errors.clone();
        move || !errors().is_empty()
    };
    let set = {
        let path = path.clone();
        move |text: String| {
            let v = form::parse_input(field.kind, &text);
            ctx.edit(|d| form::set(d, index, &path, v));
        }
    };
    let input = match field.kind {
        Kind::Choice(options) => {
            let set = set.clone();
            view! {
                <select data-testid=id.clone() prop:value=value.clone() on:change=move |ev| set(event_target_value(&ev))>
                    <option value="">"(default)"</option>
                    {options.iter().map(|o| view! { <option value=*o>{*o}</option> }).collect_view()}
                </select>
            }
            .into_any()
        }
        Kind::Multi(words) => {
            let path = path.clone();
            view! {
                <span class="words" data-testid=id.clone()>
                    {words.iter().map(|w| {
                        let path = path.clone();
                        let checked = {
                            let path = path.clone();
                            move || form::policy(&ctx.doc.get(), index).is_some_and(|p| form::has_word(p, &path, w))
                        };
                        view! {
                            <label><input type="checkbox" data-testid=format!("{}-{w}", form::test_id(&path))
                                prop:checked=checked
                                on:change=move |ev| {
                                    let on = event_target_checked(&ev);
                                    ctx.edit(|d| form::toggle_word(d, index, &path, w, on));
                                }/>{*w}</label>
                        }
                    }).collect_view()}
                </span>
            }
            .into_any()
        }
        Kind::Map | Kind::LongText => {
            let set = set.clone();
            let on_input = field.kind == Kind::LongText;
            view! {
                <textarea data-testid=id.clone() rows="2" prop:value=value.clone()
                    on:input={let set = set.clone(); move |ev| if on_input { set(event_target_value(&ev)) }}
                    on:change=move |ev| if !on_input { set(event_target_value(&ev)) }></textarea>
            }
            .into_any()
        }
        Kind::List | Kind::IntList => {
            let set = set.clone();
            view! { <input type="text" data-testid=id.clone() prop:value=value.clone()
            on:change=move |ev| set(event_target_value(&ev))/> }
            .into_any()
        }
        Kind::Text | Kind::Int | Kind::Duration | Kind::Window => {
            let set = set.clone();
            view! { <input type="text" data-testid=id.clone() prop:value=value.clone()
            on:input=move |ev| set(event_target_value(&ev))/> }
            .into_any()
        }
    };
    view! {
        <div class="field" class:invalid=has_error>
            <label>{field.label}</label>
            {input}
            <span class="help">{field.help}</span>
            <span class="error" data-testid=format!("error-{}", &id[6..])>{move || errors().join("; ")}</span>
        </div>
    }
}

#[component]
fn SimulatePage() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let scenarios = RwSignal::new(Vec::<Value>::new());
    let scenario = RwSignal::new(String::from(
        "name: a steady 50 requests a second\nduration: 10s\nworkers: 2\ntraffic:\n  - rate: 50/s\n    host: api.example.com\n    path: /\n",
    ));
    let result = RwSignal::new(None::<Value>);
    let error = RwSignal::new(None::<(String, Vec<Value>)>);
    let running = RwSignal::new(false);
    spawn_local(async move {
        let a = api::call("GET", "/scenarios", None).await;
        if let Some(list) = a.body.as_array() {
            scenarios.set(list.clone());
        }
    });
    let run = move |_| {
        running.set(true);
        error.set(None);
        let body = json!({ "policy": ctx.text.get_untracked(), "scenario": scenario.get_untracked() });
        spawn_local(async move {
            let a = api::call("POST", "/simulate", Some(body)).await;
            running.set(false);
            if a.ok() {
                result.set(Some(a.body));
            } else {
                let d = a.body["diagnostics"].as_array().cloned().unwrap_or_default();
                error.set(Some((a.error(), d)));
                result.set(None);
            }
        });
    };
    view! {
        <div class="simulate">
            <div class="toolbar">
                <label>"Scenario "
                    <select data-testid="scenario-pick" on:change=move |ev| {
                        let file = event_target_value(&ev);
                        if let Some(s) = scenarios.get_untracked().iter().find(|s| s["file"] == file.as_str()) {
                            scenario.set(s["text"].as_str().unwrap_or_default().to_string());
                        }
                    }>
                        <option value="">"(write your own)"</option>
                        {move || scenarios.get().into_iter().map(|s| {
                            let file = s["file"].as_str().unwrap_or_default().to_string();
                            view! { <option value=file.clone()>{format!("{} — {}", file, s["name"].as_str().unwrap_or_default())}</option> }
                        }).collect_view()}
                    </select>
                </label>
                <span class="hint">"runs against the editor's document (saved or not); the scenario's own policy is ignored"</span>
                <button class="primary" data-testid="run-simulation" disabled=move || running.get() || !ctx.diags.get().0
                    on:click=run>{move || if running.get() { "Running…" } else { "Run" }}</button>
            </div>
            <textarea class="yaml scenario" data-testid="scenario" spellcheck="false" aria-label="scenario (YAML)"
                prop:value=move || scenario.get() on:input=move |ev| scenario.set(event_target_value(&ev))></textarea>
            {move || error.get().map(|(m, d)| view! {
                <div class="notice" data-testid="simulation-error">{m}
                    <ul>{d.into_iter().map(|d| view! { <li>{format!("{}: {}", d["path"].as_str().unwrap_or_default(), d["message"].as_str().unwrap_or_default())}</li> }).collect_view()}</ul>
                </div>
            })}
            {move || result.get().map(|r| view! { <SimulationResult r/> })}
        </div>
    }
}

#[component]
fn SimulationResult(r: Value) -> impl IntoView {
    let report = r["report"].clone();
    let timeline = report["timeline"].clone();
    let decisions = chart::series_of(&timeline, "by_decision");
    let statuses = chart::series_of(&timeline, "by_status");
    let retries = chart::series_of_numbers(&timeline, &["retries", "budget_exhausted"]);
    let bands = chart::breaker_bands(&timeline);
    let summary = format!(
        "{} requests over {} s on {} workers, simulated in {:.0} ms",
        report["requests"],
        report["duration_s"],
        report["workers"],
        r["wall_ms"].as_f64().unwrap_or(0.0)
    );
    let expectations = report["expectations"].as_array().cloned().unwrap_or_default();
    view! {
        <section class="result" data-testid="simulation-result">
            <p>{summary}</p>
            {report["expectations"].as_array().is_none_or(Vec::is_empty).then(|| view! {
                <p class="hint">"This scenario has no expectations (add an `expect:` list to check numbers)."</p>
            })}
            <table class="expectations" data-testid="expectations">
                <tr><th></th><th>"measured"</th><th>"expected"</th><th>"found"</th></tr>
                {expectations.into_iter().map(|e| {
                    let passed = e["passed"].as_bool().unwrap_or(false);
                    view! { <tr class:fail=!passed>
                        <td class="verdict">{if passed { "PASS" } else { "FAIL" }}</td>
                        <td>{e["name"].as_str().map(str::to_string).unwrap_or_else(|| e["measured"].as_str().unwrap_or_default().to_string())}</td>
                        <td>{e["expected"].as_str().unwrap_or_default().to_string()}</td>
                        <td>{e["actual"].as_str().unwrap_or_default().to_string()}</td>
                    </tr> }
                }).collect_view()}
            </table>
            <Chart title="Requests per second by decision" id="chart-decisions" series=decisions/>
            <Chart title="Requests per second by status" id="chart-status" series=statuses/>
            <Chart title="Retries and exhausted budget per second" id="chart-retries" series=retries/>
            {(!bands.is_empty()).then(|| view! {
                <h3>"Breaker state"</h3>
                <div class="bands" data-testid="chart-breaker">
                    {bands.into_iter().map(|(policy, cells)| {
                        let n = cells.len().max(1) as f64;
                        view! {
                            <div class="band"><span>{policy}</span>
                                <svg viewBox="0 0 720 16" preserveAspectRatio="none">
                                    {cells.into_iter().enumerate().map(|(i, (c, _))| view! {
                                        <rect x=(i as f64 * 720.0 / n).to_string() y="0" width=(720.0 / n).to_string() height="16" fill=c/>
                                    }).collect_view()}
                                </svg>
                            </div>
                        }
                    }).collect_view()}
                </div>
            })}
        </section>
    }
}

#[component]
fn Chart(title: &'static str, id: &'static str, series: Vec<chart::Series>) -> impl IntoView {
    let bars = chart::stacked_bars(&series);
    let top = chart::max_total(&series);
    let viewbox = format!("0 0 {} {}", chart::WIDTH, chart::HEIGHT);
    view! {
        <figure class="chart" data-testid=id>
            <figcaption>{title} <span class="scale">{format!("max {top:.0}/s")}</span></figcaption>
            <svg viewBox=viewbox preserveAspectRatio="none" role="img" aria-label=title>
                {bars.into_iter().map(|b| view! {
                    <rect x=b.x.to_string() y=b.y.to_string() width=b.width.to_string() height=b.height.to_string() fill=b.color/>
                }).collect_view()}
            </svg>
            <div class="legend">{series.into_iter().map(|s| view! {
                <span><i style=format!("background:{}", s.color)></i>{s.label}</span>
            }).collect_view()}</div>
        </figure>
    }
}

#[component]
fn PublishPage() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let diff = RwSignal::new(None::<String>);
    let confirming = RwSignal::new(false);
    let result = RwSignal::new(None::<Value>);
    let busy = RwSignal::new(false);
    let load_diff = move || {
        spawn_local(async move {
            let a = api::call("GET", "/diff?from=published&to=active", None).await;
            diff.set(Some(if a.ok() {
                let d = a.body["diff"].as_str().unwrap_or_default().to_string();
                if d.is_empty() { "(the active version is the published one)".into() } else { d }
            } else if a.status == 404 {
                "(nothing published from here yet: everything below is new)\n".to_string()
                    + &ctx.saved.get_untracked()
            } else {
                a.error()
            }));
        })
    };
    load_diff();
    let publish = move |_| {
        confirming.set(false);
        busy.set(true);
        spawn_local(async move {
            let a = api::call("POST", "/publish", None).await;
            busy.set(false);
            result.set(Some(if a.ok() { a.body } else { json!({ "applied": false, "message": a.error() }) }));
            load_diff();
        });
    };
    let unsaved = move || ctx.text.get() != ctx.saved.get();
    view! {
        <div class="publish">
            <p>{move || format!("Publishing sends the active version ({}) to Envoy over ECDS.", ctx.version.get())}</p>
            {move || unsaved().then(|| view! { <p class="warn" data-testid="unsaved-warning">"The editor has unsaved changes: they are not published. Save them first."</p> })}
            <h3>"Published → active"</h3>
            <pre class="diff" data-testid="diff">{move || diff.get().unwrap_or_default().lines().map(|l| {
                let class = if l.starts_with('+') { "add" } else if l.starts_with('-') { "del" } else { "" };
                view! { <span class=class>{l.to_string()}"\n"</span> }
            }).collect_view()}</pre>
            <Show when=move || !confirming.get() fallback=move || view! {
                <div class="confirm" data-testid="confirm-box">"Publish version " {move || ctx.version.get()} " to Envoy?"
                    <button class="primary" data-testid="confirm-publish" on:click=publish>"Yes, publish"</button>
                    <button data-testid="cancel-publish" on:click=move |_| confirming.set(false)>"Cancel"</button>
                </div>
            }>
                <button class="primary" data-testid="publish" disabled=move || busy.get()
                    on:click=move |_| confirming.set(true)>{move || if busy.get() { "Publishing…" } else { "Publish…" }}</button>
            </Show>
            {move || result.get().map(|r| {
                let state = match r["applied"].as_bool() { Some(true) => "applied", Some(false) => "rejected", None => "unconfirmed" };
                view! { <p class=format!("outcome {state}") data-testid="publish-result" data-state=state>
                    {r["message"].as_str().unwrap_or_default().to_string()}</p> }
            })}
        </div>
    }
}

#[component]
fn HistoryPage() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let versions = RwSignal::new(Value::Null);
    let shown = RwSignal::new(None::<(u64, String)>);
    let load = move || {
        spawn_local(async move {
            versions.set(api::call("GET", "/history", None).await.body);
        })
    };
    load();
    let show = move |id: u64| {
        spawn_local(async move {
            let a = api::call("GET", &format!("/diff?from={id}&to=active"), None).await;
            shown.set(Some((id, a.body["diff"].as_str().map(str::to_string).unwrap_or_else(|| a.error()))));
        })
    };
    let rollback = move |id: u64| {
        spawn_local(async move {
            let a = api::call("POST", "/rollback", Some(json!({ "version": id }))).await;
            if a.ok() {
                ctx.notice.set(Some((
                    true,
                    format!("Version {id} is active again (as version {})", a.body["version"]),
                )));
                ctx.load();
                load();
                shown.set(None);
            } else {
                ctx.notice.set(Some((false, a.error())));
            }
        })
    };
    view! {
        <div class="history split">
            <table data-testid="history">
                <tr><th>"version"</th><th>"saved"</th><th>"policies"</th><th></th></tr>
                {move || {
                    let v = versions.get();
                    let published = v["published"].as_u64();
                    let current = v["current"].as_u64();
                    v["versions"].as_array().cloned().unwrap_or_default().into_iter().map(|e| {
                        let id = e["id"].as_u64().unwrap_or(0);
                        let tags = [(Some(id) == current).then_some("active"), (Some(id) == published).then_some("published")]
                            .into_iter().flatten().collect::<Vec<_>>().join(", ");
                        let when = js_time(e["saved_at_ms"].as_f64().unwrap_or(0.0));
                        let names = e["policies"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default();
                        view! { <tr data-testid=format!("version-{id}")>
                            <td>{id} " " <em>{tags}</em></td><td>{when}</td><td>{names}</td>
                            <td><button on:click=move |_| show(id)>"diff"</button>
                                <button data-testid=format!("rollback-{id}") disabled=Some(id) == current on:click=move |_| rollback(id)>"roll back"</button></td>
                        </tr> }
                    }).collect_view()
                }}
            </table>
            <div>{move || shown.get().map(|(id, d)| view! {
                <h3>{format!("version {id} → active")}</h3><pre class="diff">{d}</pre>
            })}</div>
        </div>
    }
}

fn js_time(ms: f64) -> String {
    let d = js_sys_date(ms);
    if d.is_empty() { format!("{ms}") } else { d }
}

#[cfg(target_arch = "wasm32")]
fn js_sys_date(ms: f64) -> String {
    let d = web_sys::js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ms));
    String::from(d.to_locale_string("en-GB", &wasm_bindgen::JsValue::UNDEFINED))
}

#[cfg(not(target_arch = "wasm32"))]
fn js_sys_date(_ms: f64) -> String {
    String::new()
}

#[component]
fn LivePage() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    view! {
        <div class="live">
            <p>{move || envoy_state(&ctx.status.get())} " · refreshed every 2 s"</p>
            <table data-testid="live-table">
                <tr><th>"policy"</th><th>"allowed"</th><th>"rate limited"</th><th>"concurrency limited"</th>
                    <th>"circuit open"</th><th>"fallback"</th><th>"retried"</th><th>"in flight"</th><th>"breaker"</th></tr>
                {move || {
                    let s = ctx.status.get();
                    s["policies"].as_object().cloned().unwrap_or_default().into_iter().map(|(name, p)| {
                        let n = |k: &str| p["requests"][k].as_u64().unwrap_or(0);
                        let breaker = p["breaker"].as_str().unwrap_or("–").to_string();
                        view! { <tr data-testid=format!("live-{name}")>
                            <td>{name.clone()}</td><td>{n("allowed")}</td><td data-testid=format!("live-{name}-rate_limited")>{n("rate_limited")}</td>
                            <td>{n("concurrency_limited")}</td><td>{n("circuit_open")}</td><td>{n("fallback")}</td><td>{n("retried")}</td>
                            <td>{p["in_flight"].as_u64().map(|v| v.to_string()).unwrap_or("–".into())}</td>
                            <td><span class=format!("breaker {breaker}")>{breaker.clone()}</span></td>
                        </tr> }
                    }).collect_view()
                }}
            </table>
        </div>
    }
}
