//! The admin's shell (login, tabs, the state every page shares) and its pages, one module each:
//! policies (list and editor), simulate, publish, history, live.

mod charts;
mod diffview;
mod history;
mod live;
mod policies;
mod publish;
mod simulate;

use breakwater_api::{PolicyAnswer, Status};
use breakwater_policy::{Diagnostic, Document};
use leptos::prelude::*;
use leptos::task::spawn_local;
use serde_json::{Value, json};

use crate::api;
use diffview::DiffView;
use history::HistoryPage;
use live::LivePage;
use policies::PoliciesPage;
use publish::PublishPage;
use simulate::SimulatePage;

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
    /// The document as the model reads it (every default applied), from the last text that was
    /// valid: what the policy list's chips show while an edit is not valid yet.
    model: Memo<Option<Document>>,
    selected: RwSignal<Option<usize>>,
    tab: RwSignal<Tab>,
    /// The last `GET /api/status` (None until it answered).
    status: RwSignal<Option<Status>>,
    notice: RwSignal<Option<(bool, String)>>,
    /// A save or publish refused because another version became active (another editor): the
    /// server's message, until the user reloads or dismisses it.
    conflict: RwSignal<Option<String>>,
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

    /// Asks the server for the status now (it is also polled every 2 s): after a save, a publish
    /// or a rollback the version story must not lag.
    fn refresh_status(&self) {
        let ctx = *self;
        spawn_local(async move {
            if let Ok(status) = api::get::<Status>("/status").await {
                ctx.status.set(Some(status));
            }
        });
    }

    fn load(&self) {
        let ctx = *self;
        ctx.refresh_status();
        spawn_local(async move {
            match api::get::<PolicyAnswer>("/policy").await {
                Ok(answer) => {
                    ctx.saved.set(answer.text.clone());
                    ctx.version.set(answer.version);
                    ctx.set_text(answer.text);
                    let n =
                        ctx.doc.get_untracked().get("policies").and_then(Value::as_array).map_or(0, Vec::len);
                    if ctx.selected.get_untracked().is_none_or(|i| i >= n) {
                        ctx.selected.set((n > 0).then_some(0));
                    }
                }
                Err(e) => ctx.notice.set(Some((false, e.message()))),
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
    let checked = Memo::new(move |_| match breakwater_policy::load(&text.get()) {
        Ok(l) => (true, l.warnings, Some(l.document)),
        Err(d) => (false, d, None),
    });
    let diags = Memo::new(move |_| checked.with(|(valid, d, _)| (*valid, d.clone())));
    let model = Memo::new(move |last: Option<&Option<Document>>| {
        checked.with(|(_, _, doc)| doc.clone()).or_else(|| last.cloned().flatten())
    });
    let ctx = Ctx {
        doc: RwSignal::new(json!({ "version": 1, "policies": [] })),
        text,
        saved: RwSignal::new(String::new()),
        version: RwSignal::new(0),
        diags,
        model,
        selected: RwSignal::new(None),
        tab: RwSignal::new(Tab::Policies),
        status: RwSignal::new(None),
        notice: RwSignal::new(None),
        conflict: RwSignal::new(None),
    };
    provide_context(ctx);
    ctx.load();
    set_interval(move || ctx.refresh_status(), std::time::Duration::from_secs(2));
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
            {move || ctx.status.with(|s| s.as_ref().map(story)).map(|s| view! {
                <span class=format!("story {}", s.state) data-testid="envoy-state"
                    title="saved: what the editor saves and Publish sends; published: the last version this admin published; Envoy: the version Envoy applied, also when something else published it">
                    <span data-testid="story-saved">{s.saved}</span>" · "
                    <span data-testid="story-published">{s.published}</span>" · "
                    <span data-testid="story-envoy">{s.envoy}</span>
                </span>
            })}
        </header>
        {move || ctx.notice.get().map(|(good, m)| view! {
            <div class="notice" class:good=good data-testid="notice">{m}
                <button class="link" on:click=move |_| ctx.notice.set(None)>"dismiss"</button></div>
        })}
        {move || ctx.conflict.get().map(|m| view! { <Conflict message=m/> })}
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

/// The one version story the header, Publish and History tell: the saved version (what the
/// editor saves and Publish sends), the version last published from here, and what Envoy runs,
/// in the same numbering (ECDS versions are Envoy's, shown only as a detail).
pub(super) struct Story {
    pub saved: String,
    pub published: String,
    pub envoy: String,
    /// `ok` (Envoy runs the saved version), `behind` (it runs an older or other one), `bad`
    /// (unreachable, or a rejection).
    pub state: &'static str,
}

pub(super) fn story(status: &Status) -> Story {
    let saved = format!("saved v{}", status.saved);
    let published = match &status.published {
        Some(p) => format!("published v{}", p.version),
        None => "not published from here".into(),
    };
    let (envoy, mut state) = match (&status.running, status.envoy.configured, status.envoy.reachable) {
        (_, true, Some(false)) => ("Envoy unreachable".to_string(), "bad"),
        (None, _, _) => ("publishing off".into(), "behind"),
        (Some(r), configured, _) => {
            let runs = match (r.ecds_version, r.version, r.known) {
                (None, _, _) if !configured => "Envoy not asked".to_string(),
                (None, _, _) => "Envoy runs nothing published yet".into(),
                (Some(_), Some(v), _) => format!("Envoy runs v{v}"),
                (Some(e), None, true) => format!("Envoy runs a document in no saved version (ECDS {e})"),
                (Some(e), None, false) => format!("Envoy runs ECDS {e}"),
            };
            let by = match (r.version, r.from_admin) {
                (Some(_), false) if r.ecds_version.is_some() => " (published by something else)",
                _ => "",
            };
            let state = if r.version == Some(status.saved) { "ok" } else { "behind" };
            (format!("{runs}{by}"), state)
        }
    };
    let mut envoy = envoy;
    if let Some(n) = status.running.as_ref().and_then(|r| r.not_applied.as_ref()).filter(|n| n.rejected) {
        state = "bad";
        envoy.push_str(&format!(
            " · rejected ECDS {}: {}",
            n.ecds_version,
            n.reason.as_deref().unwrap_or("see Envoy's log")
        ));
    }
    Story { saved, published, envoy, state }
}

/// Another editor saved since this one loaded: say so, show what they changed, and offer to load
/// the active version (dropping this editor's changes) or to keep editing.
#[component]
fn Conflict(message: String) -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let diff = RwSignal::new(None::<Result<breakwater_api::Diff, String>>);
    let compare = move |_| {
        let from = ctx.version.get_untracked();
        spawn_local(async move {
            let answer = api::get::<breakwater_api::Diff>(&format!("/diff?from={from}&to=active")).await;
            diff.set(Some(answer.map_err(|e| e.message())));
        });
    };
    let reload = move |_| {
        ctx.conflict.set(None);
        ctx.load();
    };
    // Keep this editor's text, now based on the active version: the next save replaces it (the
    // user has seen what it holds).
    let keep = move |_| {
        spawn_local(async move {
            match api::get::<PolicyAnswer>("/policy").await {
                Ok(active) => {
                    ctx.version.set(active.version);
                    ctx.saved.set(active.text);
                    ctx.conflict.set(None);
                }
                Err(e) => ctx.notice.set(Some((false, e.message()))),
            }
        });
    };
    view! {
        <div class="notice conflict" data-testid="conflict">
            <strong>"Someone else changed the policy. "</strong>{message}
            <button data-testid="conflict-compare" on:click=compare>"What changed"</button>
            <button class="primary" data-testid="conflict-reload" on:click=reload>"Load the active version (drop my edits)"</button>
            <button class="link" data-testid="conflict-keep" on:click=keep>"keep my edits (my next save replaces theirs)"</button>
            {move || diff.get().map(|d| match d {
                Ok(d) => view! { <DiffView diff=d testid="conflict-diff"/> }.into_any(),
                Err(e) => view! { <p class="error" data-testid="conflict-diff">{e}</p> }.into_any(),
            })}
        </div>
    }
}
