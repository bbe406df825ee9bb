//! What goes into a simulated stream and what comes out of it: the request as it reaches the
//! filter, what the upstream side answered, and the response the client got.

use crate::state::{HeaderMap, LocalReply};

/// A request as it reaches the filter.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub authority: String,
    pub path: String,
    pub headers: HeaderMap,
    /// `source.address`, e.g. `10.0.0.1:5555`.
    pub source: String,
}

impl Request {
    pub fn get(authority: &str, path: &str) -> Request {
        Request {
            method: "GET".into(),
            authority: authority.into(),
            path: path.into(),
            source: "10.0.0.1:40000".into(),
            ..Request::default()
        }
    }
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Request {
        self.headers.push((name.to_ascii_lowercase().into(), value.into()));
        self
    }
}

/// What the upstream side (router + upstream) produced for a forwarded request.
#[derive(Debug, Clone, Default)]
pub struct UpstreamAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub flags: u64,
    pub details: String,
    pub attempts: u64,
    pub duration_ns: u64,
    /// The attempts that reached the upstream (connect failures did not), as (start, end) in ns
    /// since the request reached the router.
    pub tries: Vec<(u64, u64)>,
}

impl UpstreamAnswer {
    pub fn status(status: u16) -> UpstreamAnswer {
        UpstreamAnswer { status, attempts: 1, details: "via_upstream".into(), ..UpstreamAnswer::default() }
    }

    pub(crate) fn with_tries(mut self, tries: Vec<(u64, u64)>) -> UpstreamAnswer {
        self.tries = tries;
        self
    }
}

/// Where a stream stands after [`crate::Vm::begin`].
#[derive(Debug, Clone)]
pub enum Begun {
    /// The filter let it through; [`crate::Vm::forwarded`] has the headers the router receives.
    Forwarded { stream: u32 },
    /// The filter answered it itself (complete it with no upstream outcome).
    Answered { stream: u32 },
    /// The filter paused it, waiting for a gRPC call's answer: it is forwarded or answered when
    /// the answer is delivered ([`crate::Vm::deliver`], then [`crate::Vm::take_woken`]).
    Paused { stream: u32 },
    /// The VM has failed (fail closed): this is the answer.
    Failed(ClientResponse),
}

impl Begun {
    /// The stream, unless the VM has failed.
    pub fn stream(&self) -> Option<u32> {
        match self {
            Begun::Forwarded { stream } | Begun::Answered { stream } | Begun::Paused { stream } => {
                Some(*stream)
            }
            Begun::Failed(_) => None,
        }
    }
}

/// How a stream ended, as the client saw it.
#[derive(Debug, Clone)]
pub struct ClientResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The filter answered itself (on the request path, or replacing the upstream's response).
    pub local: bool,
    /// The request headers as the upstream side received them (None when not forwarded).
    pub forwarded: Option<HeaderMap>,
    /// Counter increments the filter made for this stream: (metric id, by).
    pub counted: Vec<(u32, u64)>,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// A local reply as the client gets it. Like Envoy's `sendLocalReply`, a body without a
/// content-type is sent as `text/plain` (found by the fidelity suite).
pub(crate) fn reply_response(reply: &LocalReply) -> ClientResponse {
    let mut headers: HeaderMap = vec![(":status".into(), status_bytes(reply.status))];
    headers.extend(reply.headers.iter().cloned());
    if !reply.body.is_empty() && !reply.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        headers.push(("content-type".into(), b"text/plain".to_vec()));
    }
    ClientResponse {
        status: reply.status,
        headers,
        body: reply.body.clone(),
        local: true,
        forwarded: None,
        counted: Vec::new(),
    }
}

/// Header maps are made with room for this many headers more, so that the ones a filter adds
/// (router instructions, rate-limit headers) do not grow them: a reallocation and a copy per
/// request in the speed bench.
pub(crate) const ROOM_FOR_FILTER_HEADERS: usize = 4;

/// A status code as header bytes, without the formatting machinery (once per response).
pub(crate) fn status_bytes(status: u16) -> Vec<u8> {
    if (100..1000).contains(&status) {
        vec![b'0' + (status / 100) as u8, b'0' + (status / 10 % 10) as u8, b'0' + (status % 10) as u8]
    } else {
        status.to_string().into_bytes()
    }
}

pub(crate) fn upstream_response(up: UpstreamAnswer) -> ClientResponse {
    let mut headers: HeaderMap = Vec::with_capacity(1 + up.headers.len() + ROOM_FOR_FILTER_HEADERS);
    headers.push((":status".into(), status_bytes(up.status)));
    headers.extend(up.headers);
    ClientResponse {
        status: up.status,
        headers,
        body: up.body,
        local: false,
        forwarded: None,
        counted: Vec::new(),
    }
}

/// Envoy's answer once a FAIL_CLOSED plugin has failed on this worker.
pub(crate) fn fail_closed() -> ClientResponse {
    ClientResponse {
        status: 503,
        headers: vec![(":status".into(), b"503".to_vec())],
        body: Vec::new(),
        local: true,
        forwarded: None,
        counted: Vec::new(),
    }
}
