//! Shared state with compare-and-swap, the shape of proxy-wasm shared data.
//!
//! Envoy's semantics, which [`MemoryStore`] reproduces exactly (see docs/envoy-facts.md):
//! - `get` of a missing key returns nothing, and no CAS token;
//! - `set` with a CAS token fails with a mismatch when the key exists with another token;
//! - `set` on a *missing* key always succeeds, whatever token is passed.
//!
//! The last rule makes the first write to a key unprotected: two workers that both see the key
//! missing would both write, and one write would be lost. [`update`] closes that race by creating
//! keys with [`CREATE_CAS`], a token no live key holds in practice: on a missing key the write
//! succeeds, and if another worker created the key meanwhile the write fails with a mismatch and
//! the update is retried on the winner's value.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

/// The token passed when creating a key (see the module docs).
pub const CREATE_CAS: u32 = u32::MAX;

/// Compare-and-swap attempts before [`update`] gives up with [`StoreError::Contended`].
pub const MAX_ATTEMPTS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The value changed since it was read (CAS token mismatch).
    CasMismatch,
    /// Too many concurrent writers; the update did not happen.
    Contended,
    /// The host refused the call.
    Unavailable(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::CasMismatch => f.write_str("shared data changed concurrently (CAS mismatch)"),
            StoreError::Contended => write!(f, "shared data still contended after {MAX_ATTEMPTS} attempts"),
            StoreError::Unavailable(why) => write!(f, "shared data unavailable: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A byte-value store with compare-and-swap.
pub trait SharedStore {
    /// The value and its CAS token, or None when the key is missing.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Writes `value` if the key's token is still `cas` (see the module docs for missing keys).
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// Applies `decide` to the current value until its write wins, and returns what it decided.
/// `decide` gets the current bytes (None when missing) and returns the decision and the new
/// bytes, or None to leave the value as it is.
pub fn update<S, T>(
    store: &S,
    key: &str,
    decide: impl FnMut(Option<&[u8]>) -> (T, Option<Vec<u8>>),
) -> Result<T, StoreError>
where
    S: SharedStore + ?Sized,
{
    update_from(store, key, None, decide)
}

/// As [`update`], starting from a value the caller has just read (`Some(read)`), which saves a
/// read (in Envoy a shared-data read costs more than the write). A stale value only costs a CAS
/// mismatch and a fresh read.
pub fn update_from<S, T>(
    store: &S,
    key: &str,
    mut read: Option<Option<(Vec<u8>, u32)>>,
    mut decide: impl FnMut(Option<&[u8]>) -> (T, Option<Vec<u8>>),
) -> Result<T, StoreError>
where
    S: SharedStore + ?Sized,
{
    for _ in 0..MAX_ATTEMPTS {
        let current = match read.take() {
            Some(current) => current,
            None => store.get(key)?,
        };
        let (result, new) = decide(current.as_ref().map(|(v, _)| v.as_slice()));
        let Some(new) = new else { return Ok(result) };
        let cas = current.map_or(CREATE_CAS, |(_, cas)| cas);
        match store.set(key, &new, cas) {
            Ok(()) => return Ok(result),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Contended)
}

/// An in-memory store with Envoy's semantics, for tests and the native tools.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: RefCell<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// FNV-hashed: the keys are the filter's own (`bw/<policy>/…`, slot numbers, not client text).
    map: HashMap<String, (Vec<u8>, u32), crate::fnv::BuildFnv>,
    next_cas: u32,
}

impl MemoryStore {
    pub fn len(&self) -> usize {
        self.inner.borrow().map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Total bytes of keys and values, for memory-bound tests.
    pub fn bytes(&self) -> usize {
        self.inner
            .borrow()
            .map
            .iter()
            .map(|(k, (v, _))| k.len().saturating_add(v.len()))
            .fold(0, usize::saturating_add)
    }

    /// [`SharedStore::get`] without copying the value: `f` sees it in place.
    pub fn with<R>(&self, key: &str, f: impl FnOnce(Option<(&[u8], u32)>) -> R) -> R {
        f(self.inner.borrow().map.get(key).map(|(v, cas)| (v.as_slice(), *cas)))
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.inner.borrow().map.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut inner = self.inner.borrow_mut();
        // Envoy: tokens come from one counter, starting at 1 and skipping 0.
        inner.next_cas = inner.next_cas.wrapping_add(1).max(1);
        let token = inner.next_cas;
        match inner.map.get_mut(key) {
            Some(entry) if cas != 0 && entry.1 != cas => Err(StoreError::CasMismatch),
            Some(entry) => {
                // The old value's buffer is reused: no allocation when the size stays.
                entry.0.clear();
                entry.0.extend_from_slice(value);
                entry.1 = token;
                Ok(())
            }
            None => {
                inner.map.insert(key.to_string(), (value.to_vec(), token));
                Ok(())
            }
        }
    }
}

/// A [`MemoryStore`] that counts the calls made to it: what a decision costs in host calls
/// (in Envoy each shared-data call is a host call). For tests and benchmarks.
#[derive(Debug, Default)]
pub struct CountingStore {
    pub inner: MemoryStore,
    gets: std::cell::Cell<u32>,
    sets: std::cell::Cell<u32>,
}

impl CountingStore {
    /// (reads, writes) since the last call.
    pub fn take(&self) -> (u32, u32) {
        (self.gets.replace(0), self.sets.replace(0))
    }
}

impl SharedStore for CountingStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.gets.set(self.gets.get().saturating_add(1));
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.sets.set(self.sets.get().saturating_add(1));
        self.inner.set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn increment(store: &MemoryStore) -> u64 {
        update(store, "n", |cur| {
            let n = cur.and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes) + 1;
            (n, Some(n.to_le_bytes().to_vec()))
        })
        .unwrap()
    }

    #[test]
    fn missing_keys_accept_any_token_existing_keys_check_it() {
        let s = MemoryStore::default();
        assert_eq!(s.get("k").unwrap(), None);
        s.set("k", b"a", 12345).unwrap();
        let (_, cas) = s.get("k").unwrap().unwrap();
        assert_eq!(s.set("k", b"b", cas.wrapping_add(1)), Err(StoreError::CasMismatch));
        s.set("k", b"b", cas).unwrap();
        assert_eq!(s.get("k").unwrap().unwrap().0, b"b");
    }

    /// Two writers interleaved at the worst point of key creation: both saw the key missing.
    /// With CREATE_CAS the second write is refused and redone, so no increment is lost.
    #[test]
    fn creation_race_loses_no_update() {
        let s = MemoryStore::default();
        // Writer A saw "missing" and decided 1; writer B also saw "missing" and decided 1.
        s.set("n", &1u64.to_le_bytes(), CREATE_CAS).unwrap();
        assert_eq!(s.set("n", &1u64.to_le_bytes(), CREATE_CAS), Err(StoreError::CasMismatch));
        // B retries through update and lands on 2.
        assert_eq!(increment(&s), 2);
    }

    #[test]
    fn with_sees_what_get_returns_and_a_rewrite_replaces_the_whole_value() {
        let s = MemoryStore::default();
        assert!(s.with("k", |v| v.is_none()));
        s.set("k", b"abcdef", 0).unwrap();
        let got = s.get("k").unwrap().unwrap();
        assert_eq!(s.with("k", |v| v.map(|(b, cas)| (b.to_vec(), cas))), Some(got.clone()));
        s.set("k", b"z", got.1).unwrap();
        let (value, cas) = s.get("k").unwrap().unwrap();
        assert_eq!((value.as_slice(), cas == got.1), (&b"z"[..], false));
    }

    #[test]
    fn update_counts_exactly() {
        let s = MemoryStore::default();
        for _ in 0..1000 {
            increment(&s);
        }
        assert_eq!(increment(&s), 1001);
    }

    /// A store whose writes always lose: update gives up instead of spinning forever.
    #[test]
    fn update_gives_up_under_endless_contention() {
        struct Busy;
        impl SharedStore for Busy {
            fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
                Ok(Some((vec![], 1)))
            }
            fn set(&self, _: &str, _: &[u8], _: u32) -> Result<(), StoreError> {
                Err(StoreError::CasMismatch)
            }
        }
        assert_eq!(update(&Busy, "k", |_| ((), Some(vec![1]))), Err(StoreError::Contended));
    }
}
