//! The filter's memory allocator: small blocks come from per-size free lists.
//!
//! A request allocates about twenty small blocks in the guest: the buffers the host fills
//! through `proxy_on_memory_allocate`, header values, the decision's bookkeeping. Each went
//! through wasi-libc's dlmalloc, whose bookkeeping costs several hundred instructions for an
//! allocation and its free (BENCHMARKS.md, optimisation log). Here a
//! block of up to [`MAX_SMALL`] bytes is taken from, and given back to, a free list of its size
//! class (8, 16, 24, ... 512 bytes, then 1, 2 and 4 KiB): a few dozen instructions. Blocks of a
//! class come from the system allocator, always in the class's size, when its list is empty and
//! are kept for reuse after that, so the pools grow to the peak number of live blocks per class
//! and no further; larger or over-aligned blocks go to the system allocator directly. Loading a
//! configuration bypasses the lists ([`bypassing_pools`]).
//!
//! Sound only where one thread touches the heap: proxy-wasm guests (wasm32 without the `atomics`
//! feature). The global registration is limited to that target; [`Pools`] itself is plain data and
//! tested natively.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ptr;

/// The largest block served from a free list.
pub const MAX_SMALL: usize = 4096;
/// The alignment of every pooled block: the system allocator's own (wasi-libc's malloc on wasm32
/// gives 8; a larger one would send every new block through `posix_memalign`, slower and with
/// more waste).
const BLOCK_ALIGN: usize = 8;
/// Size classes: every 8 bytes up to 512 (wasi-libc's malloc rounds to 8 bytes too, so small
/// blocks take no more memory than they did from it), then 1024, 2048 and 4096.
const CLASSES: usize = 67;

/// The heads of the free lists, one per size class (a free block holds the address of the next),
/// and whether the lists are bypassed (see [`Pools::set_bypass`]).
#[derive(Debug)]
pub struct Pools {
    free: [*mut u8; CLASSES],
    bypass: bool,
}

impl Default for Pools {
    fn default() -> Self {
        Pools::new()
    }
}

/// The size class of a layout, or `None` for blocks the system allocator serves directly.
#[inline]
#[expect(clippy::arithmetic_side_effects, reason = "n < MAX_SMALL: the class is below CLASSES")]
fn class(layout: Layout) -> Option<usize> {
    if layout.size() > MAX_SMALL || layout.align() > BLOCK_ALIGN {
        return None;
    }
    let n = layout.size().saturating_sub(1);
    Some(if n < 512 { n / 8 } else { 63 + (usize::BITS - (n >> 9).leading_zeros()) as usize })
}

/// The size of every block of a class.
#[expect(clippy::arithmetic_side_effects, reason = "class < CLASSES (its callers'): at most MAX_SMALL")]
fn class_size(class: usize) -> usize {
    if class < 64 { 8 * (class + 1) } else { 512 << (class - 63) }
}

/// The layout in which the system allocator holds every block of a pooled layout's class (the
/// layout itself for the others): whichever way a block is freed, the system allocator gets it
/// back with the layout it gave it in.
fn system_layout(layout: Layout) -> Layout {
    match class(layout) {
        Some(c) => Layout::from_size_align(class_size(c), BLOCK_ALIGN).unwrap_or(layout),
        None => layout,
    }
}

/// A new block from the system allocator. Kept out of line so that the common case, a block
/// from a free list, needs no stack frame.
#[cold]
#[inline(never)]
unsafe fn from_system(layout: Layout, system: &impl GlobalAlloc) -> *mut u8 {
    // SAFETY: the caller keeps GlobalAlloc::alloc's contract; system_layout only rounds a pooled
    // layout up to its class (same alignment or stricter, never zero-sized).
    unsafe { system.alloc(system_layout(layout)) }
}

impl Pools {
    pub const fn new() -> Pools {
        Pools { free: [ptr::null_mut(); CLASSES], bypass: false }
    }

    /// While on, blocks are taken from and given back to the system allocator directly (still
    /// in their class sizes, so that a block may be freed either way): for work that allocates
    /// much and keeps little, like loading a configuration, where blocks parked in the lists of
    /// one class could not serve another and the heap would grow (and a fresh wasm page costs
    /// a page fault).
    /// Returns the previous setting.
    pub fn set_bypass(&mut self, on: bool) -> bool {
        std::mem::replace(&mut self.bypass, on)
    }

    /// Allocates like `GlobalAlloc::alloc`, taking new memory from `system`.
    ///
    /// # Safety
    /// The contract of [`GlobalAlloc::alloc`]; `system` must be the allocator every other call
    /// on these pools was given.
    #[inline]
    pub unsafe fn alloc(&mut self, layout: Layout, system: &impl GlobalAlloc) -> *mut u8 {
        if !self.bypass
            && let Some(c) = class(layout)
            && let Some(head) = self.free.get_mut(c)
            && !head.is_null()
        {
            let block = *head;
            // A free block starts with the address of the next free block of its class.
            // SAFETY: `block` heads this class's free list, so it is a block of at least a
            // pointer's size and BLOCK_ALIGN that `dealloc` wrote the next link into.
            *head = unsafe { block.cast::<*mut u8>().read() };
            return block;
        }
        // SAFETY: the caller keeps GlobalAlloc::alloc's contract.
        unsafe { from_system(layout, system) }
    }

    /// Frees like `GlobalAlloc::dealloc`: a pooled block goes back to its list.
    ///
    /// # Safety
    /// The contract of [`GlobalAlloc::dealloc`]: `ptr` came from these pools with `layout`.
    #[inline]
    pub unsafe fn dealloc(&mut self, ptr: *mut u8, layout: Layout, system: &impl GlobalAlloc) {
        match class(layout) {
            Some(c) if !self.bypass && c < CLASSES => {
                let Some(head) = self.free.get_mut(c) else { return };
                // SAFETY: `ptr` came from these pools with `layout` (the caller's contract), so it
                // is a block of class `c`: at least a pointer's size, BLOCK_ALIGN-aligned, and no
                // longer in use; its first word becomes the link to the next free block.
                unsafe { ptr.cast::<*mut u8>().write(*head) };
                *head = ptr;
            }
            // SAFETY: the system allocator gave `ptr` with system_layout(layout) (from_system, or
            // its own realloc for unpooled layouts, where system_layout is `layout`).
            _ => unsafe { system.dealloc(ptr, system_layout(layout)) },
        }
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
            // SAFETY: neither size is pooled, so `ptr` is the system allocator's with `layout`.
            (None, None) => unsafe { system.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY: `new_layout` is valid (checked above) and `system` is the same allocator.
                let moved = unsafe { self.alloc(new_layout, system) };
                if !moved.is_null() {
                    // SAFETY: `ptr` holds `layout.size()` bytes and `moved` `new_size`, in two
                    // distinct blocks; `ptr` is then freed with the layout it was given in.
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

/// Runs `f` with the guest's free lists bypassed ([`Pools::set_bypass`]), then restores the
/// setting it found (calls nest: a plan dropped while the next one loads); natively, just runs it.
pub fn bypassing_pools<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    {
        let was = global::set_bypass(true);
        let out = f();
        global::set_bypass(was);
        out
    }
    #[cfg(not(all(target_arch = "wasm32", not(target_feature = "atomics"))))]
    f()
}

/// The guest's global allocator: [`Pools`] over the system allocator.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
mod global {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::UnsafeCell;

    use super::Pools;

    struct Guest(UnsafeCell<Pools>);

    // SAFETY: the guest has one thread (wasm32 without atomics), so the pools are never shared.
    unsafe impl Sync for Guest {}

    #[global_allocator]
    static GUEST: Guest = Guest(UnsafeCell::new(Pools::new()));

    pub fn set_bypass(on: bool) -> bool {
        // SAFETY: no allocation is under way here (the guest has one thread, and this is not
        // called from inside the allocator), so nothing else holds the pools.
        unsafe { (*GUEST.0.get()).set_bypass(on) }
    }

    // SAFETY: Pools hand out blocks of at least the layout's size and alignment that stay valid
    // until freed, and realloc keeps the bytes: GlobalAlloc's contract.
    unsafe impl GlobalAlloc for Guest {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: one thread and no re-entry (the pools never allocate), so this is the only
            // reference to the pools; the caller keeps GlobalAlloc's contract.
            unsafe { (*self.0.get()).alloc(layout, &System) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as in alloc.
            unsafe { (*self.0.get()).dealloc(ptr, layout, &System) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: as in alloc.
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

    // SAFETY: every call is passed to System unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.allocs.set(self.allocs.get() + 1);
            // SAFETY: the caller keeps GlobalAlloc::alloc's contract, which System's call needs.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            self.deallocs.set(self.deallocs.get() + 1);
            // SAFETY: the caller keeps GlobalAlloc::dealloc's contract, which System's call needs.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn every_small_size_has_the_smallest_class_that_holds_it() {
        for size in 1..=MAX_SMALL {
            let c = class(layout(size, 1)).unwrap();
            assert!(c < CLASSES && class_size(c) >= size, "{size} bytes in class {c}");
            assert!(c == 0 || class_size(c - 1) < size, "{size} bytes fit a smaller class than {c}");
        }
        assert_eq!(class(layout(MAX_SMALL, 1)), Some(CLASSES - 1));
        assert_eq!((class(layout(512, 1)), class(layout(513, 1))), (Some(63), Some(64)));
        assert_eq!(class(layout(MAX_SMALL + 1, 1)), None, "larger blocks go to the system allocator");
        assert_eq!(class(layout(8, 8)), Some(0));
        assert_eq!(class(layout(8, 16)), None, "over-aligned blocks go to the system allocator");
    }

    #[test]
    fn a_freed_block_is_reused_by_its_class_without_the_system_allocator() {
        let system = Counting::default();
        let mut pools = Pools::new();
        // SAFETY: every block is freed once, with the layout it was allocated with, by the same allocator.
        unsafe {
            let a = pools.alloc(layout(24, 8), &system);
            assert_eq!(system.allocs.get(), 1);
            assert_eq!(a as usize % BLOCK_ALIGN, 0, "pooled blocks are 8-aligned");
            pools.dealloc(a, layout(24, 8), &system);
            assert_eq!(system.deallocs.get(), 0, "a pooled block is kept");
            let b = pools.alloc(layout(20, 1), &system);
            assert_eq!(b, a, "the same class takes the freed block");
            let c = pools.alloc(layout(40, 1), &system);
            assert_ne!(c, a, "another class does not");
            assert_eq!(system.allocs.get(), 2);
            pools.dealloc(b, layout(20, 1), &system);
            pools.dealloc(c, layout(40, 1), &system);
            let big = pools.alloc(layout(5000, 1), &system);
            pools.dealloc(big, layout(5000, 1), &system);
            assert_eq!((system.allocs.get(), system.deallocs.get()), (3, 1), "large blocks come and go");
        }
    }

    #[test]
    fn bypassed_lists_leave_blocks_to_the_system_allocator_and_keep_theirs() {
        let system = Counting::default();
        let mut pools = Pools::new();
        // SAFETY: as above; `moved` is freed with its new size.
        unsafe {
            let listed = pools.alloc(layout(30, 1), &system);
            pools.dealloc(listed, layout(30, 1), &system);
            pools.set_bypass(true);
            let fresh = pools.alloc(layout(30, 1), &system);
            assert_ne!(fresh, listed, "the lists are not used");
            let moved = pools.realloc(fresh, layout(30, 1), 100, &system);
            pools.dealloc(moved, layout(100, 1), &system);
            assert_eq!((system.allocs.get(), system.deallocs.get()), (3, 2));
            pools.set_bypass(false);
            assert_eq!(pools.alloc(layout(26, 1), &system), listed, "the list kept its block");
        }
    }

    #[test]
    fn realloc_keeps_a_block_within_its_class_and_moves_it_across() {
        let system = Counting::default();
        let mut pools = Pools::new();
        // SAFETY: as above; reads stay within the size each block was last given.
        unsafe {
            let a = pools.alloc(layout(20, 1), &system);
            ptr::copy_nonoverlapping(b"0123456789abcdefghij".as_ptr(), a, 20);
            let same = pools.realloc(a, layout(20, 1), 24, &system);
            assert_eq!(same, a);
            let moved = pools.realloc(same, layout(24, 1), 100, &system);
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
        /// Any sequence of allocations, resizes and frees, with the lists bypassed at times:
        /// live blocks never overlap, keep their bytes, and all of them are handed back.
        #[test]
        fn live_blocks_never_overlap_and_keep_their_bytes(
            ops in prop::collection::vec((0u8..4, 1usize..6000, any::<u8>(), any::<prop::sample::Index>()), 1..300)
        ) {
            let mut pools = Pools::new();
            let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
            for (op, size, fill, pick) in ops {
                match (op, live.is_empty()) {
                    (3, _) => {
                        pools.set_bypass(size % 2 == 0);
                    }
                    (0, _) | (_, true) => {
                        let l = layout(size, 1 << (size % 6));
                        // SAFETY: a valid layout, and the pools always get System.
                        let p = unsafe { pools.alloc(l, &System) };
                        prop_assert!(!p.is_null());
                        prop_assert_eq!(p as usize % l.align(), 0);
                        // SAFETY: `p` holds `size` bytes.
                        unsafe { ptr::write_bytes(p, fill, size) };
                        live.push((p, l, fill));
                    }
                    (1, false) => {
                        let (p, l, fill) = live.swap_remove(pick.index(live.len()));
                        // SAFETY: `p` is live with layout `l` (taken out of `live`).
                        let q = unsafe { pools.realloc(p, l, size, &System) };
                        let kept = l.size().min(size);
                        // SAFETY: `q` holds at least `kept` bytes, all written before.
                        let bytes = unsafe { std::slice::from_raw_parts(q, kept) };
                        prop_assert!(bytes.iter().all(|b| *b == fill), "realloc lost bytes");
                        // SAFETY: `q` holds `size` bytes.
                        unsafe { ptr::write_bytes(q, fill, size) };
                        live.push((q, layout(size, l.align()), fill));
                    }
                    _ => {
                        let (p, l, _) = live.swap_remove(pick.index(live.len()));
                        // SAFETY: `p` is live with layout `l` (taken out of `live`).
                        unsafe { pools.dealloc(p, l, &System) };
                    }
                }
                let mut spans: Vec<(usize, usize)> = live.iter().map(|(p, l, _)| (*p as usize, l.size())).collect();
                spans.sort_unstable();
                prop_assert!(spans.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0), "overlapping blocks");
            }
            for (p, l, fill) in live {
                // SAFETY: `p` is live with layout `l` and its bytes were written.
                let bytes = unsafe { std::slice::from_raw_parts(p, l.size()) };
                prop_assert!(bytes.iter().all(|b| *b == fill), "a block lost its bytes");
                // SAFETY: `p` is live with layout `l`, freed once.
                unsafe { pools.dealloc(p, l, &System) };
            }
        }
    }
}
