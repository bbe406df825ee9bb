//! # breakwater-filter
//!
//! The proxy-wasm HTTP filter that enforces a breakwater policy document inside Envoy.
//!
//! Thin glue by design: what to decide lives in `breakwater_policy::enforce`, which knows nothing
//! of proxy-wasm. This crate reads the host (headers, properties, shared data, time) through
//! [`host`], calls `admit` / `fallback` / `finish` at the matching points of the stream, acts on
//! the verdicts (local replies, router headers) and counts the events as Envoy metrics.
//!
//! Stream points (docs/envoy-facts.md says why each is where it is):
//! - request headers: admit; reject with a local reply, or set the router's retry/timeout headers;
//! - response headers: remember the upstream outcome when a breaker or a fallback needs it (and
//!   the attempt count, from `x-envoy-attempt-count` when the document trusts it); reply with the
//!   fallback if it applies (the only point where a reply can still replace the upstream's);
//! - on_log (every stream end, aborts and resets included): release, record, settle.

// No index that can be out of bounds, no arithmetic that can overflow or divide by zero: a panic
// in the filter turns every later request on that Envoy worker into a 503. Each exception says
// why it cannot happen (`#[expect(..., reason = ...)]`). Tests are exempt.
#![cfg_attr(not(test), warn(clippy::indexing_slicing, clippy::arithmetic_side_effects))]

pub mod alloc;
mod host;
mod metrics;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use breakwater_policy::enforce::{self, Admitted, Ask, Exchange, Step, Verdict};
use breakwater_policy::global::{Answer, Renewal};
use breakwater_policy::metrics::BreakerState;
use breakwater_policy::plan::{Plan, SimpleRequest};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::host::HostStore;
use crate::metrics::Metrics;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // A panic must never pass silently: Envoy turns it into 503s for the worker.
    std::panic::set_hook(Box::new(|info| {
        host::log(LogLevel::Critical, &format!("breakwater: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(Root { id, ..Root::default() }) });
}}

/// What every request of one configuration shares.
struct Config {
    plan: Plan,
    metrics: Metrics,
}

impl Drop for Config {
    /// A configuration is built with the free lists bypassed (`Root::on_configure`), and is given
    /// back the same way, whenever its last holder lets go (the old root context, or the last
    /// stream that began under it). Freed into the free lists instead, every reload left the old
    /// plan's small blocks there while the next plan again came from the system allocator: the
    /// filter's memory grew by about 2 KiB per reload (found by `./dev soak`; tested in
    /// `tests/tests/reload.rs`).
    fn drop(&mut self) {
        let (plan, metrics) = (std::mem::take(&mut self.plan), std::mem::take(&mut self.metrics));
        alloc::bypassing_pools(move || drop((plan, metrics)));
    }
}

#[derive(Default)]
struct Root {
    /// This root context's id (calls made from its tick act on it again afterwards).
    id: u32,
    config: Option<Rc<Config>>,
    /// Requests held on this worker, oldest first: by injected delays (the tick lets each go when
    /// it is due) or waiting in a queue (the tick has each look at its line).
    holds: Holds,
    /// Policies whose queue changed on this worker since the last tick: the tick reads their
    /// lines' length again for the gauge.
    refresh: Lines,
    /// Lease renewals the worker's requests asked for; sent on the next tick by this context,
    /// which (unlike a request's) lives until the answer comes.
    renewals: Renewals,
    /// Renewals sent, by call token.
    sent: HashMap<u32, (Rc<Config>, Renewal)>,
}

thread_local! {
    /// The configuration this VM loaded last. A reload over ECDS gives the new configuration to a
    /// new root context; the old one lives on for the streams that began under it, and has the
    /// requests of those still waiting in a queue served under the new limit.
    static NEWEST: RefCell<Option<Rc<Config>>> = const { RefCell::new(None) };
}

/// Lease renewals waiting for the root context's next tick, with the configuration they belong to.
type Renewals = Rc<RefCell<Vec<(Rc<Config>, Renewal)>>>;

/// Policies (of a configuration, by index) whose queue changed.
type Lines = Rc<RefCell<Vec<(Rc<Config>, usize)>>>;

/// A request held by an injected delay or waiting in a queue: the stream, when it may go, and
/// its decision (shared with the stream's context, which takes it back once it is decided and
/// not delayed, or when the stream ends).
struct Hold {
    context: u32,
    /// When the delay began: a wall clock that steps back before it lets the request go at once.
    since: u64,
    /// When the delay is over; when a waiting request's deadline comes.
    until: u64,
    config: Rc<Config>,
    held: std::rc::Weak<RefCell<Held>>,
}

/// A held request's decision, and whether it may go on (its delay is over, its wait decided).
struct Held {
    admitted: Option<Admitted>,
    over: bool,
}

type Holds = Rc<RefCell<Vec<Hold>>>;

/// How often the root context lets delayed requests go: their delays end at the first tick after
/// they are due (Envoy fires a 1 ms tick a few ms late on this machine: a 20 ms delay ended
/// 0–9 ms late as a client saw it; docs/envoy-facts.md).
const HOLD_TICK: std::time::Duration = std::time::Duration::from_millis(1);

/// How often the root context sends the renewals its requests asked for (leased global limits
/// only; a lease is renewed when a quarter is left, so this delay is covered).
const RENEWAL_TICK: std::time::Duration = std::time::Duration::from_millis(5);

impl Context for Root {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let Some((config, renewal)) = self.sent.remove(&token) else { return };
        let message = if status == 0 { host::grpc_response(size) } else { None };
        let answer = Answer::read(status, message.as_deref());
        let events = enforce::renewed(&config.plan, &HostStore, &renewal, answer, host::now());
        config.metrics.count(renewal.policy, events.into_iter());
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        // Loading allocates much and keeps little: straight from the system allocator, whose
        // freed blocks serve any size (see `alloc`); the old plan goes back to it too.
        alloc::bypassing_pools(|| self.configure())
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            id: context_id,
            held: None,
            holds: self.holds.clone(),
            refresh: self.refresh.clone(),
            config: self.config.clone(),
            admitted: None,
            exchange: None,
            attempts: None,
            asking: None,
            renewals: self.renewals.clone(),
        }))
    }

    fn on_tick(&mut self) {
        self.release_holds();
        let queued = std::mem::take(&mut *self.renewals.borrow_mut());
        for (config, renewal) in queued {
            match host::dispatch_grpc(&renewal.call) {
                Ok(token) => {
                    self.sent.insert(token, (config, renewal));
                }
                Err(_) => {
                    let events = enforce::renewed(
                        &config.plan,
                        &HostStore,
                        &renewal,
                        Answer::Unavailable,
                        host::now(),
                    );
                    config.metrics.count(renewal.policy, events.into_iter());
                }
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Root {
    /// Goes through the requests held on this worker: a delay that is due lets its request go
    /// on (or get its reply); a request waiting in a queue looks at its line, oldest first, and
    /// one that must still wait spares the younger ones of its line the look. The held decision is
    /// updated and given back before Envoy is called: resuming may run the stream's own callbacks.
    fn release_holds(&mut self) {
        let refresh = std::mem::take(&mut *self.refresh.borrow_mut());
        if self.holds.borrow().is_empty() && refresh.is_empty() {
            return;
        }
        let now = host::now();
        let holds = std::mem::take(&mut *self.holds.borrow_mut());
        let mut kept = Vec::with_capacity(holds.len());
        // Waiters that must wait on: the younger ones of their line need not look.
        let mut blocked: Vec<(Rc<Config>, Rc<RefCell<Held>>)> = Vec::new();
        let mut released: Vec<(Rc<Config>, usize)> = Vec::new();
        let mut lines: Vec<(Rc<Config>, usize)> = Vec::new();
        // Waiters from before a reload are served under the configuration in force now (the
        // reload made a new root context; this one's holds stay here).
        let newest = NEWEST.with_borrow(Clone::clone).or_else(|| self.config.clone());
        for mut hold in holds {
            // Gone: the stream ended first, and its end settled it.
            let Some(cell) = hold.held.upgrade() else { continue };
            let reply = {
                let Ok(mut held) = cell.try_borrow_mut() else {
                    kept.push(hold);
                    continue;
                };
                let Some(admitted) = held.admitted.as_mut() else { continue };
                let plan = &hold.config.plan;
                if admitted.verdict == Verdict::Wait {
                    let behind = now < hold.until
                        && blocked.iter().any(|(config, other)| {
                            Rc::ptr_eq(config, &hold.config)
                                && other
                                    .try_borrow()
                                    .is_ok_and(|o| o.admitted.as_ref().is_some_and(|o| admitted.behind(o)))
                        });
                    if behind {
                        kept.push(hold);
                        continue;
                    }
                    let context = hold.context;
                    let newest = newest.as_ref().map_or(plan, |c| &c.plan);
                    let decided = enforce::poll(plan, newest, &HostStore, admitted, now, || {
                        let _ = host::set_effective_context(context);
                        read_request(plan)
                    });
                    if admitted.events.iter().any(|e| matches!(e, enforce::Event::QueueLength(_))) {
                        lines.push((hold.config.clone(), admitted.policy));
                    }
                    hold.config.metrics.count(admitted.policy, admitted.events.drain(..));
                    if !decided {
                        drop(held);
                        blocked.push((hold.config.clone(), cell.clone()));
                        kept.push(hold);
                        continue;
                    }
                    // Its turn came (or its time ran out): the router's headers now.
                    if host::set_effective_context(hold.context).is_err() {
                        continue;
                    }
                    if let Verdict::Forward { request_headers } = &admitted.verdict {
                        for (name, value) in request_headers {
                            host::set_request_header(name, value);
                        }
                    }
                    if let Some(delay) = admitted.delay {
                        // An injected delay follows the wait.
                        (hold.since, hold.until) = (now, now.saturating_add(delay));
                        kept.push(hold);
                        continue;
                    }
                } else {
                    // A delay: due, or the wall clock stepped back before it began.
                    if hold.until > now && now >= hold.since {
                        kept.push(hold);
                        continue;
                    }
                    enforce::delay_over(plan, &HostStore, admitted, now);
                    hold.config.metrics.count(admitted.policy, admitted.events.drain(..));
                    released.push((hold.config.clone(), admitted.policy));
                }
                let reply = match &admitted.verdict {
                    Verdict::Reject(reply) => Some(reply.clone()),
                    Verdict::Forward { .. } | Verdict::Wait => None,
                };
                held.over = true;
                reply
            };
            if host::set_effective_context(hold.context).is_err() {
                continue;
            }
            match reply {
                Some(r) => answer(&r),
                None => host::resume_request(),
            }
        }
        {
            // Held ones first, then any held meanwhile: oldest first.
            let mut holds = self.holds.borrow_mut();
            let meanwhile = std::mem::replace(&mut *holds, kept);
            holds.extend(meanwhile);
        }
        let _ = host::set_effective_context(self.id);
        // Workers record the gauges as they change the counts, so a late write from another
        // worker can leave one stale; the counts themselves are exact: read them again (a
        // line's now and on the next tick, after the changes other workers make meanwhile).
        released.dedup_by(|a, b| Rc::ptr_eq(&a.0, &b.0) && a.1 == b.1);
        for (config, policy) in released {
            if let Some(fp) = config.plan.policies.get(policy).and_then(|p| p.fault.as_ref())
                && let Ok(n) = fp.active(&HostStore, now)
            {
                config.metrics.count(policy, std::iter::once(enforce::Event::FaultActive(n)));
            }
        }
        let mut again = lines.clone();
        lines.extend(refresh);
        lines.dedup_by(|a, b| Rc::ptr_eq(&a.0, &b.0) && a.1 == b.1);
        for (config, policy) in &lines {
            if let Some(n) =
                config.plan.policies.get(*policy).and_then(|p| enforce::queue_length(p, &HostStore, now))
            {
                config.metrics.count(*policy, std::iter::once(enforce::Event::QueueLength(n)));
            }
        }
        again.dedup_by(|a, b| Rc::ptr_eq(&a.0, &b.0) && a.1 == b.1);
        self.refresh.borrow_mut().extend(again);
    }

    fn configure(&mut self) -> bool {
        let started = host::now();
        match load_plan(&host::plugin_configuration()) {
            Ok(plan) => {
                let parsed = host::now();
                let metrics = Metrics::define(&plan);
                // The breaker gauges say what the shared state holds now: after a reload that
                // changed a breaker's window its state starts afresh (closed) without a transition.
                for (i, p) in plan.policies.iter().enumerate() {
                    if p.breaker.is_some() {
                        let phase = enforce::breaker_phase(p, &HostStore);
                        metrics.breaker_state(i, phase.map_or(BreakerState::Closed, |ph| ph.state()));
                    }
                }
                let defined = host::now();
                // Operators (and bench/run.py) read the cost of a configuration from this line.
                let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e6;
                host::log(
                    LogLevel::Info,
                    &format!(
                        "breakwater: loaded {} policies (parsed in {:.3} ms, metrics defined in {:.3} ms)",
                        plan.policies.len(),
                        ms(started, parsed),
                        ms(parsed, defined)
                    ),
                );
                let leased = plan.policies.iter().any(|p| p.global.as_ref().is_some_and(|g| g.leased()));
                let delays = plan.policies.iter().any(|p| {
                    p.fault.as_ref().is_some_and(|f| f.delays())
                        || p.policy.concurrency_limit.as_ref().is_some_and(|c| c.queue.is_some())
                });
                let _ = proxy_wasm::hostcalls::set_tick_period(match (delays, leased) {
                    (true, _) => HOLD_TICK,
                    (false, true) => RENEWAL_TICK,
                    (false, false) => std::time::Duration::ZERO,
                });
                let config = Rc::new(Config { plan, metrics });
                NEWEST.set(Some(config.clone()));
                self.config = Some(config);
                metrics::record_memory();
                true
            }
            Err(messages) => {
                for m in messages {
                    host::log(LogLevel::Error, &format!("breakwater: configuration rejected: {m}"));
                }
                false
            }
        }
    }
}

/// Loads the plugin configuration: the same reading and errors as `breakwater validate`, without
/// positions and warnings (see `breakwater_policy::load_config`).
pub fn load_plan(bytes: &[u8]) -> Result<Plan, Vec<String>> {
    let document = breakwater_policy::load_config(bytes)
        .map_err(|diags| diags.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    Plan::new(document).map_err(|e| vec![e])
}

struct Http {
    /// This stream's context id (the root names it to resume the stream after a delay).
    id: u32,
    /// Held by an injected delay or waiting in a queue: the decision lives here meanwhile (the
    /// root's tick reads it).
    held: Option<Rc<RefCell<Held>>>,
    holds: Holds,
    refresh: Lines,
    config: Option<Rc<Config>>,
    admitted: Option<Admitted>,
    /// The upstream outcome as seen at response headers (before any fallback replaced it).
    exchange: Option<Exchange>,
    /// The attempt count from the response header, when the document trusts it.
    attempts: Option<u32>,
    /// Waiting for the rate-limit service: the question, and the call's token.
    asking: Option<(Ask, u32)>,
    /// The root context's queue of lease renewals.
    renewals: Renewals,
}

impl Context for Http {
    /// The rate-limit service's answer, an error status, or Envoy's timeout of the call
    /// (`DEADLINE_EXCEEDED`): the request goes on with what it says.
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let Some(config) = self.config.clone() else { return };
        let Some((ask, asked)) = self.asking.take() else { return };
        if asked != token {
            self.asking = Some((ask, asked));
            return;
        }
        let message = if status == 0 { host::grpc_response(size) } else { None };
        let answer = Answer::read(status, message.as_deref());
        let request = read_request(&config.plan);
        let admitted = enforce::resume(&config.plan, &HostStore, &request, ask, answer, host::now());
        if let Action::Continue = self.act(&config, admitted) {
            host::resume_request();
        }
    }
}

/// Answers a rejected request: its local reply, or a reset of its stream.
fn answer(reply: &enforce::Reply) {
    if reply.reset {
        host::reset_request();
    } else if let Err(status) = host::send_reply(reply.status, &reply.headers, &reply.body) {
        host::log(LogLevel::Debug, &format!("breakwater: local reply not sent: {status:?}"));
    }
}

/// The request as the matcher sees it, read from the host once: `:path`, the other pseudo-headers
/// and the client address only when the plan uses them, and the headers the plan names.
fn read_request(plan: &Plan) -> SimpleRequest<&str> {
    let pseudo = |name| host::request_header(name).unwrap_or_default();
    SimpleRequest {
        authority: if plan.needs_host { pseudo(":authority") } else { String::new() },
        path: pseudo(":path"),
        method: if plan.needs_method { pseudo(":method") } else { String::new() },
        headers: plan
            .header_names
            .iter()
            .filter_map(|n| host::request_header(n).map(|v| (n.as_str(), v)))
            .collect(),
        client_ip: if plan.needs_client_ip { host::client_ip() } else { None },
    }
}

/// The exchange for a response status; flags and details are read only when the status does
/// not decide the outcome alone (property reads are the dearest host calls).
fn outcome(status: Option<u16>) -> Exchange {
    if Exchange::status_decides(status) {
        return Exchange { status, flags: 0, details: String::new() };
    }
    Exchange {
        status,
        flags: host::property_u64(&["response", "flags"]).unwrap_or(0),
        details: host::property_string(&["response", "code_details"]).unwrap_or_default(),
    }
}

impl Http {
    /// Whether the request waits: for the rate-limit service, in a queue, or out an injected delay
    /// (its body and trailers wait too: going on would send it upstream early).
    fn waiting(&self) -> bool {
        self.asking.is_some() || self.held.as_ref().is_some_and(|h| !h.borrow().over)
    }

    /// Takes a held request's decision back (its delay is over, or its stream ends; `on_log`'s
    /// `finish` then ends a delay still held).
    fn take_held(&mut self) {
        let Some(cell) = &self.held else { return };
        let Ok(mut held) = cell.try_borrow_mut() else { return };
        self.admitted = held.admitted.take().or(self.admitted.take());
        drop(held);
        self.held = None;
    }

    /// Acts on a decision: a local reply (the stream then stays paused), or the router's headers
    /// and on.
    fn act(&mut self, config: &Rc<Config>, mut admitted: Admitted) -> Action {
        self.count(config, &mut admitted);
        if let Some(renewal) = admitted.renewal.take() {
            self.renewals.borrow_mut().push((config.clone(), renewal));
        }
        if let Some(deadline) = admitted.waits_until() {
            // In a queue: the root's tick has it look at its line.
            let held = Rc::new(RefCell::new(Held { admitted: Some(admitted), over: false }));
            self.holds.borrow_mut().push(Hold {
                context: self.id,
                since: host::now(),
                until: deadline,
                config: config.clone(),
                held: Rc::downgrade(&held),
            });
            self.held = Some(held);
            return Action::Pause;
        }
        if let Some(delay) = admitted.delay {
            // The router's headers now; the reply, or going on, when the root lets it go.
            if let Verdict::Forward { request_headers } = &admitted.verdict {
                for (name, value) in request_headers {
                    host::set_request_header(name, value);
                }
            }
            let held = Rc::new(RefCell::new(Held { admitted: Some(admitted), over: false }));
            let now = host::now();
            self.holds.borrow_mut().push(Hold {
                context: self.id,
                since: now,
                until: now.saturating_add(delay),
                config: config.clone(),
                held: Rc::downgrade(&held),
            });
            self.held = Some(held);
            return Action::Pause;
        }
        let action = match &admitted.verdict {
            Verdict::Reject(reply) => {
                answer(reply);
                Action::Pause
            }
            Verdict::Forward { request_headers } => {
                for (name, value) in request_headers {
                    host::set_request_header(name, value);
                }
                Action::Continue
            }
            Verdict::Wait => Action::Pause,
        };
        self.admitted = Some(admitted);
        action
    }

    /// Counts a decision's events; a change to a queue has the root read the line again.
    fn count(&self, config: &Rc<Config>, admitted: &mut Admitted) {
        if admitted.events.iter().any(|e| matches!(e, enforce::Event::QueueLength(_))) {
            self.refresh.borrow_mut().push((config.clone(), admitted.policy));
        }
        config.metrics.count(admitted.policy, admitted.events.drain(..));
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        failpoint_trap();
        let Some(config) = self.config.clone() else { return Action::Continue };
        let request = read_request(&config.plan);
        let now = host::now();
        match enforce::admit(&config.plan, &HostStore, &request, now) {
            None => Action::Continue,
            Some(Step::Decided(admitted)) => self.act(&config, admitted),
            Some(Step::Ask(mut ask)) => {
                config.metrics.count(ask.policy(), ask.events());
                match host::dispatch_grpc(&ask.call) {
                    Ok(token) => {
                        self.asking = Some((ask, token));
                        Action::Pause
                    }
                    // No call was made (an unknown cluster): as if the service did not answer.
                    Err(status) => {
                        host::log(
                            LogLevel::Debug,
                            &format!("breakwater: rate-limit call not made: {status:?}"),
                        );
                        let admitted = enforce::resume(
                            &config.plan,
                            &HostStore,
                            &request,
                            ask,
                            Answer::Unavailable,
                            now,
                        );
                        self.act(&config, admitted)
                    }
                }
            }
        }
    }

    /// While the rate-limit service is asked, the body waits too (Envoy buffers it): continuing
    /// it would send the request on before the answer.
    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        if self.waiting() { Action::Pause } else { Action::Continue }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.waiting() { Action::Pause } else { Action::Continue }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.take_held();
        let (Some(config), Some(admitted)) = (self.config.clone(), self.admitted.as_mut()) else {
            return Action::Continue;
        };
        if admitted.times_answer() {
            admitted.answered(host::now());
        }
        // Read before a fallback reply replaces the response (whose headers pass here again).
        if self.attempts.is_none() && admitted.reads_attempt_count_header(&config.plan) {
            self.attempts = host::response_header(enforce::ATTEMPT_COUNT_HEADER)
                .and_then(|v| admitted.attempts_from_header(&v));
        }
        if admitted.needs_outcome(&config.plan) {
            let exchange = outcome(host::response_header(":status").and_then(|s| s.parse().ok()));
            let fallback = enforce::fallback(&config.plan, admitted, &exchange);
            config.metrics.count(admitted.policy, admitted.events.drain(..));
            self.exchange = Some(exchange);
            if let Some(reply) = fallback {
                let _ = host::send_reply(reply.status, &reply.headers, &reply.body);
                return Action::Pause;
            }
        }
        for (name, value) in &admitted.response_headers {
            host::add_response_header(name, value);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        metrics::record_memory();
        self.take_held();
        let (Some(config), Some(mut admitted)) = (self.config.clone(), self.admitted.take()) else { return };
        // Without response headers (a client abort, a reset), the status from the property, and
        // only when the outcome matters.
        let exchange = match self.exchange.take() {
            Some(exchange) => exchange,
            None if admitted.needs_outcome(&config.plan) => {
                outcome(host::property_u64(&["response", "code"]).and_then(|c| u16::try_from(c).ok()))
            }
            None => Exchange::default(),
        };
        // One response-header read when the document trusts the header; the property otherwise
        // (and when the header was missing or not one the router could have written).
        let attempts = if admitted.may_have_retried() {
            self.attempts.take().or_else(|| {
                host::property_u64(&["upstream", "request_attempt_count"]).and_then(|n| u32::try_from(n).ok())
            })
        } else {
            None
        };
        enforce::finish(&config.plan, &HostStore, &mut admitted, &exchange, attempts, host::now());
        self.count(&config, &mut admitted);
    }
}

/// A VM crash on demand, for the fault tests only (tests/tests/faults.rs): with the `failpoints`
/// feature (never in the shipped build), a request carrying `x-breakwater-failpoint: trap` makes
/// the VM trap as a bug would, so Envoy's `failure_policy` can be tested on the real filter.
#[cfg(all(feature = "failpoints", target_arch = "wasm32"))]
fn failpoint_trap() {
    if host::request_header("x-breakwater-failpoint").as_deref() == Some("trap") {
        core::arch::wasm32::unreachable();
    }
}

#[cfg(not(all(feature = "failpoints", target_arch = "wasm32")))]
fn failpoint_trap() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_configuration_is_rejected_with_the_cli_messages() {
        let errors =
            load_plan(b"version: 1\npolicies:\n  - name: a\n    retry: { max_retries: 20 }\n").unwrap_err();
        assert_eq!(errors, vec!["error: policies[0].retry.max_retries: must be between 0 and 10, found 20"]);
        assert_eq!(load_plan(b"{\"version\":1,\"policies\":[]}").unwrap().policies.len(), 0);
    }
}
