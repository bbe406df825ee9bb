//! Envoy's RLS v3 `ShouldRateLimit`, answered from the global buckets in Redis.
//!
//! Plain RLS for any client (Envoy's native rate-limit filter included): every descriptor takes
//! its hits from its bucket, all or nothing, and the call is OVER_LIMIT if any descriptor is.
//! A call with the gRPC metadata `x-breakwater-lease` asks for a *lease* instead: each descriptor
//! takes as many of its hits as the bucket holds, and the answer carries them in the descriptor's
//! `quota` (RLS v3's own field for quota a client may spend without asking). Descriptors with
//! `is_negative_hits` give tokens back. docs/global-limits.md has the protocol.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, Quota, RateLimit, quota, rate_limit::Unit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf;
use redis::aio::ConnectionManager;
use tonic::{Request, Response, Status};

use crate::bucket::{self, Take};
use crate::fleet::Fleet;
use crate::limits::{Limit, Limits};
use crate::metrics::Metrics;

pub use breakwater_policy::global::{ENVOY_HEADER, LEASE_HEADER};
/// How long a lease's tokens may be spent (the filter counts the same on its own clock).
pub const LEASE_TTL: Duration = Duration::from_nanos(breakwater_policy::global::LEASE_TTL);
/// Most descriptors in one call, and most hits one descriptor may ask for.
const MAX_DESCRIPTORS: usize = 64;
const MAX_ENTRIES: usize = 64;

/// What every call shares.
#[derive(Debug)]
pub struct Shared {
    pub limits: RwLock<Arc<Limits>>,
    pub metrics: Metrics,
    pub fleet: Fleet,
    pub redis: ConnectionManager,
    pub script: redis::Script,
    /// The longest one call waits for Redis; then the call fails with UNAVAILABLE.
    pub redis_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RateLimiter(pub Arc<Shared>);

#[tonic::async_trait]
impl RateLimitService for RateLimiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let started = Instant::now();
        let lease = request.metadata().contains_key(LEASE_HEADER);
        let envoy = request.metadata().get(ENVOY_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let request = request.into_inner();
        let answer = self.check(&request, lease, envoy.as_deref()).await;
        self.0.metrics.observe_latency(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        answer.map(Response::new)
    }
}

impl RateLimiter {
    async fn check(
        &self,
        req: &RateLimitRequest,
        lease: bool,
        envoy: Option<&str>,
    ) -> Result<RateLimitResponse, Status> {
        let shared = &self.0;
        if req.domain.is_empty() {
            return Err(Status::invalid_argument("the request names no domain"));
        }
        if req.descriptors.is_empty() || req.descriptors.len() > MAX_DESCRIPTORS {
            return Err(Status::invalid_argument(format!("send 1 to {MAX_DESCRIPTORS} descriptors")));
        }
        let limits = shared.limits.read().map(|l| Arc::clone(&l)).map_err(|_| Status::internal("limits"))?;
        // Only domains the document has: a caller cannot grow the fleet count with made-up ones.
        if let Some(id) = envoy
            && limits.has_domain(&req.domain)
        {
            shared.fleet.seen(&req.domain, id);
        }
        let mut statuses = Vec::with_capacity(req.descriptors.len());
        for d in &req.descriptors {
            statuses.push(self.descriptor(&limits, &req.domain, d, req.hits_addend, lease).await?);
        }
        let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
        let mut response = RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            ..Default::default()
        };
        if envoy.is_some() {
            let envoys = shared.fleet.count(&req.domain);
            let value = protobuf::Value { kind: Some(protobuf::value::Kind::NumberValue(envoys as f64)) };
            response.dynamic_metadata =
                Some(protobuf::Struct { fields: [("envoys".to_string(), value)].into_iter().collect() });
        }
        Ok(response)
    }

    async fn descriptor(
        &self,
        limits: &Limits,
        domain: &str,
        d: &RateLimitDescriptor,
        request_hits: u32,
        lease: bool,
    ) -> Result<DescriptorStatus, Status> {
        let shared = &self.0;
        if d.entries.len() > MAX_ENTRIES {
            return Err(Status::invalid_argument(format!("at most {MAX_ENTRIES} entries per descriptor")));
        }
        let entries: Vec<(String, String)> =
            d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
        let Ok((limit, values)) = limits.resolve(domain, &entries) else {
            shared.metrics.unknown_descriptors.fetch_add(1, Relaxed);
            return Ok(DescriptorStatus { code: Code::Ok as i32, ..Default::default() });
        };
        // RLS: a descriptor's own hits_addend wins over the request's; an unset one counts 1.
        let hits = d.hits_addend.as_ref().map_or(u64::from(request_hits), |h| h.value).max(1);
        let take = match (d.is_negative_hits, lease) {
            (true, _) => Take::Refund(hits),
            (false, true) => Take::Some(hits),
            (false, false) => Take::All(hits),
        };
        let key = limit.redis_key(&values);
        shared.metrics.redis_calls.fetch_add(1, Relaxed);
        let mut conn = shared.redis.clone();
        let taken = match tokio::time::timeout(
            shared.redis_timeout,
            bucket::take(&mut conn, &shared.script, limit, &key, take),
        )
        .await
        {
            Ok(Ok(taken)) => taken,
            Ok(Err(e)) => {
                shared.metrics.redis_errors.fetch_add(1, Relaxed);
                return Err(Status::unavailable(format!("redis: {e}")));
            }
            Err(_) => {
                shared.metrics.redis_errors.fetch_add(1, Relaxed);
                return Err(Status::unavailable(format!(
                    "redis did not answer within {:?}",
                    shared.redis_timeout
                )));
            }
        };
        let over = match take {
            Take::Refund(n) => {
                shared.metrics.lease_tokens_refunded.fetch_add(n, Relaxed);
                false
            }
            Take::Some(_) => {
                shared.metrics.lease_tokens_granted.fetch_add(taken.granted, Relaxed);
                taken.granted == 0
            }
            Take::All(n) => taken.granted < n,
        };
        let counter = if over { &shared.metrics.checks_over_limit } else { &shared.metrics.checks_ok };
        counter.fetch_add(1, Relaxed);
        Ok(status(limit, over, &taken, lease && taken.granted > 0))
    }
}

/// The status of one descriptor. `duration_until_reset` is how long until the bucket is full
/// when the descriptor is OK, and how long until what was asked for would be there when it is
/// OVER_LIMIT (a GCRA bucket has no fixed window to reset; these are the two useful waits).
fn status(limit: &Limit, over: bool, taken: &bucket::Taken, with_quota: bool) -> DescriptorStatus {
    let until = if over { taken.wait } else { taken.reset };
    let quota = with_quota.then(|| {
        let valid_until = SystemTime::now() + LEASE_TTL;
        let since_epoch = valid_until.duration_since(UNIX_EPOCH).unwrap_or_default();
        Quota {
            requests: u32::try_from(taken.granted).unwrap_or(u32::MAX),
            id: String::new(),
            expiration_specifier: Some(quota::ExpirationSpecifier::ValidUntil(protobuf::Timestamp {
                seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
            })),
        }
    });
    DescriptorStatus {
        code: if over { Code::OverLimit } else { Code::Ok } as i32,
        current_limit: current_limit(limit),
        limit_remaining: u32::try_from(taken.remaining).unwrap_or(u32::MAX),
        duration_until_reset: Some(protobuf::Duration {
            seconds: i64::try_from(until.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(until.subsec_nanos()).unwrap_or(0),
        }),
        quota,
    }
}

/// The limit as RLS states one (requests per unit), when `per` is one of RLS's units.
fn current_limit(limit: &Limit) -> Option<RateLimit> {
    let unit = match limit.per_ms {
        1000 => Unit::Second,
        60_000 => Unit::Minute,
        3_600_000 => Unit::Hour,
        86_400_000 => Unit::Day,
        _ => return None,
    };
    Some(RateLimit {
        name: limit.policy.clone(),
        requests_per_unit: u32::try_from(limit.rate).unwrap_or(u32::MAX),
        unit: unit as i32,
    })
}
