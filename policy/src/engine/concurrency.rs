//! Concurrency limiting: a shared count of requests in flight.
//!
//! The count is one u32 in shared data. `acquire` increments it only below the limit; `release`
//! decrements it and never goes below zero, so a duplicated release cannot open extra slots
//! beyond the limit. The filter releases exactly once per acquired slot, at stream end (on_log
//! runs for every stream: success, reset, client abort, local reply), which is what keeps slots
//! from leaking.

use super::codec::{ByteReader, ByteWriter};

const TAG: u8 = 0x43; // 'C'

/// Outcome of an acquire attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub acquired: bool,
    /// Requests in flight after this decision.
    pub in_flight: u32,
}

pub fn decode(bytes: Option<&[u8]>) -> u32 {
    bytes
        .and_then(|b| {
            let mut r = ByteReader::with_tag(b, TAG)?;
            let n = r.u32()?;
            r.done().then_some(n)
        })
        .unwrap_or(0)
}

pub fn encode(n: u32) -> Vec<u8> {
    ByteWriter::with_tag(TAG).u32(n).finish()
}

/// Takes a slot if fewer than `max` are in use.
pub fn acquire(state: Option<&[u8]>, max: u32) -> (Slot, Option<Vec<u8>>) {
    let n = decode(state);
    if n >= max {
        return (Slot { acquired: false, in_flight: n }, None);
    }
    (Slot { acquired: true, in_flight: n + 1 }, Some(encode(n + 1)))
}

/// Gives a slot back; never below zero.
pub fn release(state: Option<&[u8]>) -> (u32, Option<Vec<u8>>) {
    let n = decode(state).saturating_sub(1);
    (n, Some(encode(n)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::{MemoryStore, update};
    use proptest::prelude::*;

    #[test]
    fn limit_then_release() {
        let s = MemoryStore::default();
        let take = || update(&s, "c", |b| acquire(b, 2)).unwrap();
        assert!(take().acquired);
        assert!(take().acquired);
        let third = take();
        assert!(!third.acquired);
        assert_eq!(third.in_flight, 2);
        update(&s, "c", release).unwrap();
        assert!(take().acquired);
    }

    #[test]
    fn release_never_goes_below_zero() {
        let s = MemoryStore::default();
        assert_eq!(update(&s, "c", release).unwrap(), 0);
        assert_eq!(update(&s, "c", release).unwrap(), 0);
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
                    let slot = update(&s, "c", |b| acquire(b, max)).unwrap();
                    if slot.acquired {
                        held += 1;
                    } else {
                        prop_assert_eq!(held, max, "refused below the limit");
                    }
                    prop_assert_eq!(slot.in_flight, held);
                } else if held > 0 {
                    held -= 1;
                    prop_assert_eq!(update(&s, "c", release).unwrap(), held);
                }
                prop_assert!(held <= max);
            }
        }
    }
}
