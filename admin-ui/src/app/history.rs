//! The history page: every saved version, its diff to the active one, and rollback.

use leptos::prelude::*;
use leptos::task::spawn_local;

use breakwater_api::{Diff, History, RollbackBody, Saved};

use super::Ctx;
use crate::api;

#[component]
pub(super) fn HistoryPage() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let versions = RwSignal::new(None::<History>);
    let shown = RwSignal::new(None::<(u64, String)>);
    let load = move || {
        spawn_local(async move {
            versions.set(api::get::<History>("/history").await.ok());
        })
    };
    load();
    let show = move |id: u64| {
        spawn_local(async move {
            let diff = api::get::<Diff>(&format!("/diff?from={id}&to=active")).await;
            shown.set(Some((id, diff.map_or_else(|e| e.message(), |d| d.diff))));
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
        <div class="history split">
            <table data-testid="history">
                <tr><th>"version"</th><th>"saved"</th><th>"policies"</th><th></th></tr>
                {move || {
                    let Some(v) = versions.get() else { return Vec::new() };
                    let (published, current) = (v.published, Some(v.current));
                    v.versions.into_iter().map(|e| {
                        let id = e.id;
                        let tags = [(Some(id) == current).then_some("active"), (Some(id) == published).then_some("published")]
                            .into_iter().flatten().collect::<Vec<_>>().join(", ");
                        let when = js_time(e.saved_at_ms as f64);
                        let names = e.policies.join(", ");
                        view! { <tr data-testid=format!("version-{id}")>
                            <td>{id} " " <em>{tags}</em></td><td>{when}</td><td>{names}</td>
                            <td><button on:click=move |_| show(id)>"diff"</button>
                                <button data-testid=format!("rollback-{id}") disabled=Some(id) == current on:click=move |_| rollback(id)>"roll back"</button></td>
                        </tr> }
                    }).collect::<Vec<_>>()
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
