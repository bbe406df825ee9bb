//! One shared-data value per policy for the state that has no request key.
//!
//! In Envoy every shared-data call is a host call (a read also makes the host allocate guest
//! memory for the answer; BENCHMARKS.md has the price). A policy with a rate limit, a concurrency limit, a
//! breaker and a retry budget used to keep four values and make eleven calls per request. Its
//! unkeyed state now lives in one *record* of [`SECTIONS`] sections (rate limit, concurrency,
//! breaker, budget), read and written once at admission and once at the end of the stream.
//! Keyed state (per client, per API key) stays in its bounded [`super::keys::KeyTable`].
//!
//! Layout: the tag `P`, then per section a little-endian u16 length and that many bytes (0 = no
//! state yet). Each section holds exactly what its engine would store alone, so every engine still
//! recognises foreign or damaged bytes as "no state yet"; a damaged record reads as empty.

use super::store::{SharedStore, StoreError, update as update_value};

const TAG: u8 = 0x50; // 'P'

/// Sections of a record, in this order.
pub const SECTIONS: usize = 4;
pub const RATE_LIMIT: usize = 0;
pub const CONCURRENCY: usize = 1;
pub const BREAKER: usize = 2;
pub const BUDGET: usize = 3;

/// The sections of a stored record (None where a section has no state).
pub fn split(bytes: Option<&[u8]>) -> [Option<&[u8]>; SECTIONS] {
    let mut out = [None; SECTIONS];
    let Some(mut rest) = bytes.and_then(|b| b.strip_prefix(&[TAG])) else { return out };
    for section in &mut out {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else { return [None; SECTIONS] };
        let len = usize::from(u16::from_le_bytes(*len));
        let Some((value, tail)) = tail.split_at_checked(len) else { return [None; SECTIONS] };
        *section = (!value.is_empty()).then_some(value);
        rest = tail;
    }
    if rest.is_empty() { out } else { [None; SECTIONS] }
}

/// The record with `changed` sections replaced (None = keep the `old` section). A section longer
/// than a u16 can say is dropped (no engine state comes near 64 KiB; the breaker's largest is
/// about 2.5 KB).
pub fn join(old: &[Option<&[u8]>; SECTIONS], changed: &[Option<Vec<u8>>; SECTIONS]) -> Vec<u8> {
    let section = |i: usize| -> &[u8] {
        let value =
            changed.get(i).and_then(Option::as_deref).or(old.get(i).copied().flatten()).unwrap_or_default();
        if value.len() > usize::from(u16::MAX) { &[] } else { value }
    };
    let mut out = Vec::with_capacity(
        (0..SECTIONS).map(|i| section(i).len().saturating_add(2)).fold(1, usize::saturating_add),
    );
    out.push(TAG);
    for i in 0..SECTIONS {
        let value = section(i);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// New section values (None = unchanged), filled in by the caller's decision.
pub type Changes = [Option<Vec<u8>>; SECTIONS];

/// Updates the record at `key` in a CAS loop: `decide` reads the current sections and fills in
/// the ones it changes; the record is written only when one did.
pub fn update<S, T>(
    store: &S,
    key: &str,
    mut decide: impl FnMut(&[Option<&[u8]>; SECTIONS], &mut Changes) -> T,
) -> Result<T, StoreError>
where
    S: SharedStore + ?Sized,
{
    update_value(store, key, |bytes| {
        let old = split(bytes);
        let mut new = Changes::default();
        let result = decide(&old, &mut new);
        let write = new.iter().any(Option::is_some).then(|| join(&old, &new));
        (result, write)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_round_trip_and_unchanged_sections_are_kept() {
        let empty = split(None);
        assert_eq!(empty, [None; SECTIONS]);
        let first = join(&empty, &[Some(vec![1, 2]), None, Some(vec![3]), None]);
        let read = split(Some(&first));
        assert_eq!(read, [Some(&[1u8, 2][..]), None, Some(&[3u8][..]), None]);
        let second = join(&read, &[None, Some(vec![9]), None, Some(vec![7, 7, 7])]);
        assert_eq!(
            split(Some(&second)),
            [Some(&[1u8, 2][..]), Some(&[9u8][..]), Some(&[3u8][..]), Some(&[7u8, 7, 7][..])]
        );
    }

    #[test]
    fn foreign_or_damaged_records_read_as_empty() {
        let good = join(&[None; SECTIONS], &[Some(vec![1]), Some(vec![2]), Some(vec![3]), Some(vec![4])]);
        assert_eq!(split(Some(b"R12345678")), [None; SECTIONS]);
        assert_eq!(split(Some(&good[..good.len() - 1])), [None; SECTIONS], "truncated");
        let mut long = good.clone();
        long.push(0);
        assert_eq!(split(Some(&long)), [None; SECTIONS], "trailing bytes");
        let mut lying = good;
        lying[1] = 200; // the first section claims 200 bytes
        assert_eq!(split(Some(&lying)), [None; SECTIONS]);
    }

    #[test]
    fn an_oversized_section_is_dropped_not_wrapped() {
        let huge = vec![1u8; usize::from(u16::MAX) + 1];
        let record = join(&[None; SECTIONS], &[Some(huge), Some(vec![5]), None, None]);
        assert_eq!(split(Some(&record)), [None, Some(&[5u8][..]), None, None]);
    }
}
