//! Failures in words a user understands, with the code behind them, and the exit status each
//! kind of failure gives: usage 2, connection 3, TLS 4, driver 5 (1: a check did not hold).

use std::process::ExitCode;

/// What kind of failure ended a command (its exit status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A check did not hold (selftest FAIL).
    Check,
    /// Bad arguments or files.
    Usage,
    /// The network: refused, reset, unreachable, timed out.
    Connection,
    /// The TLS handshake or a record failed.
    Tls,
    /// The driver or the device layer: not installed, refused a request, the verifier objected.
    Driver,
}

impl Kind {
    /// The process exit status of this kind.
    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(match self {
            Kind::Check => 1,
            Kind::Usage => 2,
            Kind::Connection => 3,
            Kind::Tls => 4,
            Kind::Driver => 5,
        })
    }
}

/// A failure: its kind and the sentence shown.
#[derive(Debug)]
pub struct Failure {
    pub kind: Kind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: Kind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(Kind::Usage, message)
    }

    pub fn driver(message: impl Into<String>) -> Failure {
        Failure::new(Kind::Driver, message)
    }
}

impl From<String> for Failure {
    /// Plain messages come from argument and file checks.
    fn from(message: String) -> Failure {
        Failure::usage(message)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// NTSTATUS values the driver reports: (value, name, what it means here, kind).
pub const NTSTATUS_TABLE: &[(u32, &str, &str, Kind)] = &[
    (
        0xC000_0008,
        "STATUS_INVALID_HANDLE",
        "the connection or listener id is unknown to this handle",
        Kind::Driver,
    ),
    (
        0xC000_000D,
        "STATUS_INVALID_PARAMETER",
        "the driver rejected the request's contents",
        Kind::Driver,
    ),
    (
        0xC000_0010,
        "STATUS_INVALID_DEVICE_REQUEST",
        "the driver does not know this request (version mismatch?)",
        Kind::Driver,
    ),
    (
        0xC000_0022,
        "STATUS_ACCESS_DENIED",
        "access denied (run as Administrator)",
        Kind::Driver,
    ),
    (
        0xC000_0023,
        "STATUS_BUFFER_TOO_SMALL",
        "the reply buffer was too small",
        Kind::Driver,
    ),
    (
        0xC000_0044,
        "STATUS_QUOTA_EXCEEDED",
        "a driver limit was reached (connections or queued bytes)",
        Kind::Driver,
    ),
    (
        0xC000_009A,
        "STATUS_INSUFFICIENT_RESOURCES",
        "the kernel ran out of memory",
        Kind::Driver,
    ),
    (
        0xC000_00A3,
        "STATUS_DEVICE_NOT_READY",
        "the driver is unloading",
        Kind::Driver,
    ),
    (
        0xC000_00B5,
        "STATUS_IO_TIMEOUT",
        "the handshake did not finish in time",
        Kind::Connection,
    ),
    (
        0xC000_00BB,
        "STATUS_NOT_SUPPORTED",
        "not supported",
        Kind::Driver,
    ),
    (
        0xC000_0120,
        "STATUS_CANCELLED",
        "the request was cancelled",
        Kind::Driver,
    ),
    (
        0xC000_0141,
        "STATUS_INVALID_ADDRESS",
        "the address is not valid",
        Kind::Connection,
    ),
    (
        0xC000_0184,
        "STATUS_INVALID_DEVICE_STATE",
        "the connection is not in a state that allows this",
        Kind::Driver,
    ),
    (
        0xC000_020A,
        "STATUS_ADDRESS_ALREADY_EXISTS",
        "the address is already in use",
        Kind::Connection,
    ),
    (
        0xC000_020C,
        "STATUS_CONNECTION_DISCONNECTED",
        "the peer closed the connection",
        Kind::Connection,
    ),
    (
        0xC000_020D,
        "STATUS_CONNECTION_RESET",
        "the peer reset the connection",
        Kind::Connection,
    ),
    (
        0xC000_0225,
        "STATUS_NOT_FOUND",
        "the host name was not found",
        Kind::Connection,
    ),
    (0xC000_022D, "STATUS_RETRY", "try again", Kind::Driver),
    (
        0xC000_0236,
        "STATUS_CONNECTION_REFUSED",
        "the connection was refused (nothing listens there)",
        Kind::Connection,
    ),
    (
        0xC000_0238,
        "STATUS_ADDRESS_ALREADY_ASSOCIATED",
        "the address is already in use",
        Kind::Connection,
    ),
    (
        0xC000_023C,
        "STATUS_NETWORK_UNREACHABLE",
        "the network is unreachable",
        Kind::Connection,
    ),
    (
        0xC000_023D,
        "STATUS_HOST_UNREACHABLE",
        "the host is unreachable",
        Kind::Connection,
    ),
    (
        0xC000_0241,
        "STATUS_CONNECTION_ABORTED",
        "the connection was aborted",
        Kind::Connection,
    ),
];

/// SECURITY_STATUS values of failed handshakes and records: (value, name, meaning).
pub const SECURITY_STATUS_TABLE: &[(u32, &str, &str)] = &[
    (
        0x8009_0300,
        "SEC_E_INSUFFICIENT_MEMORY",
        "Schannel ran out of memory",
    ),
    (
        0x8009_0301,
        "SEC_E_INVALID_HANDLE",
        "an invalid credential or context handle",
    ),
    (
        0x8009_0304,
        "SEC_E_INTERNAL_ERROR",
        "Schannel failed internally",
    ),
    (
        0x8009_0308,
        "SEC_E_INVALID_TOKEN",
        "the peer sent something that is not TLS",
    ),
    (
        0x8009_030D,
        "SEC_E_UNKNOWN_CREDENTIALS",
        "the certificate or its key cannot be used",
    ),
    (
        0x8009_030E,
        "SEC_E_NO_CREDENTIALS",
        "no certificate with that thumbprint (or no private key for it)",
    ),
    (
        0x8009_030F,
        "SEC_E_MESSAGE_ALTERED",
        "a record failed its integrity check",
    ),
    (
        0x8009_0317,
        "SEC_E_CONTEXT_EXPIRED",
        "the TLS session has ended",
    ),
    (
        0x8009_0322,
        "SEC_E_WRONG_PRINCIPAL",
        "the server's certificate is for another name",
    ),
    (
        0x8009_0325,
        "SEC_E_UNTRUSTED_ROOT",
        "the server's certificate is not trusted",
    ),
    (
        0x8009_0326,
        "SEC_E_ILLEGAL_MESSAGE",
        "the peer sent a fatal alert or a malformed message",
    ),
    (
        0x8009_0327,
        "SEC_E_CERT_UNKNOWN",
        "the certificate could not be checked",
    ),
    (
        0x8009_0328,
        "SEC_E_CERT_EXPIRED",
        "the certificate has expired or is not yet valid",
    ),
    (
        0x8009_0330,
        "SEC_E_DECRYPT_FAILURE",
        "a record could not be decrypted",
    ),
    (
        0x8009_0331,
        "SEC_E_ALGORITHM_MISMATCH",
        "no TLS version or cipher suite in common",
    ),
    (
        0x8009_0349,
        "SEC_E_CERT_WRONG_USAGE",
        "the certificate is not for TLS server use",
    ),
    (
        0x8009_0367,
        "SEC_E_APPLICATION_PROTOCOL_MISMATCH",
        "no ALPN protocol in common",
    ),
];

/// The driver's own NTSTATUS for a server certificate that is not the pinned one (a customer
/// code: ktls's STATUS_PIN_MISMATCH).
pub const PIN_MISMATCH: u32 = 0xE000_0001;

/// "the peer reset the connection (STATUS_CONNECTION_RESET, 0xC000020D)".
/// STATUS_ACCESS_DENIED: a handle without the rights, or (LISTEN) a bind the host refused.
pub const ACCESS_DENIED: u32 = 0xC000_0022;

/// STATUS_NOT_FOUND: what the driver answers for an unknown host name and an unknown
/// certificate alike.
pub const NOT_FOUND: u32 = 0xC000_0225;

pub fn ntstatus(status: i32) -> (String, Kind) {
    let value = status as u32;
    match NTSTATUS_TABLE.iter().find(|(v, ..)| *v == value) {
        Some((_, name, words, kind)) => (format!("{words} ({name}, {value:#010X})"), *kind),
        None => (format!("NTSTATUS {value:#010X}"), Kind::Driver),
    }
}

/// "the server's certificate is not trusted (SEC_E_UNTRUSTED_ROOT, 0x80090325)".
pub fn security_status(status: i32) -> String {
    let value = status as u32;
    match SECURITY_STATUS_TABLE.iter().find(|(v, ..)| *v == value) {
        Some((_, name, words)) => format!("{words} ({name}, {value:#010X})"),
        None => format!("SECURITY_STATUS {value:#010X}"),
    }
}

#[cfg(all(test, not(windows)))]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_the_value_ksys_gives_it() {
        for (value, name, ..) in NTSTATUS_TABLE {
            let known = ksys::ntdef::STATUS_NAMES
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name} is not in ksys"));
            assert_eq!(known.1.0 as u32, *value, "{name}");
        }
        for (value, name, _) in SECURITY_STATUS_TABLE {
            let known = ksys::sspi::SEC_STATUS_NAMES
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name} is not in ksys"));
            assert_eq!(known.1 as i32 as u32, *value, "{name}");
        }
    }

    #[test]
    fn failures_read_as_words_with_their_codes() {
        assert_eq!(
            security_status(0x8009_0325_u32 as i32),
            "the server's certificate is not trusted (SEC_E_UNTRUSTED_ROOT, 0x80090325)"
        );
        let (text, kind) = ntstatus(0xC000_0236_u32 as i32);
        assert!(
            text.contains("refused") && text.contains("0xC0000236"),
            "{text}"
        );
        assert_eq!(kind, Kind::Connection);
        assert_eq!(ntstatus(0x1234).0, "NTSTATUS 0x00001234");
    }
}
