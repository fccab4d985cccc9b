//! The one error type of ktls: what went wrong, as a kind a caller can branch on, with the
//! NTSTATUS to complete an IRP with and the SECURITY_STATUS Schannel gave (SEC_E_OK when the
//! failure was not Schannel's).

use ksys::ntdef::*;
use ksys::sspi::*;

/// NTSTATUS of a connection that failed in TLS (the SECURITY_STATUS says why).
pub const STATUS_TLS_FAILURE: NTSTATUS = STATUS_UNSUCCESSFUL;

/// NTSTATUS of a client whose server certificate is valid-looking but not the pinned one (its
/// SECURITY_STATUS is SEC_E_UNTRUSTED_ROOT): a customer-defined code (bit 29 set, as
/// ntstatus.h reserves for drivers' own codes), so a pin mismatch never reads as an untrusted
/// chain.
pub const STATUS_PIN_MISMATCH: NTSTATUS = NTSTATUS(0xE000_0001_u32 as i32);

/// What kind of failure an [`Error`] is: the branch a caller takes. More kinds may come.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Non-paged pool ran out (STATUS_INSUFFICIENT_RESOURCES).
    OutOfMemory,
    /// A configuration or argument ktls refuses (STATUS_INVALID_PARAMETER).
    InvalidArgument,
    /// Schannel could not acquire the credential: no such certificate, no private key, no
    /// version both allowed (the SECURITY_STATUS says which).
    Credential,
    /// The network failed: refused, reset, unreachable, a name that does not resolve (the
    /// NTSTATUS says which).
    Network,
    /// The TLS handshake or a record failed (the SECURITY_STATUS says why).
    Tls,
    /// The server's certificate is not the pinned one.
    PinMismatch,
    /// Connecting plus handshaking took longer than the configured limit.
    TimedOut,
    /// The connection is closed, failed, or shut down for sending.
    Closed,
}

/// Why a ktls call or a connection failed.
///
/// Carries the NTSTATUS a driver completes its request with ([`Error::status`]) and, for TLS
/// failures, the SECURITY_STATUS ([`Error::sspi`]), so nothing Windows said is lost.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    status: NTSTATUS,
    sspi: SECURITY_STATUS,
}

impl Error {
    /// A failure Schannel reported while handshaking or on a record.
    pub(crate) fn tls(sspi: SECURITY_STATUS) -> Error {
        Error {
            kind: ErrorKind::Tls,
            status: STATUS_TLS_FAILURE,
            sspi,
        }
    }

    /// A failure of the network or the kernel, classified by its status.
    pub(crate) fn net(status: NTSTATUS) -> Error {
        let kind = match status {
            STATUS_INSUFFICIENT_RESOURCES => ErrorKind::OutOfMemory,
            STATUS_INVALID_PARAMETER => ErrorKind::InvalidArgument,
            STATUS_IO_TIMEOUT => ErrorKind::TimedOut,
            STATUS_INVALID_DEVICE_STATE => ErrorKind::Closed,
            STATUS_PIN_MISMATCH => ErrorKind::PinMismatch,
            _ => ErrorKind::Network,
        };
        let sspi = if kind == ErrorKind::PinMismatch {
            SEC_E_UNTRUSTED_ROOT
        } else {
            SEC_E_OK
        };
        Error { kind, status, sspi }
    }

    /// The server's certificate differs from the pin.
    pub(crate) fn pin_mismatch() -> Error {
        Error::net(STATUS_PIN_MISMATCH)
    }

    /// A credential Schannel would not give: the NTSTATUS says what a caller should hear
    /// (no such certificate is STATUS_NOT_FOUND).
    pub(crate) fn credential(sspi: SECURITY_STATUS) -> Error {
        let (kind, status) = match sspi {
            SEC_E_NO_CREDENTIALS | SEC_E_UNKNOWN_CREDENTIALS => {
                (ErrorKind::Credential, STATUS_NOT_FOUND)
            }
            SEC_E_INSUFFICIENT_MEMORY => (ErrorKind::OutOfMemory, STATUS_INSUFFICIENT_RESOURCES),
            _ => (ErrorKind::Credential, STATUS_INVALID_PARAMETER),
        };
        Error { kind, status, sspi }
    }

    /// Pool ran out.
    pub(crate) fn out_of_memory() -> Error {
        Error::net(STATUS_INSUFFICIENT_RESOURCES)
    }

    /// An argument or configuration ktls refuses.
    pub(crate) fn invalid() -> Error {
        Error::net(STATUS_INVALID_PARAMETER)
    }

    /// The connection no longer takes data.
    pub(crate) fn closed() -> Error {
        Error::net(STATUS_INVALID_DEVICE_STATE)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The NTSTATUS to complete a request with: STATUS_TLS_FAILURE for TLS failures,
    /// [`STATUS_PIN_MISMATCH`], or the network's or kernel's own status.
    pub fn status(&self) -> NTSTATUS {
        self.status
    }

    /// Schannel's SECURITY_STATUS (SEC_E_OK when the failure was not Schannel's).
    pub fn sspi(&self) -> SECURITY_STATUS {
        self.sspi
    }
}

impl From<NTSTATUS> for Error {
    fn from(status: NTSTATUS) -> Error {
        Error::net(status)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let what = match self.kind {
            ErrorKind::OutOfMemory => "out of non-paged pool",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Credential => "credential not acquired",
            ErrorKind::Network => "network failure",
            ErrorKind::Tls => "TLS failure",
            ErrorKind::PinMismatch => "server certificate is not the pinned one",
            ErrorKind::TimedOut => "handshake timed out",
            ErrorKind::Closed => "connection closed",
        };
        write!(f, "{what} (NTSTATUS {:#010x}", self.status.0 as u32)?;
        if self.sspi != SEC_E_OK {
            write!(f, ", SECURITY_STATUS {:#010x}", self.sspi.0 as u32)?;
        }
        f.write_str(")")
    }
}

impl core::error::Error for Error {}
