//! Stream control: local replies, continue/close, and outbound calls (HTTP and gRPC calls answer
//! "unknown cluster" like Envoy does for a cluster it does not have; breakwater makes none).

use wasmtime::{Caller, Linker, Result};

use super::Status;
use crate::memory;
use crate::state::{HostState, LocalReply};

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
         _: i32|
         -> Result<i32> { Ok(Status::BadArgument as i32) },
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
