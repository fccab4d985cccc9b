//! MDLs: IoAllocateMdl (optionally attached to an IRP), MmBuildMdlForNonPagedPool, IoFreeMdl.

// Keys are addresses and small ids: a fast non-cryptographic hash (no peer chooses them).
use rustc_hash::FxHashMap as HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

use ksys::io::{IRP, MDL, MDL_SOURCE_IS_NONPAGED_POOL, PAGE_SIZE};

use crate::bugcheck::{bugcheck, codes, verifier};
use crate::leaks::{Leak, LeakKind, Site};
use crate::thread::{self, DISPATCH};

struct MdlInfo {
    size: usize,
    site: Site,
}

/// Live MDLs of one kernel.
#[derive(Default)]
pub(crate) struct Mdls {
    live: Mutex<HashMap<usize, MdlInfo>>,
}

/// Pages spanned by `[va, va + length)`.
fn span_pages(va: usize, length: usize) -> usize {
    ((va & (PAGE_SIZE - 1)) + length).div_ceil(PAGE_SIZE)
}

impl Mdls {
    fn size_of(&self, routine: &str, mdl: *mut MDL) -> usize {
        match self.live.lock().unwrap().get(&(mdl as usize)) {
            Some(i) => i.size,
            None => bugcheck(
                codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION,
                [verifier::MDL_NOT_LIVE, mdl as usize, 0, 0],
                format!(
                    "{routine}: MDL {:#x} is not allocated (freed, or never an MDL)",
                    mdl as usize
                ),
            ),
        }
    }

    /// Whether `mdl` is a live MDL.
    pub fn is_live(&self, mdl: *mut MDL) -> bool {
        self.live.lock().unwrap().contains_key(&(mdl as usize))
    }

    /// Driver MDLs still allocated.
    pub fn leaks(&self) -> Vec<Leak> {
        self.live
            .lock()
            .unwrap()
            .iter()
            .map(|(&address, i)| Leak {
                kind: LeakKind::Mdl,
                address,
                tag: "MDL".into(),
                size: i.size,
                site: i.site.clone(),
            })
            .collect()
    }
}

/// ntoskrnl!IoAllocateMdl.
pub(crate) unsafe extern "win64" fn io_allocate_mdl(
    va: *mut c_void,
    length: u32,
    secondary: u8,
    _charge_quota: u8,
    irp: *mut IRP,
) -> *mut MDL {
    thread::require_at_most("IoAllocateMdl", DISPATCH);
    let kernel = thread::kernel();
    if kernel.faults.allocation_fails() {
        return std::ptr::null_mut();
    }
    let pages = span_pages(va as usize, length as usize);
    let size = std::mem::size_of::<MDL>() + pages * 8;
    let mdl = super::alloc_zeroed(size) as *mut MDL;
    // SAFETY: freshly allocated with room for the header and the PFN array.
    unsafe {
        (*mdl).Size = size as i16;
        (*mdl).StartVa = (va as usize & !(PAGE_SIZE - 1)) as *mut c_void;
        (*mdl).ByteOffset = (va as usize & (PAGE_SIZE - 1)) as u32;
        (*mdl).ByteCount = length;
    }
    kernel.mdls.live.lock().unwrap().insert(
        mdl as usize,
        MdlInfo {
            size,
            site: Site::here(kernel.next_sequence()),
        },
    );
    if !irp.is_null() {
        // SAFETY: the caller passes a live IRP; the MDL chain consists of live MDLs.
        unsafe {
            if secondary == 0 || (*irp).MdlAddress.is_null() {
                (*irp).MdlAddress = mdl;
            } else {
                let mut tail = (*irp).MdlAddress;
                while !(*tail).Next.is_null() {
                    tail = (*tail).Next;
                }
                (*tail).Next = mdl;
            }
        }
    }
    mdl
}

/// ntoskrnl!MmBuildMdlForNonPagedPool.
pub(crate) unsafe extern "win64" fn mm_build_mdl_for_non_paged_pool(mdl: *mut MDL) {
    thread::require_at_most("MmBuildMdlForNonPagedPool", DISPATCH);
    let kernel = thread::kernel();
    kernel.mdls.size_of("MmBuildMdlForNonPagedPool", mdl);
    // SAFETY: the MDL is live; its PFN array has room for every spanned page.
    unsafe {
        let va = (*mdl).StartVa as usize + (*mdl).ByteOffset as usize;
        let pages = span_pages(va, (*mdl).ByteCount as usize);
        (*mdl).MappedSystemVa = va as *mut c_void;
        (*mdl).MdlFlags |= MDL_SOURCE_IS_NONPAGED_POOL;
        let pfns = (mdl as *mut u8).add(std::mem::size_of::<MDL>()) as *mut u64;
        for i in 0..pages {
            *pfns.add(i) = ((va / PAGE_SIZE) + i) as u64;
        }
    }
}

/// ntoskrnl!IoFreeMdl.
pub(crate) unsafe extern "win64" fn io_free_mdl(mdl: *mut MDL) {
    thread::require_at_most("IoFreeMdl", DISPATCH);
    let kernel = thread::kernel();
    let size = kernel.mdls.size_of("IoFreeMdl", mdl);
    kernel.mdls.live.lock().unwrap().remove(&(mdl as usize));
    super::free(mdl as *mut u8, size);
}
