//! The WASI preview1 functions Envoy provides to proxy-wasm modules: stdout/stderr go to the log,
//! the clock is the virtual one, randomness is seeded, no environment, no arguments, and
//! proc_exit traps (Envoy treats it as a VM failure).

use wasmtime::{Caller, Linker, Result, bail};

use crate::memory;
use crate::state::HostState;

const SUCCESS: i32 = 0;
const BADF: i32 = 8;

pub fn add_to_linker(l: &mut Linker<HostState>) -> Result<()> {
    let w = "wasi_snapshot_preview1";
    l.func_wrap(
        w,
        "fd_write",
        |mut c: Caller<'_, HostState>, fd: i32, iovs: i32, n: i32, ret: i32| -> Result<i32> {
            if fd != 1 && fd != 2 {
                return Ok(BADF);
            }
            let mut text = Vec::new();
            for i in 0..n.max(0) {
                let iov = memory::read(&mut c, iovs.wrapping_add(i * 8), 8)?;
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                text.extend(memory::read(&mut c, ptr, len)?);
            }
            let written = text.len() as u32;
            // Envoy logs stdout at info and stderr at error.
            let level = if fd == 1 { 2 } else { 4 };
            c.data().log(level, String::from_utf8_lossy(&text).trim_end().to_string());
            memory::write_u32(&mut c, ret, written)?;
            Ok(SUCCESS)
        },
    )?;
    l.func_wrap(w, "random_get", |mut c: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i32> {
        let world = c.data().world.clone();
        let bytes: Vec<u8> = (0..len.max(0)).map(|_| world.next_random() as u8).collect();
        memory::write(&mut c, ptr, &bytes)?;
        Ok(SUCCESS)
    })?;
    for (name, _) in [("environ_sizes_get", ()), ("args_sizes_get", ())] {
        l.func_wrap(w, name, |mut c: Caller<'_, HostState>, count: i32, size: i32| -> Result<i32> {
            memory::write_u32(&mut c, count, 0)?;
            memory::write_u32(&mut c, size, 0)?;
            Ok(SUCCESS)
        })?;
    }
    for name in ["environ_get", "args_get"] {
        l.func_wrap(w, name, |_: Caller<'_, HostState>, _: i32, _: i32| -> Result<i32> { Ok(SUCCESS) })?;
    }
    l.func_wrap(
        w,
        "clock_time_get",
        |mut c: Caller<'_, HostState>, _id: i32, _precision: i64, ret: i32| -> Result<i32> {
            let now = c.data().world.clock_ns.get();
            memory::write_u64(&mut c, ret, now)?;
            Ok(SUCCESS)
        },
    )?;
    l.func_wrap(w, "proc_exit", |_: Caller<'_, HostState>, code: i32| -> Result<()> {
        bail!("the guest called proc_exit({code})")
    })?;
    Ok(())
}
