//! kemu's KMDF subset driven by a test-only driver: pended requests and CancelIoEx, the
//! cancelable-state race, file cleanup/close, WDF and I/O work items — and deliberately broken
//! driver paths the verifier must catch (a leaked allocation, a PASSIVE-only call at
//! DISPATCH_LEVEL, a request completed twice). Each test runs in its own process.

use std::time::Duration;

use kemu::testing::isolated;
use kemu::{
    Caller, FaultPlan, Kernel, KernelConfig, KernelError, LeakKind, NativeDriver, codes,
    wdf_violation,
};
use ksys::ntdef::{STATUS_CANCELLED, STATUS_SUCCESS};

/// The test-only driver: a control device whose IOCTLs exercise one framework feature each.
mod test_driver {
    use core::ffi::c_void;
    use core::sync::atomic::{AtomicUsize, Ordering};

    use ksys::imports::*;
    use ksys::io::{
        DELAYED_WORK_QUEUE, DEVICE_OBJECT, EXECUTIVE, IO_WORKITEM, KERNEL_MODE, KEVENT,
        NOTIFICATION_EVENT, ctl_code,
    };
    use ksys::kmdf::{self, ControlDeviceConfig, DriverEntryArgs, FileCallbacks, Request};
    use ksys::ntdef::*;
    use ksys::utf16;
    use ksys::wdf::functions::*;
    use ksys::wdf::types::*;

    pub const PEND: u32 = ctl_code(0x9000, 0x801, 0, 0);
    pub const COMPLETE_PENDED: u32 = ctl_code(0x9000, 0x802, 0, 0);
    pub const LEAK_POOL: u32 = ctl_code(0x9000, 0x803, 0, 0);
    pub const WAIT_AT_DISPATCH: u32 = ctl_code(0x9000, 0x804, 0, 0);
    pub const COMPLETE_TWICE: u32 = ctl_code(0x9000, 0x805, 0, 0);
    pub const WDF_WORK_ITEM: u32 = ctl_code(0x9000, 0x806, 0, 0);
    pub const IO_WORK_ITEM: u32 = ctl_code(0x9000, 0x807, 0, 0);
    pub const COUNTERS: u32 = ctl_code(0x9000, 0x808, 0, 0);

    static PENDED: AtomicUsize = AtomicUsize::new(0);
    static DEVICE: AtomicUsize = AtomicUsize::new(0);
    static WORK_ITEM: AtomicUsize = AtomicUsize::new(0);
    static WORK_RUNS: AtomicUsize = AtomicUsize::new(0);
    static CLEANUPS: AtomicUsize = AtomicUsize::new(0);
    static CLOSES: AtomicUsize = AtomicUsize::new(0);
    static IO_WORK_IRQL: AtomicUsize = AtomicUsize::new(99);

    const CONFIG: ControlDeviceConfig = ControlDeviceConfig {
        name: utf16!("\\Device\\KemuTest"),
        symbolic_link: utf16!("\\DosDevices\\KemuTest"),
        sddl: utf16!("D:P(A;;GA;;;SY)(A;;GA;;;BA)"),
        file_callbacks: Some(FileCallbacks {
            create: None,
            cleanup: Some(file_cleanup),
            close: Some(file_close),
        }),
    };

    pub fn driver_entry(args: &DriverEntryArgs) -> Result<(), NTSTATUS> {
        let driver = kmdf::create_non_pnp_driver(args, unload)?;
        let device = kmdf::create_control_device(driver, &CONFIG)?;
        kmdf::create_default_parallel_queue(device, device_control)?;
        DEVICE.store(device.as_raw() as usize, Ordering::SeqCst);
        kmdf::finish_initializing(device);
        Ok(())
    }

    extern "win64" fn unload(_driver: WDFDRIVER) {
        WORK_ITEM.store(0, Ordering::SeqCst);
    }

    extern "win64" fn file_cleanup(_file: WDFFILEOBJECT) {
        CLEANUPS.fetch_add(1, Ordering::SeqCst);
        finish_pended(STATUS_CANCELLED);
    }

    extern "win64" fn file_close(_file: WDFFILEOBJECT) {
        CLOSES.fetch_add(1, Ordering::SeqCst);
    }

    fn request(raw: usize) -> WDFREQUEST {
        // SAFETY: `raw` is a request handle the framework presented to this driver.
        unsafe { WDFREQUEST::from_raw(raw as *mut c_void) }
    }

    /// EvtRequestCancel: runs only when the framework claimed the request; it completes it.
    extern "win64" fn cancel(req: WDFREQUEST) {
        let _ =
            PENDED.compare_exchange(req.as_raw() as usize, 0, Ordering::SeqCst, Ordering::SeqCst);
        // SAFETY: the cancel callback owns the request.
        unsafe { WdfRequestComplete(req, STATUS_CANCELLED) };
    }

    /// Completes the pended request unless its cancel callback owns it.
    fn finish_pended(status: NTSTATUS) -> bool {
        let raw = PENDED.swap(0, Ordering::SeqCst);
        if raw == 0 {
            return false;
        }
        // SAFETY: we took the stored handle; Unmark tells whether we still own the request.
        unsafe {
            if WdfRequestUnmarkCancelable(request(raw)) == STATUS_SUCCESS {
                WdfRequestComplete(request(raw), status);
            }
        }
        true
    }

    extern "win64" fn work_item(_wi: WDFWORKITEM) {
        WORK_RUNS.fetch_add(1, Ordering::SeqCst);
    }

    unsafe extern "win64" fn io_work_routine(_device: *mut DEVICE_OBJECT, context: *mut c_void) {
        // SAFETY: a plain query; the context is the caller's live event.
        unsafe {
            IO_WORK_IRQL.store(KeGetCurrentIrql() as usize, Ordering::SeqCst);
            KeSetEvent(context as *mut KEVENT, 0, 0);
        }
    }

    fn wdf_work_item(device: WDFDEVICE) -> Result<usize, NTSTATUS> {
        let mut wi = WORK_ITEM.load(Ordering::SeqCst);
        if wi == 0 {
            let mut config = WDF_WORKITEM_CONFIG {
                Size: 24,
                EvtWorkItemFunc: Some(work_item),
                AutomaticSerialization: 0,
            };
            let mut attrs = WDF_OBJECT_ATTRIBUTES::init();
            attrs.ParentObject = device.as_object();
            let mut handle = WDFWORKITEM::NULL;
            // SAFETY: valid config and attributes; the device is live.
            let status = unsafe { WdfWorkItemCreate(&mut config, &mut attrs, &mut handle) };
            if !nt_success(status) {
                return Err(status);
            }
            wi = handle.as_raw() as usize;
            WORK_ITEM.store(wi, Ordering::SeqCst);
        }
        // SAFETY: a live work item created above.
        let handle = unsafe { WDFWORKITEM::from_raw(wi as *mut c_void) };
        let before = WORK_RUNS.load(Ordering::SeqCst);
        // SAFETY: as above; Flush at PASSIVE_LEVEL outside the callback.
        unsafe {
            WdfWorkItemEnqueue(handle);
            WdfWorkItemEnqueue(handle);
            WdfWorkItemEnqueue(handle);
            WdfWorkItemFlush(handle);
        }
        Ok(WORK_RUNS.load(Ordering::SeqCst) - before)
    }

    fn io_work_item(device: WDFDEVICE) -> Result<usize, NTSTATUS> {
        // SAFETY: the device is live; the event lives on this stack until the wait returns.
        unsafe {
            let object = WdfDeviceWdmGetDeviceObject(device);
            let wi: *mut IO_WORKITEM = IoAllocateWorkItem(object);
            if wi.is_null() {
                return Err(STATUS_INSUFFICIENT_RESOURCES);
            }
            let mut event: KEVENT = core::mem::zeroed();
            KeInitializeEvent(&mut event, NOTIFICATION_EVENT, 0);
            IoQueueWorkItem(
                wi,
                Some(io_work_routine),
                DELAYED_WORK_QUEUE,
                &mut event as *mut KEVENT as *mut c_void,
            );
            KeWaitForSingleObject(
                &mut event as *mut KEVENT as *mut c_void,
                EXECUTIVE,
                KERNEL_MODE,
                0,
                core::ptr::null(),
            );
            IoFreeWorkItem(wi);
        }
        Ok(IO_WORK_IRQL.load(Ordering::SeqCst))
    }

    extern "win64" fn device_control(
        _queue: WDFQUEUE,
        req: WDFREQUEST,
        _out: usize,
        _in: usize,
        code: u32,
    ) {
        let r = Request::from_presented(req);
        // SAFETY: the device handle stored at DriverEntry stays live until unload.
        let device = unsafe { WDFDEVICE::from_raw(DEVICE.load(Ordering::SeqCst) as *mut c_void) };
        let outcome: Result<usize, NTSTATUS> = match code {
            PEND => {
                // SAFETY: the request is presented to us.
                match unsafe { WdfRequestMarkCancelableEx(req, Some(cancel)) } {
                    STATUS_SUCCESS => {
                        PENDED.store(req.as_raw() as usize, Ordering::SeqCst);
                        return;
                    }
                    status => Err(status),
                }
            }
            COMPLETE_PENDED => Ok(usize::from(finish_pended(STATUS_SUCCESS))),
            LEAK_POOL => {
                // SAFETY: a plain allocation, deliberately never freed (the bug under test).
                let p = unsafe {
                    ExAllocatePool2(POOL_FLAG_NON_PAGED, 48, u32::from_le_bytes(*b"Leak"))
                };
                if p.is_null() {
                    Err(STATUS_INSUFFICIENT_RESOURCES)
                } else {
                    Ok(0)
                }
            }
            WAIT_AT_DISPATCH => {
                let mut lock: KSPIN_LOCK = 0;
                let delay = -10_000i64;
                // SAFETY: valid arguments; the wait at DISPATCH_LEVEL is the bug under test.
                unsafe {
                    let old = KeAcquireSpinLockRaiseToDpc(&mut lock);
                    KeDelayExecutionThread(0, 0, &delay);
                    KeReleaseSpinLock(&mut lock, old);
                }
                Ok(0)
            }
            COMPLETE_TWICE => {
                // SAFETY: the first completion is legal; the second is the bug under test.
                unsafe { WdfRequestComplete(req, STATUS_SUCCESS) };
                Ok(0)
            }
            WDF_WORK_ITEM => wdf_work_item(device),
            IO_WORK_ITEM => io_work_item(device),
            COUNTERS => Ok(CLEANUPS.load(Ordering::SeqCst) * 100 + CLOSES.load(Ordering::SeqCst)),
            _ => Err(STATUS_INVALID_DEVICE_REQUEST),
        };
        match outcome {
            Ok(value) => {
                let bytes = (value as u64).to_le_bytes();
                match r.write_output(&bytes) {
                    Ok(n) => r.complete(STATUS_SUCCESS, n),
                    Err(status) => r.complete(status, 0),
                }
            }
            Err(status) => r.complete(status, 0),
        }
    }
}

ksys::kmdf_driver_entry!(test_driver::driver_entry);

const PATH: &str = r"\\.\KemuTest";

fn kernel(plan: FaultPlan) -> Kernel {
    let k = Kernel::boot(KernelConfig {
        faults: plan,
        ..KernelConfig::from_env()
    });
    k.load(NativeDriver {
        service_name: "kemutest",
        entry: FxDriverEntry,
        imports: ksys::imports::IMPORT_DIRECTORY,
    })
    .expect("load");
    k
}

fn value(r: &kemu::IoResult) -> u64 {
    assert_eq!(r.status, STATUS_SUCCESS, "{r:?}");
    u64::from_le_bytes(r.output[..8].try_into().unwrap())
}

#[test]
fn pended_request_is_cancelled_by_cancel_io() {
    isolated("pended_request_is_cancelled_by_cancel_io", || {
        for schedule in [
            kemu::CallbackSchedule::Inline,
            kemu::CallbackSchedule::Deferred,
            kemu::CallbackSchedule::Random,
        ] {
            let k = kernel(FaultPlan {
                callbacks: schedule,
                ..FaultPlan::default()
            });
            let h = k.open(PATH, Caller::Administrator).unwrap();
            let pending = k.ioctl_async(h, test_driver::PEND, &[], 0).unwrap();
            assert!(
                pending
                    .wait_timeout(Duration::from_millis(20))
                    .unwrap()
                    .is_none(),
                "completed without being asked"
            );
            assert!(pending.cancel().unwrap(), "a cancel routine must run");
            let r = pending.wait().unwrap();
            assert_eq!(r.status, STATUS_CANCELLED);
            k.close(h).unwrap();
            k.shutdown().unwrap_or_else(|e| panic!("{schedule:?}: {e}"));
        }
    });
}

#[test]
fn pended_request_completed_by_the_driver_and_cancel_after_completion_is_harmless() {
    isolated(
        "pended_request_completed_by_the_driver_and_cancel_after_completion_is_harmless",
        || {
            let k = kernel(FaultPlan::default());
            let h = k.open(PATH, Caller::Administrator).unwrap();
            let pending = k.ioctl_async(h, test_driver::PEND, &[], 0).unwrap();
            assert_eq!(
                value(&k.ioctl(h, test_driver::COMPLETE_PENDED, &[], 8).unwrap()),
                1
            );
            assert_eq!(pending.wait().unwrap().status, STATUS_SUCCESS);
            assert!(!pending.cancel().unwrap(), "nothing left to cancel");
            k.close(h).unwrap();
            k.shutdown().unwrap();
        },
    );
}

#[test]
fn cancel_racing_completion_never_completes_twice() {
    isolated("cancel_racing_completion_never_completes_twice", || {
        let k = kernel(FaultPlan::default());
        let h = k.open(PATH, Caller::Administrator).unwrap();
        for _ in 0..50 {
            let pending = k.ioctl_async(h, test_driver::PEND, &[], 0).unwrap();
            std::thread::scope(|s| {
                s.spawn(|| pending.cancel().unwrap());
                s.spawn(|| k.ioctl(h, test_driver::COMPLETE_PENDED, &[], 8).unwrap());
            });
            let status = pending.wait().unwrap().status;
            assert!(
                status == STATUS_SUCCESS || status == STATUS_CANCELLED,
                "{status:#x}"
            );
        }
        k.close(h).unwrap();
        k.shutdown().unwrap();
    });
}

#[test]
fn closing_a_handle_runs_cleanup_then_close() {
    isolated("closing_a_handle_runs_cleanup_then_close", || {
        let k = kernel(FaultPlan::default());
        let h = k.open(PATH, Caller::Administrator).unwrap();
        let pending = k.ioctl_async(h, test_driver::PEND, &[], 0).unwrap();
        k.close(h).unwrap();
        assert_eq!(
            pending.wait().unwrap().status,
            STATUS_CANCELLED,
            "EvtFileCleanup finishes the handle's request"
        );
        let h2 = k.open(PATH, Caller::Administrator).unwrap();
        assert_eq!(
            value(&k.ioctl(h2, test_driver::COUNTERS, &[], 8).unwrap()),
            101
        );
        k.close(h2).unwrap();
        k.shutdown().unwrap();
    });
}

#[test]
fn wdf_work_items_coalesce_and_flush() {
    isolated("wdf_work_items_coalesce_and_flush", || {
        let k = kernel(FaultPlan {
            worker_delay: Duration::from_millis(30),
            ..FaultPlan::default()
        });
        let h = k.open(PATH, Caller::Administrator).unwrap();
        // Three enqueues while queued (the worker waits 0..30 ms first) run the callback once,
        // unless the worker picked it up in between; never more than three times.
        let runs = value(&k.ioctl(h, test_driver::WDF_WORK_ITEM, &[], 8).unwrap());
        assert!((1..=3).contains(&runs), "{runs}");
        assert!(
            value(&k.ioctl(h, test_driver::WDF_WORK_ITEM, &[], 8).unwrap()) >= 1,
            "flush waited for the run"
        );
        k.close(h).unwrap();
        k.shutdown().unwrap();
    });
}

#[test]
fn io_work_items_run_at_passive_on_a_worker() {
    isolated("io_work_items_run_at_passive_on_a_worker", || {
        let k = kernel(FaultPlan::default());
        let h = k.open(PATH, Caller::Administrator).unwrap();
        assert_eq!(
            value(&k.ioctl(h, test_driver::IO_WORK_ITEM, &[], 8).unwrap()),
            0
        );
        k.close(h).unwrap();
        k.shutdown().unwrap();
    });
}

#[test]
fn verifier_reports_a_leaked_allocation_at_unload() {
    isolated("verifier_reports_a_leaked_allocation_at_unload", || {
        let k = kernel(FaultPlan::default());
        let h = k.open(PATH, Caller::Administrator).unwrap();
        assert_eq!(
            k.ioctl(h, test_driver::LEAK_POOL, &[], 8).unwrap().status,
            STATUS_SUCCESS
        );
        k.close(h).unwrap();
        match k.unload() {
            Err(KernelError::Leaks(report)) => {
                assert_eq!(report.leaks.len(), 1, "{report}");
                let leak = &report.leaks[0];
                assert_eq!(
                    (leak.kind, leak.tag.as_str(), leak.size),
                    (LeakKind::Pool, "Leak", 48)
                );
                assert!(leak.site.activity.starts_with("IOCTL 0x"), "{}", leak.site);
            }
            other => panic!("expected a leak report, got {other:?}"),
        }
    });
}

#[test]
fn verifier_stops_a_passive_only_call_at_dispatch() {
    isolated("verifier_stops_a_passive_only_call_at_dispatch", || {
        let k = kernel(FaultPlan::default());
        let h = k.open(PATH, Caller::Administrator).unwrap();
        match k.ioctl(h, test_driver::WAIT_AT_DISPATCH, &[], 8) {
            Err(KernelError::Bugcheck(b)) => {
                assert_eq!(b.code, codes::IRQL_NOT_LESS_OR_EQUAL, "{b}");
                assert!(b.message.contains("KeDelayExecutionThread"), "{b}");
            }
            other => panic!("expected a bugcheck, got {other:?}"),
        }
        assert!(k.bugcheck().is_some());
        assert!(
            matches!(
                k.open(PATH, Caller::Administrator),
                Err(KernelError::Bugcheck(_))
            ),
            "a stopped kernel takes no calls"
        );
    });
}

#[test]
fn verifier_stops_a_request_completed_twice() {
    isolated("verifier_stops_a_request_completed_twice", || {
        let k = kernel(FaultPlan::default());
        let h = k.open(PATH, Caller::Administrator).unwrap();
        match k.ioctl(h, test_driver::COMPLETE_TWICE, &[], 8) {
            Err(KernelError::Bugcheck(b)) => {
                assert_eq!(b.code, codes::WDF_VIOLATION, "{b}");
                assert!(
                    matches!(
                        b.parameters[0],
                        wdf_violation::INVALID_HANDLE | wdf_violation::REQUEST_ALREADY_COMPLETED
                    ),
                    "{b}"
                );
            }
            other => panic!("expected a bugcheck, got {other:?}"),
        }
    });
}

#[test]
fn every_kmdf_function_ksys_declares_is_implemented() {
    for entry in ksys::wdf::functions::WDF_FUNCTION_DIRECTORY {
        assert!(
            kemu::exports::wdf_function_implemented(entry.index),
            "{} (#{}) missing",
            entry.name,
            entry.index
        );
    }
    assert!(
        !kemu::exports::wdf_function_implemented(0),
        "entry 0 is not implemented and must say so"
    );
}
