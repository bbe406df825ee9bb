//! Any bytes as a policy document: `load_bytes` (what `validate` and the admin run) and
//! `load_config` (what the filter runs on each configuration) never panic and agree; a document
//! that loads compiles to a plan, and its compiled forms load back as the same document.
#![no_main]

use breakwater_policy::plan::Plan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let loaded = breakwater_policy::load_bytes(data);
    let config = breakwater_policy::load_config(data);
    match (&loaded, &config) {
        (Ok(l), Ok(c)) => assert_eq!(&l.document, c, "load_bytes and load_config read different documents"),
        (Err(_), Err(_)) => {}
        (l, c) => panic!("load_bytes ok: {}, load_config ok: {}", l.is_ok(), c.is_ok()),
    }
    let Ok(loaded) = loaded else { return };
    let doc = loaded.document;
    for compiled in [breakwater_policy::compile(&doc), breakwater_policy::compile_compact(&doc)] {
        let again = breakwater_policy::load_config(compiled.as_bytes());
        assert_eq!(again.as_ref().ok(), Some(&doc), "the compiled form does not load back: {again:?}");
    }
    assert!(Plan::new(doc).is_ok(), "a valid document did not compile to a plan");
});
