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
use crate::engine::keys::{KeySeed, KeyTable, SlotRef, SlotState};
use crate::engine::rate_limit::{Gcra, RateDecision, RateSlots};
use crate::engine::store::{self, SharedStore, StoreError};
use crate::engine::{NANOS_PER_SEC, Nanos};
use crate::model::{GlobalMode, GlobalRateLimit, KeyPart, Policy};
use crate::request::key_fingerprint as fingerprint_of;
use crate::request::{RequestView, key_fingerprint, key_part};
use crate::rls;

/// While degraded, how often one request asks the service whether it is back.
pub const PROBE_EVERY: Nanos = NANOS_PER_SEC / 5;

/// Calls in a row without an answer that make an Envoy degraded. A single failure (a call that
/// went to a replica that just died) is decided by `failure_mode` alone.
pub const DEGRADED_AFTER: u32 = 3;

/// The descriptor entry that names the policy (the service finds the limit by it).
pub const POLICY_ENTRY: &str = "policy";

/// Whether a descriptor entry's key names a key part (as the policy writes it): the part's own
/// name, or for `client_ip` the key of Envoy's `remote_address` action, which cannot be renamed.
/// The rate-limit service and host-test's simulation of it match descriptors with this.
pub fn entry_names_part(entry: &str, part: &str) -> bool {
    entry == part || (part == "client_ip" && entry == "remote_address")
}

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
    /// Leased mode's leases: one per request key (`bw/<policy>/gl/<slot>`), or one in all.
    leases: Option<KeyTable>,
    lease_key: String,
    /// Leased mode: one token every `interval` ns, at most `max_lease` tokens per lease.
    interval: Nanos,
    max_lease: u64,
    leased: bool,
}

impl GlobalPlan {
    pub fn new(p: &Policy, g: &GlobalRateLimit, seed: KeySeed) -> GlobalPlan {
        let name = &p.name;
        GlobalPlan {
            // A valid document's cluster always has a target (validation checks it).
            service: rls::grpc_target(&g.service).unwrap_or_else(|_| g.service.clone()).into(),
            timeout_ms: g.timeout.as_millis(),
            domain: g.domain.clone(),
            policy: name.clone(),
            parts: g.key.iter().map(|k| (k.clone(), k.to_string())).collect(),
            record: ["bw/", name, "/g"].concat(),
            local: (!g.key.is_empty())
                .then(|| KeyTable::new(format!("bw/{name}/gd"), g.max_keys).with_seed(seed)),
            local_key: ["bw/", name, "/gd"].concat(),
            leases: (!g.key.is_empty())
                .then(|| KeyTable::new(format!("bw/{name}/gl"), g.max_keys).with_seed(seed)),
            lease_key: ["bw/", name, "/gl"].concat(),
            interval: g.per.as_nanos().div_ceil(g.rate.max(1)),
            max_lease: (g.burst / 2).clamp(1, MAX_LEASE),
            leased: g.mode == GlobalMode::Leased,
        }
    }

    /// The `ShouldRateLimit` request for `req`: the policy's descriptor, one hit.
    pub fn request(&self, req: &impl RequestView) -> Call {
        self.call(req, 1, false)
    }

    /// A lease request for `req`'s key: up to `want` tokens.
    pub fn lease_request(&self, req: &impl RequestView, want: u64) -> Call {
        self.call(req, want, true)
    }

    fn call(&self, req: &impl RequestView, hits: u64, lease: bool) -> Call {
        let mut entries = Vec::with_capacity(self.parts.len().saturating_add(1));
        entries.push(rls::Entry { key: POLICY_ENTRY.into(), value: self.policy.clone() });
        for (part, name) in &self.parts {
            entries.push(rls::Entry { key: name.clone(), value: key_part(part, req).to_string() });
        }
        let message = rls::RateLimitRequest {
            domain: self.domain.clone(),
            descriptors: vec![rls::RateLimitDescriptor {
                entries,
                hits_addend: (hits != 1).then_some(rls::UInt64Value { value: hits }),
                is_negative_hits: false,
            }],
            hits_addend: 0,
        };
        Call {
            service: self.service.clone(),
            timeout_ms: self.timeout_ms,
            message: message.encode_to_vec(),
            lease,
        }
    }
}

/// A call to the rate-limit service: gRPC `rls::SERVICE`/`rls::METHOD` to `service` (the target
/// [`rls::grpc_target`] gives for the policy's cluster), given up after `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub service: Arc<str>,
    pub timeout_ms: u64,
    /// The `RateLimitRequest`, encoded.
    pub message: Vec<u8>,
    /// A lease request (the gRPC metadata [`LEASE_HEADER`]): the service grants as many of the
    /// hits as the bucket holds, in the descriptor's `quota`.
    pub lease: bool,
}

/// The gRPC metadata that makes a call a lease request.
pub const LEASE_HEADER: &str = "x-breakwater-lease";
/// The gRPC metadata that names the calling Envoy (the service counts the fleet by it).
pub const ENVOY_HEADER: &str = "x-breakwater-envoy";

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
        /// A lease's tokens (the descriptor's `quota`), and until when they may be spent (ns
        /// since the epoch); 0 when the answer carries no quota.
        granted: u64,
        valid_until: Nanos,
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
        let quota = status.and_then(|s| s.quota.as_ref());
        Answer::Decided {
            over_limit,
            remaining: status.map_or(0, |s| u64::from(s.limit_remaining)),
            until: status.and_then(|s| s.duration_until_reset).map_or(0, |d| d.nanos()),
            envoys,
            granted: quota.map_or(0, |q| u64::from(q.requests)),
            valid_until: quota.and_then(|q| q.valid_until).map_or(0, |t| t.nanos()),
        }
    }
}

/// What an Envoy knows about the service, for one policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Known {
    pub degraded: bool,
    /// Calls in a row that got no answer.
    pub failures: u32,
    /// While degraded: when the next request asks the service.
    pub probe_at: Nanos,
    /// The fleet's size as the service last counted it (0 = not known).
    pub envoys: u32,
}

impl Known {
    fn decode(bytes: Option<&[u8]>) -> Known {
        let read = || {
            let mut r = ByteReader::with_tag(bytes?, TAG)?;
            let known =
                Known { degraded: r.u8()? == 1, failures: r.u32()?, probe_at: r.u64()?, envoys: r.u32()? };
            r.done().then_some(known)
        };
        read().unwrap_or_default()
    }

    fn encode(&self) -> Vec<u8> {
        ByteWriter::with_tag(TAG)
            .u8(u8::from(self.degraded))
            .u32(self.failures)
            .u64(self.probe_at)
            .u32(self.envoys)
            .finish()
    }
}

/// Whether a request asks the service, or is decided without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Ask,
    /// Degraded, and this request probes the service: it calls (a lease's tokens, if any, are
    /// not spent instead, or no call would go out).
    Probe,
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
        // A probe time further out than a period: the wall clock stepped back; probe now.
        if now < known.probe_at && known.probe_at <= now.saturating_add(PROBE_EVERY) {
            return (Route::Degraded(known), None);
        }
        known.probe_at = now.saturating_add(PROBE_EVERY);
        (Route::Probe, Some(known.encode()))
    });
    routed.unwrap_or(Route::Ask)
}

/// Records what a call showed about the service: an answer ends degraded mode (and may bring the
/// fleet's size), [`DEGRADED_AFTER`] calls in a row without one start it. Returns what is known
/// now, and whether the degraded flag changed (for its gauge).
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
                known.failures = 0;
                known.envoys = envoys.unwrap_or(known.envoys);
            }
            Answer::Unavailable => {
                known.failures = known.failures.saturating_add(1);
                if !known.degraded && known.failures >= DEGRADED_AFTER {
                    known.degraded = true;
                    known.probe_at = now.saturating_add(PROBE_EVERY);
                }
            }
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

// ---- leased mode ----

/// How long a lease should last at the Envoy's recent demand: its size is the requests of this
/// period, so at steady load an Envoy renews about once per period and key.
pub const LEASE_TARGET: Nanos = NANOS_PER_SEC;
/// How long a lease's tokens may be spent: the service's `quota.valid_until` is this long after
/// the grant, and the filter counts it on its own clock from the answer's arrival (a clock that
/// is off from the service's does not shorten or stretch leases).
pub const LEASE_TTL: Nanos = NANOS_PER_SEC;
/// The largest lease asked for.
pub const MAX_LEASE: u64 = 1_000_000;
/// Demand is counted in windows of this length.
const DEMAND_WINDOW: Nanos = NANOS_PER_SEC;
/// A renewal in flight blocks others for the call's timeout plus this.
const ASKING_SLACK: Nanos = 50_000_000;
const LEASE_TAG: u8 = b'L';

/// One Envoy's lease of a key's global bucket (shared by its workers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lease {
    /// Tokens left to spend.
    pub tokens: u64,
    /// Spend them before this (ns).
    pub expires: Nanos,
    /// A renewal is in flight until this (0: none).
    pub asking: Nanos,
    /// The service said the bucket is empty: ask again no earlier than this.
    pub next_ask: Nanos,
    /// Requests in the current demand window, which started at `window`.
    pub count: u64,
    pub window: Nanos,
    /// Requests in the last whole window.
    pub demand: u64,
}

impl Lease {
    fn decode(bytes: Option<&[u8]>) -> Lease {
        let read = || {
            let mut r = ByteReader::with_tag(bytes?, LEASE_TAG)?;
            let lease = Lease {
                tokens: r.u64()?,
                expires: r.u64()?,
                asking: r.u64()?,
                next_ask: r.u64()?,
                count: r.u64()?,
                window: r.u64()?,
                demand: r.u64()?,
            };
            r.done().then_some(lease)
        };
        read().unwrap_or_default()
    }

    fn encode(&self) -> Vec<u8> {
        ByteWriter::with_tag(LEASE_TAG)
            .u64(self.tokens)
            .u64(self.expires)
            .u64(self.asking)
            .u64(self.next_ask)
            .u64(self.count)
            .u64(self.window)
            .u64(self.demand)
            .finish()
    }

    /// Counts a request in its demand window.
    fn count_request(&mut self, now: Nanos) {
        let elapsed = now.saturating_sub(self.window);
        if elapsed >= DEMAND_WINDOW {
            self.demand = if elapsed < DEMAND_WINDOW.saturating_mul(2) { self.count } else { 0 };
            self.window = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
    }

    /// The lease to ask for: the requests of [`LEASE_TARGET`] at the recent demand.
    fn want(&self, max_lease: u64) -> u64 {
        let per_target = self.demand.max(self.count).saturating_mul(LEASE_TARGET) / DEMAND_WINDOW;
        per_target.clamp(1, max_lease)
    }
}

/// Leases are evicted like rate-limit buckets: an idle one first.
#[derive(Debug, Clone, Copy)]
struct LeaseSlots;

impl SlotState for LeaseSlots {
    fn activity(&self, state: &[u8], now: Nanos) -> Option<u64> {
        let lease = Lease::decode(Some(state));
        let live = (lease.tokens > 0 && now < lease.expires) || lease.asking > now;
        live.then_some(lease.tokens.max(1))
    }
    fn evictable(&self) -> bool {
        true
    }
}

/// Where a key's lease is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAt {
    Slot(SlotRef),
    Key(String),
}

/// What a request under a leased limit does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStep {
    /// Spent a token of the lease; `renew` asks for a new lease of that many tokens in the
    /// background (the lease is running low and no renewal is in flight).
    Spent { renew: Option<u64> },
    /// The service said the bucket is empty, and it cannot have refilled yet.
    Empty { wait: Nanos },
    /// No tokens: the request asks the service itself, for a lease of `want` (one for itself).
    /// `renewing`: this call is the lease's renewal (others wait for it rather than ask for
    /// leases of their own); otherwise it asks for its own token alone.
    Ask { want: u64, renewing: bool },
}

/// A renewal to send in the background (by the caller's root context, which outlives requests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    pub policy: usize,
    pub at: LeaseAt,
    pub want: u64,
    pub call: Call,
}

impl GlobalPlan {
    /// Whether this limit is leased.
    pub fn leased(&self) -> bool {
        self.leased
    }

    /// The longest an Envoy waits before asking again after a short or empty answer: half of the
    /// largest lease's refill (at most a quarter of the bucket's), or one token's interval.
    fn most_pacing(&self) -> Nanos {
        self.interval.saturating_mul(self.max_lease).div_ceil(2).max(self.interval)
    }

    /// Takes a token of `req`'s lease, or says what to do without one.
    pub fn lease_step<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        g: &GlobalRateLimit,
        req: &impl RequestView,
        now: Nanos,
    ) -> Result<(LeaseStep, LeaseAt), StoreError> {
        let slow = self.timeout_ms.saturating_mul(1_000_000).saturating_add(ASKING_SLACK);
        let max_lease = self.max_lease;
        let most_pacing = self.most_pacing();
        let decide = |old: Option<&[u8]>| {
            let mut lease = Lease::decode(old);
            // After the wall clock steps back, no stored time may hold longer than it could
            // have when it was stored.
            lease.expires = lease.expires.min(now.saturating_add(LEASE_TTL));
            lease.asking = lease.asking.min(now.saturating_add(slow));
            lease.next_ask = lease.next_ask.min(now.saturating_add(most_pacing));
            lease.count_request(now);
            let want = lease.want(max_lease);
            let step = if lease.tokens > 0 && now < lease.expires {
                lease.tokens = lease.tokens.saturating_sub(1);
                // Renew when a quarter of a lease is left, so that the next one arrives in time.
                let low = lease.tokens.saturating_mul(4) <= want;
                let renew = low && lease.asking <= now && now >= lease.next_ask;
                if renew {
                    lease.asking = now.saturating_add(slow);
                }
                LeaseStep::Spent { renew: renew.then_some(want) }
            } else if now < lease.next_ask {
                LeaseStep::Empty { wait: lease.next_ask.saturating_sub(now) }
            } else if lease.asking > now {
                // A lease is on its way: this request asks for itself alone.
                LeaseStep::Ask { want: 1, renewing: false }
            } else {
                lease.asking = now.saturating_add(slow);
                LeaseStep::Ask { want, renewing: true }
            };
            (step, Some(lease.encode()))
        };
        match &self.leases {
            Some(table) => {
                let fp = fingerprint_of(table.seed(), &g.key, req);
                table
                    .update_fp(store, fp, now, &LeaseSlots, decide)
                    .map(|(step, at)| (step, LeaseAt::Slot(at)))
            }
            None => store::update(store, &self.lease_key, decide)
                .map(|step| (step, LeaseAt::Key(self.lease_key.clone()))),
        }
    }

    /// Puts what the service granted for a lease of `want` into the lease: `taken` of the tokens
    /// are spent at once (1 by the request that asked, 0 for a background renewal); `renewing`
    /// ends the renewal in flight. Returns whether the asker got its token.
    #[allow(clippy::too_many_arguments)]
    pub fn lease_answer<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        at: &LeaseAt,
        want: u64,
        taken: u64,
        renewing: bool,
        answer: &Answer,
        now: Nanos,
    ) -> bool {
        let (interval, most_pacing) = (self.interval, self.most_pacing());
        let apply = |old: Option<&[u8]>| {
            let mut lease = Lease::decode(old);
            if renewing {
                lease.asking = 0;
            }
            let got = match *answer {
                // OK without a quota: the service has no limit for this descriptor (a policy it
                // has not loaded yet). As in exact mode, the request goes on; nothing is leased.
                Answer::Decided { over_limit: false, granted: 0, .. } => true,
                Answer::Decided { granted, until, .. } => {
                    if lease.tokens == 0 || now >= lease.expires {
                        lease.tokens = 0;
                    }
                    let mine = granted.min(taken);
                    lease.tokens = lease.tokens.saturating_add(granted.saturating_sub(mine));
                    if granted > mine {
                        lease.expires = now.saturating_add(LEASE_TTL);
                    }
                    if granted < want {
                        // Empty or short: ask again once the bucket can have refilled half of what
                        // was missing; when it was empty, not before its next token either.
                        let refill = interval.saturating_mul(want.saturating_sub(granted)) / 2;
                        let wait = if granted == 0 { until.max(refill) } else { refill };
                        lease.next_ask = now.saturating_add(wait.min(most_pacing));
                    } else if renewing {
                        lease.next_ask = 0;
                    }
                    mine >= taken
                }
                Answer::Unavailable => false,
            };
            (got, Some(lease.encode()))
        };
        let updated = match at {
            LeaseAt::Slot(slot) => KeyTable::update_at(store, slot, apply).map(|got| got.unwrap_or(false)),
            LeaseAt::Key(key) => store::update(store, key, apply),
        };
        updated.unwrap_or(false)
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
            Answer::Decided {
                over_limit: false,
                remaining: 3,
                until: 1_500_000_000,
                envoys: Some(4),
                granted: 0,
                valid_until: 0
            }
        );
        assert_eq!(
            Answer::read(0, Some(&response(rls::CODE_OVER_LIMIT, 0, 40, None))),
            Answer::Decided {
                over_limit: true,
                remaining: 0,
                until: 40_000_000,
                envoys: None,
                granted: 0,
                valid_until: 0
            }
        );
        // Errors, timeouts, garbage, unknown codes: no answer.
        assert_eq!(Answer::read(14, None), Answer::Unavailable);
        assert_eq!(Answer::read(4, Some(&response(rls::CODE_OK, 3, 0, None))), Answer::Unavailable);
        assert_eq!(Answer::read(0, Some(b"\xff\xff\xff")), Answer::Unavailable);
        assert_eq!(Answer::read(0, Some(&response(0, 0, 0, None))), Answer::Unavailable);
        assert_eq!(Answer::read(0, None), Answer::Unavailable);
        assert_eq!(
            Answer::read(0, Some(&response(rls::CODE_OK, 0, 0, Some(f64::NAN)))),
            Answer::Decided {
                over_limit: false,
                remaining: 0,
                until: 0,
                envoys: None,
                granted: 0,
                valid_until: 0
            }
        );
    }

    #[test]
    fn three_calls_without_an_answer_start_degraded_mode_with_one_probe_per_period_and_an_answer_ends_it() {
        let (_, g) = plan(KEYED);
        let store = MemoryStore::default();
        let t0 = 1_000 * NANOS_PER_SEC;
        assert_eq!(route(&store, &g, t0), Route::Ask);
        // One failure, two: each request decides alone, the next one asks again.
        for _ in 1..DEGRADED_AFTER {
            let (known, changed) = record(&store, &g, &Answer::Unavailable, t0).unwrap();
            assert!(!known.degraded && !changed);
            assert_eq!(route(&store, &g, t0), Route::Ask);
        }
        let (known, changed) = record(&store, &g, &Answer::Unavailable, t0).unwrap();
        assert!(known.degraded && changed);
        // A second failure changes nothing.
        assert!(!record(&store, &g, &Answer::Unavailable, t0 + 1).unwrap().1);
        assert!(matches!(route(&store, &g, t0 + 1), Route::Degraded(_)));
        // After PROBE_EVERY, one request (and only one) probes.
        let later = t0 + PROBE_EVERY;
        assert_eq!(route(&store, &g, later), Route::Probe);
        assert!(matches!(route(&store, &g, later), Route::Degraded(_)));
        // A probe time beyond a period (the wall clock stepped back since): probe at once.
        let stepped_back = later - 10 * NANOS_PER_SEC;
        assert_eq!(route(&store, &g, stepped_back), Route::Probe);
        let ok = Answer::Decided {
            over_limit: false,
            remaining: 1,
            until: 0,
            envoys: Some(5),
            granted: 0,
            valid_until: 0,
        };
        let (known, changed) = record(&store, &g, &ok, later).unwrap();
        assert!(!known.degraded && changed && known.envoys == 5 && known.failures == 0);
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

    const LEASED: &str = "version: 1\npolicies:\n  - name: api\n    global_rate_limit: { rate: 100, burst: 40, mode: leased }\n";

    fn granted(granted: u64, valid_until: Nanos, until: Nanos) -> Answer {
        Answer::Decided { over_limit: granted == 0, remaining: 0, until, envoys: None, granted, valid_until }
    }

    #[test]
    fn a_lease_is_asked_for_spent_renewed_at_a_quarter_and_paced_when_the_bucket_is_empty() {
        let (p, g) = plan(LEASED);
        let limit = p.global_rate_limit.as_ref().unwrap();
        let store = MemoryStore::default();
        let req = SimpleRequest::new("GET", "h", "/");
        let t = 1_000 * NANOS_PER_SEC;
        // No lease yet: the first request asks, for what its demand so far needs (1).
        let (step, at) = g.lease_step(&store, limit, &req, t).unwrap();
        assert_eq!(step, LeaseStep::Ask { want: 1, renewing: true });
        // While that call is out, another request asks for its own token only.
        assert_eq!(
            g.lease_step(&store, limit, &req, t).unwrap().0,
            LeaseStep::Ask { want: 1, renewing: false }
        );
        // The lease's answer: one token, spent by the asker.
        assert!(g.lease_answer(&store, &at, 1, 1, true, &granted(1, t + NANOS_PER_SEC, 0), t));
        // No tokens, no call out: the next request asks, for the three requests seen so far.
        let (step, at) = g.lease_step(&store, limit, &req, t).unwrap();
        assert_eq!(step, LeaseStep::Ask { want: 3, renewing: true });
        // (A lease of 20: more than asked, to see it spent.)
        assert!(g.lease_answer(&store, &at, 20, 1, true, &granted(20, t + NANOS_PER_SEC, 0), t));
        // 19 tokens: spent without calls; one renewal once a quarter of a lease is left.
        let mut steps = Vec::new();
        for _ in 0..19 {
            steps.push(g.lease_step(&store, limit, &req, t).unwrap().0);
        }
        let renewals: Vec<_> =
            steps.iter().filter(|s| matches!(s, LeaseStep::Spent { renew: Some(_) })).collect();
        assert_eq!(renewals.len(), 1, "{steps:?}");
        assert!(steps.iter().all(|s| matches!(s, LeaseStep::Spent { .. })), "{steps:?}");
        // The renewal finds the bucket empty: nothing granted, and no call until a part of a
        // lease can have refilled (half of 20 tokens at 10 ms each: 100 ms).
        let LeaseStep::Spent { renew: Some(want) } = renewals[0] else { unreachable!() };
        g.lease_answer(&store, &at, *want, 0, true, &granted(0, 0, 10_000_000), t);
        let (step, _) = g.lease_step(&store, limit, &req, t + 1).unwrap();
        let LeaseStep::Empty { wait } = step else { panic!("{step:?}") };
        assert_eq!(wait, *want / 2 * 10_000_000 - 1);
        // Expired tokens are not spent.
        let later = t + LEASE_TTL + NANOS_PER_SEC;
        assert!(matches!(g.lease_step(&store, limit, &req, later).unwrap().0, LeaseStep::Ask { .. }));
    }

    #[test]
    fn leases_are_at_most_half_the_burst() {
        let (p, g) = plan(LEASED);
        let limit = p.global_rate_limit.as_ref().unwrap();
        let store = MemoryStore::default();
        let req = SimpleRequest::new("GET", "h", "/");
        let t = 1_000 * NANOS_PER_SEC;
        let mut last = None;
        for _ in 0..1000 {
            last = Some(g.lease_step(&store, limit, &req, t).unwrap());
        }
        let (step, _) = last.unwrap();
        assert_eq!(step, LeaseStep::Ask { want: 1, renewing: false });
        let (step, _) = g.lease_step(&store, limit, &req, t + 200_000_000).unwrap();
        assert_eq!(step, LeaseStep::Ask { want: 20, renewing: true });
    }

    #[test]
    fn a_short_lease_paces_by_what_was_missing_and_an_unknown_descriptor_admits() {
        let (p, g) = plan(LEASED);
        let limit = p.global_rate_limit.as_ref().unwrap();
        let store = MemoryStore::default();
        let req = SimpleRequest::new("GET", "h", "/");
        let t = 1_000 * NANOS_PER_SEC;
        let (_, at) = g.lease_step(&store, limit, &req, t).unwrap();
        // Asked for 20, got 4 (the service's `until` is then the time to a full bucket: 400 ms).
        assert!(g.lease_answer(&store, &at, 20, 1, true, &granted(4, 0, 400_000_000), t));
        for _ in 0..3 {
            assert!(matches!(g.lease_step(&store, limit, &req, t).unwrap().0, LeaseStep::Spent { .. }));
        }
        // Paced by half of the 16 missing tokens at 10 ms each, not by the 400 ms.
        assert_eq!(g.lease_step(&store, limit, &req, t).unwrap().0, LeaseStep::Empty { wait: 80_000_000 });
        // OK without a quota (the service has no such limit): admitted, nothing leased or paced.
        let later = t + NANOS_PER_SEC;
        let (_, at) = g.lease_step(&store, limit, &req, later).unwrap();
        let unknown = Answer::Decided {
            over_limit: false,
            remaining: 0,
            until: 0,
            envoys: None,
            granted: 0,
            valid_until: 0,
        };
        assert!(g.lease_answer(&store, &at, 5, 1, true, &unknown, later));
        assert!(matches!(g.lease_step(&store, limit, &req, later).unwrap().0, LeaseStep::Ask { .. }));
    }
}
