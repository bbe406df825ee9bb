//! # breakwater-filter
//!
//! The proxy-wasm HTTP filter that enforces a breakwater policy document inside Envoy.
//!
//! Thin glue by design: the decisions live in `breakwater-policy`, which knows nothing of
//! proxy-wasm. This crate reads the host (headers, properties, shared data, time), calls the
//! engines, and acts on their decisions (local replies, router headers, metrics).
//!
//! Status: configuration is loaded, validated and compiled into a [`Plan`] exactly as the CLI
//! does (an invalid document is rejected with the CLI's messages in Envoy's log); requests are
//! matched to their policy. Enforcement arrives with the filter issue.

use std::rc::Rc;

use breakwater_policy::plan::{Plan, RequestView};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // A panic must never pass silently: Envoy turns it into 503s for the worker.
    std::panic::set_hook(Box::new(|info| {
        let _ = proxy_wasm::hostcalls::log(LogLevel::Critical, &format!("breakwater: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    plan: Option<Rc<Plan>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match load_plan(&bytes) {
            Ok(plan) => {
                log(LogLevel::Info, &format!("breakwater: loaded {} policies", plan.policies.len()));
                self.plan = Some(Rc::new(plan));
                true
            }
            Err(messages) => {
                for m in messages {
                    log(LogLevel::Error, &format!("breakwater: configuration rejected: {m}"));
                }
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http { plan: self.plan.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Loads the plugin configuration with the same loader as `breakwater validate`.
pub fn load_plan(bytes: &[u8]) -> Result<Plan, Vec<String>> {
    let loaded = breakwater_policy::load_bytes(bytes).map_err(|diags| {
        diags.iter().filter(|d| d.is_error()).map(ToString::to_string).collect::<Vec<_>>()
    })?;
    Plan::new(&loaded.document).map_err(|e| vec![e])
}

fn log(level: LogLevel, message: &str) {
    let _ = proxy_wasm::hostcalls::log(level, message);
}

struct Http {
    plan: Option<Rc<Plan>>,
}

impl Context for Http {}

/// The request as the matcher sees it, read from the host once.
struct Request {
    authority: String,
    path: String,
    method: String,
    headers: Vec<(String, String)>,
}

impl RequestView for Request {
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
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(plan) = self.plan.clone() else { return Action::Continue };
        let header = |name: &str| self.get_http_request_header(name).unwrap_or_default();
        let request = Request {
            authority: header(":authority"),
            path: header(":path"),
            method: header(":method"),
            headers: plan
                .header_names
                .iter()
                .filter_map(|n| self.get_http_request_header(n).map(|v| (n.clone(), v)))
                .collect(),
        };
        if let Some(policy) = plan.select(&request) {
            log(LogLevel::Debug, &format!("breakwater: request matched policy {}", policy.name()));
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_configuration_is_rejected_with_the_cli_messages() {
        let errors =
            load_plan(b"version: 1\npolicies:\n  - name: a\n    retry: { max_retries: 20 }\n").unwrap_err();
        assert_eq!(errors, vec!["error: policies[0].retry.max_retries: must be between 0 and 10, found 20"]);
        assert_eq!(load_plan(b"{\"version\":1,\"policies\":[]}").unwrap().policies.len(), 0);
    }
}
