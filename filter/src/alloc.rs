//! The filter's memory allocator: small blocks come from per-size free lists.
//!
//! A request allocates about twenty small blocks in the guest: the buffers the host fills
//! through `proxy_on_memory_allocate`, header values, the decision's bookkeeping. Each went
//! through wasi-libc's dlmalloc (about 540 instructions for an allocation and its free). Here a
//! block of up to [`MAX_SMALL`] bytes is taken from, and given back to, a free list of its size
//! class (16, 32, 64, ... bytes): a few dozen instructions. Blocks of a class come from the
//! system allocator when its list is empty and are kept for reuse after that, so the pools grow to
//! the peak number of live blocks per class and no further; larger or over-aligned blocks go to
//! the system allocator directly.
//!
//! Sound only where one thread touches the heap: proxy-wasm guests (wasm32 without the `atomics`
//! feature). The global registration is limited to that target; [`Pools`] itself is plain data and
//! tested natively.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ptr;

/// The largest block served from a free list.
pub const MAX_SMALL: usize = 4096;
/// The alignment every pooled block has (and the smallest class).
const MIN_BLOCK: usize = 16;
/// Size classes 16, 32, 64, ... 4096.
const CLASSES: usize = (MAX_SMALL / MIN_BLOCK).trailing_zeros() as usize + 1;

/// The heads of the free lists, one per size class. A free block holds the address of the next.
#[derive(Debug)]
pub struct Pools {
    free: [*mut u8; CLASSES],
}

impl Default for Pools {
    fn default() -> Self {
        Pools::new()
    }
}

/// The size class of a layout, or `None` for blocks the system allocator serves directly.
fn class(layout: Layout) -> Option<usize> {
    if layout.size() > MAX_SMALL || layout.align() > MIN_BLOCK {
        return None;
    }
    // 1..=16 bytes: class 0, 17..=32: class 1, and so on.
    Some((usize::BITS - (layout.size().saturating_sub(1) / MIN_BLOCK).leading_zeros()) as usize)
}

/// A new block from the system allocator: a whole class block for a pooled layout. Kept out of
/// line so that the common case, a block from a free list, needs no stack frame.
#[cold]
#[inline(never)]
unsafe fn from_system(layout: Layout, system: &impl GlobalAlloc) -> *mut u8 {
    let layout = match class(layout) {
        // MIN_BLOCK << c is a power of two no larger than MAX_SMALL: always a valid layout.
        Some(c) => Layout::from_size_align(MIN_BLOCK << c, MIN_BLOCK).unwrap_or(layout),
        None => layout,
    };
    unsafe { system.alloc(layout) }
}

impl Pools {
    pub const fn new() -> Pools {
        Pools { free: [ptr::null_mut(); CLASSES] }
    }

    /// Allocates like `GlobalAlloc::alloc`, taking new memory from `system`.
    ///
    /// # Safety
    /// The contract of [`GlobalAlloc::alloc`]; `system` must be the allocator every other call
    /// on these pools was given.
    pub unsafe fn alloc(&mut self, layout: Layout, system: &impl GlobalAlloc) -> *mut u8 {
        if let Some(c) = class(layout)
            && let Some(head) = self.free.get_mut(c)
            && !head.is_null()
        {
            let block = *head;
            // A free block starts with the address of the next free block of its class.
            *head = unsafe { block.cast::<*mut u8>().read() };
            return block;
        }
        unsafe { from_system(layout, system) }
    }

    /// Frees like `GlobalAlloc::dealloc`: a pooled block goes back to its list.
    ///
    /// # Safety
    /// The contract of [`GlobalAlloc::dealloc`]: `ptr` came from these pools with `layout`.
    pub unsafe fn dealloc(&mut self, ptr: *mut u8, layout: Layout, system: &impl GlobalAlloc) {
        let Some(c) = class(layout) else { return unsafe { system.dealloc(ptr, layout) } };
        unsafe { ptr.cast::<*mut u8>().write(self.free[c]) };
        self.free[c] = ptr;
    }

    /// Resizes like `GlobalAlloc::realloc`; a block that stays in its class stays where it is.
    ///
    /// # Safety
    /// The contract of [`GlobalAlloc::realloc`].
    pub unsafe fn realloc(
        &mut self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
        system: &impl GlobalAlloc,
    ) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        match (class(layout), class(new_layout)) {
            (Some(old), Some(new)) if old == new => ptr,
            (None, None) => unsafe { system.realloc(ptr, layout, new_size) },
            _ => {
                let moved = unsafe { self.alloc(new_layout, system) };
                if !moved.is_null() {
                    unsafe {
                        ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout, system);
                    }
                }
                moved
            }
        }
    }
}

/// The guest's global allocator: [`Pools`] over the system allocator.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
mod global {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::UnsafeCell;

    use super::Pools;

    struct Guest(UnsafeCell<Pools>);

    // The guest has one thread (wasm32 without atomics), so the pools are never shared.
    unsafe impl Sync for Guest {}

    #[global_allocator]
    static GUEST: Guest = Guest(UnsafeCell::new(Pools::new()));

    unsafe impl GlobalAlloc for Guest {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            unsafe { (*self.0.get()).alloc(layout, &System) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { (*self.0.get()).dealloc(ptr, layout, &System) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            unsafe { (*self.0.get()).realloc(ptr, layout, new_size, &System) }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::alloc::System;
    use std::cell::Cell;

    use proptest::prelude::*;

    use super::*;

    /// The system allocator, counting what reaches it.
    #[derive(Default)]
    struct Counting {
        allocs: Cell<usize>,
        deallocs: Cell<usize>,
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.allocs.set(self.allocs.get() + 1);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            self.deallocs.set(self.deallocs.get() + 1);
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn size_classes_are_powers_of_two_from_16_to_the_largest_small_block() {
        assert_eq!(CLASSES, 9);
        for (size, want) in
            [(1, 0), (16, 0), (17, 1), (32, 1), (33, 2), (64, 2), (65, 3), (4095, 8), (4096, 8)]
        {
            assert_eq!(class(layout(size, 1)), Some(want), "{size} bytes");
            assert!(MIN_BLOCK << want >= size && (want == 0 || MIN_BLOCK << (want - 1) < size));
        }
        assert_eq!(class(layout(4097, 1)), None, "larger blocks go to the system allocator");
        assert_eq!(class(layout(8, 16)), Some(0));
        assert_eq!(class(layout(8, 32)), None, "over-aligned blocks go to the system allocator");
    }

    #[test]
    fn a_freed_block_is_reused_by_its_class_without_the_system_allocator() {
        let system = Counting::default();
        let mut pools = Pools::new();
        unsafe {
            let a = pools.alloc(layout(24, 8), &system);
            assert_eq!(system.allocs.get(), 1);
            assert_eq!(a as usize % MIN_BLOCK, 0, "pooled blocks are 16-aligned");
            pools.dealloc(a, layout(24, 8), &system);
            assert_eq!(system.deallocs.get(), 0, "a pooled block is kept");
            let b = pools.alloc(layout(30, 1), &system);
            assert_eq!(b, a, "the same class takes the freed block");
            let c = pools.alloc(layout(40, 1), &system);
            assert_ne!(c, a, "another class does not");
            assert_eq!(system.allocs.get(), 2);
            pools.dealloc(b, layout(30, 1), &system);
            pools.dealloc(c, layout(40, 1), &system);
            let big = pools.alloc(layout(5000, 1), &system);
            pools.dealloc(big, layout(5000, 1), &system);
            assert_eq!((system.allocs.get(), system.deallocs.get()), (3, 1), "large blocks come and go");
        }
    }

    #[test]
    fn realloc_keeps_a_block_within_its_class_and_moves_it_across() {
        let system = Counting::default();
        let mut pools = Pools::new();
        unsafe {
            let a = pools.alloc(layout(20, 1), &system);
            ptr::copy_nonoverlapping(b"0123456789abcdefghij".as_ptr(), a, 20);
            let same = pools.realloc(a, layout(20, 1), 32, &system);
            assert_eq!(same, a);
            let moved = pools.realloc(same, layout(32, 1), 100, &system);
            assert_ne!(moved, a);
            assert_eq!(std::slice::from_raw_parts(moved, 20), b"0123456789abcdefghij");
            assert_eq!(pools.alloc(layout(17, 1), &system), a, "the old block went back to its list");
            let large = pools.realloc(moved, layout(100, 1), 10_000, &system);
            assert_eq!(std::slice::from_raw_parts(large, 20), b"0123456789abcdefghij");
            let small = pools.realloc(large, layout(10_000, 1), 8, &system);
            assert_eq!(std::slice::from_raw_parts(small, 8), b"01234567");
        }
    }

    proptest! {
        /// Any sequence of allocations, resizes and frees: live blocks never overlap, keep their
        /// bytes, and all of them are handed back.
        #[test]
        fn live_blocks_never_overlap_and_keep_their_bytes(
            ops in prop::collection::vec((0u8..3, 1usize..6000, any::<u8>(), any::<prop::sample::Index>()), 1..300)
        ) {
            let mut pools = Pools::new();
            let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
            for (op, size, fill, pick) in ops {
                match (op, live.is_empty()) {
                    (0, _) | (_, true) => {
                        let l = layout(size, 1 << (size % 6));
                        let p = unsafe { pools.alloc(l, &System) };
                        prop_assert!(!p.is_null());
                        prop_assert_eq!(p as usize % l.align(), 0);
                        unsafe { ptr::write_bytes(p, fill, size) };
                        live.push((p, l, fill));
                    }
                    (1, false) => {
                        let (p, l, fill) = live.swap_remove(pick.index(live.len()));
                        let q = unsafe { pools.realloc(p, l, size, &System) };
                        let kept = l.size().min(size);
                        let bytes = unsafe { std::slice::from_raw_parts(q, kept) };
                        prop_assert!(bytes.iter().all(|b| *b == fill), "realloc lost bytes");
                        unsafe { ptr::write_bytes(q, fill, size) };
                        live.push((q, layout(size, l.align()), fill));
                    }
                    _ => {
                        let (p, l, _) = live.swap_remove(pick.index(live.len()));
                        unsafe { pools.dealloc(p, l, &System) };
                    }
                }
                let mut spans: Vec<(usize, usize)> = live.iter().map(|(p, l, _)| (*p as usize, l.size())).collect();
                spans.sort_unstable();
                prop_assert!(spans.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0), "overlapping blocks");
            }
            for (p, l, fill) in live {
                let bytes = unsafe { std::slice::from_raw_parts(p, l.size()) };
                prop_assert!(bytes.iter().all(|b| *b == fill), "a block lost its bytes");
                unsafe { pools.dealloc(p, l, &System) };
            }
        }
    }
}
