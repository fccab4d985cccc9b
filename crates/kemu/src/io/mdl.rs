//! MDLs: IoAllocateMdl (optionally attached to an IRP), MmBuildMdlForNonPagedPool, IoFreeMdl,
//! and the I/O manager's own MDL for a direct request's buffer (made when the IRP is built,
//! freed with every MDL on the IRP's chain when it completes).

// Keys are addresses and small ids: a fast non-cryptographic hash (no peer chooses them).
use rustc_hash::FxHashMap as HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

use ksys::io::{
    IRP, MDL, MDL_MAPPED_TO_SYSTEM_VA, MDL_PAGES_LOCKED, MDL_SOURCE_IS_NONPAGED_POOL,
    MDL_WRITE_OPERATION, PAGE_SIZE,
};

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

/// Fills a live MDL's frame array for the pages its buffer spans (kemu's frame numbers are the
/// host's page numbers); returns the buffer's address.
///
/// # Safety
/// `mdl` is a live MDL made by [`Mdls::allocate`] (room for every spanned page's frame).
unsafe fn fill_frames(mdl: *mut MDL) -> usize {
    // SAFETY: per the contract.
    unsafe {
        let va = (*mdl).StartVa as usize + (*mdl).ByteOffset as usize;
        let pages = span_pages(va, (*mdl).ByteCount as usize);
        let frames = (mdl as *mut u8).add(std::mem::size_of::<MDL>()) as *mut u64;
        for i in 0..pages {
            *frames.add(i) = ((va / PAGE_SIZE) + i) as u64;
        }
        va
    }
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

    /// A zeroed MDL describing `length` bytes at `va` (header and an empty frame array),
    /// registered as live.
    fn allocate(&self, sequence: u64, va: usize, length: u32) -> *mut MDL {
        let pages = span_pages(va, length as usize);
        let size = std::mem::size_of::<MDL>() + pages * 8;
        let mdl = super::alloc_zeroed(size) as *mut MDL;
        // SAFETY: freshly allocated with room for the header and the frame array.
        unsafe {
            (*mdl).Size = size as i16;
            (*mdl).StartVa = (va & !(PAGE_SIZE - 1)) as *mut c_void;
            (*mdl).ByteOffset = (va & (PAGE_SIZE - 1)) as u32;
            (*mdl).ByteCount = length;
        }
        self.live.lock().unwrap().insert(
            mdl as usize,
            MdlInfo {
                size,
                site: Site::here(sequence),
            },
        );
        mdl
    }

    /// The I/O manager's MDL for the caller's buffer of a METHOD_IN_DIRECT / METHOD_OUT_DIRECT
    /// request, as IoAllocateMdl and MmProbeAndLockPages leave it (pages locked, for writing if
    /// the driver writes the buffer), already mapped: kemu's "system address" of a caller's
    /// buffer is the buffer itself, so MmGetSystemAddressForMdlSafe finds MappedSystemVa set
    /// instead of mapping it. Freed by [`Self::release_irp_chain`] when the IRP completes.
    pub(crate) fn lock_caller_buffer(
        &self,
        sequence: u64,
        buffer: *mut u8,
        length: u32,
        write: bool,
    ) -> *mut MDL {
        let mdl = self.allocate(sequence, buffer as usize, length);
        // SAFETY: the live MDL just made, with room for every spanned page's frame.
        unsafe {
            (*mdl).MappedSystemVa = fill_frames(mdl) as *mut c_void;
            (*mdl).MdlFlags = MDL_PAGES_LOCKED
                | MDL_MAPPED_TO_SYSTEM_VA
                | if write { MDL_WRITE_OPERATION } else { 0 };
        }
        mdl
    }

    /// At the completion of an IRP the I/O manager built: unlocks and frees every MDL on its
    /// chain (its own and any a driver attached with IoAllocateMdl), as IoCompleteRequest does
    /// (KMDF's FxRequestBase::FreeMdls copies that behaviour for the IRPs it frees itself). One
    /// the driver freed already is a bugcheck (0xC9, MDL not live).
    pub(crate) fn release_irp_chain(&self, irp: *mut IRP) {
        // SAFETY: the live IRP being completed; its chain holds the MDLs attached to it.
        let mut next = unsafe { std::mem::replace(&mut (*irp).MdlAddress, std::ptr::null_mut()) };
        while !next.is_null() {
            let mdl = next;
            let size = self.size_of("IofCompleteRequest (the I/O manager's MDL)", mdl);
            // SAFETY: a live MDL (checked above); read before it is freed.
            next = unsafe { (*mdl).Next };
            self.live.lock().unwrap().remove(&(mdl as usize));
            super::free(mdl as *mut u8, size);
        }
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
    let mdl = kernel
        .mdls
        .allocate(kernel.next_sequence(), va as usize, length);
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
        (*mdl).MappedSystemVa = fill_frames(mdl) as *mut c_void;
        (*mdl).MdlFlags |= MDL_SOURCE_IS_NONPAGED_POOL;
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
