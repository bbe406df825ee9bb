//! Stream control: local replies, continue/close, and outbound calls. HTTP calls go to the
//! clusters a test or simulation added to the world ([`crate::World::add_cluster`]) and are
//! answered through `proxy_on_http_call_response` ([`crate::Vm::deliver`]); any other cluster is
//! refused at once as in Envoy. gRPC calls go to the world's gRPC clusters
//! ([`crate::World::add_grpc_cluster`]: the rate-limit service of global limits) and are answered
//! through `proxy_on_grpc_receive` or `proxy_on_grpc_close`, after their latency or at their
//! timeout (status 14, as Envoy reports it); an unknown cluster is ParseFailure, as in Envoy.

use wasmtime::{Caller, Linker, Result};

use super::Status;
use crate::memory;
use crate::state::{GrpcCall, GrpcReply, HostState, LocalReply, PendingCall, PendingGrpc};

/// gRPC UNAVAILABLE: what Envoy reports for a call that timed out or could not connect.
pub const GRPC_UNAVAILABLE: u32 = 14;

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
    l.func_wrap("env", "proxy_continue_stream", |mut c: Caller<'_, HostState>, kind: i32| -> Result<i32> {
        // 0: the request. A stream paused in its request headers goes on.
        if kind == 0
            && let Some(stream) = c.data_mut().stream()
            && stream.paused
        {
            stream.resumed = true;
        }
        Ok(Status::Ok as i32)
    })?;
    l.func_wrap("env", "proxy_close_stream", |mut c: Caller<'_, HostState>, kind: i32| -> Result<i32> {
        // 0: the request. Envoy resets the stream: no response reaches the client.
        if kind == 0
            && let Some(stream) = c.data_mut().stream()
        {
            stream.reset = true;
        }
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
        |mut c: Caller<'_, HostState>,
         upstream: i32,
         upstream_len: i32,
         service: i32,
         service_len: i32,
         method: i32,
         method_len: i32,
         metadata: i32,
         metadata_len: i32,
         message: i32,
         message_len: i32,
         timeout_ms: i32,
         token_ptr: i32|
         -> Result<i32> {
            // As Envoy reads it: a serialized GrpcService naming the cluster, or else the name.
            let cluster =
                breakwater_policy::rls::target_cluster(&memory::read(&mut c, upstream, upstream_len)?);
            let call = GrpcCall {
                service: memory::read_string(&mut c, service, service_len)?,
                method: memory::read_string(&mut c, method, method_len)?,
                // Envoy sends a call whose metadata does not parse without metadata.
                metadata: memory::deserialize_map(&memory::read(&mut c, metadata, metadata_len)?)
                    .unwrap_or_default(),
                message: memory::read(&mut c, message, message_len)?,
            };
            let Some(cluster) = c.data().world.grpc_clusters.borrow().0.get(&cluster).cloned() else {
                return Ok(Status::ParseFailure as i32);
            };
            let now = c.data().world.clock_ns.get();
            let (reply, latency_ns) = cluster(&call, now);
            // Envoy enforces the timeout (0: none) whatever the service does.
            let timeout_ns = u64::from(timeout_ms as u32) * 1_000_000;
            let timed_out = timeout_ns > 0 && (reply == GrpcReply::Silence || latency_ns > timeout_ns);
            let (reply, after) = match reply {
                _ if timed_out => (Err(GRPC_UNAVAILABLE), timeout_ns),
                GrpcReply::Message(m) => (Ok(m), latency_ns),
                GrpcReply::Status(s) => (Err(s), latency_ns),
                // No timeout and no answer: never delivered.
                GrpcReply::Silence => return write_token(&mut c, token_ptr, None),
            };
            let d = c.data_mut();
            let token = d.next_grpc_token;
            d.next_grpc_token += 1;
            let due_ns = now + after;
            d.grpc_calls.push(PendingGrpc { token, due_ns, reply });
            d.world.pending_calls.set(d.world.pending_calls.get() + 1);
            d.world.grpc_due.borrow_mut().push(due_ns);
            write_token(&mut c, token_ptr, Some(token))
        },
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
    l.func_wrap("env", "proxy_grpc_cancel", |mut c: Caller<'_, HostState>, token: i32| -> Result<i32> {
        let d = c.data_mut();
        let before = d.grpc_calls.len();
        d.grpc_calls.retain(|call| call.token != token as u32);
        if d.grpc_calls.len() == before {
            return Ok(Status::NotFound as i32);
        }
        d.world.pending_calls.set(d.world.pending_calls.get().saturating_sub(1));
        Ok(Status::Ok as i32)
    })?;
    l.func_wrap("env", "proxy_grpc_close", |_: Caller<'_, HostState>, _: i32| -> Result<i32> {
        Ok(Status::NotFound as i32)
    })?;
    Ok(())
}

/// Writes a call's token for the guest (a call never answered gets a token no answer will carry).
fn write_token(c: &mut Caller<'_, HostState>, token_ptr: i32, token: Option<u32>) -> Result<i32> {
    let token = match token {
        Some(t) => t,
        None => {
            let d = c.data_mut();
            d.next_grpc_token += 1;
            d.next_grpc_token - 1
        }
    };
    memory::write_u32(c, token_ptr, token)?;
    Ok(Status::Ok as i32)
}
