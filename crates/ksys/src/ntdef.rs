//! Base NT types, NTSTATUS values and the NT_SUCCESS rule.

use core::ffi::c_void;

/// Kernel status code; negative values are errors (see [`nt_success`]). A newtype (ABI: one
/// i32), so it cannot be mixed with a [`crate::sspi::SECURITY_STATUS`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct NTSTATUS(pub i32);

impl core::fmt::Debug for NTSTATUS {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "NTSTATUS({:#010x})", self.0 as u32)
    }
}

impl core::fmt::LowerHex for NTSTATUS {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::LowerHex::fmt(&(self.0 as u32), f)
    }
}

impl core::fmt::UpperHex for NTSTATUS {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::UpperHex::fmt(&(self.0 as u32), f)
    }
}
/// Interrupt request level.
pub type KIRQL = u8;
/// A spin lock is one pointer-sized word on x64.
pub type KSPIN_LOCK = usize;
/// Windows BOOLEAN (one byte, 0 or 1).
pub type BOOLEAN = u8;

/// Windows' `NT_SUCCESS`: success and informational codes (including STATUS_PENDING and
/// STATUS_TIMEOUT) count as success.
#[inline]
pub const fn nt_success(status: NTSTATUS) -> bool {
    status.0 >= 0
}

/// `KeInitializeSpinLock`: on x64 a header-only inline (not an export) that clears the word.
#[inline]
pub fn ke_initialize_spin_lock(lock: &mut KSPIN_LOCK) {
    *lock = 0;
}

/// IRQL levels used by the driver and enforced by kemu.
pub const PASSIVE_LEVEL: KIRQL = 0;
/// APC_LEVEL.
pub const APC_LEVEL: KIRQL = 1;
/// DISPATCH_LEVEL: no waiting, no paged memory.
pub const DISPATCH_LEVEL: KIRQL = 2;

/// `ExAllocatePool2` flag: non-paged, zero-initialised unless `POOL_FLAG_UNINITIALIZED`.
pub const POOL_FLAG_NON_PAGED: u64 = 0x0000_0000_0000_0040;
/// `ExAllocatePool2` flag: skip zeroing.
pub const POOL_FLAG_UNINITIALIZED: u64 = 0x0000_0000_0000_0002;
/// `ExAllocatePool2` flag: raise an exception instead of returning NULL (not for drivers here).
pub const POOL_FLAG_RAISE_ON_FAILURE: u64 = 0x0000_0000_0000_0020;
/// `ExAllocatePool2` flag: non-paged executable (never wanted).
pub const POOL_FLAG_NON_PAGED_EXECUTE: u64 = 0x0000_0000_0000_0080;
/// `ExAllocatePool2` flag: paged pool (PASSIVE/APC_LEVEL only).
pub const POOL_FLAG_PAGED: u64 = 0x0000_0000_0000_0100;

/// `RTL_OSVERSIONINFOW` (RtlGetVersion): the running Windows version and build.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_snake_case)]
pub struct RTL_OSVERSIONINFOW {
    /// Size of this structure (276), set by the caller.
    pub dwOSVersionInfoSize: u32,
    pub dwMajorVersion: u32,
    pub dwMinorVersion: u32,
    pub dwBuildNumber: u32,
    pub dwPlatformId: u32,
    pub szCSDVersion: [u16; 128],
}

/// Counted UTF-16 string; `Length`/`MaximumLength` are byte counts, no NUL required.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_snake_case)]
pub struct UNICODE_STRING {
    pub Length: u16,
    pub MaximumLength: u16,
    pub Buffer: *mut u16,
}

impl UNICODE_STRING {
    /// The empty string `{0, 0, NULL}` (what the async ISC gets when there is no target name).
    pub const EMPTY: UNICODE_STRING = UNICODE_STRING {
        Length: 0,
        MaximumLength: 0,
        Buffer: core::ptr::null_mut(),
    };

    /// A string over a `'static` UTF-16 array (which may end with a NUL, not counted).
    pub const fn from_static(s: &'static [u16]) -> UNICODE_STRING {
        let mut n = s.len();
        if n > 0 && s[n - 1] == 0 {
            n -= 1;
        }
        UNICODE_STRING {
            Length: (n * 2) as u16,
            MaximumLength: (s.len() * 2) as u16,
            Buffer: s.as_ptr() as *mut u16,
        }
    }
}

/// Doubly linked list head/entry.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_snake_case)]
pub struct LIST_ENTRY {
    pub Flink: *mut LIST_ENTRY,
    pub Blink: *mut LIST_ENTRY,
}

/// A GUID as laid out in memory.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_snake_case)]
pub struct GUID {
    pub Data1: u32,
    pub Data2: u16,
    pub Data3: u16,
    pub Data4: [u8; 8],
}

/// Large integer as used for times and timeouts (100 ns units; negative = relative).
pub type LARGE_INTEGER = i64;

/// Opaque pointer-sized kernel object handle.
pub type HANDLE = *mut c_void;

/// Builds an NTSTATUS from its documented hexadecimal value.
const fn st(v: u32) -> NTSTATUS {
    NTSTATUS(v as i32)
}

macro_rules! statuses {
    ($($(#[doc = $doc:literal])* $name:ident = $value:literal;)*) => {
        $( $(#[doc = $doc])* pub const $name: NTSTATUS = st($value); )*
        /// Every NTSTATUS constant ksys defines, by name (for diagnostics and the header cross-check).
        pub static STATUS_NAMES: &[(&str, NTSTATUS)] = &[ $( (stringify!($name), $name), )* ];
    };
}

statuses! {
    STATUS_SUCCESS = 0x0000_0000;
    /// Success class: beware, NT_SUCCESS accepts it (report timeouts as STATUS_IO_TIMEOUT).
    STATUS_TIMEOUT = 0x0000_0102;
    STATUS_PENDING = 0x0000_0103;
    STATUS_EVENT_PENDING = 0x4000_0013;
    STATUS_OBJECT_NAME_EXISTS = 0x4000_0000;
    STATUS_BUFFER_OVERFLOW = 0x8000_0005;
    STATUS_NO_MORE_ENTRIES = 0x8000_001A;
    STATUS_UNSUCCESSFUL = 0xC000_0001;
    STATUS_INVALID_HANDLE = 0xC000_0008;
    STATUS_INVALID_PARAMETER = 0xC000_000D;
    STATUS_NO_SUCH_DEVICE = 0xC000_000E;
    STATUS_INVALID_DEVICE_REQUEST = 0xC000_0010;
    STATUS_END_OF_FILE = 0xC000_0011;
    STATUS_MORE_PROCESSING_REQUIRED = 0xC000_0016;
    STATUS_NO_MEMORY = 0xC000_0017;
    STATUS_ACCESS_DENIED = 0xC000_0022;
    STATUS_BUFFER_TOO_SMALL = 0xC000_0023;
    STATUS_OBJECT_NAME_NOT_FOUND = 0xC000_0034;
    STATUS_OBJECT_NAME_COLLISION = 0xC000_0035;
    STATUS_QUOTA_EXCEEDED = 0xC000_0044;
    STATUS_DELETE_PENDING = 0xC000_0056;
    STATUS_REVISION_MISMATCH = 0xC000_0059;
    STATUS_INSUFFICIENT_RESOURCES = 0xC000_009A;
    STATUS_DEVICE_NOT_READY = 0xC000_00A3;
    STATUS_OBJECT_TYPE_MISMATCH = 0xC000_0024;
    STATUS_PIPE_DISCONNECTED = 0xC000_00B0;
    STATUS_IO_TIMEOUT = 0xC000_00B5;
    STATUS_FILE_FORCED_CLOSED = 0xC000_00B6;
    STATUS_NOT_SUPPORTED = 0xC000_00BB;
    STATUS_REQUEST_NOT_ACCEPTED = 0xC000_00D0;
    STATUS_INTERNAL_ERROR = 0xC000_00E5;
    STATUS_CANCELLED = 0xC000_0120;
    STATUS_INVALID_ADDRESS = 0xC000_0141;
    STATUS_INVALID_DEVICE_STATE = 0xC000_0184;
    STATUS_INVALID_BUFFER_SIZE = 0xC000_0206;
    STATUS_ADDRESS_ALREADY_EXISTS = 0xC000_020A;
    STATUS_CONNECTION_DISCONNECTED = 0xC000_020C;
    STATUS_CONNECTION_RESET = 0xC000_020D;
    STATUS_TOO_MANY_ADDRESSES = 0xC000_0209;
    STATUS_DATA_NOT_ACCEPTED = 0xC000_021B;
    STATUS_NOT_FOUND = 0xC000_0225;
    STATUS_RETRY = 0xC000_022D;
    STATUS_CONNECTION_REFUSED = 0xC000_0236;
    STATUS_GRACEFUL_DISCONNECT = 0xC000_0237;
    STATUS_ADDRESS_ALREADY_ASSOCIATED = 0xC000_0238;
    STATUS_NETWORK_UNREACHABLE = 0xC000_023C;
    STATUS_HOST_UNREACHABLE = 0xC000_023D;
    STATUS_CONNECTION_ABORTED = 0xC000_0241;
    STATUS_NOINTERFACE = 0xC000_02B9;
    STATUS_SHUTDOWN_IN_PROGRESS = 0xC000_02FE;
}
