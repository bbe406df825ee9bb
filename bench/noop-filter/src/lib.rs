//! The floor: a proxy-wasm filter that reads one request header and continues.
//!
//! Its plugin configuration can name one host call and a count (`shared_get 10`); the filter then
//! makes that call that many extra times per request, so that `bench/run.py` can price each kind
//! of host call in real Envoy against the floor. An empty configuration is the plain floor.

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
}

struct Root {
    extra: Option<(Call, u32, u32)>,
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
            Some(_) => return false,
        };
        let Some(count) = words.next().and_then(|n| n.parse().ok()) else { return false };
        let count = if matches!(call, Call::Router) { 1 } else { count };
        let metric = hostcalls::define_metric(MetricType::Counter, "bench.calls").unwrap_or(0);
        let _ = hostcalls::set_shared_data("bench", Some(b"01234567"), None);
        self.extra = Some((call, count, metric));
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
    extra: Option<(Call, u32, u32)>,
}

impl Context for Noop {}
impl HttpContext for Noop {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path");
        if let Some((call, count, metric)) = self.extra {
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
                    Call::Router => {
                        for (name, value) in [
                            ("x-envoy-retry-on", "5xx"),
                            ("x-envoy-max-retries", "2"),
                            ("x-envoy-upstream-rq-timeout-ms", "5000"),
                        ] {
                            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
                        }
                    }
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        match self.extra {
            Some((Call::Attempts, count, _)) => {
                for _ in 0..count {
                    let _ = hostcalls::get_property(vec!["upstream", "request_attempt_count"]);
                }
            }
            Some((Call::Status, count, _)) => {
                for _ in 0..count {
                    let _ = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status");
                }
            }
            _ => {}
        }
        Action::Continue
    }
}
