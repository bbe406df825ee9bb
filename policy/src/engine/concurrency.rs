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

use super::Nanos;
use super::codec::{ByteReader, ByteWriter};

/// Shared data written by builds before leases: one u32 count.
const COUNT_TAG: u8 = 0x43; // 'C'
const TAG: u8 = 0x4c; // 'L'
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

fn decode_holds(bytes: Option<&[u8]>, width: Nanos, epoch: u64) -> Holds {
    let Some(b) = bytes else { return Holds::empty(width, epoch) };
    if let Some(mut r) = ByteReader::with_tag(b, TAG) {
        let (stored_width, newest) = (r.u64(), r.u64());
        let counts = [r.u32(), r.u32(), r.u32(), r.u32()];
        if let (Some(w), Some(newest), [Some(a), Some(b), Some(c), Some(d)], true) =
            (stored_width, newest, counts, r.done())
        {
            let h = Holds { width: w, newest, counts: [a, b, c, d], refolded: false };
            if w != width {
                // The lease changed (the policy's timeout did): the old epochs mean nothing now.
                return Holds::folded(width, epoch, h.total());
            }
            return h.at(epoch);
        }
    }
    // A count written before leases: held from now on.
    let old = ByteReader::with_tag(b, COUNT_TAG).and_then(|mut r| {
        let n = r.u32()?;
        r.done().then_some(n)
    });
    Holds::folded(width, epoch, old.unwrap_or(0))
}

fn encode_holds(h: &Holds) -> Vec<u8> {
    let mut w = ByteWriter::with_tag(TAG);
    w.u64(h.width).u64(h.newest);
    for c in h.counts {
        w.u32(c);
    }
    w.finish()
}

/// Requests in flight at `now` (leases expired are not counted).
pub fn in_flight(state: Option<&[u8]>, now: Nanos, width: Nanos) -> u32 {
    let width = width.max(1);
    decode_holds(state, width, epoch_of(now, width)).total()
}

/// Takes a slot if fewer than `max` are held at `now`.
pub fn acquire(state: Option<&[u8]>, max: u32, now: Nanos, width: Nanos) -> (Slot, Option<Vec<u8>>) {
    let width = width.max(1);
    let epoch = epoch_of(now, width);
    let mut h = decode_holds(state, width, epoch);
    let n = h.total();
    if n >= max {
        // Nothing taken; but holds that were re-dated (a step back, a new lease, a count from
        // before leases) are written, or their lease would start over at every decision and they
        // would never expire.
        let bytes = encode_holds(&h);
        let write = (h.refolded && state != Some(bytes.as_slice())).then_some(bytes);
        return (Slot { acquired: false, in_flight: n, epoch }, write);
    }
    h.counts[0] = h.counts[0].saturating_add(1);
    (Slot { acquired: true, in_flight: n.saturating_add(1), epoch }, Some(encode_holds(&h)))
}

/// Gives back a slot acquired in bucket `epoch`: nothing once its lease has expired; never below
/// zero.
pub fn release(state: Option<&[u8]>, epoch: u64, now: Nanos, width: Nanos) -> (u32, Option<Vec<u8>>) {
    let width = width.max(1);
    let mut h = decode_holds(state, width, epoch_of(now, width));
    let newest_held = || h.counts.iter().position(|c| *c > 0);
    let bucket = if h.refolded || epoch > h.newest {
        // Its hold was re-dated with the others (or taken "after" now: the clock stepped back).
        newest_held()
    } else {
        // Expired (older than the window): nothing to give back.
        h.newest.checked_sub(epoch).filter(|i| *i < BUCKETS).map(|i| i as usize)
    };
    if let Some(c) = bucket.and_then(|i| h.counts.get_mut(i))
        && *c > 0
    {
        *c = c.saturating_sub(1);
    }
    (h.total(), Some(encode_holds(&h)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::{MemoryStore, SharedStore, update};
    use proptest::prelude::*;

    const W: Nanos = 1_000_000_000;

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
        assert_eq!(update(&s, "c", |b| release(b, slot_epoch, bound, width)).unwrap(), 1);
        assert_eq!(update(&s, "c", |b| release(b, bound / width, bound, width)).unwrap(), 0);
    }

    /// A stream admitted before the wall clock stepped back still gives its slot back (its epoch is
    /// "in the future" of the stored holds).
    #[test]
    fn a_release_after_a_step_back_is_counted() {
        let s = MemoryStore::default();
        let slot = update(&s, "c", |b| acquire(b, 2, 5_500, 1000)).unwrap();
        assert!(slot.acquired);
        assert_eq!(update(&s, "c", |b| release(b, slot.epoch, 3_200, 1000)).unwrap(), 0);
        // And after the lease changed (the policy's timeout did).
        let slot = update(&s, "c", |b| acquire(b, 2, 5_500, 1000)).unwrap();
        assert_eq!(in_flight(s.get("c").unwrap().map(|(b, _)| b).as_deref(), 5_500, 3000), 1);
        assert_eq!(update(&s, "c", |b| release(b, slot.epoch, 5_600, 3000)).unwrap(), 0);
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
                        bytes = release(bytes.as_deref(), epoch, now, width).1;
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

    #[test]
    fn limit_then_release() {
        let s = MemoryStore::default();
        let take = || update(&s, "c", |b| acquire(b, 2, 0, W)).unwrap();
        assert!(take().acquired);
        assert!(take().acquired);
        let third = take();
        assert!(!third.acquired);
        assert_eq!(third.in_flight, 2);
        update(&s, "c", |b| release(b, 0, 0, W)).unwrap();
        assert!(take().acquired);
    }

    #[test]
    fn release_never_goes_below_zero() {
        let s = MemoryStore::default();
        assert_eq!(update(&s, "c", |b| release(b, 0, 0, W)).unwrap(), 0);
        assert_eq!(update(&s, "c", |b| release(b, 0, 0, W)).unwrap(), 0);
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
                    prop_assert_eq!(update(&s, "c", |b| release(b, 0, 0, W)).unwrap(), held);
                }
                prop_assert!(held <= max);
            }
        }
    }
}
