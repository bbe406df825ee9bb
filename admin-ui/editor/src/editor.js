// The admin's YAML editor: CodeMirror 6 with YAML highlighting, line numbers, the validator's
// diagnostics underlined at their line:col (message on hover and in the gutter), and completion
// and hover documentation driven by the policy language's JSON Schema.
//
// Bundled offline by esbuild (`just build-admin`) into dist/editor.js, a classic script that
// defines `window.breakwaterEditor` before the Leptos app starts; the app calls it through
// wasm-bindgen (admin-ui/src/editor.rs). Nothing is fetched at run time.

import { EditorView, basicSetup } from "codemirror";
import { EditorState } from "@codemirror/state";
import { keymap, hoverTooltip } from "@codemirror/view";
import { indentWithTab } from "@codemirror/commands";
import { yaml } from "@codemirror/lang-yaml";
import { lintGutter, setDiagnostics } from "@codemirror/lint";
import { autocompletion } from "@codemirror/autocomplete";
import {
  alternatives, defaultOf, describe, keysAt, lineShape, parentPath, schemasAt, siblingKeys, step, typeOf, unitsBefore,
  valuesOf,
} from "./schema.js";

// ---------------------------------------------------------------------------------------------

function lineReader(doc) {
  return (n) => doc.line(n).text;
}

/** Completion: the keys of the block under the cursor, or the values a key may take. */
function schemaCompletion(root) {
  return (context) => {
    const line = context.state.doc.lineAt(context.pos);
    const before = line.text.slice(0, context.pos - line.from);
    const lines = lineReader(context.state.doc);
    const keyTyped = /^(\s*)((?:-\s+)*)([A-Za-z_][\w-]*)?$/.exec(before);
    if (keyTyped) {
      const s = lineShape(before + "x:");
      const word = keyTyped[3] || "";
      if (!word && !context.explicit) return null;
      const path = parentPath(lines, line.number, s.contentCol, s.dashes);
      // Keys already in this mapping are not offered again.
      const present = siblingKeys(lines, context.state.doc.lines, line.number, s.contentCol, s.dashes.length > 0);
      const options = keysAt(root, path)
        .filter((k) => !present.has(k.name))
        .map((k) => ({
          label: k.name,
          type: "property",
          detail: typeOf(k.schemas) + (k.required ? " (required)" : ""),
          info: describe(k.schemas) || undefined,
          apply: k.name + ": ",
          boost: k.required ? 1 : 0,
        }));
      if (options.length === 0) return null;
      return { from: context.pos - word.length, options, validFor: /^[\w-]*$/ };
    }
    const valueTyped = /^(\s*)((?:-\s+)*)([A-Za-z_][\w-]*)\s*:\s+([\w.-]*)$/.exec(before);
    if (valueTyped) {
      const s = lineShape(before);
      const path = parentPath(lines, line.number, s.contentCol, s.dashes);
      const values = valuesOf(step(root, schemasAt(root, path), valueTyped[3]));
      if (values.length === 0) return null;
      return {
        from: context.pos - valueTyped[4].length,
        options: values.map((v) => ({ label: v, type: "enum" })),
        validFor: /^[\w.-]*$/,
      };
    }
    return null;
  };
}

/** Hover documentation of a key: its type, default and description from the schema. */
function schemaHover(root) {
  return hoverTooltip((view, pos) => {
    const line = view.state.doc.lineAt(pos);
    const s = lineShape(line.text);
    if (s.key === null) return null;
    const from = line.from + s.keyCol;
    const to = from + s.key.length;
    if (pos < from || pos > to) return null;
    const path = parentPath(lineReader(view.state.doc), line.number, s.keyCol, s.dashes);
    const schemas = step(root, schemasAt(root, path), s.key);
    if (schemas.length === 0) return null;
    return {
      pos: from,
      end: to,
      above: true,
      create() {
        const dom = document.createElement("div");
        dom.className = "cm-schema-doc";
        dom.setAttribute("data-testid", "editor-hover");
        const head = document.createElement("div");
        head.className = "cm-schema-head";
        const def = defaultOf(schemas);
        head.textContent = [path.concat(s.key).join(".").replace(/\.\[\]/g, "[]"), typeOf(schemas), def ? "default " + def : ""]
          .filter(Boolean)
          .join(" · ");
        dom.appendChild(head);
        const text = describe(schemas);
        if (text) {
          const p = document.createElement("div");
          p.textContent = text;
          dom.appendChild(p);
        }
        return { dom };
      },
    };
  });
}

// ---------------------------------------------------------------------------------------------

/** From the validator's 1-based line:col to a range: the token that starts there. */
function range(doc, line, col) {
  const l = doc.line(Math.min(Math.max(line, 1), doc.lines));
  const from = Math.min(l.from + unitsBefore(l.text, col), l.to);
  let to = from;
  const text = doc.sliceString(from, l.to);
  const m = /^("[^"]*"|'[^']*'|[^\s:,\]}]+)/.exec(text);
  if (m) to = from + m[0].length;
  else if (from < l.to) to = from + 1;
  return { from, to };
}

function create(parent, text, schemaText, label, onChange) {
  let schema = null;
  try {
    schema = schemaText ? JSON.parse(schemaText) : null;
  } catch (_) {
    schema = null;
  }
  let quiet = false;
  const extensions = [
    basicSetup,
    keymap.of([indentWithTab]),
    yaml(),
    lintGutter(),
    EditorState.tabSize.of(2),
    EditorView.contentAttributes.of({ "aria-label": label }),
    EditorView.updateListener.of((u) => {
      if (u.docChanged && !quiet) onChange(u.state.doc.toString());
    }),
  ];
  if (schema) {
    extensions.push(autocompletion({ override: [schemaCompletion(schema)] }));
    extensions.push(schemaHover(schema));
  }
  const view = new EditorView({ state: EditorState.create({ doc: text, extensions }), parent });
  const handle = {
    view,
    text() {
      return view.state.doc.toString();
    },
    /** Replaces the text (a form edit, a load): not echoed back through onChange. */
    setText(t) {
      if (t === view.state.doc.toString()) return;
      quiet = true;
      try {
        view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: t } });
      } finally {
        quiet = false;
      }
    },
    /** Replaces the text as a user would (echoed through onChange): for tests and pastes. */
    type(t) {
      view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: t }, userEvent: "input.paste" });
    },
    /** `[{line, col, severity, message}]`, 1-based; entries without a position are skipped. */
    setDiagnostics(json) {
      let list = [];
      try {
        list = JSON.parse(json);
      } catch (_) {
        list = [];
      }
      const doc = view.state.doc;
      const diagnostics = list
        .filter((d) => d.line)
        .map((d) => ({ ...range(doc, d.line, d.col || 1), severity: d.severity === "warning" ? "warning" : "error", message: d.message }));
      view.dispatch(setDiagnostics(view.state, diagnostics));
    },
    /** Puts the cursor at a 1-based line:col and focuses the editor. */
    setCursor(line, col) {
      const l = view.state.doc.line(Math.min(Math.max(line, 1), view.state.doc.lines));
      view.dispatch({ selection: { anchor: Math.min(l.from + unitsBefore(l.text, col), l.to) }, scrollIntoView: true });
      view.focus();
    },
    focus() {
      view.focus();
    },
    destroy() {
      view.destroy();
    },
  };
  // Tests (and anyone in the console) reach the editor from its element.
  parent.breakwaterEditor = handle;
  return handle;
}

window.breakwaterEditor = { create, lineShape, parentPath, keysAt, schemasAt, unitsBefore };
