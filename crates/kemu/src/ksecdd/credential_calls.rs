//! Credentials: SspiAcquireCredentialsHandleAsyncW, SetCredentialsAttributesW and freeing
//! (synchronously or SspiFreeCredentialsHandleAsync).

use super::*;

pub(super) fn unicode(s: *const UNICODE_STRING) -> Option<String> {
    // SAFETY: the caller's UNICODE_STRING (or NULL).
    unsafe { crate::rtl::unicode_text(s) }
}

/// SspiAcquireCredentialsHandleAsyncW.
pub(crate) unsafe extern "win64" fn sspi_acquire_credentials_handle_async_w(
    context: *mut SspiAsyncContext,
    _principal: *const UNICODE_STRING,
    package: *const UNICODE_STRING,
    credential_use: u32,
    _logon_id: *mut c_void,
    auth_data: *mut c_void,
    _get_key_fn: *mut c_void,
    _get_key_argument: *mut c_void,
    credential_out: *mut SecHandle,
    expiry: *mut TimeStamp,
) -> SECURITY_STATUS {
    thread::require_at_most("SspiAcquireCredentialsHandleAsyncW", PASSIVE);
    if credential_out.is_null() {
        return SEC_E_INVALID_HANDLE;
    }
    let package = unicode(package).unwrap_or_default();
    let known = package.eq_ignore_ascii_case("Schannel")
        || package.eq_ignore_ascii_case("Microsoft Unified Security Protocol Provider");
    let inbound = credential_use & SECPKG_CRED_INBOUND != 0;
    // SCH_CREDENTIALS and everything it points to are read now (the caller keeps them alive
    // until the callback, as it must; reading early is the strict choice).
    let parsed = if known && credential_use & SECPKG_CRED_BOTH != 0 {
        // SAFETY: auth_data is the caller's SCH_CREDENTIALS (or NULL).
        Some(unsafe {
            creds::parse(
                auth_data as *const SCH_CREDENTIALS,
                inbound,
                ksecdd().ksecdd.store(),
            )
        })
    } else {
        None
    };
    let (out, expiry) = (Out::of(credential_out), Out::of(expiry));
    start_after(
        context,
        "SspiAcquireCredentialsHandleAsyncW",
        true,
        ksecdd().faults.credential_delay(),
        move || {
            let credential = match parsed {
                None if !known => return SEC_E_SECPKG_NOT_FOUND,
                None => return SEC_E_UNKNOWN_CREDENTIALS,
                Some(Err(status)) => return status,
                Some(Ok(c)) => c,
            };
            let kernel = thread::kernel();
            let id = {
                let mut s = kernel.ksecdd.lock();
                s.next_id += 1;
                let id = s.next_id;
                s.credentials.insert(
                    id,
                    CredentialEntry {
                        credential: Arc::new(credential),
                        site: Site::here(kernel.next_sequence()),
                    },
                );
                id
            };
            // SAFETY: the caller's out-parameters, alive until the callback.
            unsafe {
                *out.get::<SecHandle>() = SecHandle {
                    dwLower: CREDENTIAL_TAG,
                    dwUpper: id,
                };
                if !expiry.get::<TimeStamp>().is_null() {
                    *expiry.get::<TimeStamp>() = i64::MAX;
                }
            }
            SEC_E_OK
        },
    )
}

/// SetCredentialsAttributesW: SECPKG_ATTR_CLIENT_CERT_POLICY on a server credential (how a
/// server that requires client certificates says how to build their chains, as MsQuic does).
pub(crate) unsafe extern "win64" fn set_credentials_attributes_w(
    credential: *mut SecHandle,
    attribute: u32,
    buffer: *mut c_void,
    size: u32,
) -> SECURITY_STATUS {
    thread::require_at_most("SetCredentialsAttributesW", PASSIVE);
    let Lookup::Found((_, credential)) = self::credential(credential, "SetCredentialsAttributesW")
    else {
        return SEC_E_INVALID_HANDLE;
    };
    match attribute {
        SECPKG_ATTR_CLIENT_CERT_POLICY if credential.inbound => {
            if buffer.is_null()
                || (size as usize) < std::mem::size_of::<SecPkgCred_ClientCertPolicy>()
            {
                return SEC_E_INVALID_PARAMETER;
            }
            // SAFETY: the caller's structure of at least its size.
            let policy = unsafe { *(buffer as *const SecPkgCred_ClientCertPolicy) };
            *credential
                .client_cert_policy
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(policy.dwCertFlags);
            SEC_E_OK
        }
        _ => SEC_E_UNSUPPORTED_FUNCTION,
    }
}

pub(super) fn free_credential(handle: SecHandle) -> SECURITY_STATUS {
    let kernel = ksecdd();
    let mut s = kernel.ksecdd.lock();
    if handle.dwLower != CREDENTIAL_TAG {
        return SEC_E_INVALID_HANDLE;
    }
    if s.freed_credentials.contains(&handle.dwUpper) {
        drop(s);
        violation(
            format!("credential handle {:#x} freed twice", handle.dwUpper),
            handle.dwUpper,
        );
    }
    match s.credentials.remove(&handle.dwUpper) {
        Some(_) => {
            s.freed_credentials.insert(handle.dwUpper);
            SEC_E_OK
        }
        None => SEC_E_INVALID_HANDLE,
    }
}

/// FreeCredentialsHandle.
pub(crate) unsafe extern "win64" fn free_credentials_handle(
    credential: *mut SecHandle,
) -> SECURITY_STATUS {
    thread::require_at_most("FreeCredentialsHandle", PASSIVE);
    ksecdd().ksecdd.count_release("FreeCredentialsHandle");
    if credential.is_null() {
        return SEC_E_INVALID_HANDLE;
    }
    // SAFETY: the caller's handle.
    free_credential(unsafe { *credential })
}

/// SspiFreeCredentialsHandleAsync.
pub(crate) unsafe extern "win64" fn sspi_free_credentials_handle_async(
    context: *mut SspiAsyncContext,
    credential: *mut SecHandle,
) -> SECURITY_STATUS {
    thread::require_at_most("SspiFreeCredentialsHandleAsync", PASSIVE);
    ksecdd()
        .ksecdd
        .count_release("SspiFreeCredentialsHandleAsync");
    if credential.is_null() {
        return SEC_E_INVALID_HANDLE;
    }
    // SAFETY: the caller's handle, copied now.
    let handle = unsafe { *credential };
    start(context, "SspiFreeCredentialsHandleAsync", true, move || {
        free_credential(handle)
    })
}
