//! A JSON value read as a document, and the same value written as YAML: both are refused, or both
//! load as the same document. (The policy reader takes either syntax; `breakwater compile` writes
//! JSON, people write YAML.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let json = value.to_string();
    let yaml = breakwater_policy::yaml::to_yaml(&value);
    let from_json = breakwater_policy::load(&json).map(|l| l.document);
    let from_yaml = breakwater_policy::load(&yaml).map(|l| l.document);
    match (&from_json, &from_yaml) {
        (Ok(j), Ok(y)) => assert_eq!(j, y, "JSON and YAML read different documents\n{json}\n---\n{yaml}"),
        (Err(_), Err(_)) => {}
        (j, y) => panic!("JSON ok: {}, YAML ok: {}\n{json}\n---\n{yaml}\n{j:?}\n{y:?}", j.is_ok(), y.is_ok()),
    }
});
