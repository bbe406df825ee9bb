//! The messages of Envoy's rate-limit service protocol (RLS v3,
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) that a global limit sends and
//! reads, written out for prost: the filter runs in a wasm guest without tonic or Envoy's
//! generated types, and sends these bytes with `proxy_dispatch_grpc_call`. Field numbers are the
//! protos' own (`envoy/service/ratelimit/v3/rls.proto`, `envoy/extensions/common/ratelimit/v3/
//! ratelimit.proto`); fields breakwater does not read are left out (protobuf skips unknown
//! fields). A test in `tests/` checks these bytes against Envoy's generated types.

use std::collections::HashMap;

/// The gRPC service and method of a call.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    /// `google.protobuf.UInt64Value`: a descriptor's own hits (wins over the request's).
    #[prost(message, optional, tag = "3")]
    pub hits_addend: Option<UInt64Value>,
    /// Gives `hits_addend` tokens back instead of taking them.
    #[prost(bool, tag = "4")]
    pub is_negative_hits: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct UInt64Value {
    #[prost(uint64, tag = "1")]
    pub value: u64,
}

/// `RateLimitResponse.Code`.
pub const CODE_OK: i32 = 1;
pub const CODE_OVER_LIMIT: i32 = 2;

#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitResponse {
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
    /// `google.protobuf.Struct`: breakwater's service puts `envoys` (the fleet's size) here.
    #[prost(message, optional, tag = "6")]
    pub dynamic_metadata: Option<Struct>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
    #[prost(message, optional, tag = "5")]
    pub quota: Option<Quota>,
}

/// `RateLimitResponse.Quota`: tokens the client may spend without asking, until `valid_until`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Quota {
    #[prost(uint32, tag = "1")]
    pub requests: u32,
    #[prost(message, optional, tag = "2")]
    pub valid_until: Option<Timestamp>,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Struct {
    #[prost(map = "string, message", tag = "1")]
    pub fields: HashMap<String, Value>,
}

/// `google.protobuf.Value`, its number only.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Value {
    #[prost(double, optional, tag = "2")]
    pub number_value: Option<f64>,
}

impl Duration {
    /// In nanoseconds (negative parts count as 0).
    pub fn nanos(&self) -> u64 {
        let s = u64::try_from(self.seconds).unwrap_or(0);
        let n = u64::try_from(self.nanos).unwrap_or(0);
        s.saturating_mul(1_000_000_000).saturating_add(n)
    }
}

impl Timestamp {
    /// Nanoseconds since the epoch (before it counts as 0).
    pub fn nanos(&self) -> u64 {
        Duration { seconds: self.seconds, nanos: self.nanos }.nanos()
    }
}
