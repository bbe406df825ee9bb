//! A diff as operators read one: what changes per policy (old → new, from the models), then the
//! text, unified or side by side, coloured, with line numbers.

use leptos::prelude::*;

use breakwater_api::Diff;
use breakwater_policy::describe::{Change, FieldChange};

use crate::diff::{self, Line, Row};

#[component]
pub(super) fn DiffView(diff: Diff, #[prop(into)] testid: String) -> impl IntoView {
    let split = RwSignal::new(false);
    let lines = diff::lines(&diff.diff);
    let rows = diff::side_by_side(&lines);
    let empty = lines.is_empty();
    let changes = diff.changes;
    let summary_id = format!("{testid}-summary");
    view! {
        <div class="diffview">
            {(!changes.is_empty()).then(|| view! {
                <ul class="changes" data-testid=summary_id>{changes.into_iter().map(change_view).collect_view()}</ul>
            })}
            {if empty {
                view! { <p class="hint" data-testid=testid>"No difference."</p> }.into_any()
            } else {
                view! {
                    <div class="toolbar diff-modes" role="group" aria-label="diff layout">
                        <button data-testid="diff-unified" class:active=move || !split.get()
                            aria-pressed=move || (!split.get()).to_string() on:click=move |_| split.set(false)>"Unified"</button>
                        <button data-testid="diff-split" class:active=move || split.get()
                            aria-pressed=move || split.get().to_string() on:click=move |_| split.set(true)>"Side by side"</button>
                    </div>
                    <div class="diff-text" data-testid=testid tabindex="0" aria-label="text diff">
                        {move || if split.get() { split_view(rows.clone()).into_any() } else { unified_view(lines.clone()).into_any() }}
                    </div>
                }.into_any()
            }}
        </div>
    }
}

fn change_view(c: Change) -> impl IntoView {
    match c {
        Change::Added { policy, chips } => view! {
            <li class="added"><strong>{policy}</strong>" added: "{chips.join(", ")}</li>
        }
        .into_any(),
        Change::Removed { policy } => {
            view! { <li class="removed"><strong>{policy}</strong>" removed"</li> }.into_any()
        }
        Change::Reordered { order } => view! {
            <li class="changed"><strong>"order"</strong>": "{order.join(" → ")}
                <span class="hint">" (the first policy that matches a request applies)"</span></li>
        }
        .into_any(),
        Change::Changed { policy, fields } => {
            let who = if policy.is_empty() { "document settings".to_string() } else { policy };
            view! {
                <li class="changed"><strong>{who}</strong>": "
                    {fields.into_iter().map(field_view).collect::<Vec<_>>()}
                </li>
            }
            .into_any()
        }
    }
}

fn field_view(f: FieldChange) -> impl IntoView {
    let FieldChange { field, old, new } = f;
    view! {
        <span class="field">{field}" "
            {match (old, new) {
                (Some(o), Some(n)) => view! { <del>{o}</del>" → "<ins>{n}</ins> }.into_any(),
                (None, Some(n)) => view! { <ins>{n}</ins>" (new)" }.into_any(),
                (Some(o), None) => view! { <del>{o}</del>" (removed)" }.into_any(),
                (None, None) => ().into_any(),
            }}
        </span>
    }
}

fn unified_view(lines: Vec<Line>) -> impl IntoView {
    view! {
        <table class="diff unified">
            {lines.into_iter().map(|l| match l {
                Line::Hunk(h) => view! { <tr class="hunk"><td colspan="3">{h}</td></tr> }.into_any(),
                Line::Same { old, new, text } => view! {
                    <tr><td class="n">{old}</td><td class="n">{new}</td><td><code>" "{text}</code></td></tr>
                }.into_any(),
                Line::Removed { old, text } => view! {
                    <tr class="del"><td class="n">{old}</td><td class="n"></td><td><code>"-"{text}</code></td></tr>
                }.into_any(),
                Line::Added { new, text } => view! {
                    <tr class="add"><td class="n"></td><td class="n">{new}</td><td><code>"+"{text}</code></td></tr>
                }.into_any(),
            }).collect_view()}
        </table>
    }
}

fn split_view(rows: Vec<Row>) -> impl IntoView {
    let side = |cell: Option<(usize, String)>, class: &'static str, changed: bool| match cell {
        Some((n, text)) => view! {
            <td class="n">{n}</td><td class=if changed { class } else { "" }><code>{text}</code></td>
        }
        .into_any(),
        None => view! { <td class="n"></td><td class="blank"></td> }.into_any(),
    };
    view! {
        <table class="diff side-by-side">
            <colgroup><col class="n"/><col/><col class="n"/><col/></colgroup>
            {rows.into_iter().map(|r| match r {
                Row::Hunk(h) => view! { <tr class="hunk"><td colspan="4">{h}</td></tr> }.into_any(),
                Row::Pair { old, new, changed } => view! {
                    <tr>{side(old, "del", changed)}{side(new, "add", changed)}</tr>
                }.into_any(),
            }).collect_view()}
        </table>
    }
}
