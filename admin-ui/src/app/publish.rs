//! The publish page: the version story (saved, published, what Envoy runs), the diff from what
//! Envoy runs to the version Publish sends, and publishing with Envoy's answer.

use leptos::prelude::*;
use leptos::task::spawn_local;

use breakwater_api::{Diff, PublishAnswer, Status};

use super::Ctx;
use super::diffview::DiffView;
use crate::api;

/// What the diff compares: a title and the diff, or a message instead.
#[derive(Clone)]
enum Shown {
    Diff(String, Diff),
    Message(String),
}

#[component]
pub(super) fn PublishPage() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let diff = RwSignal::new(None::<Shown>);
    let confirming = RwSignal::new(false);
    let result = RwSignal::new(None::<(Option<bool>, String)>);
    let busy = RwSignal::new(false);
    let load_diff = move || {
        spawn_local(async move {
            // The version this editor shows: what Publish will ship (If-Match), not whatever is
            // active on the server by the time the button is pressed. From what Envoy runs (also
            // when something else published it), else from the last publish recorded here.
            let to = ctx.version.get_untracked();
            let mut shown = None;
            for (from, title) in [("running", "What Envoy runs"), ("published", "Published")] {
                match api::get::<Diff>(&format!("/diff?from={from}&to={to}")).await {
                    Ok(d) => {
                        let was = if d.from == 0 { String::new() } else { format!(" (version {})", d.from) };
                        shown = Some(Shown::Diff(format!("{title}{was} → version {to}"), d));
                        break;
                    }
                    Err(e) if e.status == 404 || e.status == 409 => continue,
                    Err(e) => {
                        shown = Some(Shown::Message(e.message()));
                        break;
                    }
                }
            }
            diff.set(Some(shown.unwrap_or_else(|| {
                Shown::Message("Envoy runs nothing published yet: everything in this version is new.".into())
            })));
        })
    };
    load_diff();
    let publish = move |_| {
        confirming.set(false);
        busy.set(true);
        spawn_local(async move {
            let version = ctx.version.get_untracked();
            let answer = api::send_if_active::<(), PublishAnswer>("POST", "/publish", None, version).await;
            busy.set(false);
            result.set(Some(match answer {
                Ok(a) => (a.applied, a.message),
                Err(e) if e.status == api::CONFLICT => {
                    ctx.conflict.set(Some(e.message()));
                    (
                        Some(false),
                        "Not published: the version you reviewed is no longer the active one".into(),
                    )
                }
                Err(e) => (Some(false), e.message()),
            }));
            ctx.refresh_status();
            load_diff();
        });
    };
    let unsaved = move || ctx.text.get() != ctx.saved.get();
    // The confirmation takes the focus when it opens: Enter publishes, Tab reaches Cancel.
    let confirm_button = NodeRef::<leptos::html::Button>::new();
    Effect::new(move |_| {
        if let Some(b) = confirm_button.get() {
            let _ = b.focus();
        }
    });
    view! {
        <div class="publish">
            <p>{move || format!("Publishing sends the active version ({}) to Envoy over ECDS.", ctx.version.get())}</p>
            {move || unsaved().then(|| view! { <p class="warn" data-testid="unsaved-warning">"The editor has unsaved changes: they are not published. Save them first."</p> })}
            {move || ctx.status.get().map(|s| view! { <StoryCards status=s/> })}
            {move || diff.get().map(|shown| match shown {
                Shown::Diff(title, d) => view! { <h3 data-testid="diff-title">{title}</h3><DiffView diff=d testid="diff"/> }.into_any(),
                Shown::Message(m) => view! { <p class="hint" data-testid="diff">{m}</p> }.into_any(),
            })}
            <Show when=move || !confirming.get() fallback=move || view! {
                <div class="confirm" data-testid="confirm-box" role="alertdialog" aria-label="confirm the publish">"Publish version " {move || ctx.version.get()} " to Envoy?"
                    <button class="primary" data-testid="confirm-publish" node_ref=confirm_button on:click=publish>"Yes, publish"</button>
                    <button data-testid="cancel-publish" on:click=move |_| confirming.set(false)>"Cancel"</button>
                </div>
            }>
                <button class="primary" data-testid="publish" disabled=move || busy.get()
                    on:click=move |_| confirming.set(true)>{move || if busy.get() { "Publishing…" } else { "Publish…" }}</button>
            </Show>
            {move || result.get().map(|(applied, message)| {
                let state = match applied { Some(true) => "applied", Some(false) => "rejected", None => "unconfirmed" };
                view! { <p class=format!("outcome {state}") data-testid="publish-result" data-state=state>
                    {message}</p> }
            })}
        </div>
    }
}

/// Saved, published, and what Envoy runs, side by side, in one numbering.
#[component]
fn StoryCards(status: Status) -> impl IntoView {
    let story = super::story(&status);
    let published = status.published.as_ref().map(|p| {
        format!(
            "version {} as ECDS {}, {}",
            p.version,
            p.ecds_version,
            super::history::js_time(p.at_ms as f64)
        )
    });
    let running = status.running.clone().unwrap_or_default();
    let detail = match (&status.running, running.ecds_version) {
        (None, _) => "Publishing is off (the server has no --ecds file).".to_string(),
        (Some(_), None) if !status.envoy.configured => {
            "Envoy is not asked (the server has no --envoy-admin).".to_string()
        }
        (Some(_), None) => "Envoy has applied no ECDS version yet.".to_string(),
        (Some(_), Some(e)) => {
            let by = if running.from_admin {
                "published from this admin"
            } else {
                "published by something else (breakwater publish, a script, another admin)"
            };
            let what = match (running.version, running.known) {
                (Some(_), _) => format!("ECDS {e}, {by}."),
                (None, true) => {
                    format!("ECDS {e}, {by}: a document in no saved version (the diff below starts from it).")
                }
                (None, false) => format!("ECDS {e}, {by}; its document is not in the ECDS file any more."),
            };
            let policies = if running.policies.is_empty() {
                String::new()
            } else {
                format!(" Policies: {}.", running.policies.join(", "))
            };
            format!("{what}{policies}")
        }
    };
    let big = match (status.envoy.reachable, running.ecds_version, running.version, running.known) {
        (Some(false), ..) => "unreachable".to_string(),
        (_, None, ..) => "nothing published yet".into(),
        (_, Some(_), Some(v), _) => format!("version {v}"),
        (_, Some(_), None, true) => "a document in no saved version".into(),
        (_, Some(e), None, false) => format!("ECDS {e}"),
    };
    let rejection = running.not_applied.clone().map(|n| {
        if n.rejected {
            format!(
                "Envoy rejected ECDS {} and keeps running the above: {}",
                n.ecds_version,
                n.reason.unwrap_or_else(|| "see Envoy's log".into())
            )
        } else {
            format!("ECDS {} is in the file but not applied (yet).", n.ecds_version)
        }
    });
    view! {
        <section class="story-cards" data-testid="version-story">
            <div class="card">
                <h4>"Saved"</h4>
                <p class="big" data-testid="card-saved">{format!("version {}", status.saved)}</p>
                <p class="hint">"What the editor saves and Publish sends."</p>
            </div>
            <div class="card">
                <h4>"Published from here"</h4>
                <p class="big" data-testid="card-published">{published.clone().map_or("nothing yet".to_string(), |p| p.split(" as ").next().unwrap_or_default().to_string())}</p>
                <p class="hint">{published.unwrap_or_else(|| "This admin has not published; Envoy may still run something (right).".into())}</p>
            </div>
            <div class=format!("card envoy {}", story.state)>
                <h4>"Envoy runs"</h4>
                <p class="big" data-testid="card-envoy">{big}</p>
                <p class="hint" data-testid="card-envoy-detail">{detail}</p>
                {rejection.map(|r| view! { <p class="error" data-testid="card-rejection">{r}</p> })}
            </div>
        </section>
    }
}
