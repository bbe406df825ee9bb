//! host-test's decoder of proxy-wasm header maps (bytes a guest wrote into its memory): any bytes
//! decode or are refused without a panic, and what decodes encodes back to the same map.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Compiled alone (it has no dependencies), so this target does not build wasmtime.
#[path = "../../host-test/src/header_map.rs"]
#[allow(dead_code)]
mod header_map;

fuzz_target!(|data: &[u8]| {
    let Some(map) = header_map::deserialize_map(data) else { return };
    let again = header_map::deserialize_map(&header_map::serialize_map(&map));
    assert_eq!(again.as_ref(), Some(&map));
});
