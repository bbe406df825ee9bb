//! The proxy-wasm ABI 0.2.1 host functions, one module per area, each with `add_to_linker`.

pub mod buffers;
pub mod headers;
pub mod logging;
pub mod metrics;
pub mod properties;
pub mod shared;
pub mod streams;
pub mod wasi;

use wasmtime::{Linker, Result};

use crate::state::HostState;

/// proxy-wasm status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

pub fn add_all(linker: &mut Linker<HostState>) -> Result<()> {
    logging::add_to_linker(linker)?;
    buffers::add_to_linker(linker)?;
    headers::add_to_linker(linker)?;
    properties::add_to_linker(linker)?;
    shared::add_to_linker(linker)?;
    streams::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    wasi::add_to_linker(linker)?;
    Ok(())
}
