//! Properties, with Envoy's encodings: numbers as 8-byte little-endian, strings as raw bytes
//! (see docs/envoy-facts.md: `response.code`, `response.flags`, `upstream.request_attempt_count`, …).

use wasmtime::{Caller, Linker, Result};

use super::Status;
use crate::memory;
use crate::state::HostState;

fn lookup(s: &HostState, path: &str) -> Option<Vec<u8>> {
    let num = |n: u64| Some(n.to_le_bytes().to_vec());
    let text = |t: &str| Some(t.as_bytes().to_vec());
    let stream = s.streams.get(&s.effective_context);
    let info = stream.map(|st| &st.info);
    match path {
        "plugin_name" => text(&s.plugin_name),
        "plugin_vm_id" => text(&s.vm_id),
        "xds.node.id" => text("host-test"),
        "xds.cluster_name" => text("upstream"),
        "xds.route_name" => text("local"),
        "source.address" => info.map(|i| i.source_address.as_bytes().to_vec()),
        "response.code" => info.and_then(|i| i.response_code).and_then(|c| num(u64::from(c))),
        "response.flags" => info.and_then(|i| num(i.response_flags)),
        "response.code_details" => info.and_then(|i| text(&i.code_details)),
        "upstream.request_attempt_count" => info.and_then(|i| num(i.attempt_count)),
        "request.duration" => info.and_then(|i| num(i.duration_ns)),
        "upstream.address" => info.and_then(|i| i.upstream_address.as_deref().map(|a| a.as_bytes().to_vec())),
        _ => None,
    }
}

pub fn add_to_linker(l: &mut Linker<HostState>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Caller<'_, HostState>, ptr: i32, len: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            let raw = memory::read(&mut c, ptr, len)?;
            let path: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            match lookup(c.data(), &path.join(".")) {
                Some(value) => {
                    memory::give(&mut c, &value, ret_ptr, ret_size)?;
                    Ok(Status::Ok as i32)
                }
                None => Ok(Status::NotFound as i32),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |_: Caller<'_, HostState>, _: i32, _: i32, _: i32, _: i32| -> Result<i32> { Ok(Status::Ok as i32) },
    )?;
    Ok(())
}
