//! The shipped documents: every example is valid and round-trips through `compile`; every document
//! in policies/invalid fails with exactly the diagnostics in its `.expected` file
//! (`LINE:COL severity PATH: MESSAGE`, one per line).
//!
//! After an intended change of messages, regenerate with `BREAKWATER_BLESS=1 cargo test -p
//! breakwater-policy --test documents` and review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use breakwater_policy::{Diagnostic, Severity};

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && !p.to_string_lossy().ends_with(".scenario.yaml")
        })
        .collect();
    files.sort();
    files
}

fn line(d: &Diagnostic) -> String {
    let at = d.span.map_or("-".to_string(), |s| format!("{}:{}", s.line, s.col));
    let severity = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    format!("{at} {severity} {}: {}", d.path, d.message)
}

#[test]
fn examples_are_valid_and_compile_round_trips() {
    let files = yaml_files(&policies_dir());
    assert!(files.len() >= 3, "expected at least three example policies, found {files:?}");
    for file in files {
        let loaded = breakwater_policy::load_bytes(&std::fs::read(&file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e:#?}", file.display()));
        assert!(loaded.warnings.is_empty(), "{}: {:#?}", file.display(), loaded.warnings);
        // The compiled JSON is a valid document that loads back to the same model, through the
        // user-facing loader and through serde alike.
        let json = breakwater_policy::compile(&loaded.document);
        let again = breakwater_policy::load(&json).unwrap().document;
        assert_eq!(again, loaded.document, "{}", file.display());
        let via_serde: breakwater_policy::Document = serde_json::from_str(&json).unwrap();
        assert_eq!(via_serde, loaded.document, "{}", file.display());
        assert_eq!(breakwater_policy::compile(&again), json);
    }
}

#[test]
fn invalid_documents_fail_with_the_expected_diagnostics() {
    let dir = policies_dir().join("invalid");
    let bless = std::env::var_os("BREAKWATER_BLESS").is_some();
    let files = yaml_files(&dir);
    assert!(files.len() >= 10, "{files:?}");
    let mut mismatches = Vec::new();
    for file in files {
        let result = breakwater_policy::load_bytes(&std::fs::read(&file).unwrap());
        let diags = result.expect_err(&format!("{} should be invalid", file.display()));
        assert!(diags.iter().any(Diagnostic::is_error));
        let got: String = diags.iter().map(|d| line(d) + "\n").collect();
        let expected_file = file.with_extension("expected");
        if bless {
            std::fs::write(&expected_file, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_file)
            .unwrap_or_else(|_| panic!("missing {} (run with BREAKWATER_BLESS=1)", expected_file.display()));
        if got != want {
            mismatches.push(format!("{}:\n--- expected\n{want}--- got\n{got}", file.display()));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn merging_documents_rechecks_across_files() {
    let load = |text: &str| breakwater_policy::load(text).unwrap().document;
    let a = load("version: 1\npolicies:\n  - name: api\n    match: { path_prefix: /api }\n");
    let b = load("version: 1\ndebug_headers: true\npolicies:\n  - name: web\n  - name: api\n");
    let merged =
        breakwater_policy::merge(vec![("a.yaml".into(), a.clone()), ("b.yaml".into(), b)]).unwrap_err();
    let lines: Vec<String> = merged.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        lines,
        vec![
            "error: b.yaml: policies[1].name: duplicate policy name `api` (also a.yaml: policies[0])",
            "warning: b.yaml: policies[1].match: this policy never applies: b.yaml: policies[0] (`web`) matches every request it matches, and the first matching policy wins",
        ]
    );
    let c =
        load("version: 1\ndebug_headers: true\ntrust_attempt_count_header: true\npolicies:\n  - name: web\n");
    let ok = breakwater_policy::merge(vec![("a.yaml".into(), a), ("c.yaml".into(), c)]).unwrap();
    assert_eq!(ok.document.policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["api", "web"]);
    // A document-level switch set in any file holds for the merged document.
    assert!(ok.document.debug_headers && ok.document.trust_attempt_count_header);
    // One key seed: given by one file, it holds; two different ones are an error.
    let seeded = |seed: &str| {
        load(&format!("version: 1\nkey_seed: \"{seed}\"\npolicies:\n  - name: s{}\n", &seed[..1]))
    };
    let (x, y) = (seeded(&"a".repeat(32)), seeded(&"b".repeat(32)));
    let one = breakwater_policy::merge(vec![
        ("x.yaml".into(), x.clone()),
        ("n.yaml".into(), load("version: 1\npolicies: []\n")),
    ])
    .unwrap();
    assert_eq!(one.document.key_seed, x.key_seed);
    let two = breakwater_policy::merge(vec![("x.yaml".into(), x), ("y.yaml".into(), y)]).unwrap_err();
    assert!(two.iter().any(|d| d.is_error() && d.path == "y.yaml: key_seed"), "{two:?}");
}

/// The filter's loader (no positions, no warnings) takes and refuses exactly what the CLI's does,
/// with the same errors, on every shipped document and every invalid one.
#[test]
fn the_filters_loader_agrees_with_the_validator() {
    let mut files = yaml_files(&policies_dir());
    files.extend(yaml_files(&policies_dir().join("invalid")));
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let errors = |diags: Vec<Diagnostic>| {
            let mut e: Vec<String> =
                diags.iter().filter(|d| d.is_error()).map(|d| format!("{}: {}", d.path, d.message)).collect();
            e.sort();
            e
        };
        match (breakwater_policy::load_bytes(&bytes), breakwater_policy::load_config(&bytes)) {
            (Ok(loaded), Ok(doc)) => {
                assert_eq!(doc, loaded.document, "{}", file.display());
                // And through the compiled JSON, which is what Envoy hands the filter.
                let json = breakwater_policy::compile(&doc);
                assert_eq!(
                    breakwater_policy::load_config(json.as_bytes()).unwrap(),
                    doc,
                    "{}",
                    file.display()
                );
            }
            (Err(full), Err(fast)) => assert_eq!(errors(fast), errors(full), "{}", file.display()),
            (full, fast) => {
                panic!("{}: validator {:?}, filter {:?}", file.display(), full.is_ok(), fast.is_ok())
            }
        }
    }
}

/// The compact form (what `breakwater publish` sends) is the same document in fewer bytes.
#[test]
fn compact_compile_is_the_same_document_smaller() {
    for file in yaml_files(&policies_dir()) {
        let doc = breakwater_policy::load_bytes(&std::fs::read(&file).unwrap()).unwrap().document;
        let (full, compact) = (breakwater_policy::compile(&doc), breakwater_policy::compile_compact(&doc));
        assert_eq!(breakwater_policy::load_config(compact.as_bytes()).unwrap(), doc, "{}", file.display());
        assert!(compact.len() < full.len(), "{}: {} vs {} bytes", file.display(), compact.len(), full.len());
    }
    // Every block at its defaults: only what was written is left.
    let doc = breakwater_policy::load(
        "version: 1\npolicies:\n  - name: a\n    rate_limit: { rate: 5, per: 1s }\n    circuit_breaker: {}\n    retry: {}\n",
    )
    .unwrap()
    .document;
    let compact = breakwater_policy::compile_compact(&doc);
    assert_eq!(breakwater_policy::load_config(compact.as_bytes()).unwrap(), doc);
    assert!(!compact.contains("response") && !compact.contains("max_keys"), "{compact}");
}

#[test]
fn trusting_the_attempt_count_header_without_retries_is_flagged() {
    let warnings = |text: &str| -> Vec<String> {
        breakwater_policy::load(text).unwrap().warnings.iter().map(line).collect()
    };
    assert_eq!(
        warnings("version: 1\ntrust_attempt_count_header: true\npolicies:\n  - name: a\n"),
        [
            "2:29 warning trust_attempt_count_header: no policy retries, so the attempt count is never read: this setting does nothing"
        ]
    );
    assert!(
        warnings("version: 1\ntrust_attempt_count_header: true\npolicies:\n  - name: a\n    retry: {}\n")
            .is_empty()
    );
    assert!(warnings("version: 1\ntrust_attempt_count_header: false\npolicies:\n  - name: a\n").is_empty());
    // Off, it is left out of the compiled form, so filters built before it load the document.
    let compiled = |text: &str| breakwater_policy::compile(&breakwater_policy::load(text).unwrap().document);
    assert!(!compiled("version: 1\ntrust_attempt_count_header: false\npolicies: []\n").contains("trust"));
    assert!(compiled("version: 1\ntrust_attempt_count_header: true\npolicies: []\n").contains("trust"));
}
