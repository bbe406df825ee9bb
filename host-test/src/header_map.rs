//! proxy-wasm's serialized header map, both ways. Kept free of wasmtime (and of the rest of the
//! crate) so that `fuzz/` can compile this file alone: it decodes bytes a guest wrote.

/// A header map in order, with raw values (HTTP allows any octet).
pub type HeaderMap = Vec<(std::borrow::Cow<'static, str>, Vec<u8>)>;

/// proxy-wasm's serialized header map: count, then (key len, value len) pairs, then each key and
/// value followed by a NUL.
pub fn serialize_map(pairs: &[(impl AsRef<str>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref().as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The inverse of [`serialize_map`]; None when the bytes are not a well-formed map.
pub fn deserialize_map(bytes: &[u8]) -> Option<HeaderMap> {
    let word = |at: usize| -> Option<usize> {
        bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(|b| u32::from_le_bytes(b) as usize)
    };
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let n = word(0)?;
    let mut sizes = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        sizes.push((word(4 + i * 8)?, word(8 + i * 8)?));
    }
    let mut at = 4 + n.checked_mul(8)?;
    let mut out = Vec::with_capacity(sizes.len());
    for (kl, vl) in sizes {
        let k = bytes.get(at..at + kl)?;
        at += kl + 1;
        let v = bytes.get(at..at + vl)?;
        at += vl + 1;
        out.push((String::from_utf8_lossy(k).into_owned().into(), v.to_vec()));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_and_garbage_is_refused() {
        let pairs: HeaderMap = vec![(":path".into(), b"/a".to_vec()), ("x".into(), vec![0xff, 0])];
        assert_eq!(deserialize_map(&serialize_map(&pairs)), Some(pairs));
        assert_eq!(deserialize_map(&[5, 0, 0, 0, 1]), None);
        assert_eq!(deserialize_map(&[0xff, 0xff, 0xff, 0xff]), None);
    }
}
