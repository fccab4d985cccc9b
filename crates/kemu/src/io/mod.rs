//! The ntoskrnl `Io*`/`Mm*` subset: IRPs and their completion, MDLs, I/O work items.

pub(crate) mod device;
pub(crate) mod irp;
pub(crate) mod mdl;
pub(crate) mod workitem;

use std::alloc::Layout;

/// Allocates `size` zeroed bytes (16-aligned) for a kernel structure kemu tracks itself.
pub(crate) fn alloc_zeroed(size: usize) -> *mut u8 {
    let layout = Layout::from_size_align(size.max(16), 16).expect("layout");
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!p.is_null(), "kemu: host out of memory");
    p
}

/// Frees memory from [`alloc_zeroed`] after poisoning it (so stale driver reads see garbage).
pub(crate) fn free(p: *mut u8, size: usize) {
    let layout = Layout::from_size_align(size.max(16), 16).expect("layout");
    // SAFETY: `p` came from `alloc_zeroed(size)` and is freed once.
    unsafe {
        std::ptr::write_bytes(p, 0xDF, size.max(16));
        std::alloc::dealloc(p, layout);
    }
}
