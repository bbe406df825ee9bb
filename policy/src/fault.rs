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
//! **Active delays.** The record also counts the delays held now; a delay that would go beyond
//! `max_active` is skipped (the request goes on at once). A delay ends when its request goes on,
//! or when its stream ends first (a client that went away): [`FaultPlan::end_delay`] is called
//! exactly once either way.

use crate::engine::Nanos;
use crate::engine::store::{SharedStore, StoreError, update};
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
}

/// The fault record: candidates of each kind, and delays held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct State {
    aborts: u64,
    delays: u64,
    active: u32,
}

const STATE_BYTES: usize = 20;

impl State {
    fn decode(bytes: Option<&[u8]>) -> State {
        let Some(b) = bytes.filter(|b| b.len() == STATE_BYTES) else { return State::default() };
        let word = |from: usize| -> u64 {
            let mut w = [0u8; 8];
            if let Some(s) = b.get(from..from.saturating_add(8)) {
                w.copy_from_slice(s);
            }
            u64::from_le_bytes(w)
        };
        let mut a = [0u8; 4];
        if let Some(s) = b.get(16..20) {
            a.copy_from_slice(s);
        }
        State { aborts: word(0), delays: word(8), active: u32::from_le_bytes(a) }
    }

    fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STATE_BYTES);
        out.extend_from_slice(&self.aborts.to_le_bytes());
        out.extend_from_slice(&self.delays.to_le_bytes());
        out.extend_from_slice(&self.active.to_le_bytes());
        out
    }
}

/// Whether the n-th candidate (from 0) is chosen at a share of `ppm` parts per million: the
/// rounded count of chosen candidates, `round(n · p)`, grows at it.
pub fn chosen(n: u64, ppm: u32) -> bool {
    chosen_of(n.saturating_add(1), ppm) > chosen_of(n, ppm)
}

/// How many of the first `n` candidates [`chosen`] picks: `round(n · p)`.
pub fn chosen_of(n: u64, ppm: u32) -> u64 {
    let total = u128::from(n).saturating_mul(u128::from(ppm)).saturating_add(u128::from(MILLION / 2));
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
        FaultPlan {
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

    /// Whether the block may delay requests (and so has a `fault_active` gauge).
    pub fn delays(&self) -> bool {
        self.delay.is_some()
    }

    /// The request headers this block reads (with `headers: true`).
    pub fn header_names(&self) -> &'static [&'static str] {
        if self.headers { &[ABORT_HEADER, DELAY_HEADER] } else { &[] }
    }

    /// Decides the faults of a request the other blocks let through. `default_status` is the
    /// abort reply's own status; `hold` false (shadow mode) chooses delays without holding one of
    /// `max_active`. Err when the record could not be used (then no fault applies).
    pub fn decide<S: SharedStore + ?Sized>(
        &self,
        store: &S,
        req: &impl RequestView,
        default_status: u16,
        hold: bool,
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
        let abort = abort.filter(|(ppm, _)| *ppm > 0);
        let delay = delay.filter(|((ppm, _, _), _)| *ppm > 0);
        if abort.is_none() && delay.is_none() {
            return Ok(Injected::default());
        }
        let max_active = self.max_active;
        update(store, &self.record, |old| {
            let mut s = State::decode(old);
            let mut injected = Injected::default();
            if let Some((ppm, status)) = abort {
                if chosen(s.aborts, ppm) {
                    injected.abort = Some(status);
                }
                s.aborts = s.aborts.wrapping_add(1);
            }
            if let Some(((ppm, min, max), asked)) = delay {
                if chosen(s.delays, ppm) {
                    if !hold {
                        injected.delay = Some(asked.unwrap_or_else(|| delay_for(s.delays, min, max)));
                    } else if s.active < max_active {
                        injected.delay = Some(asked.unwrap_or_else(|| delay_for(s.delays, min, max)));
                        s.active = s.active.saturating_add(1);
                        injected.active = Some(s.active);
                    } else {
                        injected.skipped = true;
                    }
                }
                s.delays = s.delays.wrapping_add(1);
            }
            (injected, Some(s.encode()))
        })
    }

    /// Ends a delay that [`FaultPlan::decide`] began (its request went on, or its stream ended
    /// first); the delays still held.
    pub fn end_delay<S: SharedStore + ?Sized>(&self, store: &S) -> Result<u32, StoreError> {
        update(store, &self.record, |old| {
            let mut s = State::decode(old);
            s.active = s.active.saturating_sub(1);
            (s.active, Some(s.encode()))
        })
    }

    /// Delays held now (for the gauge).
    pub fn active<S: SharedStore + ?Sized>(&self, store: &S) -> Result<u32, StoreError> {
        Ok(State::decode(store.get(&self.record)?.as_ref().map(|(b, _)| b.as_slice())).active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::MemoryStore;
    use crate::model::Duration;
    use crate::request::SimpleRequest;
    use proptest::prelude::*;

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
        let picked: Vec<usize> =
            (0..1000).filter(|_| p.decide(&store, &req, 503, true).unwrap().abort == Some(503)).collect();
        assert_eq!(picked.len(), 50);
        // One in every twenty, the first at the tenth.
        assert_eq!(&picked[..3], [9, 29, 49]);
    }

    proptest! {
        #[test]
        fn the_chosen_count_is_the_rounded_share(ppm in 0u32..=1_000_000, n in 0u64..20_000) {
            let counted = (0..n).filter(|k| chosen(*k, ppm)).count() as u64;
            prop_assert_eq!(counted, chosen_of(n, ppm));
            let exact = n as f64 * f64::from(ppm) / 1e6;
            prop_assert!((counted as f64 - exact).abs() <= 0.5 + 1e-9);
        }
    }

    #[test]
    fn delays_stay_within_their_range_and_max_active() {
        let p = plan("{ delay: { percent: 100, duration: 100ms, max: 300ms }, max_active: 3 }");
        let store = MemoryStore::default();
        let req = SimpleRequest::new("GET", "h", "/");
        let got: Vec<Injected> = (0..5).map(|_| p.decide(&store, &req, 503, true).unwrap()).collect();
        let delays: Vec<Nanos> = got.iter().filter_map(|i| i.delay).collect();
        assert_eq!(delays.len(), 3);
        assert!(delays.iter().all(|d| (100_000_000..=300_000_000).contains(d)), "{delays:?}");
        assert!(got[3].skipped && got[4].skipped);
        assert_eq!(p.active(&store).unwrap(), 3);
        assert_eq!(p.end_delay(&store).unwrap(), 2);
        assert!(p.decide(&store, &req, 503, true).unwrap().delay.is_some());
        for _ in 0..10 {
            p.end_delay(&store).unwrap();
        }
        assert_eq!(p.active(&store).unwrap(), 0, "never below zero");
    }

    #[test]
    fn with_headers_only_requests_that_ask_are_candidates() {
        let p = plan("{ abort: { percent: 100 }, delay: { percent: 100, duration: 1s }, headers: true }");
        let store = MemoryStore::default();
        let plain = SimpleRequest::new("GET", "h", "/");
        assert_eq!(p.decide(&store, &plain, 503, true).unwrap(), Injected::default());
        let asks = plain.clone().header(ABORT_HEADER, "418").header(DELAY_HEADER, "5000");
        let got = p.decide(&store, &asks, 503, true).unwrap();
        // The delay is bounded by the block's longest.
        assert_eq!(
            got,
            Injected {
                abort: Some(418),
                delay: Some(Duration::from_millis(1000).as_nanos()),
                skipped: false,
                active: Some(1)
            }
        );
        for bad in ["700", "abc", ""] {
            let r = plain.clone().header(ABORT_HEADER, bad);
            assert_eq!(p.decide(&store, &r, 503, true).unwrap().abort, None, "{bad}");
        }
        assert_eq!(p.header_names(), [ABORT_HEADER, DELAY_HEADER]);
    }

    #[test]
    fn a_share_of_zero_touches_no_state() {
        let p = plan("{ abort: { percent: 0 } }");
        let store = MemoryStore::default();
        assert_eq!(
            p.decide(&store, &SimpleRequest::new("GET", "h", "/"), 503, true).unwrap(),
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
            p.decide(&store, &SimpleRequest::new("GET", "h", "/"), 503, true).unwrap().abort,
            Some(503)
        );
    }
}
