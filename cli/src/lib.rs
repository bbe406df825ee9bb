//! The library behind the `breakwater` command, shared with the end-to-end tests (and later the
//! admin server): what `publish` writes is written by exactly this code everywhere.

pub mod alerts;
pub mod dashboard;
pub mod ecds;
pub mod k8s;
pub mod oci;
pub mod publish;
pub mod render;
pub mod serve;
pub mod testing;
pub use breakwater_policy::yaml;
