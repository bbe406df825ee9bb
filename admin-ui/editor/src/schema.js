// The YAML tree around a cursor, read from indentation alone (the text being edited is often not
// valid YAML, so a parser cannot be relied on), and what the policy language's JSON Schema
// (schemars' output: `$defs`, `$ref`, `anyOf` for optional fields) says may stand there. Pure:
// no editor, no DOM; tested with node (test/schema.test.mjs).

/** A line's shape: its list dashes' columns, and the key it opens (if any) with its column. */
export function lineShape(text) {
  const m = /^(\s*)((?:-\s+)*)(.*)$/.exec(text);
  const indent = m[1].length;
  const dashes = [];
  let col = indent;
  for (const d of m[2].matchAll(/-\s+/g)) {
    dashes.push(col);
    col += d[0].length;
  }
  const rest = m[3];
  const blank = rest.trim() === "" || rest.trimStart().startsWith("#");
  const k = /^([A-Za-z_][\w-]*)\s*:(\s|$)/.exec(rest);
  return { dashes, key: k ? k[1] : null, keyCol: k ? col : null, blank: blank && dashes.length === 0, contentCol: col };
}

/**
 * The path (keys, and "[]" for a list item) of the mapping that holds a key at column `col` of
 * line `lineNo` (1-based), whose own line has `dashes` before it.
 */
export function parentPath(lines, lineNo, col, dashes) {
  const path = [];
  let limit = dashes.length > 0 ? dashes[0] : col;
  // After a list item's dash, its parent key may sit at the dash's own column ("policies:\n- a").
  let orEqual = false;
  for (let i = dashes.length; i > 0; i--) path.unshift("[]");
  if (dashes.length > 0) orEqual = true;
  for (let n = lineNo - 1; n >= 1 && (limit > 0 || orEqual); n--) {
    const s = lineShape(lines(n));
    if (s.blank) continue;
    const first = s.dashes.length > 0 ? s.dashes[0] : s.keyCol ?? s.contentCol;
    if (s.key !== null && (s.keyCol < limit || (orEqual && s.keyCol <= limit && s.dashes.length === 0))) {
      path.unshift(s.key);
      for (let i = 0; i < s.dashes.length; i++) path.unshift("[]");
      orEqual = s.dashes.length > 0;
      limit = first;
    } else if (s.dashes.length > 0 && s.dashes[0] < limit) {
      // A sibling key in the same list item ("- name: a" above "  rate_limit:").
      for (let i = 0; i < s.dashes.length; i++) path.unshift("[]");
      orEqual = true;
      limit = s.dashes[0];
    }
  }
  return path;
}

// ---------------------------------------------------------------------------------------------
// The JSON Schema (schemars' output: `$defs`, `$ref`, `anyOf` for optional fields).

function deref(root, s) {
  let seen = 0;
  while (s && s.$ref && seen++ < 32) {
    const name = s.$ref.replace(/^#\/(\$defs|definitions)\//, "");
    s = (root.$defs || root.definitions || {})[name];
  }
  return s;
}

/**
 * Every alternative of a schema: itself (a property's own description and default sit beside its
 * `$ref`), what its `$ref` points to, and the branches of anyOf/oneOf/allOf, all flattened.
 */
export function alternatives(root, s, out = [], depth = 0) {
  if (!s || typeof s !== "object" || depth > 32) return out;
  out.push(s);
  if (s.$ref) alternatives(root, deref(root, { $ref: s.$ref }), out, depth + 1);
  for (const k of ["anyOf", "oneOf", "allOf"]) for (const sub of s[k] || []) alternatives(root, sub, out, depth + 1);
  return out;
}

export function step(root, schemas, segment) {
  const next = [];
  for (const s of schemas) {
    if (segment === "[]") {
      if (s.items) alternatives(root, s.items, next);
    } else if (s.properties && s.properties[segment]) {
      alternatives(root, s.properties[segment], next);
    } else if (s.additionalProperties && typeof s.additionalProperties === "object") {
      alternatives(root, s.additionalProperties, next);
    }
  }
  return next;
}

export function schemasAt(root, path) {
  let schemas = alternatives(root, root);
  for (const seg of path) schemas = step(root, schemas, seg);
  return schemas;
}

export function describe(schemas) {
  for (const s of schemas) if (s.description) return s.description;
  return "";
}

export function typeOf(schemas) {
  const types = new Set();
  for (const s of schemas) {
    const t = s.type;
    if (Array.isArray(t)) t.filter((x) => x !== "null").forEach((x) => types.add(x));
    else if (t && t !== "null") types.add(t);
    if (s.enum) types.add("one of " + s.enum.filter((v) => v !== null).map((v) => JSON.stringify(v)).join(", "));
  }
  return [...types].join(" | ");
}

export function defaultOf(schemas) {
  for (const s of schemas) if (s.default !== undefined && s.default !== null) return JSON.stringify(s.default);
  return null;
}

/** The keys a mapping at `path` may hold: [{name, schemas, required}]. */
export function keysAt(root, path) {
  const out = new Map();
  for (const s of schemasAt(root, path)) {
    for (const [name, sub] of Object.entries(s.properties || {})) {
      if (!out.has(name)) out.set(name, { name, schemas: alternatives(root, sub), required: (s.required || []).includes(name) });
    }
  }
  return [...out.values()];
}

/** The values a key may take, when the schema lists them (enums, booleans). */
export function valuesOf(schemas) {
  const out = new Set();
  for (const s of schemas) {
    for (const v of s.enum || []) if (v !== null) out.add(String(v));
    if (s.const !== undefined && s.const !== null) out.add(String(s.const));
    if (s.type === "boolean" || (Array.isArray(s.type) && s.type.includes("boolean"))) {
      out.add("true");
      out.add("false");
    }
  }
  return [...out];
}

/**
 * The keys at column `col` in the mapping around line `lineNo` (which opens a list item when
 * `opensItem`: then the keys above belong to the item before).
 */
export function siblingKeys(lines, count, lineNo, col, opensItem = false) {
  const out = new Set();
  const scan = (from, dir) => {
    for (let n = from; n >= 1 && n <= count; n += dir) {
      const s = lineShape(lines(n));
      if (s.blank) continue;
      const first = s.dashes.length > 0 ? s.dashes[0] : s.keyCol ?? s.contentCol;
      if (first < col) {
        // Going up, the line that opens this list item holds one of its keys too; going down,
        // such a line opens the next item.
        if (dir < 0 && s.key !== null && s.keyCol === col) out.add(s.key);
        break;
      }
      if (s.key !== null && s.keyCol === col && s.dashes.length === 0) out.add(s.key);
    }
  };
  if (!opensItem) scan(lineNo - 1, -1);
  scan(lineNo + 1, 1);
  return out;
}

/**
 * The offset in a line of its `col`th character (1-based): the validator counts characters,
 * CodeMirror counts UTF-16 units, which differ after a character outside the BMP (an emoji).
 */
export function unitsBefore(text, col) {
  let units = 0;
  let chars = 0;
  for (const c of text) {
    if (chars >= col - 1) break;
    units += c.length;
    chars += 1;
  }
  return units;
}

