//! Guest memory access, always bounds-checked: a bad pointer from the guest is a trap with a
//! message, never a host panic or an out-of-bounds read.

use wasmtime::{Caller, Memory, Result, bail};

use crate::state::HostState;

fn memory(caller: &mut Caller<'_, HostState>) -> Result<Memory> {
    match caller.data().guest.memory {
        Some(m) => Ok(m),
        None => bail!("the guest exports no memory"),
    }
}

/// Reads `len` bytes at `ptr`.
pub fn read(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<Vec<u8>> {
    with_slices(caller, [(ptr, len)], |[bytes], _| bytes.to_vec())
}

/// Runs `f` on guest buffers in place (each `(ptr, len)`, bounds-checked), with the host state
/// beside them: reading a key or a value the host only compares or stores costs no copy.
pub fn with_slices<const N: usize, R>(
    caller: &mut Caller<'_, HostState>,
    buffers: [(i32, i32); N],
    f: impl FnOnce([&[u8]; N], &mut HostState) -> R,
) -> Result<R> {
    let m = memory(caller)?;
    let (data, state) = m.data_and_store_mut(&mut *caller);
    let data: &[u8] = data;
    let mut slices = [&data[..0]; N];
    for (slot, (ptr, len)) in slices.iter_mut().zip(buffers) {
        let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
        match ptr.checked_add(len).and_then(|end| data.get(ptr..end)) {
            Some(bytes) => *slot = bytes,
            None => {
                bail!("guest passed an out-of-bounds buffer ({ptr}+{len}, memory is {} bytes)", data.len())
            }
        }
    }
    Ok(f(slices, state))
}

/// Answers a lookup the guest makes by a key in its memory (a header name, a shared-data key)
/// without allocating on the host: `find` gets the key in place and a scratch buffer the VM
/// reuses, writes what it finds there and returns Some; the bytes then go to memory the guest
/// allocates, as [`give`] does. None: nothing is written.
pub fn answer<T>(
    caller: &mut Caller<'_, HostState>,
    key: (i32, i32),
    ret: (i32, i32),
    find: impl FnOnce(&[u8], &mut HostState, &mut Vec<u8>) -> Option<T>,
) -> Result<Option<T>> {
    let mut scratch = std::mem::take(&mut caller.data_mut().scratch);
    scratch.clear();
    let found = with_slices(caller, [key], |[key], state| find(key, state, &mut scratch))?;
    if found.is_some() {
        give(caller, &scratch, ret.0, ret.1)?;
    }
    caller.data_mut().scratch = scratch;
    Ok(found)
}

/// Reads a string; invalid UTF-8 is replaced (U+FFFD). Valid text is not copied a second time.
pub fn read_string(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<String> {
    Ok(match String::from_utf8(read(caller, ptr, len)?) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Bytes from the guest as text, borrowed when they are UTF-8 (invalid sequences replaced).
pub fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Writes bytes at `ptr`.
pub fn write(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> Result<()> {
    let m = memory(caller)?;
    put(m.data_mut(&mut *caller), ptr, bytes)
}

/// Copies `bytes` to `ptr` in the guest's memory `data`, bounds-checked.
fn put(data: &mut [u8], ptr: i32, bytes: &[u8]) -> Result<()> {
    let ptr = ptr as u32 as usize;
    match ptr.checked_add(bytes.len()).and_then(|end| data.get_mut(ptr..end)) {
        Some(slot) => {
            slot.copy_from_slice(bytes);
            Ok(())
        }
        None => bail!("guest passed an out-of-bounds return pointer ({ptr}+{})", bytes.len()),
    }
}

pub fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, v: u32) -> Result<()> {
    write(caller, ptr, &v.to_le_bytes())
}

pub fn write_u64(caller: &mut Caller<'_, HostState>, ptr: i32, v: u64) -> Result<()> {
    write(caller, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory the guest allocates (`proxy_on_memory_allocate`) and stores the
/// address and size at the two return pointers, as the ABI's `ret_ptr`/`ret_size` pairs want.
pub fn give(caller: &mut Caller<'_, HostState>, bytes: &[u8], ret_ptr: i32, ret_size: i32) -> Result<()> {
    let addr = if bytes.is_empty() {
        0
    } else {
        let size = i32::try_from(bytes.len())?;
        // Taken out for the call and put back, not cloned: a TypedFunc clone registers its type
        // again, which cost more than the rest of a small host call (perf of the speed bench).
        let Some(alloc) = caller.data_mut().guest.allocate.take() else {
            bail!("the guest exports no proxy_on_memory_allocate (i32) -> i32");
        };
        let addr = alloc.call(&mut *caller, size);
        caller.data_mut().guest.allocate = Some(alloc);
        let addr = addr?;
        if addr == 0 {
            bail!("the guest could not allocate {} bytes", bytes.len());
        }
        addr
    };
    // One look-up of the memory for the bytes and both return values.
    let m = memory(caller)?;
    let data = m.data_mut(&mut *caller);
    if addr != 0 {
        put(data, addr, bytes)?;
    }
    put(data, ret_ptr, &(addr as u32).to_le_bytes())?;
    put(data, ret_size, &(bytes.len() as u32).to_le_bytes())
}

pub use crate::header_map::{deserialize_map, serialize_map};
