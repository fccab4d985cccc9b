//! ktls's foundations under kemu: pool-backed reference counting and the asynchronous SSPI
//! operation (inline and deferred completion, reuse, a wedged context replaced).

use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use kemu::{CallbackSchedule, FaultPlan, Kernel, KernelError};
use ksys::imports::*;
use ksys::io::{EXECUTIVE, KERNEL_MODE, KEVENT, SYNCHRONIZATION_EVENT};
use ksys::ntdef::{STATUS_INSUFFICIENT_RESOURCES, UNICODE_STRING};
use ksys::sspi::*;
use ktls::pool::PoolArc;
use ktls::sspi::AsyncOp;

fn boot(plan: FaultPlan) -> Kernel {
    testkit::boot_with_faults(plan)
}

struct Dropped<'a>(&'a AtomicUsize);

impl Drop for Dropped<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn pool_arc_is_tracked_pool_freed_by_the_last_reference() {
    let kernel = boot(FaultPlan::default());
    let live = kernel
        .run("arc", || {
            static DROPS: AtomicUsize = AtomicUsize::new(0);
            let a = PoolArc::try_new(Dropped(&DROPS)).unwrap();
            let b = a.clone();
            assert_eq!(PoolArc::references(&a), 2);
            let raw = PoolArc::into_raw(b);
            drop(a);
            assert_eq!(
                DROPS.load(Ordering::SeqCst),
                0,
                "a raw reference keeps it alive"
            );
            // SAFETY: `raw` came from into_raw and is taken back once.
            let back = unsafe { PoolArc::from_raw(raw) };
            drop(back);
            DROPS.load(Ordering::SeqCst)
        })
        .unwrap();
    assert_eq!(live, 1);
    let usage = kernel.pool_usage()["kTLS"];
    assert_eq!((usage.allocations, usage.live_blocks), (1, 0));
    kernel.shutdown().unwrap();
}

#[test]
fn pool_arc_reports_allocation_failure() {
    let kernel = boot(FaultPlan {
        fail_allocation: Some(1),
        ..FaultPlan::default()
    });
    let status = kernel
        .run("arc", || PoolArc::try_new(5u64).map(|_| ()).unwrap_err())
        .unwrap();
    assert_eq!(status, STATUS_INSUFFICIENT_RESOURCES);
    kernel.shutdown().unwrap();
}

/// What the notify callback records: the status, then an event for the test to wait on.
struct Completion {
    status: AtomicI32,
    calls: AtomicUsize,
    event: KEVENT,
}

unsafe extern "win64" fn on_notify(context: *mut SspiAsyncContext, data: *mut c_void) {
    // SAFETY: `data` is the test's live Completion.
    let c = unsafe { &*(data as *const Completion) };
    // SAFETY: the context being notified.
    let status = unsafe { SspiGetAsyncCallStatus(context) };
    c.status.store(status.0, Ordering::SeqCst);
    c.calls.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the Completion's event.
    unsafe { KeSetEvent(&c.event as *const KEVENT as *mut KEVENT, 0, 0) };
}

/// Acquires and frees an outbound credential through `op`; returns the call status.
fn acquire_and_free(
    op: &mut AsyncOp,
    completion: &Completion,
) -> Result<SECURITY_STATUS, SECURITY_STATUS> {
    let package: Vec<u16> = "Schannel".encode_utf16().collect();
    let package = UNICODE_STRING {
        Length: 16,
        MaximumLength: 16,
        Buffer: package.as_ptr() as *mut u16,
    };
    let mut handle = SecHandle::INVALID;
    // TLS 1.3 only, everything else disabled (0 would leave old protocols at the defaults).
    let mut tls =
        kemu::testing::sspi::client_tls_parameters(!ksys::schannel::SP_PROT_TLS1_3_CLIENT);
    let mut creds = kemu::testing::sspi::client_credentials(&mut tls);
    let context = op.begin()?;
    // SAFETY: valid arguments; the out-parameters outlive the callback (we wait for it).
    let queued = unsafe {
        SspiAcquireCredentialsHandleAsyncW(
            context,
            std::ptr::null(),
            &package,
            SECPKG_CRED_OUTBOUND,
            std::ptr::null_mut(),
            &mut creds as *mut ksys::schannel::SCH_CREDENTIALS as *mut c_void,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut handle,
            std::ptr::null_mut(),
        )
    };
    op.issued(queued)?;
    // SAFETY: the Completion's event; the callback sets it once.
    unsafe {
        KeWaitForSingleObject(
            &completion.event as *const KEVENT as *mut c_void,
            EXECUTIVE,
            KERNEL_MODE,
            0,
            std::ptr::null(),
        )
    };
    let status = SECURITY_STATUS(completion.status.load(Ordering::SeqCst));
    if status == SEC_E_OK {
        // SAFETY: the credential just acquired.
        assert_eq!(unsafe { FreeCredentialsHandle(&mut handle) }, SEC_E_OK);
    }
    Ok(status)
}

fn new_completion() -> Box<Completion> {
    // SAFETY: KEVENT is plain data, initialized right after.
    let event: KEVENT = unsafe { std::mem::zeroed() };
    let c = Box::new(Completion {
        status: AtomicI32::new(0),
        calls: AtomicUsize::new(0),
        event,
    });
    // SAFETY: the event inside the box, which never moves.
    unsafe {
        KeInitializeEvent(
            &c.event as *const KEVENT as *mut KEVENT,
            SYNCHRONIZATION_EVENT,
            0,
        )
    };
    c
}

#[test]
fn async_op_is_reused_under_inline_and_deferred_completion() {
    for schedule in [
        CallbackSchedule::Inline,
        CallbackSchedule::Deferred,
        CallbackSchedule::Random,
    ] {
        let kernel = boot(FaultPlan {
            callbacks: schedule,
            ..FaultPlan::default()
        });
        let calls = kernel
            .run("async op", || {
                let completion = new_completion();
                let mut op =
                    AsyncOp::try_new(on_notify, &*completion as *const Completion as *mut c_void)
                        .unwrap();
                let mut contexts = Vec::new();
                for _ in 0..5 {
                    assert_eq!(acquire_and_free(&mut op, &completion), Ok(SEC_E_OK));
                    contexts.push(op.context() as usize);
                }
                // Two contexts in turn: none is re-initialised right after its own call.
                assert!(contexts.windows(2).all(|w| w[0] != w[1]), "{contexts:x?}");
                assert!(contexts.windows(3).all(|w| w[0] == w[2]), "{contexts:x?}");
                assert_eq!(op.replacements(), 0);
                drop(op);
                completion.calls.load(Ordering::SeqCst)
            })
            .unwrap();
        assert_eq!(calls, 5, "{schedule:?}: one callback per call");
        kernel
            .shutdown()
            .unwrap_or_else(|e| panic!("{schedule:?}: {e}"));
    }
}

#[test]
fn a_stuck_context_is_replaced_and_the_next_call_works() {
    let kernel = boot(FaultPlan {
        wedge_sspi_call: Some(2),
        ..FaultPlan::default()
    });
    let (first, second, stuck, third, replacements) = kernel
        .run("wedge", || {
            let completion = new_completion();
            let mut op =
                AsyncOp::try_new(on_notify, &*completion as *const Completion as *mut c_void)
                    .unwrap();
            let first = acquire_and_free(&mut op, &completion);
            let second = acquire_and_free(&mut op, &completion);
            let stuck = op.is_stuck();
            let third = acquire_and_free(&mut op, &completion);
            (first, second, stuck, third, op.replacements())
        })
        .unwrap();
    assert_eq!(first, Ok(SEC_E_OK));
    assert!(
        second.is_err(),
        "the wedged call reports its queueing error: {second:?}"
    );
    assert!(stuck);
    assert_eq!(third, Ok(SEC_E_OK), "a fresh context after the stuck one");
    assert_eq!(replacements, 1);
    match kernel.shutdown() {
        Ok(()) => {}
        Err(KernelError::Leaks(r)) => panic!("{r}"),
        Err(e) => panic!("{e}"),
    }
}
