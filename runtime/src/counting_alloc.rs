//! A global allocator wrapper that counts, per thread, the bytes allocated minus the bytes
//! freed. Placement scriptlets read it to bound everything an evaluation allocates: the
//! Starlark heap counts only what lives in its arena, while big integers, dict tables and the
//! interpreter's vectors live on the Rust heap.
//!
//! The binary installs it around its allocator (`Counting(mimalloc::MiMalloc)`); this crate's
//! unit tests install it around the system allocator. Where it is not installed the count
//! stays 0 and the scriptlet bounds fall back to the Starlark heap alone.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

/// Wraps the allocator `A`, counting each thread's net allocated bytes.
pub struct Counting<A>(pub A);

thread_local! {
    /// Bytes allocated minus bytes freed by this thread. Constant-initialized and without a
    /// destructor: reading or changing it never allocates, which an allocator must not do.
    static NET: Cell<i64> = const { Cell::new(0) };
}

fn add(bytes: i64) {
    // `try_with` fails only while a thread is torn down; its count no longer matters then.
    let _ = NET.try_with(|net| net.set(net.get().wrapping_add(bytes)));
}

fn size(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

// SAFETY: every method forwards to `A`'s with the same arguments and returns its result; the
// counting beside it neither allocates nor touches the memory.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `alloc` are passed on unchanged.
        let pointer = unsafe { self.0.alloc(layout) };
        if !pointer.is_null() {
            add(size(layout.size()));
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let pointer = unsafe { self.0.alloc_zeroed(layout) };
        if !pointer.is_null() {
            add(size(layout.size()));
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller's guarantees for `dealloc` are passed on unchanged.
        unsafe { self.0.dealloc(pointer, layout) };
        add(-size(layout.size()));
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's guarantees for `realloc` are passed on unchanged.
        let moved = unsafe { self.0.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            add(size(new_size) - size(layout.size()));
        }
        moved
    }
}

/// This thread's net allocated bytes as counted so far: only the difference of two readings
/// on one thread means anything (memory freed here that another thread allocated counts
/// against it). Always 0 where [`Counting`] is not the global allocator.
pub fn thread_net_bytes() -> i64 {
    NET.try_with(Cell::get).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: an allocation on this thread is counted while it lives, and no longer once freed.
    #[test]
    fn a_thread_counts_what_it_holds() {
        let before = thread_net_bytes();
        let block = vec![7u8; 1 << 20];
        let holding = thread_net_bytes() - before;
        assert!(holding >= 1 << 20, "counted {holding}");
        drop(block);
        assert!(thread_net_bytes() - before < 1 << 10);
    }
}
