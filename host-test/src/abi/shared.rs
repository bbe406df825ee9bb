//! Shared data with compare-and-swap, with Envoy's semantics (a missing key has no CAS token; a
//! set on a missing key always succeeds), and shared queues (per vm_id; the registering root
//! context is told of new items with `proxy_on_queue_ready`, delivered by [`crate::Vm::deliver`]).

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
            let found = memory::answer(&mut c, (key, key_len), (ret_ptr, ret_size), |key, state, out| {
                state.world.shared.with(&memory::text(key), |found| {
                    found.map(|(value, cas)| {
                        out.extend_from_slice(value);
                        cas
                    })
                })
            })?;
            match found {
                Some(cas) => {
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
            let written =
                memory::with_slices(&mut c, [(key, key_len), (value, value_len)], |[key, value], state| {
                    state.world.shared.set(&memory::text(key), value, cas as u32)
                })?;
            match written {
                Ok(()) => Ok(Status::Ok as i32),
                Err(StoreError::CasMismatch) => Ok(Status::CasMismatch as i32),
                Err(_) => Ok(Status::InternalFailure as i32),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: Caller<'_, HostState>, name: i32, name_len: i32, ret: i32| -> Result<i32> {
            let name = memory::read_string(&mut c, name, name_len)?;
            let d = c.data();
            // The registering root context (from an HTTP context: its root).
            let context = if d.streams.contains_key(&d.effective_context) {
                d.root_context
            } else {
                d.effective_context
            };
            let owner = (d.vm, context);
            let token = d.world.queues.borrow_mut().register(&d.vm_id, &name, owner);
            memory::write_u32(&mut c, ret, token)?;
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: Caller<'_, HostState>,
         vm_id: i32,
         vm_id_len: i32,
         name: i32,
         name_len: i32,
         ret: i32|
         -> Result<i32> {
            let vm_id = memory::read_string(&mut c, vm_id, vm_id_len)?;
            let name = memory::read_string(&mut c, name, name_len)?;
            let found = c.data().world.queues.borrow().resolve(&vm_id, &name);
            match found {
                Some(token) => {
                    memory::write_u32(&mut c, ret, token)?;
                    Ok(Status::Ok as i32)
                }
                None => Ok(Status::NotFound as i32),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: Caller<'_, HostState>, token: i32, ret_ptr: i32, ret_size: i32| -> Result<i32> {
            let item = c.data().world.queues.borrow_mut().dequeue(token as u32);
            match item {
                None => Ok(Status::NotFound as i32),
                Some(None) => Ok(Status::Empty as i32),
                Some(Some(item)) => {
                    memory::give(&mut c, &item, ret_ptr, ret_size)?;
                    Ok(Status::Ok as i32)
                }
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: Caller<'_, HostState>, token: i32, data: i32, data_len: i32| -> Result<i32> {
            let item = memory::read(&mut c, data, data_len)?;
            match c.data().world.queues.borrow_mut().enqueue(token as u32, item) {
                Some(()) => Ok(Status::Ok as i32),
                None => Ok(Status::NotFound as i32),
            }
        },
    )?;
    Ok(())
}
