//! The history page: every saved version, its diff to the active one, and rollback.

use leptos::prelude::*;
use leptos::task::spawn_local;

use breakwater_api::{Diff, History, RollbackBody, Saved};

use super::Ctx;
use super::diffview::DiffView;
use crate::api;

#[component]
pub(super) fn HistoryPage() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let versions = RwSignal::new(None::<History>);
    let shown = RwSignal::new(None::<(u64, Result<Diff, String>)>);
    let load = move || {
        spawn_local(async move {
            versions.set(api::get::<History>("/history").await.ok());
        })
    };
    load();
    let show = move |id: u64| {
        spawn_local(async move {
            let diff = api::get::<Diff>(&format!("/diff?from={id}&to=active")).await;
            shown.set(Some((id, diff.map_err(|e| e.message()))));
        })
    };
    let rollback = move |id: u64| {
        spawn_local(async move {
            match api::send::<_, Saved>("POST", "/rollback", Some(&RollbackBody { version: id })).await {
                Ok(saved) => {
                    ctx.notice.set(Some((
                        true,
                        format!("Version {id} is active again (as version {})", saved.version),
                    )));
                    ctx.load();
                    load();
                    shown.set(None);
                }
                Err(e) => ctx.notice.set(Some((false, e.message()))),
            }
        })
    };
    view! {
        <div class="history">
            <table data-testid="history">
                <thead><tr><th scope="col">"version"</th><th scope="col">"state"</th><th scope="col">"saved at"</th>
                    <th scope="col">"size"</th><th scope="col">"policies"</th><th scope="col"><span class="sr-only">"actions"</span></th></tr></thead>
                <tbody>
                {move || {
                    let Some(v) = versions.get() else { return Vec::new() };
                    let (published, current) = (v.published, Some(v.current));
                    let running = ctx.status.with(|s| s.as_ref().and_then(|s| s.running.as_ref()?.version));
                    v.versions.into_iter().map(|e| {
                        let id = e.id;
                        let tags = [
                            (Some(id) == current).then_some(("saved", "saved (active)")),
                            (Some(id) == published).then_some(("published", "published from here")),
                            (Some(id) == running).then_some(("running", "Envoy runs it")),
                        ];
                        let when = js_time(e.saved_at_ms as f64);
                        let names = e.policies.join(", ");
                        let size = format!("{:.1} KB", e.bytes as f64 / 1024.0);
                        view! { <tr data-testid=format!("version-{id}") class:selected=move || shown.with(|s| s.as_ref().is_some_and(|(i, _)| *i == id))>
                            <td class="num">{id}</td>
                            <td class="tags">{tags.into_iter().flatten().map(|(class, text)| view! {
                                <span class=format!("badge {class}")>{text}</span>
                            }).collect_view()}</td>
                            <td>{when}</td><td class="num">{size}</td><td class="names">{names}</td>
                            <td class="actions"><button data-testid=format!("diff-{id}") disabled=Some(id) == current on:click=move |_| show(id)>"Diff to active"</button>
                                <button data-testid=format!("rollback-{id}") disabled=Some(id) == current on:click=move |_| rollback(id)>"Roll back"</button></td>
                        </tr> }
                    }).collect::<Vec<_>>()
                }}
                </tbody>
            </table>
            {move || shown.get().map(|(id, d)| view! {
                <section class="history-diff">
                    <h3>{format!("Version {id} → active")}</h3>
                    {match d {
                        Ok(d) => view! { <DiffView diff=d testid="history-diff"/> }.into_any(),
                        Err(e) => view! { <p class="error">{e}</p> }.into_any(),
                    }}
                </section>
            })}
        </div>
    }
}

pub(super) fn js_time(ms: f64) -> String {
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
