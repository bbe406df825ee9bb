//! Header maps of the effective HTTP context.

use std::borrow::Cow;

use wasmtime::{Caller, Linker, Result};

use super::Status;
use crate::memory;
use crate::state::{HeaderMap, HostState};

/// Header map 6: the answer to an HTTP call, during `proxy_on_http_call_response`.
const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;

/// The map a write changes. Response headers changed after they were sent are first copied as
/// sent (the client keeps those), so the common case copies nothing.
fn map_for_write(state: &mut HostState, kind: i32) -> Option<&mut HeaderMap> {
    if kind == 2
        && let Some(s) = state.stream()
        && s.response_sent
        && s.sent_headers.is_none()
    {
        s.sent_headers = Some(s.response_headers.clone());
    }
    map_of(state, kind)
}

fn map_of(state: &mut HostState, kind: i32) -> Option<&mut HeaderMap> {
    if kind == HTTP_CALL_RESPONSE_HEADERS {
        return state.call_response.as_mut().map(|(headers, _)| headers);
    }
    let s = state.stream()?;
    match kind {
        0 => Some(&mut s.request_headers),
        1 => Some(&mut s.request_trailers),
        2 => Some(&mut s.response_headers),
        3 => Some(&mut s.response_trailers),
        _ => None,
    }
}

/// The names breakwater writes (router instructions, the rate-limit fields, its debug headers),
/// kept as they are instead of copied for every request; Envoy, too, has well-known headers built
/// in. Any other name is copied.
const KNOWN_NAMES: [&str; 9] = [
    "ratelimit",
    "ratelimit-policy",
    "x-breakwater-decision",
    "x-breakwater-policy",
    "x-envoy-max-retries",
    "x-envoy-retriable-status-codes",
    "x-envoy-retry-on",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-ms",
];

/// A header name from the guest, lower-cased.
fn header_name(name: &[u8]) -> Cow<'static, str> {
    match KNOWN_NAMES.iter().find(|k| k.as_bytes().eq_ignore_ascii_case(name)) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(memory::text(name).to_ascii_lowercase()),
    }
}

/// Adds a header (`replace`: after removing every value of that name).
fn put(
    mut c: Caller<'_, HostState>,
    kind: i32,
    key: (i32, i32),
    value: (i32, i32),
    replace: bool,
) -> Result<i32> {
    let name = memory::with_slices(&mut c, [key], |[name], _| header_name(name))?;
    let value = memory::read(&mut c, value.0, value.1)?;
    let Some(m) = map_for_write(c.data_mut(), kind) else { return Ok(Status::BadArgument as i32) };
    if replace {
        m.retain(|(k, _)| *k != name);
    }
    m.push((name, value));
    Ok(Status::Ok as i32)
}

pub fn add_to_linker(l: &mut Linker<HostState>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, HostState>, kind: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            let Some(m) = map_of(c.data_mut(), kind) else { return Ok(Status::BadArgument as i32) };
            let bytes = memory::serialize_map(m);
            memory::give(&mut c, &bytes, ret_ptr, ret_size)?;
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Caller<'_, HostState>, kind: i32, ptr: i32, len: i32| -> Result<i32> {
            let bytes = memory::read(&mut c, ptr, len)?;
            let Some(pairs) = memory::deserialize_map(&bytes) else {
                return Ok(Status::SerializationFailure as i32);
            };
            let Some(m) = map_for_write(c.data_mut(), kind) else { return Ok(Status::BadArgument as i32) };
            *m = pairs.into_iter().map(|(k, v)| (k.to_ascii_lowercase().into(), v)).collect();
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, HostState>,
         kind: i32,
         key: i32,
         key_len: i32,
         ret_ptr: i32,
         ret_size: i32|
         -> Result<i32> {
            let found = memory::answer(&mut c, (key, key_len), (ret_ptr, ret_size), |name, state, out| {
                let m = map_of(state, kind)?;
                // Envoy joins repeated headers with a comma.
                let mut values = m.iter().filter(|(k, _)| k.as_bytes().eq_ignore_ascii_case(name));
                out.extend_from_slice(&values.next()?.1);
                for (_, v) in values {
                    out.push(b',');
                    out.extend_from_slice(v);
                }
                Some(())
            })?;
            match found {
                Some(()) => Ok(Status::Ok as i32),
                // No such map is BadArgument, as before; a missing header NotFound.
                None if map_of(c.data_mut(), kind).is_none() => Ok(Status::BadArgument as i32),
                None => Ok(Status::NotFound as i32),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |c: Caller<'_, HostState>,
         kind: i32,
         key: i32,
         key_len: i32,
         value: i32,
         value_len: i32|
         -> Result<i32> { put(c, kind, (key, key_len), (value, value_len), true) },
    )?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |c: Caller<'_, HostState>,
         kind: i32,
         key: i32,
         key_len: i32,
         value: i32,
         value_len: i32|
         -> Result<i32> { put(c, kind, (key, key_len), (value, value_len), false) },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Caller<'_, HostState>, kind: i32, key: i32, key_len: i32| -> Result<i32> {
            memory::with_slices(&mut c, [(key, key_len)], |[name], state| match map_for_write(state, kind) {
                Some(m) => {
                    m.retain(|(k, _)| !k.as_bytes().eq_ignore_ascii_case(name));
                    Status::Ok as i32
                }
                None => Status::BadArgument as i32,
            })
        },
    )?;
    Ok(())
}
