//! The global allocator of the kernel image: every Box and Vec of the driver is non-paged pool
//! with the driver's tag (so poolmon, Driver Verifier and kemu's verifier see it).

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use crate::imports::{ExAllocatePool2, ExFreePoolWithTag};
use crate::ntdef::{POOL_FLAG_NON_PAGED, POOL_FLAG_UNINITIALIZED};

/// Bytes currently allocated through every [`PoolAllocator`] of this image (what a driver's
/// statistics report as the pool it holds).
static BYTES_IN_USE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Bytes currently allocated through the pool allocators of this image.
pub fn bytes_in_use() -> usize {
    BYTES_IN_USE.load(core::sync::atomic::Ordering::Relaxed)
}

/// Counts a block the driver took from ExAllocatePool2 directly (not through a
/// [`PoolAllocator`]), so [`bytes_in_use`] stays the whole story; pair with [`note_freed`].
pub fn note_allocated(size: usize) {
    BYTES_IN_USE.fetch_add(size, core::sync::atomic::Ordering::Relaxed);
}

/// The counterpart of [`note_allocated`] when that block is freed.
pub fn note_freed(size: usize) {
    BYTES_IN_USE.fetch_sub(size, core::sync::atomic::Ordering::Relaxed);
}

/// Alignment every pool block has on x64 (page-sized and larger blocks are page aligned).
const POOL_ALIGNMENT: usize = 16;

/// Allocates from non-paged pool under one tag; handles alignments above 16 by over-allocating
/// and keeping the block's start just below the aligned pointer.
#[derive(Debug)]
pub struct PoolAllocator {
    tag: u32,
}

impl PoolAllocator {
    /// An allocator tagging its blocks with `tag` (four ASCII characters, shown as written).
    pub const fn new(tag: [u8; 4]) -> Self {
        PoolAllocator {
            tag: u32::from_le_bytes(tag),
        }
    }

    /// The pool tag.
    pub const fn tag(&self) -> u32 {
        self.tag
    }

    fn allocate(&self, layout: Layout, flags: u64) -> *mut u8 {
        let block = self.allocate_block(layout, flags);
        if !block.is_null() {
            BYTES_IN_USE.fetch_add(layout.size(), core::sync::atomic::Ordering::Relaxed);
        }
        block
    }

    fn allocate_block(&self, layout: Layout, flags: u64) -> *mut u8 {
        if layout.align() <= POOL_ALIGNMENT {
            // SAFETY: plain pool allocation; a NULL result is passed on as allocation failure.
            return unsafe { ExAllocatePool2(flags, layout.size().max(1), self.tag) } as *mut u8;
        }
        let Some(total) = layout.size().checked_add(layout.align()) else {
            return core::ptr::null_mut();
        };
        // SAFETY: as above.
        let raw = unsafe { ExAllocatePool2(flags, total, self.tag) } as *mut u8;
        if raw.is_null() {
            return raw;
        }
        let start = raw as usize;
        let aligned =
            (start + core::mem::size_of::<usize>() + layout.align() - 1) & !(layout.align() - 1);
        let user = aligned as *mut u8;
        // SAFETY: `aligned - start` lies in [8, align], so `user - 8 .. user + size` is inside the
        // `size + align` byte block, and `user - 8` is 8-aligned.
        unsafe { (user as *mut usize).sub(1).write(start) };
        user
    }
}

// SAFETY: blocks come from ExAllocatePool2 with at least the requested size and alignment, and
// `dealloc` recovers the block start exactly as `allocate` stored it.
unsafe impl GlobalAlloc for PoolAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocate(layout, POOL_FLAG_NON_PAGED | POOL_FLAG_UNINITIALIZED)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.allocate(layout, POOL_FLAG_NON_PAGED)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES_IN_USE.fetch_sub(layout.size(), core::sync::atomic::Ordering::Relaxed);
        let block = if layout.align() <= POOL_ALIGNMENT {
            ptr
        } else {
            // SAFETY: `allocate` stored the block start in the word just below `ptr`.
            unsafe { (ptr as *const usize).sub(1).read() as *mut u8 }
        };
        // SAFETY: `block` is the start of a live block allocated under this tag.
        unsafe { ExFreePoolWithTag(block as *mut c_void, self.tag) };
    }
}
