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

/// `envoy.config.core.v3.GrpcService` with its `envoy_grpc` target only. Envoy first reads a
/// gRPC call's target as this message, and takes the bytes as a cluster name only when they do
/// not parse (docs/envoy-facts.md).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GrpcService {
    #[prost(message, optional, tag = "1")]
    pub envoy_grpc: Option<EnvoyGrpc>,
}

/// `envoy.config.core.v3.GrpcService.EnvoyGrpc`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EnvoyGrpc {
    #[prost(string, tag = "1")]
    pub cluster_name: String,
    /// The calls' `:authority` (default: the cluster's name).
    #[prost(string, tag = "2")]
    pub authority: String,
}

/// The longest target a call can name through [`GrpcService`]: its bytes must be one-byte
/// protobuf lengths, so that they are text (the proxy-wasm SDK passes the target as a `&str`).
const MAX_TARGET_BYTES: usize = 127;

/// The authority of a call whose cluster's own host does not fit.
const FALLBACK_AUTHORITY: &str = "ratelimit";

/// What a call to `cluster` names as its target: the cluster name itself, or, for a name that is
/// not a valid `:authority` (Istio's `outbound|PORT||HOST`: an h2 server such as tonic resets a
/// stream whose authority has a `|`), a [`GrpcService`] naming the cluster with the authority
/// `HOST:PORT` (or HOST's first label, or `ratelimit`, when that does not fit). Err when even
/// that does not fit.
pub fn grpc_target(cluster: &str) -> Result<String, String> {
    if !cluster.contains(['|', ':']) {
        return Ok(cluster.to_string());
    }
    let mut authorities = Vec::new();
    let parts: Vec<&str> = cluster.split('|').collect();
    if let [_, port, _, host] = parts[..]
        && !host.is_empty()
    {
        authorities.push(if port.is_empty() { host.to_string() } else { format!("{host}:{port}") });
        authorities.extend(host.split('.').next().map(str::to_string));
    }
    authorities.push(FALLBACK_AUTHORITY.to_string());
    for authority in authorities {
        let inner = EnvoyGrpc { cluster_name: cluster.to_string(), authority };
        if prost::Message::encoded_len(&inner) > MAX_TARGET_BYTES {
            continue;
        }
        let bytes = prost::Message::encode_to_vec(&GrpcService { envoy_grpc: Some(inner) });
        if let Ok(text) = String::from_utf8(bytes) {
            return Ok(text);
        }
    }
    Err(format!(
        "`{cluster}` is too long a cluster name for a name with `|` or `:` (at most {} characters)",
        // Two bytes of tag and length for each of the two fields.
        MAX_TARGET_BYTES.saturating_sub(FALLBACK_AUTHORITY.len().saturating_add(4))
    ))
}

/// The cluster a call's target names, read as Envoy reads it: a [`GrpcService`] with a cluster,
/// or else the bytes as the name.
pub fn target_cluster(target: &[u8]) -> String {
    match <GrpcService as prost::Message>::decode(target) {
        Ok(GrpcService { envoy_grpc: Some(g) }) if !g.cluster_name.is_empty() => g.cluster_name,
        _ => String::from_utf8_lossy(target).into_owned(),
    }
}

#[cfg(test)]
mod target_tests {
    use super::*;

    #[test]
    fn plain_names_are_themselves_and_istio_names_carry_an_authority() {
        assert_eq!(grpc_target("breakwater-ratelimit").unwrap(), "breakwater-ratelimit");
        let istio = "outbound|8081||breakwater-ratelimit.shop.svc.cluster.local";
        let target = grpc_target(istio).unwrap();
        let decoded = <GrpcService as prost::Message>::decode(target.as_bytes()).unwrap().envoy_grpc.unwrap();
        assert_eq!(decoded.cluster_name, istio);
        assert_eq!(decoded.authority, "breakwater-ratelimit.shop.svc.cluster.local:8081");
        assert_eq!(target_cluster(target.as_bytes()), istio);
        assert_eq!(target_cluster(b"breakwater-ratelimit"), "breakwater-ratelimit");
        // Longer names fall back to a shorter authority, then refuse.
        let long = format!("outbound|8081||{}.shop.svc.cluster.local", "r".repeat(30));
        let decoded = <GrpcService as prost::Message>::decode(grpc_target(&long).unwrap().as_bytes())
            .unwrap()
            .envoy_grpc
            .unwrap();
        assert_eq!(decoded.authority, "r".repeat(30));
        assert!(grpc_target(&format!("outbound|8081||{}", "r".repeat(120))).is_err());
        assert_eq!(
            target_cluster(grpc_target("a:b").unwrap().as_bytes()),
            "a:b",
            "a colon is no valid authority either"
        );
    }
}
