//! An adaptive concurrency limit: a gradient controller, as Envoy's `adaptive_concurrency` filter
//! has it, on state shared by every worker.
//!
//! The limit follows the upstream's latency instead of a number someone guessed:
//!
//! - **Min RTT.** What a request takes when the upstream is not loaded. Measured in a *probe*:
//!   the limit is pinned to `min` until `probe_samples` requests admitted while at most `min`
//!   were in flight have finished; the mean of their latencies is the min RTT. A probe runs at the
//!   start and every `probe_interval` after the last one ended (the upstream may have changed:
//!   a deploy, a new version). Requests admitted above `min` are never probe samples, so a probe
//!   measures the unloaded upstream even when the probe began under load.
//! - **Sampled latency.** Every `interval`, the mean latency of the requests that were admitted
//!   and finished in it. Requests admitted before the last change of the limit are left out:
//!   counting them would have the controller act twice on the same news (with an upstream
//!   slower than the interval it then swings from `min` to twice the knee and back). An
//!   interval lasts until requests admitted in it have finished, at least half as many as it had
//!   in flight at most: the first to finish after a change were admitted into the emptiest
//!   upstream, and alone they would tell of a faster upstream than the limit makes (in real
//!   Envoy the limit then swung between the knee and three times it).
//! - **The gradient** `min RTT · (1 + tolerance) / sampled`, clamped to [0.5, 2]. At 1 or above
//!   (the upstream answers as fast as unloaded, within the tolerance) the limit grows to
//!   `limit · gradient + √limit`, but only if the interval used at least half of it (an idle
//!   limit that grew without being tested would let a burst through unchecked); below 1 it
//!   shrinks to `limit · gradient`. Always within [`min`, `max`].
//!
//! With an upstream whose latency grows once more than N requests are in it, the limit settles
//! where the sampled latency meets the tolerance: just above N (`tests` show it).
//!
//! All arithmetic is integer (the limit in thousandths), so every worker and every build decides
//! alike.

use super::Nanos;
use super::codec::{ByteReader, ByteWriter};

const TAG: u8 = 0x47; // 'G'
/// The length of an encoded [`State`].
pub const ENCODED_LEN: usize = 70;
const MILLI: u64 = 1000;
const PPM: u64 = 1_000_000;

/// The controller's settings (the policy's `concurrency_limit.adaptive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gradient {
    pub min: u32,
    pub max: u32,
    pub initial: u32,
    /// How often the limit is recomputed.
    pub interval: Nanos,
    /// Latency above the min RTT still taken for an unloaded upstream, in parts per million.
    pub tolerance_ppm: u32,
    /// Time from the end of one probe to the start of the next.
    pub probe_interval: Nanos,
    /// Samples a probe takes.
    pub probe_samples: u32,
}

/// The controller's shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// The limit, in thousandths.
    limit_milli: u64,
    /// The last min RTT measured (0: none yet).
    min_rtt: Nanos,
    /// Probing: samples taken so far and their sum. None: not probing.
    probe: Option<(u32, Nanos)>,
    /// When the next probe begins.
    next_probe: Nanos,
    /// The current interval: its start, its samples' sum and count, the most in flight in it.
    interval_start: Nanos,
    sum: Nanos,
    count: u32,
    peak: u32,
    /// The last interval's mean latency (0: none yet).
    sampled: Nanos,
}

/// What a request's end tells the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// From its admission (when its slot was taken, or its injected delay ended) to its response
    /// headers.
    pub latency: Nanos,
    /// Requests in flight when it was admitted, itself included.
    pub admitted_at: u32,
    /// When it was admitted.
    pub admitted: Nanos,
}

/// What the controller shows (gauges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The limit in force now (`min` while probing).
    pub limit: u32,
    pub min_rtt: Nanos,
    pub sampled: Nanos,
    pub probing: bool,
}

impl Gradient {
    /// The state of a limit that has seen nothing yet: it begins with a probe.
    pub fn start(&self, now: Nanos) -> State {
        State {
            limit_milli: u64::from(self.initial.clamp(self.min, self.max)).saturating_mul(MILLI),
            min_rtt: 0,
            probe: Some((0, 0)),
            next_probe: now,
            interval_start: now,
            sum: 0,
            count: 0,
            peak: 0,
            sampled: 0,
        }
    }

    /// The limit in force: `min` while probing, else the computed one.
    pub fn limit(&self, s: &State) -> u32 {
        if s.probe.is_some() {
            return self.min;
        }
        let l = u32::try_from(s.limit_milli / MILLI).unwrap_or(u32::MAX);
        l.clamp(self.min, self.max)
    }

    pub fn reading(&self, s: &State) -> Reading {
        Reading { limit: self.limit(s), min_rtt: s.min_rtt, sampled: s.sampled, probing: s.probe.is_some() }
    }

    /// A request was admitted with `in_flight` requests in flight (itself included).
    pub fn admitted(&self, s: &mut State, in_flight: u32) {
        s.peak = s.peak.max(in_flight);
    }

    /// A request finished with this `sample`. Returns the new reading when the limit (or the min
    /// RTT) changed.
    pub fn finished(&self, s: &mut State, sample: Sample, now: Nanos) -> Option<Reading> {
        let Sample { latency, admitted_at, admitted } = sample;
        let latency = latency.max(1);
        if now < s.interval_start || s.peak > self.max {
            // The wall clock stepped back (or the state is not one this controller wrote): the
            // interval starts over now, and the next probe is no further than a probe interval.
            (s.interval_start, s.sum, s.count, s.peak) = (now, 0, 0, 0);
            s.next_probe = s.next_probe.min(now.saturating_add(self.probe_interval));
        }
        if let Some((n, sum)) = s.probe {
            if admitted_at > self.min {
                return None;
            }
            let (n, sum) = (n.saturating_add(1), sum.saturating_add(latency));
            if n < self.probe_samples.max(1) {
                s.probe = Some((n, sum));
                return None;
            }
            s.min_rtt = sum.checked_div(u64::from(n)).unwrap_or(latency);
            s.probe = None;
            s.next_probe = now.saturating_add(self.probe_interval);
            (s.interval_start, s.sum, s.count, s.peak) = (now, 0, 0, 0);
            return Some(self.reading(s));
        }
        // Only requests admitted since the last change of the limit say how the upstream copes
        // with it: older ones would make the controller act twice on the same news.
        if admitted < s.interval_start {
            return None;
        }
        s.sum = s.sum.saturating_add(latency);
        s.count = s.count.saturating_add(1);
        // An interval needs samples from at least half as many requests as it had in flight at
        // most: the first to come back after a change are those admitted into the emptiest
        // upstream, and alone they would tell of a faster upstream than the limit makes.
        if now.saturating_sub(s.interval_start) < self.interval
            || u64::from(s.count).saturating_mul(2) < u64::from(s.peak)
        {
            return None;
        }
        let sampled = s.sum.checked_div(u64::from(s.count)).unwrap_or(latency);
        s.sampled = sampled;
        self.update(s, sampled);
        (s.interval_start, s.sum, s.count, s.peak) = (now, 0, 0, 0);
        if now >= s.next_probe {
            s.probe = Some((0, 0));
        }
        Some(self.reading(s))
    }

    fn update(&self, s: &mut State, sampled: Nanos) {
        // min RTT · (1 + tolerance) / sampled, in parts per million.
        let tolerated = scale(s.min_rtt, PPM.saturating_add(u64::from(self.tolerance_ppm)));
        let gradient = u128::from(tolerated)
            .saturating_mul(u128::from(PPM))
            .checked_div(u128::from(sampled.max(1)))
            .unwrap_or(0)
            .clamp(500_000, 2_000_000) as u64;
        let limit = s.limit_milli;
        let new = if gradient >= PPM {
            let used = u64::from(s.peak).saturating_mul(2).saturating_mul(MILLI) >= limit;
            if !used {
                return;
            }
            let headroom = (limit / MILLI).isqrt().saturating_mul(MILLI);
            scale(limit, gradient).saturating_add(headroom)
        } else {
            scale(limit, gradient)
        };
        let (lo, hi) = (u64::from(self.min).saturating_mul(MILLI), u64::from(self.max).saturating_mul(MILLI));
        s.limit_milli = new.clamp(lo, hi.max(lo));
    }

    /// The state as stored, or a fresh one for bytes that are not a state.
    pub fn decode(&self, bytes: Option<&[u8]>, now: Nanos) -> State {
        bytes.and_then(decode).unwrap_or_else(|| self.start(now))
    }
}

/// `value · ppm / 1,000,000`, saturating.
fn scale(value: u64, ppm: u64) -> u64 {
    let x = u128::from(value).saturating_mul(u128::from(ppm)).checked_div(u128::from(PPM)).unwrap_or(0);
    u64::try_from(x).unwrap_or(u64::MAX)
}

pub fn decode(b: &[u8]) -> Option<State> {
    let mut r = ByteReader::with_tag(b, TAG)?;
    let limit_milli = r.u64()?;
    let min_rtt = r.u64()?;
    let probing = r.u8()?;
    let (n, sum) = (r.u32()?, r.u64()?);
    let s = State {
        limit_milli,
        min_rtt,
        probe: (probing == 1).then_some((n, sum)),
        next_probe: r.u64()?,
        interval_start: r.u64()?,
        sum: r.u64()?,
        count: r.u32()?,
        peak: r.u32()?,
        sampled: r.u64()?,
    };
    r.done().then_some(s)
}

pub fn encode(s: &State) -> Vec<u8> {
    let (probing, (n, sum)) = match s.probe {
        Some(p) => (1, p),
        None => (0, (0, 0)),
    };
    let mut w = ByteWriter::sized(TAG, ENCODED_LEN - 1);
    w.u64(s.limit_milli).u64(s.min_rtt).u8(probing).u32(n).u64(sum);
    w.u64(s.next_probe).u64(s.interval_start).u64(s.sum).u32(s.count).u32(s.peak).u64(s.sampled);
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    /// A request admitted `latency` before `now` with `admitted_at` in flight.
    fn fin(g: &Gradient, s: &mut State, latency: Nanos, admitted_at: u32, now: Nanos) -> Option<Reading> {
        g.finished(s, Sample { latency, admitted_at, admitted: now.saturating_sub(latency) }, now)
    }

    fn gradient() -> Gradient {
        Gradient {
            min: 3,
            max: 1000,
            initial: 20,
            interval: 100 * MS,
            tolerance_ppm: 250_000,
            probe_interval: 60_000 * MS,
            probe_samples: 10,
        }
    }

    /// An upstream that serves `capacity` requests at once in `base`; a request that starts with
    /// k > capacity in it takes `base · k / capacity`. The client keeps the limit full: a request
    /// starts whenever one ends (closed loop). Returns the limit at the end of each interval, and
    /// the time at the end.
    fn saturate(
        g: &Gradient,
        s: &mut State,
        capacity: u32,
        base: Nanos,
        from: Nanos,
        intervals: u32,
    ) -> (Vec<u32>, Nanos) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut now = from;
        let mut limits = Vec::new();
        let mut upstream: BinaryHeap<Reverse<(Nanos, u32)>> = BinaryHeap::new();
        for k in 1..=intervals {
            let end = from + u64::from(k) * g.interval;
            loop {
                while (upstream.len() as u32) < g.limit(s) {
                    let n = upstream.len() as u32 + 1;
                    g.admitted(s, n);
                    upstream
                        .push(Reverse((now + base * u64::from(n.max(capacity)) / u64::from(capacity), n)));
                }
                let Some(Reverse((done, admitted_at))) = upstream.peek().copied() else { break };
                if done > end {
                    break;
                }
                upstream.pop();
                now = done;
                fin(
                    g,
                    s,
                    base * u64::from(admitted_at.max(capacity)) / u64::from(capacity),
                    admitted_at,
                    now,
                );
            }
            now = end;
            limits.push(g.limit(s));
        }
        (limits, now)
    }

    #[test]
    fn a_saturated_limit_settles_just_above_the_upstreams_knee() {
        let g = gradient();
        let mut s = g.start(0);
        assert_eq!(g.limit(&s), 3, "it begins with a probe, at min");
        let (limits, _) = saturate(&g, &mut s, 20, 50 * MS, 0, 100);
        assert_eq!(s.min_rtt, 50 * MS, "probed at min (3 in flight): the unloaded latency");
        let tail = &limits[50..];
        let (lo, hi) = (*tail.iter().min().unwrap(), *tail.iter().max().unwrap());
        // The knee is 20; the tolerance (25%) allows 25; √25 of headroom above that.
        assert!(lo >= 20 && hi <= 31, "settled between {lo} and {hi}: {limits:?}");
    }

    #[test]
    fn the_limit_falls_when_the_upstream_slows_and_recovers_after() {
        let g = gradient();
        let mut s = g.start(0);
        let (fast, now) = saturate(&g, &mut s, 40, 20 * MS, 0, 60);
        let before = *fast.last().unwrap();
        assert!((40..=60).contains(&before), "{fast:?}");
        // The upstream slows down fivefold and serves 8 at once: far above the tolerance, the
        // limit halves every interval, down to min...
        let (slow, now) = saturate(&g, &mut s, 8, 100 * MS, now, 60);
        assert!(
            slow.windows(2).all(|w| w[1] <= w[0]) && *slow.last().unwrap() == 3,
            "{before} then {slow:?}"
        );
        // ...until the next probe measures the slower upstream: then it settles near its knee.
        let (slow, now) = saturate(&g, &mut s, 8, 100 * MS, now, 700);
        assert_eq!(s.min_rtt, 100 * MS);
        let tail = &slow[650..];
        // The knee is 8; the tolerance allows 10, the headroom √10 over that, and one step more
        // before the next interval's news.
        assert!(tail.iter().all(|l| (8..=16).contains(l)), "{tail:?}");
        // And it recovers when the upstream does.
        let (again, _) = saturate(&g, &mut s, 40, 20 * MS, now, 60);
        assert!(*again.last().unwrap() >= 40, "{again:?}");
    }

    #[test]
    fn an_idle_limit_does_not_grow() {
        let g = gradient();
        let mut s = g.start(0);
        // The probe: ten requests, one at a time.
        for i in 0..10 {
            g.admitted(&mut s, 1);
            fin(&g, &mut s, 10 * MS, 1, i * 10 * MS);
        }
        assert_eq!((g.limit(&s), s.min_rtt), (20, 10 * MS));
        // Fast answers, but never more than 5 in flight: the limit of 20 is not tested.
        let mut now = 100 * MS;
        for _ in 0..100 {
            g.admitted(&mut s, 5);
            now += 10 * MS;
            fin(&g, &mut s, 10 * MS, 5, now);
        }
        assert_eq!(g.limit(&s), 20);
    }

    #[test]
    fn probes_take_only_requests_admitted_at_min_and_come_back() {
        let g = gradient();
        let mut s = g.start(0);
        // Requests admitted under load (before the probe pinned the limit) are not probe samples.
        for _ in 0..50 {
            assert_eq!(fin(&g, &mut s, 500 * MS, 15, MS), None);
        }
        for i in 0..10 {
            let r = fin(&g, &mut s, 30 * MS, 3, i * MS);
            assert_eq!(r.is_some(), i == 9);
        }
        assert_eq!((s.min_rtt, s.probe), (30 * MS, None));
        // The next probe begins at the first interval's end after probe_interval.
        let _ = saturate(&g, &mut s, 100, 30 * MS, 10 * MS, 1);
        assert!(s.probe.is_none());
        let later = g.probe_interval + 20 * MS;
        fin(&g, &mut s, 30 * MS, 3, later);
        fin(&g, &mut s, 30 * MS, 3, later + g.interval);
        assert!(s.probe.is_some());
        assert_eq!(g.limit(&s), 3);
    }

    #[test]
    fn state_round_trips_and_foreign_bytes_start_afresh() {
        let g = gradient();
        let mut s = g.start(5);
        let _ = saturate(&g, &mut s, 20, 50 * MS, 5, 20);
        assert_eq!(decode(&encode(&s)), Some(s));
        assert_eq!(encode(&s).len(), ENCODED_LEN);
        assert_eq!(g.decode(Some(b"nonsense"), 9), g.start(9));
        let mut bytes = encode(&s);
        bytes.pop();
        assert_eq!(g.decode(Some(&bytes), 9), g.start(9));
    }

    /// After the wall clock steps back, samples still count (found by review: every sample was
    /// "admitted before the interval began" until the clock caught up, and the limit froze).
    #[test]
    fn a_clock_step_back_does_not_freeze_the_limit() {
        let g = gradient();
        let t0 = 10_000_000 * MS;
        let mut s = g.start(t0);
        let (_, now) = saturate(&g, &mut s, 20, 50 * MS, t0, 60);
        let before = g.limit(&s);
        let back = now - 3_600_000 * MS;
        let mut s2 = s;
        // The upstream slowed down (a knee of 5): the limit must follow.
        let (limits, _) = saturate(&g, &mut s2, 5, 50 * MS, back, 60);
        assert!(*limits.last().unwrap() < before, "{before} then {limits:?}");
        assert!(s2.interval_start < now, "the interval started over at the earlier time");
    }

    #[test]
    fn limits_stay_within_min_and_max() {
        let g = Gradient { max: 25, ..gradient() };
        let mut s = g.start(0);
        let (limits, _) = saturate(&g, &mut s, 1000, 10 * MS, 0, 50);
        assert!(limits.iter().all(|l| (3..=25).contains(l)), "{limits:?}");
        assert_eq!(*limits.last().unwrap(), 25);
        // A wildly slow sample halves the limit at most, never below min.
        let before = g.limit(&s);
        g.admitted(&mut s, before);
        fin(&g, &mut s, 100_000 * MS, before, 10_000 * MS);
        assert!(g.limit(&s) >= before / 2 && g.limit(&s) >= 3, "{}", g.limit(&s));
    }
}
