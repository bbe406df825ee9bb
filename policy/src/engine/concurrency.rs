//! Concurrency limiting: a shared count of requests in flight, held on leases.
//!
//! `acquire` counts a request only below the limit; `release` gives it back and never goes below
//! zero, so a duplicated release cannot open extra slots. The filter releases exactly once per
//! acquired slot, at stream end (on_log runs for every stream: success, reset, client abort, local
//! reply). But a VM that traps, or is replaced, with streams in flight never runs their on_log:
//! a count that only those releases could lower would block the key until Envoy restarts.
//!
//! So every hold is a *lease*: the count is kept in [`BUCKETS`] buckets of acquisition time, each
//! `width` wide, and a bucket older than the window is dropped with its holds. A hold therefore
//! lasts at most `BUCKETS · width` and at least `(BUCKETS - 1) · width` (the policy's lease, see
//! [`lease_width`]); a release finds its bucket by the epoch it was acquired in, and does nothing
//! once that bucket has expired. A request that outlives its lease stops being counted (the limit
//! may then admit one more): the lease is chosen well above any request's lifetime.
//!
//! A limit with a queue (`concurrency_limit.queue`) keeps its waiting line in the same value, so
//! one atomic update decides both. Each waiter holds a ticket (handed out in arrival order, never
//! reused) and a deadline. The line is strictly first come, first served across workers: a waiter
//! takes a slot only when fewer waiters are ahead of it than slots are free, and a newcomer goes
//! straight in only when every waiter ahead of it can be served too. A waiter that is never heard
//! of again (its VM trapped) is dropped at its deadline, so it blocks the line for at most
//! `max_wait`.
//!
//! An adaptive limit (`concurrency_limit.adaptive`) keeps its controller's state there too
//! ([`super::adaptive`]): the limit a request is admitted under, and the latency sample
//! its end gives, are decided in the same update as its slot.

use super::Nanos;
use super::adaptive::{self, Gradient, Reading};
use super::codec::{ByteReader, ByteWriter};

/// Shared data written by builds before leases: one u32 count.
const COUNT_TAG: u8 = 0x43; // 'C'
const TAG: u8 = 0x4c; // 'L'
/// Holds, then the waiting line.
const QUEUE_TAG: u8 = 0x51; // 'Q'
/// Holds, the waiting line, then an adaptive limit's controller.
const ADAPTIVE_TAG: u8 = 0x41; // 'A'
/// Buckets of acquisition time.
pub const BUCKETS: u64 = 4;

/// Outcome of an acquire attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub acquired: bool,
    /// Requests in flight after this decision.
    pub in_flight: u32,
    /// The bucket the hold was counted in, for its release.
    pub epoch: u64,
}

/// The bucket width for a lease of at least `lease` nanoseconds.
pub fn lease_width(lease: Nanos) -> Nanos {
    lease.div_ceil(BUCKETS - 1).max(1)
}

/// Holds by acquisition bucket: `counts[0]` is epoch `newest`, `counts[i]` epoch `newest - i`;
/// epochs count buckets of `width` nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holds {
    width: Nanos,
    newest: u64,
    counts: [u32; BUCKETS as usize],
    /// The epochs of the stored holds no longer say when they were taken (the clock stepped back,
    /// the lease changed, or the count predates leases): a release takes from the newest bucket
    /// that holds any.
    refolded: bool,
}

impl Holds {
    fn empty(width: Nanos, epoch: u64) -> Holds {
        Holds { width, newest: epoch, counts: [0; BUCKETS as usize], refolded: false }
    }

    /// `total` holds taken "now": they last a full lease from `epoch`.
    fn folded(width: Nanos, epoch: u64, total: u32) -> Holds {
        Holds { counts: [total, 0, 0, 0], refolded: true, ..Holds::empty(width, epoch) }
    }

    fn total(&self) -> u32 {
        self.counts.iter().fold(0u32, |a, c| a.saturating_add(*c))
    }

    /// The holds as seen at epoch `now`: buckets that left the window dropped. After the wall
    /// clock stepped back, every hold moves to the current bucket (it then lasts a full lease
    /// from now, not for as long as the step).
    fn at(self, now: u64) -> Holds {
        if now < self.newest {
            return Holds::folded(self.width, now, self.total());
        }
        let shift = now.saturating_sub(self.newest);
        let mut counts = [0u32; BUCKETS as usize];
        for (i, c) in self.counts.iter().enumerate() {
            if let Some(to) = (i as u64).checked_add(shift).filter(|t| *t < BUCKETS)
                && let Some(slot) = counts.get_mut(to as usize)
            {
                *slot = *c;
            }
        }
        Holds { newest: now, counts, ..self }
    }
}

/// The bucket `now` falls in (widths come from [`lease_width`], at least 1).
fn epoch_of(now: Nanos, width: Nanos) -> u64 {
    now.checked_div(width).unwrap_or(now)
}

/// Requests waiting for a slot, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Line {
    /// The next ticket to hand out. Tickets are never reused, so a waiter whose entry was dropped
    /// cannot mistake a newer waiter's for its own.
    next: u64,
    /// (ticket, deadline), tickets ascending.
    entries: Vec<(u64, Nanos)>,
}

/// The longest any waiter waits (the language's bound on `queue.max_wait`): after the wall clock
/// steps back, a waiter whose deadline is further away than this is dropped.
pub const MAX_LINE_WAIT: Nanos = 60_000_000_000;

impl Line {
    /// Drops the waiters whose deadline has come, and (after the wall clock stepped back) those
    /// whose deadline is further than [`MAX_LINE_WAIT`] away. Whether any was dropped. The bound
    /// is the language's, not a configuration's: after a reload that lengthened `max_wait`,
    /// waiters of the old configuration must not drop the new ones.
    fn prune(&mut self, now: Nanos) -> bool {
        let before = self.entries.len();
        let latest = now.saturating_add(MAX_LINE_WAIT);
        self.entries.retain(|(_, deadline)| *deadline > now && *deadline <= latest);
        self.entries.len() != before
    }

    fn waiting(&self) -> u32 {
        u32::try_from(self.entries.len()).unwrap_or(u32::MAX)
    }

    fn position(&self, ticket: u64) -> Option<usize> {
        self.entries.iter().position(|(t, _)| *t == ticket)
    }
}

/// What bounds a key's slots: a fixed number, or an adaptive limit's controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Fixed(u32),
    Adaptive(Gradient),
}

/// A concurrency key's state: its holds, its waiting line, an adaptive limit's controller.
#[derive(Debug, Clone)]
struct State {
    holds: Holds,
    line: Line,
    gradient: Option<adaptive::State>,
}

impl State {
    /// The limit in force under `limit`: a fixed one drops a controller left by an adaptive
    /// configuration; an adaptive one starts its controller if there is none yet (whether it did
    /// is the second value).
    fn limit(&mut self, limit: Limit, now: Nanos) -> (u32, bool) {
        match limit {
            Limit::Fixed(max) => {
                self.gradient = None;
                (max, false)
            }
            Limit::Adaptive(g) => {
                let fresh = self.gradient.is_none();
                (g.limit(self.gradient.get_or_insert_with(|| g.start(now))), fresh)
            }
        }
    }

    /// Counts a slot taken under `limit`.
    fn take(&mut self, limit: Limit, epoch: u64) -> Slot {
        let in_flight = self.holds.total().saturating_add(1);
        self.holds.counts[0] = self.holds.counts[0].saturating_add(1);
        if let (Limit::Adaptive(g), Some(s)) = (limit, self.gradient.as_mut()) {
            g.admitted(s, in_flight);
        }
        Slot { acquired: true, in_flight, epoch }
    }
}

fn decode(bytes: Option<&[u8]>, width: Nanos, epoch: u64) -> State {
    let fresh = |holds| State { holds, line: Line::default(), gradient: None };
    let Some(b) = bytes else { return fresh(Holds::empty(width, epoch)) };
    let tag = match b.first() {
        Some(&t @ (QUEUE_TAG | ADAPTIVE_TAG)) => t,
        _ => TAG,
    };
    if let Some(mut r) = ByteReader::with_tag(b, tag) {
        let (stored_width, newest) = (r.u64(), r.u64());
        let counts = [r.u32(), r.u32(), r.u32(), r.u32()];
        let line = if tag == TAG { Some(Line::default()) } else { decode_line(&mut r) };
        let gradient = match tag {
            ADAPTIVE_TAG => r.bytes(adaptive::ENCODED_LEN).and_then(adaptive::decode).map(Some),
            _ => Some(None),
        };
        if let (
            Some(w),
            Some(newest),
            [Some(a), Some(b), Some(c), Some(d)],
            Some(line),
            Some(gradient),
            true,
        ) = (stored_width, newest, counts, line, gradient, r.done())
        {
            let h = Holds { width: w, newest, counts: [a, b, c, d], refolded: false };
            if w != width {
                // The lease changed (the policy's timeout did): the old epochs mean nothing now.
                return State { holds: Holds::folded(width, epoch, h.total()), line, gradient };
            }
            return State { holds: h.at(epoch), line, gradient };
        }
    }
    // A count written before leases: held from now on.
    let old = ByteReader::with_tag(b, COUNT_TAG).and_then(|mut r| {
        let n = r.u32()?;
        r.done().then_some(n)
    });
    fresh(Holds::folded(width, epoch, old.unwrap_or(0)))
}

fn decode_line(r: &mut ByteReader<'_>) -> Option<Line> {
    let next = r.u64()?;
    let n = r.u32()?;
    let mut entries = Vec::with_capacity(usize::try_from(n).ok()?.min(MAX_WAITING as usize));
    for _ in 0..n {
        entries.push((r.u64()?, r.u64()?));
    }
    Some(Line { next, entries })
}

fn encode(s: &State) -> Vec<u8> {
    let h = &s.holds;
    // A line that never handed out a ticket is left out (the layout of limits without a queue),
    // unless a controller follows it.
    let queued = s.line.next > 0 || !s.line.entries.is_empty() || s.gradient.is_some();
    let mut len = if queued { 36usize.saturating_add(s.line.entries.len().saturating_mul(16)) } else { 24 };
    let tag = match (&s.gradient, queued) {
        (Some(_), _) => {
            len = len.saturating_add(adaptive::ENCODED_LEN);
            ADAPTIVE_TAG
        }
        (None, true) => QUEUE_TAG,
        (None, false) => TAG,
    };
    let mut w = ByteWriter::sized(tag, len);
    w.u64(h.width).u64(h.newest);
    for c in h.counts {
        w.u32(c);
    }
    if queued {
        w.u64(s.line.next).u32(s.line.waiting());
        for (ticket, deadline) in &s.line.entries {
            w.u64(*ticket).u64(*deadline);
        }
    }
    if let Some(g) = &s.gradient {
        w.bytes(&adaptive::encode(g));
    }
    w.finish()
}

/// The most waiters one key's line can hold (the limit `queue.max_waiting` may name).
pub const MAX_WAITING: u32 = 1000;

/// A waiting line's bounds: at most `max_waiting` waiters, each for at most `max_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_waiting: u32,
    pub max_wait: Nanos,
}

/// A waiter's place in the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub ticket: u64,
    /// When it stops waiting.
    pub deadline: Nanos,
}

/// What [`acquire_or_wait`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The slot, if taken now.
    pub slot: Slot,
    /// Not taken, but a place in the line (taken only when asked to join).
    pub place: Option<Place>,
    /// Requests waiting after this decision.
    pub waiting: u32,
    /// An adaptive limit's controller started by this decision: its first reading.
    pub started: Option<Reading>,
}

/// How a waiter's look at the line ([`poll`]) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// Its turn came: it holds this slot now and has left the line.
    Admitted(Slot),
    /// Still waiting, with `ahead` waiters before it.
    Waiting { ahead: u32 },
    /// Its deadline came (or its entry is gone): it has left the line.
    TimedOut,
}

/// Requests in flight at `now` (leases expired are not counted).
pub fn in_flight(state: Option<&[u8]>, now: Nanos, width: Nanos) -> u32 {
    let width = width.max(1);
    decode(state, width, epoch_of(now, width)).holds.total()
}

/// Requests waiting at `now` (waiters past their deadline are not counted).
pub fn waiting(state: Option<&[u8]>, now: Nanos, width: Nanos) -> u32 {
    let width = width.max(1);
    let mut s = decode(state, width, epoch_of(now, width));
    s.line.prune(now);
    s.line.waiting()
}

/// What an adaptive limit's controller shows now (its gauges), if the state has one.
pub fn reading(state: Option<&[u8]>, g: &Gradient, now: Nanos, width: Nanos) -> Option<Reading> {
    let width = width.max(1);
    decode(state, width, epoch_of(now, width)).gradient.map(|s| g.reading(&s))
}

/// Takes a slot if fewer than `max` are held at `now`.
pub fn acquire(state: Option<&[u8]>, max: u32, now: Nanos, width: Nanos) -> (Slot, Option<Vec<u8>>) {
    let (a, bytes) = acquire_or_wait(state, Limit::Fixed(max), None, false, now, width);
    (a.slot, bytes)
}

/// Takes a slot if one is free for a newcomer: fewer than the limit held, and more free than the
/// waiters ahead need. Otherwise, with a `queue` that has room, a place in the line: joined when
/// `join` (else only reported, as shadow mode wants).
pub fn acquire_or_wait(
    state: Option<&[u8]>,
    limit: Limit,
    queue: Option<QueueLimits>,
    join: bool,
    now: Nanos,
    width: Nanos,
) -> (Admission, Option<Vec<u8>>) {
    let width = width.max(1);
    let epoch = epoch_of(now, width);
    let mut s = decode(state, width, epoch);
    let pruned = s.line.prune(now);
    let (max, fresh) = s.limit(limit, now);
    let started = match (limit, &s.gradient) {
        (Limit::Adaptive(g), Some(gs)) if fresh => Some(g.reading(gs)),
        _ => None,
    };
    let (n, waiting) = (s.holds.total(), s.line.waiting());
    let refused = |s: &State, place, waiting| {
        // Nothing taken; but holds that were re-dated (a step back, a new lease, a count from
        // before leases) are written, or their lease would start over at every decision and they
        // would never expire; and so are waiters dropped.
        let bytes = encode(s);
        let write = ((s.holds.refolded || pruned) && state != Some(bytes.as_slice())).then_some(bytes);
        let slot = Slot { acquired: false, in_flight: n, epoch };
        (Admission { slot, place, waiting, started }, write)
    };
    if n.saturating_add(waiting) >= max {
        let Some(q) = queue.filter(|q| waiting < q.max_waiting) else { return refused(&s, None, waiting) };
        let place = Place { ticket: s.line.next, deadline: now.saturating_add(q.max_wait) };
        if !join {
            return refused(&s, Some(place), waiting);
        }
        s.line.next = s.line.next.saturating_add(1);
        s.line.entries.push((place.ticket, place.deadline));
        let waiting = s.line.waiting();
        let slot = Slot { acquired: false, in_flight: n, epoch };
        return (Admission { slot, place: Some(place), waiting, started }, Some(encode(&s)));
    }
    let slot = s.take(limit, epoch);
    (Admission { slot, place: None, waiting, started }, Some(encode(&s)))
}

/// A waiter looks at the line: it takes a slot when fewer waiters are ahead of it than slots are
/// free under `limit` (the newest configuration's: after a reload, waiters from before follow it
/// as newcomers do), times out at its deadline, waits otherwise. Returns the line's length after
/// it.
pub fn poll(
    state: Option<&[u8]>,
    place: Place,
    limit: Limit,
    now: Nanos,
    width: Nanos,
) -> ((Polled, u32), Option<Vec<u8>>) {
    let width = width.max(1);
    let epoch = epoch_of(now, width);
    let mut s = decode(state, width, epoch);
    let pruned = s.line.prune(now);
    let (max, _) = s.limit(limit, now);
    let n = s.holds.total();
    let polled = match s.line.position(place.ticket) {
        None => Polled::TimedOut,
        Some(ahead) if u32::try_from(ahead).is_ok_and(|a| a < max.saturating_sub(n)) => {
            s.line.entries.remove(ahead);
            Polled::Admitted(s.take(limit, epoch))
        }
        Some(ahead) => Polled::Waiting { ahead: u32::try_from(ahead).unwrap_or(u32::MAX) },
    };
    let write = (pruned || matches!(polled, Polled::Admitted(_)) || s.holds.refolded).then(|| encode(&s));
    ((polled, s.line.waiting()), write)
}

/// A waiter leaves the line before its turn (its client went away). Returns the line's length.
pub fn leave(state: Option<&[u8]>, ticket: u64, now: Nanos, width: Nanos) -> (u32, Option<Vec<u8>>) {
    let width = width.max(1);
    let mut s = decode(state, width, epoch_of(now, width));
    let before = s.line.entries.len();
    s.line.entries.retain(|(t, _)| *t != ticket);
    let changed = s.line.entries.len() != before;
    (s.line.waiting(), changed.then(|| encode(&s)))
}

pub use super::adaptive::Sample;

/// What [`release`] left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub in_flight: u32,
    /// An adaptive limit's new reading, when the sample changed it.
    pub reading: Option<Reading>,
}

/// Gives back a slot acquired in bucket `epoch`: nothing once its lease has expired; never below
/// zero. Under an adaptive limit, a `sample` goes to its controller (whatever became of the slot);
/// none is started for it (after a reload to a fixed limit, requests admitted before it must not
/// bring the controller back).
pub fn release(
    state: Option<&[u8]>,
    epoch: u64,
    now: Nanos,
    width: Nanos,
    sample: Option<(Gradient, Sample)>,
) -> (Released, Option<Vec<u8>>) {
    let width = width.max(1);
    let mut s = decode(state, width, epoch_of(now, width));
    let mut reading = None;
    if let (Some((g, sample)), Some(state)) = (sample, s.gradient.as_mut()) {
        reading = g.finished(state, sample, now);
    }
    let h = &mut s.holds;
    let newest_held = h.counts.iter().position(|c| *c > 0);
    let bucket = if h.refolded || epoch > h.newest {
        // Its hold was re-dated with the others (or taken "after" now: the clock stepped back).
        newest_held
    } else {
        // Expired (older than the window): nothing to give back.
        h.newest.checked_sub(epoch).filter(|i| *i < BUCKETS).map(|i| i as usize)
    };
    if let Some(c) = bucket.and_then(|i| h.counts.get_mut(i))
        && *c > 0
    {
        *c = c.saturating_sub(1);
    }
    (Released { in_flight: h.total(), reading }, Some(encode(&s)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::{MemoryStore, SharedStore, update};
    use proptest::prelude::*;

    const W: Nanos = 1_000_000_000;

    /// Gives back a slot of a fixed limit.
    fn free(state: Option<&[u8]>, epoch: u64, now: Nanos, width: Nanos) -> (u32, Option<Vec<u8>>) {
        let (r, b) = release(state, epoch, now, width, None);
        (r.in_flight, b)
    }

    /// Issue 20, defect 5: holds whose release never comes (their VM trapped) expire with their
    /// lease: the key admits again within `BUCKETS · width`, and not before `(BUCKETS-1) · width`.
    #[test]
    fn lost_holds_expire_with_their_lease() {
        let s = MemoryStore::default();
        let lease = 3 * W;
        let width = lease_width(lease);
        assert!(update(&s, "c", |b| acquire(b, 1, 0, width)).unwrap().acquired);
        // Never released. Refused until the lease is over...
        assert!(!update(&s, "c", |b| acquire(b, 1, lease - 1, width)).unwrap().acquired);
        // ...and admitted once its bucket has left the window.
        let bound = BUCKETS * width;
        assert!(update(&s, "c", |b| acquire(b, 1, bound, width)).unwrap().acquired);
        assert_eq!(in_flight(s.get("c").unwrap().map(|(b, _)| b).as_deref(), bound, width), 1);
        // A release after the lease expired changes nothing.
        let slot_epoch = 0;
        assert_eq!(update(&s, "c", |b| free(b, slot_epoch, bound, width)).unwrap(), 1);
        assert_eq!(update(&s, "c", |b| free(b, bound / width, bound, width)).unwrap(), 0);
    }

    /// A stream admitted before the wall clock stepped back still gives its slot back (its epoch is
    /// "in the future" of the stored holds).
    #[test]
    fn a_release_after_a_step_back_is_counted() {
        let s = MemoryStore::default();
        let slot = update(&s, "c", |b| acquire(b, 2, 5_500, 1000)).unwrap();
        assert!(slot.acquired);
        assert_eq!(update(&s, "c", |b| free(b, slot.epoch, 3_200, 1000)).unwrap(), 0);
        // And after the lease changed (the policy's timeout did).
        let slot = update(&s, "c", |b| acquire(b, 2, 5_500, 1000)).unwrap();
        assert_eq!(in_flight(s.get("c").unwrap().map(|(b, _)| b).as_deref(), 5_500, 3000), 1);
        assert_eq!(update(&s, "c", |b| free(b, slot.epoch, 5_600, 3000)).unwrap(), 0);
    }

    /// A count from before leases that fills its key expires too: the first refused acquire
    /// writes it as a lease.
    #[test]
    fn a_full_count_from_before_leases_expires() {
        let s = MemoryStore::default();
        s.set("c", &ByteWriter::with_tag(COUNT_TAG).u32(1).finish(), 0).unwrap();
        assert!(!update(&s, "c", |b| acquire(b, 1, 10 * W, W)).unwrap().acquired);
        assert!(update(&s, "c", |b| acquire(b, 1, 14 * W, W)).unwrap().acquired);
    }

    /// Counts written by a build before leases are kept, as holds from now on.
    #[test]
    fn counts_from_before_leases_are_read() {
        let old = ByteWriter::with_tag(COUNT_TAG).u32(2).finish();
        assert_eq!(in_flight(Some(&old), 5 * W, W), 2);
        let (slot, _) = acquire(Some(&old), 3, 5 * W, W);
        assert_eq!((slot.acquired, slot.in_flight), (true, 3));
    }

    proptest! {
        /// With releases at any time within the lease and clock steps both ways, the count is
        /// the holds not yet released, and never above max; lost holds are gone after the lease.
        #[test]
        fn leases_count_what_is_held(
            max in 1u32..6,
            ops in proptest::collection::vec((0u8..4, 0u64..800), 0..200),
        ) {
            let width = lease_width(3000);
            let mut bytes: Option<Vec<u8>> = None;
            let mut now: Nanos = 1_000_000;
            let mut held: Vec<u64> = Vec::new();
            let mut latest = now;
            for (op, arg) in ops {
                if op < 2 { latest = latest.max(now); }
                match op {
                    0 => {
                        let (slot, b) = acquire(bytes.as_deref(), max, now, width);
                        if let Some(b) = b { bytes = Some(b); }
                        if slot.acquired { held.push(slot.epoch); }
                        prop_assert!(slot.in_flight <= max);
                    }
                    1 => if let Some(epoch) = held.pop() {
                        bytes = free(bytes.as_deref(), epoch, now, width).1;
                    },
                    2 => now += arg,
                    _ => now = now.saturating_sub(arg),
                }
                prop_assert!(in_flight(bytes.as_deref(), now, width) <= max);
            }
            // Left alone for a full window after the last write, every hold has expired.
            prop_assert_eq!(in_flight(bytes.as_deref(), latest + BUCKETS * width, width), 0);
        }
    }

    /// A lease far longer than the queue tests run: holds never expire in them.
    const LW: Nanos = 1000 * W;
    const Q: QueueLimits = QueueLimits { max_waiting: 2, max_wait: 50 * W };

    fn arrive(s: &MemoryStore, max: u32, now: Nanos) -> Admission {
        update(s, "c", |b| acquire_or_wait(b, Limit::Fixed(max), Some(Q), true, now, LW)).unwrap()
    }

    fn look(s: &MemoryStore, place: Place, max: u32, now: Nanos) -> (Polled, u32) {
        update(s, "c", |b| poll(b, place, Limit::Fixed(max), now, LW)).unwrap()
    }

    /// Waiters on different workers look at the line in any order: the oldest takes the slot,
    /// newcomers queue behind the line, and a full line refuses.
    #[test]
    fn the_line_is_first_come_first_served() {
        let s = MemoryStore::default();
        let held = arrive(&s, 1, 0);
        assert!(held.slot.acquired);
        let a = arrive(&s, 1, W).place.unwrap();
        let b = arrive(&s, 1, 2 * W).place.unwrap();
        let full = arrive(&s, 1, 3 * W);
        assert_eq!((full.slot.acquired, full.place, full.waiting), (false, None, 2));
        assert_eq!(waiting(s.get("c").unwrap().map(|(b, _)| b).as_deref(), 3 * W, LW), 2);
        update(&s, "c", |st| free(st, held.slot.epoch, 4 * W, LW)).unwrap();
        // The slot is free, but a newcomer may not take it from the line.
        let late = arrive(&s, 1, 4 * W);
        assert!(!late.slot.acquired && late.place.is_none());
        // b (on the other worker) looks first: a is ahead of it.
        assert_eq!(look(&s, b, 1, 4 * W), (Polled::Waiting { ahead: 1 }, 2));
        let (Polled::Admitted(slot), 1) = look(&s, a, 1, 4 * W) else { panic!("a is first") };
        assert_eq!(slot.in_flight, 1);
        assert_eq!(look(&s, b, 1, 5 * W), (Polled::Waiting { ahead: 0 }, 1));
        update(&s, "c", |st| free(st, slot.epoch, 6 * W, LW)).unwrap();
        assert!(matches!(look(&s, b, 1, 6 * W), (Polled::Admitted(_), 0)));
    }

    /// A waiter whose deadline came is out, and one that is never heard of again (its VM trapped)
    /// blocks the line until its deadline only.
    #[test]
    fn waiters_leave_at_their_deadline_or_when_they_go() {
        let s = MemoryStore::default();
        let held = arrive(&s, 1, 0);
        let lost = arrive(&s, 1, 0).place.unwrap();
        let gone = arrive(&s, 1, W).place.unwrap();
        assert_eq!(lost.deadline, Q.max_wait);
        assert_eq!(update(&s, "c", |st| leave(st, gone.ticket, 2 * W, LW)).unwrap(), 1);
        update(&s, "c", |st| free(st, held.slot.epoch, 3 * W, LW)).unwrap();
        // The lost waiter is first in line: newcomers wait behind it...
        let behind = arrive(&s, 1, 4 * W).place.unwrap();
        assert_eq!(look(&s, behind, 1, 4 * W).0, Polled::Waiting { ahead: 1 });
        // ...until its deadline.
        assert_eq!(look(&s, lost, 1, Q.max_wait).0, Polled::TimedOut);
        assert!(matches!(look(&s, behind, 1, Q.max_wait).0, Polled::Admitted(_)));
        // A waiter that looks after its deadline is out, even with a slot free.
        let s = MemoryStore::default();
        let held = arrive(&s, 1, 0);
        let late = arrive(&s, 1, 0).place.unwrap();
        update(&s, "c", |st| free(st, held.slot.epoch, W, LW)).unwrap();
        assert_eq!(look(&s, late, 1, late.deadline), (Polled::TimedOut, 0));
        assert!(arrive(&s, 1, late.deadline).slot.acquired);
    }

    /// Tickets are never handed out twice: a waiter whose entry was dropped cannot take a newer
    /// waiter's place, also after the line was empty.
    #[test]
    fn tickets_are_never_reused() {
        let s = MemoryStore::default();
        let held = arrive(&s, 1, 0);
        let first = arrive(&s, 1, 0).place.unwrap();
        // Dropped at its deadline by someone else's decision.
        let second = arrive(&s, 1, first.deadline).place.unwrap();
        assert_ne!(second.ticket, first.ticket);
        assert_eq!(look(&s, first, 1, first.deadline).0, Polled::TimedOut);
        assert_eq!(update(&s, "c", |st| leave(st, second.ticket, first.deadline, LW)).unwrap(), 0);
        let third = arrive(&s, 1, first.deadline).place.unwrap();
        assert!(third.ticket > second.ticket);
        update(&s, "c", |st| free(st, held.slot.epoch, first.deadline, LW)).unwrap();
        assert_eq!(look(&s, second, 1, first.deadline).0, Polled::TimedOut);
        assert!(matches!(look(&s, third, 1, first.deadline).0, Polled::Admitted(_)));
    }

    /// Shadow mode asks where a request would wait without taking the place.
    #[test]
    fn a_place_can_be_reported_without_joining() {
        let s = MemoryStore::default();
        arrive(&s, 1, 0);
        let (would, bytes) = acquire_or_wait(
            s.get("c").unwrap().map(|(b, _)| b).as_deref(),
            Limit::Fixed(1),
            Some(Q),
            false,
            0,
            LW,
        );
        assert!(would.place.is_some() && bytes.is_none());
        assert_eq!(would.waiting, 0);
    }

    /// A clock that steps back leaves no waiter waiting longer than the language allows.
    #[test]
    fn a_step_back_drops_waiters_it_would_keep_too_long() {
        let s = MemoryStore::default();
        arrive(&s, 1, 1000 * W);
        let place = arrive(&s, 1, 1000 * W).place.unwrap();
        assert_eq!(look(&s, place, 1, 1000 * W - 5 * W), (Polled::Waiting { ahead: 0 }, 1));
        assert_eq!(look(&s, place, 1, 10 * W), (Polled::TimedOut, 0));
    }

    /// After a reload, waiters of the old configuration are served under the new limit (the
    /// filter has every waiter look under the newest configuration), and a longer `max_wait`
    /// does not have their looks drop the new waiters. Found by review.
    #[test]
    fn waiters_of_an_older_configuration_follow_the_new_one() {
        let s = MemoryStore::default();
        arrive(&s, 1, 0);
        let (old1, old2) = (arrive(&s, 1, W).place.unwrap(), arrive(&s, 1, W).place.unwrap());
        // The new configuration: 3 slots, waits of up to 55 s.
        let q = QueueLimits { max_waiting: 3, max_wait: 55 * W };
        let new = update(&s, "c", |b| acquire_or_wait(b, Limit::Fixed(3), Some(q), true, 2 * W, LW)).unwrap();
        let new = new.place.expect("behind the two waiting: 1 held + 2 waiting fill 3");
        assert!(matches!(look(&s, old1, 3, 3 * W).0, Polled::Admitted(_)));
        assert!(matches!(look(&s, old2, 3, 3 * W).0, Polled::Admitted(_)));
        assert_eq!(look(&s, new, 3, 3 * W), (Polled::Waiting { ahead: 0 }, 1));
        // An old waiter's look (deadline 51 s) at 52 s keeps the new one (deadline 57 s).
        assert_eq!(look(&s, old1, 3, 52 * W), (Polled::TimedOut, 1));
        assert_eq!(look(&s, new, 3, 52 * W), (Polled::Waiting { ahead: 0 }, 1));
    }

    proptest! {
        /// With one slot, waiters on any number of workers looking in any order take the slot in
        /// arrival order (skipping only those that left); the line never exceeds its bound and
        /// slots never exceed the limit.
        #[test]
        fn one_slot_goes_in_arrival_order(
            ops in proptest::collection::vec((0u8..5, 0usize..8, 0u64..30), 0..300),
        ) {
            let q = QueueLimits { max_waiting: 4, max_wait: 50 };
            let mut bytes: Option<Vec<u8>> = None;
            let mut now: Nanos = 0;
            let (mut line, mut held, mut admitted, mut left): (Vec<Place>, Vec<u64>, Vec<u64>, Vec<u64>) =
                Default::default();
            let keep = |b: Option<Vec<u8>>, bytes: &mut Option<Vec<u8>>| if let Some(b) = b { *bytes = Some(b) };
            for (op, pick, arg) in ops {
                match op {
                    0 => {
                        let (a, b) = acquire_or_wait(bytes.as_deref(), Limit::Fixed(1), Some(q), true, now, 1000);
                        keep(b, &mut bytes);
                        if a.slot.acquired { held.push(a.slot.epoch); }
                        if let Some(p) = a.place { line.push(p); }
                        prop_assert!(a.waiting <= q.max_waiting);
                    }
                    1 => if let Some(e) = held.pop() {
                        keep(free(bytes.as_deref(), e, now, 1000).1, &mut bytes);
                    },
                    2 if !line.is_empty() => {
                        let p = line[pick % line.len()];
                        let ((polled, _), b) = poll(bytes.as_deref(), p, Limit::Fixed(1), now, 1000);
                        keep(b, &mut bytes);
                        match polled {
                            Polled::Admitted(slot) => {
                                held.push(slot.epoch);
                                admitted.push(p.ticket);
                                line.retain(|x| x.ticket != p.ticket);
                                // Every older waiter has left the line.
                                prop_assert!(line.iter().all(|x| x.ticket > p.ticket || left.contains(&x.ticket) || x.deadline <= now));
                            }
                            Polled::TimedOut => {
                                prop_assert!(now >= p.deadline);
                                line.retain(|x| x.ticket != p.ticket);
                                left.push(p.ticket);
                            }
                            Polled::Waiting { .. } => prop_assert!(now < p.deadline),
                        }
                    }
                    3 if !line.is_empty() => {
                        let p = line.remove(pick % line.len());
                        keep(leave(bytes.as_deref(), p.ticket, now, 1000).1, &mut bytes);
                        left.push(p.ticket);
                    }
                    _ => now += arg,
                }
                prop_assert!(in_flight(bytes.as_deref(), now, 1000) <= 1);
                prop_assert!(waiting(bytes.as_deref(), now, 1000) <= q.max_waiting);
            }
            prop_assert!(admitted.windows(2).all(|w| w[0] < w[1]), "{admitted:?}");
        }
    }

    const G: Gradient = Gradient {
        min: 2,
        max: 40,
        initial: 8,
        interval: 100_000_000,
        tolerance_ppm: 250_000,
        probe_interval: 60 * W,
        probe_samples: 2,
    };

    /// An adaptive limit keeps its controller with the holds and the line: it admits `min` while
    /// it measures, samples at release end the measurement, and the line survives beside it.
    #[test]
    fn an_adaptive_limit_keeps_its_controller_with_the_slots_and_the_line() {
        let s = MemoryStore::default();
        let limit = Limit::Adaptive(G);
        let arrive = |now| update(&s, "c", |b| acquire_or_wait(b, limit, Some(Q), true, now, LW)).unwrap();
        let first = arrive(0);
        assert_eq!(first.started.map(|r| (r.limit, r.probing)), Some((2, true)));
        let second = arrive(0);
        assert!(second.slot.acquired && second.started.is_none());
        let waiter = arrive(0);
        let place = waiter.place.unwrap();
        let sample = |latency| Some((G, Sample { latency, admitted_at: 1, admitted: 0 }));
        let r = update(&s, "c", |b| release(b, first.slot.epoch, 10, LW, sample(10))).unwrap();
        assert_eq!((r.in_flight, r.reading), (1, None));
        let r = update(&s, "c", |b| release(b, second.slot.epoch, 30, LW, sample(30))).unwrap();
        let reading = r.reading.unwrap();
        assert_eq!((reading.limit, reading.min_rtt, reading.probing), (8, 20, false));
        // The waiter is still in line, and takes a slot under the new limit.
        let (polled, _) = update(&s, "c", |b| poll(b, place, limit, 40, LW)).unwrap();
        assert!(matches!(polled, Polled::Admitted(slot) if slot.in_flight == 1));
        let bytes = s.get("c").unwrap().unwrap().0;
        assert_eq!(bytes[0], ADAPTIVE_TAG);
        assert_eq!(reading_of(&bytes).map(|r| r.limit), Some(8));
        // A fixed limit drops the controller; an adaptive one after it starts afresh.
        let (_, b) = acquire_or_wait(Some(&bytes), Limit::Fixed(5), None, true, 50, LW);
        let b = b.unwrap();
        assert_eq!((b[0], reading_of(&b)), (QUEUE_TAG, None));
        let (again, _) = acquire_or_wait(Some(&b), limit, None, true, 60, LW);
        assert_eq!(again.started.map(|r| r.probing), Some(true));
        assert!(!again.slot.acquired, "two in flight: the measurement's min is reached");
    }

    /// A request admitted under an adaptive limit that ends after a reload to a fixed one (whose
    /// first decision dropped the controller) does not bring the controller back.
    #[test]
    fn a_sample_never_starts_a_controller() {
        let (a, b) = acquire_or_wait(None, Limit::Adaptive(G), None, true, 0, LW);
        let (fixed, b) = acquire_or_wait(b.as_deref(), Limit::Fixed(5), None, true, 1, LW);
        assert!(a.slot.acquired && fixed.slot.acquired);
        let sample = Some((G, Sample { latency: 10, admitted_at: 1, admitted: 0 }));
        let (r, b) = release(b.as_deref(), a.slot.epoch, 10, LW, sample);
        assert_eq!((r.in_flight, r.reading), (1, None));
        assert_eq!(reading_of(&b.unwrap()), None);
    }

    fn reading_of(bytes: &[u8]) -> Option<Reading> {
        reading(Some(bytes), &G, 0, LW)
    }

    #[test]
    fn limit_then_release() {
        let s = MemoryStore::default();
        let take = || update(&s, "c", |b| acquire(b, 2, 0, W)).unwrap();
        assert!(take().acquired);
        assert!(take().acquired);
        let third = take();
        assert!(!third.acquired);
        assert_eq!(third.in_flight, 2);
        update(&s, "c", |b| free(b, 0, 0, W)).unwrap();
        assert!(take().acquired);
    }

    #[test]
    fn release_never_goes_below_zero() {
        let s = MemoryStore::default();
        assert_eq!(update(&s, "c", |b| free(b, 0, 0, W)).unwrap(), 0);
        assert_eq!(update(&s, "c", |b| free(b, 0, 0, W)).unwrap(), 0);
    }

    proptest! {
        /// Any interleaving of acquires and releases (releases only for held slots) keeps the
        /// count equal to the slots held and never above max.
        #[test]
        fn count_equals_slots_held(max in 1u32..20, ops in proptest::collection::vec(any::<bool>(), 0..300)) {
            let s = MemoryStore::default();
            let mut held = 0u32;
            for acquire_op in ops {
                if acquire_op {
                    let slot = update(&s, "c", |b| acquire(b, max, 0, W)).unwrap();
                    if slot.acquired {
                        held += 1;
                    } else {
                        prop_assert_eq!(held, max, "refused below the limit");
                    }
                    prop_assert_eq!(slot.in_flight, held);
                } else if held > 0 {
                    held -= 1;
                    prop_assert_eq!(update(&s, "c", |b| free(b, 0, 0, W)).unwrap(), held);
                }
                prop_assert!(held <= max);
            }
        }
    }
}
