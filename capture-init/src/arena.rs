//! capture-init's memory allocator: a bump arena over 1 MiB chunks from the system allocator.
//!
//! capture-init is a one-shot command (parse the flags, plan, render, one transaction, exit),
//! and what it allocates is small and short-lived. musl's allocator, which the static binary
//! that ships uses, maps and unmaps pages for such a run about a hundred times (an `mmap` and a
//! `munmap` per few allocations: 0.4 ms of a 3 ms native nftables apply, measured with
//! `strace -c` and `scripts/bench`). Here a small allocation is a pointer bump in the current
//! chunk; freeing gives memory back only when it is the last block (the common grow-a-`Vec`
//! and drop-a-temporary cases), and the chunks live until the process exits. Allocations of
//! [`LARGE`] bytes or more (a big restore payload, netlink receive buffers, 10k-CIDR lists) go
//! to the system allocator and are freed as usual, so what the arena can hold back is bounded
//! by the small blocks a run allocates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::{Mutex, PoisonError};

/// Allocations at least this large, or aligned beyond a page, bypass the arena.
const LARGE: usize = 64 << 10;
/// The size of each chunk taken from the system allocator.
const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

/// The bump arena (see the module documentation).
#[derive(Debug)]
pub struct Arena {
    /// The free part of the current chunk: `[next, end)`, as addresses.
    free: Mutex<(usize, usize)>,
}

impl Arena {
    pub const fn new() -> Self {
        Self {
            free: Mutex::new((0, 0)),
        }
    }
}

fn bypasses(layout: Layout) -> bool {
    layout.size() >= LARGE || layout.align() > PAGE
}

// SAFETY: small blocks are carved from chunks the system allocator gave us, aligned as asked
// and never handed out twice while live (the bump pointer only moves back over the last block
// when that block is freed); large ones are the system allocator's own. The mutex makes every
// step atomic across threads; it does not allocate (futex based).
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if bypasses(layout) {
            // SAFETY: the caller's layout, passed on.
            return unsafe { System.alloc(layout) };
        }
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let (next, end) = *free;
        let mut start = next.next_multiple_of(layout.align());
        if next == 0 || start + layout.size() > end {
            // SAFETY: CHUNK and PAGE form a valid, non-zero layout.
            let chunk = unsafe { System.alloc(Layout::from_size_align_unchecked(CHUNK, PAGE)) };
            if chunk.is_null() {
                return chunk;
            }
            start = chunk as usize;
            free.1 = start + CHUNK;
        }
        free.0 = start + layout.size();
        start as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if bypasses(layout) {
            // SAFETY: allocated by System with this layout (see `alloc`).
            return unsafe { System.dealloc(ptr, layout) };
        }
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if ptr as usize + layout.size() == free.0 {
            free.0 = ptr as usize;
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !bypasses(layout) && new_size < LARGE {
            let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            // The last block grows or shrinks where it is.
            if ptr as usize + layout.size() == free.0 && ptr as usize + new_size <= free.1 {
                free.0 = ptr as usize + new_size;
                return ptr;
            }
        }
        // SAFETY: the layout's alignment is valid and `new_size`, as the caller promises, does
        // not overflow when rounded up to it.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a non-zero size (the caller's promise).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this long.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            // SAFETY: `ptr` was allocated here with `layout`.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_distinct_and_the_last_one_is_reused() {
        let arena = Arena::new();
        let small = Layout::from_size_align(24, 8).unwrap();
        // SAFETY: non-zero layouts; every block is freed with its own layout.
        unsafe {
            let a = arena.alloc(small);
            let b = arena.alloc(Layout::from_size_align(100, 64).unwrap());
            assert_eq!(b as usize % 64, 0);
            assert!(b as usize >= a as usize + 24);
            std::ptr::write_bytes(a, 1, 24);
            std::ptr::write_bytes(b, 2, 100);
            // Growing the last block keeps it in place and its bytes.
            let b2 = arena.realloc(b, Layout::from_size_align(100, 64).unwrap(), 4000);
            assert_eq!(b2, b);
            assert_eq!(*b2.add(99), 2);
            // Freeing the last block hands its memory out again.
            arena.dealloc(b2, Layout::from_size_align(4000, 64).unwrap());
            let c = arena.alloc(Layout::from_size_align(8, 64).unwrap());
            assert_eq!(c, b);
            // Growing a block that is not the last moves it, bytes and all.
            let a2 = arena.realloc(a, small, 48);
            assert_ne!(a2, a);
            assert_eq!(*a2.add(23), 1);
            // Large blocks are the system's; a chunk's worth of small ones moves to a new chunk.
            let big = arena.alloc(Layout::from_size_align(LARGE, 8).unwrap());
            std::ptr::write_bytes(big, 3, LARGE);
            arena.dealloc(big, Layout::from_size_align(LARGE, 8).unwrap());
            for _ in 0..(2 * CHUNK / 4096) {
                let block = arena.alloc(Layout::from_size_align(4096, 8).unwrap());
                assert!(!block.is_null());
                std::ptr::write_bytes(block, 4, 4096);
            }
        }
    }
}
