//! The floor: a proxy-wasm filter that reads one request header and continues.
//!
//! Its plugin configuration can name one host call and a count (`shared_get 10`); the filter then
//! makes that call that many extra times per request, so that `bench/run.py` can price each kind
//! of host call in real Envoy against the floor. An empty configuration is the plain floor.
//! `mimic 7` makes every host call breakwater makes for the benchmark's policy (d), and nothing
//! else: the floor for breakwater's own logic.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { extra: None }) });
}}

/// A host call the filter can repeat per request.
#[derive(Clone, Copy)]
enum Call {
    /// `get_map_value(":path")` on the request headers.
    Header,
    /// `set_map_value("x-bench", "1")` on the request headers.
    SetHeader,
    /// `get_property(["request", "path"])` in on_http_request_headers.
    Property,
    /// `get_shared_data("bench")`.
    SharedGet,
    /// `get_shared_data` then `set_shared_data` with its CAS.
    SharedCas,
    /// `increment_metric` on one counter.
    Metric,
    /// `get_current_time`.
    Time,
    /// `get_property(["upstream", "request_attempt_count"])` in on_http_response_headers (what
    /// breakwater reads to settle a retry budget); needs a proxied route.
    Attempts,
    /// `get_map_value(":status")` on the response headers, in on_http_response_headers.
    Status,
    /// Sets breakwater's router headers for 2 retries on 5xx and a 5 s timeout (count ignored):
    /// what Envoy's router costs when a filter asks it to retry, without any policy logic.
    Router,
    /// Every host call policy (d) of `bench/run.py` makes, in the same callbacks, with values of
    /// the same sizes, and no policy logic: the floor for breakwater's own code. The count says
    /// which callbacks make their calls, as bits: 1 request headers, 2 response headers, 4 on_log.
    Mimic,
}

/// About the size of policy (d)'s shared record (its rate limit, concurrency count, breaker window
/// and retry budget): 235 bytes of key and value in `MemoryStore::bytes` after 200 requests.
const RECORD_BYTES: usize = 224;

#[derive(Clone, Copy)]
struct Extra {
    call: Call,
    count: u32,
    metric: u32,
    gauge: u32,
}

struct Root {
    extra: Option<Extra>,
}

impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&config);
        let mut words = text.split_whitespace();
        let call = match words.next() {
            None => return true,
            Some("header") => Call::Header,
            Some("set_header") => Call::SetHeader,
            Some("property") => Call::Property,
            Some("shared_get") => Call::SharedGet,
            Some("shared_cas") => Call::SharedCas,
            Some("metric") => Call::Metric,
            Some("time") => Call::Time,
            Some("router") => Call::Router,
            Some("attempts") => Call::Attempts,
            Some("status") => Call::Status,
            Some("mimic") => Call::Mimic,
            Some(_) => return false,
        };
        let Some(count) = words.next().and_then(|n| n.parse().ok()) else { return false };
        let count = if matches!(call, Call::Router) { 1 } else { count };
        let metric = hostcalls::define_metric(MetricType::Counter, "bench.calls").unwrap_or(0);
        let gauge = hostcalls::define_metric(MetricType::Gauge, "bench.gauge").unwrap_or(0);
        let _ = hostcalls::set_shared_data("bench", Some(b"01234567"), None);
        let _ = hostcalls::set_shared_data("bench.record", Some(&[7u8; RECORD_BYTES]), None);
        self.extra = Some(Extra { call, count, metric, gauge });
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Noop { extra: self.extra }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop {
    extra: Option<Extra>,
}

/// Policy (d)'s shared-data work at one stream point: the record read and written back with its
/// CAS, the clock read, the in-flight gauge recorded.
fn mimic_record(gauge: u32) {
    let _ = hostcalls::get_current_time();
    if let Ok((Some(value), cas)) = hostcalls::get_shared_data("bench.record") {
        let _ = hostcalls::set_shared_data("bench.record", Some(&value), cas);
    }
    let _ = hostcalls::record_metric(gauge, 1);
}

impl Context for Noop {}
impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path");
        if let Some(Extra { call, count, metric, gauge }) = self.extra {
            let count = if matches!(call, Call::Mimic) { count & 1 } else { count };
            for _ in 0..count {
                match call {
                    Call::Header => {
                        let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path");
                    }
                    Call::SetHeader => {
                        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-bench", Some("1"));
                    }
                    Call::Property => {
                        let _ = hostcalls::get_property(vec!["request", "path"]);
                    }
                    Call::SharedGet => {
                        let _ = hostcalls::get_shared_data("bench");
                    }
                    Call::SharedCas => {
                        if let Ok((Some(value), cas)) = hostcalls::get_shared_data("bench") {
                            let _ = hostcalls::set_shared_data("bench", Some(&value), cas);
                        }
                    }
                    Call::Metric => {
                        let _ = hostcalls::increment_metric(metric, 1);
                    }
                    Call::Time => {
                        let _ = hostcalls::get_current_time();
                    }
                    // Made at response headers, below.
                    Call::Attempts | Call::Status => {}
                    Call::Mimic => {
                        mimic_record(gauge);
                        let _ = hostcalls::increment_metric(metric, 1);
                        set_router_headers();
                    }
                    Call::Router => set_router_headers(),
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        match self.extra.map(|e| (e.call, e.count)) {
            Some((Call::Attempts, count)) => {
                for _ in 0..count {
                    let _ = hostcalls::get_property(vec!["upstream", "request_attempt_count"]);
                }
            }
            Some((Call::Status, count)) => {
                for _ in 0..count {
                    let _ = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status");
                }
            }
            Some((Call::Mimic, parts)) if parts & 2 != 0 => {
                let _ = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, "x-envoy-attempt-count");
                let _ = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status");
                let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, "ratelimit", RATELIMIT);
                let _ = hostcalls::add_map_value(
                    MapType::HttpResponseHeaders,
                    "ratelimit-policy",
                    RATELIMIT_POLICY,
                );
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(Extra { call: Call::Mimic, count, gauge, .. }) = self.extra
            && count & 4 != 0
        {
            mimic_record(gauge);
        }
    }
}

/// The IETF RateLimit fields policy (d) adds to every response.
const RATELIMIT: &str = "\"bench\";r=999999999;t=0";
const RATELIMIT_POLICY: &str = "\"bench\";q=1000000000;w=1";

/// The router headers breakwater sets for 2 retries on 5xx and a 5 s timeout.
fn set_router_headers() {
    for (name, value) in [
        ("x-envoy-retry-on", "5xx"),
        ("x-envoy-max-retries", "2"),
        ("x-envoy-upstream-rq-timeout-ms", "5000"),
    ] {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }
}
