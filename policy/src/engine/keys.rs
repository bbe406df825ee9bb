//! Bounded tables of per-key state (per client IP, per API key, ...) in shared data.
//!
//! Envoy's shared data has no delete: a key once written stays for the life of the VM. One entry per
//! distinct client would let memory grow without bound, so each policy block owns a fixed table of
//! `max_keys` *slots*, named `<prefix>/<slot number>`. A request key is hashed to a home slot and
//! probes at most [`PROBES`] consecutive slots. Each slot value is the owner's 8-byte fingerprint
//! followed by the engine's state.
//!
//! **Eviction rule.** Probing takes the first slot that is (1) empty, (2) already ours, or (3) held
//! by another key whose state is *idle* (a full token bucket, zero requests in flight): idle state
//! carries no information, so taking it over loses nothing. When all probed slots hold active
//! state of other keys, a rate-limit table evicts the slot closest to idle (the bucket nearest to
//! full, so the evicted key loses the least); a concurrency table cannot evict (the holders'
//! releases must find their counts), so the request is treated as "state unavailable" and the
//! policy's `failure_mode` decides.
//!
//! Memory is therefore at most `max_keys` entries per block, each a name of at most 78 bytes
//! (`bw/<policy>/<block>/<slot>`) and a value of at most 41 (fingerprint and engine state), but
//! for a concurrency limit with a queue, whose line adds 12 bytes and 16 per waiter (at most
//! `max_waiting`) to its key's value, and an adaptive one, whose controller adds 70. An idle
//! adaptive key (nothing in flight, nobody waiting) may be taken over like any other: its
//! controller is lost with it, and the key measures its min RTT afresh when it comes back.

use std::hash::Hasher;

use super::Nanos;
use super::siphash::SipHasher24;
use super::store::{SharedStore, StoreError, update, update_from};
pub use crate::model::KeySeed;

/// Slots probed per key.
pub const PROBES: u32 = 4;

/// A table of slots for one block of one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTable {
    prefix: String,
    slots: u32,
    seed: KeySeed,
}

/// A slot as read: its value and CAS token, or nothing.
type Read = Option<(Vec<u8>, u32)>;

/// Where a key's state was found, to come back to it (e.g. to release a concurrency slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRef {
    pub name: String,
    pub fingerprint: u64,
}

/// How an engine judges a slot's state when deciding whether it can be taken over.
pub trait SlotState {
    /// None when the state carries no information (may be taken over); otherwise a score, lower
    /// meaning "closer to idle", or None-evictable: see [`SlotState::evictable`].
    fn activity(&self, state: &[u8], now: Nanos) -> Option<u64>;
    /// Whether an active slot of another key may be evicted.
    fn evictable(&self) -> bool;
}

/// The fingerprint of a composed key: SipHash-2-4 under the deployment's seed of the key's length
/// (8 bytes, little-endian) and bytes. The same in every worker, every build and every Rust
/// release.
pub fn fingerprint(seed: KeySeed, key: &[u8]) -> u64 {
    let mut h = SipHasher24::new(seed.0, seed.1);
    h.write(&(key.len() as u64).to_le_bytes());
    h.write(key);
    // 0 marks "no owner" in nothing we store, but keep it out of the range anyway.
    h.finish().max(1)
}

/// [`fingerprint`] of the key made of `parts` joined by U+001F, `len` bytes in all, without
/// building it: the hasher reads bytes as a stream.
pub fn fingerprint_parts<'a>(seed: KeySeed, len: usize, parts: impl Iterator<Item = &'a str>) -> u64 {
    let mut h = SipHasher24::new(seed.0, seed.1);
    h.write(&(len as u64).to_le_bytes());
    for (i, part) in parts.enumerate() {
        if i > 0 {
            h.write(&[0x1f]);
        }
        h.write(part.as_bytes());
    }
    h.finish().max(1)
}

impl KeyTable {
    pub fn new(prefix: String, slots: u32) -> Self {
        KeyTable { prefix, slots: slots.max(1), seed: KeySeed::default() }
    }

    /// The table with keys fingerprinted under `seed`.
    pub fn with_seed(self, seed: KeySeed) -> Self {
        KeyTable { seed, ..self }
    }

    pub fn seed(&self) -> KeySeed {
        self.seed
    }

    fn name(&self, slot: u32) -> String {
        let mut name = String::with_capacity(self.prefix.len().saturating_add(11));
        name.push_str(&self.prefix);
        name.push('/');
        super::text::push_u64(&mut name, u64::from(slot));
        name
    }

    fn probes(&self, fp: u64) -> impl Iterator<Item = u32> + '_ {
        // slots ≥ 1 (KeyTable::new), home < slots ≤ 10⁷: home + i cannot overflow.
        let home = fp.checked_rem(u64::from(self.slots)).unwrap_or(0) as u32;
        (0..PROBES.min(self.slots)).map(move |i| home.saturating_add(i).checked_rem(self.slots).unwrap_or(0))
    }

    /// Finds the key's slot and applies `decide` to its state (None = fresh state). `decide`
    /// returns the decision and the new state (None = unchanged). Err(Unavailable) when no slot
    /// could be had.
    pub fn update<S, T>(
        &self,
        store: &S,
        key: &[u8],
        now: Nanos,
        kind: &impl SlotState,
        decide: impl FnMut(Option<&[u8]>) -> (T, Option<Vec<u8>>),
    ) -> Result<(T, SlotRef), StoreError>
    where
        S: SharedStore + ?Sized,
    {
        self.update_fp(store, fingerprint(self.seed, key), now, kind, decide)
    }

    /// [`Self::update`] for a key known by its [`fingerprint`].
    pub fn update_fp<S, T>(
        &self,
        store: &S,
        fp: u64,
        now: Nanos,
        kind: &impl SlotState,
        mut decide: impl FnMut(Option<&[u8]>) -> (T, Option<Vec<u8>>),
    ) -> Result<(T, SlotRef), StoreError>
    where
        S: SharedStore + ?Sized,
    {
        let mut closest: Option<(u64, u32)> = None;
        // The first slot of an idle key: taken only if this key owns none further on (a key that
        // found its home busy lives further on; taking the home back once it is idle would split
        // the key's state in two: twice its concurrency limit, a second queue).
        let mut idle: Option<(String, Read)> = None;
        for slot in self.probes(fp) {
            let name = self.name(slot);
            let current = store.get(&name)?;
            let (owner, state) = split(current.as_ref().map(|(v, _)| v.as_slice()));
            match owner {
                // Never written (slots are never emptied): no key of this probe sequence lives
                // further on.
                None => {
                    let (name, current) = idle.unwrap_or((name, current));
                    return self.apply(store, name, Some(current), fp, now, kind, &mut decide, false);
                }
                Some(o) if o == fp => {
                    return self.apply(store, name, Some(current), fp, now, kind, &mut decide, false);
                }
                Some(_) => match state.and_then(|s| kind.activity(s, now)) {
                    None => {
                        if idle.is_none() {
                            idle = Some((name, current));
                        }
                    }
                    Some(score) => {
                        if closest.is_none_or(|(best, _)| score < best) {
                            closest = Some((score, slot));
                        }
                    }
                },
            }
        }
        if let Some((name, current)) = idle {
            return self.apply(store, name, Some(current), fp, now, kind, &mut decide, false);
        }
        match closest {
            Some((_, slot)) if kind.evictable() => {
                self.apply(store, self.name(slot), None, fp, now, kind, &mut decide, true)
            }
            _ => Err(StoreError::Unavailable(format!(
                "all {} probed slots of {} are busy",
                PROBES, self.prefix
            ))),
        }
    }

    /// Runs `decide` on the slot in a CAS loop, taking the slot over when it belongs to another
    /// key that is idle (or, with `evict`, whatever its state).
    #[allow(clippy::too_many_arguments)]
    fn apply<S, T>(
        &self,
        store: &S,
        name: String,
        read: Option<Option<(Vec<u8>, u32)>>,
        fp: u64,
        now: Nanos,
        kind: &impl SlotState,
        decide: &mut impl FnMut(Option<&[u8]>) -> (T, Option<Vec<u8>>),
        evict: bool,
    ) -> Result<(T, SlotRef), StoreError>
    where
        S: SharedStore + ?Sized,
    {
        let mut lost = false;
        // The probe's read of this slot starts the update: one read per request, not two.
        let result = update_from(store, &name, read, |bytes| {
            let (owner, state) = split(bytes);
            let mine = match owner {
                Some(o) if o == fp => state,
                None => None,
                // Another key: take over only if it is (still) idle, or we were told to evict.
                Some(_) if evict || state.and_then(|s| kind.activity(s, now)).is_none() => None,
                Some(_) => {
                    lost = true;
                    return (None, None);
                }
            };
            let (decision, new) = decide(mine);
            // A fresh state that `decide` leaves unchanged is still written, to claim the slot.
            let new =
                new.or_else(|| (owner != Some(fp)).then(|| mine.map(<[u8]>::to_vec).unwrap_or_default()));
            (Some(decision), new.map(|s| join(fp, &s)))
        })?;
        match result {
            // The slot's name moves into the reference: one allocation per keyed decision, not two.
            Some(decision) if !lost => Ok((decision, SlotRef { name, fingerprint: fp })),
            _ => Err(StoreError::Unavailable(format!("slot {name} was taken concurrently"))),
        }
    }

    /// Applies `decide` to a slot found earlier, if the key still owns it (None otherwise).
    pub fn update_at<S, T>(
        store: &S,
        slot: &SlotRef,
        mut decide: impl FnMut(Option<&[u8]>) -> (T, Option<Vec<u8>>),
    ) -> Result<Option<T>, StoreError>
    where
        S: SharedStore + ?Sized,
    {
        update(store, &slot.name, |bytes| match split(bytes) {
            (Some(o), state) if o == slot.fingerprint => {
                let (d, new) = decide(state);
                (Some(d), new.map(|s| join(o, &s)))
            }
            _ => (None, None),
        })
    }
}

fn split(bytes: Option<&[u8]>) -> (Option<u64>, Option<&[u8]>) {
    match bytes.and_then(|b| b.split_first_chunk::<8>()) {
        Some((fp, rest)) => (Some(u64::from_le_bytes(*fp)), (!rest.is_empty()).then_some(rest)),
        None => (None, None),
    }
}

fn join(fp: u64, state: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(state.len().saturating_add(8));
    v.extend_from_slice(&fp.to_le_bytes());
    v.extend_from_slice(state);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::{CountingStore, MemoryStore};

    /// A counter that is idle at zero and evictable.
    struct Counter {
        evictable: bool,
    }
    impl SlotState for Counter {
        fn activity(&self, state: &[u8], _: Nanos) -> Option<u64> {
            let n = state.first().copied().unwrap_or(0);
            (n > 0).then_some(u64::from(n))
        }
        fn evictable(&self) -> bool {
            self.evictable
        }
    }

    fn bump(state: Option<&[u8]>) -> (u8, Option<Vec<u8>>) {
        let n = state.and_then(|s| s.first().copied()).unwrap_or(0) + 1;
        (n, Some(vec![n]))
    }

    #[test]
    fn keys_keep_their_own_state() {
        let store = MemoryStore::default();
        let t = KeyTable::new("bw/p/rl".into(), 100);
        let k = Counter { evictable: true };
        for _ in 0..3 {
            t.update(&store, b"alice", 0, &k, bump).unwrap();
        }
        let (n, _) = t.update(&store, b"bob", 0, &k, bump).unwrap();
        assert_eq!(n, 1);
        assert_eq!(t.update(&store, b"alice", 0, &k, bump).unwrap().0, 4);
    }

    #[test]
    fn an_update_reads_its_slot_once() {
        let store = CountingStore::default();
        let t = KeyTable::new("bw/p/rl".into(), 100);
        let k = Counter { evictable: true };
        for expected in 1..=3 {
            assert_eq!(t.update(&store, b"alice", 0, &k, bump).unwrap().0, expected);
        }
        assert_eq!(store.take(), (3, 3));
    }

    #[test]
    fn memory_is_bounded_by_the_slot_count() {
        let store = MemoryStore::default();
        let t = KeyTable::new("bw/p/rl".into(), 64);
        let k = Counter { evictable: true };
        for i in 0..10_000u32 {
            t.update(&store, &i.to_le_bytes(), 0, &k, bump).unwrap();
        }
        assert!(store.len() <= 64, "{} entries", store.len());
        assert!(store.bytes() <= 64 * 64, "{} bytes", store.bytes());
    }

    #[test]
    fn idle_slots_are_taken_over_busy_ones_evicted_only_if_allowed() {
        let store = MemoryStore::default();
        let t = KeyTable::new("bw/p/c".into(), 1);
        let busy = Counter { evictable: false };
        t.update(&store, b"a", 0, &busy, bump).unwrap();
        // Slot held by an active "a": "b" cannot have it.
        assert!(matches!(t.update(&store, b"b", 0, &busy, bump), Err(StoreError::Unavailable(_))));
        // "a" goes idle (back to 0): now "b" takes it over with fresh state.
        let (_, slot) = t.update(&store, b"a", 0, &busy, |_| ((), Some(vec![0]))).unwrap();
        assert_eq!(t.update(&store, b"b", 0, &busy, bump).unwrap().0, 1);
        // The old owner's reference no longer applies.
        assert_eq!(KeyTable::update_at(&store, &slot, bump).unwrap(), None);
        // An evicting table takes active slots.
        let evicting = Counter { evictable: true };
        assert_eq!(t.update(&store, b"c", 0, &evicting, bump).unwrap().0, 1);
    }

    /// A key that found its home slot busy lives further on; when the home's owner goes idle, the
    /// key goes on in its own slot (taking the home would split its state: twice its concurrency
    /// limit, a second queue). Found by review of issue 22's queue.
    #[test]
    fn a_key_keeps_its_slot_when_an_earlier_one_frees() {
        let store = MemoryStore::default();
        let t = KeyTable::new("bw/p/c".into(), 4);
        let home = |k: &str| fingerprint(KeySeed::default(), k.as_bytes()) % 4;
        let names: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let j = names[0].as_str();
        let k = names.iter().skip(1).find(|n| home(n) == home(j)).unwrap().as_str();
        let busy = Counter { evictable: false };
        t.update(&store, j.as_bytes(), 0, &busy, bump).unwrap();
        let (_, k_slot) = t.update(&store, k.as_bytes(), 0, &busy, bump).unwrap();
        // j goes idle: its slot could be taken, but k already has one.
        t.update(&store, j.as_bytes(), 0, &busy, |_| ((), Some(vec![0]))).unwrap();
        let (n, again) = t.update(&store, k.as_bytes(), 0, &busy, bump).unwrap();
        assert_eq!((n, again), (2, k_slot));
        // A new key with the same home takes the idle one.
        let l = names.iter().skip(1).filter(|n| home(n) == home(j)).nth(1).unwrap();
        assert_eq!(t.update(&store, l.as_bytes(), 0, &busy, bump).unwrap().0, 1);
    }

    /// Issue 20, defect 6: fingerprints are SipHash-2-4 under the deployment's seed: pinned here,
    /// so no Rust release or build can change them (slots written before keep their owners), and
    /// without the seed nobody can tell which slot a key lands in.
    #[test]
    fn fingerprints_are_stable_and_keyed_by_the_seed() {
        let seed = KeySeed::parse("000102030405060708090a0b0c0d0e0f").unwrap();
        assert_eq!(seed.to_string(), "000102030405060708090a0b0c0d0e0f");
        assert_eq!(fingerprint(KeySeed::default(), b"10.0.0.1"), 0x64b0_90a8_a1a0_6c37);
        assert_eq!(fingerprint(seed, b"10.0.0.1"), 0x037c_b363_8895_a39c);
        // Across 1,000 keys, another seed puts about 1 in `slots` of them in the same home slot.
        let other = KeySeed(1, 2);
        let same = (0..1000u32)
            .filter(|i| {
                let key = format!("client-{i}");
                fingerprint(seed, key.as_bytes()) % 1000 == fingerprint(other, key.as_bytes()) % 1000
            })
            .count();
        assert!(same < 10, "{same} of 1000 keys share their home slot under two seeds");
        assert!(KeySeed::parse("0001").is_err() && KeySeed::parse(&"g".repeat(32)).is_err());
    }

    #[test]
    fn eviction_picks_the_slot_closest_to_idle() {
        let store = MemoryStore::default();
        let t = KeyTable::new("bw/p/rl".into(), 4);
        let k = Counter { evictable: true };
        // Fill all four slots with distinct active keys of different activity.
        let mut keys = Vec::new();
        let mut i = 0u32;
        while keys.len() < 4 {
            let key = i.to_le_bytes();
            i += 1;
            let fp = fingerprint(KeySeed::default(), &key);
            if keys.iter().any(|(_, f)| f % 4 == fp % 4) {
                continue;
            }
            keys.push((key, fp));
        }
        for (n, (key, _)) in keys.iter().enumerate() {
            for _ in 0..=n {
                t.update(&store, key, 0, &k, bump).unwrap();
            }
        }
        let (_, slot) = t.update(&store, b"newcomer", 0, &k, bump).unwrap();
        // The least active (count 1) key's slot went to the newcomer.
        assert_eq!(slot.name, format!("bw/p/rl/{}", keys[0].1 % 4));
    }
}
