//! Logging, time, ticks, effective context, done, status.

use wasmtime::{Caller, Linker, Result};

use super::Status;
use crate::memory;
use crate::state::HostState;

pub fn add_to_linker(l: &mut Linker<HostState>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_log",
        |mut c: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| -> Result<i32> {
            let message = memory::read_string(&mut c, ptr, len)?;
            c.data().log(level as u32, message);
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap("env", "proxy_get_log_level", |mut c: Caller<'_, HostState>, ret: i32| -> Result<i32> {
        let level = c.data().log_level;
        memory::write_u32(&mut c, ret, level)?;
        Ok(Status::Ok as i32)
    })?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Caller<'_, HostState>, ret: i32| -> Result<i32> {
            let now = c.data().world.clock_ns.get();
            memory::write_u64(&mut c, ret, now)?;
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Caller<'_, HostState>, ms: i32| -> Result<i32> {
            c.data_mut().tick_period_ms = ms as u32;
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: Caller<'_, HostState>, id: i32| -> Result<i32> {
            let id = id as u32;
            // Envoy: BadArgument when the stream is gone (e.g. the client went away). The root
            // context is live too (the SDK makes it effective before a root's gRPC callback).
            if c.data().streams.contains_key(&id) || id == c.data().root_context {
                c.data_mut().effective_context = id;
                Ok(Status::Ok as i32)
            } else {
                Ok(Status::BadArgument as i32)
            }
        },
    )?;
    l.func_wrap("env", "proxy_done", |_: Caller<'_, HostState>| -> Result<i32> { Ok(Status::Ok as i32) })?;
    l.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: Caller<'_, HostState>, code: i32, msg: i32, size: i32| -> Result<i32> {
            memory::write_u32(&mut c, code, 0)?;
            memory::give(&mut c, b"", msg, size)?;
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_: Caller<'_, HostState>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> Result<i32> {
            Ok(Status::NotFound as i32)
        },
    )?;
    Ok(())
}
