//! The codebase's shape, checked: modules of one crate import each other one way (no cycles),
//! and every metric name is spelled in `policy::metrics` alone (tests aside).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use breakwater_e2e::repo;

/// Module paths (`engine/store`) of a crate's `src/`, each with its source text.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let mut name = rel.to_string_lossy().replace('\\', "/");
                if name == "lib" || name == "main" {
                    name = String::new();
                } else if let Some(parent) = name.strip_suffix("/mod") {
                    name = parent.to_string();
                }
                out.insert(name, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    out
}

/// The code of a file without its comments and its `#[cfg(test)]` module (tests may reach
/// anywhere).
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// `a` is `b` or inside it.
fn within(a: &str, b: &str) -> bool {
    b.is_empty() || a == b || a.starts_with(&format!("{b}/"))
}

/// Edges between modules through `crate::` and `super::` paths, leaving out a module's use of
/// its own ancestors (a child module is part of its parent).
fn edges(modules: &BTreeMap<String, String>) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (name, text) in modules {
        let code = code(text);
        let parent = name.rsplit_once('/').map_or("", |(p, _)| p);
        for (prefix, base) in [("crate::", ""), ("super::", parent)] {
            for (at, _) in code.match_indices(prefix) {
                // The longest module named by the path's leading segments.
                let rest = &code[at + prefix.len()..];
                let segments: Vec<&str> = rest
                    .split("::")
                    .map(|s| s.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or(""))
                    .take_while(|s| !s.is_empty())
                    .collect();
                let mut target = None;
                for n in 1..=segments.len() {
                    let candidate = [base.to_string(), segments[..n].join("/")]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join("/");
                    if modules.contains_key(&candidate) {
                        target = Some(candidate);
                    }
                }
                if let Some(t) = target
                    && !within(name, &t)
                    && !within(&t, name)
                {
                    out.insert((name.clone(), t));
                }
            }
        }
    }
    out
}

/// The graph between top-level modules (`source/json → decode` is `source → decode`).
fn top_level(edges: &BTreeSet<(String, String)>) -> BTreeSet<(String, String)> {
    let top = |m: &str| m.split('/').next().unwrap_or_default().to_string();
    edges.iter().map(|(a, b)| (top(a), top(b))).filter(|(a, b)| a != b).collect()
}

/// A cycle in the graph, if there is one.
fn cycle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeSet<(String, String)>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut c = path[at..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for (_, to) in edges.iter().filter(|(from, _)| from == n) {
            if let Some(c) = visit(to, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges.iter().find_map(|(from, _)| visit(from, edges, &mut Vec::new(), &mut done))
}

#[test]
fn modules_of_one_crate_import_each_other_one_way() {
    for krate in ["policy", "scenario", "host-test", "filter", "ratelimit"] {
        let graph = edges(&modules(&repo().join(krate).join("src")));
        assert!(!graph.is_empty() || krate == "filter", "{krate}: no edges found; is the scan broken?");
        // File by file, and with each top-level module standing for everything inside it.
        for graph in [top_level(&graph), graph] {
            if let Some(c) = cycle(&graph) {
                panic!("{krate}: modules import each other: {}", c.join(" → "));
            }
        }
    }
}

/// The checker itself finds a cycle, also one through `super::`.
#[test]
fn the_cycle_check_finds_cycles() {
    let mods: BTreeMap<String, String> = [
        ("a", "use crate::b::Thing;"),
        ("b", "pub struct Thing; use crate::c::sub::X;"),
        ("c", "pub mod sub;"),
        ("c/sub", "use super::super::a::Y; // a comment: crate::b\n use crate::a::Z;"),
        ("d", "// use crate::a;"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let graph = edges(&mods);
    assert!(graph.contains(&("c/sub".into(), "a".into())));
    assert!(!graph.iter().any(|(from, _)| from == "d"), "comments are not imports");
    assert_eq!(cycle(&graph).unwrap(), ["a", "b", "c/sub", "a"]);
    // A child importing a module that imports its parent: a cycle between top-level modules.
    let layered: BTreeMap<String, String> = [
        ("source", "pub mod json;"),
        ("source/json", "use crate::decode::f;"),
        ("decode", "use crate::source::Node;"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let graph = edges(&layered);
    assert_eq!(cycle(&graph), None);
    assert_eq!(cycle(&top_level(&graph)).unwrap(), ["decode", "source", "decode"]);
}

/// Metric names are built in `policy::metrics` only: no other source file spells them.
#[test]
fn metric_names_are_spelled_in_one_place() {
    let spellings = [
        "breakwater.requests",
        "breakwater.breaker_state",
        "breakwater.in_flight",
        "breakwater_requests",
        "breakwater_breaker_state",
        "breakwater_in_flight",
        "breakwater.global_degraded",
        "breakwater_global_degraded",
        "\".decision.\"",
        ".decision.{",
    ];
    let mut found = Vec::new();
    for krate in ["policy", "scenario", "api", "host-test", "filter", "cli", "admin-ui", "tests"] {
        for (name, text) in modules(&repo().join(krate).join("src")) {
            if krate == "policy" && name == "metrics" {
                continue;
            }
            for s in spellings {
                if code(&text).contains(s) {
                    found.push(format!("{krate}/src/{name}.rs: {s}"));
                }
            }
        }
    }
    assert!(found.is_empty(), "metric names spelled outside policy::metrics:\n{}", found.join("\n"));
}
