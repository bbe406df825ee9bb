//! A simulated breakwater rate-limit service, for the filter's gRPC calls in host-test: RLS v3
//! `ShouldRateLimit` answered from GCRA buckets in memory with the real service's semantics
//! (`ratelimit/`): a call takes its hits all or nothing, a lease call (`x-breakwater-lease`) as
//! many as the bucket holds, returned in the descriptor's `quota`; an unknown descriptor is OK and
//! counts nothing; the answer carries the fleet's size. Time is the simulation's clock; latency,
//! outages and the fleet's other Envoys are the caller's ([`Service`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use breakwater_policy::engine::Nanos;
use breakwater_policy::engine::rate_limit::Gcra;
use breakwater_policy::global::{LEASE_HEADER, POLICY_ENTRY, entry_names_part};
use breakwater_policy::model::Document;
use breakwater_policy::rls;
use prost::Message;

use crate::state::{GrpcCall, GrpcCluster, GrpcReply};

/// How long a lease's tokens may be spent (the service's `LEASE_TTL`).
pub const LEASE_TTL_NS: Nanos = breakwater_policy::global::LEASE_TTL;

/// The limits and buckets of a simulated service.
#[derive(Debug, Default)]
pub struct Buckets {
    /// By (domain, policy): the bucket's parameters and the key parts' names.
    limits: HashMap<(String, String), (Gcra, Vec<String>)>,
    /// By (domain, descriptor entries): the theoretical arrival time.
    tats: HashMap<(String, Vec<(String, String)>), Nanos>,
    /// Checks answered, by decision (for tests and reports).
    pub ok: u64,
    pub over_limit: u64,
}

impl Buckets {
    /// The global limits of a document.
    pub fn new(doc: &Document) -> Buckets {
        let limits = doc
            .policies
            .iter()
            .filter_map(|p| {
                let g = p.global_rate_limit.as_ref()?;
                let gcra = Gcra::try_new(g.rate, g.per.as_nanos(), g.burst).ok()?;
                let parts = g.key.iter().map(ToString::to_string).collect();
                Some(((g.domain.clone(), p.name.clone()), (gcra, parts)))
            })
            .collect();
        Buckets { limits, ..Buckets::default() }
    }

    /// Takes tokens for every descriptor of a call at `now`, as the service does; the answer.
    pub fn answer(
        &mut self,
        request: &rls::RateLimitRequest,
        lease: bool,
        now: Nanos,
        envoys: u32,
    ) -> rls::RateLimitResponse {
        let mut statuses = Vec::with_capacity(request.descriptors.len());
        for d in &request.descriptors {
            statuses.push(self.descriptor(&request.domain, d, request.hits_addend, lease, now));
        }
        let over = statuses.iter().any(|s| s.code == rls::CODE_OVER_LIMIT);
        let fleet = rls::Struct {
            fields: [("envoys".to_string(), rls::Value { number_value: Some(f64::from(envoys)) })]
                .into_iter()
                .collect(),
        };
        rls::RateLimitResponse {
            overall_code: if over { rls::CODE_OVER_LIMIT } else { rls::CODE_OK },
            statuses,
            dynamic_metadata: Some(fleet),
        }
    }

    fn descriptor(
        &mut self,
        domain: &str,
        d: &rls::RateLimitDescriptor,
        request_hits: u32,
        lease: bool,
        now: Nanos,
    ) -> rls::DescriptorStatus {
        let ok = rls::DescriptorStatus {
            code: rls::CODE_OK,
            limit_remaining: 0,
            duration_until_reset: None,
            quota: None,
        };
        let entries: Vec<(String, String)> =
            d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
        let Some(((first, policy), rest)) = entries.split_first().map(|((k, v), r)| ((k, v), r)) else {
            return ok;
        };
        let Some((gcra, parts)) = self.limits.get(&(domain.to_string(), policy.clone())) else { return ok };
        if first != POLICY_ENTRY
            || rest.len() != parts.len()
            || !rest.iter().zip(parts).all(|((k, _), part)| entry_names_part(k, part))
        {
            return ok;
        }
        let hits = d.hits_addend.map_or(u64::from(request_hits), |h| h.value).max(1);
        let key = (domain.to_string(), entries.clone());
        let tat = self.tats.get(&key).copied();
        if d.is_negative_hits {
            let back =
                tat.map(|t| t.saturating_sub(hits.saturating_mul(gcra.per() / gcra.rate().max(1))).max(now));
            if let Some(t) = back {
                self.tats.insert(key, t);
            }
            return ok;
        }
        let (taken, new_tat) = gcra.take(tat, now, hits, lease);
        if let Some(t) = new_tat {
            self.tats.insert(key, t);
        }
        let over = if lease { taken.granted == 0 } else { taken.granted < hits };
        if over {
            self.over_limit += 1;
        } else {
            self.ok += 1;
        }
        let until = if over { taken.wait } else { taken.reset };
        let duration = |ns: Nanos| rls::Duration {
            seconds: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
            nanos: (ns % 1_000_000_000) as i32,
        };
        let quota = (lease && taken.granted > 0).then(|| {
            let until = now.saturating_add(LEASE_TTL_NS);
            rls::Quota {
                requests: u32::try_from(taken.granted).unwrap_or(u32::MAX),
                valid_until: Some(rls::Timestamp {
                    seconds: i64::try_from(until / 1_000_000_000).unwrap_or(i64::MAX),
                    nanos: (until % 1_000_000_000) as i32,
                }),
            }
        });
        rls::DescriptorStatus {
            code: if over { rls::CODE_OVER_LIMIT } else { rls::CODE_OK },
            limit_remaining: u32::try_from(taken.remaining).unwrap_or(u32::MAX),
            duration_until_reset: Some(duration(until)),
            quota,
        }
    }
}

/// How the simulated service behaves at a moment: its answer's latency, or an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers after this many ns.
    Answers(Nanos),
    /// Refuses connections: each call fails at once (Envoy: status 14 after about a millisecond).
    Down,
    /// Accepts and never answers: each call times out.
    Hangs,
}

/// A simulated rate-limit service: buckets, and what it does when (by the clock in ns).
pub struct Service {
    pub buckets: RefCell<Buckets>,
    /// The fleet's size it reports.
    pub envoys: u32,
    pub behaviour: Box<dyn Fn(Nanos) -> Behaviour>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("envoys", &self.envoys).finish_non_exhaustive()
    }
}

/// How long Envoy takes to report a refused connection to a gRPC call.
pub const REFUSED_NS: Nanos = 1_000_000;

impl Service {
    /// The service as a gRPC cluster for [`crate::World::add_grpc_cluster`].
    pub fn cluster(self: &Rc<Self>) -> GrpcCluster {
        let service = Rc::clone(self);
        Rc::new(move |call: &GrpcCall, now: u64| service.call(call, now))
    }

    fn call(&self, call: &GrpcCall, now: Nanos) -> (GrpcReply, Nanos) {
        if call.service != rls::SERVICE || call.method != rls::METHOD {
            return (GrpcReply::Status(12), REFUSED_NS); // UNIMPLEMENTED
        }
        match (self.behaviour)(now) {
            Behaviour::Down => (GrpcReply::Status(crate::abi::streams::GRPC_UNAVAILABLE), REFUSED_NS),
            Behaviour::Hangs => (GrpcReply::Silence, 0),
            Behaviour::Answers(latency) => {
                let Ok(request) = rls::RateLimitRequest::decode(call.message.as_slice()) else {
                    return (GrpcReply::Status(3), latency); // INVALID_ARGUMENT
                };
                let lease = call.metadata.iter().any(|(k, _)| k == LEASE_HEADER);
                // The bucket is updated when the call reaches the service, halfway.
                let at = now.saturating_add(latency / 2);
                let response = self.buckets.borrow_mut().answer(&request, lease, at, self.envoys);
                (GrpcReply::Message(response.encode_to_vec()), latency)
            }
        }
    }
}
