//! Kernel timer and DPC storage (layouts opaque to wsktls; only sizes and alignment matter).

use core::ffi::c_void;

/// A kernel timer object (0x40 bytes).
#[repr(C, align(8))]
#[derive(Debug)]
pub struct KTIMER {
    _storage: [u8; 0x40],
}

/// A deferred procedure call object (0x40 bytes).
#[repr(C, align(8))]
#[derive(Debug)]
pub struct KDPC {
    _storage: [u8; 0x40],
}

impl KTIMER {
    /// Zeroed storage, to be set up with `KeInitializeTimer`.
    pub const fn zeroed() -> Self {
        KTIMER {
            _storage: [0; 0x40],
        }
    }
}

impl KDPC {
    /// Zeroed storage, to be set up with `KeInitializeDpc`.
    pub const fn zeroed() -> Self {
        KDPC {
            _storage: [0; 0x40],
        }
    }
}

/// DPC routine; runs at DISPATCH_LEVEL.
pub type PKDEFERRED_ROUTINE = Option<
    unsafe extern "win64" fn(
        dpc: *mut KDPC,
        context: *mut c_void,
        arg1: *mut c_void,
        arg2: *mut c_void,
    ),
>;
