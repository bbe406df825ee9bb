//! # breakwater-host-test
//!
//! A proxy-wasm host on wasmtime that loads the compiled breakwater filter and drives it the way
//! Envoy 1.40 does (docs/envoy-facts.md), so policies can be tested on a laptop and
//! the admin can simulate them.
//!
//! Following wasmtime's embedding model: one [`Host`] (engine, module, linker) per filter build,
//! one wasmtime `Store` per simulated VM ([`Vm`]), and one [`state::World`] per simulated Envoy,
//! shared by its VMs the way one vm_id's shared data and stats are. Nothing is process-global,
//! so tests run in parallel. Host functions are grouped by ABI area in [`abi`]; every guest
//! pointer is bounds-checked ([`memory`]); misuse traps with a message; an epoch deadline stops runaway
//! guests; a trap makes the VM fail closed (503 for it and every later request), as in Envoy.
//!
//! How close it is to Envoy is measured by the fidelity suite (`tests/tests/fidelity.rs`): the
//! same traffic through real Envoy 1.40 and through this host, compared request by request.

pub mod abi;
pub mod exchange;
pub mod header_map;
pub mod host;
pub mod memory;
pub mod ratelimit;
pub mod router;
pub mod sim;
pub mod state;
pub mod vm;

pub use exchange::{Begun, ClientResponse, Request, UpstreamAnswer};
pub use host::{DEFAULT_MEMORY_LIMIT, Host};
pub use state::World;
pub use vm::{FailurePolicy, Vm};

/// The path of the compiled filter that this harness loads, relative to the workspace root.
pub const FILTER_WASM: &str = "target/wasm32-wasip1/release/breakwater_filter.wasm";
