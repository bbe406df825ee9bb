//! Hostile input never panics the loader: random bytes, mutated real documents, deep nesting,
//! huge numbers, 10 MB documents. Each must end in a clear result (valid, or errors).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;

const EXAMPLES: [&str; 3] = [
    include_str!("../../policies/api-per-key.yaml"),
    include_str!("../../policies/flaky-backend.yaml"),
    include_str!("../../policies/gateway-shadow.yaml"),
];

fn outcome(bytes: &[u8]) -> usize {
    match breakwater_policy::load_bytes(bytes) {
        Ok(l) => l.document.policies.len(),
        Err(diags) => {
            assert!(diags.iter().any(|d| d.is_error()), "failed without an error: {diags:?}");
            assert!(diags.iter().all(|d| !d.message.is_empty()));
            0
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        outcome(&bytes);
    }

    #[test]
    fn yaml_shaped_noise(tokens in proptest::collection::vec(prop_oneof![
        Just("version: 1\n"), Just("policies:\n"), Just("  - name: a\n"), Just("- "), Just(": "),
        Just("{"), Just("}"), Just("["), Just("]"), Just(","), Just("&a "), Just("*a "), Just("!!str "),
        Just("\n"), Just("  "), Just("\""), Just("'"), Just("|\n"), Just(">-\n"), Just("rate_limit:"),
        Just("99999999999999999999999"), Just("-1"), Just("1.5e400"), Just("~"), Just("---\n"), Just("? "),
        Just("%YAML 1.2\n"), Just("\t"), Just("#"), Just("\u{feff}"), Just("é"),
    ], 0..80)) {
        outcome(tokens.concat().as_bytes());
    }

    /// Real documents with a few bytes changed, deleted or inserted.
    #[test]
    fn mutated_examples(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut doc = EXAMPLES[which].as_bytes().to_vec();
        for (at, byte, kind) in edits {
            let i = at.index(doc.len().max(1)).min(doc.len().saturating_sub(1));
            match kind {
                0 if !doc.is_empty() => doc[i] = byte,
                1 if !doc.is_empty() => { doc.remove(i); }
                _ => doc.insert(i, byte),
            }
        }
        outcome(&doc);
    }
}

#[test]
fn deep_block_nesting() {
    let mut doc = String::from("version: 1\npolicies:\n");
    for depth in 0..5000 {
        doc.push_str(&" ".repeat(depth));
        doc.push_str("a:\n");
    }
    assert_eq!(outcome(doc.as_bytes()), 0);
    let flow = format!("version: 1\npolicies: {}{}", "[".repeat(200_000), "]".repeat(200_000));
    assert_eq!(outcome(flow.as_bytes()), 0);
}

#[test]
fn ten_megabyte_body_is_refused_with_a_message() {
    let body = "x".repeat(10 * 1024 * 1024);
    let doc = format!(
        "version: 1\npolicies:\n  - name: big\n    fallback:\n      response: {{ status: 200, body: \"{body}\" }}\n"
    );
    let errs = breakwater_policy::load(&doc).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path, "policies[0].fallback.response.body");
    assert!(errs[0].message.contains("at most 65536 bytes"), "{}", errs[0].message);
}

#[test]
fn ten_megabytes_of_policies_is_refused_with_a_message() {
    let mut doc = String::from("version: 1\npolicies:\n");
    let mut i = 0;
    while doc.len() < 10 * 1024 * 1024 {
        doc.push_str(&format!(
            "  - name: p{i}\n    match: {{ path: /p{i} }}\n    rate_limit: {{ rate: 10 }}\n"
        ));
        i += 1;
    }
    let errs = breakwater_policy::load(&doc).unwrap_err();
    assert_eq!(errs.len(), 1, "{:?}", &errs[..errs.len().min(3)]);
    assert!(errs[0].message.starts_with("at most 10000 policies"), "{}", errs[0].message);
}

#[test]
fn thousands_of_policies_load() {
    let mut doc = String::from("version: 1\npolicies:\n");
    for i in 0..2000 {
        doc.push_str(&format!(
            "  - name: p{i}\n    match: {{ path: /p{i} }}\n    rate_limit: {{ rate: 10 }}\n"
        ));
    }
    assert_eq!(outcome(doc.as_bytes()), 2000);
}

#[test]
fn huge_and_negative_numbers_are_range_errors() {
    for value in ["99999999999999999999999999999", "-5", "1e300", "18446744073709551616", ".inf", ".nan"] {
        let doc = format!("version: 1\npolicies:\n  - name: a\n    rate_limit: {{ rate: {value} }}\n");
        let errs = breakwater_policy::load(&doc).unwrap_err();
        assert_eq!(errs.len(), 1, "{value}: {errs:?}");
        assert_eq!(errs[0].path, "policies[0].rate_limit.rate", "{value}");
    }
}

/// Issue 20, defect 3: a 2 MiB body of 200,000 keys in one mapping. Duplicate detection was
/// quadratic (2·10¹⁰ key comparisons, many minutes); it is linear now, and the duplicate is still
/// found, in YAML and in JSON alike. The bound is loose (debug build, shared machine): it tells
/// linear from quadratic, it is not a speed target.
#[test]
fn wide_mappings_are_checked_for_duplicates_in_linear_time() {
    let keys: Vec<String> = (0..200_000).map(|i| format!("x-h{i}")).collect();
    let yaml = format!(
        "version: 1\npolicies:\n  - name: a\n    match:\n      headers:\n{}        x-h7: again\n",
        keys.iter().map(|k| format!("        {k}: v\n")).collect::<String>()
    );
    let json = format!(
        r#"{{"version": 1, "policies": [{{"name": "a", "match": {{"headers": {{{}, "x-h7": "again"}}}}}}]}}"#,
        keys.iter().map(|k| format!(r#""{k}": "v""#)).collect::<Vec<_>>().join(", ")
    );
    for text in [yaml, json] {
        let started = std::time::Instant::now();
        let errors = breakwater_policy::load(&text).unwrap_err();
        let elapsed = started.elapsed();
        assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
        let messages: Vec<&str> = errors.iter().map(|d| d.message.as_str()).collect();
        assert!(messages.contains(&"duplicate key `x-h7`"), "{messages:?}");
    }
}

/// Issue 20, defect 3: no list or mapping of a policy may be longer than `MAX_ITEMS` (64): the
/// filter reads `match.headers` on every request, and 60,000 of them were accepted.
#[test]
fn long_lists_and_mappings_are_refused_at_their_path() {
    let headers: String = (0..65).map(|i| format!("        x-h{i}: v\n")).collect();
    let text = format!("version: 1\npolicies:\n  - name: a\n    match:\n      headers:\n{headers}");
    let errors = breakwater_policy::load(&text).unwrap_err();
    let found: Vec<String> = errors.iter().map(|d| format!("{}: {}", d.path, d.message)).collect();
    assert_eq!(found, ["policies[0].match.headers: at most 64 entries, found 65"]);
    let statuses: Vec<String> = (0..65).map(|i| (500 + i).to_string()).collect();
    let text = format!(
        "version: 1\npolicies:\n  - name: a\n    retry: {{ retry_on: [retriable-status-codes], statuses: [{}] }}\n",
        statuses.join(", ")
    );
    let errors = breakwater_policy::load(&text).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|d| d.path == "policies[0].retry.statuses" && d.message == "at most 64 items, found 65"),
        "{errors:?}"
    );
    // 64 is fine.
    let headers: String = (0..64).map(|i| format!("        x-h{i}: v\n")).collect();
    breakwater_policy::load(&format!(
        "version: 1\npolicies:\n  - name: a\n    match:\n      headers:\n{headers}"
    ))
    .unwrap();
}
