//! Calls to the admin server's JSON API, with the bearer token.
//!
//! The token arrives once in the URL fragment (`/#token=…`, as `breakwater serve` prints it), is
//! kept in the tab's sessionStorage and removed from the address bar.

use breakwater_api::ErrorBody;
use gloo_net::http::Request;
use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// A call that failed: the status (0 when the server was not reached) and the error body.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: u16,
    pub body: ErrorBody,
}

impl Failure {
    fn new(status: u16, error: String) -> Failure {
        Failure { status, body: ErrorBody { error, diagnostics: Vec::new() } }
    }

    pub fn message(&self) -> String {
        self.body.error.clone()
    }
}

/// `GET /api{path}`, read as `T`.
pub async fn get<T: DeserializeOwned>(path: &str) -> Result<T, Failure> {
    call::<(), T>("GET", path, None, None).await
}

/// `POST` or `PUT` to `/api{path}` with a JSON body (or none), the answer read as `T`.
pub async fn send<B: Serialize, T: DeserializeOwned>(
    method: &str,
    path: &str,
    body: Option<&B>,
) -> Result<T, Failure> {
    call(method, path, body, None).await
}

/// As [`send`], only if `version` is still the active one (`If-Match`): otherwise the server
/// answers 412 and changes nothing.
pub async fn send_if_active<B: Serialize, T: DeserializeOwned>(
    method: &str,
    path: &str,
    body: Option<&B>,
    version: u64,
) -> Result<T, Failure> {
    call(method, path, body, Some(version)).await
}

/// The status of a refused precondition: another version became active.
pub const CONFLICT: u16 = 412;

async fn call<B: Serialize, T: DeserializeOwned>(
    method: &str,
    path: &str,
    body: Option<&B>,
    if_active: Option<u64>,
) -> Result<T, Failure> {
    let auth = format!("Bearer {}", token().unwrap_or_default());
    let url = format!("/api{path}");
    let builder = match method {
        "PUT" => Request::put(&url),
        "POST" => Request::post(&url),
        _ => Request::get(&url),
    }
    .header("Authorization", &auth);
    let tag = if_active.map(|v| format!("\"v{v}\""));
    let builder = match &tag {
        Some(tag) => builder.header("If-Match", tag),
        None => builder,
    };
    let sent = match body {
        Some(v) => match builder.json(v) {
            Ok(r) => r.send().await,
            Err(e) => return Err(Failure::new(0, e.to_string())),
        },
        None => builder.send().await,
    };
    let response = sent.map_err(|e| Failure::new(0, format!("the server is unreachable: {e}")))?;
    let status = response.status();
    if (200..300).contains(&status) {
        response
            .json::<T>()
            .await
            .map_err(|e| Failure::new(status, format!("unexpected answer from the server: {e}")))
    } else {
        let body = response
            .json::<ErrorBody>()
            .await
            .unwrap_or_else(|_| ErrorBody { error: format!("HTTP {status}"), diagnostics: Vec::new() });
        Err(Failure { status, body })
    }
}
