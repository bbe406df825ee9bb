//! Header maps of the effective HTTP context.

use wasmtime::{Caller, Linker, Result};

use super::Status;
use crate::memory;
use crate::state::{HeaderMap, HostState};

/// Header map 6: the answer to an HTTP call, during `proxy_on_http_call_response`.
const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;

fn map<'a>(c: &'a mut Caller<'_, HostState>, kind: i32) -> Option<&'a mut HeaderMap> {
    if kind == HTTP_CALL_RESPONSE_HEADERS {
        return c.data_mut().call_response.as_mut().map(|(headers, _)| headers);
    }
    let s = c.data_mut().stream()?;
    match kind {
        0 => Some(&mut s.request_headers),
        1 => Some(&mut s.request_trailers),
        2 => Some(&mut s.response_headers),
        3 => Some(&mut s.response_trailers),
        _ => None,
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
    let name = memory::read_string(&mut c, key.0, key.1)?.to_ascii_lowercase();
    let value = memory::read(&mut c, value.0, value.1)?;
    let Some(m) = map(&mut c, kind) else { return Ok(Status::BadArgument as i32) };
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
            let Some(m) = map(&mut c, kind) else { return Ok(Status::BadArgument as i32) };
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
            let Some(m) = map(&mut c, kind) else { return Ok(Status::BadArgument as i32) };
            *m = pairs.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
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
            let name = memory::read_string(&mut c, key, key_len)?.to_ascii_lowercase();
            let Some(m) = map(&mut c, kind) else { return Ok(Status::BadArgument as i32) };
            // Envoy joins repeated headers with a comma.
            let values: Vec<Vec<u8>> = m.iter().filter(|(k, _)| *k == name).map(|(_, v)| v.clone()).collect();
            if values.is_empty() {
                return Ok(Status::NotFound as i32);
            }
            let joined = values.join(&b","[..]);
            memory::give(&mut c, &joined, ret_ptr, ret_size)?;
            Ok(Status::Ok as i32)
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
            let name = memory::read_string(&mut c, key, key_len)?.to_ascii_lowercase();
            let Some(m) = map(&mut c, kind) else { return Ok(Status::BadArgument as i32) };
            m.retain(|(k, _)| *k != name);
            Ok(Status::Ok as i32)
        },
    )?;
    Ok(())
}
