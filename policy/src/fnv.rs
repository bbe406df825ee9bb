//! FNV-1a, for maps whose keys a client cannot choose freely (configuration names, the filter's
//! own shared-data keys): SipHash, the standard library's default, is keyed against chosen
//! collisions and costs several times more per short key.

use std::hash::{BuildHasherDefault, Hasher};

/// The FNV-1a hasher.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fnv(u64);

/// A `HashMap`'s hasher builder for [`Fnv`].
pub type BuildFnv = BuildHasherDefault<Fnv>;

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_fnv1a_vectors() {
        let hash = |s: &[u8]| {
            let mut h = Fnv::default();
            h.write(s);
            h.finish()
        };
        // From the FNV reference test suite (64-bit FNV-1a).
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
