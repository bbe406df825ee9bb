//! The life of one request under a [`Plan`]: admit → (upstream) → respond → finish.
//!
//! Everything here is host-independent: shared state goes through [`SharedStore`], time comes in
//! as `now`. The Envoy filter calls these functions from its proxy-wasm callbacks; host-test and
//! native tests call them with in-memory fakes, so one behaviour is tested three ways.
//!
//! Order of decisions: rate limit → concurrency limit → circuit breaker; the first rejection wins
//! and later blocks do not see the request (nothing consumed, nothing held). In `shadow` mode the
//! same decisions are taken and counted, but the request is forwarded anyway.

use crate::engine::Nanos;
use crate::engine::breaker::{Admission, Phase, Ticket, Transition};
use crate::engine::budget::Reservation;
use crate::engine::keys::{KeyTable, SlotRef, SlotState};
use crate::engine::rate_limit::{RateDecision, decode_tat};
use crate::engine::store::{SharedStore, StoreError, update};
use crate::engine::{NANOS_PER_SEC, concurrency, text};
use crate::model::{FailureMode, KeyPart, Outcome, Response};
use crate::plan::{Plan, PolicyPlan, RequestView};

/// What the policy decided for a request (the `decision` label of metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    RateLimited,
    ConcurrencyLimited,
    CircuitOpen,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::RateLimited => "rate_limited",
            Decision::ConcurrencyLimited => "concurrency_limited",
            Decision::CircuitOpen => "circuit_open",
        }
    }
}

/// The per-policy counters a metrics sink keeps, in this order: the filter names them
/// `breakwater.requests.policy.<policy>.decision.<counter>`, and host-test reads them back by name.
/// `retried` counts retries; every other counter counts requests.
pub const COUNTERS: [&str; 8] = [
    "allowed",
    "rate_limited",
    "concurrency_limited",
    "circuit_open",
    "fallback",
    "retried",
    "budget_exhausted",
    "state_unavailable",
];

/// Something worth counting, reported to the caller's metrics sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Decision(Decision),
    /// The request got fewer retries than `max_retries` because the budget was short.
    BudgetExhausted,
    /// Retries Envoy performed for the request.
    Retried(u32),
    Fallback,
    /// Shared state could not be used; `failure_mode` applied.
    StateUnavailable,
    Breaker(Transition),
    InFlight(u32),
}

/// A reply the filter sends itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// What to do with the request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward, after setting these request headers (Envoy router instructions).
    Forward { request_headers: Vec<(&'static str, String)> },
    /// Answer with this reply instead.
    Reject(Reply),
}

/// A request under a policy, from admission to its end.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub policy: usize,
    pub decision: Decision,
    pub verdict: Verdict,
    pub events: Vec<Event>,
    /// Headers to add to the response (rate-limit and debug headers).
    pub response_headers: Vec<(String, String)>,
    started: Nanos,
    slot: Option<SlotRef>,
    ticket: Option<Ticket>,
    reservation: Option<Reservation>,
    replied: bool,
}

impl Admitted {
    pub fn forwarded(&self) -> bool {
        matches!(self.verdict, Verdict::Forward { .. })
    }

    /// Whether the router may have retried this request (it was allowed some retries); only then
    /// does [`finish`] need the attempt count.
    pub fn may_have_retried(&self) -> bool {
        self.reservation.is_some_and(|r| r.granted > 0)
    }
}

/// How the upstream exchange ended, as Envoy reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exchange {
    /// Response status; None when there was no response (client abort before headers).
    pub status: Option<u16>,
    /// `response.flags` bitmask.
    pub flags: u64,
    /// `response.code_details`.
    pub details: String,
}

/// Envoy's response flags we classify by (StreamInfo::CoreResponseFlag bit values).
pub mod flags {
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4; // UT
    pub const LOCAL_RESET: u64 = 0x8; // LR
    pub const UPSTREAM_REMOTE_RESET: u64 = 0x10; // UR
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20; // UF
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 0x40; // UC
    pub const UPSTREAM_OVERFLOW: u64 = 0x80; // UO
    pub const NO_HEALTHY_UPSTREAM: u64 = 0x2; // UH
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u64 = 0x8000; // URX
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000; // DC
}

impl Exchange {
    /// Whether a response with this status is classified by its status alone. Envoy reports
    /// connect failures, resets and timeouts as 503/504 local replies (or no response at all), so
    /// below 500 the flags and details are not read, and the filter does not fetch them (each
    /// property read costs Envoy about 3 µs; see BENCHMARKS.md).
    pub fn status_decides(status: Option<u16>) -> bool {
        matches!(status, Some(s) if s < 500)
    }

    /// Whether the exchange counts as `outcome`.
    pub fn is(&self, outcome: Outcome) -> bool {
        let status = self.status.unwrap_or(0);
        let d = self.details.as_str();
        if Self::status_decides(self.status)
            && matches!(outcome, Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout)
        {
            return false;
        }
        match outcome {
            Outcome::Status5xx => (500..=599).contains(&status),
            Outcome::GatewayError => matches!(status, 502..=504),
            Outcome::Status(code) => status == code,
            Outcome::ConnectFailure => {
                self.flags & (flags::UPSTREAM_CONNECTION_FAILURE | flags::NO_HEALTHY_UPSTREAM) != 0
                    || d.contains("connection_failure")
            }
            Outcome::Reset => {
                self.flags
                    & (flags::UPSTREAM_REMOTE_RESET
                        | flags::UPSTREAM_CONNECTION_TERMINATION
                        | flags::LOCAL_RESET)
                    != 0
                    || (d.starts_with("upstream_reset") && !d.contains("connection_failure"))
            }
            Outcome::Timeout => {
                self.flags & flags::UPSTREAM_REQUEST_TIMEOUT != 0
                    || d == "response_timeout"
                    || d.contains("per_try_timeout")
            }
        }
    }

    pub fn is_any(&self, outcomes: &[Outcome]) -> bool {
        outcomes.iter().any(|o| self.is(*o))
    }
}

/// Rate-limit slots: idle when the bucket is full again; the fullest buckets are evicted first.
struct RateSlots;
impl SlotState for RateSlots {
    fn activity(&self, state: &[u8], now: Nanos) -> Option<u64> {
        decode_tat(state).filter(|tat| *tat > now).map(|tat| tat - now)
    }
    fn evictable(&self) -> bool {
        true
    }
}

/// Concurrency slots: idle at zero in flight; never evicted (releases must find their count).
struct ConcurrencySlots;
impl SlotState for ConcurrencySlots {
    fn activity(&self, state: &[u8], _: Nanos) -> Option<u64> {
        let n = concurrency::decode(Some(state));
        (n > 0).then_some(u64::from(n))
    }
    fn evictable(&self) -> bool {
        false
    }
}

/// The composed key of a request: its parts joined by U+001F (which header values cannot hold).
pub fn compose_key(parts: &[KeyPart], req: &impl RequestView) -> Vec<u8> {
    let mut key = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(0x1f);
        }
        let value = match part {
            KeyPart::ClientIp => req.client_ip().unwrap_or_default(),
            KeyPart::Host => req.authority(),
            KeyPart::Method => req.method(),
            KeyPart::Path => req.path().split_once('?').map_or(req.path(), |(p, _)| p),
            KeyPart::Header(h) => req.header(h).unwrap_or_default(),
        };
        key.extend_from_slice(value.as_bytes());
    }
    key
}

fn reply(r: &Response, extra: Vec<(String, String)>) -> Reply {
    let mut headers: Vec<(String, String)> = r.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    headers.extend(extra);
    Reply { status: r.status, headers, body: r.body.clone() }
}

fn seconds_ceil(ns: Nanos) -> u64 {
    ns.div_ceil(NANOS_PER_SEC)
}

/// The IETF RateLimit / RateLimit-Policy fields for a decision.
fn rate_limit_headers(p: &PolicyPlan, d: &RateDecision) -> Vec<(String, String)> {
    let name = p.name();
    let mut value = String::with_capacity(name.len() + 30);
    value.push('"');
    value.push_str(name);
    value.push_str("\";r=");
    text::push_u64(&mut value, d.remaining);
    value.push_str(";t=");
    text::push_u64(&mut value, seconds_ceil(d.reset_after));
    vec![
        ("ratelimit-policy".to_string(), p.headers.rate_limit_policy.clone()),
        ("ratelimit".to_string(), value),
    ]
}

/// Admits (or rejects) a request. None when no policy matches.
pub fn admit<S: SharedStore + ?Sized>(
    plan: &Plan,
    store: &S,
    req: &impl RequestView,
    now: Nanos,
) -> Option<Admitted> {
    let (index, p) = plan.first_match(req)?;
    let mut a = Admitted {
        policy: index,
        decision: Decision::Allowed,
        verdict: Verdict::Forward { request_headers: Vec::new() },
        events: Vec::new(),
        response_headers: Vec::new(),
        started: now,
        slot: None,
        ticket: None,
        reservation: None,
        replied: false,
    };
    let rejection = check_limits(p, store, req, now, &mut a);
    if let Some((decision, r)) = rejection {
        a.decision = decision;
        if p.enforcing() {
            a.verdict = Verdict::Reject(r);
            a.replied = true;
        }
    }
    a.events.push(Event::Decision(a.decision));
    if a.forwarded() {
        a.verdict = Verdict::Forward { request_headers: router_headers(p, store, req, now, &mut a) };
    }
    if plan.debug_headers {
        a.response_headers.push(("x-breakwater-policy".into(), p.name().to_string()));
        a.response_headers.push(("x-breakwater-decision".into(), a.decision.as_str().into()));
    }
    if let Verdict::Reject(r) = &mut a.verdict {
        r.headers.append(&mut a.response_headers);
    }
    Some(a)
}

/// Rate limit → concurrency → breaker. Returns the first rejection.
fn check_limits<S: SharedStore + ?Sized>(
    p: &PolicyPlan,
    store: &S,
    req: &impl RequestView,
    now: Nanos,
    a: &mut Admitted,
) -> Option<(Decision, Reply)> {
    let deny = p.policy.failure_mode == FailureMode::Deny;
    if let (Some(rl), Some(g)) = (&p.policy.rate_limit, &p.rate_limit) {
        let key = compose_key(&rl.key, req);
        match p.state.rate_limit.update(store, &key, now, &RateSlots, |s| g.decide_bytes(s, now)) {
            Ok((d, _)) => {
                let headers = rate_limit_headers(p, &d);
                if !d.allowed {
                    let mut extra =
                        vec![("retry-after".to_string(), text::u64_text(seconds_ceil(d.retry_after).max(1)))];
                    extra.extend(headers);
                    return Some((Decision::RateLimited, reply(&rl.response, extra)));
                }
                a.response_headers.extend(headers);
            }
            Err(_) => {
                a.events.push(Event::StateUnavailable);
                if deny {
                    return Some((Decision::RateLimited, reply(&rl.response, Vec::new())));
                }
            }
        }
    }
    if let Some(cl) = &p.policy.concurrency_limit {
        let key = compose_key(&cl.key, req);
        let max = cl.max_in_flight;
        match p
            .state
            .concurrency
            .update(store, &key, now, &ConcurrencySlots, |s| concurrency::acquire(s, max))
        {
            Ok((slot, _)) if !slot.acquired => {
                return Some((Decision::ConcurrencyLimited, reply(&cl.response, Vec::new())));
            }
            Ok((slot, at)) => {
                a.events.push(Event::InFlight(slot.in_flight));
                a.slot = Some(at);
            }
            Err(_) => {
                a.events.push(Event::StateUnavailable);
                if deny {
                    return Some((Decision::ConcurrencyLimited, reply(&cl.response, Vec::new())));
                }
            }
        }
    }
    if let (Some(cb), Some(cfg)) = (&p.policy.circuit_breaker, &p.breaker) {
        match update(store, &p.state.breaker, |s| cfg.admit_bytes(s, now)) {
            Ok((admission, transition, _)) => {
                if let Some(t) = transition {
                    a.events.push(Event::Breaker(t));
                }
                match admission {
                    Admission::Admitted(ticket) => a.ticket = Some(ticket),
                    Admission::Rejected { retry_after } => {
                        release(store, a);
                        let extra = vec![(
                            "retry-after".to_string(),
                            text::u64_text(seconds_ceil(retry_after).max(1)),
                        )];
                        return Some((Decision::CircuitOpen, reply(&cb.response, extra)));
                    }
                }
            }
            Err(_) => {
                a.events.push(Event::StateUnavailable);
                if deny {
                    release(store, a);
                    return Some((Decision::CircuitOpen, reply(&cb.response, Vec::new())));
                }
            }
        }
    }
    None
}

/// Envoy router headers for a forwarded request: retries within the budget, timeouts.
fn router_headers<S: SharedStore + ?Sized>(
    p: &PolicyPlan,
    store: &S,
    req: &impl RequestView,
    now: Nanos,
    a: &mut Admitted,
) -> Vec<(&'static str, String)> {
    let mut h = Vec::new();
    if let (Some(r), Some(budget)) = (&p.policy.retry, &p.budget) {
        let retriable = r.methods.iter().any(|m| m == req.method());
        let want = if retriable { r.max_retries } else { 0 };
        // Every request of the policy counts toward the budget's base, retried or not.
        match update(store, &p.state.budget, |s| budget.start_bytes(s, now, want)) {
            Ok(res) => {
                if res.granted < want {
                    a.events.push(Event::BudgetExhausted);
                }
                a.reservation = Some(res);
                if retriable {
                    let fixed = &p.headers;
                    h.push(("x-envoy-retry-on", fixed.retry_on.clone()));
                    h.push(("x-envoy-max-retries", text::u64_text(u64::from(res.granted))));
                    if let Some(codes) = &fixed.retriable_status_codes {
                        h.push(("x-envoy-retriable-status-codes", codes.clone()));
                    }
                    if let Some(ms) = &fixed.per_try_timeout_ms {
                        h.push(("x-envoy-upstream-rq-per-try-timeout-ms", ms.clone()));
                    }
                }
            }
            // Without the budget's state no retry is safe: forward without retry headers.
            Err(_) => a.events.push(Event::StateUnavailable),
        }
    }
    if let Some(ms) = &p.headers.timeout_ms {
        h.push(("x-envoy-upstream-rq-timeout-ms", ms.clone()));
    }
    h
}

/// The fallback reply for an upstream response, if the policy has one for this outcome. Call on
/// response headers (the only point where Envoy lets a reply replace the upstream's).
pub fn fallback(plan: &Plan, a: &mut Admitted, exchange: &Exchange) -> Option<Reply> {
    if a.replied {
        return None; // our own local reply passing through
    }
    let fb = plan.policies.get(a.policy)?.policy.fallback.as_ref()?;
    if !exchange.is_any(&fb.on) {
        return None;
    }
    a.replied = true;
    a.events.push(Event::Fallback);
    let mut extra = Vec::new();
    if plan.debug_headers {
        extra.push(("x-breakwater-policy".to_string(), plan.policies.get(a.policy)?.name().to_string()));
        extra.push(("x-breakwater-decision".to_string(), "fallback".to_string()));
    }
    Some(reply(&fb.response, extra))
}

/// Settles a request when its stream ends, whatever the end: releases its concurrency slot,
/// records the breaker outcome, returns unused retries. `attempts` is Envoy's
/// `upstream.request_attempt_count` (0 or None when no upstream request was made).
pub fn finish<S: SharedStore + ?Sized>(
    plan: &Plan,
    store: &S,
    a: &mut Admitted,
    exchange: &Exchange,
    attempts: Option<u32>,
    now: Nanos,
) {
    let Some(p) = plan.policies.get(a.policy) else { return };
    release(store, a);
    let retried = attempts.unwrap_or(0).saturating_sub(1);
    if retried > 0 {
        a.events.push(Event::Retried(retried));
    }
    if let (Some(cb), Some(cfg), Some(ticket)) = (&p.policy.circuit_breaker, &p.breaker, a.ticket.take()) {
        // A client abort before any response says nothing about the upstream.
        if exchange.status.is_some() {
            let failed = exchange.is_any(&cb.failure_on);
            let duration = now.saturating_sub(a.started);
            match update(store, &p.state.breaker, |s| cfg.record_bytes(s, now, ticket, failed, duration)) {
                Ok((Some(t), _)) => a.events.push(Event::Breaker(t)),
                Ok((None, _)) => {}
                Err(_) => a.events.push(Event::StateUnavailable),
            }
        }
    }
    if let (Some(budget), Some(res)) = (&p.budget, a.reservation.take())
        && update(store, &p.state.budget, |s| budget.settle_bytes(s, now, res, retried)).is_err()
    {
        a.events.push(Event::StateUnavailable);
    }
}

/// Gives the concurrency slot back, once.
fn release<S: SharedStore + ?Sized>(store: &S, a: &mut Admitted) {
    if let Some(slot) = a.slot.take() {
        match KeyTable::update_at(store, &slot, concurrency::release) {
            Ok(Some(n)) => a.events.push(Event::InFlight(n)),
            Ok(None) => {}
            Err(StoreError::CasMismatch | StoreError::Contended | StoreError::Unavailable(_)) => {
                a.events.push(Event::StateUnavailable)
            }
        }
    }
}

/// The breaker phase of a policy as stored now (for the breaker-state gauge and the admin).
pub fn breaker_phase<S: SharedStore + ?Sized>(p: &PolicyPlan, store: &S) -> Option<Phase> {
    let cfg = p.breaker.as_ref()?;
    let bytes = store.get(&p.state.breaker).ok()??.0;
    cfg.decode(&bytes).map(|s| s.phase())
}
