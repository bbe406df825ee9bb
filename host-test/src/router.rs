//! Envoy's router as the filter drives it: retries and timeouts from the `x-envoy-*` request headers
//! the filter set (docs/envoy-facts.md: honoured when the route has no retry policy of its own), attempts
//! counted, response flags and code details as Envoy reports them.
//!
//! - `x-envoy-retry-on`: `5xx` (5xx responses, resets, connect failures, per-try timeouts),
//!   `gateway-error` (502/503/504 and per-try timeouts), `reset` (resets, connect failures and
//!   per-try timeouts), `connect-failure`, `retriable-status-codes` (with
//!   `x-envoy-retriable-status-codes`), `retriable-4xx` (409).
//! - `x-envoy-max-retries` (default 1 when a retry-on is set).
//! - Backoff: full-jitter exponential, retry k waits uniformly in [0, min(25·2^(k-1), 250)) ms.
//! - `x-envoy-upstream-rq-per-try-timeout-ms`, `x-envoy-upstream-rq-timeout-ms` (overall: 504
//!   `upstream request timeout`, details `response_timeout`, flag UT).
//! - Retries exhausted: the last response is returned, with flag URX.
//! - The retry headers are not forwarded upstream.

use crate::exchange::UpstreamAnswer;
use crate::state::HeaderMap;

/// Envoy response flags (StreamInfo bit values).
pub mod flags {
    pub const UT: u64 = 0x4;
    pub const UR: u64 = 0x10;
    pub const UF: u64 = 0x20;
    pub const UC: u64 = 0x40;
    pub const URX: u64 = 0x8000;
}

const NS_PER_MS: u64 = 1_000_000;

/// What one attempt against the upstream gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A response after `latency_ns`.
    Response { status: u16, headers: HeaderMap, body: Vec<u8>, latency_ns: u64 },
    /// The upstream reset the stream after `after_ns`, before responding.
    Reset { after_ns: u64 },
    /// No connection could be made.
    ConnectFailure,
}

impl Attempt {
    pub fn status(status: u16, latency_ns: u64) -> Attempt {
        Attempt::Response { status, headers: Vec::new(), body: Vec::new(), latency_ns }
    }
}

/// The request headers the router reads (and does not forward).
const ROUTER_HEADERS: [&str; 5] = [
    "x-envoy-retry-on",
    "x-envoy-retriable-status-codes",
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-ms",
];

/// The router's instructions, read from the request headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    pub retry_on: Vec<String>,
    pub statuses: Vec<u16>,
    pub max_retries: u32,
    pub per_try_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
}

impl RetryPolicy {
    /// Reads the router headers and removes them from the map (they are not forwarded).
    pub fn take_from(headers: &mut HeaderMap) -> RetryPolicy {
        let p = RetryPolicy::read(headers);
        headers.retain(|(k, _)| !ROUTER_HEADERS.contains(&k.as_ref()));
        p
    }

    /// Reads the router headers, leaving the map as it is.
    pub fn read(headers: &HeaderMap) -> RetryPolicy {
        let mut p = RetryPolicy::default();
        let mut max_retries = None;
        for (k, v) in headers {
            if !ROUTER_HEADERS.contains(&k.as_ref()) {
                continue;
            }
            let text = String::from_utf8_lossy(v);
            match k.as_ref() {
                "x-envoy-retry-on" => p.retry_on = text.split(',').map(|s| s.trim().to_string()).collect(),
                "x-envoy-retriable-status-codes" => {
                    p.statuses = text.split(',').filter_map(|s| s.trim().parse().ok()).collect()
                }
                "x-envoy-max-retries" => max_retries = text.trim().parse().ok(),
                "x-envoy-upstream-rq-per-try-timeout-ms" => p.per_try_timeout_ms = text.trim().parse().ok(),
                _ => p.timeout_ms = text.trim().parse().ok(),
            }
        }
        p.max_retries = if p.retry_on.is_empty() { 0 } else { max_retries.unwrap_or(1) };
        p
    }

    fn on(&self, condition: &str) -> bool {
        self.retry_on.iter().any(|c| c == condition)
    }

    /// Whether an attempt's outcome is retried under this policy.
    fn retriable(&self, outcome: &Outcome) -> bool {
        match outcome {
            Outcome::Response(status) => {
                (self.on("5xx") && *status >= 500)
                    || (self.on("gateway-error") && matches!(status, 502..=504))
                    || (self.on("retriable-status-codes") && self.statuses.contains(status))
                    || (self.on("retriable-4xx") && *status == 409)
            }
            Outcome::Reset => self.on("5xx") || self.on("reset"),
            Outcome::ConnectFailure => self.on("5xx") || self.on("reset") || self.on("connect-failure"),
            Outcome::PerTryTimeout => self.on("5xx") || self.on("gateway-error") || self.on("reset"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Response(u16),
    Reset,
    ConnectFailure,
    PerTryTimeout,
}

/// Runs the router for one forwarded request. `attempt(k, start)` gives the k-th attempt (1-based),
/// which starts `start` ns after the request reached the router; `random()` draws the backoff
/// jitter (seeded by the caller, for deterministic runs).
pub fn route(
    headers: &mut HeaderMap,
    attempt: impl FnMut(u32, u64, &HeaderMap) -> Attempt,
    random: impl FnMut() -> u64,
) -> UpstreamAnswer {
    let policy = RetryPolicy::take_from(headers);
    route_with(&policy, headers, attempt, random)
}

/// [`route`] with the router's instructions already read; `headers` are what each attempt
/// carries upstream.
pub fn route_with(
    policy: &RetryPolicy,
    headers: &HeaderMap,
    mut attempt: impl FnMut(u32, u64, &HeaderMap) -> Attempt,
    mut random: impl FnMut() -> u64,
) -> UpstreamAnswer {
    let overall = policy.timeout_ms.map(|ms| ms * NS_PER_MS);
    let mut elapsed = 0u64;
    let mut k = 0u32;
    let mut tries = Vec::new();
    loop {
        k += 1;
        let per_try = policy.per_try_timeout_ms.map(|ms| ms * NS_PER_MS);
        let result = attempt(k, elapsed, headers);
        let (outcome, spent, response) = match result {
            Attempt::Response { status, headers, body, latency_ns } => match per_try {
                Some(limit) if latency_ns > limit => (Outcome::PerTryTimeout, limit, None),
                _ => (Outcome::Response(status), latency_ns, Some((status, headers, body))),
            },
            Attempt::Reset { after_ns } => match per_try {
                Some(limit) if after_ns > limit => (Outcome::PerTryTimeout, limit, None),
                _ => (Outcome::Reset, after_ns, None),
            },
            Attempt::ConnectFailure => (Outcome::ConnectFailure, 0, None),
        };
        // The overall timeout cuts the attempt in flight.
        let cut = overall.filter(|limit| elapsed + spent > *limit);
        if outcome != Outcome::ConnectFailure {
            tries.push((elapsed, cut.unwrap_or(elapsed + spent)));
        }
        if let Some(limit) = cut {
            return finish(504, b"upstream request timeout", flags::UT, "response_timeout", k, limit)
                .with_tries(tries);
        }
        elapsed += spent;
        let retry = policy.retriable(&outcome) && k <= policy.max_retries;
        if !retry {
            let exhausted = policy.retriable(&outcome) && k > policy.max_retries && policy.max_retries > 0;
            let urx = if exhausted { flags::URX } else { 0 };
            return match (outcome, response) {
                (Outcome::Response(_), Some((status, headers, body))) => UpstreamAnswer {
                    status,
                    headers,
                    body,
                    flags: urx,
                    details: "via_upstream".into(),
                    attempts: u64::from(k),
                    duration_ns: elapsed,
                    tries,
                },
                (Outcome::PerTryTimeout, _) => finish(
                    504,
                    b"upstream request timeout",
                    flags::UT | urx,
                    "upstream_per_try_timeout",
                    k,
                    elapsed,
                )
                .with_tries(tries),
                (Outcome::ConnectFailure, _) => finish(
                    503,
                    b"upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                    flags::UF | urx,
                    "upstream_reset_before_response_started{remote_connection_failure}",
                    k,
                    elapsed,
                )
                .with_tries(tries),
                _ => finish(
                    503,
                    b"upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                    flags::UC | urx,
                    "upstream_reset_before_response_started{connection_termination}",
                    k,
                    elapsed,
                )
                .with_tries(tries),
            };
        }
        // Full-jitter exponential backoff before the next attempt.
        let cap = (25u64 << (k - 1).min(4)).min(250) * NS_PER_MS;
        elapsed += random() % cap;
        if let Some(limit) = overall
            && elapsed > limit
        {
            return finish(504, b"upstream request timeout", flags::UT, "response_timeout", k, limit)
                .with_tries(tries);
        }
    }
}

/// The upstream side of [`crate::Vm::request`] through the router: attempts from `attempt`, backoff
/// jitter from the world's seeded generator.
pub fn via_router<'a>(
    world: &'a crate::World,
    attempt: impl FnMut(u32, u64, &HeaderMap) -> Attempt + 'a,
) -> impl FnOnce(&HeaderMap) -> UpstreamAnswer + 'a {
    move |forwarded| {
        let mut headers = forwarded.clone();
        route(&mut headers, attempt, || world.next_random())
    }
}

fn finish(
    status: u16,
    body: &[u8],
    flags: u64,
    details: &str,
    attempts: u32,
    elapsed: u64,
) -> UpstreamAnswer {
    UpstreamAnswer {
        status,
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: body.to_vec(),
        flags,
        details: details.into(),
        attempts: u64::from(attempts),
        duration_ns: elapsed,
        tries: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.to_string().into(), v.as_bytes().to_vec())).collect()
    }

    fn run(h: &[(&str, &str)], script: &[Attempt]) -> (UpstreamAnswer, HeaderMap) {
        let mut hm = headers(h);
        let mut seed = 7u64;
        let up = route(
            &mut hm,
            |k, _, _| {
                script.get(k as usize - 1).or(script.last()).cloned().unwrap_or(Attempt::ConnectFailure)
            },
            || {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                seed >> 11
            },
        );
        (up, hm)
    }

    #[test]
    fn fails_twice_then_succeeds_and_headers_are_not_forwarded() {
        let (up, forwarded) = run(
            &[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "2"), ("x-app", "1")],
            &[Attempt::status(503, 1), Attempt::status(503, 1), Attempt::status(200, 1)],
        );
        assert_eq!((up.status, up.attempts, up.flags), (200, 3, 0));
        assert_eq!(forwarded, headers(&[("x-app", "1")]));
    }

    #[test]
    fn exhausted_retries_return_the_last_response_with_urx() {
        let (up, _) =
            run(&[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "2")], &[Attempt::status(503, 1)]);
        assert_eq!((up.status, up.attempts, up.flags), (503, 3, flags::URX));
    }

    #[test]
    fn attempts_that_reached_the_upstream_are_recorded_with_their_times() {
        let ms = NS_PER_MS;
        let mut hm = headers(&[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "2")]);
        let mut starts = Vec::new();
        let script =
            [Attempt::ConnectFailure, Attempt::Reset { after_ns: 3 * ms }, Attempt::status(200, 7 * ms)];
        let up = route(
            &mut hm,
            |k, start, _| {
                starts.push(start);
                script[k as usize - 1].clone()
            },
            || 0,
        );
        // No backoff (the jitter draws 0): each attempt starts when the previous one ended.
        assert_eq!(starts, [0, 0, 3 * ms]);
        assert_eq!((up.status, up.attempts, up.duration_ns), (200, 3, 10 * ms));
        assert_eq!(up.tries, [(0, 3 * ms), (3 * ms, 10 * ms)]);
    }

    #[test]
    fn no_retry_headers_means_one_attempt() {
        let (up, _) = run(&[], &[Attempt::status(503, 1), Attempt::status(200, 1)]);
        assert_eq!((up.status, up.attempts), (503, 1));
    }

    #[test]
    fn conditions() {
        let gw = [("x-envoy-retry-on", "gateway-error")];
        assert_eq!(run(&gw, &[Attempt::status(500, 1), Attempt::status(200, 1)]).0.attempts, 1);
        assert_eq!(run(&gw, &[Attempt::status(502, 1), Attempt::status(200, 1)]).0.attempts, 2);
        let codes =
            [("x-envoy-retry-on", "retriable-status-codes"), ("x-envoy-retriable-status-codes", "409,429")];
        assert_eq!(run(&codes, &[Attempt::status(429, 1), Attempt::status(200, 1)]).0.status, 200);
        let cf = [("x-envoy-retry-on", "connect-failure")];
        assert_eq!(run(&cf, &[Attempt::ConnectFailure, Attempt::status(200, 1)]).0.status, 200);
        assert_eq!(run(&cf, &[Attempt::Reset { after_ns: 1 }, Attempt::status(200, 1)]).0.status, 503);
    }

    #[test]
    fn connect_failure_and_reset_look_like_envoy() {
        let (up, _) = run(&[], &[Attempt::ConnectFailure]);
        assert_eq!((up.status, up.flags), (503, flags::UF));
        assert!(up.details.contains("connection_failure"));
        let (up, _) = run(&[], &[Attempt::Reset { after_ns: 5 }]);
        assert_eq!((up.status, up.flags), (503, flags::UC));
    }

    #[test]
    fn per_try_and_overall_timeouts() {
        let ms = NS_PER_MS;
        let h = [
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-max-retries", "1"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "100"),
        ];
        let (up, _) = run(&h, &[Attempt::status(200, 300 * ms), Attempt::status(200, 10 * ms)]);
        assert_eq!((up.status, up.attempts), (200, 2));
        let (up, _) = run(&h, &[Attempt::status(200, 300 * ms)]);
        assert_eq!(
            (up.status, up.flags & flags::UT, up.details.as_str()),
            (504, flags::UT, "upstream_per_try_timeout")
        );
        let (up, _) = run(&[("x-envoy-upstream-rq-timeout-ms", "200")], &[Attempt::status(200, 500 * ms)]);
        assert_eq!(
            (up.status, up.flags, up.details.as_str(), up.duration_ns),
            (504, flags::UT, "response_timeout", 200 * ms)
        );
    }

    #[test]
    fn backoff_is_full_jitter_within_envoys_bounds() {
        let ms = NS_PER_MS;
        for seed in 0..200u64 {
            let mut hm = headers(&[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "3")]);
            let mut s = seed;
            let up = route(
                &mut hm,
                |_, _, _| Attempt::status(503, 0),
                || {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    s >> 7
                },
            );
            // Three backoffs: < 25 + 50 + 100 ms.
            assert!(up.duration_ns < 175 * ms, "{}", up.duration_ns);
        }
    }
}
