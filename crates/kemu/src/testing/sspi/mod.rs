//! An SSPI client written the way a driver uses kernel Schannel, for kemu's tests and
//! benchmarks: each asynchronous call's callback signals an event the issuing thread waits on;
//! handshake buffers are the caller's own; records are encrypted and decrypted in place. Every
//! function must run on a kernel thread after `exports::bind_native(IMPORT_DIRECTORY)`.

#![allow(missing_docs)]

mod session;

pub use session::{Step, Tls};

use std::ffi::c_void;
use std::io::{Read, Write};

use ksys::imports::*;
use ksys::io::{EXECUTIVE, KERNEL_MODE, KEVENT, SYNCHRONIZATION_EVENT};
use ksys::ntdef::UNICODE_STRING;
use ksys::schannel::*;
use ksys::sspi::*;

use crate::Thumbprint;

/// Size of the handshake output buffer the client supplies.
pub const TOKEN_BUFFER: usize = 64 * 1024;

unsafe extern "win64" fn notify(_context: *mut SspiAsyncContext, data: *mut c_void) {
    // SAFETY: `data` is the live event of the `Async` that registered this callback.
    unsafe { KeSetEvent(data as *mut KEVENT, 0, 0) };
}

/// One async context with its completion event.
pub struct Async {
    pub context: *mut SspiAsyncContext,
    event: Box<KEVENT>,
}

impl Async {
    pub fn new() -> Async {
        // SAFETY: plain SSPI and event calls at PASSIVE_LEVEL.
        unsafe {
            let context = SspiCreateAsyncContext();
            assert!(!context.is_null());
            let mut event: Box<KEVENT> = Box::new(std::mem::zeroed());
            KeInitializeEvent(&mut *event, SYNCHRONIZATION_EVENT, 0);
            assert_eq!(
                SspiSetAsyncNotifyCallback(
                    context,
                    Some(notify),
                    &mut *event as *mut KEVENT as *mut c_void
                ),
                SEC_E_OK
            );
            Async { context, event }
        }
    }

    /// Runs one async call: queues it, waits for the callback, returns the call status
    /// (or the queueing error, with no callback expected).
    pub fn call(
        &mut self,
        f: impl FnOnce(*mut SspiAsyncContext) -> SECURITY_STATUS,
    ) -> SECURITY_STATUS {
        let queued = f(self.context);
        if queued != SEC_E_OK {
            return queued;
        }
        // SAFETY: our event; the callback sets it exactly once per call.
        unsafe {
            KeWaitForSingleObject(
                &mut *self.event as *mut KEVENT as *mut c_void,
                EXECUTIVE,
                KERNEL_MODE,
                0,
                std::ptr::null(),
            );
            SspiGetAsyncCallStatus(self.context)
        }
    }
}

impl Default for Async {
    fn default() -> Self {
        Async::new()
    }
}

impl Drop for Async {
    fn drop(&mut self) {
        // SAFETY: no call is pending (every `call` waited for its callback).
        unsafe { SspiFreeAsyncContext(self.context) };
    }
}

fn unicode(units: &[u16]) -> UNICODE_STRING {
    UNICODE_STRING {
        Length: (units.len() * 2) as u16,
        MaximumLength: (units.len() * 2) as u16,
        Buffer: units.as_ptr() as *mut u16,
    }
}

/// What a credential asks for.
#[derive(Debug, Clone, Default)]
pub struct CredentialSpec {
    pub inbound: bool,
    pub thumbprint: Option<Thumbprint>,
    pub flags: u32,
    pub disabled_protocols: u32,
}

/// SspiAcquireCredentialsHandleAsyncW with SCH_CREDENTIALS v5 / CERT_HASH_STORE.
pub fn acquire(spec: &CredentialSpec) -> Result<SecHandle, SECURITY_STATUS> {
    let mut hash = SCHANNEL_CERT_HASH_STORE {
        dwLength: SCHANNEL_CERT_HASH_STORE_SIZE,
        dwFlags: SCH_MACHINE_CERT_HASH,
        hProv: 0,
        ShaHash: [0; 20],
        pwszStoreName: [0; SCH_CRED_MAX_STORE_NAME_SIZE],
    };
    hash.pwszStoreName[0] = u16::from(b'M');
    hash.pwszStoreName[1] = u16::from(b'Y');
    let mut tls = TLS_PARAMETERS {
        cAlpnIds: 0,
        rgstrAlpnIds: std::ptr::null_mut(),
        // Everything below TLS 1.2 is always disabled explicitly (0 means system defaults).
        grbitDisabledProtocols: spec.disabled_protocols | SP_PROT_BELOW_TLS1_2,
        cDisabledCrypto: 0,
        pDisabledCrypto: std::ptr::null_mut(),
        dwFlags: 0,
    };
    let mut creds = SCH_CREDENTIALS {
        dwVersion: SCH_CREDENTIALS_VERSION,
        dwCredFormat: SCH_CRED_FORMAT_CERT_HASH_STORE,
        cCreds: 0,
        paCred: std::ptr::null_mut(),
        hRootStore: std::ptr::null_mut(),
        cMappers: 0,
        aphMappers: std::ptr::null_mut(),
        dwSessionLifespan: 0,
        // Clients never fall back to a default certificate (as MsQuic and curl set it).
        dwFlags: spec.flags
            | if spec.inbound {
                0
            } else {
                SCH_CRED_NO_DEFAULT_CREDS
            },
        cTlsParameters: 1,
        pTlsParameters: &mut tls,
    };
    if let Some(t) = spec.thumbprint {
        hash.ShaHash = t.0;
        creds.cCreds = 1;
        creds.paCred = &mut hash as *mut _ as *mut c_void;
    }
    let package: Vec<u16> = "Schannel".encode_utf16().collect();
    let package = unicode(&package);
    let mut handle = SecHandle::INVALID;
    let mut expiry: TimeStamp = 0;
    let mut a = Async::new();
    let use_ = if spec.inbound {
        SECPKG_CRED_INBOUND
    } else {
        SECPKG_CRED_OUTBOUND
    };
    // SAFETY: every structure outlives the call (we wait for the callback).
    let status = a.call(|ctx| unsafe {
        SspiAcquireCredentialsHandleAsyncW(
            ctx,
            std::ptr::null(),
            &package,
            use_,
            std::ptr::null_mut(),
            &mut creds as *mut _ as *mut c_void,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut handle,
            &mut expiry,
        )
    });
    if status == SEC_E_OK {
        Ok(handle)
    } else {
        Err(status)
    }
}

/// TLS_PARAMETERS disabling exactly `disabled` (no ALPN).
pub fn client_tls_parameters(disabled: u32) -> TLS_PARAMETERS {
    TLS_PARAMETERS {
        cAlpnIds: 0,
        rgstrAlpnIds: std::ptr::null_mut(),
        grbitDisabledProtocols: disabled,
        cDisabledCrypto: 0,
        pDisabledCrypto: std::ptr::null_mut(),
        dwFlags: 0,
    }
}

/// A client SCH_CREDENTIALS (no certificate) over `tls`.
pub fn client_credentials(tls: &mut TLS_PARAMETERS) -> SCH_CREDENTIALS {
    SCH_CREDENTIALS {
        dwVersion: SCH_CREDENTIALS_VERSION,
        dwCredFormat: 0,
        cCreds: 0,
        paCred: std::ptr::null_mut(),
        hRootStore: std::ptr::null_mut(),
        cMappers: 0,
        aphMappers: std::ptr::null_mut(),
        dwSessionLifespan: 0,
        dwFlags: SCH_CRED_NO_DEFAULT_CREDS,
        cTlsParameters: 1,
        pTlsParameters: tls,
    }
}

/// An outbound SspiAcquireCredentialsHandleAsyncW with the caller's auth data as it is.
///
/// # Safety
/// `auth` must be NULL or point to an SCH_CREDENTIALS whose pointers are valid for the call.
pub unsafe fn acquire_raw(auth: *mut c_void) -> Result<SecHandle, SECURITY_STATUS> {
    let package: Vec<u16> = "Schannel".encode_utf16().collect();
    let package = unicode(&package);
    let mut handle = SecHandle::INVALID;
    let mut a = Async::new();
    // SAFETY: the structures outlive the call (we wait for the callback); `auth` is the
    // caller's to vouch for.
    let status = a.call(|ctx| unsafe {
        SspiAcquireCredentialsHandleAsyncW(
            ctx,
            std::ptr::null(),
            &package,
            SECPKG_CRED_OUTBOUND,
            std::ptr::null_mut(),
            auth,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut handle,
            std::ptr::null_mut(),
        )
    });
    if status == SEC_E_OK {
        Ok(handle)
    } else {
        Err(status)
    }
}

/// Frees a credential (synchronously, as MsQuic does).
pub fn free_credential(mut handle: SecHandle) {
    // SAFETY: a handle from `acquire`.
    assert_eq!(unsafe { FreeCredentialsHandle(&mut handle) }, SEC_E_OK);
}

/// SEC_APPLICATION_PROTOCOLS for an ALPN list.
pub fn alpn_blob(ids: &[&str]) -> Vec<u8> {
    let mut wire = Vec::new();
    for id in ids {
        wire.push(id.len() as u8);
        wire.extend_from_slice(id.as_bytes());
    }
    let mut blob = Vec::new();
    blob.extend_from_slice(&((6 + wire.len()) as u32).to_le_bytes());
    blob.extend_from_slice(&2i32.to_le_bytes());
    blob.extend_from_slice(&(wire.len() as u16).to_le_bytes());
    blob.extend_from_slice(&wire);
    blob
}
