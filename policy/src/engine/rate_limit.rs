//! Rate limiting with GCRA (the generic cell rate algorithm): a token bucket kept as one number.
//!
//! A bucket of `burst` tokens refilled at `rate` per `per` is equivalent to remembering a single
//! *theoretical arrival time* (TAT): the moment the bucket would be full again. A request at `now`
//! is admitted when `max(TAT, now) + interval - burst·interval <= now`, and admitting it moves TAT
//! forward by one `interval`. The whole limiter is therefore one u64 in shared data, updated by
//! compare-and-swap, which is exact across Envoy workers (this is how `governor` does it).
//!
//! The interval is rounded *up* to whole nanoseconds, so the limiter never admits more than
//! `burst + rate·t/per`; the rounding costs at most one token per ~10⁹/rate seconds.

use super::codec::{ByteReader, ByteWriter};
use super::{NANOS_PER_SEC, Nanos};

const TAG: u8 = 0x52; // 'R'

/// The parameters of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    interval: Nanos,
    tolerance: Nanos,
    rate: u64,
    per: Nanos,
    burst: u64,
}

/// What [`Gcra::take`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub granted: u64,
    /// Whole tokens left in the bucket.
    pub remaining: u64,
    /// How long until what was asked for and not granted would be there (0: all was granted).
    pub wait: Nanos,
    /// How long until the bucket is full.
    pub reset: Nanos,
}

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// Tokens left after this request (for the `RateLimit` header's `r=`).
    pub remaining: u64,
    /// When rejected: how long until a request would be admitted (`Retry-After`).
    pub retry_after: Nanos,
    /// How long until the bucket is full again (the `RateLimit` header's `t=`).
    pub reset_after: Nanos,
}

impl Gcra {
    /// `rate` tokens per `per` nanoseconds, at most `burst` at once.
    pub fn try_new(rate: u64, per: Nanos, burst: u64) -> Result<Self, String> {
        if rate == 0 || per == 0 || burst == 0 {
            return Err("rate, per and burst must be positive".into());
        }
        let interval = per.div_ceil(rate);
        let tolerance = interval.saturating_mul(burst);
        Ok(Gcra { interval, tolerance, rate, per, burst })
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }
    pub fn per(&self) -> Nanos {
        self.per
    }
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Decides one request given the stored TAT (None for a new bucket). Returns the decision and
    /// the TAT to store (None when nothing changes, i.e. when rejected, unless the wall clock
    /// stepped back and the TAT was brought back within `burst` intervals of `now`).
    pub fn decide(&self, tat: Option<Nanos>, now: Nanos) -> (RateDecision, Option<Nanos>) {
        // A stored TAT is at most `tolerance` ahead of the time it was stored at; more means the
        // wall clock stepped back since, and the bucket would stay empty for as long as the step.
        // Clamped, it is an empty bucket that refills at the usual pace.
        let stored = tat;
        let tat = tat.unwrap_or(now).clamp(now, now.saturating_add(self.tolerance));
        let new_tat = tat.saturating_add(self.interval);
        let allow_at = new_tat.saturating_sub(self.tolerance);
        if now < allow_at {
            let decision = RateDecision {
                allowed: false,
                remaining: 0,
                retry_after: allow_at.saturating_sub(now),
                reset_after: tat.saturating_sub(now),
            };
            // A rejection changes nothing, unless the TAT was clamped: that is kept.
            let clamped = stored.is_some_and(|s| s > tat).then_some(tat);
            return (decision, clamped);
        }
        let used = new_tat.saturating_sub(now); // <= tolerance
        let decision = RateDecision {
            allowed: true,
            remaining: self.tolerance.saturating_sub(used).checked_div(self.interval).unwrap_or(0),
            retry_after: 0,
            reset_after: used,
        };
        (decision, Some(new_tat))
    }

    /// Takes `hits` tokens at once: all or none, or (`partial`) as many as the bucket holds, up
    /// to `hits`. The rate-limit service's bucket (`ratelimit/src/gcra.lua`, in microseconds)
    /// does exactly this; host-test's simulated service uses it. Returns what was taken and the
    /// TAT to store (None when nothing changes).
    pub fn take(&self, tat: Option<Nanos>, now: Nanos, hits: u64, partial: bool) -> (Taken, Option<Nanos>) {
        let stored = tat;
        let tat = tat.unwrap_or(now).clamp(now, now.saturating_add(self.tolerance));
        let room = now.saturating_add(self.tolerance).saturating_sub(tat);
        let available = room.checked_div(self.interval).unwrap_or(0);
        let granted = if available >= hits {
            hits
        } else if partial {
            available
        } else {
            0
        };
        let new_tat = tat.saturating_add(granted.saturating_mul(self.interval));
        // What was asked for and not granted: for a lease, the next token; otherwise all of it.
        let need = match (granted >= hits, partial) {
            (true, _) => 0,
            (false, true) => 1,
            (false, false) => hits,
        };
        let wait = if need == 0 {
            0
        } else {
            new_tat
                .saturating_add(need.saturating_mul(self.interval))
                .saturating_sub(self.tolerance)
                .saturating_sub(now)
        };
        let taken = Taken {
            granted,
            remaining: available.saturating_sub(granted),
            wait,
            reset: new_tat.saturating_sub(now),
        };
        let changed = granted > 0 || stored.is_some_and(|s| s > tat);
        (taken, changed.then_some(new_tat))
    }

    /// [`Gcra::decide`] on the shared-data encoding, for use inside [`super::store::update`].
    /// Foreign or damaged bytes count as a new bucket.
    pub fn decide_bytes(&self, state: Option<&[u8]>, now: Nanos) -> (RateDecision, Option<Vec<u8>>) {
        let (decision, tat) = self.decide(state.and_then(decode_tat), now);
        (decision, tat.map(encode_tat))
    }

    /// The `RateLimit-Policy` header value (IETF draft): `"<name>";q=<burst>;w=<window seconds>`.
    pub fn policy_header(&self, name: &str) -> String {
        let window = self.per.div_ceil(NANOS_PER_SEC).max(1);
        format!("\"{name}\";q={};w={window}", self.burst)
    }
}

pub fn encode_tat(tat: Nanos) -> Vec<u8> {
    ByteWriter::with_tag(TAG).u64(tat).finish()
}

pub fn decode_tat(bytes: &[u8]) -> Option<Nanos> {
    let mut r = ByteReader::with_tag(bytes, TAG)?;
    let tat = r.u64()?;
    r.done().then_some(tat)
}

/// Rate-limit slots: idle when the bucket is full again; the fullest buckets are evicted first.
#[derive(Debug, Clone, Copy)]
pub struct RateSlots;
impl super::keys::SlotState for RateSlots {
    fn activity(&self, state: &[u8], now: Nanos) -> Option<u64> {
        decode_tat(state).and_then(|tat| tat.checked_sub(now)).filter(|wait| *wait > 0)
    }
    fn evictable(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::{MemoryStore, update};
    use proptest::prelude::*;

    const MS: Nanos = 1_000_000;

    fn run(g: &Gcra, times: &[Nanos]) -> usize {
        let store = MemoryStore::default();
        times.iter().filter(|now| update(&store, "k", |s| g.decide_bytes(s, **now)).unwrap().allowed).count()
    }

    #[test]
    fn burst_at_once_then_the_rate() {
        let g = Gcra::try_new(10, NANOS_PER_SEC, 5).unwrap();
        let mut tat = None;
        let mut allowed = 0;
        for _ in 0..20 {
            let (d, t) = g.decide(tat, 0);
            if d.allowed {
                allowed += 1;
                tat = t;
            }
        }
        assert_eq!(allowed, 5);
        let (d, _) = g.decide(tat, 0);
        assert_eq!(d.retry_after, 100 * MS);
        let (d, _) = g.decide(tat, 100 * MS);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn remaining_counts_down_and_reset_grows() {
        let g = Gcra::try_new(3, NANOS_PER_SEC, 3).unwrap();
        let (d1, t) = g.decide(None, 0);
        let (d2, _) = g.decide(t, 0);
        assert_eq!((d1.remaining, d2.remaining), (2, 1));
        assert!(d2.reset_after > d1.reset_after);
    }

    #[test]
    fn exact_over_a_long_run_at_overload() {
        // 100/s, burst 20, a request every millisecond for 10 s: 20 + 100·10 admitted.
        let g = Gcra::try_new(100, NANOS_PER_SEC, 20).unwrap();
        let times: Vec<Nanos> = (0..10_000).map(|i| i * MS).collect();
        assert_eq!(run(&g, &times), 20 + 999); // the last request is at 9.999 s
    }

    #[test]
    fn foreign_state_is_a_new_bucket() {
        let g = Gcra::try_new(1, NANOS_PER_SEC, 1).unwrap();
        assert!(g.decide_bytes(Some(b"garbage"), 0).0.allowed);
        assert_eq!(decode_tat(&encode_tat(42)), Some(42));
    }

    #[test]
    fn header_names_the_quota_and_window() {
        let g = Gcra::try_new(100, 60 * NANOS_PER_SEC, 20).unwrap();
        assert_eq!(g.policy_header("api"), "\"api\";q=20;w=60");
    }

    proptest! {
        /// Never admits more than burst + rate·t/per, and never fewer than that minus one token
        /// when requests arrive at least as fast as tokens do.
        #[test]
        fn admits_within_burst_plus_rate(
            rate in 1u64..2000,
            per_ms in 1u64..5000,
            burst in 1u64..500,
            gaps in proptest::collection::vec(0u64..50 * MS, 1..400),
        ) {
            let per = per_ms * MS;
            let g = Gcra::try_new(rate, per, burst).unwrap();
            let mut now = 1_000 * NANOS_PER_SEC;
            let start = now;
            let mut times = Vec::new();
            for gap in gaps { now += gap; times.push(now); }
            let admitted = run(&g, &times) as u128;
            let t = (now - start) as u128;
            let ceiling = burst as u128 + (rate as u128 * t) / per as u128;
            prop_assert!(admitted <= ceiling, "admitted {} > {}", admitted, ceiling);
        }

        /// Issue 20, defect 10: the wall clock (Envoy's `proxy_get_current_time`) may step back or
        /// forward by any amount. Whatever the steps, a bucket left alone for `burst` token
        /// intervals admits again: it is never stuck for as long as a backward step.
        #[test]
        fn clock_steps_never_wedge_a_bucket(
            rate in 1u64..1000,
            burst in 1u64..50,
            ops in proptest::collection::vec(crate::engine::clock::clock_steps(2_000), 1..200),
        ) {
            let per = NANOS_PER_SEC;
            let g = Gcra::try_new(rate, per, burst).unwrap();
            let mut now: Nanos = 100_000 * NANOS_PER_SEC;
            let mut tat = None;
            // A request at every step; the one after `burst` token intervals is admitted.
            for step in ops {
                now = now.saturating_add_signed(step);
                let (_, stored) = g.decide(tat, now);
                tat = stored.or(tat);
                let later = now + per.div_ceil(rate) * burst;
                prop_assert!(g.decide(tat, later).0.allowed, "stuck: tat {:?} now {}", tat, now);
            }
        }

        #[test]
        fn saturating_arrivals_get_exactly_the_bucket(
            rate in 1u64..1000,
            burst in 1u64..200,
            steps in 1u64..3000,
        ) {
            // Ten requests per token interval: the limiter is always saturated.
            let per = NANOS_PER_SEC;
            let g = Gcra::try_new(rate, per, burst).unwrap();
            let step = per.div_ceil(rate) / 10 + 1;
            let times: Vec<Nanos> = (0..steps).map(|i| i * step).collect();
            let t = (steps - 1) * step;
            let expected = burst + t / per.div_ceil(rate);
            let admitted = run(&g, &times) as u64;
            prop_assert!(admitted == expected.min(steps), "admitted {} expected {}", admitted, expected);
        }
    }

    proptest! {
        /// Taking one token, all or nothing, is the same decision as `decide`, on any sequence
        /// of requests (the service's bucket and the filter's agree).
        #[test]
        fn taking_one_token_is_deciding(gaps in proptest::collection::vec(0u64..40_000_000, 1..200)) {
            let g = Gcra::try_new(50, NANOS_PER_SEC, 5).unwrap();
            let (mut a, mut b) = (None, None);
            let mut now = 1_000 * NANOS_PER_SEC;
            for gap in gaps {
                now += gap;
                let (d, ta) = g.decide(a, now);
                let (t, tb) = g.take(b, now, 1, false);
                prop_assert_eq!(d.allowed, t.granted == 1);
                prop_assert_eq!(d.remaining, t.remaining);
                if !d.allowed {
                    prop_assert_eq!(d.retry_after, t.wait);
                }
                a = ta.or(a);
                b = tb.or(b);
                prop_assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn a_lease_takes_what_the_bucket_holds() {
        let g = Gcra::try_new(10, NANOS_PER_SEC, 4).unwrap();
        let now = 1_000 * NANOS_PER_SEC;
        let (t, tat) = g.take(None, now, 10, true);
        assert_eq!((t.granted, t.remaining, t.wait), (4, 0, 100_000_000));
        let (t, _) = g.take(tat, now, 10, false);
        assert_eq!((t.granted, t.wait), (0, 1_000_000_000));
        let (t, _) = g.take(tat, now + 250_000_000, 10, true);
        assert_eq!(t.granted, 2);
    }
}
