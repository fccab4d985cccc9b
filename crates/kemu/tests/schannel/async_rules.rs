//! The rules a driver must keep with the asynchronous SSPI calls: fresh and NULL async contexts,
//! a wedged context that refuses every call, and the verifier's stops (NULL target name, double
//! free, protocols left at the system default, leaked handles, control tokens without a context).

use super::*;
use ksys::imports::*;
use std::ffi::c_void;

unsafe extern "win64" fn ignore(_c: *mut SspiAsyncContext, _d: *mut c_void) {}

#[test]
fn fresh_and_null_async_contexts() {
    let kernel = boot(CallbackSchedule::Deferred);
    let statuses = kernel
        .run("async", || {
            // SAFETY: SSPI calls with valid (or deliberately NULL) arguments.
            unsafe {
                let ctx = SspiCreateAsyncContext();
                let fresh = SspiGetAsyncCallStatus(ctx);
                let null = SspiGetAsyncCallStatus(std::ptr::null_mut());
                let set_null = SspiSetAsyncNotifyCallback(
                    std::ptr::null_mut(),
                    Some(ignore),
                    std::ptr::null_mut(),
                );
                let reinit = SspiReinitAsyncContext(ctx);
                SspiFreeAsyncContext(ctx);
                SspiFreeAsyncContext(std::ptr::null_mut());
                (fresh, null, set_null, reinit)
            }
        })
        .unwrap();
    assert_eq!(
        statuses,
        (
            SEC_E_UNSUPPORTED_FUNCTION,
            SEC_E_INVALID_PARAMETER,
            SEC_E_INVALID_PARAMETER,
            ksys::ntdef::STATUS_SUCCESS
        )
    );
    kernel.shutdown().unwrap();
}

#[test]
fn a_wedged_context_stays_pending_and_refuses_every_call() {
    kemu::exports::bind_native(ksys::imports::IMPORT_DIRECTORY);
    let kernel = Kernel::boot(KernelConfig {
        faults: FaultPlan {
            wedge_sspi_call: Some(1),
            ..FaultPlan::default()
        },
        ..KernelConfig::from_env()
    });
    let (queued, status, again, reinit) = kernel
        .run("wedge", || {
            let mut a = kemu::testing::sspi::Async::new();
            let mut handle = SecHandle::INVALID;
            let package: Vec<u16> = "Schannel".encode_utf16().collect();
            let package = ksys::ntdef::UNICODE_STRING {
                Length: 16,
                MaximumLength: 16,
                Buffer: package.as_ptr() as *mut u16,
            };
            let mut tls = client_tls_parameters(!SP_PROT_TLS1_3_CLIENT);
            let mut creds = client_credentials(&mut tls);
            let auth = &mut creds as *mut SCH_CREDENTIALS as *mut std::ffi::c_void;
            // SAFETY: valid arguments; the first async call is wedged by the fault plan.
            unsafe {
                let queued = SspiAcquireCredentialsHandleAsyncW(
                    a.context,
                    std::ptr::null(),
                    &package,
                    SECPKG_CRED_OUTBOUND,
                    std::ptr::null_mut(),
                    auth,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    &mut handle,
                    std::ptr::null_mut(),
                );
                let status = SspiGetAsyncCallStatus(a.context);
                let again = a.call(|ctx| {
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
                let reinit = SspiReinitAsyncContext(a.context);
                // The only way out of a wedged context: free it (allowed although "pending").
                drop(a);
                (queued, status, again, reinit)
            }
        })
        .unwrap();
    assert!(
        queued.is_error(),
        "the queueing failure is returned: {queued:#x}"
    );
    assert_eq!(status, SEC_I_ASYNC_CALL_PENDING);
    assert_eq!(again, SEC_E_INVALID_PARAMETER);
    assert_eq!(reinit, ksys::ntdef::STATUS_INVALID_PARAMETER);
    kernel.shutdown().unwrap();
}

fn expect_sspi_bugcheck<R: std::fmt::Debug>(r: Result<R, kemu::KernelError>, words: &str) {
    match r {
        Err(kemu::KernelError::Bugcheck(b)) => {
            assert_eq!(
                b.code,
                kemu::codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
                "{b}"
            );
            assert!(b.message.contains(words), "{b}");
        }
        other => panic!("expected a bugcheck mentioning {words:?}, got {other:?}"),
    }
}

#[test]
fn verifier_catches_null_target_and_double_free() {
    let kernel = boot(CallbackSchedule::Random);
    let r = kernel.run("null target", || {
        let cred = acquire(&CredentialSpec::default()).unwrap();
        let mut a = kemu::testing::sspi::Async::new();
        let mut credential = cred;
        let mut new_context = SecHandle::INVALID;
        let mut attributes = 0u32;
        let mut out = [SecBuffer::EMPTY];
        let mut out_desc = SecBufferDesc {
            ulVersion: 0,
            cBuffers: 1,
            pBuffers: out.as_mut_ptr(),
        };
        // SAFETY: valid arguments except the NULL target under test.
        a.call(|ctx| unsafe {
            SspiInitializeSecurityContextAsyncW(
                ctx,
                &mut credential,
                std::ptr::null_mut(),
                std::ptr::null(),
                0,
                0,
                0,
                std::ptr::null_mut(),
                0,
                &mut new_context,
                &mut out_desc,
                &mut attributes,
                std::ptr::null_mut(),
            )
        })
    });
    expect_sspi_bugcheck(r, "NULL target");

    let kernel = boot(CallbackSchedule::Random);
    let r = kernel.run("use after free", || {
        let mut cred = acquire(&CredentialSpec::default()).unwrap();
        // SAFETY: freed once, then used again — the bug under test.
        unsafe {
            FreeCredentialsHandle(&mut cred);
            FreeCredentialsHandle(&mut cred)
        }
    });
    expect_sspi_bugcheck(r, "freed");
}

/// grbitDisabledProtocols = 0 means the system defaults, TLS 1.0/1.1 included on many builds:
/// a credential that does not disable everything below TLS 1.2 is a verifier stop, and so
/// is a client credential with no SCH_CREDENTIALS at all.
#[test]
fn a_credential_leaving_old_protocols_at_the_system_default_is_a_violation() {
    for disabled in [
        0,
        SP_PROT_TLS1_0_CLIENT | SP_PROT_SSL3_CLIENT,
        SP_PROT_TLS1_2_CLIENT,
    ] {
        let kernel = boot(CallbackSchedule::Random);
        let r = kernel.run("defaults", move || {
            let mut tls = client_tls_parameters(0);
            tls.grbitDisabledProtocols = disabled;
            let mut creds = client_credentials(&mut tls);
            // SAFETY: the credentials and their parameters outlive the call.
            unsafe { acquire_raw(&mut creds as *mut SCH_CREDENTIALS as *mut std::ffi::c_void) }
        });
        expect_sspi_bugcheck(r, "below TLS 1.2");
    }
    let kernel = boot(CallbackSchedule::Random);
    // SAFETY: NULL auth data is allowed (it is the violation under test).
    let r = kernel.run("no credentials", || unsafe {
        acquire_raw(std::ptr::null_mut())
    });
    expect_sspi_bugcheck(r, "system default");
    // Disabling exactly what is not wanted (~wanted, as MsQuic does) is accepted.
    let kernel = boot(CallbackSchedule::Random);
    let status = kernel
        .run("exact", || {
            let mut tls = client_tls_parameters(!SP_PROT_TLS1_3_CLIENT);
            let mut creds = client_credentials(&mut tls);
            // SAFETY: as above.
            let r =
                unsafe { acquire_raw(&mut creds as *mut SCH_CREDENTIALS as *mut std::ffi::c_void) };
            if let Ok(h) = r {
                free_credential(h);
            }
            r.err().unwrap_or(SEC_E_OK)
        })
        .unwrap();
    assert_eq!(status, SEC_E_OK);
    kernel.shutdown().unwrap();
}

#[test]
fn leaked_handles_are_reported_and_control_tokens_need_a_context() {
    let kernel = boot(CallbackSchedule::Random);
    let refused = kernel
        .run("leak", || {
            let cred = acquire(&CredentialSpec::default()).unwrap();
            let _leaked = cred;
            let mut h = SecHandle::INVALID;
            // SAFETY: ApplyControlToken with a handle that names no context.
            unsafe { ApplyControlToken(&mut h, std::ptr::null_mut()) }
        })
        .unwrap();
    assert_eq!(refused, SEC_E_INVALID_HANDLE);
    match kernel.shutdown() {
        Err(kemu::KernelError::Leaks(r)) => {
            assert!(r.leaks.iter().any(|l| l.tag.contains("credential")), "{r}")
        }
        other => panic!("{other:?}"),
    }
}
