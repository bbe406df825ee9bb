//! Stream control: local replies, continue/close, and outbound calls. HTTP calls go to the
//! clusters a test or simulation added to the world ([`crate::World::add_cluster`]) and are
//! answered through `proxy_on_http_call_response` ([`crate::Vm::deliver`]); any other cluster is
//! refused at once as in Envoy. gRPC calls answer as Envoy does for a cluster it does not have
//! (breakwater makes none).

use wasmtime::{Caller, Linker, Result};

use super::Status;
use crate::memory;
use crate::state::{HostState, LocalReply, PendingCall};

pub fn add_to_linker(l: &mut Linker<HostState>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Caller<'_, HostState>,
         status: i32,
         details: i32,
         details_len: i32,
         body: i32,
         body_len: i32,
         headers: i32,
         headers_len: i32,
         _grpc: i32|
         -> Result<i32> {
            let details = memory::read_string(&mut c, details, details_len)?;
            let body = memory::read(&mut c, body, body_len)?;
            let raw = memory::read(&mut c, headers, headers_len)?;
            let Some(headers) = memory::deserialize_map(&raw) else {
                return Ok(Status::SerializationFailure as i32);
            };
            let Ok(status) = u16::try_from(status) else { return Ok(Status::BadArgument as i32) };
            let Some(stream) = c.data_mut().stream() else { return Ok(Status::BadArgument as i32) };
            stream.local_reply = Some(LocalReply { status, headers, body, details });
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap("env", "proxy_continue_stream", |_: Caller<'_, HostState>, _: i32| -> Result<i32> {
        Ok(Status::Ok as i32)
    })?;
    l.func_wrap("env", "proxy_close_stream", |_: Caller<'_, HostState>, _: i32| -> Result<i32> {
        Ok(Status::Ok as i32)
    })?;
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Caller<'_, HostState>,
         upstream: i32,
         upstream_len: i32,
         headers: i32,
         headers_len: i32,
         body: i32,
         body_len: i32,
         _trailers: i32,
         _trailers_len: i32,
         timeout_ms: i32,
         token_ptr: i32|
         -> Result<i32> {
            let cluster = memory::read_string(&mut c, upstream, upstream_len)?;
            let raw = memory::read(&mut c, headers, headers_len)?;
            let body = memory::read(&mut c, body, body_len)?;
            let Some(headers) = memory::deserialize_map(&raw) else {
                return Ok(Status::SerializationFailure as i32);
            };
            // Envoy: an unknown cluster, or a call without :method, :path or :authority, is
            // refused at once.
            let has = |n: &str| headers.iter().any(|(k, _)| k == n);
            let Some(cluster) = c.data().world.clusters.borrow().0.get(&cluster).cloned() else {
                return Ok(Status::BadArgument as i32);
            };
            if !(has(":method") && has(":path") && has(":authority")) {
                return Ok(Status::BadArgument as i32);
            }
            let (reply, latency_ns) = cluster(&headers, &body);
            let timeout_ns = u64::from(timeout_ms as u32) * 1_000_000;
            let (reply, after) =
                if latency_ns > timeout_ns { (None, timeout_ns) } else { (reply, latency_ns) };
            let d = c.data_mut();
            let token = d.next_call_token;
            d.next_call_token += 1;
            let due_ns = d.world.clock_ns.get() + after;
            let call = PendingCall { token, context: d.effective_context, due_ns, reply };
            d.calls.push(call);
            d.world.pending_calls.set(d.world.pending_calls.get() + 1);
            memory::write_u32(&mut c, token_ptr, token)?;
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |_: Caller<'_, HostState>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32|
         -> Result<i32> { Ok(Status::ParseFailure as i32) },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_: Caller<'_, HostState>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32|
         -> Result<i32> { Ok(Status::ParseFailure as i32) },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |_: Caller<'_, HostState>, _: i32, _: i32, _: i32, _: i32| -> Result<i32> {
            Ok(Status::NotFound as i32)
        },
    )?;
    l.func_wrap("env", "proxy_grpc_cancel", |_: Caller<'_, HostState>, _: i32| -> Result<i32> {
        Ok(Status::NotFound as i32)
    })?;
    l.func_wrap("env", "proxy_grpc_close", |_: Caller<'_, HostState>, _: i32| -> Result<i32> {
        Ok(Status::NotFound as i32)
    })?;
    Ok(())
}
