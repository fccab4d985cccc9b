//! The C runtime routines a driver image imports from ntoskrnl.exe (built with no default
//! libraries, LLVM emits calls to them): memcpy, memmove, memset, memcmp, strlen and __chkstk, with the
//! Windows x64 calling convention the image uses. Only the PE loader binds them; natively linked
//! drivers use the host's.

use std::ffi::c_void;

/// ntoskrnl!memcpy.
pub(crate) unsafe extern "win64" fn memcpy(
    dst: *mut c_void,
    src: *const c_void,
    n: usize,
) -> *mut c_void {
    // SAFETY: the image's contract for memcpy (valid, non-overlapping ranges).
    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, n) };
    dst
}

/// ntoskrnl!memmove.
pub(crate) unsafe extern "win64" fn memmove(
    dst: *mut c_void,
    src: *const c_void,
    n: usize,
) -> *mut c_void {
    // SAFETY: the image's contract for memmove (valid ranges, overlap allowed).
    unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, n) };
    dst
}

/// ntoskrnl!memset.
pub(crate) unsafe extern "win64" fn memset(dst: *mut c_void, value: i32, n: usize) -> *mut c_void {
    // SAFETY: the image's contract for memset (a valid range).
    unsafe { std::ptr::write_bytes(dst as *mut u8, value as u8, n) };
    dst
}

/// ntoskrnl!strlen.
pub(crate) unsafe extern "win64" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the image's contract for strlen (a NUL-terminated string).
    while unsafe { *s.add(n) } != 0 {
        n += 1;
    }
    n
}

/// ntoskrnl!memcmp.
pub(crate) unsafe extern "win64" fn memcmp(a: *const c_void, b: *const c_void, n: usize) -> i32 {
    // SAFETY: the image's contract for memcmp (two valid ranges of n bytes).
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a as *const u8, n),
            std::slice::from_raw_parts(b as *const u8, n),
        )
    };
    match a.iter().zip(b).find(|(x, y)| x != y) {
        Some((x, y)) => i32::from(*x) - i32::from(*y),
        None => 0,
    }
}

// __chkstk: called with the frame size in RAX; it must probe the new stack pages and preserve
// every register. kemu's thread stacks are fully committed (an overflow hits the guard page), so
// there is nothing to probe: it returns at once, touching nothing.
std::arch::global_asm!(".globl kemu_chkstk", "kemu_chkstk:", "ret");

unsafe extern "C" {
    fn kemu_chkstk();
}

/// The address of kemu's __chkstk.
pub(crate) fn chkstk_address() -> usize {
    kemu_chkstk as *const () as usize
}
