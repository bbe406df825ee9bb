//! A request as policies see it: what a matcher or a key reads ([`RequestView`]), and the keys
//! composed from it. Below the plan and the global limits, which both read requests.

use crate::engine::keys::KeySeed;
use crate::model::KeyPart;

/// What a matcher needs to know about a request.
pub trait RequestView {
    /// `:authority`, possibly with a port.
    fn authority(&self) -> &str;
    /// `:path`, possibly with a query string.
    fn path(&self) -> &str;
    fn method(&self) -> &str;
    /// A request header by lower-case name.
    fn header(&self, name: &str) -> Option<&str>;
    /// The downstream client's IP address (without port), when known.
    fn client_ip(&self) -> Option<&str> {
        None
    }
}

/// A request held in plain fields: for tests, simulations and tools. The filter names headers
/// with `&str` borrowed from the plan (`N`), so reading a request copies no header names.
#[derive(Debug, Clone, Default)]
pub struct SimpleRequest<N = String> {
    pub authority: String,
    pub path: String,
    pub method: String,
    pub headers: Vec<(N, String)>,
    pub client_ip: Option<String>,
}

impl SimpleRequest {
    pub fn new(method: &str, authority: &str, path: &str) -> Self {
        SimpleRequest {
            authority: authority.into(),
            path: path.into(),
            method: method.into(),
            ..Self::default()
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn from_ip(mut self, ip: &str) -> Self {
        self.client_ip = Some(ip.into());
        self
    }
}

impl<N: AsRef<str>> RequestView for SimpleRequest<N> {
    fn authority(&self) -> &str {
        &self.authority
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn method(&self) -> &str {
        &self.method
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.as_ref() == name).map(|(_, v)| v.as_str())
    }
    fn client_ip(&self) -> Option<&str> {
        self.client_ip.as_deref()
    }
}

/// `s` up to its first `byte` (ASCII), or all of it. A plain loop: the strings are short (a path,
/// an authority), and `split_once(char)` paid memchr's setup each time (BENCHMARKS.md,
/// optimisation log).
pub fn until(s: &str, byte: u8) -> &str {
    debug_assert!(byte.is_ascii());
    match s.bytes().position(|c| c == byte) {
        // An ASCII byte is always a character boundary.
        Some(i) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

/// The composed key of a request: its parts joined by U+001F (which header values cannot hold).
pub fn compose_key(parts: &[KeyPart], req: &impl RequestView) -> Vec<u8> {
    let mut key = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(0x1f);
        }
        key.extend_from_slice(key_part(part, req).as_bytes());
    }
    key
}

/// `keys::fingerprint(&compose_key(parts, req))`, without building the key: the hasher takes the
/// length the key would have, then its bytes part by part (a test checks they agree).
pub fn key_fingerprint(seed: KeySeed, parts: &[KeyPart], req: &impl RequestView) -> u64 {
    let separators = parts.len().saturating_sub(1);
    let len = parts.iter().map(|p| key_part(p, req).len()).fold(separators, usize::saturating_add);
    crate::engine::keys::fingerprint_parts(seed, len, parts.iter().map(|p| key_part(p, req)))
}

pub fn key_part<'r>(part: &KeyPart, req: &'r impl RequestView) -> &'r str {
    match part {
        KeyPart::ClientIp => req.client_ip().unwrap_or_default(),
        KeyPart::Host => req.authority(),
        KeyPart::Method => req.method(),
        KeyPart::Path => until(req.path(), b'?'),
        KeyPart::Header(h) => req.header(h).unwrap_or_default(),
    }
}
