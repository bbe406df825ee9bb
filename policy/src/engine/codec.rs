//! A tiny little-endian byte codec for engine state kept in shared data.
//!
//! Every state value starts with a one-byte tag naming its layout, so a value written by another
//! engine or another version is recognised as foreign and treated as "no state yet" instead of
//! being misread.

#[derive(Debug, Default)]
pub struct ByteWriter(Vec<u8>);

impl ByteWriter {
    pub fn with_tag(tag: u8) -> Self {
        Self::sized(tag, 16)
    }
    /// A writer with room for `len` bytes after the tag (one allocation for values of that size).
    pub fn sized(tag: u8, len: usize) -> Self {
        let mut v = Vec::with_capacity(len.saturating_add(1));
        v.push(tag);
        ByteWriter(v)
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

#[derive(Debug)]
pub struct ByteReader<'a>(&'a [u8]);

impl<'a> ByteReader<'a> {
    /// A reader of untagged bytes (a part of a value).
    pub fn new(bytes: &'a [u8]) -> Self {
        ByteReader(bytes)
    }
    /// A reader past the tag, or None when the value is not of this layout.
    pub fn with_tag(bytes: &'a [u8], tag: u8) -> Option<Self> {
        match bytes.split_first() {
            Some((t, rest)) if *t == tag => Some(ByteReader(rest)),
            _ => None,
        }
    }
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    pub fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    pub fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    /// True when every byte was read (a longer value is foreign).
    pub fn done(&self) -> bool {
        self.0.is_empty()
    }
}
