//! Shared data with compare-and-swap, with Envoy's semantics (a missing key has no CAS token; a
//! set on a missing key always succeeds), and shared queues (not used by breakwater: registered
//! queues exist, and are empty).

use breakwater_policy::engine::store::{SharedStore, StoreError};
use wasmtime::{Caller, Linker, Result};

use super::Status;
use crate::memory;
use crate::state::HostState;

pub fn add_to_linker(l: &mut Linker<HostState>) -> Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Caller<'_, HostState>,
         key: i32,
         key_len: i32,
         ret_ptr: i32,
         ret_size: i32,
         ret_cas: i32|
         -> Result<i32> {
            let key = memory::read_string(&mut c, key, key_len)?;
            let found = c.data().world.shared.get(&key).ok().flatten();
            match found {
                Some((value, cas)) => {
                    memory::give(&mut c, &value, ret_ptr, ret_size)?;
                    memory::write_u32(&mut c, ret_cas, cas)?;
                    Ok(Status::Ok as i32)
                }
                None => Ok(Status::NotFound as i32),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Caller<'_, HostState>,
         key: i32,
         key_len: i32,
         value: i32,
         value_len: i32,
         cas: i32|
         -> Result<i32> {
            let key = memory::read_string(&mut c, key, key_len)?;
            let value = memory::read(&mut c, value, value_len)?;
            match c.data().world.shared.set(&key, &value, cas as u32) {
                Ok(()) => Ok(Status::Ok as i32),
                Err(StoreError::CasMismatch) => Ok(Status::CasMismatch as i32),
                Err(_) => Ok(Status::InternalFailure as i32),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: Caller<'_, HostState>, _: i32, _: i32, ret: i32| -> Result<i32> {
            memory::write_u32(&mut c, ret, 1)?;
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |_: Caller<'_, HostState>, _: i32, _: i32, _: i32, _: i32, _: i32| -> Result<i32> {
            Ok(Status::NotFound as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |_: Caller<'_, HostState>, _: i32, _: i32, _: i32| -> Result<i32> { Ok(Status::Empty as i32) },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |_: Caller<'_, HostState>, _: i32, _: i32, _: i32| -> Result<i32> { Ok(Status::NotFound as i32) },
    )?;
    Ok(())
}
