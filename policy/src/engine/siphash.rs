//! SipHash-2-4 (Aumasson and Bernstein), written out here so that key fingerprints are the same in
//! every build: the standard library's `DefaultHasher` is SipHash-1-3 today but documents no
//! algorithm and may change between Rust releases, and a fingerprint written to shared data by one
//! build must be recognised by the next.
//!
//! Keyed with a per-deployment seed (the document's `key_seed`), it is a pseudo-random function: a
//! client who controls a key header cannot compute which slot a key lands in, so cannot aim keys
//! at someone else's probe window.

use std::hash::Hasher;

/// A streaming SipHash-2-4 hasher.
#[derive(Debug, Clone)]
pub struct SipHasher24 {
    v: [u64; 4],
    /// Bytes written so far (its low byte goes into the final block).
    length: u64,
    /// Up to 7 bytes not yet processed, little-endian in the low bytes.
    tail: u64,
    ntail: u32,
}

impl SipHasher24 {
    pub fn new(k0: u64, k1: u64) -> Self {
        SipHasher24 {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            length: 0,
            tail: 0,
            ntail: 0,
        }
    }

    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    fn block(&mut self, m: u64) {
        self.v[3] ^= m;
        Self::round(&mut self.v);
        Self::round(&mut self.v);
        self.v[0] ^= m;
    }
}

impl Hasher for SipHasher24 {
    fn write(&mut self, bytes: &[u8]) {
        self.length = self.length.wrapping_add(bytes.len() as u64);
        for &b in bytes {
            // ntail < 8 here (a full tail is compressed below): the shift is at most 56.
            self.tail |= u64::from(b).wrapping_shl(8u32.wrapping_mul(self.ntail));
            self.ntail = self.ntail.wrapping_add(1);
            if self.ntail == 8 {
                let m = self.tail;
                self.block(m);
                self.tail = 0;
                self.ntail = 0;
            }
        }
    }

    fn finish(&self) -> u64 {
        let mut s = self.clone();
        let m = s.tail | ((s.length & 0xff) << 56);
        s.block(m);
        s.v[2] ^= 0xff;
        for _ in 0..4 {
            Self::round(&mut s.v);
        }
        s.v[0] ^ s.v[1] ^ s.v[2] ^ s.v[3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference vectors of the SipHash paper (key 00..0f, messages 00, 00 01, …): the first
    /// ones and the 15-byte message of its appendix.
    #[test]
    fn matches_the_reference_vectors() {
        let (k0, k1) = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        let hash = |len: u8| {
            let mut h = SipHasher24::new(k0, k1);
            h.write(&(0..len).collect::<Vec<u8>>());
            h.finish()
        };
        assert_eq!(hash(0), 0x726f_db47_dd0e_0e31);
        assert_eq!(hash(1), 0x74f8_39c5_93dc_67fd);
        assert_eq!(hash(15), 0xa129_ca61_49be_45e5);
        // Written in pieces, the same.
        let mut h = SipHasher24::new(k0, k1);
        h.write(&[0, 1, 2]);
        h.write(&[3, 4, 5, 6, 7, 8, 9]);
        h.write(&[10, 11, 12, 13, 14]);
        assert_eq!(h.finish(), 0xa129_ca61_49be_45e5);
    }
}
