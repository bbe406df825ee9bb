//! # breakwater-scenario
//!
//! Scenarios: a policy document under simulated traffic, with expectations.
//!
//! This is the pure half of `breakwater test`: the scenario language (read with the same reader as
//! policy documents, so every error carries its path, line and column) and the evaluation of a
//! finished run into expectation results and a per-second [`Timeline`]. The simulation itself
//! runs the compiled filter in host-test, which produces a [`Run`]. This crate builds for the
//! browser too: the admin checks scenarios as they are typed and charts the timeline.
//!
//! ```yaml
//! name: keys are limited one by one
//! policy: api-per-key.yaml        # a file next to the scenario, or an inline document
//! workers: 2
//! duration: 10s
//! traffic:
//!   - name: clients
//!     rate: 500/s
//!     host: api.example.com
//!     path: /v1/items
//!     headers: { x-api-key: { zipf: 1000, prefix: key- } }
//! upstream: { latency: 20ms, status: { 200: 99, 503: 1 } }
//! expect:
//!   - requests: { decision: rate_limited }
//!     at_most: 100
//! ```

pub mod evaluate;
pub mod model;
pub mod read;
pub mod run;
pub mod timeline;

pub use evaluate::{Report, evaluate, format_number};
pub use model::*;
pub use read::{check_against, load, load_with_policy};
pub use run::{GaugeSample, Record, Run, sample_times};
pub use timeline::{Second, Timeline, timeline};
