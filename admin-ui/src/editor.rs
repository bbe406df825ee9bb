//! The code editor of the YAML view and the scenario: CodeMirror 6 (admin-ui/editor, bundled by
//! esbuild into `editor.js`, loaded before this app), with YAML highlighting, line numbers, the
//! validator's diagnostics underlined at their line:col (the message on hover and in the
//! gutter), and completion and hover documentation from the policy language's JSON Schema.
//!
//! The editor is the source of the text while the user types; a change from elsewhere (a form
//! edit, a load) replaces its text without echoing back. When the bundle did not load, a plain
//! text area stands in, so the admin never loses its YAML view.

use breakwater_policy::Diagnostic;
use leptos::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// The policy language's JSON Schema, as shipped (a test keeps it equal to the model's).
pub const POLICY_SCHEMA: &str = include_str!("../../policies/schema.json");

#[wasm_bindgen]
extern "C" {
    /// One editor (admin-ui/editor/src/editor.js, `create`'s answer).
    type Handle;
    #[wasm_bindgen(catch, js_namespace = breakwaterEditor, js_name = create)]
    fn create(
        parent: &web_sys::HtmlElement,
        text: &str,
        schema: &str,
        label: &str,
        on_change: &js_sys::Function,
    ) -> Result<Handle, JsValue>;
    #[wasm_bindgen(method, js_name = setText)]
    fn set_text(this: &Handle, text: &str);
    #[wasm_bindgen(method, js_name = setDiagnostics)]
    fn set_diagnostics(this: &Handle, json: &str);
    #[wasm_bindgen(method)]
    fn destroy(this: &Handle);
}

/// An editor and the callback it calls on every change (dropped with it).
struct Mounted {
    handle: Handle,
    _on_change: Closure<dyn FnMut(String)>,
}

#[component]
pub fn CodeEditor(
    /// The text; a change made elsewhere replaces the editor's.
    #[prop(into)]
    text: Signal<String>,
    /// Every edit made in the editor.
    on_change: Callback<String>,
    /// Shown where they point (those without a position are the caller's to show).
    #[prop(into)]
    diagnostics: Signal<Vec<Diagnostic>>,
    /// A JSON Schema for completion and hover documentation (none: neither).
    #[prop(optional)]
    schema: Option<&'static str>,
    label: &'static str,
    testid: &'static str,
    #[prop(optional)] class: &'static str,
    /// Set when the editor could not be created and a plain text area stands in: the caller
    /// must then list every diagnostic itself.
    #[prop(optional)]
    fallback: Option<RwSignal<bool>>,
) -> impl IntoView {
    let node = NodeRef::<leptos::html::Div>::new();
    let mounted = StoredValue::new_local(None::<Mounted>);
    let fallback = fallback.unwrap_or_else(|| RwSignal::new(false));
    Effect::new(move |_| {
        let Some(el) = node.get() else { return };
        if mounted.with_value(Option::is_some) {
            return;
        }
        let on_change = Closure::<dyn FnMut(String)>::new(move |t: String| on_change.run(t));
        match create(
            &el,
            &text.get_untracked(),
            schema.unwrap_or_default(),
            label,
            on_change.as_ref().unchecked_ref(),
        ) {
            Ok(handle) => mounted.set_value(Some(Mounted { handle, _on_change: on_change })),
            Err(_) => fallback.set(true),
        }
    });
    Effect::new(move |_| {
        let t = text.get();
        mounted.with_value(|m| {
            if let Some(m) = m {
                m.handle.set_text(&t);
            }
        });
    });
    Effect::new(move |_| {
        let json = serde_json::to_string(&diagnostics.get()).unwrap_or_else(|_| "[]".into());
        // After a text change: the positions are those of the current text.
        let _ = text.get();
        mounted.with_value(|m| {
            if let Some(m) = m {
                m.handle.set_diagnostics(&json);
            }
        });
    });
    on_cleanup(move || {
        if let Some(m) = mounted.try_update_value(Option::take).flatten() {
            m.handle.destroy();
        }
    });
    view! {
        <Show when=move || !fallback.get() fallback=move || view! {
            <textarea class=format!("yaml {class}") data-testid=testid spellcheck="false" aria-label=label
                prop:value=move || text.get()
                on:input=move |ev| on_change.run(event_target_value(&ev))></textarea>
        }>
            <div class=format!("code-editor {class}") data-testid=testid node_ref=node></div>
        </Show>
    }
}
