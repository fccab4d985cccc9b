//! The contract between the wsktls driver and user mode: IOCTL codes and their request and
//! response layouts, encoded explicitly in little-endian bytes and validated before use.
//!
//! `no_std` and dependency-free, so the driver, the harness (on Windows and under kemu) and the
//! tests share one definition. Parsing never panics on any byte slice and reports what was wrong
//! as a [`WireError`], which maps to the NTSTATUS the driver completes the request with.
//!
//! Versioning: every response starts with [`MAGIC`] and the byte size of the struct, and
//! GET_VERSION reports [`WIRE_VERSION`]. A change that alters any layout bumps `WIRE_VERSION`.

#![no_std]

pub mod session;
pub mod version;

pub use version::{DriverVersion, GetVersionResponse, validate_get_version_input};

/// "WKTL": first field of every wsktls wire struct.
pub const MAGIC: u32 = u32::from_le_bytes(*b"WKTL");

/// Version of the wire format described by this crate.
pub const WIRE_VERSION: u32 = 3;

/// Vendor device type of the wsktls control device (vendor types are 0x8000..=0xFFFF).
pub const FILE_DEVICE_WSKTLS: u32 = 0x8A57;

/// METHOD_BUFFERED: input and output travel through one system buffer.
pub const METHOD_BUFFERED: u32 = 0;
/// METHOD_IN_DIRECT: the output buffer is the caller's, read by the driver in place.
pub const METHOD_IN_DIRECT: u32 = 1;
/// METHOD_OUT_DIRECT: the output buffer is the caller's, written by the driver in place.
pub const METHOD_OUT_DIRECT: u32 = 2;
/// The caller's handle must have read access.
pub const FILE_READ_ACCESS: u32 = 1;
/// The caller's handle must have write access.
pub const FILE_WRITE_ACCESS: u32 = 2;

/// `CTL_CODE(device_type, function, method, access)`.
pub const fn ctl_code(device_type: u32, function: u32, method: u32, access: u32) -> u32 {
    (device_type << 16) | (access << 14) | (function << 2) | method
}

/// Query the driver's version and wire-format version. Input: none. Output: [`GetVersionResponse`].
pub const IOCTL_WSKTLS_GET_VERSION: u32 =
    ctl_code(FILE_DEVICE_WSKTLS, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS);

/// NTSTATUS values the driver reports for malformed requests (kept here so user mode can name them).
pub mod status {
    /// STATUS_SUCCESS.
    pub const SUCCESS: i32 = 0;
    /// STATUS_INVALID_PARAMETER: a field holds a value the request does not allow.
    pub const INVALID_PARAMETER: i32 = 0xC000_000D_u32 as i32;
    /// STATUS_INVALID_DEVICE_REQUEST: unknown IOCTL code.
    pub const INVALID_DEVICE_REQUEST: i32 = 0xC000_0010_u32 as i32;
    /// STATUS_BUFFER_TOO_SMALL: input shorter than the struct, or output buffer too short.
    pub const BUFFER_TOO_SMALL: i32 = 0xC000_0023_u32 as i32;
    /// STATUS_REVISION_MISMATCH: wrong magic or an unsupported wire version.
    pub const REVISION_MISMATCH: i32 = 0xC000_0059_u32 as i32;
    /// STATUS_INVALID_BUFFER_SIZE: input longer than the request allows.
    pub const INVALID_BUFFER_SIZE: i32 = 0xC000_0206_u32 as i32;
}

/// Why a byte slice is not a valid wire struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the struct needs.
    TooShort { needed: usize, got: usize },
    /// More bytes than the request allows.
    TooLong { allowed: usize, got: usize },
    /// The first field is not [`MAGIC`].
    BadMagic(u32),
    /// The declared struct size does not match this wire version's.
    BadSize { expected: u32, declared: u32 },
    /// A field holds a value that is not allowed.
    InvalidField(&'static str),
}

impl WireError {
    /// The NTSTATUS the driver completes a request with for this error.
    pub const fn status(&self) -> i32 {
        match self {
            WireError::TooShort { .. } => status::BUFFER_TOO_SMALL,
            WireError::TooLong { .. } => status::INVALID_BUFFER_SIZE,
            WireError::BadMagic(_) | WireError::BadSize { .. } => status::REVISION_MISMATCH,
            WireError::InvalidField(_) => status::INVALID_PARAMETER,
        }
    }
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::TooShort { needed, got } => {
                write!(f, "{got} bytes, at least {needed} needed")
            }
            WireError::TooLong { allowed, got } => {
                write!(f, "{got} bytes, at most {allowed} allowed")
            }
            WireError::BadMagic(m) => write!(f, "magic {m:#010x} is not wsktls's {MAGIC:#010x}"),
            WireError::BadSize { expected, declared } => {
                write!(
                    f,
                    "declared size {declared} does not match wire version {WIRE_VERSION}'s {expected}"
                )
            }
            WireError::InvalidField(name) => {
                write!(f, "field {name} holds a value that is not allowed")
            }
        }
    }
}

/// Little-endian reader over a byte slice that never panics.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let end = self.at.checked_add(N)?;
        let chunk = self.bytes.get(self.at..end)?;
        self.at = end;
        chunk.try_into().ok()
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take::<2>().map(u16::from_le_bytes)
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take::<N>()
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let chunk = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(chunk)
    }
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }
}

/// Little-endian writer into a fixed array.
#[derive(Debug)]
pub(crate) struct Writer<'a> {
    bytes: &'a mut [u8],
    at: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(bytes: &'a mut [u8]) -> Self {
        Writer { bytes, at: 0 }
    }
    fn put(&mut self, data: &[u8]) {
        // Callers size their arrays from the struct's own constant; a short array is a bug in
        // this crate, caught by its tests, and writes nothing rather than panicking.
        if let Some(slot) = self.bytes.get_mut(self.at..self.at + data.len()) {
            slot.copy_from_slice(data);
        }
        self.at += data.len();
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, data: &[u8]) {
        self.put(data);
    }
    pub(crate) fn written(&self) -> usize {
        self.at
    }
}
