// The editor's reading of the YAML tree and of the JSON Schema (src/schema.js), against the
// project's own schema (policies/schema.json). Run by `just editor-test` (node's test runner).

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { keysAt, lineShape, parentPath, schemasAt, siblingKeys, step, unitsBefore, valuesOf } from "../src/schema.js";

const schema = JSON.parse(readFileSync(new URL("../../../policies/schema.json", import.meta.url), "utf8"));

/** The path of the mapping that would hold a key typed at the `|` of `text`. */
function pathAtCursor(text) {
  const lines = text.split("\n");
  const n = lines.findIndex((l) => l.includes("|"));
  const before = lines[n].slice(0, lines[n].indexOf("|"));
  const s = lineShape(before + "x:");
  return parentPath((i) => lines[i - 1].replace("|", ""), n + 1, s.contentCol, s.dashes);
}

test("a line's dashes and key", () => {
  assert.deepEqual(lineShape("  - name: a"), { dashes: [2], key: "name", keyCol: 4, blank: false, contentCol: 4 });
  assert.deepEqual(lineShape("    rate: 10").key, "rate");
  assert.equal(lineShape("   # comment").blank, true);
  assert.equal(lineShape("url: http://x").key, "url");
  assert.equal(lineShape("  - 503").key, null);
});

test("the path under the cursor, in block and compact lists", () => {
  const doc = "version: 1\npolicies:\n  - name: a\n    rate_limit:\n      rate: 10\n      |";
  assert.deepEqual(pathAtCursor(doc), ["policies", "[]", "rate_limit"]);
  assert.deepEqual(pathAtCursor("version: 1\npolicies:\n  - name: a\n    rate_limit:\n      rate: 10\n    |"), ["policies", "[]"]);
  assert.deepEqual(pathAtCursor("policies:\n- name: a\n  retry:\n    max_retries: 2\n  |"), ["policies", "[]"]);
  assert.deepEqual(pathAtCursor("policies:\n  - |"), ["policies", "[]"]);
  assert.deepEqual(pathAtCursor("policies:\n  - name: a\n  - |"), ["policies", "[]"]);
  assert.deepEqual(pathAtCursor("version: 1\n|"), []);
  assert.deepEqual(pathAtCursor("policies:\n  - name: a\n\n    # a comment\n    circuit_breaker:\n      |"), ["policies", "[]", "circuit_breaker"]);
  assert.deepEqual(
    pathAtCursor("policies:\n  - name: a\n    match:\n      - path_prefix: /x\n        |"),
    ["policies", "[]", "match", "[]"],
  );
});

test("the schema's keys for a block", () => {
  const names = (path) => keysAt(schema, path).map((k) => k.name);
  assert.ok(names([]).includes("policies") && names([]).includes("version"));
  const policy = names(["policies", "[]"]);
  for (const k of ["name", "rate_limit", "retry", "circuit_breaker", "concurrency_limit", "fault"]) assert.ok(policy.includes(k), k);
  const rate = names(["policies", "[]", "rate_limit"]);
  assert.ok(rate.includes("rate") && rate.includes("burst") && rate.includes("per"), rate.join());
  assert.ok(!rate.includes("max_retries"));
  assert.deepEqual(names(["nothing", "here"]), []);
  assert.ok(keysAt(schema, ["policies", "[]"]).find((k) => k.name === "name").required);
});

test("the values a key may take", () => {
  const values = (path, key) => valuesOf(step(schema, schemasAt(schema, path), key));
  assert.ok(values(["policies", "[]", "global_rate_limit"], "mode").includes("exact"));
  assert.deepEqual(values(["policies", "[]"], "mode").sort(), ["enforce", "shadow"]);
});

test("keys already in the mapping are known", () => {
  const lines = "policies:\n  - name: a\n    retry:\n      max_retries: 1\n    \n    timeout: 2s".split("\n");
  const keys = siblingKeys((i) => lines[i - 1], lines.length, 5, 4);
  assert.deepEqual([...keys].sort(), ["name", "retry", "timeout"]);
  // A new item: the keys of the items before and after are theirs, not its own.
  const items = "policies:\n  - name: a\n    rate_limit: {}\n  - \n  - name: b\n    timeout: 1s".split("\n");
  assert.deepEqual([...siblingKeys((i) => items[i - 1], items.length, 4, 4, true)], []);
  // The last key of an item does not see the next item's.
  assert.deepEqual([...siblingKeys((i) => items[i - 1], items.length, 3, 4)].sort(), ["name"]);
});

test("a property's own description and default win over its type's", () => {
  const per = step(schema, schemasAt(schema, ["policies", "[]", "rate_limit"]), "per");
  assert.equal(per[0].description, "The period `rate` refers to.");
  assert.equal(per[0].default, "1s");
});

test("the validator's character columns are CodeMirror's UTF-16 offsets", () => {
  assert.equal(unitsBefore("rate: x", 7), 6);
  // An emoji is one character and two UTF-16 units.
  assert.equal(unitsBefore("name: \u{1F600} x", 9), 9);
  assert.equal(unitsBefore("ab", 1), 0);
});
