//! Calls to the admin server's JSON API, with the bearer token.
//!
//! The token arrives once in the URL fragment (`/#token=…`, as `breakwater serve` prints it), is
//! kept in the tab's sessionStorage and removed from the address bar.

use gloo_net::http::Request;
use serde_json::Value;

const KEY: &str = "breakwater-token";

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.session_storage().ok().flatten()
}

/// Takes the token from the URL fragment (then clears it) or from sessionStorage.
pub fn token() -> Option<String> {
    let window = web_sys::window()?;
    let hash = window.location().hash().unwrap_or_default();
    if let Some(t) = hash.strip_prefix("#token=").filter(|t| !t.is_empty()) {
        if let Some(s) = storage() {
            let _ = s.set_item(KEY, t);
        }
        if let Ok(history) = window.history() {
            let _ = history.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some("/"));
        }
        return Some(t.to_string());
    }
    storage().and_then(|s| s.get_item(KEY).ok().flatten())
}

pub fn set_token(t: &str) {
    if let Some(s) = storage() {
        let _ = s.set_item(KEY, t);
    }
}

/// An answer: the status and the JSON body (errors are JSON too: `{"error": …}`).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn error(&self) -> String {
        self.body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {}", self.status))
    }
}

pub async fn call(method: &str, path: &str, body: Option<Value>) -> Answer {
    let auth = format!("Bearer {}", token().unwrap_or_default());
    let url = format!("/api{path}");
    let builder = match method {
        "PUT" => Request::put(&url),
        "POST" => Request::post(&url),
        _ => Request::get(&url),
    }
    .header("Authorization", &auth);
    let sent = match body {
        Some(v) => match builder.json(&v) {
            Ok(r) => r.send().await,
            Err(e) => return Answer { status: 0, body: serde_json::json!({ "error": e.to_string() }) },
        },
        None => builder.send().await,
    };
    match sent {
        Ok(response) => {
            let status = response.status();
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            Answer { status, body }
        }
        Err(e) => Answer {
            status: 0,
            body: serde_json::json!({ "error": format!("the server is unreachable: {e}") }),
        },
    }
}
