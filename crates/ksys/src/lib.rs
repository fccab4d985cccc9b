//! `ksys`: the Windows kernel ABI wsktls uses, declared once and checked.
//!
//! - Types are `#[repr(C)]` with their C field names, and every size and offset is asserted at
//!   compile time ([`layout`]) and cross-checked against clang's view of the mingw-w64 headers.
//! - Kernel routines are declared once ([`imports`]): `raw-dylib` imports on the Windows target,
//!   slots bound by kemu elsewhere ([`import`]).
//! - KMDF is bound by our own stub ([`wdf::bind`]) and called through typed accessors
//!   ([`wdf::functions`]); [`kmdf`] is the safe surface the driver is written against.
//!
//! x86_64 only: every callback uses the Windows x64 calling convention (`extern "win64"`).

#![no_std]
#![allow(non_camel_case_types, clippy::upper_case_acronyms)]

#[cfg(not(target_arch = "x86_64"))]
compile_error!("ksys describes the x64 Windows kernel ABI; build for an x86_64 target");

pub mod import;
pub mod imports;
pub mod io;
pub mod kmdf;
pub mod ktimer;
pub mod layout;
pub mod ntdef;
pub mod object_context;
pub mod pool;
#[cfg(windows)]
pub mod rt;
pub mod schannel;
pub mod sspi;
pub mod wdf;
pub mod wsk;

pub use io::DRIVER_OBJECT;
pub use ntdef::{NTSTATUS, UNICODE_STRING};

/// Every named integer constant ksys defines, by group (for the header cross-check).
pub fn constant_tables() -> [&'static [(&'static str, i128)]; 7] {
    [
        sspi::SEC_STATUS_NAMES,
        sspi::SECBUFFER_NAMES,
        sspi::ISC_REQ_NAMES,
        sspi::ASC_REQ_NAMES,
        sspi::SECPKG_ATTR_NAMES,
        schannel::SCHANNEL_NAMES,
        wsk::WSK_NAMES,
    ]
}

/// Builds a NUL-terminated UTF-16 array from an ASCII string literal at compile time.
#[macro_export]
macro_rules! utf16 {
    ($s:literal) => {{
        const S: &str = $s;
        const N: usize = S.len() + 1;
        const W: [u16; N] = {
            let bytes = S.as_bytes();
            let mut out = [0u16; N];
            let mut i = 0;
            while i < bytes.len() {
                assert!(bytes[i] < 0x80, "utf16! takes ASCII only");
                out[i] = bytes[i] as u16;
                i += 1;
            }
            out
        };
        &W
    }};
}
