//! Buffers: plugin and VM configuration, the body of an HTTP call's answer and the message of a
//! gRPC call's (request and response bodies are not buffered: the filter does not read them).

use wasmtime::{Caller, Linker, Result};

use super::Status;
use crate::memory;
use crate::state::HostState;

const HTTP_CALL_RESPONSE_BODY: i32 = 4;
const GRPC_RECEIVE_BUFFER: i32 = 5;
const VM_CONFIGURATION: i32 = 6;
const PLUGIN_CONFIGURATION: i32 = 7;

pub fn add_to_linker(l: &mut Linker<HostState>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, HostState>,
         kind: i32,
         start: i32,
         max: i32,
         ret_ptr: i32,
         ret_size: i32|
         -> Result<i32> {
            let buffer = match kind {
                PLUGIN_CONFIGURATION => c.data().plugin_config.clone(),
                VM_CONFIGURATION => c.data().vm_config.clone(),
                HTTP_CALL_RESPONSE_BODY => match &c.data().call_response {
                    Some((_, body)) => body.clone(),
                    None => return Ok(Status::NotFound as i32),
                },
                GRPC_RECEIVE_BUFFER => match &c.data().grpc_response {
                    Some(message) => message.clone(),
                    None => return Ok(Status::NotFound as i32),
                },
                _ => return Ok(Status::NotFound as i32),
            };
            let start = (start as u32 as usize).min(buffer.len());
            let end = start.saturating_add(max as u32 as usize).min(buffer.len());
            let slice = buffer.get(start..end).unwrap_or_default();
            if slice.is_empty() {
                return Ok(Status::NotFound as i32);
            }
            memory::give(&mut c, slice, ret_ptr, ret_size)?;
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |_: Caller<'_, HostState>, _: i32, _: i32, _: i32, _: i32, _: i32| -> Result<i32> {
            Ok(Status::NotFound as i32)
        },
    )?;
    Ok(())
}
