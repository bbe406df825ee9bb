//! The decision engines: pure functions of (configuration, state, now).
//!
//! Why this shape: inside Envoy every worker thread runs its own wasm VM, and the only state the
//! workers share is proxy-wasm *shared data*, a byte-value map with compare-and-swap. So each
//! engine keeps its state as a small byte value, and every decision is "read bytes, decide,
//! write bytes with the CAS token, retry on mismatch" ([`store::update`]). Time is never read here:
//! callers pass `now` (nanoseconds), so tests run on a [`clock::FakeClock`] and are exact and
//! instant.

pub mod adaptive;
pub mod breaker;
pub mod budget;
pub mod clock;
pub mod codec;
pub mod concurrency;
pub mod keys;
pub mod rate_limit;
pub mod record;
pub mod siphash;
pub mod store;
pub mod text;

/// Nanoseconds on the host's clock (proxy-wasm `get_current_time_nanoseconds`).
pub type Nanos = u64;

pub const NANOS_PER_SEC: Nanos = 1_000_000_000;
