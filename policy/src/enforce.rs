//! The life of one request under a [`Plan`]: admit → (upstream) → respond → finish.
//!
//! Everything here is host-independent: shared state goes through [`SharedStore`], time comes in
//! as `now`. The Envoy filter calls these functions from its proxy-wasm callbacks; host-test and
//! native tests call them with in-memory fakes, so one behaviour is tested three ways.
//!
//! Order of decisions: rate limit → concurrency limit → circuit breaker; the first rejection wins
//! and later blocks do not see the request (nothing consumed, nothing held). In `shadow` mode the
//! same decisions are taken and counted, but the request is forwarded anyway.

use std::sync::Arc;

use crate::engine::Nanos;
use crate::engine::adaptive::Reading;
use crate::engine::breaker::{Admission, Phase, Ticket, Transition};
use crate::engine::budget::Reservation;
use crate::engine::keys::{KeyTable, SlotRef, SlotState};
use crate::engine::rate_limit::{RateDecision, RateSlots};
use crate::engine::record;
use crate::engine::store::{SharedStore, StoreError};
use crate::engine::{NANOS_PER_SEC, concurrency, text};
use crate::global::{self, Answer, Call, LeaseAt, LeaseStep, Renewal};
use crate::metrics::{Counter, Decision};
use crate::model::{FailureMode, GlobalFailureMode, Outcome, Response};
use crate::plan::{Plan, PolicyPlan, RequestView, concurrency_limit};

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
    /// A call to the rate-limit service.
    GlobalCall,
    /// The global limit was decided without the service; its `failure_mode` applied.
    GlobalUnavailable,
    /// Degraded mode began (true) or ended (false).
    GlobalDegraded(bool),
    /// The request is held by an injected delay.
    FaultDelayed,
    /// An injected delay was left out (`max_active` reached).
    FaultDelaySkipped,
    /// Requests held by injected delays now.
    FaultActive(u32),
    /// The request waits for a concurrency slot (or, in shadow mode, would).
    Queued,
    /// A waiting request got its slot.
    QueueAdmitted,
    /// A waiting request's client went away.
    QueueAbandoned,
    /// Requests waiting in the line now.
    QueueLength(u32),
    /// How long a request waited in the line (milliseconds), when it got its slot or timed out.
    QueueWaited(u64),
    /// An adaptive concurrency limit changed (or started): what it shows now.
    Adaptive(Reading),
    /// The upstream answered the request (response headers) this many milliseconds after it went
    /// on (after its wait in a queue, its injected delay, its call to the rate-limit service).
    UpstreamLatency(u64),
}

impl Event {
    /// The counter this event increments, and by how much; None for what a gauge shows.
    pub fn counter(self) -> Option<(Counter, u64)> {
        Some(match self {
            Event::Decision(d) => (d.counter(), 1),
            Event::Fallback => (Counter::Fallback, 1),
            Event::Retried(n) => (Counter::Retried, u64::from(n)),
            Event::BudgetExhausted => (Counter::BudgetExhausted, 1),
            Event::StateUnavailable => (Counter::StateUnavailable, 1),
            Event::GlobalCall => (Counter::GlobalCalls, 1),
            Event::GlobalUnavailable => (Counter::GlobalUnavailable, 1),
            Event::FaultDelayed => (Counter::FaultDelayed, 1),
            Event::FaultDelaySkipped => (Counter::FaultDelaySkipped, 1),
            Event::Queued => (Counter::Queued, 1),
            Event::QueueAdmitted => (Counter::QueueAdmitted, 1),
            Event::QueueAbandoned => (Counter::QueueAbandoned, 1),
            Event::Breaker(_)
            | Event::InFlight(_)
            | Event::GlobalDegraded(_)
            | Event::FaultActive(_)
            | Event::QueueLength(_)
            | Event::QueueWaited(_)
            | Event::Adaptive(_)
            | Event::UpstreamLatency(_) => {
                return None;
            }
        })
    }
}

/// A header value the filter sets: a fixed word, a value the plan rendered once and shares
/// (cloning it allocates nothing), or one computed for this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Static(&'static str),
    Fixed(Arc<str>),
    Computed(String),
}

impl std::ops::Deref for HeaderValue {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            HeaderValue::Static(s) => s,
            HeaderValue::Fixed(s) => s,
            HeaderValue::Computed(s) => s,
        }
    }
}

impl PartialEq<&str> for HeaderValue {
    fn eq(&self, other: &&str) -> bool {
        **self == **other
    }
}

/// A reply the filter sends itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Reset the stream instead of sending the reply (an injected abort with `reset: true`).
    pub reset: bool,
}

/// What to do with the request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward, after setting these request headers (Envoy router instructions).
    Forward { request_headers: Vec<(&'static str, HeaderValue)> },
    /// Answer with this reply instead.
    Reject(Reply),
    /// Hold the request: it waits in a concurrency limit's queue. Call [`poll`] (on a timer)
    /// until it returns true; the verdict is then one of the others.
    Wait,
}

/// A request under a policy, from admission to its end.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub policy: usize,
    pub decision: Decision,
    pub verdict: Verdict,
    pub events: Vec<Event>,
    /// Headers to add to the response (rate-limit and debug headers).
    pub response_headers: Vec<(&'static str, HeaderValue)>,
    started: Nanos,
    /// A keyed concurrency slot held.
    slot: Option<SlotRef>,
    /// A concurrency slot held in the policy's record.
    record_slot: bool,
    /// The lease bucket the concurrency slot (keyed or in the record) was acquired in.
    slot_epoch: u64,
    /// Requests in flight when the slot was taken (itself included): an adaptive limit's sample.
    /// (The slot was taken at `started`: admission, or the end of a wait in a queue or for the
    /// rate-limit service, moved on to the end of an injected delay.)
    admitted_at: u32,
    /// When the response headers came (an adaptive limit's latency sample ends there).
    answered: Option<Nanos>,
    /// Leased mode: a renewal of the lease to send in the background (the caller's root context
    /// sends it and hands the answer to [`renewed`]).
    pub renewal: Option<Renewal>,
    ticket: Option<Ticket>,
    reservation: Option<Reservation>,
    replied: bool,
    /// An injected delay: hold the request this long before its verdict applies (the reply is
    /// sent, or the request goes on, when it is over: [`delay_over`]).
    pub delay: Option<Nanos>,
    /// Holds one of the fault block's `max_active` delays (in this lease bucket) until
    /// [`delay_over`] or [`finish`].
    holding: Option<u64>,
    /// An injected abort the breaker counts (`count_in_breaker`): the outcome it records.
    injected: Option<Exchange>,
    /// Whether the policy retries this request's method, and how many retries it wants.
    retriable: bool,
    want: u32,
    /// Waiting for a concurrency slot ([`Verdict::Wait`]).
    waiting: Option<Waiting>,
}

/// A request's place in a concurrency limit's queue.
#[derive(Debug, Clone)]
struct Waiting {
    place: concurrency::Place,
    /// The keyed slot the line is in; None: in the policy's record.
    at: Option<SlotRef>,
    since: Nanos,
    /// A look at the line failed (shared state unavailable): counted once.
    unavailable: bool,
}

impl Admitted {
    pub fn forwarded(&self) -> bool {
        matches!(self.verdict, Verdict::Forward { .. })
    }

    /// When a request that waits in a queue stops waiting at the latest (it is then answered
    /// with the block's response at its next [`poll`]).
    pub fn waits_until(&self) -> Option<Nanos> {
        self.waiting.as_ref().map(|w| w.place.deadline)
    }

    /// Whether this waiting request is behind `other` in the same line (when `other` must wait,
    /// so must this one: it need not look).
    pub fn behind(&self, other: &Admitted) -> bool {
        match (&self.waiting, &other.waiting) {
            (Some(a), Some(b)) => {
                self.policy == other.policy && a.at == b.at && b.place.ticket < a.place.ticket
            }
            _ => false,
        }
    }

    /// Whether the filter should tell [`Admitted::answered`] when the response headers come: the
    /// request went upstream and the filter did not answer it (its upstream latency is a sample
    /// of the policy's latency histogram, and of an adaptive concurrency limit).
    pub fn times_answer(&self) -> bool {
        self.forwarded() && !self.replied && self.answered.is_none()
    }

    /// The response headers came at `now` (see [`Admitted::times_answer`]).
    pub fn answered(&mut self, now: Nanos) {
        self.answered.get_or_insert(now);
    }

    /// Whether the router may have retried this request (it was allowed some retries); only then
    /// does [`finish`] need the attempt count.
    pub fn may_have_retried(&self) -> bool {
        self.reservation.is_some_and(|r| r.granted > 0)
    }

    /// Whether the upstream's outcome can change anything for this request: a fallback that may
    /// replace the response, or a breaker to record it. Only then does the filter read the status
    /// (the first response-header read of a stream is one of Envoy's dearest calls; BENCHMARKS.md,
    /// firstcalls, has the price) or, without response headers, `response.code`; [`finish`]
    /// otherwise takes `Exchange::default()`.
    pub fn needs_outcome(&self, plan: &Plan) -> bool {
        !self.replied
            && (self.ticket.is_some()
                || plan.policies.get(self.policy).is_some_and(|p| p.policy.fallback.is_some()))
    }

    /// Whether the filter reads [`ATTEMPT_COUNT_HEADER`] at response headers: the document trusts
    /// it, and the count matters (the request may have been retried).
    pub fn reads_attempt_count_header(&self, plan: &Plan) -> bool {
        plan.trust_attempt_count_header && self.may_have_retried()
    }

    /// The attempt count in an [`ATTEMPT_COUNT_HEADER`] value, if it is one Envoy's router could
    /// have written for this request: 1 up to the retries granted + 1. Otherwise None, and
    /// [`finish`] should get `upstream.request_attempt_count` instead.
    pub fn attempts_from_header(&self, value: &str) -> Option<u32> {
        let most = self.reservation.map_or(0, |r| r.granted).saturating_add(1);
        let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
        value.parse().ok().filter(|n| digits && (1..=most).contains(n))
    }
}

/// The response header in which Envoy's router reports how many attempts a request made, when
/// the virtual host sets `include_attempt_count_in_response` (it overwrites an upstream's own).
pub const ATTEMPT_COUNT_HEADER: &str = "x-envoy-attempt-count";

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
    /// property read is a host call that copies into guest memory; BENCHMARKS.md has the price).
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

/// Concurrency slots: idle at zero in flight and none waiting (expired leases and waiters past
/// their deadline not counted); never evicted (releases and waiters must find their count). Holds the lease's bucket width.
struct ConcurrencySlots(Nanos);

impl SlotState for ConcurrencySlots {
    fn activity(&self, state: &[u8], now: Nanos) -> Option<u64> {
        let n = u64::from(concurrency::in_flight(Some(state), now, self.0))
            .saturating_add(u64::from(concurrency::waiting(Some(state), now, self.0)));
        (n > 0).then_some(n)
    }
    fn evictable(&self) -> bool {
        false
    }
}

pub use crate::plan::{compose_key, key_fingerprint};

fn reply(r: &Response, extra: Vec<(String, String)>) -> Reply {
    let mut headers: Vec<(String, String)> =
        r.headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    headers.extend(extra);
    Reply { status: r.status, headers, body: r.body.to_string(), reset: false }
}

fn seconds_ceil(ns: Nanos) -> u64 {
    ns.div_ceil(NANOS_PER_SEC)
}

/// The IETF RateLimit / RateLimit-Policy fields for a decision.
fn rate_limit_headers(p: &PolicyPlan, d: &RateDecision) -> [(&'static str, HeaderValue); 2] {
    let name = p.name();
    let mut value = String::with_capacity(name.len().saturating_add(30));
    value.push('"');
    value.push_str(name);
    value.push_str("\";r=");
    text::push_u64(&mut value, d.remaining);
    value.push_str(";t=");
    text::push_u64(&mut value, seconds_ceil(d.reset_after));
    [
        ("ratelimit-policy", HeaderValue::Fixed(p.headers.rate_limit_policy.clone())),
        ("ratelimit", HeaderValue::Computed(value)),
    ]
}

/// Headers of a reply, from the language's own.
fn owned(
    headers: impl IntoIterator<Item = (&'static str, HeaderValue)>,
) -> impl Iterator<Item = (String, String)> {
    headers.into_iter().map(|(k, v)| (k.to_string(), v.to_string()))
}

/// What [`admit`] decided: the request's fate, or a question for the rate-limit service first.
#[derive(Debug)]
pub enum Step {
    Decided(Admitted),
    /// Send [`Ask::call`] to the rate-limit service (the request waits), then [`resume`] with
    /// the answer, or with [`Answer::Unavailable`] if none came within the call's timeout.
    Ask(Ask),
}

impl Step {
    /// The decision, when it was taken without the rate-limit service.
    pub fn decided(self) -> Option<Admitted> {
        match self {
            Step::Decided(a) => Some(a),
            Step::Ask(_) => None,
        }
    }
}

/// A request waiting for the rate-limit service: its global limit is next.
#[derive(Debug)]
pub struct Ask {
    pub call: Call,
    admitted: Admitted,
    /// Leased mode: where the lease is, how many tokens the call asks for, whether it is the
    /// lease's renewal.
    lease: Option<(LeaseAt, u64, bool)>,
}

impl Ask {
    pub fn policy(&self) -> usize {
        self.admitted.policy
    }

    /// Events so far (the local rate limit's, the call's), for the caller's metrics.
    pub fn events(&mut self) -> std::vec::Drain<'_, Event> {
        self.admitted.events.drain(..)
    }
}

/// Which blocks [`check_limits`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Every block.
    All,
    /// The local rate limit alone (a global limit is next).
    RateLimit,
    /// Everything after the rate limits.
    AfterRateLimits,
    /// Everything after the concurrency limit (a request that waited for its slot).
    AfterConcurrency,
}

/// Admits (or rejects) a request, or asks for the rate-limit service's answer first (a policy
/// with a `global_rate_limit`). None when no policy matches.
pub fn admit<S: SharedStore + ?Sized>(
    plan: &Plan,
    store: &S,
    req: &impl RequestView,
    now: Nanos,
) -> Option<Step> {
    let (index, p) = plan.first_match(req)?;
    let mut a = Admitted {
        verdict: Verdict::Forward { request_headers: Vec::new() },
        started: now,
        ..placeholder(index)
    };
    let retriable = p.policy.retry.as_ref().is_some_and(|r| r.methods.iter().any(|m| m == req.method()));
    let want = match &p.policy.retry {
        Some(r) if retriable => r.max_retries,
        _ => 0,
    };
    (a.retriable, a.want) = (retriable, want);
    let Some(gp) = &p.global else {
        return Some(Step::Decided(decide_rest(plan, p, store, req, now, a, Stage::All)));
    };
    if let Some(rejection) = check_limits(p, store, req, now, &mut a, want, Stage::RateLimit) {
        return Some(Step::Decided(conclude(plan, p, a, Some(rejection), retriable)));
    }
    let known = match global::route(store, gp, now) {
        global::Route::Degraded(known) => {
            let decided = after_global(plan, p, store, req, now, a, Answer::Unavailable, known);
            return Some(Step::Decided(decided));
        }
        // A probe calls for this request alone.
        global::Route::Probe => {
            a.events.push(Event::GlobalCall);
            return Some(Step::Ask(Ask { call: gp.request(req), admitted: a, lease: None }));
        }
        global::Route::Ask => global::Known::default(),
    };
    let leased = match (gp.leased(), &p.policy.global_rate_limit) {
        (true, Some(g)) => gp.lease_step(store, g, req, now).ok(),
        _ => None,
    };
    let decided = |over_limit, until| Answer::Decided {
        over_limit,
        remaining: 0,
        until,
        envoys: None,
        granted: 0,
        valid_until: 0,
    };
    Some(match leased {
        Some((LeaseStep::Spent { renew }, at)) => {
            if let Some(tokens) = renew {
                a.events.push(Event::GlobalCall);
                let call = gp.lease_request(req, tokens);
                a.renewal = Some(Renewal { policy: index, at, want: tokens, call });
            }
            Step::Decided(after_global(plan, p, store, req, now, a, decided(false, 0), known))
        }
        Some((LeaseStep::Empty { wait }, _)) => {
            Step::Decided(after_global(plan, p, store, req, now, a, decided(true, wait), known))
        }
        Some((LeaseStep::Ask { want: tokens, renewing }, at)) => {
            a.events.push(Event::GlobalCall);
            let call = gp.lease_request(req, tokens);
            Step::Ask(Ask { call, admitted: a, lease: Some((at, tokens, renewing)) })
        }
        // Exact mode, or a lease that could not be read: one call for this request.
        None => {
            a.events.push(Event::GlobalCall);
            Step::Ask(Ask { call: gp.request(req), admitted: a, lease: None })
        }
    })
}

/// Puts a background renewal's answer into its lease (and what it says about the service into
/// the policy's record). The events are the policy's ([`Renewal::policy`]).
pub fn renewed<S: SharedStore + ?Sized>(
    plan: &Plan,
    store: &S,
    renewal: &Renewal,
    answer: Answer,
    now: Nanos,
) -> Vec<Event> {
    let mut events = Vec::new();
    let Some(gp) = plan.policies.get(renewal.policy).and_then(|p| p.global.as_ref()) else { return events };
    if let Ok((known, true)) = global::record(store, gp, &answer, now) {
        events.push(Event::GlobalDegraded(known.degraded));
    }
    gp.lease_answer(store, &renewal.at, renewal.want, 0, true, &answer, now);
    events
}

/// Goes on with a request that asked the rate-limit service, with its answer.
pub fn resume<S: SharedStore + ?Sized>(
    plan: &Plan,
    store: &S,
    req: &impl RequestView,
    ask: Ask,
    answer: Answer,
    now: Nanos,
) -> Admitted {
    let Ask { admitted: mut a, lease, .. } = ask;
    // The call is not the upstream's time (its latency, a breaker's slow calls).
    a.started = now;
    let Some(p) = plan.policies.get(a.policy) else { return a };
    let Some(gp) = &p.global else { return a };
    // A lease's answer: the request spends one of the tokens granted, the lease keeps the rest.
    let answer = match (lease, answer) {
        (Some((at, tokens, renewing)), Answer::Decided { envoys, until, remaining, valid_until, .. }) => {
            let got = gp.lease_answer(store, &at, tokens, 1, renewing, &answer, now);
            // A lease that was short of this request's token: it waits for the next one.
            Answer::Decided { over_limit: !got, remaining, until, envoys, granted: 0, valid_until }
        }
        (Some((at, tokens, renewing)), Answer::Unavailable) => {
            gp.lease_answer(store, &at, tokens, 1, renewing, &answer, now);
            Answer::Unavailable
        }
        (None, answer) => answer,
    };
    let known = match global::record(store, gp, &answer, now) {
        Ok((known, changed)) => {
            if changed {
                a.events.push(Event::GlobalDegraded(known.degraded));
            }
            known
        }
        Err(_) => global::Known { degraded: answer == Answer::Unavailable, ..global::Known::default() },
    };
    after_global(plan, p, store, req, now, a, answer, known)
}

/// The global limit's verdict, then the blocks after it.
#[allow(clippy::too_many_arguments)]
fn after_global<S: SharedStore + ?Sized>(
    plan: &Plan,
    p: &PolicyPlan,
    store: &S,
    req: &impl RequestView,
    now: Nanos,
    mut a: Admitted,
    answer: Answer,
    known: global::Known,
) -> Admitted {
    let (retriable, want) = (a.retriable, a.want);
    let rejection = match global_limited(p, store, req, now, &mut a, answer, &known) {
        Some(r) => {
            // Shadow mode: the request goes upstream anyway and counts toward the retry budget.
            if !p.enforcing() {
                flush(p, store, now, &mut a, [false; 3], Some(want));
            }
            Some(r)
        }
        None => return decide_rest(plan, p, store, req, now, a, Stage::AfterRateLimits),
    };
    conclude(plan, p, a, rejection, retriable)
}

/// The blocks of `stage` on, then the faults; or, when the request waits in a queue, nothing
/// more yet ([`Verdict::Wait`]: [`poll`] goes on from there).
fn decide_rest<S: SharedStore + ?Sized>(
    plan: &Plan,
    p: &PolicyPlan,
    store: &S,
    req: &impl RequestView,
    now: Nanos,
    mut a: Admitted,
    stage: Stage,
) -> Admitted {
    let want = a.want;
    let rejection = check_limits(p, store, req, now, &mut a, want, stage);
    if rejection.is_none() && a.waiting.is_some() {
        a.verdict = Verdict::Wait;
        return a;
    }
    let rejection = rejection.or_else(|| inject(p, store, req, now, &mut a));
    let retriable = a.retriable;
    conclude(plan, p, a, rejection, retriable)
}

/// A request waiting in a queue looks at its line: when its turn has come it takes the slot and
/// the blocks after the concurrency limit decide it (`request` is read then, for faults on
/// request headers); at its deadline it gets the block's response. True when the request is
/// decided ([`Admitted::verdict`] is no longer [`Verdict::Wait`]); false while it waits.
///
/// `plan` is the one the request was admitted under; `newest` the configuration in force now.
/// The line is served under the newest's limit for the same policy (after a reload that raised
/// it, waiters from before are served as newcomers would be), everything else under `plan`.
pub fn poll<S: SharedStore + ?Sized, R: RequestView>(
    plan: &Plan,
    newest: &Plan,
    store: &S,
    a: &mut Admitted,
    now: Nanos,
    request: impl FnOnce() -> R,
) -> bool {
    let Some(w) = a.waiting.clone() else { return true };
    let (Some(p), Some(cl)) = (
        plan.policies.get(a.policy),
        plan.policies.get(a.policy).and_then(|p| p.policy.concurrency_limit.as_ref()),
    ) else {
        a.waiting = None;
        return true;
    };
    let limit = if std::ptr::eq(plan, newest) {
        concurrency_limit(cl)
    } else {
        newest
            .policies
            .iter()
            .find(|q| q.name() == p.name())
            .and_then(|q| q.policy.concurrency_limit.as_ref())
            .map_or(concurrency_limit(cl), concurrency_limit)
    };
    let width = p.lease_width;
    let look = |s: Option<&[u8]>| concurrency::poll(s, w.place, limit, now, width);
    let result = match &w.at {
        Some(at) => {
            KeyTable::update_at(store, at, look).map(|r| r.unwrap_or((concurrency::Polled::TimedOut, 0)))
        }
        None => record::update(store, &p.state.record, |old, new| {
            let (r, b) = look(old[record::CONCURRENCY]);
            new[record::CONCURRENCY] = b;
            r
        }),
    };
    let polled = match result {
        Ok((polled, waiting)) => {
            if !matches!(polled, concurrency::Polled::Waiting { .. }) {
                a.events.push(Event::QueueLength(waiting));
            }
            polled
        }
        Err(_) => {
            // Counted once per request, not at every look (a thousand a second).
            if let Some(w) = a.waiting.as_mut().filter(|w| !w.unavailable) {
                w.unavailable = true;
                a.events.push(Event::StateUnavailable);
            }
            if now < w.place.deadline {
                return false;
            }
            concurrency::Polled::TimedOut
        }
    };
    let rejection = match polled {
        concurrency::Polled::Waiting { .. } => return false,
        concurrency::Polled::TimedOut => Some((Decision::QueueTimeout, reply(&cl.response, Vec::new()))),
        concurrency::Polled::Admitted(slot) => {
            a.events.push(Event::QueueAdmitted);
            a.events.push(Event::InFlight(slot.in_flight));
            (a.slot_epoch, a.admitted_at) = (slot.epoch, slot.in_flight);
            match w.at {
                Some(at) => a.slot = Some(at),
                None => a.record_slot = true,
            }
            None
        }
    };
    a.waiting = None;
    a.verdict = Verdict::Forward { request_headers: Vec::new() };
    a.events.push(Event::QueueWaited(now.saturating_sub(w.since) / 1_000_000));
    // The wait is not the upstream's time (a breaker's slow calls).
    a.started = now;
    let taken = std::mem::replace(a, placeholder(a.policy));
    *a = match rejection {
        Some(r) => conclude(plan, p, taken, Some(r), false),
        None => decide_rest(plan, p, store, &request(), now, taken, Stage::AfterConcurrency),
    };
    true
}

/// An empty decision, to stand in while the real one is moved.
fn placeholder(policy: usize) -> Admitted {
    Admitted {
        policy,
        decision: Decision::Allowed,
        verdict: Verdict::Wait,
        events: Vec::new(),
        response_headers: Vec::new(),
        started: 0,
        slot: None,
        record_slot: false,
        slot_epoch: 0,
        admitted_at: 0,
        answered: None,
        renewal: None,
        ticket: None,
        reservation: None,
        replied: false,
        delay: None,
        holding: None,
        injected: None,
        retriable: false,
        want: 0,
        waiting: None,
    }
}

/// The global limit's rejection, if the service's answer (or, without one, `failure_mode`) is one.
fn global_limited<S: SharedStore + ?Sized>(
    p: &PolicyPlan,
    store: &S,
    req: &impl RequestView,
    now: Nanos,
    a: &mut Admitted,
    answer: Answer,
    known: &global::Known,
) -> Option<(Decision, Reply)> {
    let (g, gp) = (p.policy.global_rate_limit.as_ref()?, p.global.as_ref()?);
    let retry_after =
        |wait: Nanos| vec![("retry-after".to_string(), text::u64_text(seconds_ceil(wait).max(1)))];
    match answer {
        Answer::Decided { over_limit: false, .. } => None,
        Answer::Decided { over_limit: true, until, .. } => {
            Some((Decision::GlobalRateLimited, reply(&g.response, retry_after(until))))
        }
        Answer::Unavailable => {
            a.events.push(Event::GlobalUnavailable);
            match g.failure_mode {
                GlobalFailureMode::Allow => None,
                GlobalFailureMode::Deny => {
                    Some((Decision::GlobalRateLimited, reply(&g.response, Vec::new())))
                }
                GlobalFailureMode::Local => match global::decide_local(store, gp, g, known, req, now) {
                    Some(d) if d.allowed => None,
                    Some(d) => {
                        Some((Decision::GlobalRateLimited, reply(&g.response, retry_after(d.retry_after))))
                    }
                    None => {
                        a.events.push(Event::StateUnavailable);
                        deny(p).then(|| (Decision::GlobalRateLimited, reply(&g.response, Vec::new())))
                    }
                },
            }
        }
    }
}

/// The fault block's decision for a request every other block let through: faults stand in for
/// the upstream, so they come last (docs/policy.md, "Order of decisions"). An injected abort is
/// the request's rejection; a delay holds it first. In shadow mode faults are chosen and counted,
/// never applied. Without the fault record no fault applies.
fn inject<S: SharedStore + ?Sized>(
    p: &PolicyPlan,
    store: &S,
    req: &impl RequestView,
    now: Nanos,
    a: &mut Admitted,
) -> Option<(Decision, Reply)> {
    let (fp, f) = (p.fault.as_ref()?, p.policy.fault.as_ref()?);
    let status = f.abort.as_ref().map_or(503, |x| x.response.status);
    // A half-open probe goes upstream: its outcome is what closes the breaker.
    let probe = a.ticket.is_some_and(|t| t.is_probe());
    let injected = match fp.decide(store, req, status, !probe, p.enforcing(), now) {
        Ok(i) => i,
        Err(_) => {
            a.events.push(Event::StateUnavailable);
            return None;
        }
    };
    if let Some(delay) = injected.delay {
        a.events.push(Event::FaultDelayed);
        if p.enforcing() {
            (a.delay, a.holding) = (Some(delay), Some(injected.epoch));
        }
    }
    if injected.skipped {
        a.events.push(Event::FaultDelaySkipped);
    }
    a.events.extend(injected.active.map(Event::FaultActive));
    let (abort, status) = (f.abort.as_ref()?, injected.abort?);
    // An injected abort says nothing about the upstream: the breaker is not told, unless asked
    // (then it records the abort as the request's outcome).
    if p.enforcing() {
        if abort.count_in_breaker {
            // A reset as Envoy reports an upstream's: 503, flag UR (whatever status a request
            // header asked for: a reset sends none).
            a.injected = Some(match abort.reset {
                true => Exchange {
                    status: Some(503),
                    flags: flags::UPSTREAM_REMOTE_RESET,
                    details: "upstream_reset_before_response_started{remote reset}".to_string(),
                },
                false => Exchange { status: Some(status), flags: 0, details: String::new() },
            });
        } else {
            a.ticket = None;
        }
    }
    let mut r = reply(&abort.response, Vec::new());
    (r.status, r.reset) = (status, abort.reset);
    Some((Decision::FaultAborted, r))
}

/// Ends the request's injected delay: call when its verdict applies (the reply is sent, or it
/// goes on). Once; [`finish`] ends a delay still held when the stream ends first. The request's
/// time (a breaker's slow calls) starts over: the delay is not the upstream's.
pub fn delay_over<S: SharedStore + ?Sized>(plan: &Plan, store: &S, a: &mut Admitted, now: Nanos) {
    let Some(epoch) = a.holding.take() else { return };
    a.started = now;
    let Some(fp) = plan.policies.get(a.policy).and_then(|p| p.fault.as_ref()) else { return };
    match fp.end_delay(store, epoch, now) {
        Ok(active) => a.events.push(Event::FaultActive(active)),
        Err(_) => a.events.push(Event::StateUnavailable),
    }
}

/// Applies the first rejection (if any) and adds what every decided request carries: its
/// decision event, the router's headers, the debug headers.
fn conclude(
    plan: &Plan,
    p: &PolicyPlan,
    mut a: Admitted,
    rejection: Option<(Decision, Reply)>,
    retriable: bool,
) -> Admitted {
    if let Some((decision, r)) = rejection {
        a.decision = decision;
        if p.enforcing() {
            a.verdict = Verdict::Reject(r);
            a.replied = true;
        }
    }
    a.events.push(Event::Decision(a.decision));
    if a.forwarded() {
        a.verdict = Verdict::Forward { request_headers: router_headers(p, retriable, &a) };
    }
    if plan.debug_headers {
        a.response_headers.push(("x-breakwater-policy", HeaderValue::Computed(p.name().to_string())));
        a.response_headers.push(("x-breakwater-decision", HeaderValue::Static(a.decision.as_str())));
    }
    if let Verdict::Reject(r) = &mut a.verdict {
        r.headers.extend(owned(a.response_headers.drain(..)));
    }
    a
}

/// Blocks whose state is in the policy's record, indexed like its sections.
type Blocks = [bool; 3];

/// Rate limit → (global limit, outside) → concurrency → breaker, each block on its keyed table or
/// in the policy's record;
/// consecutive record blocks are decided in one update of the record. The last update also starts
/// the retry budget (`want` retries) when the request goes upstream. Returns the first rejection.
fn check_limits<S: SharedStore + ?Sized>(
    p: &PolicyPlan,
    store: &S,
    req: &impl RequestView,
    now: Nanos,
    a: &mut Admitted,
    want: u32,
    stage: Stage,
) -> Option<(Decision, Reply)> {
    let mut pending: Blocks = [false; 3];
    let rejection = 'blocks: {
        if matches!(stage, Stage::All | Stage::RateLimit)
            && let (Some(rl), Some(g)) = (&p.policy.rate_limit, &p.rate_limit)
        {
            match &p.state.rate_limit {
                None => pending[record::RATE_LIMIT] = true,
                Some(table) => {
                    let fp = key_fingerprint(table.seed(), &rl.key, req);
                    let result = table.update_fp(store, fp, now, &RateSlots, |s| g.decide_bytes(s, now));
                    if let Some(r) = rate_limited(p, a, result.ok().map(|(d, _)| d)) {
                        break 'blocks Some(r);
                    }
                }
            }
        }
        if stage == Stage::RateLimit {
            // The record's rate limit on its own: the global limit decides before the rest.
            match flush(p, store, now, a, pending, None) {
                Some(r) => break 'blocks Some(r),
                None => return None,
            }
        }
        if stage != Stage::AfterConcurrency
            && let Some(cl) = &p.policy.concurrency_limit
        {
            match &p.state.concurrency {
                None => pending[record::CONCURRENCY] = true,
                Some(table) => {
                    if let Some(r) = flush(p, store, now, a, std::mem::take(&mut pending), None) {
                        break 'blocks Some(r);
                    }
                    let fp = key_fingerprint(table.seed(), &cl.key, req);
                    let (limit, queue, join) = queue_of(p);
                    let width = p.lease_width;
                    let result = table.update_fp(store, fp, now, &ConcurrencySlots(width), |s| {
                        concurrency::acquire_or_wait(s, limit, queue, join, now, width)
                    });
                    let (admission, at) = result.ok().unzip();
                    if let Some(r) = concurrency_limited(p, a, admission, at.clone(), now) {
                        break 'blocks Some(r);
                    }
                    if a.waiting.is_some() {
                        return None;
                    }
                    if let Some(ad) = admission.filter(|ad| ad.slot.acquired) {
                        a.slot = at;
                        (a.slot_epoch, a.admitted_at) = (ad.slot.epoch, ad.slot.in_flight);
                    }
                }
            }
        }
        pending[record::BREAKER] = p.breaker.is_some();
        return flush(p, store, now, a, pending, Some(want));
    };
    // Rejected before the last update: a request that goes upstream anyway (shadow mode) still
    // counts toward the retry budget.
    if !p.enforcing() {
        flush(p, store, now, a, [false; 3], Some(want));
    }
    rejection
}

/// A policy's concurrency limit, its queue's bounds, and whether a request may join the line
/// (not in shadow mode, where requests are never held).
fn queue_of(p: &PolicyPlan) -> (concurrency::Limit, Option<concurrency::QueueLimits>, bool) {
    let Some(cl) = &p.policy.concurrency_limit else { return (concurrency::Limit::Fixed(0), None, false) };
    let queue = cl
        .queue
        .as_ref()
        .map(|q| concurrency::QueueLimits { max_waiting: q.max_waiting, max_wait: q.max_wait.as_nanos() });
    (concurrency_limit(cl), queue, p.enforcing())
}

/// What one update of a policy's record decided.
#[derive(Debug, Clone, Copy, Default)]
struct Taken {
    rate: Option<RateDecision>,
    slot: Option<concurrency::Admission>,
    breaker: Option<(Admission, Option<Transition>)>,
    budget: Option<Reservation>,
}

/// Decides the `blocks` (and starts the budget with `want` retries, if the policy has one and
/// the request goes upstream) in one update of the policy's record, then applies the decisions.
fn flush<S: SharedStore + ?Sized>(
    p: &PolicyPlan,
    store: &S,
    now: Nanos,
    a: &mut Admitted,
    blocks: Blocks,
    want: Option<u32>,
) -> Option<(Decision, Reply)> {
    let budget = want.and_then(|w| p.budget.as_ref().map(|b| (b, w)));
    if blocks == [false; 3] && budget.is_none() {
        return None;
    }
    let forward_anyway = !p.enforcing();
    let (limit, queue, join) = queue_of(p);
    let width = p.lease_width;
    let taken = record::update(store, &p.state.record, |old, new| {
        let mut t = Taken::default();
        let rejected = 'decide: {
            if blocks[record::RATE_LIMIT]
                && let Some(g) = &p.rate_limit
            {
                let (d, b) = g.decide_bytes(old[record::RATE_LIMIT], now);
                (new[record::RATE_LIMIT], t.rate) = (b, Some(d));
                if !d.allowed {
                    break 'decide true;
                }
            }
            if blocks[record::CONCURRENCY] {
                let (admission, b) =
                    concurrency::acquire_or_wait(old[record::CONCURRENCY], limit, queue, join, now, width);
                (new[record::CONCURRENCY], t.slot) = (b, Some(admission));
                // Refused, or waiting in the line: the blocks after it decide later, if ever. In
                // shadow mode a request that would wait goes on.
                if !admission.slot.acquired && (join || admission.place.is_none()) {
                    break 'decide true;
                }
            }
            if blocks[record::BREAKER]
                && let Some(cfg) = &p.breaker
            {
                let ((admission, transition, _), b) = cfg.admit_bytes(old[record::BREAKER], now);
                (new[record::BREAKER], t.breaker) = (b, Some((admission, transition)));
                if let Admission::Rejected { .. } = admission {
                    // The request does not go upstream: the slot decided above is not taken.
                    (new[record::CONCURRENCY], t.slot) = (None, None);
                    break 'decide true;
                }
            }
            false
        };
        if let Some((budget, want)) = budget
            && (!rejected || forward_anyway)
        {
            let (reservation, b) = budget.start_bytes(old[record::BUDGET], now, want);
            (new[record::BUDGET], t.budget) = (b, Some(reservation));
        }
        t
    });
    apply(p, store, a, (blocks, now), budget.map(|(_, w)| w), taken)
}

/// Acts on the decisions of one record update, in block order; Err (no state) lets each block's
/// `failure_mode` decide.
fn apply<S: SharedStore + ?Sized>(
    p: &PolicyPlan,
    store: &S,
    a: &mut Admitted,
    (blocks, now): (Blocks, Nanos),
    want: Option<u32>,
    taken: Result<Taken, StoreError>,
) -> Option<(Decision, Reply)> {
    let Ok(t) = taken else {
        if blocks[record::RATE_LIMIT]
            && let Some(r) = rate_limited(p, a, None)
        {
            return Some(r);
        }
        if blocks[record::CONCURRENCY]
            && let Some(r) = concurrency_limited(p, a, None, None, 0)
        {
            return Some(r);
        }
        if blocks[record::BREAKER]
            && let Some(r) = circuit_open(p, store, a, None)
        {
            return Some(r);
        }
        // Without the budget's state no retry is safe: the request goes without retry headers.
        if want.is_some() && p.budget.is_some() {
            a.events.push(Event::StateUnavailable);
        }
        return None;
    };
    if let (Some(reservation), Some(want)) = (t.budget, want) {
        if reservation.granted < want {
            a.events.push(Event::BudgetExhausted);
        }
        a.reservation = Some(reservation);
    }
    if let Some(d) = t.rate
        && let Some(r) = rate_limited(p, a, Some(d))
    {
        return Some(r);
    }
    if let Some(admission) = t.slot {
        if let Some(r) = concurrency_limited(p, a, Some(admission), None, now) {
            return Some(r);
        }
        if a.waiting.is_some() {
            return None;
        }
        if admission.slot.acquired {
            a.record_slot = true;
            (a.slot_epoch, a.admitted_at) = (admission.slot.epoch, admission.slot.in_flight);
        }
    }
    if let Some(admitted) = t.breaker {
        return circuit_open(p, store, a, Some(admitted));
    }
    None
}

fn deny(p: &PolicyPlan) -> bool {
    p.policy.failure_mode == FailureMode::Deny
}

/// The rate limit's rejection, if its decision (or missing state, None, under `failure_mode: deny`)
/// is one.
fn rate_limited(
    p: &PolicyPlan,
    a: &mut Admitted,
    decision: Option<RateDecision>,
) -> Option<(Decision, Reply)> {
    let rl = p.policy.rate_limit.as_ref()?;
    match decision {
        Some(d) => {
            let headers = rate_limit_headers(p, &d);
            if !d.allowed {
                let mut extra =
                    vec![("retry-after".to_string(), text::u64_text(seconds_ceil(d.retry_after).max(1)))];
                extra.extend(owned(headers));
                return Some((Decision::RateLimited, reply(&rl.response, extra)));
            }
            a.response_headers.extend(headers);
            None
        }
        None => {
            a.events.push(Event::StateUnavailable);
            deny(p).then(|| (Decision::RateLimited, reply(&rl.response, Vec::new())))
        }
    }
}

/// The concurrency limit's rejection, if the slot was not had and the request does not wait
/// for one (a request that waits gets its place, in the record's line or at the keyed slot `at`).
fn concurrency_limited(
    p: &PolicyPlan,
    a: &mut Admitted,
    admission: Option<concurrency::Admission>,
    at: Option<SlotRef>,
    now: Nanos,
) -> Option<(Decision, Reply)> {
    let cl = p.policy.concurrency_limit.as_ref()?;
    a.events.extend(admission.and_then(|ad| ad.started).map(Event::Adaptive));
    match admission {
        Some(ad) if ad.slot.acquired => {
            a.events.push(Event::InFlight(ad.slot.in_flight));
            None
        }
        Some(concurrency::Admission { place: Some(place), waiting, .. }) => {
            a.events.push(Event::Queued);
            if p.enforcing() {
                a.events.push(Event::QueueLength(waiting));
                a.waiting = Some(Waiting { place, at, since: now, unavailable: false });
            }
            None
        }
        Some(_) => Some((Decision::ConcurrencyLimited, reply(&cl.response, Vec::new()))),
        None => {
            a.events.push(Event::StateUnavailable);
            deny(p).then(|| (Decision::ConcurrencyLimited, reply(&cl.response, Vec::new())))
        }
    }
}

/// The breaker's rejection, if it is open (a keyed concurrency slot is given back then).
fn circuit_open<S: SharedStore + ?Sized>(
    p: &PolicyPlan,
    store: &S,
    a: &mut Admitted,
    admitted: Option<(Admission, Option<Transition>)>,
) -> Option<(Decision, Reply)> {
    let cb = p.policy.circuit_breaker.as_ref()?;
    let extra = match admitted {
        Some((admission, transition)) => {
            if let Some(t) = transition {
                a.events.push(Event::Breaker(t));
            }
            match admission {
                Admission::Admitted(ticket) => {
                    a.ticket = Some(ticket);
                    return None;
                }
                Admission::Rejected { retry_after } => {
                    vec![("retry-after".to_string(), text::u64_text(seconds_ceil(retry_after).max(1)))]
                }
            }
        }
        None => {
            a.events.push(Event::StateUnavailable);
            if !deny(p) {
                return None;
            }
            Vec::new()
        }
    };
    let now = a.started;
    release(store, p, a, now, None);
    Some((Decision::CircuitOpen, reply(&cb.response, extra)))
}

/// Envoy router headers for a forwarded request: retries within the budget, timeouts.
fn router_headers(p: &PolicyPlan, retriable: bool, a: &Admitted) -> Vec<(&'static str, HeaderValue)> {
    let fixed = |v: &Arc<str>| HeaderValue::Fixed(v.clone());
    let mut h = Vec::new();
    if let (true, Some(res)) = (retriable, a.reservation) {
        let headers = &p.headers;
        h.push(("x-envoy-retry-on", fixed(&headers.retry_on)));
        h.push(("x-envoy-max-retries", HeaderValue::Computed(text::u64_text(u64::from(res.granted)))));
        if let Some(codes) = &headers.retriable_status_codes {
            h.push(("x-envoy-retriable-status-codes", fixed(codes)));
        }
        if let Some(ms) = &headers.per_try_timeout_ms {
            h.push(("x-envoy-upstream-rq-per-try-timeout-ms", fixed(ms)));
        }
    }
    if let Some(ms) = &p.headers.timeout_ms {
        h.push(("x-envoy-upstream-rq-timeout-ms", fixed(ms)));
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
        extra.push(("x-breakwater-decision".to_string(), Counter::Fallback.as_str().to_string()));
    }
    Some(reply(&fb.response, extra))
}

/// Settles a request when its stream ends, whatever the end: releases its concurrency slot,
/// records the breaker outcome, returns unused retries. `attempts` is how many upstream attempts
/// Envoy made: the `x-envoy-attempt-count` response header when the document trusts it (see
/// [`Admitted::attempts_from_header`]), else the `upstream.request_attempt_count` property (0 or
/// None when no upstream request was made).
pub fn finish<S: SharedStore + ?Sized>(
    plan: &Plan,
    store: &S,
    a: &mut Admitted,
    exchange: &Exchange,
    attempts: Option<u32>,
    now: Nanos,
) {
    if leave_line(plan, store, a, now) {
        return;
    }
    // The upstream's latency: from when the request went on to its response headers. Read before
    // the delay is over: a request answered while an injected delay held it (a local reply of
    // Envoy's) never reached the upstream and has none.
    let latency = a.answered.filter(|_| a.holding.is_none()).and_then(|at| at.checked_sub(a.started));
    a.events.extend(latency.map(|l| Event::UpstreamLatency(l / 1_000_000)));
    let sample = latency.and_then(|l| sample(plan.policies.get(a.policy)?, a, l));
    delay_over(plan, store, a, now);
    let injected = a.injected.take();
    let exchange = injected.as_ref().unwrap_or(exchange);
    let Some(p) = plan.policies.get(a.policy) else { return };
    release(store, p, a, now, sample);
    let retried = attempts.unwrap_or(0).saturating_sub(1);
    if retried > 0 {
        a.events.push(Event::Retried(retried));
    }
    let release_slot = std::mem::take(&mut a.record_slot);
    let (epoch, width) = (a.slot_epoch, p.lease_width);
    // A client abort before any response says nothing about the upstream.
    let ticket = a.ticket.take().filter(|_| exchange.status.is_some());
    let breaker = p.breaker.as_ref().zip(p.policy.circuit_breaker.as_ref()).zip(ticket);
    let settle = p.budget.as_ref().zip(a.reservation.take());
    if !release_slot && breaker.is_none() && settle.is_none() {
        return;
    }
    let failed = breaker.is_some_and(|((_, cb), _)| exchange.is_any(&cb.failure_on));
    let duration = now.saturating_sub(a.started);
    let result = record::update(store, &p.state.record, |old, new| {
        let (mut in_flight, mut transition) = (None, None);
        if release_slot {
            let (r, b) = concurrency::release(old[record::CONCURRENCY], epoch, now, width, sample);
            (new[record::CONCURRENCY], in_flight) = (b, Some(r));
        }
        if let Some(((cfg, _), ticket)) = breaker {
            let ((t, _), b) = cfg.record_bytes(old[record::BREAKER], now, ticket, failed, duration);
            (new[record::BREAKER], transition) = (b, t);
        }
        if let Some((budget, reservation)) = settle {
            new[record::BUDGET] = budget.settle_bytes(old[record::BUDGET], now, reservation, retried).1;
        }
        (in_flight, transition)
    });
    match result {
        Ok((released, transition)) => {
            if let Some(r) = released {
                a.events.push(Event::InFlight(r.in_flight));
                a.events.extend(r.reading.map(Event::Adaptive));
            }
            a.events.extend(transition.map(Event::Breaker));
        }
        Err(_) => a.events.push(Event::StateUnavailable),
    }
}

/// A request that ends while it waits in a queue (its client went away) leaves the line; it
/// holds nothing else. Whether it was waiting.
fn leave_line<S: SharedStore + ?Sized>(plan: &Plan, store: &S, a: &mut Admitted, now: Nanos) -> bool {
    let Some(w) = a.waiting.take() else { return false };
    a.events.push(Event::QueueAbandoned);
    let Some(p) = plan.policies.get(a.policy) else { return true };
    let width = p.lease_width;
    let leave = |s: Option<&[u8]>| concurrency::leave(s, w.place.ticket, now, width);
    let result = match &w.at {
        Some(at) => KeyTable::update_at(store, at, leave).map(|n| n.unwrap_or(0)),
        None => record::update(store, &p.state.record, |old, new| {
            let (n, b) = leave(old[record::CONCURRENCY]);
            new[record::CONCURRENCY] = b;
            n
        }),
    };
    match result {
        Ok(n) => a.events.push(Event::QueueLength(n)),
        Err(_) => a.events.push(Event::StateUnavailable),
    }
    true
}

/// What a request's end, with its upstream `latency`, tells its adaptive concurrency limit (None
/// under a fixed limit). The slot was taken at `started`, when the request went on.
fn sample(
    p: &PolicyPlan,
    a: &Admitted,
    latency: Nanos,
) -> Option<(crate::engine::adaptive::Gradient, concurrency::Sample)> {
    let concurrency::Limit::Adaptive(g) = concurrency_limit(p.policy.concurrency_limit.as_ref()?) else {
        return None;
    };
    Some((g, concurrency::Sample { latency, admitted_at: a.admitted_at, admitted: a.started }))
}

/// Gives the keyed concurrency slot back, once (with an adaptive limit's `sample`).
fn release<S: SharedStore + ?Sized>(
    store: &S,
    p: &PolicyPlan,
    a: &mut Admitted,
    now: Nanos,
    sample: Option<(crate::engine::adaptive::Gradient, concurrency::Sample)>,
) {
    if let Some(slot) = a.slot.take() {
        let (epoch, width) = (a.slot_epoch, p.lease_width);
        match KeyTable::update_at(store, &slot, |s| concurrency::release(s, epoch, now, width, sample)) {
            Ok(Some(r)) => {
                a.events.push(Event::InFlight(r.in_flight));
                a.events.extend(r.reading.map(Event::Adaptive));
            }
            Ok(None) => {}
            Err(StoreError::CasMismatch | StoreError::Contended | StoreError::Unavailable(_)) => {
                a.events.push(Event::StateUnavailable)
            }
        }
    }
}

/// Requests waiting in a policy's queue now, when its line is in the policy's record (an unkeyed
/// limit with a queue): for the queue-length gauge, which workers write as they change the line
/// (a late write from another worker can leave it stale; this reads the line itself).
pub fn queue_length<S: SharedStore + ?Sized>(p: &PolicyPlan, store: &S, now: Nanos) -> Option<u32> {
    p.policy.concurrency_limit.as_ref()?.queue.as_ref()?;
    if p.state.concurrency.is_some() {
        return None;
    }
    let bytes = store.get(&p.state.record).ok()?.map(|(b, _)| b);
    let sections = record::split(bytes.as_deref());
    Some(concurrency::waiting(sections[record::CONCURRENCY], now, p.lease_width))
}

/// The breaker phase of a policy as stored now (for the breaker-state gauge and the admin).
pub fn breaker_phase<S: SharedStore + ?Sized>(p: &PolicyPlan, store: &S) -> Option<Phase> {
    let cfg = p.breaker.as_ref()?;
    let bytes = store.get(&p.state.record).ok()??.0;
    cfg.decode(record::split(Some(&bytes))[record::BREAKER]?).map(|s| s.phase())
}
