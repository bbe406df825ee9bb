//! Fault injection (`fault`): which requests are aborted or delayed, and how many delays are held
//! at once, for all of an Envoy's workers.
//!
//! **Exact shares.** Each fault kind counts its candidates (every request the other blocks let
//! through, or with `headers: true` every such request carrying the kind's header) in the
//! policy's fault record `bw/<policy>/f`, shared by the workers. The n-th candidate is chosen when
//! `round((n + 1) · p)` exceeds `round(n · p)`, so that after N candidates exactly `round(N · p)`
//! were chosen: never more than half a request from `N · p`, on one Envoy. A fleet of E Envoys
//! counts each on its own: within E/2 of the fleet's share.
//!
//! Aborts and delays count separately and at different phases (a half and a quarter of a
//! request): equal shares choose different requests, and a request gets both only where the two
//! patterns meet.
//!
//! **Active delays.** The record also holds the delays held now, as leases
//! ([`crate::engine::concurrency`]: a hold its release never reaches, because the VM trapped or
//! was replaced, or shared data failed, expires after the longest delay plus a minute); a delay
//! that would go beyond `max_active` is skipped (the request goes on at once). A delay ends when
//! its request goes on, or when its stream ends first (a client that went away):
//! [`FaultPlan::end_delay`] is called exactly once either way.

use crate::engine::store::{SharedStore, StoreError, update};
use crate::engine::{NANOS_PER_SEC, Nanos, concurrency};
use crate::model::{Fault, Percent};
use crate::request::RequestView;

/// The request header that asks for an abort (with `headers: true`): the reply's status.
pub const ABORT_HEADER: &str = "x-breakwater-fault-abort";
/// The request header that asks for a delay (with `headers: true`): milliseconds.
pub const DELAY_HEADER: &str = "x-breakwater-fault-delay";

const MILLION: u64 = Percent::MILLION as u64;
const NANOS_PER_MS: u64 = 1_000_000;

/// A policy's fault block, compiled.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// `bw/<policy>/f`: candidates seen per kind, delays held.
    record: String,
    abort: Option<u32>,
    /// Share, shortest and longest delay (ns).
    delay: Option<(u32, Nanos, Nanos)>,
    headers: bool,
    max_active: u32,
    /// The width of the delays' lease buckets (the longest delay plus a minute).
    width: Nanos,
}

/// What the fault block does to one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    /// Abort, with this status (the block's, or the header's).
    pub abort: Option<u16>,
    /// Hold the request this long first; it holds one of `max_active` until [`FaultPlan::end_delay`].
    pub delay: Option<Nanos>,
    /// A delay was chosen but `max_active` delays were held already.
    pub skipped: bool,
    /// Delays held now, when this decision changed their number.
    pub active: Option<u32>,
    /// The lease bucket the delay is held in (for [`FaultPlan::end_delay`]).
    pub epoch: u64,
}

/// The fault record: candidates of each kind (two u64), then the delays held, as concurrency
/// leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    aborts: u64,
    delays: u64,
    holds: Option<Vec<u8>>,
}

const COUNTS_BYTES: usize = 16;

impl State {
    fn decode(bytes: Option<&[u8]>) -> State {
        let Some(b) = bytes.filter(|b| b.len() >= COUNTS_BYTES) else { return State::default() };
        let word = |from: usize| -> u64 {
            let mut w = [0u8; 8];
            if let Some(s) = b.get(from..from.saturating_add(8)) {
                w.copy_from_slice(s);
            }
            u64::from_le_bytes(w)
        };
        let holds = b.get(COUNTS_BYTES..).filter(|h| !h.is_empty()).map(<[u8]>::to_vec);
        State { aborts: word(0), delays: word(8), holds }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(COUNTS_BYTES.saturating_add(24));
        out.extend_from_slice(&self.aborts.to_le_bytes());
        out.extend_from_slice(&self.delays.to_le_bytes());
        out.extend_from_slice(self.holds.as_deref().unwrap_or_default());
        out
    }
}

/// The phase of aborts (half a request: the count is `round(n · p)`) and of delays (a quarter).
const ABORT_PHASE: u64 = MILLION / 2;
const DELAY_PHASE: u64 = MILLION / 4;

/// Whether the n-th candidate (from 0) is chosen at a share of `ppm` parts per million and a
/// phase: the count of chosen candidates, `floor(n · p + phase)`, grows at it.
pub fn chosen(n: u64, ppm: u32, phase: u64) -> bool {
    chosen_of(n.saturating_add(1), ppm, phase) > chosen_of(n, ppm, phase)
}

/// How many of the first `n` candidates [`chosen`] picks: `floor(n · p + phase)`, which is
/// `round(n · p)` at a phase of half a million.
pub fn chosen_of(n: u64, ppm: u32, phase: u64) -> u64 {
    let total = u128::from(n).saturating_mul(u128::from(ppm)).saturating_add(u128::from(phase));
    u64::try_from(total.checked_div(u128::from(MILLION)).unwrap_or(0)).unwrap_or(u64::MAX)
}

/// A delay in [min, max], spread by the candidate's number (no random source needed: the numbers
/// of chosen candidates are spread already).
fn delay_for(n: u64, min: Nanos, max: Nanos) -> Nanos {
    let span = max.saturating_sub(min);
    if span == 0 {
        return min;
    }
    // SplitMix64's finaliser: consecutive numbers land far apart.
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    min.saturating_add(z.checked_rem(span.saturating_add(1)).unwrap_or(0))
}

impl FaultPlan {
    pub fn new(policy: &str, f: &Fault) -> FaultPlan {
        let longest = f.delay.as_ref().map_or(0, |d| d.max.unwrap_or(d.duration).as_nanos());
        FaultPlan {
            width: concurrency::lease_width(longest.saturating_add(60 * NANOS_PER_SEC)),
            record: ["bw/", policy, "/f"].concat(),
            abort: f.abort.as_ref().map(|a| a.percent.ppm()),
            delay: f.delay.as_ref().map(|d| {
                let min = d.duration.as_nanos();
                (d.percent.ppm(), min, d.max.map_or(min, |m| m.as_nanos()))
            }),
            headers: f.headers,
            max_active: f.max_active,
        }
    }

    /// Whether the block may delay requests (and so has a `fault_active` gauge, and the filter a
    /// timer): a delay at a share above 0, or delays on request.
    pub fn delays(&self) -> bool {
        self.delay.is_some_and(|(ppm, _, _)| ppm > 0 || self.headers)
    }

    /// The request headers this block reads (with `headers: true`).
    pub fn header_names(&self) -> &'static [&'static str] {
        if self.headers { &[ABORT_HEADER, DELAY_HEADER] } else { &[] }
    }

    /// Decides the faults of a request the other blocks let through. `default_status` is the
    /// abort reply's own status; `may_abort` false (a breaker's half-open probe) leaves it out of
    /// the aborts' candidates; `hold` false (shadow mode) chooses delays without holding one of
    /// `max_active`. Err when the record could not be used (then no fault applies).
    #[allow(clippy::too_many_arguments)]
    pub fn decide<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        req: &impl RequestView,
        default_status: u16,
        may_abort: bool,
        hold: bool,
        now: Nanos,
    ) -> Result<Injected, StoreError> {
        // Which kinds this request is a candidate for, and with what.
        let abort = match (self.abort, self.headers) {
            (Some(ppm), false) => Some((ppm, default_status)),
            (Some(ppm), true) => req
                .header(ABORT_HEADER)
                .and_then(|v| v.trim().parse::<u16>().ok())
                .filter(|s| (200..=599).contains(s))
                .map(|s| (ppm, s)),
            (None, _) => None,
        };
        let delay = match (self.delay, self.headers) {
            (Some(d), false) => Some((d, None)),
            (Some((ppm, min, max)), true) => req
                .header(DELAY_HEADER)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|ms| *ms > 0)
                .map(|ms| ((ppm, min, max), Some(ms.saturating_mul(NANOS_PER_MS).min(max)))),
            (None, _) => None,
        };
        let abort = abort.filter(|(ppm, _)| *ppm > 0 && may_abort);
        let delay = delay.filter(|((ppm, _, _), _)| *ppm > 0);
        if abort.is_none() && delay.is_none() {
            return Ok(Injected::default());
        }
        let (max_active, width) = (self.max_active, self.width);
        update(store, &self.record, |old| {
            let mut s = State::decode(old);
            let mut injected = Injected::default();
            if let Some((ppm, status)) = abort {
                if chosen(s.aborts, ppm, ABORT_PHASE) {
                    injected.abort = Some(status);
                }
                s.aborts = s.aborts.wrapping_add(1);
            }
            if let Some(((ppm, min, max), asked)) = delay {
                if chosen(s.delays, ppm, DELAY_PHASE) {
                    let d = asked.unwrap_or_else(|| delay_for(s.delays, min, max));
                    if !hold {
                        injected.delay = Some(d);
                    } else {
                        let (slot, holds) = concurrency::acquire(s.holds.as_deref(), max_active, now, width);
                        if slot.acquired {
                            (injected.delay, injected.active, injected.epoch) =
                                (Some(d), Some(slot.in_flight), slot.epoch);
                        } else {
                            injected.skipped = true;
                        }
                        if holds.is_some() {
                            s.holds = holds;
                        }
                    }
                }
                s.delays = s.delays.wrapping_add(1);
            }
            (injected, Some(s.encode()))
        })
    }

    /// Ends a delay that [`FaultPlan::decide`] began in lease bucket `epoch` (its request went on,
    /// or its stream ended first); the delays still held.
    pub fn end_delay<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        epoch: u64,
        now: Nanos,
    ) -> Result<u32, StoreError> {
        let width = self.width;
        update(store, &self.record, |old| {
            let mut s = State::decode(old);
            let (r, holds) = concurrency::release(s.holds.as_deref(), epoch, now, width, None);
            if holds.is_some() {
                s.holds = holds;
            }
            (r.in_flight, Some(s.encode()))
        })
    }

    /// Delays held now (for the gauge).
    pub fn active<S: SharedStore + ?Sized>(&self, store: &S, now: Nanos) -> Result<u32, StoreError> {
        let bytes = store.get(&self.record)?.map(|(b, _)| b);
        let s = State::decode(bytes.as_deref());
        Ok(concurrency::in_flight(s.holds.as_deref(), now, self.width))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::MemoryStore;
    use crate::model::Duration;
    use crate::request::SimpleRequest;
    use proptest::prelude::*;

    const NOW: Nanos = 1_700_000_000_000_000_000;

    fn plan(yaml: &str) -> FaultPlan {
        let doc = crate::load(&format!("version: 1\npolicies:\n  - name: f\n    fault: {yaml}\n"))
            .unwrap()
            .document;
        FaultPlan::new("f", doc.policies[0].fault.as_ref().unwrap())
    }

    #[test]
    fn five_percent_of_a_thousand_is_fifty_spread_evenly() {
        let p = plan("{ abort: { percent: 5 } }");
        let store = MemoryStore::default();
        let req = SimpleRequest::new("GET", "h", "/");
        let picked: Vec<usize> = (0..1000)
            .filter(|_| p.decide(&store, &req, 503, true, true, NOW).unwrap().abort == Some(503))
            .collect();
        assert_eq!(picked.len(), 50);
        // One in every twenty, the first at the tenth.
        assert_eq!(&picked[..3], [9, 29, 49]);
    }

    proptest! {
        #[test]
        fn the_chosen_count_is_the_rounded_share(ppm in 0u32..=1_000_000, n in 0u64..20_000) {
            for (phase, off) in [(ABORT_PHASE, 0.5), (DELAY_PHASE, 0.75)] {
                let counted = (0..n).filter(|k| chosen(*k, ppm, phase)).count() as u64;
                prop_assert_eq!(counted, chosen_of(n, ppm, phase));
                let exact = n as f64 * f64::from(ppm) / 1e6;
                // floor(x + phase) is within phase below and 1 - phase above x.
                prop_assert!((counted as f64 - exact) <= 1.0 - off + 1e-9 && exact - (counted as f64) <= off + 1e-9);
            }
        }
    }

    #[test]
    fn delays_stay_within_their_range_and_max_active() {
        let p = plan("{ delay: { percent: 100, duration: 100ms, max: 300ms }, max_active: 3 }");
        let store = MemoryStore::default();
        let req = SimpleRequest::new("GET", "h", "/");
        let got: Vec<Injected> =
            (0..5).map(|_| p.decide(&store, &req, 503, true, true, NOW).unwrap()).collect();
        let delays: Vec<Nanos> = got.iter().filter_map(|i| i.delay).collect();
        assert_eq!(delays.len(), 3);
        assert!(delays.iter().all(|d| (100_000_000..=300_000_000).contains(d)), "{delays:?}");
        assert!(got[3].skipped && got[4].skipped);
        assert_eq!(p.active(&store, NOW).unwrap(), 3);
        assert_eq!(p.end_delay(&store, got[0].epoch, NOW).unwrap(), 2);
        assert!(p.decide(&store, &req, 503, true, true, NOW).unwrap().delay.is_some());
        for _ in 0..10 {
            p.end_delay(&store, got[0].epoch, NOW).unwrap();
        }
        assert_eq!(p.active(&store, NOW).unwrap(), 0, "never below zero");
    }

    #[test]
    fn with_headers_only_requests_that_ask_are_candidates() {
        let p = plan("{ abort: { percent: 100 }, delay: { percent: 100, duration: 1s }, headers: true }");
        let store = MemoryStore::default();
        let plain = SimpleRequest::new("GET", "h", "/");
        assert_eq!(p.decide(&store, &plain, 503, true, true, NOW).unwrap(), Injected::default());
        let asks = plain.clone().header(ABORT_HEADER, "418").header(DELAY_HEADER, "5000");
        let got = p.decide(&store, &asks, 503, true, true, NOW).unwrap();
        // The delay is bounded by the block's longest.
        assert_eq!(
            got,
            Injected {
                abort: Some(418),
                delay: Some(Duration::from_millis(1000).as_nanos()),
                skipped: false,
                active: Some(1),
                epoch: got.epoch,
            }
        );
        for bad in ["700", "abc", ""] {
            let r = plain.clone().header(ABORT_HEADER, bad);
            assert_eq!(p.decide(&store, &r, 503, true, true, NOW).unwrap().abort, None, "{bad}");
        }
        assert_eq!(p.header_names(), [ABORT_HEADER, DELAY_HEADER]);
    }

    #[test]
    fn equal_shares_of_aborts_and_delays_choose_different_requests() {
        let p = plan("{ abort: { percent: 10 }, delay: { percent: 10, duration: 1ms } }");
        let store = MemoryStore::default();
        let req = SimpleRequest::new("GET", "h", "/");
        let got: Vec<Injected> =
            (0..100).map(|_| p.decide(&store, &req, 503, true, false, NOW).unwrap()).collect();
        assert_eq!(got.iter().filter(|i| i.abort.is_some()).count(), 10);
        assert_eq!(got.iter().filter(|i| i.delay.is_some()).count(), 10);
        assert!(got.iter().all(|i| !(i.abort.is_some() && i.delay.is_some())));
    }

    #[test]
    fn a_hold_never_released_expires_with_its_lease() {
        let p = plan("{ delay: { percent: 100, duration: 2s }, max_active: 1 }");
        let store = MemoryStore::default();
        let req = SimpleRequest::new("GET", "h", "/");
        assert!(p.decide(&store, &req, 503, true, true, NOW).unwrap().delay.is_some());
        // Its VM trapped: no release comes. The place is taken...
        assert!(p.decide(&store, &req, 503, true, true, NOW).unwrap().skipped);
        // ...until the lease (the longest delay plus a minute) is over.
        let later = NOW + 2 * 62 * 1_000_000_000;
        assert_eq!(p.active(&store, later).unwrap(), 0);
        assert!(p.decide(&store, &req, 503, true, true, later).unwrap().delay.is_some());
    }

    #[test]
    fn a_probe_is_never_aborted_and_does_not_count_as_a_candidate() {
        let p = plan("{ abort: { percent: 100 } }");
        let store = MemoryStore::default();
        let req = SimpleRequest::new("GET", "h", "/");
        assert_eq!(p.decide(&store, &req, 503, false, true, NOW).unwrap().abort, None);
        assert_eq!(p.decide(&store, &req, 503, true, true, NOW).unwrap().abort, Some(503));
    }

    #[test]
    fn a_share_of_zero_touches_no_state() {
        let p = plan("{ abort: { percent: 0 } }");
        let store = MemoryStore::default();
        assert_eq!(
            p.decide(&store, &SimpleRequest::new("GET", "h", "/"), 503, true, true, NOW).unwrap(),
            Injected::default()
        );
        assert!(store.get("bw/f/f").unwrap().is_none());
    }

    #[test]
    fn a_damaged_record_starts_over() {
        let store = MemoryStore::default();
        store.set("bw/f/f", b"junk", 0).unwrap();
        let p = plan("{ abort: { percent: 100 } }");
        assert_eq!(
            p.decide(&store, &SimpleRequest::new("GET", "h", "/"), 503, true, true, NOW).unwrap().abort,
            Some(503)
        );
    }
}
