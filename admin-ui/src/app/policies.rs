//! The policies page: the list with live counters, and the editor (form or YAML).

use leptos::prelude::*;
use leptos::task::spawn_local;

use breakwater_api::{Saved, Status, TextBody};
use breakwater_policy::Diagnostic;
use breakwater_policy::describe::Chip;
use breakwater_policy::metrics::Decision;
use serde_json::Value;

use super::Ctx;
use crate::api;
use crate::editor::{CodeEditor, POLICY_SCHEMA};
use crate::form::{self, BLOCKS, Kind};

fn policies(doc: &Value) -> Vec<Value> {
    doc.get("policies").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// A policy's chips: from the model (every default applied) of the last valid document, and a
/// warning chip while the policy's current text has errors.
fn chips_of(ctx: &Ctx, index: usize, name: &str) -> Vec<Chip> {
    let mut out = ctx.model.with(|m| {
        m.as_ref()
            .and_then(|d| d.policies.iter().find(|p| p.name == name))
            .map(breakwater_policy::describe::chips)
            .unwrap_or_default()
    });
    let prefix = format!("policies[{index}]");
    let errors = ctx.diags.with(|(_, d)| {
        d.iter()
            .filter(|d| {
                d.is_error()
                    && d.path
                        .strip_prefix(&prefix)
                        .is_some_and(|r| !r.starts_with(|c: char| c.is_ascii_digit()))
            })
            .count()
    });
    if errors > 0 {
        let text = format!("{errors} {} to fix", if errors == 1 { "error" } else { "errors" });
        out.insert(0, Chip { kind: "invalid", text });
    }
    out
}

#[component]
pub(super) fn PoliciesPage() -> impl IntoView {
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
                            <span class="badges" data-testid=format!("chips-{name}")>{
                                let chip_name = name.clone();
                                move || chips_of(&ctx, i, &chip_name).into_iter().map(|c| view! {
                                    <span class=format!("badge {}", c.kind)>{c.text}</span>
                                }).collect_view()
                            }</span>
                            <span class="counters">{move || ctx.status.with(|s| live_line(s.as_ref(), &live_name))}</span>
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

/// A policy's counters in one line: requests (each has one decision), rejected, the breaker.
fn live_line(status: Option<&Status>, name: &str) -> String {
    let Some(p) = status.and_then(|s| s.policies.get(name)) else { return String::new() };
    let decided = |rejected: bool| -> u64 {
        p.requests
            .iter()
            .filter(|(c, _)| c.decision().is_some_and(|d| !rejected || d != Decision::Allowed))
            .map(|(_, n)| n)
            .sum()
    };
    let breaker = p.breaker.map(|b| format!(" · breaker {b}")).unwrap_or_default();
    let global = if p.global_degraded == Some(true) { " · global limit degraded" } else { "" };
    format!("{} requests · {} rejected{breaker}{global}", decided(false), decided(true))
}

#[component]
fn Editor() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let raw = RwSignal::new(false);
    // The code editor did not load: its text area marks nothing, so everything is listed.
    let plain = RwSignal::new(false);
    let saving = RwSignal::new(false);
    let save = move |_| {
        saving.set(true);
        let text = ctx.text.get_untracked();
        spawn_local(async move {
            let version = ctx.version.get_untracked();
            let answer =
                api::send_if_active::<_, Saved>("PUT", "/policy", Some(&TextBody { text }), version).await;
            saving.set(false);
            match answer {
                Ok(saved) => {
                    ctx.saved.set(ctx.text.get_untracked());
                    ctx.version.set(saved.version);
                    ctx.refresh_status();
                    ctx.notice.set(Some((true, format!("Saved as version {}", saved.version))));
                }
                Err(e) if e.status == api::CONFLICT => ctx.conflict.set(Some(e.message())),
                Err(e) => ctx.notice.set(Some((false, e.message()))),
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
            .filter(|d| {
                if raw.get() {
                    // The editor marks the others at their line and column.
                    return plain.get() || d.span.is_none();
                }
                match form::locate(&d.path) {
                    Some((i, Some(_))) => Some(i) != sel,
                    _ => true,
                }
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
                {move || (raw.get() && !plain.get()).then(|| {
                    let marked = ctx.diags.with(|(_, d)| d.iter().filter(|d| d.span.is_some()).count());
                    (marked > 0).then(|| view! {
                        <li class="hint">{format!("{marked} {} marked in the text: hover the underline or the gutter for the message",
                            if marked == 1 { "problem" } else { "problems" })}</li>
                    })
                })}
                {move || unplaced().into_iter().map(|d| view! {
                    <li class=if d.is_error() { "error" } else { "warning" }>{diag_text(&d)}</li>
                }).collect_view()}
            </ul>
            {move || if raw.get() {
                view! {
                    <CodeEditor text=ctx.text on_change=Callback::new(move |t| ctx.set_text(t))
                        diagnostics=Signal::derive(move || ctx.diags.get().1) schema=POLICY_SCHEMA
                        label="policy document (YAML)" testid="yaml" fallback=plain/>
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
    // The control is named by its label and described by its help and its error.
    let control = format!("ctl-{id}");
    let label_id = format!("{control}-label");
    let described = format!("{control}-help {control}-error");
    let input = match field.kind {
        Kind::Choice(_) | Kind::Bool => {
            let options: &[&str] = match field.kind {
                Kind::Choice(options) => options,
                _ => &["true", "false"],
            };
            let set = set.clone();
            view! {
                <select data-testid=id.clone() id=control.clone() aria-describedby=described.clone()
                    prop:value=value.clone() on:change=move |ev| set(event_target_value(&ev))>
                    <option value="">"(default)"</option>
                    {options.iter().map(|o| view! { <option value=*o>{*o}</option> }).collect_view()}
                </select>
            }
            .into_any()
        }
        Kind::Multi(words) => {
            let path = path.clone();
            view! {
                <span class="words" data-testid=id.clone() role="group" aria-labelledby=label_id.clone()>
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
                <textarea data-testid=id.clone() id=control.clone() aria-describedby=described.clone() rows="2" prop:value=value.clone()
                    on:input={let set = set.clone(); move |ev| if on_input { set(event_target_value(&ev)) }}
                    on:change=move |ev| if !on_input { set(event_target_value(&ev)) }></textarea>
            }
            .into_any()
        }
        Kind::List | Kind::IntList => {
            let set = set.clone();
            view! { <input type="text" data-testid=id.clone() id=control.clone() aria-describedby=described.clone()
            prop:value=value.clone() on:change=move |ev| set(event_target_value(&ev))/> }
            .into_any()
        }
        Kind::Text | Kind::Int | Kind::Number | Kind::Duration | Kind::Window => {
            let set = set.clone();
            view! { <input type="text" data-testid=id.clone() id=control.clone() aria-describedby=described.clone()
            prop:value=value.clone() on:input=move |ev| set(event_target_value(&ev))/> }
            .into_any()
        }
    };
    view! {
        <div class="field" class:invalid=has_error>
            {if matches!(field.kind, Kind::Multi(_)) {
                view! { <span class="label" id=label_id>{field.label}</span> }.into_any()
            } else {
                view! { <label for=control.clone() id=label_id>{field.label}</label> }.into_any()
            }}
            {input}
            <span class="help" id=format!("{control}-help")>{field.help}</span>
            <span class="error" id=format!("{control}-error") aria-live="polite" data-testid=format!("error-{}", &id[6..])>{move || errors().join("; ")}</span>
        </div>
    }
}
