//! Schannel credentials as kernel mode accepts them: SCH_CREDENTIALS (version 5) with a
//! certificate chosen by SHA-1 thumbprint in a machine store, and the TLS_PARAMETERS that
//! restrict protocol versions.

#![allow(non_snake_case)]

use core::ffi::c_void;

use crate::ntdef::UNICODE_STRING;
use crate::sspi::consts;

/// Schannel credential description (`dwVersion` = [`SCH_CREDENTIALS_VERSION`]).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SCH_CREDENTIALS {
    pub dwVersion: u32,
    pub dwCredFormat: u32,
    pub cCreds: u32,
    /// For the hash formats this points straight at the hash struct (not an array of pointers).
    pub paCred: *mut c_void,
    pub hRootStore: *mut c_void,
    pub cMappers: u32,
    pub aphMappers: *mut c_void,
    pub dwSessionLifespan: u32,
    pub dwFlags: u32,
    pub cTlsParameters: u32,
    pub pTlsParameters: *mut TLS_PARAMETERS,
}

/// Protocol restrictions: `grbitDisabledProtocols` lists what to *disable* (0 = defaults).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TLS_PARAMETERS {
    pub cAlpnIds: u32,
    pub rgstrAlpnIds: *mut UNICODE_STRING,
    pub grbitDisabledProtocols: u32,
    pub cDisabledCrypto: u32,
    pub pDisabledCrypto: *mut CRYPTO_SETTINGS,
    pub dwFlags: u32,
}

/// One disabled algorithm.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CRYPTO_SETTINGS {
    pub eAlgorithmUsage: i32,
    pub strCngAlgId: UNICODE_STRING,
    pub cChainingModes: u32,
    pub rgstrChainingModes: *mut UNICODE_STRING,
    pub dwMinBitLength: u32,
    pub dwMaxBitLength: u32,
}

/// Certificate by SHA-1 thumbprint in a named store (format [`SCH_CRED_FORMAT_CERT_HASH_STORE`]).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SCHANNEL_CERT_HASH_STORE {
    /// Always `size_of::<SCHANNEL_CERT_HASH_STORE>()` (296).
    pub dwLength: u32,
    pub dwFlags: u32,
    pub hProv: usize,
    pub ShaHash: [u8; 20],
    /// NUL-terminated UTF-16 store name, e.g. "MY".
    pub pwszStoreName: [u16; SCH_CRED_MAX_STORE_NAME_SIZE],
}

/// Certificate by SHA-1 thumbprint in the machine "MY" store (format [`SCH_CRED_FORMAT_CERT_HASH`]).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SCHANNEL_CERT_HASH {
    pub dwLength: u32,
    pub dwFlags: u32,
    pub hProv: usize,
    pub ShaHash: [u8; 20],
}

/// `SECPKG_ATTR_CONNECTION_INFO` result.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SecPkgContext_ConnectionInfo {
    pub dwProtocol: u32,
    pub aiCipher: u32,
    pub dwCipherStrength: u32,
    pub aiHash: u32,
    pub dwHashStrength: u32,
    pub aiExch: u32,
    pub dwExchStrength: u32,
}

/// Length of the name arrays in [`SecPkgContext_CipherInfo`].
pub const SZ_ALG_MAX_SIZE: usize = 64;

/// `SECPKG_ATTR_CIPHER_INFO` result.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SecPkgContext_CipherInfo {
    pub dwVersion: u32,
    pub dwProtocol: u32,
    pub dwCipherSuite: u32,
    pub dwBaseCipherSuite: u32,
    pub szCipherSuite: [u16; SZ_ALG_MAX_SIZE],
    pub szCipher: [u16; SZ_ALG_MAX_SIZE],
    pub dwCipherLen: u32,
    pub dwCipherBlockLen: u32,
    pub szHash: [u16; SZ_ALG_MAX_SIZE],
    pub dwHashLen: u32,
    pub szExchange: [u16; SZ_ALG_MAX_SIZE],
    pub dwMinExchangeLen: u32,
    pub dwMaxExchangeLen: u32,
    pub szCertificate: [u16; SZ_ALG_MAX_SIZE],
    pub dwKeyType: u32,
}

/// `SECPKG_ATTR_REMOTE_CERTIFICATES` result: the chain as repeated [u32 length][DER].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SecPkgContext_Certificates {
    pub cCertificates: u32,
    pub cbCertificateChain: u32,
    pub pbCertificateChain: *mut u8,
}

/// `SECPKG_ATTR_CERT_CHECK_RESULT_INPROC` result (deferred validation).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SecPkgContext_CertificateValidationResult {
    pub dwChainErrorStatus: u32,
    pub hrVerifyChainStatus: i32,
}

/// `SECPKG_ATTR_CLIENT_CERT_POLICY` (SetCredentialsAttributesW on a server credential): how
/// client certificate chains are built (revocation, URL retrieval).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SecPkgCred_ClientCertPolicy {
    pub dwFlags: u32,
    pub guidPolicyId: [u8; 16],
    pub dwCertFlags: u32,
    pub dwUrlRetrievalTimeout: u32,
    pub fCheckRevocationFreshnessTime: i32,
    pub dwRevocationFreshnessTime: u32,
    pub fOmitUsageCheck: i32,
    pub pwszSslCtlStoreName: *mut u16,
    pub pwszSslCtlIdentifier: *mut u16,
}

/// `SECPKG_ATTR_SESSION_INFO` result: whether the handshake resumed a cached session.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SecPkgContext_SessionInfo {
    /// [`SSL_SESSION_RECONNECT`] when the session was resumed.
    pub dwFlags: u32,
    pub cbSessionId: u32,
    pub rgbSessionId: [u8; 32],
}

/// `SecPkgContext_SessionInfo.dwFlags`: the handshake resumed a cached session.
pub const SSL_SESSION_RECONNECT: u32 = 1;

/// Package name kernel callers use (`SCHANNEL_NAME_W`), as UTF-16 with NUL.
pub const SCHANNEL_NAME_W: &[u16] = &[0x53, 0x63, 0x68, 0x61, 0x6E, 0x6E, 0x65, 0x6C, 0]; // "Schannel"

/// `SCHANNEL_CERT_HASH_STORE.dwLength`.
pub const SCHANNEL_CERT_HASH_STORE_SIZE: u32 =
    core::mem::size_of::<SCHANNEL_CERT_HASH_STORE>() as u32;

/// Store-name capacity in UTF-16 units.
pub const SCH_CRED_MAX_STORE_NAME_SIZE: usize = 128;

consts! { u32; SCHANNEL_NAMES;
    SCH_CREDENTIALS_VERSION = 5;
    SCHANNEL_CRED_VERSION = 4;
    SCH_CRED_FORMAT_CERT_CONTEXT = 0;
    SCH_CRED_FORMAT_CERT_HASH = 1;
    SCH_CRED_FORMAT_CERT_HASH_STORE = 2;
    SCH_MACHINE_CERT_HASH = 1;
    SCH_CRED_NO_SYSTEM_MAPPER = 0x2;
    SCH_CRED_NO_SERVERNAME_CHECK = 0x4;
    SCH_CRED_MANUAL_CRED_VALIDATION = 0x8;
    SCH_CRED_NO_DEFAULT_CREDS = 0x10;
    SCH_CRED_AUTO_CRED_VALIDATION = 0x20;
    SCH_CRED_USE_DEFAULT_CREDS = 0x40;
    SCH_CRED_DISABLE_RECONNECTS = 0x80;
    SCH_CRED_REVOCATION_CHECK_END_CERT = 0x100;
    SCH_CRED_REVOCATION_CHECK_CHAIN = 0x200;
    SCH_CRED_REVOCATION_CHECK_CHAIN_EXCLUDE_ROOT = 0x400;
    SCH_CRED_IGNORE_NO_REVOCATION_CHECK = 0x800;
    SCH_CRED_IGNORE_REVOCATION_OFFLINE = 0x1000;
    SCH_CRED_SNI_CREDENTIAL = 0x80000;
    SCH_CRED_SNI_ENABLE_OCSP = 0x100000;
    SCH_USE_STRONG_CRYPTO = 0x400000;
    SCH_CRED_DEFERRED_CRED_VALIDATION = 0x0400_0000;
    SP_PROT_PCT1_SERVER = 0x1;
    SP_PROT_PCT1_CLIENT = 0x2;
    SP_PROT_SSL2_SERVER = 0x4;
    SP_PROT_SSL2_CLIENT = 0x8;
    SP_PROT_SSL3_SERVER = 0x10;
    SP_PROT_SSL3_CLIENT = 0x20;
    SP_PROT_TLS1_0_SERVER = 0x40;
    SP_PROT_TLS1_0_CLIENT = 0x80;
    SP_PROT_TLS1_1_SERVER = 0x100;
    SP_PROT_TLS1_1_CLIENT = 0x200;
    SP_PROT_TLS1_2_SERVER = 0x400;
    SP_PROT_TLS1_2_CLIENT = 0x800;
    SP_PROT_TLS1_3_SERVER = 0x1000;
    SP_PROT_TLS1_3_CLIENT = 0x2000;
    SCHANNEL_RENEGOTIATE = 0;
    SCHANNEL_SHUTDOWN = 1;
    SCHANNEL_ALERT = 2;
    TLS1_ALERT_WARNING = 1;
    TLS1_ALERT_FATAL = 2;
}

/// Every protocol below TLS 1.2, both directions: what a credential must disable explicitly,
/// since `grbitDisabledProtocols` = 0 leaves them at the system's defaults.
pub const SP_PROT_BELOW_TLS1_2: u32 = SP_PROT_PCT1_SERVER
    | SP_PROT_PCT1_CLIENT
    | SP_PROT_SSL2_SERVER
    | SP_PROT_SSL2_CLIENT
    | SP_PROT_SSL3_SERVER
    | SP_PROT_SSL3_CLIENT
    | SP_PROT_TLS1_0_SERVER
    | SP_PROT_TLS1_0_CLIENT
    | SP_PROT_TLS1_1_SERVER
    | SP_PROT_TLS1_1_CLIENT;

/// ApplyControlToken's SCHANNEL_ALERT token: the next ISC/ASC call produces this alert record.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SCHANNEL_ALERT_TOKEN {
    /// [`SCHANNEL_ALERT`].
    pub dwTokenType: u32,
    /// [`TLS1_ALERT_WARNING`] or [`TLS1_ALERT_FATAL`].
    pub dwAlertType: u32,
    /// The TLS AlertDescription.
    pub dwAlertNumber: u32,
}
