//! Any text as a scenario file: read alone and against a policy document, never a panic.
#![no_main]

use std::sync::OnceLock;

use breakwater_policy::Document;
use libfuzzer_sys::fuzz_target;

fn document() -> &'static Document {
    static DOC: OnceLock<Document> = OnceLock::new();
    DOC.get_or_init(|| {
        let text = include_str!("../../policies/api-per-key.yaml");
        match breakwater_policy::load(text) {
            Ok(l) => l.document,
            Err(e) => panic!("the example does not load: {e:?}"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = breakwater_scenario::load(text);
    let _ = breakwater_scenario::load_with_policy(text, document());
});
