//! Host access with our own error handling.
//!
//! The SDK's `Context` helpers unwrap host results (and `get_map_value` unwraps UTF-8 decoding of
//! header values, which HTTP allows to be any octets), so a hostile header or an unexpected status
//! would panic the VM, and Envoy then answers 503 to every later request on that worker. This
//! module calls `hostcalls` directly, reads header values as bytes, and maps every failure to a
//! value the caller handles.

use breakwater_policy::engine::Nanos;
use breakwater_policy::engine::store::{SharedStore, StoreError};
use breakwater_policy::global::Call;
use breakwater_policy::rls;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};

pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Nanoseconds since the epoch on the host's clock (0 if the host refuses, which Envoy never does).
pub fn now() -> Nanos {
    clock::nanos().unwrap_or(0)
}

/// The host's clock, imported directly: the SDK's `get_current_time` panics on any status but Ok,
/// and goes through `SystemTime` and back, twice per request (BENCHMARKS.md, optimisation log).
#[allow(unsafe_code)]
mod clock {
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        /// proxy-wasm ABI 0.2.1: writes the time at `return_time`, returns a status (0 = Ok).
        fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    }

    pub fn nanos() -> Option<u64> {
        let mut nanos = 0u64;
        // SAFETY: the host writes one u64 at the pointer, which points at a live local.
        let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
        (status == 0).then_some(nanos)
    }
}

pub fn plugin_configuration() -> Vec<u8> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten().unwrap_or_default()
}

/// A request header as text; invalid UTF-8 is replaced (U+FFFD) rather than trusted or fatal.
pub fn request_header(name: &str) -> Option<String> {
    header(MapType::HttpRequestHeaders, name)
}

pub fn response_header(name: &str) -> Option<String> {
    header(MapType::HttpResponseHeaders, name)
}

fn header(map: MapType, name: &str) -> Option<String> {
    let bytes = hostcalls::get_map_value_bytes(map, name).ok().flatten()?;
    Some(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

pub fn set_request_header(name: &str, value: &str) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
}

pub fn add_response_header(name: &str, value: &str) {
    let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
}

/// Sends a local reply. Err when the stream is gone (the caller has nothing to do then).
pub fn send_reply(status: u16, headers: &[(String, String)], body: &str) -> Result<(), Status> {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let body = (!body.is_empty()).then_some(body.as_bytes());
    hostcalls::send_http_response(u32::from(status), headers, body)
}

/// Makes the stream `context` the one later calls act on (from the root context's tick). Err when
/// the stream is gone.
pub fn set_effective_context(context: u32) -> Result<(), Status> {
    hostcalls::set_effective_context(context)
}

/// Resumes a paused request (Err when the stream is gone: nothing to do then).
pub fn resume_request() {
    let _ = hostcalls::resume_http_request();
}

/// Sends a global limit's call to the rate-limit service; the token of the call.
pub fn dispatch_grpc(call: &Call) -> Result<u32, Status> {
    let id = envoy_id();
    let mut metadata: Vec<(&str, &[u8])> = vec![(breakwater_policy::global::ENVOY_HEADER, id.as_bytes())];
    if call.lease {
        metadata.push((breakwater_policy::global::LEASE_HEADER, b"1"));
    }
    hostcalls::dispatch_grpc_call(
        &call.service,
        rls::SERVICE,
        rls::METHOD,
        metadata,
        Some(&call.message),
        std::time::Duration::from_millis(call.timeout_ms),
    )
}

/// The message of a gRPC answer (`size` bytes).
pub fn grpc_response(size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size).ok().flatten()
}

/// Where an Envoy keeps its name for the rate-limit service.
const ENVOY_ID_KEY: &str = "bw/envoy-id";

thread_local! {
    static ENVOY_ID: std::cell::OnceCell<String> = const { std::cell::OnceCell::new() };
}

/// This Envoy's name for the rate-limit service (which counts the fleet by it): its node id and
/// a number drawn once per Envoy process, shared by its workers through shared data, so that
/// Envoys rendered with one node id still count one each (a restarted Envoy counts anew for a
/// minute: the share is then smaller, never larger).
fn envoy_id() -> String {
    ENVOY_ID.with(|id| {
        id.get_or_init(|| {
            let node = property_string(&["xds", "node", "id"]).unwrap_or_default();
            // Random per process (WASI random_get seeds RandomState), mixed with the clock.
            let mut h = std::hash::BuildHasher::build_hasher(&std::collections::hash_map::RandomState::new());
            std::hash::Hasher::write(&mut h, &now().to_le_bytes());
            let drawn = format!("{node}/{:016x}", std::hash::Hasher::finish(&h));
            breakwater_policy::engine::store::update(&HostStore, ENVOY_ID_KEY, |old| match old {
                Some(existing) => (String::from_utf8_lossy(existing).into_owned(), None),
                None => (drawn.clone(), Some(drawn.clone().into_bytes())),
            })
            .unwrap_or(drawn)
        })
        .clone()
    })
}

pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// A numeric property (Envoy encodes numbers as 8 bytes, little-endian).
pub fn property_u64(path: &[&str]) -> Option<u64> {
    let bytes = property(path)?;
    let array: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(array))
}

pub fn property_string(path: &[&str]) -> Option<String> {
    property(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// `source.address` without its port: `10.0.0.1:5678` → `10.0.0.1`, `[::1]:5678` → `::1`.
pub fn client_ip() -> Option<String> {
    let address = property_string(&["source", "address"])?;
    let ip = match address.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(ip, _)| ip),
        None => address.rsplit_once(':').map_or(address.as_str(), |(ip, _)| ip),
    };
    Some(ip.to_string())
}

/// proxy-wasm shared data as the engines' [`SharedStore`].
#[derive(Debug, Clone, Copy)]
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Ok(Some((value, cas))),
            Ok(_) => Ok(None),
            Err(status) => Err(StoreError::Unavailable(format!("get_shared_data: {status:?}"))),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), Some(cas)) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(status) => Err(StoreError::Unavailable(format!("set_shared_data: {status:?}"))),
        }
    }
}

/// Resets the request's stream (the client gets no response).
pub fn reset_request() {
    let _ = hostcalls::reset_http_request();
}

pub fn define_counter(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Counter, name).ok()
}

pub fn define_gauge(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Gauge, name).ok()
}

pub fn define_histogram(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Histogram, name).ok()
}

pub fn increment(metric: Option<u32>, by: u64) {
    if let Some(id) = metric {
        let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
    }
}

pub fn record(metric: Option<u32>, value: u64) {
    if let Some(id) = metric {
        let _ = hostcalls::record_metric(id, value);
    }
}
