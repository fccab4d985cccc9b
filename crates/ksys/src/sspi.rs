//! SSPI as kernel callers see it (ksecdd.sys): handles, buffers, request flags, attributes and
//! every SEC_E_/SEC_I_ status. The asynchronous routines themselves are in [`crate::imports`].

#![allow(non_snake_case)]

use core::ffi::c_void;

/// SSPI status (HRESULT-shaped; negative = failure).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct SECURITY_STATUS(pub i32);

impl SECURITY_STATUS {
    /// An error (the severity bit is set): SEC_E_*.
    pub const fn is_error(self) -> bool {
        self.0 < 0
    }
    /// SEC_E_OK or an informational SEC_I_* status.
    pub const fn is_success(self) -> bool {
        self.0 >= 0
    }
}

impl core::fmt::Debug for SECURITY_STATUS {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SECURITY_STATUS({:#010x})", self.0 as u32)
    }
}

impl core::fmt::LowerHex for SECURITY_STATUS {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::LowerHex::fmt(&(self.0 as u32), f)
    }
}

impl core::fmt::UpperHex for SECURITY_STATUS {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::UpperHex::fmt(&(self.0 as u32), f)
    }
}
/// Expiry time, 100 ns since 1601.
pub type TimeStamp = i64;

/// Credential or context handle (`CredHandle`, `CtxtHandle`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecHandle {
    pub dwLower: usize,
    pub dwUpper: usize,
}

impl SecHandle {
    /// `SecInvalidateHandle`: both words all ones.
    pub const INVALID: SecHandle = SecHandle {
        dwLower: usize::MAX,
        dwUpper: usize::MAX,
    };
    /// `SEC_DELETED_HANDLE`.
    pub const DELETED: SecHandle = SecHandle {
        dwLower: usize::MAX - 1,
        dwUpper: usize::MAX - 1,
    };

    /// `SecIsValidHandle`: invalid when either word is all ones (as sspi.h tests it).
    pub fn is_valid(&self) -> bool {
        self.dwLower != usize::MAX && self.dwUpper != usize::MAX
    }
}

/// One buffer handed to or from a security package.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SecBuffer {
    pub cbBuffer: u32,
    /// SECBUFFER_* type, possibly with SECBUFFER_ATTRMASK bits.
    pub BufferType: u32,
    pub pvBuffer: *mut c_void,
}

impl SecBuffer {
    /// A buffer of `kind` over `len` bytes at `ptr`.
    pub const fn new(kind: u32, ptr: *mut c_void, len: u32) -> Self {
        SecBuffer {
            cbBuffer: len,
            BufferType: kind,
            pvBuffer: ptr,
        }
    }
    /// An EMPTY buffer.
    pub const EMPTY: SecBuffer = SecBuffer {
        cbBuffer: 0,
        BufferType: SECBUFFER_EMPTY,
        pvBuffer: core::ptr::null_mut(),
    };
    /// The type with the attribute bits masked off.
    pub const fn kind(&self) -> u32 {
        self.BufferType & !SECBUFFER_ATTRMASK
    }
}

/// An array of [`SecBuffer`]s.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SecBufferDesc {
    pub ulVersion: u32,
    pub cBuffers: u32,
    pub pBuffers: *mut SecBuffer,
}

/// Opaque asynchronous call context (`SspiCreateAsyncContext`).
#[repr(C)]
#[derive(Debug)]
pub struct SspiAsyncContext {
    _opaque: [u8; 0],
}

/// Notification that an asynchronous SSPI call finished (may run inline, before the call returns).
pub type SspiAsyncNotifyCallback =
    Option<unsafe extern "win64" fn(context: *mut SspiAsyncContext, data: *mut c_void)>;

/// `SECPKG_ATTR_STREAM_SIZES` result.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SecPkgContext_StreamSizes {
    pub cbHeader: u32,
    pub cbTrailer: u32,
    pub cbMaximumMessage: u32,
    pub cBuffers: u32,
    pub cbBlockSize: u32,
}

/// `SECPKG_ATTR_APPLICATION_PROTOCOL` result.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SecPkgContext_ApplicationProtocol {
    pub ProtoNegoStatus: u32,
    pub ProtoNegoExt: u32,
    pub ProtocolIdSize: u8,
    pub ProtocolId: [u8; 255],
}

/// Contents of a `SECBUFFER_APPLICATION_PROTOCOLS` buffer: a byte count, then protocol lists
/// (C declares the trailing array with one element; real buffers are longer).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SEC_APPLICATION_PROTOCOLS {
    /// Bytes of the lists that follow this field.
    pub ProtocolListsSize: u32,
    pub ProtocolLists: [SEC_APPLICATION_PROTOCOL_LIST; 1],
}

/// One protocol list inside [`SEC_APPLICATION_PROTOCOLS`]: ALPN wire bytes start at `ProtocolList`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SEC_APPLICATION_PROTOCOL_LIST {
    pub ProtoNegoExt: i32,
    pub ProtocolListSize: u16,
    pub ProtocolList: [u8; 1],
}

/// Byte offset of the wire-format list inside [`SEC_APPLICATION_PROTOCOL_LIST`] (6: no padding).
pub const SEC_APPLICATION_PROTOCOL_LIST_HEADER: usize =
    core::mem::offset_of!(SEC_APPLICATION_PROTOCOL_LIST, ProtocolList);

/// Buffer descriptor version.
pub const SECBUFFER_VERSION: u32 = 0;
/// Data representation flags.
pub const SECURITY_NATIVE_DREP: u32 = 0x10;
/// Network byte order representation.
pub const SECURITY_NETWORK_DREP: u32 = 0;
/// Credential use: server side.
pub const SECPKG_CRED_INBOUND: u32 = 1;
/// Credential use: client side.
pub const SECPKG_CRED_OUTBOUND: u32 = 2;
/// Credential use: both.
pub const SECPKG_CRED_BOTH: u32 = 3;

macro_rules! consts {
    ($ty:ty; $list:ident; $($name:ident = $value:expr;)*) => {
        $( #[allow(missing_docs)] pub const $name: $ty = $value; )*
        /// Every constant of this group, by name (for the header cross-check).
        pub static $list: &[(&str, i128)] = &[ $( (stringify!($name), $name as i128), )* ];
    };
}
pub(crate) use consts;

const fn sec(v: u32) -> SECURITY_STATUS {
    SECURITY_STATUS(v as i32)
}

/// Constants of SECURITY_STATUS (a newtype: NTSTATUS and SECURITY_STATUS cannot be mixed).
macro_rules! sec_consts {
    ($list:ident; $($name:ident = $value:expr;)*) => {
        $( #[allow(missing_docs)] pub const $name: SECURITY_STATUS = sec($value); )*
        /// Every constant of this group, by name (for the header cross-check).
        pub static $list: &[(&str, i128)] = &[ $( (stringify!($name), $name.0 as i128), )* ];
    };
}

sec_consts! { SEC_STATUS_NAMES;
    SEC_E_OK = 0;
    SEC_I_CONTINUE_NEEDED = 0x0009_0312;
    SEC_I_COMPLETE_NEEDED = 0x0009_0313;
    SEC_I_COMPLETE_AND_CONTINUE = 0x0009_0314;
    SEC_I_GENERIC_EXTENSION_RECEIVED = 0x0009_0316;
    SEC_I_CONTEXT_EXPIRED = 0x0009_0317;
    SEC_I_INCOMPLETE_CREDENTIALS = 0x0009_0320;
    SEC_I_RENEGOTIATE = 0x0009_0321;
    SEC_I_NO_RENEGOTIATION = 0x0009_0360;
    SEC_I_CONTINUE_NEEDED_MESSAGE_OK = 0x0009_0366;
    SEC_I_ASYNC_CALL_PENDING = 0x0009_0368;
    SEC_E_INSUFFICIENT_MEMORY = 0x8009_0300;
    SEC_E_INVALID_HANDLE = 0x8009_0301;
    SEC_E_UNSUPPORTED_FUNCTION = 0x8009_0302;
    SEC_E_TARGET_UNKNOWN = 0x8009_0303;
    SEC_E_INTERNAL_ERROR = 0x8009_0304;
    SEC_E_SECPKG_NOT_FOUND = 0x8009_0305;
    SEC_E_INVALID_TOKEN = 0x8009_0308;
    SEC_E_LOGON_DENIED = 0x8009_030C;
    SEC_E_UNKNOWN_CREDENTIALS = 0x8009_030D;
    SEC_E_NO_CREDENTIALS = 0x8009_030E;
    SEC_E_MESSAGE_ALTERED = 0x8009_030F;
    SEC_E_OUT_OF_SEQUENCE = 0x8009_0310;
    SEC_E_CONTEXT_EXPIRED = 0x8009_0317;
    SEC_E_INCOMPLETE_MESSAGE = 0x8009_0318;
    SEC_E_INCOMPLETE_CREDENTIALS = 0x8009_0320;
    SEC_E_BUFFER_TOO_SMALL = 0x8009_0321;
    SEC_E_WRONG_PRINCIPAL = 0x8009_0322;
    SEC_E_UNTRUSTED_ROOT = 0x8009_0325;
    SEC_E_ILLEGAL_MESSAGE = 0x8009_0326;
    SEC_E_CERT_UNKNOWN = 0x8009_0327;
    SEC_E_CERT_EXPIRED = 0x8009_0328;
    SEC_E_ENCRYPT_FAILURE = 0x8009_0329;
    SEC_E_DECRYPT_FAILURE = 0x8009_0330;
    SEC_E_ALGORITHM_MISMATCH = 0x8009_0331;
    SEC_E_SHUTDOWN_IN_PROGRESS = 0x8009_033F;
    SEC_E_CERT_WRONG_USAGE = 0x8009_0349;
    SEC_E_INVALID_PARAMETER = 0x8009_035D;
    SEC_E_NO_CONTEXT = 0x8009_0361;
    SEC_E_APPLICATION_PROTOCOL_MISMATCH = 0x8009_0367;
    SEC_E_EXT_BUFFER_TOO_SMALL = 0x8009_036A;
    SEC_E_INSUFFICIENT_BUFFERS = 0x8009_036B;
}

consts! { u32; SECBUFFER_NAMES;
    SECBUFFER_EMPTY = 0;
    SECBUFFER_DATA = 1;
    SECBUFFER_TOKEN = 2;
    SECBUFFER_PKG_PARAMS = 3;
    SECBUFFER_MISSING = 4;
    SECBUFFER_EXTRA = 5;
    SECBUFFER_STREAM_TRAILER = 6;
    SECBUFFER_STREAM_HEADER = 7;
    SECBUFFER_NEGOTIATION_INFO = 8;
    SECBUFFER_PADDING = 9;
    SECBUFFER_STREAM = 10;
    SECBUFFER_CHANNEL_BINDINGS = 14;
    SECBUFFER_TARGET_HOST = 16;
    SECBUFFER_ALERT = 17;
    SECBUFFER_APPLICATION_PROTOCOLS = 18;
    SECBUFFER_TOKEN_BINDING = 21;
    SECBUFFER_PRESHARED_KEY = 22;
    SECBUFFER_PRESHARED_KEY_IDENTITY = 23;
    SECBUFFER_DTLS_MTU = 24;
    SECBUFFER_SEND_GENERIC_TLS_EXTENSION = 25;
    SECBUFFER_SUBSCRIBE_GENERIC_TLS_EXTENSION = 26;
    SECBUFFER_FLAGS = 27;
    SECBUFFER_TRAFFIC_SECRETS = 28;
    SECBUFFER_CERTIFICATE_REQUEST_CONTEXT = 29;
    SECBUFFER_CHANNEL_BINDINGS_RESULT = 30;
    SECBUFFER_APP_SESSION_STATE = 31;
    SECBUFFER_SESSION_TICKET = 32;
    SECBUFFER_READONLY = 0x8000_0000;
    SECBUFFER_READONLY_WITH_CHECKSUM = 0x1000_0000;
    SECBUFFER_ATTRMASK = 0xF000_0000;
}

consts! { u64; ISC_REQ_NAMES;
    ISC_REQ_DELEGATE = 0x1;
    ISC_REQ_MUTUAL_AUTH = 0x2;
    ISC_REQ_REPLAY_DETECT = 0x4;
    ISC_REQ_SEQUENCE_DETECT = 0x8;
    ISC_REQ_CONFIDENTIALITY = 0x10;
    ISC_REQ_USE_SESSION_KEY = 0x20;
    ISC_REQ_PROMPT_FOR_CREDS = 0x40;
    ISC_REQ_USE_SUPPLIED_CREDS = 0x80;
    ISC_REQ_ALLOCATE_MEMORY = 0x100;
    ISC_REQ_USE_DCE_STYLE = 0x200;
    ISC_REQ_DATAGRAM = 0x400;
    ISC_REQ_CONNECTION = 0x800;
    ISC_REQ_EXTENDED_ERROR = 0x4000;
    ISC_REQ_STREAM = 0x8000;
    ISC_REQ_INTEGRITY = 0x10000;
    ISC_REQ_MANUAL_CRED_VALIDATION = 0x80000;
    ISC_REQ_MESSAGES = 0x1_0000_0000;
    ISC_REQ_DEFERRED_CRED_VALIDATION = 0x2_0000_0000;
    ISC_RET_USED_SUPPLIED_CREDS = 0x80;
    ISC_RET_EXTENDED_ERROR = 0x4000;
    ISC_RET_STREAM = 0x8000;
}

consts! { u64; ASC_REQ_NAMES;
    ASC_REQ_DELEGATE = 0x1;
    ASC_REQ_MUTUAL_AUTH = 0x2;
    ASC_REQ_REPLAY_DETECT = 0x4;
    ASC_REQ_SEQUENCE_DETECT = 0x8;
    ASC_REQ_CONFIDENTIALITY = 0x10;
    ASC_REQ_SESSION_TICKET = 0x40;
    ASC_REQ_ALLOCATE_MEMORY = 0x100;
    ASC_REQ_CONNECTION = 0x800;
    ASC_REQ_EXTENDED_ERROR = 0x8000;
    ASC_REQ_STREAM = 0x10000;
    ASC_REQ_INTEGRITY = 0x20000;
    ASC_REQ_MESSAGES = 0x1_0000_0000;
    ASC_RET_EXTENDED_ERROR = 0x8000;
    ASC_RET_STREAM = 0x10000;
}

consts! { u32; SECPKG_ATTR_NAMES;
    SECPKG_ATTR_SIZES = 0;
    SECPKG_ATTR_STREAM_SIZES = 4;
    SECPKG_ATTR_UNIQUE_BINDINGS = 25;
    SECPKG_ATTR_ENDPOINT_BINDINGS = 26;
    SECPKG_ATTR_APPLICATION_PROTOCOL = 35;
    SECPKG_ATTR_NEGOTIATED_TLS_EXTENSIONS = 36;
    SECPKG_ATTR_REMOTE_CERT_CONTEXT = 0x53;
    SECPKG_ATTR_LOCAL_CERT_CONTEXT = 0x54;
    SECPKG_ATTR_ISSUER_LIST_EX = 0x59;
    SECPKG_ATTR_CONNECTION_INFO = 0x5A;
    SECPKG_ATTR_SESSION_INFO = 0x5D;
    SECPKG_ATTR_APP_DATA = 0x5E;
    SECPKG_ATTR_REMOTE_CERTIFICATES = 0x5F;
    SECPKG_ATTR_CLIENT_CERT_POLICY = 0x60;
    SECPKG_ATTR_CIPHER_INFO = 0x64;
    SECPKG_ATTR_KEYING_MATERIAL = 0x6B;
    SECPKG_ATTR_CONNECTION_INFO_EX = 0x6E;
    SECPKG_ATTR_CERT_CHECK_RESULT = 0x71;
    SECPKG_ATTR_CERT_CHECK_RESULT_INPROC = 0x72;
    SECPKG_ATTR_SESSION_TICKET_KEYS = 0x73;
    SECPKG_ATTR_SERIALIZED_REMOTE_CERT_CONTEXT_INPROC = 0x74;
}

/// ALPN negotiation extension / status values.
pub const SEC_APPLICATION_PROTOCOL_NEGOTIATION_EXT_ALPN: i32 = 2;
/// No protocol was negotiated.
pub const SEC_APPLICATION_PROTOCOL_NEGOTIATION_STATUS_NONE: u32 = 0;
/// A protocol was negotiated.
pub const SEC_APPLICATION_PROTOCOL_NEGOTIATION_STATUS_SUCCESS: u32 = 1;
/// Only the client offered a protocol.
pub const SEC_APPLICATION_PROTOCOL_NEGOTIATION_STATUS_SELECTED_CLIENT_ONLY: u32 = 2;

/// QOP for EncryptMessage: the DATA buffer holds an alert (level, description).
pub const SECQOP_WRAP_OOB_DATA: u32 = 0x4000_0000;
/// QOP: integrity only.
pub const SECQOP_WRAP_NO_ENCRYPT: u32 = 0x8000_0001;
