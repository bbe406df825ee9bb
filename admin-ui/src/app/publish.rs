//! The publish page: the diff from the published version, and publishing with Envoy's answer.

use leptos::prelude::*;
use leptos::task::spawn_local;

use breakwater_api::{Diff, PublishAnswer};

use super::Ctx;
use crate::api;

#[component]
pub(super) fn PublishPage() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let diff = RwSignal::new(None::<String>);
    let confirming = RwSignal::new(false);
    let result = RwSignal::new(None::<(Option<bool>, String)>);
    let busy = RwSignal::new(false);
    let load_diff = move || {
        spawn_local(async move {
            // The version this editor shows: what Publish will ship (If-Match), not whatever is
            // active on the server by the time the button is pressed.
            let to = ctx.version.get_untracked();
            diff.set(Some(match api::get::<Diff>(&format!("/diff?from=published&to={to}")).await {
                Ok(d) if d.diff.is_empty() => "(the active version is the published one)".into(),
                Ok(d) => d.diff,
                Err(e) if e.status == 404 => {
                    "(nothing published from here yet: everything below is new)\n".to_string()
                        + &ctx.saved.get_untracked()
                }
                Err(e) => e.message(),
            }));
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
            {move || result.get().map(|(applied, message)| {
                let state = match applied { Some(true) => "applied", Some(false) => "rejected", None => "unconfirmed" };
                view! { <p class=format!("outcome {state}") data-testid="publish-result" data-state=state>
                    {message}</p> }
            })}
        </div>
    }
}
