//! Circuit breaking: stop sending requests to an upstream that keeps failing, then probe it.
//!
//! ```text
//!            failure or slow rate ≥ threshold          open_for elapsed
//!   Closed ─────────(after minimum_calls)────────▶ Open ───────────────▶ HalfOpen
//!     ▲                                             ▲                      │  │
//!     │            a probe fails or is slow         └──────────────────────┘  │
//!     └───────────── half_open_calls probes all succeed ─────────────────────┘
//! ```
//!
//! - **Closed**: every request passes; outcomes fill the window (the last N calls, or the calls of
//!   the last period in time buckets). Once the window holds `minimum_calls` calls, a failure rate
//!   or slow-call rate at or above its threshold opens the breaker.
//! - **Open**: every request is rejected at once, without touching the upstream, until `open_for`
//!   has passed.
//! - **HalfOpen**: up to `half_open_calls` probes are admitted, others rejected. All probes must
//!   succeed to close (with an empty window); one failed or slow probe re-opens. Probes that never
//!   report (a worker died) do not wedge the breaker: after another `open_for` the round restarts.
//!
//! Each admission returns a [`Ticket`] stamped with the breaker's *generation*, which changes on
//! every transition. An outcome recorded with an old ticket (a call admitted before the breaker
//! opened and finishing after) is ignored, so late results cannot close or re-open a breaker.
//!
//! The state is a byte value of at most ~2.5 KB (a 10,000-call window is two bitmaps), updated by
//! compare-and-swap in shared data like every engine here.

use super::Nanos;
use super::codec::{ByteReader, ByteWriter};
use crate::metrics::BreakerState;
use crate::model::{self, Window};

const TAG: u8 = 0x42; // 'B'

/// Most time buckets of a time-based window.
const MAX_BUCKETS: u64 = 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    window: WindowConfig,
    minimum_calls: u32,
    failure_rate: u32,
    slow: Option<(Nanos, u32)>,
    open_for: Nanos,
    half_open_calls: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WindowConfig {
    Calls(u32),
    Time { bucket: Nanos, buckets: u32 },
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Closed,
    Open { until: Nanos },
    HalfOpen { since: Nanos, admitted: u32, succeeded: u32 },
}

impl Phase {
    /// The name of this phase in metrics, scenarios and the admin (its gauge value too).
    pub fn state(&self) -> BreakerState {
        match self {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBreaker {
    generation: u32,
    phase: Phase,
    window: WindowState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum WindowState {
    /// Ring of the last N outcomes as two bitmaps.
    Calls { next: u32, filled: u32, failed: Vec<u8>, slow: Vec<u8> },
    /// Counts per time bucket, each stamped with its bucket number.
    Time { buckets: Vec<Bucket> },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    epoch: u64,
    calls: u32,
    failed: u32,
    slow: u32,
}

/// Counts of the calls in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    pub calls: u32,
    pub failed: u32,
    pub slow: u32,
}

/// Proof of admission, handed back with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u32,
    probe: bool,
}

impl Ticket {
    /// Whether the request is one of the half-open phase's probes (its outcome decides whether
    /// the breaker closes).
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted(Ticket),
    Rejected { retry_after: Nanos },
}

/// A phase change, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Phase,
    pub to: Phase,
    /// What the window held when it opened the breaker (a closed breaker that went over its
    /// thresholds); None for every other transition.
    pub window: Option<WindowCounts>,
}

impl Transition {
    /// The line the filter logs for this transition of `policy`'s breaker (Envoy's log, info):
    /// `breakwater: breaker transition policy=reco from=closed to=open calls=20 failed=12 slow=0`
    /// and, when the window opened it, the rates in words. Key=value pairs, so that the admin can
    /// read the transitions back from the log.
    pub fn log_line(&self, policy: &str) -> String {
        let (from, to) = (self.from.state(), self.to.state());
        let mut line = format!("breakwater: breaker transition policy={policy} from={from} to={to}");
        match self.window {
            Some(c) => {
                let pct =
                    |n: u32| u64::from(n).saturating_mul(100).checked_div(u64::from(c.calls)).unwrap_or(0);
                line.push_str(&format!(
                    " calls={} failed={} slow={} (failure rate {}%, slow-call rate {}% of the window)",
                    c.calls,
                    c.failed,
                    c.slow,
                    pct(c.failed),
                    pct(c.slow)
                ));
            }
            None => line.push_str(match (from, to) {
                (_, BreakerState::Open) => " (a probe failed)",
                (_, BreakerState::HalfOpen) => " (open_for is over: probing)",
                (_, BreakerState::Closed) => " (the probes succeeded)",
            }),
        }
        line
    }
}

impl BreakerConfig {
    pub fn from_model(cb: &model::CircuitBreaker) -> Self {
        let window = match cb.window {
            Window::Calls(n) => WindowConfig::Calls(n.max(1)),
            Window::Time(d) => {
                let total = d.as_nanos().max(1);
                let buckets = (d.as_millis() / 100).clamp(1, MAX_BUCKETS);
                WindowConfig::Time { bucket: total.div_ceil(buckets), buckets: buckets as u32 }
            }
        };
        BreakerConfig {
            window,
            minimum_calls: cb.minimum_calls.max(1),
            failure_rate: u32::from(cb.failure_rate),
            slow: cb.slow_call.as_ref().map(|s| (s.duration.as_nanos(), u32::from(s.rate))),
            open_for: cb.open_for.as_nanos(),
            half_open_calls: cb.half_open_calls.max(1),
        }
    }

    /// A closed breaker with an empty window.
    pub fn new_state(&self) -> StoredBreaker {
        StoredBreaker { generation: 0, phase: Phase::Closed, window: self.empty_window() }
    }

    fn empty_window(&self) -> WindowState {
        match self.window {
            WindowConfig::Calls(n) => {
                let bytes = n.div_ceil(8) as usize;
                WindowState::Calls { next: 0, filled: 0, failed: vec![0; bytes], slow: vec![0; bytes] }
            }
            WindowConfig::Time { buckets, .. } => {
                WindowState::Time { buckets: vec![Bucket::default(); buckets as usize] }
            }
        }
    }

    // ---- decisions ----

    /// Decides whether a request may go to the upstream.
    pub fn admit(&self, st: &mut StoredBreaker, now: Nanos) -> (Admission, Option<Transition>) {
        self.clamp_to_clock(st, now);
        match st.phase {
            Phase::Closed => (Admission::Admitted(st.ticket(false)), None),
            Phase::Open { until } if now < until => {
                (Admission::Rejected { retry_after: until.saturating_sub(now) }, None)
            }
            Phase::Open { .. } => {
                let t = self.to_half_open(st, now);
                (self.admit_probe(st, now), Some(t))
            }
            Phase::HalfOpen { since, admitted, .. } => {
                if admitted >= self.half_open_calls && now.saturating_sub(since) >= self.open_for {
                    // Probes were lost (never reported): start a new round.
                    let t = self.to_half_open(st, now);
                    return (self.admit_probe(st, now), Some(t));
                }
                (self.admit_probe(st, now), None)
            }
        }
    }

    /// After the wall clock stepped back, an open breaker's `until` may lie further ahead than
    /// `open_for`, and a half-open round may have started "in the future": either would hold the
    /// breaker for as long as the step. Both are brought back within `open_for` of `now`.
    fn clamp_to_clock(&self, st: &mut StoredBreaker, now: Nanos) {
        match &mut st.phase {
            Phase::Open { until } => *until = (*until).min(now.saturating_add(self.open_for)),
            Phase::HalfOpen { since, .. } => *since = (*since).min(now),
            Phase::Closed => {}
        }
    }

    fn admit_probe(&self, st: &mut StoredBreaker, now: Nanos) -> Admission {
        if let Phase::HalfOpen { since, admitted, .. } = &mut st.phase {
            if *admitted < self.half_open_calls {
                *admitted = admitted.saturating_add(1);
                return Admission::Admitted(Ticket { generation: st.generation, probe: true });
            }
            let retry_after = since.saturating_add(self.open_for).saturating_sub(now).max(1);
            return Admission::Rejected { retry_after };
        }
        Admission::Rejected { retry_after: self.open_for }
    }

    /// Records the outcome of an admitted call. `failed` is the caller's classification
    /// (`failure_on`); slowness is judged here from `duration`.
    pub fn record(
        &self,
        st: &mut StoredBreaker,
        now: Nanos,
        ticket: Ticket,
        failed: bool,
        duration: Nanos,
    ) -> Option<Transition> {
        if ticket.generation != st.generation {
            return None; // admitted under an earlier phase: stale
        }
        let slow = self.slow.is_some_and(|(limit, _)| duration > limit);
        match st.phase {
            Phase::Closed => {
                self.push(&mut st.window, now, failed, slow);
                let c = self.recorded_counts(&st.window);
                (c.calls >= self.minimum_calls && self.over_threshold(c)).then(|| {
                    let mut t = self.to_open(st, now);
                    t.window = Some(c);
                    t
                })
            }
            Phase::HalfOpen { .. } if ticket.probe && (failed || slow) => Some(self.to_open(st, now)),
            Phase::HalfOpen { ref mut succeeded, .. } if ticket.probe => {
                *succeeded = succeeded.saturating_add(1);
                (*succeeded >= self.half_open_calls).then(|| self.to_closed(st))
            }
            Phase::HalfOpen { .. } | Phase::Open { .. } => None,
        }
    }

    fn over_threshold(&self, c: WindowCounts) -> bool {
        let calls = u64::from(c.calls);
        // u32 counts times a percentage: far below u64::MAX.
        let at_least = |part: u32, rate: u32| {
            u64::from(part).saturating_mul(100) >= u64::from(rate).saturating_mul(calls)
        };
        let failing = at_least(c.failed, self.failure_rate);
        let slow = self.slow.is_some_and(|(_, rate)| at_least(c.slow, rate));
        failing || slow
    }

    // ---- transitions, one function each ----

    fn transition(st: &mut StoredBreaker, to: Phase) -> Transition {
        let from = st.phase;
        st.phase = to;
        st.generation = st.generation.wrapping_add(1);
        Transition { from, to, window: None }
    }

    /// Closed or HalfOpen → Open, for `open_for`.
    fn to_open(&self, st: &mut StoredBreaker, now: Nanos) -> Transition {
        st.window = self.empty_window();
        Self::transition(st, Phase::Open { until: now.saturating_add(self.open_for) })
    }

    /// Open → HalfOpen (or a fresh HalfOpen round).
    fn to_half_open(&self, st: &mut StoredBreaker, now: Nanos) -> Transition {
        Self::transition(st, Phase::HalfOpen { since: now, admitted: 0, succeeded: 0 })
    }

    /// HalfOpen → Closed, with an empty window.
    fn to_closed(&self, st: &mut StoredBreaker) -> Transition {
        st.window = self.empty_window();
        Self::transition(st, Phase::Closed)
    }

    // ---- the window ----

    fn push(&self, w: &mut WindowState, now: Nanos, failed: bool, slow: bool) {
        match (w, self.window) {
            (WindowState::Calls { next, filled, failed: f, slow: s }, WindowConfig::Calls(n)) => {
                set_bit(f, *next, failed);
                set_bit(s, *next, slow);
                *next = next.saturating_add(1).checked_rem(n).unwrap_or(0);
                *filled = filled.saturating_add(1).min(n);
            }
            (WindowState::Time { buckets }, WindowConfig::Time { bucket, buckets: count }) => {
                let epoch = now.checked_div(bucket).unwrap_or(0);
                if epoch.saturating_add(u64::from(count)) <= time_totals(buckets, count).epoch {
                    // Older than the window that the newest bucket ends: the wall clock stepped
                    // back by more than the window. Ignoring the outcome would leave the breaker
                    // blind until the clock caught up; the window starts over instead.
                    buckets.fill(Bucket::default());
                }
                let slot = epoch.checked_rem(u64::from(count)).unwrap_or(0) as usize;
                if let Some(b) = buckets.get_mut(slot) {
                    if b.epoch != epoch {
                        *b = Bucket { epoch, ..Bucket::default() };
                    }
                    *b = b.with_call(failed, slow);
                }
            }
            _ => {}
        }
    }

    /// The calls currently in the window.
    pub fn counts(&self, st: &StoredBreaker, now: Nanos) -> WindowCounts {
        self.window_counts(&st.window, now)
    }

    /// The window a recorded outcome is judged by: a time window ends at its newest bucket (the
    /// outcome's own, unless another worker's clock ran a little ahead).
    fn recorded_counts(&self, w: &WindowState) -> WindowCounts {
        match (w, self.window) {
            (WindowState::Time { buckets }, WindowConfig::Time { buckets: count, .. }) => {
                time_totals(buckets, count).counts()
            }
            _ => self.window_counts(w, 0),
        }
    }

    fn window_counts(&self, w: &WindowState, now: Nanos) -> WindowCounts {
        match (w, self.window) {
            (WindowState::Calls { filled, failed, slow, .. }, _) => WindowCounts {
                calls: *filled,
                failed: failed.iter().map(|b| b.count_ones()).sum(),
                slow: slow.iter().map(|b| b.count_ones()).sum(),
            },
            (WindowState::Time { buckets }, WindowConfig::Time { bucket, buckets: count }) => {
                let current = now.checked_div(bucket).unwrap_or(0);
                let oldest = current.saturating_sub(u64::from(count).saturating_sub(1));
                buckets.iter().filter(|b| b.calls > 0 && b.epoch >= oldest && b.epoch <= current).fold(
                    WindowCounts::default(),
                    |acc, b| WindowCounts {
                        calls: acc.calls.saturating_add(b.calls),
                        failed: acc.failed.saturating_add(b.failed),
                        slow: acc.slow.saturating_add(b.slow),
                    },
                )
            }
            _ => WindowCounts::default(),
        }
    }

    // ---- shared-data encoding ----

    pub fn encode(&self, st: &StoredBreaker) -> Vec<u8> {
        let window = match &st.window {
            WindowState::Calls { failed, slow, .. } => {
                failed.len().saturating_add(slow.len()).saturating_add(8)
            }
            WindowState::Time { buckets } => buckets.len().saturating_add(1).saturating_mul(BUCKET_BYTES),
        };
        // Generation (4), phase (at most 1 + 8 + 4 + 4), window kind (1), window.
        let mut w = ByteWriter::sized(TAG, window.saturating_add(4 + 17 + 1));
        w.u32(st.generation);
        match st.phase {
            Phase::Closed => w.u8(0),
            Phase::Open { until } => w.u8(1).u64(until),
            Phase::HalfOpen { since, admitted, succeeded } => w.u8(2).u64(since).u32(admitted).u32(succeeded),
        };
        match &st.window {
            WindowState::Calls { next, filled, failed, slow } => {
                w.u8(0).u32(*next).u32(*filled).bytes(failed).bytes(slow);
            }
            WindowState::Time { buckets } => {
                w.u8(TIME_WITH_TOTALS);
                let count = buckets.len().try_into().unwrap_or(u32::MAX);
                for b in std::iter::once(time_totals(buckets, count)).chain(buckets.iter().copied()) {
                    w.u64(b.epoch).u32(b.calls).u32(b.failed).u32(b.slow);
                }
            }
        }
        w.finish()
    }

    /// Reads a state; None when the bytes are foreign or were written for another window shape
    /// (the configuration changed), in which case callers start from [`Self::new_state`].
    pub fn decode(&self, bytes: &[u8]) -> Option<StoredBreaker> {
        let mut r = ByteReader::with_tag(bytes, TAG)?;
        let generation = r.u32()?;
        let phase = match r.u8()? {
            0 => Phase::Closed,
            1 => Phase::Open { until: r.u64()? },
            2 => Phase::HalfOpen { since: r.u64()?, admitted: r.u32()?, succeeded: r.u32()? },
            _ => return None,
        };
        let window = match (r.u8()?, self.window) {
            (0, WindowConfig::Calls(n)) => {
                let (next, filled) = (r.u32()?, r.u32()?);
                let len = n.div_ceil(8) as usize;
                let failed = r.bytes(len)?.to_vec();
                let slow = r.bytes(len)?.to_vec();
                if next >= n || filled > n {
                    return None;
                }
                WindowState::Calls { next, filled, failed, slow }
            }
            (kind @ (TIME_BUCKETS_ONLY | TIME_WITH_TOTALS), WindowConfig::Time { buckets: count, .. }) => {
                let mut read =
                    || Some(Bucket { epoch: r.u64()?, calls: r.u32()?, failed: r.u32()?, slow: r.u32()? });
                let totals = if kind == TIME_WITH_TOTALS { Some(read()?) } else { None };
                let mut buckets = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    buckets.push(read()?);
                }
                // Totals that disagree with their buckets are damage: start over.
                if totals.is_some_and(|t| t != time_totals(&buckets, count)) {
                    return None;
                }
                WindowState::Time { buckets }
            }
            _ => return None,
        };
        r.done().then_some(StoredBreaker { generation, phase, window })
    }

    fn load(&self, bytes: Option<&[u8]>) -> StoredBreaker {
        bytes.and_then(|b| self.decode(b)).unwrap_or_else(|| self.new_state())
    }

    /// The generation of a well-formed closed state with a window of this configuration's shape,
    /// read without decoding the window: the per-request hot path (a closed breaker admits
    /// without changing anything; recording touches one bucket or one bit).
    fn closed_generation(&self, bytes: &[u8]) -> Option<u32> {
        let mut r = ByteReader::with_tag(bytes, TAG)?;
        let generation = r.u32()?;
        let (kind, window_bytes) = match self.window {
            // Window sizes are validated (at most 10,000 calls or buckets): no overflow.
            WindowConfig::Calls(n) => (
                0,
                (n.div_ceil(8) as usize)
                    .saturating_mul(2)
                    .saturating_add(CALLS_BITMAPS_AT - CLOSED_WINDOW_AT),
            ),
            WindowConfig::Time { buckets, .. } => {
                (TIME_WITH_TOTALS, (buckets as usize).saturating_add(1).saturating_mul(BUCKET_BYTES))
            }
        };
        let shaped =
            r.u8()? == 0 && r.u8()? == kind && bytes.len() == window_bytes.saturating_add(CLOSED_WINDOW_AT);
        shaped.then_some(generation)
    }

    /// [`Self::admit`] on shared-data bytes, for [`super::store::update`]; writes only on change.
    pub fn admit_bytes(
        &self,
        bytes: Option<&[u8]>,
        now: Nanos,
    ) -> ((Admission, Option<Transition>, Phase), Option<Vec<u8>>) {
        if let Some(generation) = bytes.and_then(|b| self.closed_generation(b)) {
            return ((Admission::Admitted(Ticket { generation, probe: false }), None, Phase::Closed), None);
        }
        let mut st = self.load(bytes);
        let before = st.clone();
        let (admission, transition) = self.admit(&mut st, now);
        let write = (st != before || bytes.is_none()).then(|| self.encode(&st));
        ((admission, transition, st.phase), write)
    }

    /// [`Self::record`] on shared-data bytes.
    pub fn record_bytes(
        &self,
        bytes: Option<&[u8]>,
        now: Nanos,
        ticket: Ticket,
        failed: bool,
        duration: Nanos,
    ) -> ((Option<Transition>, Phase), Option<Vec<u8>>) {
        if let Some(b) = bytes
            && let Some(written) = self.record_closed_in_place(b, now, ticket, failed, duration)
        {
            return ((None, Phase::Closed), written);
        }
        let mut st = self.load(bytes);
        let before = st.clone();
        let transition = self.record(&mut st, now, ticket, failed, duration);
        let write = (st != before).then(|| self.encode(&st));
        ((transition, st.phase), write)
    }
}

/// Where a closed state's window starts: tag, generation (4), phase (1), window kind (1).
const CLOSED_WINDOW_AT: usize = 7;
/// One encoded time bucket: epoch (8), calls, failed, slow (4 each).
const BUCKET_BYTES: usize = 20;
/// Window kinds of a time window: the buckets alone (written by builds before the totals; still
/// read, so that an upgrade keeps the window), or the window's totals, then the buckets. The
/// totals are a bucket too: the newest epoch with calls, and the counts of the `count` epochs
/// that end there.
const TIME_BUCKETS_ONLY: u8 = 1;
const TIME_WITH_TOTALS: u8 = 2;

/// The totals of a time window that ends at its newest bucket with calls (epoch 0 when none has).
fn time_totals(buckets: &[Bucket], count: u32) -> Bucket {
    let newest = buckets.iter().filter(|b| b.calls > 0).map(|b| b.epoch).max().unwrap_or(0);
    let oldest = newest.saturating_add(1).saturating_sub(u64::from(count));
    buckets.iter().filter(|b| b.calls > 0 && b.epoch >= oldest).fold(
        Bucket { epoch: newest, ..Bucket::default() },
        |t, b| Bucket {
            epoch: newest,
            calls: t.calls.saturating_add(b.calls),
            failed: t.failed.saturating_add(b.failed),
            slow: t.slow.saturating_add(b.slow),
        },
    )
}

impl Bucket {
    fn counts(self) -> WindowCounts {
        WindowCounts { calls: self.calls, failed: self.failed, slow: self.slow }
    }

    /// The bucket with one more call.
    fn with_call(self, failed: bool, slow: bool) -> Bucket {
        Bucket {
            calls: self.calls.saturating_add(1),
            failed: self.failed.saturating_add(u32::from(failed)),
            slow: self.slow.saturating_add(u32::from(slow)),
            ..self
        }
    }
}

impl BreakerConfig {
    /// [`Self::record`] for a closed breaker, on the encoded bytes: one bucket or one bit updated,
    /// the window counted in place; Some(None) when nothing changed (a full ring taking the same
    /// outcome as the one it drops). None when the state is not that, the ticket is stale, or the
    /// call opens the breaker: the full path then decides.
    fn record_closed_in_place(
        &self,
        bytes: &[u8],
        now: Nanos,
        ticket: Ticket,
        failed: bool,
        duration: Nanos,
    ) -> Option<Option<Vec<u8>>> {
        if self.closed_generation(bytes)? != ticket.generation {
            return None;
        }
        let slow = self.slow.is_some_and(|(limit, _)| duration > limit);
        let mut out = bytes.to_vec();
        let (c, changed) = match self.window {
            WindowConfig::Calls(n) => push_call_in_place(&mut out, n, failed, slow)?,
            WindowConfig::Time { bucket, buckets } => {
                push_bucket_in_place(&mut out, now, bucket, buckets, failed, slow)?
            }
        };
        let opens = c.calls >= self.minimum_calls && self.over_threshold(c);
        (!opens).then_some(changed.then_some(out))
    }
}

/// Where a closed state's call bitmaps start: after next (4) and filled (4).
const CALLS_BITMAPS_AT: usize = CLOSED_WINDOW_AT + 8;

/// Pushes one outcome into an encoded ring of the last `n` calls; the counts after it, and whether
/// the bytes changed.
fn push_call_in_place(out: &mut [u8], n: u32, failed: bool, slow: bool) -> Option<(WindowCounts, bool)> {
    let len = n.div_ceil(8) as usize;
    let mut r = ByteReader::new(out.get(CLOSED_WINDOW_AT..CALLS_BITMAPS_AT)?);
    let (next, filled) = (r.u32()?, r.u32()?);
    if next >= n || filled > n {
        return None;
    }
    let (head, bitmaps) = out.split_at_mut(CALLS_BITMAPS_AT);
    let (failed_bits, slow_bits) = bitmaps.split_at_mut_checked(len)?;
    let changed =
        n > 1 || filled < n || get_bit(failed_bits, next) != failed || get_bit(slow_bits, next) != slow;
    set_bit(failed_bits, next, failed);
    set_bit(slow_bits, next, slow);
    let counters = head.get_mut(CLOSED_WINDOW_AT..)?;
    counters.get_mut(..4)?.copy_from_slice(&next.saturating_add(1).checked_rem(n).unwrap_or(0).to_le_bytes());
    let filled = filled.saturating_add(1).min(n);
    counters.get_mut(4..8)?.copy_from_slice(&filled.to_le_bytes());
    let ones = |bits: &[u8]| bits.iter().map(|b| b.count_ones()).sum::<u32>();
    Some((WindowCounts { calls: filled, failed: ones(failed_bits), slow: ones(slow_bits) }, changed))
}

/// Adds one outcome to the current bucket of an encoded time window and keeps its totals: the
/// buckets that fell out of the window since its newest one are taken off (none or one, unless
/// the breaker was idle), so the window is not summed at every call. The counts after it, and
/// whether the bytes changed (not for an outcome older than the window).
fn push_bucket_in_place(
    out: &mut [u8],
    now: Nanos,
    bucket: Nanos,
    count: u32,
    failed: bool,
    slow: bool,
) -> Option<(WindowCounts, bool)> {
    let epoch = now.checked_div(bucket)?;
    let count = u64::from(count);
    let (totals_at, buckets) = out.get_mut(CLOSED_WINDOW_AT..)?.split_at_mut_checked(BUCKET_BYTES)?;
    let mut t = read_bucket(totals_at)?;
    if epoch.saturating_add(count) <= t.epoch {
        // The clock stepped back by more than the window: start the window over (as `push`).
        buckets.fill(0);
        t = Bucket { epoch, ..Bucket::default() };
    }
    // A slot's byte range: count (validated, ≤ 10,000) buckets of BUCKET_BYTES.
    let slot = |epoch: u64| {
        let at = (epoch.checked_rem(count).unwrap_or(0) as usize).saturating_mul(BUCKET_BYTES);
        at..at.saturating_add(BUCKET_BYTES)
    };
    if epoch > t.epoch {
        let (old_oldest, new_oldest) =
            (t.epoch.saturating_add(1).saturating_sub(count), epoch.saturating_add(1).saturating_sub(count));
        if new_oldest.saturating_sub(old_oldest) >= count {
            t = Bucket::default();
        } else {
            for gone in old_oldest..new_oldest {
                let b = read_bucket(buckets.get(slot(gone))?)?;
                if b.calls > 0 && b.epoch == gone {
                    t.calls = t.calls.saturating_sub(b.calls);
                    t.failed = t.failed.saturating_sub(b.failed);
                    t.slow = t.slow.saturating_sub(b.slow);
                }
            }
        }
        t.epoch = epoch;
    }
    let at = buckets.get_mut(slot(epoch))?;
    let mut b = read_bucket(at)?;
    if b.epoch != epoch {
        b = Bucket { epoch, ..Bucket::default() };
    }
    write_bucket(at, b.with_call(failed, slow));
    let t = t.with_call(failed, slow);
    write_bucket(totals_at, t);
    Some((t.counts(), true))
}

fn read_bucket(b: &[u8]) -> Option<Bucket> {
    let mut r = ByteReader::new(b);
    Some(Bucket { epoch: r.u64()?, calls: r.u32()?, failed: r.u32()?, slow: r.u32()? })
}

fn write_bucket(out: &mut [u8], b: Bucket) {
    let (epoch, counts) = out.split_at_mut(8);
    epoch.copy_from_slice(&b.epoch.to_le_bytes());
    for (dst, v) in counts.chunks_exact_mut(4).zip([b.calls, b.failed, b.slow]) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

impl StoredBreaker {
    pub fn phase(&self) -> Phase {
        self.phase
    }
    fn ticket(&self, probe: bool) -> Ticket {
        Ticket { generation: self.generation, probe }
    }
}

fn get_bit(bits: &[u8], i: u32) -> bool {
    bits.get((i / 8) as usize).is_some_and(|byte| byte & (1u8 << (i % 8)) != 0)
}

fn set_bit(bits: &mut [u8], i: u32, on: bool) {
    if let Some(byte) = bits.get_mut((i / 8) as usize) {
        let mask = 1u8 << (i % 8);
        if on { *byte |= mask } else { *byte &= !mask }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_log_what_they_did() {
        let open = Phase::Open { until: 5 };
        let half = Phase::HalfOpen { since: 1, admitted: 0, succeeded: 0 };
        let line = |from, to, window| Transition { from, to, window }.log_line("p");
        assert_eq!(
            line(Phase::Closed, open, Some(WindowCounts { calls: 20, failed: 11, slow: 3 })),
            "breakwater: breaker transition policy=p from=closed to=open calls=20 failed=11 slow=3 \
             (failure rate 55%, slow-call rate 15% of the window)"
        );
        assert!(line(open, half, None).ends_with("from=open to=half_open (open_for is over: probing)"));
        assert!(line(half, open, None).ends_with("from=half_open to=open (a probe failed)"));
        assert!(line(half, Phase::Closed, None).ends_with("to=closed (the probes succeeded)"));
    }
    use crate::model::{CircuitBreaker, Duration, SlowCall};
    use proptest::prelude::*;

    const MS: Nanos = 1_000_000;

    fn config(window: Window, minimum_calls: u32, failure_rate: u8, half_open_calls: u32) -> BreakerConfig {
        BreakerConfig::from_model(&CircuitBreaker {
            window,
            minimum_calls,
            failure_rate,
            slow_call: Some(SlowCall { duration: Duration::from_millis(100), rate: 80 }),
            failure_on: model::default_failure_on(),
            open_for: Duration::from_millis(1000),
            half_open_calls,
            response: model::default_breaker_response(),
        })
    }

    fn call(c: &BreakerConfig, st: &mut StoredBreaker, now: Nanos, failed: bool) -> Option<Transition> {
        match c.admit(st, now).0 {
            Admission::Admitted(t) => c.record(st, now, t, failed, MS),
            Admission::Rejected { .. } => None,
        }
    }

    #[test]
    fn full_lifecycle() {
        let c = config(Window::Calls(10), 4, 50, 2);
        let mut st = c.new_state();
        // Three failures: below minimum_calls, stays closed.
        for _ in 0..3 {
            assert_eq!(call(&c, &mut st, 0, true), None);
        }
        // Fourth call: 4 calls, 100% failing: opens.
        let t = call(&c, &mut st, 0, true).unwrap();
        assert_eq!(t.to, Phase::Open { until: 1000 * MS });
        // Open: rejected with the time left.
        assert_eq!(c.admit(&mut st, 400 * MS).0, Admission::Rejected { retry_after: 600 * MS });
        // After open_for: two probes, a third is rejected.
        let (a1, t1) = c.admit(&mut st, 1000 * MS);
        assert_eq!(t1.map(|t| t.to.state().as_str()), Some("half_open"));
        let (a2, _) = c.admit(&mut st, 1000 * MS);
        assert!(matches!(c.admit(&mut st, 1000 * MS).0, Admission::Rejected { .. }));
        let (Admission::Admitted(p1), Admission::Admitted(p2)) = (a1, a2) else { panic!() };
        assert_eq!(c.record(&mut st, 1001 * MS, p1, false, MS), None);
        // A failed second probe re-opens.
        let t = c.record(&mut st, 1002 * MS, p2, true, MS).unwrap();
        assert_eq!(t.to, Phase::Open { until: 2002 * MS });
        // Next round: both succeed → closed.
        let (Admission::Admitted(p1), _) = c.admit(&mut st, 2002 * MS) else { panic!() };
        let (Admission::Admitted(p2), _) = c.admit(&mut st, 2002 * MS) else { panic!() };
        assert_eq!(c.record(&mut st, 2003 * MS, p1, false, MS), None);
        assert_eq!(c.record(&mut st, 2003 * MS, p2, false, MS).map(|t| t.to), Some(Phase::Closed));
        assert_eq!(c.counts(&st, 2003 * MS), WindowCounts::default());
    }

    #[test]
    fn failure_rate_threshold_is_inclusive_and_counts_successes() {
        let c = config(Window::Calls(100), 10, 50, 1);
        let mut st = c.new_state();
        for i in 0..9 {
            assert_eq!(call(&c, &mut st, 0, i % 2 == 0), None); // 5 of 9 failing, below minimum
        }
        assert!(call(&c, &mut st, 0, false).is_some()); // 5 of 10 = 50%: opens
    }

    #[test]
    fn count_window_forgets_old_calls() {
        let c = config(Window::Calls(4), 4, 75, 1);
        let mut st = c.new_state();
        for failed in [true, true, false, false, false, false] {
            assert_eq!(call(&c, &mut st, 0, failed), None);
        }
        // Window now holds 4 successes; two failures make 2/4 = 50% < 75%.
        assert_eq!(call(&c, &mut st, 0, true), None);
        assert_eq!(call(&c, &mut st, 0, true), None);
        assert!(call(&c, &mut st, 0, true).is_some()); // 3/4 = 75%
    }

    #[test]
    fn time_window_expires_old_buckets() {
        let c = config(Window::Time(Duration::from_millis(1000)), 5, 50, 1);
        let mut st = c.new_state();
        for _ in 0..4 {
            call(&c, &mut st, 0, true);
        }
        // 1.5 s later the failures are out of the window: 1 failure of 5 does not open...
        for _ in 0..4 {
            assert_eq!(call(&c, &mut st, 1500 * MS, false), None);
        }
        assert_eq!(call(&c, &mut st, 1500 * MS, true), None);
        assert_eq!(c.counts(&st, 1500 * MS), WindowCounts { calls: 5, failed: 1, slow: 0 });
    }

    #[test]
    fn slow_calls_open_the_breaker() {
        let c = config(Window::Calls(10), 5, 100, 1);
        let mut st = c.new_state();
        let mut last = None;
        for _ in 0..5 {
            let Admission::Admitted(t) = c.admit(&mut st, 0).0 else { panic!() };
            last = c.record(&mut st, 0, t, false, 150 * MS);
        }
        assert_eq!(last.map(|t| t.to.state().as_str()), Some("open"));
    }

    #[test]
    fn stale_outcomes_are_ignored() {
        let c = config(Window::Calls(10), 1, 100, 1);
        let mut st = c.new_state();
        let Admission::Admitted(early) = c.admit(&mut st, 0).0 else { panic!() };
        call(&c, &mut st, 0, true); // opens
        let Admission::Admitted(probe) = c.admit(&mut st, 1000 * MS).0 else { panic!() };
        // The early call finishes successfully now: must not count as a probe.
        assert_eq!(c.record(&mut st, 1000 * MS, early, false, MS), None);
        assert!(matches!(st.phase, Phase::HalfOpen { succeeded: 0, .. }));
        assert!(c.record(&mut st, 1000 * MS, probe, false, MS).is_some());
    }

    #[test]
    fn lost_probes_do_not_wedge_half_open() {
        let c = config(Window::Calls(10), 1, 100, 1);
        let mut st = c.new_state();
        call(&c, &mut st, 0, true);
        assert!(matches!(c.admit(&mut st, 1000 * MS).0, Admission::Admitted(_))); // never reported
        assert!(matches!(c.admit(&mut st, 1500 * MS).0, Admission::Rejected { .. }));
        assert!(matches!(c.admit(&mut st, 2000 * MS).0, Admission::Admitted(_)));
    }

    #[test]
    fn encoding_round_trips_and_refuses_foreign_shapes() {
        let c = config(Window::Calls(100), 5, 50, 2);
        let mut st = c.new_state();
        for i in 0..30 {
            call(&c, &mut st, i * MS, i % 3 == 0);
        }
        let bytes = c.encode(&st);
        assert_eq!(c.decode(&bytes), Some(st));
        let other = config(Window::Calls(50), 5, 50, 2);
        assert_eq!(other.decode(&bytes), None);
        let t = config(Window::Time(Duration::from_millis(10_000)), 5, 50, 2);
        let st = t.new_state();
        assert_eq!(t.decode(&t.encode(&st)), Some(st));
        // tag, generation, phase, window kind, next, filled, two 13-byte bitmaps
        assert_eq!(c.encode(&c.new_state()).len(), 1 + 4 + 1 + 1 + 4 + 4 + 13 + 13);
    }

    #[test]
    fn time_windows_keep_totals_and_read_the_format_without_them() {
        let c = config(Window::Time(Duration::from_millis(1_000)), 100, 50, 2);
        let mut st = c.new_state();
        for i in 0..25 {
            call(&c, &mut st, i * 50 * MS, i % 5 == 0);
        }
        let bytes = c.encode(&st);
        // tag, generation, phase, kind, then the totals and the 10 buckets of 100 ms.
        assert_eq!(bytes.len(), CLOSED_WINDOW_AT + BUCKET_BYTES * 11);
        assert_eq!(bytes[CLOSED_WINDOW_AT - 1], TIME_WITH_TOTALS);
        let totals = read_bucket(&bytes[CLOSED_WINDOW_AT..CLOSED_WINDOW_AT + BUCKET_BYTES]).unwrap();
        // Calls at 0..1200 ms; the window ending at bucket 12 (1200 ms) holds 300..1200 ms.
        assert_eq!((totals.epoch, totals.counts()), (12, WindowCounts { calls: 19, failed: 3, slow: 0 }));
        assert_eq!(totals.counts(), c.counts(&st, 1200 * MS));

        // The same state as builds before the totals wrote it: still read, and written back
        // with totals at the next outcome.
        let mut old = bytes[..CLOSED_WINDOW_AT].to_vec();
        old[CLOSED_WINDOW_AT - 1] = TIME_BUCKETS_ONLY;
        old.extend_from_slice(&bytes[CLOSED_WINDOW_AT + BUCKET_BYTES..]);
        assert_eq!(c.decode(&old), Some(st.clone()));
        let Admission::Admitted(ticket) = c.admit_bytes(Some(&old), 1200 * MS).0.0 else { panic!("closed") };
        let (_, written) = c.record_bytes(Some(&old), 1200 * MS, ticket, false, MS);
        let mut expected = st.clone();
        c.record(&mut expected, 1200 * MS, ticket, false, MS);
        assert_eq!(written, Some(c.encode(&expected)));

        // Totals that disagree with the buckets are damage.
        let mut damaged = bytes.clone();
        damaged[CLOSED_WINDOW_AT + 8] ^= 1;
        assert_eq!(c.decode(&damaged), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Call { failed: bool, slow: bool },
        Wait(u64),
        Back(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<bool>(), proptest::bool::weighted(0.1)).prop_map(|(failed, slow)| Op::Call { failed, slow }),
            1 => (0u64..1500).prop_map(Op::Wait),
        ]
    }

    /// The decisions and bytes of the full path (decode, decide, encode), for the fast paths to
    /// agree with.
    fn full_admit(
        c: &BreakerConfig,
        bytes: &[u8],
        now: Nanos,
    ) -> ((Admission, Option<Transition>, Phase), Option<Vec<u8>>) {
        let mut st = c.load(Some(bytes));
        let before = st.clone();
        let (admission, transition) = c.admit(&mut st, now);
        ((admission, transition, st.phase), (st != before).then(|| c.encode(&st)))
    }

    fn full_record(
        c: &BreakerConfig,
        bytes: &[u8],
        now: Nanos,
        ticket: Ticket,
        failed: bool,
        duration: Nanos,
    ) -> ((Option<Transition>, Phase), Option<Vec<u8>>) {
        let mut st = c.load(Some(bytes));
        let before = st.clone();
        let transition = c.record(&mut st, now, ticket, failed, duration);
        ((transition, st.phase), (st != before).then(|| c.encode(&st)))
    }

    proptest! {
        /// The hot paths on encoded bytes (a closed breaker's admission, one bucket or one bit
        /// recorded in place) decide and write exactly what decoding, deciding and encoding would.
        /// Time may also step back (another worker's clock, a little behind), by less than a
        /// bucket or by more than the window.
        #[test]
        fn fast_paths_agree_with_the_full_path(
            window in prop_oneof![(1u32..40).prop_map(Window::Calls), (1u64..12).prop_map(|s| Window::Time(Duration::from_millis(s * 1000)))],
            minimum_calls in 1u32..30,
            failure_rate in 1u8..=100,
            ops in proptest::collection::vec(prop_oneof![8 => op(), 1 => (0u64..2500).prop_map(Op::Back)], 1..300),
        ) {
            let minimum_calls = match window { Window::Calls(n) => minimum_calls.min(n), _ => minimum_calls };
            let c = config(window, minimum_calls, failure_rate, 2);
            let mut bytes = c.encode(&c.new_state());
            let mut now = 0;
            for op in ops {
                match op {
                    Op::Wait(ms) => now += ms * MS * 7,
                    Op::Back(ms) => now = now.saturating_sub(ms * MS * 7),
                    Op::Call { failed, slow } => {
                        let fast = c.admit_bytes(Some(&bytes), now);
                        prop_assert_eq!(&fast, &full_admit(&c, &bytes, now));
                        if let Some(w) = fast.1 { bytes = w; }
                        let Admission::Admitted(ticket) = fast.0.0 else { continue };
                        let duration = if slow { 150 * MS } else { MS };
                        let fast = c.record_bytes(Some(&bytes), now, ticket, failed, duration);
                        prop_assert_eq!(&fast, &full_record(&c, &bytes, now, ticket, failed, duration));
                        if let Some(w) = fast.1 { bytes = w; }
                    }
                }
            }
        }
    }

    proptest! {
        /// Issue 20, defect 10: whatever steps the wall clock takes (back or forward, by any
        /// amount), a breaker left alone for `open_for` admits a call again (an open breaker is
        /// never stuck for as long as a backward step), and a closed one still counts outcomes
        /// (a time window does not ignore every call until the clock has caught up).
        #[test]
        fn clock_steps_never_wedge_a_breaker(
            window in prop_oneof![(1u32..50).prop_map(Window::Calls), (1u64..5).prop_map(|s| Window::Time(Duration::from_millis(s * 1000)))],
            half_open_calls in 1u32..5,
            ops in proptest::collection::vec(prop_oneof![
                4 => (any::<bool>(), proptest::bool::weighted(0.1)).prop_map(|(failed, slow)| (0i64, Some((failed, slow)))),
                1 => (1i64..1500).prop_map(|ms| (ms, None)),
                1 => (-86_400_000i64..86_400_000).prop_map(|ms| (ms, None)),
            ], 1..300),
        ) {
            let minimum_calls = match window { Window::Calls(n) => n.min(5), _ => 5 };
            let c = config(window, minimum_calls, 50, half_open_calls);
            let open_for = c.open_for;
            let mut bytes = c.encode(&c.new_state());
            let mut now: Nanos = 100_000 * crate::engine::NANOS_PER_SEC;
            // A request at every step (its outcome recorded for a call, lost otherwise); the one
            // `open_for` later is admitted.
            for (step_ms, call) in ops {
                now = now.saturating_add_signed(step_ms * MS as i64);
                let ((admission, _, _), w) = c.admit_bytes(Some(&bytes), now);
                if let Some(w) = w { bytes = w; }
                if let (Admission::Admitted(ticket), Some((failed, slow))) = (admission, call) {
                    let duration = if slow { 150 * MS } else { MS };
                    if let (_, Some(w)) = c.record_bytes(Some(&bytes), now, ticket, failed, duration) { bytes = w; }
                }
                let later = now + open_for;
                let ((admission, _, phase), _) = c.admit_bytes(Some(&bytes), later);
                prop_assert!(matches!(admission, Admission::Admitted(_)), "stuck in {:?} at {}", phase, later);
            }
            // And a closed breaker still opens on failures after a step back of a day.
            let mut st = c.new_state();
            let mut t: Nanos = 100_000 * crate::engine::NANOS_PER_SEC;
            for _ in 0..minimum_calls {
                let (Admission::Admitted(ticket), _) = c.admit(&mut st, t) else { unreachable!() };
                c.record(&mut st, t, ticket, false, MS);
            }
            t -= 86_400 * crate::engine::NANOS_PER_SEC;
            let mut bytes = c.encode(&st);
            let mut opened = false;
            for _ in 0..minimum_calls * 2 {
                let ((admission, _, _), w) = c.admit_bytes(Some(&bytes), t);
                if let Some(w) = w { bytes = w; }
                let Admission::Admitted(ticket) = admission else { opened = true; break };
                let ((transition, _), w) = c.record_bytes(Some(&bytes), t, ticket, true, MS);
                if let Some(w) = w { bytes = w; }
                opened |= transition.is_some();
            }
            prop_assert!(opened, "failures after a step back were not counted");
        }

        /// The breaker closes only after `half_open_calls` successful probes since it last opened,
        /// rejects everything while open, and never opens below `minimum_calls`.
        #[test]
        fn invariants(
            window in prop_oneof![(1u32..50).prop_map(Window::Calls), (1u64..5).prop_map(|s| Window::Time(Duration::from_millis(s * 1000)))],
            minimum_calls in 1u32..20,
            failure_rate in 1u8..=100,
            half_open_calls in 1u32..5,
            ops in proptest::collection::vec(op(), 1..400),
        ) {
            let minimum_calls = match window { Window::Calls(n) => minimum_calls.min(n), _ => minimum_calls };
            let c = config(window, minimum_calls, failure_rate, half_open_calls);
            // Round-trip through bytes every step, as shared data would.
            let mut bytes = c.encode(&c.new_state());
            let mut now = 0;
            let mut probe_successes = 0;
            let mut calls_since_closed = 0u32;
            for op in ops {
                match op {
                    Op::Wait(ms) => now += ms * MS,
                    Op::Back(_) => {}
                    Op::Call { failed, slow } => {
                        let ((admission, transition, phase), w) = c.admit_bytes(Some(&bytes), now);
                        if let Some(w) = w { bytes = w; }
                        if let Some(t) = transition {
                            prop_assert!(matches!(t.from, Phase::Open { .. } | Phase::HalfOpen { .. }), "admit moved from {:?}", t.from);
                            probe_successes = 0;
                        }
                        if let Phase::Open { until } = phase {
                            prop_assert!(now < until);
                            prop_assert!(matches!(admission, Admission::Rejected { .. }), "admitted while open");
                        }
                        let Admission::Admitted(ticket) = admission else { continue };
                        let duration = if slow { 150 * MS } else { MS };
                        let ((transition, _), w) = c.record_bytes(Some(&bytes), now, ticket, failed, duration);
                        if let Some(w) = w { bytes = w; }
                        if ticket.probe && !failed && !slow { probe_successes += 1; }
                        if matches!(phase, Phase::Closed) { calls_since_closed += 1; }
                        if let Some(t) = transition {
                            match t.to {
                                Phase::Closed => {
                                    prop_assert!(probe_successes >= half_open_calls);
                                    calls_since_closed = 0;
                                }
                                Phase::Open { .. } if matches!(t.from, Phase::Closed) => {
                                    prop_assert!(calls_since_closed >= minimum_calls);
                                    calls_since_closed = 0;
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
    }
}
