//! Global rate limits (`global_rate_limit`): the call a request makes to the rate-limit service,
//! what its answer says, and *degraded mode*, in which each Envoy enforces a share of the limit by
//! itself while the service cannot answer (docs/global-limits.md).
//!
//! What an Envoy knows about the service is one small record in shared data per policy
//! (`bw/<policy>/g`): whether it is degraded, when to probe the service next, and how many Envoys
//! the service last counted. While degraded, requests are decided locally without waiting, and one
//! request per [`PROBE_EVERY`] (across the Envoy's workers) asks the service; the first answer
//! ends degraded mode.

use std::sync::Arc;

use prost::Message;

use crate::engine::codec::{ByteReader, ByteWriter};
use crate::engine::keys::{KeySeed, KeyTable};
use crate::engine::rate_limit::{Gcra, RateDecision, RateSlots};
use crate::engine::store::{self, SharedStore, StoreError};
use crate::engine::{NANOS_PER_SEC, Nanos};
use crate::model::{GlobalRateLimit, KeyPart, Policy};
use crate::request::{RequestView, key_fingerprint, key_part};
use crate::rls;

/// While degraded, how often one request asks the service whether it is back.
pub const PROBE_EVERY: Nanos = NANOS_PER_SEC / 2;

/// The descriptor entry that names the policy (the service finds the limit by it).
pub const POLICY_ENTRY: &str = "policy";

const TAG: u8 = b'g';

/// A global limit compiled for requests: where its state lives and what its calls carry.
#[derive(Debug, Clone)]
pub struct GlobalPlan {
    /// The Envoy cluster of the rate-limit service.
    pub service: Arc<str>,
    pub timeout_ms: u64,
    domain: String,
    policy: String,
    /// The key parts and their descriptor entry names (`header:x-api-key`).
    parts: Vec<(KeyPart, String)>,
    /// `bw/<policy>/g`: the degraded flag, the next probe, the fleet's size.
    pub record: String,
    /// Degraded mode's buckets: one per request key (`bw/<policy>/gd/<slot>`), or one in all.
    local: Option<KeyTable>,
    local_key: String,
}

impl GlobalPlan {
    pub fn new(p: &Policy, g: &GlobalRateLimit, seed: KeySeed) -> GlobalPlan {
        let name = &p.name;
        GlobalPlan {
            service: g.service.as_str().into(),
            timeout_ms: g.timeout.as_millis(),
            domain: g.domain.clone(),
            policy: name.clone(),
            parts: g.key.iter().map(|k| (k.clone(), k.to_string())).collect(),
            record: ["bw/", name, "/g"].concat(),
            local: (!g.key.is_empty())
                .then(|| KeyTable::new(format!("bw/{name}/gd"), g.max_keys).with_seed(seed)),
            local_key: ["bw/", name, "/gd"].concat(),
        }
    }

    /// The `ShouldRateLimit` request for `req`: the policy's descriptor, one hit.
    pub fn request(&self, req: &impl RequestView) -> Call {
        let mut entries = Vec::with_capacity(self.parts.len().saturating_add(1));
        entries.push(rls::Entry { key: POLICY_ENTRY.into(), value: self.policy.clone() });
        for (part, name) in &self.parts {
            entries.push(rls::Entry { key: name.clone(), value: key_part(part, req).to_string() });
        }
        let message = rls::RateLimitRequest {
            domain: self.domain.clone(),
            descriptors: vec![rls::RateLimitDescriptor {
                entries,
                hits_addend: None,
                is_negative_hits: false,
            }],
            hits_addend: 0,
        };
        Call { service: self.service.clone(), timeout_ms: self.timeout_ms, message: message.encode_to_vec() }
    }
}

/// A call to the rate-limit service: gRPC `rls::SERVICE`/`rls::METHOD` on the cluster `service`,
/// given up after `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub service: Arc<str>,
    pub timeout_ms: u64,
    /// The `RateLimitRequest`, encoded.
    pub message: Vec<u8>,
}

/// What the service said about the request's descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Decided {
        over_limit: bool,
        /// Tokens left in the bucket.
        remaining: u64,
        /// Over the limit: how long until a request would be admitted. Otherwise: how long until
        /// the bucket is full.
        until: Nanos,
        /// The Envoys the service counted in the last minute, when it says.
        envoys: Option<u32>,
    },
    /// No usable answer in time: an error status, a timeout, no connection, a reply that does not
    /// decode. `failure_mode` decides.
    Unavailable,
}

impl Answer {
    /// The answer in a gRPC reply: its status (0 = OK) and, when OK, its message.
    pub fn read(grpc_status: u32, message: Option<&[u8]>) -> Answer {
        if grpc_status != 0 {
            return Answer::Unavailable;
        }
        let Some(Ok(response)) = message.map(rls::RateLimitResponse::decode) else {
            return Answer::Unavailable;
        };
        let status = response.statuses.first();
        let code = status.map_or(response.overall_code, |s| s.code);
        let over_limit = match code {
            rls::CODE_OK => false,
            rls::CODE_OVER_LIMIT => true,
            _ => return Answer::Unavailable,
        };
        let envoys = response
            .dynamic_metadata
            .as_ref()
            .and_then(|m| m.fields.get("envoys"))
            .and_then(|v| v.number_value)
            .filter(|n| n.is_finite() && *n >= 1.0)
            .map(|n| n.min(f64::from(u32::MAX)) as u32);
        Answer::Decided {
            over_limit,
            remaining: status.map_or(0, |s| u64::from(s.limit_remaining)),
            until: status.and_then(|s| s.duration_until_reset).map_or(0, |d| d.nanos()),
            envoys,
        }
    }
}

/// What an Envoy knows about the service, for one policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    pub degraded: bool,
    /// While degraded: when the next request asks the service.
    pub probe_at: Nanos,
    /// The fleet's size as the service last counted it (0 = not known).
    pub envoys: u32,
}

impl Known {
    fn decode(bytes: Option<&[u8]>) -> Known {
        let read = || {
            let mut r = ByteReader::with_tag(bytes?, TAG)?;
            let known = Known { degraded: r.u8()? == 1, probe_at: r.u64()?, envoys: r.u32()? };
            r.done().then_some(known)
        };
        read().unwrap_or_default()
    }

    fn encode(&self) -> Vec<u8> {
        ByteWriter::with_tag(TAG).u8(u8::from(self.degraded)).u64(self.probe_at).u32(self.envoys).finish()
    }
}

/// Whether a request asks the service, or is decided without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Ask,
    /// Degraded, and not this request's turn to probe.
    Degraded(Known),
}

/// Where a request goes: to the service, unless the Envoy is degraded and another request has
/// the probe. Shared state that cannot be read means asking (the call is bounded anyway).
pub fn route<S: SharedStore + ?Sized>(store: &S, plan: &GlobalPlan, now: Nanos) -> Route {
    let routed = store::update(store, &plan.record, |old| {
        let mut known = Known::decode(old);
        if !known.degraded {
            return (Route::Ask, None);
        }
        if now < known.probe_at {
            return (Route::Degraded(known), None);
        }
        known.probe_at = now.saturating_add(PROBE_EVERY);
        (Route::Ask, Some(known.encode()))
    });
    routed.unwrap_or(Route::Ask)
}

/// Records what a call showed about the service: an answer ends degraded mode (and may bring the
/// fleet's size), no answer starts it. Returns what is known now, and whether the degraded flag
/// changed (for its gauge).
pub fn record<S: SharedStore + ?Sized>(
    store: &S,
    plan: &GlobalPlan,
    answer: &Answer,
    now: Nanos,
) -> Result<(Known, bool), StoreError> {
    store::update(store, &plan.record, |old| {
        let before = Known::decode(old);
        let mut known = before;
        match answer {
            Answer::Decided { envoys, .. } => {
                known.degraded = false;
                known.envoys = envoys.unwrap_or(known.envoys);
            }
            Answer::Unavailable if !known.degraded => {
                known.degraded = true;
                known.probe_at = now.saturating_add(PROBE_EVERY);
            }
            Answer::Unavailable => {}
        }
        let changed = known.degraded != before.degraded;
        let write = (known != before || old.is_none()).then(|| known.encode());
        ((known, changed), write)
    })
}

/// This Envoy's share of the limit in degraded mode: `rate` and `burst` split between the Envoys
/// the service counted (with `degraded.learn`, once known) or `degraded.envoys`, rounded up.
/// (None only for parameters validation refuses: a zero rate, period or burst.)
pub fn share(g: &GlobalRateLimit, known: &Known) -> Option<Gcra> {
    let envoys = if g.degraded.learn && known.envoys > 0 { known.envoys } else { g.degraded.envoys };
    let n = u64::from(envoys.max(1));
    let (rate, burst) = (g.rate.div_ceil(n).max(1), g.burst.div_ceil(n).max(1));
    Gcra::try_new(rate, g.per.as_nanos(), burst).ok()
}

/// Decides a request in degraded mode on this Envoy's share of the limit (its own bucket per key,
/// shared by the Envoy's workers). None when shared state is unavailable.
pub fn decide_local<S: SharedStore + ?Sized>(
    store: &S,
    plan: &GlobalPlan,
    g: &GlobalRateLimit,
    known: &Known,
    req: &impl RequestView,
    now: Nanos,
) -> Option<RateDecision> {
    let gcra = share(g, known)?;
    match &plan.local {
        Some(table) => {
            let fp = key_fingerprint(table.seed(), &g.key, req);
            table.update_fp(store, fp, now, &RateSlots, |s| gcra.decide_bytes(s, now)).ok().map(|(d, _)| d)
        }
        None => store::update(store, &plan.local_key, |s| gcra.decide_bytes(s, now)).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::MemoryStore;
    use crate::request::SimpleRequest;

    fn plan(yaml: &str) -> (Policy, GlobalPlan) {
        let doc = crate::load_bytes(yaml.as_bytes()).unwrap().document;
        let p = doc.policies.into_iter().next().unwrap();
        let g = GlobalPlan::new(&p, p.global_rate_limit.as_ref().unwrap(), KeySeed::default());
        (p, g)
    }

    const KEYED: &str = "version: 1\npolicies:\n  - name: api\n    global_rate_limit: { rate: 10, burst: 4, key: [\"header:x-api-key\", method], degraded: { envoys: 3 } }\n";

    #[test]
    fn a_request_carries_the_policy_and_its_key_parts_as_one_descriptor() {
        let (_, g) = plan(KEYED);
        let req = SimpleRequest::new("GET", "h", "/x").header("x-api-key", "k1");
        let call = g.request(&req);
        assert_eq!((&*call.service, call.timeout_ms), ("breakwater-ratelimit", 20));
        let sent = rls::RateLimitRequest::decode(call.message.as_slice()).unwrap();
        assert_eq!(sent.domain, "breakwater");
        let entries: Vec<(&str, &str)> =
            sent.descriptors[0].entries.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
        assert_eq!(entries, [("policy", "api"), ("header:x-api-key", "k1"), ("method", "GET")]);
    }

    #[test]
    fn answers_are_read_from_the_descriptor_status() {
        let response = |code, remaining, until_ms: i64, envoys: Option<f64>| {
            rls::RateLimitResponse {
                overall_code: code,
                statuses: vec![rls::DescriptorStatus {
                    code,
                    limit_remaining: remaining,
                    duration_until_reset: Some(rls::Duration {
                        seconds: until_ms / 1000,
                        nanos: (until_ms % 1000 * 1_000_000) as i32,
                    }),
                    quota: None,
                }],
                dynamic_metadata: envoys.map(|n| rls::Struct {
                    fields: [("envoys".to_string(), rls::Value { number_value: Some(n) })]
                        .into_iter()
                        .collect(),
                }),
            }
            .encode_to_vec()
        };
        assert_eq!(
            Answer::read(0, Some(&response(rls::CODE_OK, 3, 1500, Some(4.0)))),
            Answer::Decided { over_limit: false, remaining: 3, until: 1_500_000_000, envoys: Some(4) }
        );
        assert_eq!(
            Answer::read(0, Some(&response(rls::CODE_OVER_LIMIT, 0, 40, None))),
            Answer::Decided { over_limit: true, remaining: 0, until: 40_000_000, envoys: None }
        );
        // Errors, timeouts, garbage, unknown codes: no answer.
        assert_eq!(Answer::read(14, None), Answer::Unavailable);
        assert_eq!(Answer::read(4, Some(&response(rls::CODE_OK, 3, 0, None))), Answer::Unavailable);
        assert_eq!(Answer::read(0, Some(b"\xff\xff\xff")), Answer::Unavailable);
        assert_eq!(Answer::read(0, Some(&response(0, 0, 0, None))), Answer::Unavailable);
        assert_eq!(Answer::read(0, None), Answer::Unavailable);
        assert_eq!(
            Answer::read(0, Some(&response(rls::CODE_OK, 0, 0, Some(f64::NAN)))),
            Answer::Decided { over_limit: false, remaining: 0, until: 0, envoys: None }
        );
    }

    #[test]
    fn no_answer_starts_degraded_mode_with_one_probe_per_period_and_an_answer_ends_it() {
        let (_, g) = plan(KEYED);
        let store = MemoryStore::default();
        let t0 = 1_000 * NANOS_PER_SEC;
        assert_eq!(route(&store, &g, t0), Route::Ask);
        let (known, changed) = record(&store, &g, &Answer::Unavailable, t0).unwrap();
        assert!(known.degraded && changed);
        // A second failure changes nothing.
        assert!(!record(&store, &g, &Answer::Unavailable, t0 + 1).unwrap().1);
        assert!(matches!(route(&store, &g, t0 + 1), Route::Degraded(_)));
        // After PROBE_EVERY, one request (and only one) probes.
        let later = t0 + PROBE_EVERY;
        assert_eq!(route(&store, &g, later), Route::Ask);
        assert!(matches!(route(&store, &g, later), Route::Degraded(_)));
        let ok = Answer::Decided { over_limit: false, remaining: 1, until: 0, envoys: Some(5) };
        let (known, changed) = record(&store, &g, &ok, later).unwrap();
        assert!(!known.degraded && changed && known.envoys == 5);
        assert_eq!(route(&store, &g, later + 1), Route::Ask);
    }

    #[test]
    fn the_local_share_splits_rate_and_burst_between_the_envoys() {
        let (p, g) = plan(KEYED);
        let limit = p.global_rate_limit.as_ref().unwrap();
        // Configured: 3 Envoys → ceil(10/3) = 4 per second, ceil(4/3) = 2 at once.
        let configured = share(limit, &Known::default()).unwrap();
        assert_eq!((configured.rate(), configured.burst()), (4, 2));
        // Learned: 2 Envoys → 5 per second, 2 at once.
        let learned = share(limit, &Known { envoys: 2, ..Known::default() }).unwrap();
        assert_eq!((learned.rate(), learned.burst()), (5, 2));
        let store = MemoryStore::default();
        let known = Known::default();
        let req = |key: &str| SimpleRequest::new("GET", "h", "/").header("x-api-key", key);
        let t = 5 * NANOS_PER_SEC;
        let admitted =
            (0..5).filter(|_| decide_local(&store, &g, limit, &known, &req("a"), t).unwrap().allowed).count();
        assert_eq!(admitted, 2);
        assert!(decide_local(&store, &g, limit, &known, &req("b"), t).unwrap().allowed);
    }
}
