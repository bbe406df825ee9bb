//! Retry budgets: retries as a share of traffic, so retries cannot turn an outage into a storm.
//!
//! A fixed "retry up to 2 times" triples the load on an upstream exactly when it is failing: every
//! client request becomes three upstream requests, the upstream falls further behind, more requests
//! fail and are retried. A budget instead bounds retries to `percent` of the requests seen over the
//! last second plus a floor of `min_per_second` (so low-traffic services can still retry). Under a
//! total outage the extra load is at most `percent`%, whatever `max_retries` says.
//!
//! Envoy's router performs the retries after the filter has decided, so the filter cannot ask
//! before each retry. It therefore *reserves* up to `max_retries` from the budget when the request
//! starts (granting fewer, down to zero, when the budget is short) and *refunds* what was not used
//! when the request ends (the real count comes from `upstream.request_attempt_count`). Reserving
//! first means the budget is never exceeded even with many requests in flight.
//!
//! The second is a sliding window of ten 100 ms buckets; a refund goes back to the bucket that was
//! charged, if that bucket is still in the window.

use super::Nanos;
use super::codec::{ByteReader, ByteWriter};

const TAG: u8 = 0x54; // 'T'
const BUCKETS: u64 = 10;
/// Bytes of an encoded state after its tag: per bucket an epoch (8), requests (4), retries (4).
const ENCODED_LEN: usize = BUCKETS as usize * 16;
const BUCKET_NS: Nanos = 100_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    percent: u64,
    min_per_second: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    epoch: u64,
    requests: u32,
    retries: u32,
}

/// The budget's state: ten buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetState {
    buckets: [Bucket; BUCKETS as usize],
}

/// Retries granted to one request, to be settled when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub granted: u32,
    epoch: u64,
}

impl RetryBudget {
    pub fn new(percent: u8, min_per_second: u32) -> Self {
        RetryBudget { percent: u64::from(percent), min_per_second: u64::from(min_per_second) }
    }

    /// Counts a request and reserves up to `want` retries for it.
    pub fn start(&self, st: &mut BudgetState, now: Nanos, want: u32) -> Reservation {
        let epoch = now / BUCKET_NS;
        st.forget_future(epoch);
        let bucket = st.bucket_mut(epoch);
        bucket.requests = bucket.requests.saturating_add(1);
        let granted = u32::try_from(self.available(st, now)).unwrap_or(u32::MAX).min(want);
        let bucket = st.bucket_mut(epoch);
        bucket.retries = bucket.retries.saturating_add(granted);
        Reservation { granted, epoch }
    }

    /// Returns the retries a request reserved but did not use.
    pub fn settle(&self, st: &mut BudgetState, now: Nanos, r: Reservation, used: u32) {
        let unused = r.granted.saturating_sub(used);
        let current = now / BUCKET_NS;
        if unused == 0 || r.epoch.saturating_add(BUCKETS) <= current {
            return; // nothing to return, or the charged bucket has left the window
        }
        let slot = (r.epoch % BUCKETS) as usize;
        if let Some(b) = st.buckets.get_mut(slot)
            && b.epoch == r.epoch
        {
            b.retries = b.retries.saturating_sub(unused);
        }
    }

    /// Retries that may still be granted now.
    pub fn available(&self, st: &BudgetState, now: Nanos) -> u64 {
        let (requests, retries) = st.totals(now);
        self.allowance(requests).saturating_sub(retries)
    }

    /// Retries allowed for a window holding `requests` requests.
    pub fn allowance(&self, requests: u64) -> u64 {
        self.min_per_second.saturating_add(self.percent.saturating_mul(requests) / 100)
    }

    pub fn start_bytes(&self, bytes: Option<&[u8]>, now: Nanos, want: u32) -> (Reservation, Option<Vec<u8>>) {
        let mut st = bytes.and_then(decode).unwrap_or_default();
        let r = self.start(&mut st, now, want);
        (r, Some(encode(&st)))
    }

    pub fn settle_bytes(
        &self,
        bytes: Option<&[u8]>,
        now: Nanos,
        r: Reservation,
        used: u32,
    ) -> ((), Option<Vec<u8>>) {
        let Some(mut st) = bytes.and_then(decode) else {
            return ((), None);
        };
        let before = st.clone();
        self.settle(&mut st, now, r, used);
        ((), (st != before).then(|| encode(&st)))
    }
}

impl BudgetState {
    fn bucket_mut(&mut self, epoch: u64) -> &mut Bucket {
        let slot = (epoch % BUCKETS) as usize;
        #[expect(clippy::indexing_slicing, reason = "slot < BUCKETS, the array's length")]
        let b = &mut self.buckets[slot];
        if b.epoch != epoch {
            *b = Bucket { epoch, requests: 0, retries: 0 };
        }
        b
    }

    /// Buckets stamped well after `epoch` were written before the wall clock stepped back: they
    /// would count again once the clock catches up (charging the budget for as long as the step),
    /// so they are dropped. The next bucket is kept: another worker, whose `now` was read a moment
    /// later, may just have opened it.
    fn forget_future(&mut self, epoch: u64) {
        for b in &mut self.buckets {
            if b.epoch > epoch.saturating_add(1) {
                *b = Bucket::default();
            }
        }
    }

    /// (requests, retries) over the last second.
    pub fn totals(&self, now: Nanos) -> (u64, u64) {
        let current = now / BUCKET_NS;
        let oldest = current.saturating_sub(BUCKETS - 1);
        self.buckets
            .iter()
            .filter(|b| b.epoch >= oldest && b.epoch <= current)
            .fold((0u64, 0u64), |(q, r), b| {
                (q.saturating_add(u64::from(b.requests)), r.saturating_add(u64::from(b.retries)))
            })
    }
}

pub fn encode(st: &BudgetState) -> Vec<u8> {
    let mut w = ByteWriter::sized(TAG, ENCODED_LEN);
    for b in &st.buckets {
        w.u64(b.epoch).u32(b.requests).u32(b.retries);
    }
    w.finish()
}

pub fn decode(bytes: &[u8]) -> Option<BudgetState> {
    let mut r = ByteReader::with_tag(bytes, TAG)?;
    let mut st = BudgetState::default();
    for b in &mut st.buckets {
        *b = Bucket { epoch: r.u64()?, requests: r.u32()?, retries: r.u32()? };
    }
    r.done().then_some(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Nanos = 1_000_000;

    #[test]
    fn floor_then_percent() {
        let b = RetryBudget::new(20, 3);
        let mut st = BudgetState::default();
        // First request: floor 3 + 20% of 1 = 3 available; wants 2, gets 2.
        assert_eq!(b.start(&mut st, 0, 2).granted, 2);
        // Second: 3 + 0 - 2 = 1.
        assert_eq!(b.start(&mut st, 0, 2).granted, 1);
        assert_eq!(b.start(&mut st, 0, 2).granted, 0);
        // 10 more requests wanting nothing: 13 requests → 3 + 2 = 5 allowed, 3 used.
        for _ in 0..10 {
            b.start(&mut st, 0, 0);
        }
        assert_eq!(b.available(&st, 0), 2);
    }

    #[test]
    fn unused_retries_come_back_and_the_window_slides() {
        let b = RetryBudget::new(0, 2);
        let mut st = BudgetState::default();
        let r = b.start(&mut st, 0, 2);
        assert_eq!(b.available(&st, 0), 0);
        b.settle(&mut st, 50 * MS, r, 1);
        assert_eq!(b.available(&st, 50 * MS), 1);
        assert_eq!(b.available(&st, 1000 * MS), 2); // the charged bucket left the window
        let mut later = st.clone();
        b.settle(&mut later, 1000 * MS, r, 0); // too late: no effect
        assert_eq!(later, st);
    }

    #[test]
    fn encoding_round_trips() {
        let b = RetryBudget::new(20, 10);
        let mut st = BudgetState::default();
        for i in 0..25 {
            b.start(&mut st, i * 70 * MS, 1);
        }
        assert_eq!(decode(&encode(&st)), Some(st));
        assert_eq!(decode(b"x"), None);
    }

    proptest! {
        /// Issue 20, defect 10: whatever steps the wall clock takes, the floor is available again
        /// once a second (and a bucket) has passed without requests.
        #[test]
        fn clock_steps_never_wedge_a_budget(
            floor in 1u32..20,
            ops in proptest::collection::vec(crate::engine::clock::clock_steps(300), 1..300),
        ) {
            let b = RetryBudget::new(0, floor);
            let mut st = BudgetState::default();
            let mut now: Nanos = 100_000 * 1_000_000_000;
            for step in ops {
                now = now.saturating_add_signed(step);
                b.start(&mut st, now, 3);
                // A second and a bucket: a bucket just ahead of the clock is kept (see forget_future).
                let later = now + 1_100 * MS;
                prop_assert_eq!(b.available(&st, later), u64::from(floor));
            }
        }

        /// Whenever retries are granted, retries in the window stay within percent·requests + floor.
        #[test]
        fn never_exceeded(
            percent in 0u8..=100,
            floor in 0u32..20,
            steps in proptest::collection::vec((0u64..300, 0u32..4, 0u32..4), 1..500),
        ) {
            let b = RetryBudget::new(percent, floor);
            let mut st = BudgetState::default();
            let mut now = 0;
            let mut open: Vec<(Reservation, u32)> = Vec::new();
            for (gap_ms, want, used) in steps {
                now += gap_ms * MS;
                let r = b.start(&mut st, now, want);
                prop_assert!(r.granted <= want);
                // A grant is only made when it fits the window as it is at that moment.
                let (requests, retries) = st.totals(now);
                if r.granted > 0 {
                    prop_assert!(retries <= b.allowance(requests), "{} > {}", retries, b.allowance(requests));
                }
                open.push((r, used.min(r.granted)));
                if open.len() > 3 {
                    let (r, used) = open.remove(0);
                    b.settle(&mut st, now, r, used);
                }
            }
        }
    }
}
