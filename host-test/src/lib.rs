//! # breakwater-host-test
//!
//! A proxy-wasm host on wasmtime that loads the compiled breakwater filter and drives it with
//! simulated traffic, time, workers and upstreams, the way Envoy 1.40 would (see
//! ARCHITECTURE.md). The host itself arrives with the host-test issue; until then this crate only
//! reserves its place in the workspace and its dependency rule: it may depend on
//! `breakwater-policy` (for scenario files' policy documents), never on the filter's source.

/// The path of the compiled filter that this harness loads, relative to the workspace root.
pub const FILTER_WASM: &str = "target/wasm32-wasip1/release/breakwater_filter.wasm";
