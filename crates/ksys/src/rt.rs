//! Symbols the precompiled `core` expects from a C runtime, which a kernel image links without.

use core::ffi::c_void;

/// Marks "floating point used" for the MSVC toolchain; core references it.
#[unsafe(no_mangle)]
#[used]
pub static _fltused: i32 = 0;

/// Personality routine named in the unwind tables of the precompiled `core` (built with
/// unwinding even though wsktls aborts on panic). Nothing in the image catches exceptions, so it
/// answers ExceptionContinueSearch (1): "not handled here, keep looking".
#[unsafe(no_mangle)]
pub extern "C" fn __CxxFrameHandler3(
    _record: *mut c_void,
    _frame: *mut c_void,
    _context: *mut c_void,
    _dispatcher: *mut c_void,
) -> i32 {
    1
}
