//! Schannel credentials (SCH_CREDENTIALS version 5): a server's certificate named by its SHA-1
//! thumbprint in the machine store, or a client's validation policy, acquired asynchronously
//! and shared by every session that uses them.

use core::cell::UnsafeCell;
use core::ffi::c_void;

use ksys::imports::*;
use ksys::io::{EXECUTIVE, KERNEL_MODE, KEVENT, SYNCHRONIZATION_EVENT};
use ksys::ntdef::UNICODE_STRING;
use ksys::schannel::*;
use ksys::sspi::*;

use crate::pool::PoolArc;
use crate::sspi::AsyncOp;

/// TLS versions a credential allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versions {
    /// TLS 1.2 allowed.
    pub tls12: bool,
    /// TLS 1.3 allowed.
    pub tls13: bool,
}

/// What to acquire.
#[derive(Clone, Copy, Debug)]
pub struct CredentialSpec {
    /// Server (inbound) or client (outbound).
    pub inbound: bool,
    /// The server certificate's SHA-1 thumbprint in the machine store "MY" (servers), or a
    /// client certificate (clients, optional).
    pub thumbprint: Option<[u8; 20]>,
    /// SCH_CRED_* flags (e.g. SCH_CRED_MANUAL_CRED_VALIDATION for pinning or insecure mode).
    pub flags: u32,
    /// Which versions may be negotiated.
    pub versions: Versions,
    /// Servers: every client will be asked for a certificate (the sessions check the verdict);
    /// sets the client certificate policy on the credential, as Windows expects of such a
    /// server (SetCredentialsAttributesW, SECPKG_ATTR_CLIENT_CERT_POLICY).
    pub require_client_certificate: bool,
}

/// An acquired credential handle; freed when the last session lets go (at PASSIVE_LEVEL).
pub struct Credential {
    handle: UnsafeCell<SecHandle>,
}

// SAFETY: SSPI handles are usable from any thread; the handle value never changes after acquire.
unsafe impl Send for Credential {}
// SAFETY: as above.
unsafe impl Sync for Credential {}

struct Waiter {
    event: UnsafeCell<KEVENT>,
}

unsafe extern "win64" fn acquired(_context: *mut SspiAsyncContext, data: *mut c_void) {
    // SAFETY: `data` is the waiter of `acquire`, alive until the callback has run (it waits).
    unsafe { KeSetEvent((*(data as *const Waiter)).event.get(), 0, 0) };
}

impl Credential {
    /// SspiAcquireCredentialsHandleAsyncW, waiting for its callback: call at PASSIVE_LEVEL from a
    /// dispatch routine (it waits), never from a completion path.
    pub fn acquire(spec: &CredentialSpec) -> Result<PoolArc<Credential>, SECURITY_STATUS> {
        let (p12, p13) = if spec.inbound {
            (SP_PROT_TLS1_2_SERVER, SP_PROT_TLS1_3_SERVER)
        } else {
            (SP_PROT_TLS1_2_CLIENT, SP_PROT_TLS1_3_CLIENT)
        };
        let mut wanted = 0u32;
        if spec.versions.tls12 {
            wanted |= p12;
        }
        if spec.versions.tls13 {
            wanted |= p13;
        }
        if wanted == 0 {
            return Err(SEC_E_ALGORITHM_MISMATCH);
        }
        // Every protocol not asked for is disabled: 0 would mean the system's defaults, which
        // include TLS 1.0/1.1 on many builds (MsQuic disables ~wanted the same way).
        let disabled = !wanted;
        // Clients never fall back to a default client certificate (SCH_CRED_NO_DEFAULT_CREDS,
        // as MsQuic and curl); servers insist on strong crypto and map no client certificate
        // to a Windows account.
        let flags = spec.flags
            | if spec.inbound {
                SCH_USE_STRONG_CRYPTO | SCH_CRED_NO_SYSTEM_MAPPER
            } else {
                SCH_CRED_NO_DEFAULT_CREDS
            };
        let waiter = PoolArc::try_new(Waiter {
            // SAFETY: KEVENT is plain data, initialized below before use.
            event: UnsafeCell::new(unsafe { core::mem::zeroed() }),
        })
        .map_err(|_| SEC_E_INSUFFICIENT_MEMORY)?;
        // SAFETY: the pool-resident event, initialized once.
        unsafe { KeInitializeEvent(waiter.event.get(), SYNCHRONIZATION_EVENT, 0) };
        let mut op = AsyncOp::try_new(acquired, &*waiter as *const Waiter as *mut c_void)
            .map_err(|_| SEC_E_INSUFFICIENT_MEMORY)?;
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
            rgstrAlpnIds: core::ptr::null_mut(),
            grbitDisabledProtocols: disabled,
            cDisabledCrypto: 0,
            pDisabledCrypto: core::ptr::null_mut(),
            dwFlags: 0,
        };
        let mut creds = SCH_CREDENTIALS {
            dwVersion: SCH_CREDENTIALS_VERSION,
            // A format only with a certificate to go with it.
            dwCredFormat: 0,
            cCreds: 0,
            paCred: core::ptr::null_mut(),
            hRootStore: core::ptr::null_mut(),
            cMappers: 0,
            aphMappers: core::ptr::null_mut(),
            dwSessionLifespan: 0,
            dwFlags: flags,
            cTlsParameters: 1,
            pTlsParameters: &mut tls,
        };
        if let Some(t) = spec.thumbprint {
            hash.ShaHash = t;
            creds.dwCredFormat = SCH_CRED_FORMAT_CERT_HASH_STORE;
            creds.cCreds = 1;
            creds.paCred = &mut hash as *mut _ as *mut c_void;
        }
        let package_units = &SCHANNEL_NAME_W[..SCHANNEL_NAME_W.len() - 1];
        let package = UNICODE_STRING {
            Length: (package_units.len() * 2) as u16,
            MaximumLength: (package_units.len() * 2) as u16,
            Buffer: package_units.as_ptr() as *mut u16,
        };
        let credential = PoolArc::try_new(Credential {
            handle: UnsafeCell::new(SecHandle::INVALID),
        })
        .map_err(|_| SEC_E_INSUFFICIENT_MEMORY)?;
        let mut expiry: TimeStamp = 0;
        let context = op.begin().map_err(|_| SEC_E_INSUFFICIENT_MEMORY)?;
        let use_ = if spec.inbound {
            SECPKG_CRED_INBOUND
        } else {
            SECPKG_CRED_OUTBOUND
        };
        // SAFETY: every structure the call reads or writes outlives it: we wait for the callback
        // below before any of them goes away.
        let queued = unsafe {
            SspiAcquireCredentialsHandleAsyncW(
                context,
                core::ptr::null(),
                &package,
                use_,
                core::ptr::null_mut(),
                &mut creds as *mut _ as *mut c_void,
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                credential.handle.get(),
                &mut expiry,
            )
        };
        op.issued(queued)?;
        // SAFETY: our event; the callback sets it exactly once for this call.
        unsafe {
            KeWaitForSingleObject(
                waiter.event.get() as *mut c_void,
                EXECUTIVE,
                KERNEL_MODE,
                0,
                core::ptr::null(),
            )
        };
        let status = op.status();
        if status != SEC_E_OK {
            return Err(status);
        }
        if spec.inbound && spec.require_client_certificate {
            credential.set_client_certificate_policy()?;
        }
        Ok(credential)
    }

    /// SECPKG_ATTR_CLIENT_CERT_POLICY with the default chain policy (no revocation flags): what
    /// MsQuic sets on a server credential that requires client certificates.
    fn set_client_certificate_policy(&self) -> Result<(), SECURITY_STATUS> {
        let mut policy = SecPkgCred_ClientCertPolicy {
            dwFlags: 0,
            guidPolicyId: [0; 16],
            dwCertFlags: 0,
            dwUrlRetrievalTimeout: 0,
            fCheckRevocationFreshnessTime: 0,
            dwRevocationFreshnessTime: 0,
            fOmitUsageCheck: 0,
            pwszSslCtlStoreName: core::ptr::null_mut(),
            pwszSslCtlIdentifier: core::ptr::null_mut(),
        };
        // SAFETY: our acquired handle and a structure that outlives the synchronous call.
        let status = unsafe {
            SetCredentialsAttributesW(
                self.handle(),
                SECPKG_ATTR_CLIENT_CERT_POLICY,
                &mut policy as *mut _ as *mut c_void,
                core::mem::size_of::<SecPkgCred_ClientCertPolicy>() as u32,
            )
        };
        if status == SEC_E_OK {
            Ok(())
        } else {
            Err(status)
        }
    }

    /// The handle SSPI calls take.
    pub fn handle(&self) -> *mut SecHandle {
        self.handle.get()
    }
}

impl Drop for Credential {
    fn drop(&mut self) {
        let handle = self.handle.get_mut();
        if handle.is_valid() {
            // SAFETY: acquired by `acquire`, freed once (the last reference is going away).
            unsafe { FreeCredentialsHandle(handle) };
        }
    }
}
