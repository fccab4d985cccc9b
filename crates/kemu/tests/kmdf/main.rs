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

mod test_driver;

ksys::kmdf_driver_entry!(test_driver::driver_entry);

const PATH: &str = r"\\.\KemuTest";

fn kernel(plan: FaultPlan) -> Kernel {
    // These tests provoke bugchecks through IOCTLs and look at them: a kemu caller thread takes
    // each IOCTL, so the bugcheck comes back as an error instead of ending the process.
    kernel_with(KernelConfig {
        faults: plan,
        dispatch_on_caller: false,
        ..KernelConfig::from_env()
    })
}

/// A kernel with the test driver loaded.
fn kernel_with(config: KernelConfig) -> Kernel {
    let k = Kernel::boot(config);
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

/// kemu runs a work item that a WSK completion queued on the poller thread that delivered it
/// (one thread switch per network event, as on Windows, where the DPC needs none and the worker
/// one); a work item there that waits for the network still gets its completion.
#[test]
fn a_work_item_queued_by_a_wsk_completion_runs_on_the_poller_and_may_wait_for_the_network() {
    use std::io::{Read, Write};
    isolated(
        "a_work_item_queued_by_a_wsk_completion_runs_on_the_poller_and_may_wait_for_the_network",
        || {
            kemu::exports::bind_native(ksys::imports::IMPORT_DIRECTORY);
            let k = kernel(FaultPlan::default());
            let h = k.open(PATH, Caller::Administrator).unwrap();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let result = std::thread::scope(|scope| {
                let call =
                    scope.spawn(|| k.ioctl(h, test_driver::WSK_WORK_ITEM, &port.to_le_bytes(), 8));
                let (mut peer, _) = listener.accept().unwrap();
                let mut ready = [0u8; 1];
                peer.read_exact(&mut ready).unwrap();
                peer.write_all(b"first").unwrap();
                // Long enough for the work item to be waiting on the poller thread.
                std::thread::sleep(Duration::from_millis(200));
                peer.write_all(b"second!").unwrap();
                let result = call.join().unwrap().unwrap();
                drop(peer);
                result
            });
            let v = value(&result);
            assert_eq!(
                v & 0xFFFF_FFFF,
                7,
                "the work item's own receive (u32::MAX: timed out)"
            );
            assert_eq!(v >> 32, 1, "the work item ran on the WSK poller");
            k.close(h).unwrap();
            k.shutdown().unwrap();
        },
    );
}

/// The same for the DPC thread: a work item a DPC queued runs there after the DPC, and a wait in
/// it still sees a later DPC run.
#[test]
fn a_work_item_queued_by_a_dpc_runs_on_the_dpc_thread_and_may_wait_for_another_dpc() {
    isolated(
        "a_work_item_queued_by_a_dpc_runs_on_the_dpc_thread_and_may_wait_for_another_dpc",
        || {
            let k = kernel(FaultPlan::default());
            let h = k.open(PATH, Caller::Administrator).unwrap();
            let v = value(&k.ioctl(h, test_driver::DPC_WORK_ITEM, &[], 8).unwrap());
            assert_eq!(
                v & 0xFFFF_FFFF,
                1,
                "the work item's wait for the second DPC"
            );
            assert_eq!(v >> 32, 1, "the work item ran on the DPC thread");
            k.close(h).unwrap();
            k.shutdown().unwrap();
        },
    );
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
fn sequential_queue_presents_one_request_at_a_time() {
    isolated("sequential_queue_presents_one_request_at_a_time", || {
        test_driver::SEQUENTIAL.store(1, std::sync::atomic::Ordering::SeqCst);
        let k = kernel(FaultPlan::default());
        let h = k.open(PATH, Caller::Administrator).unwrap();
        let first = k.ioctl_async(h, test_driver::PEND, &[], 0).unwrap();
        let second = k.ioctl_async(h, test_driver::COUNTERS, &[], 8).unwrap();
        let third = k.ioctl_async(h, test_driver::COUNTERS, &[], 8).unwrap();
        assert!(
            second
                .wait_timeout(Duration::from_millis(30))
                .unwrap()
                .is_none(),
            "presented while another request is owned by the driver"
        );
        // A request still waiting in the queue is completed by the framework when cancelled.
        assert!(third.cancel().unwrap());
        assert_eq!(third.wait().unwrap().status, STATUS_CANCELLED);
        assert!(!second.is_complete());
        assert!(first.cancel().unwrap());
        assert_eq!(first.wait().unwrap().status, STATUS_CANCELLED);
        assert_eq!(
            second.wait().unwrap().status,
            STATUS_SUCCESS,
            "next request presented"
        );
        k.close(h).unwrap();
        k.shutdown().unwrap();
    });
}

#[test]
fn contexts_locks_references_and_deletion() {
    isolated("contexts_locks_references_and_deletion", || {
        let k = kernel(FaultPlan::default());
        let h = k.open(PATH, Caller::Administrator).unwrap();
        // Cleanup callbacks at delete, destroy callbacks at the last dereference: the
        // object's own and those of the context WdfObjectAllocateContext added (whose destroy
        // still finds its context).
        assert_eq!(
            value(&k.ioctl(h, test_driver::OBJECTS, &[], 8).unwrap()),
            202
        );
        assert_eq!(
            value(&k.ioctl(h, test_driver::OBJECTS, &[], 8).unwrap()),
            202
        );
        k.close(h).unwrap();
        k.shutdown().unwrap();
    });
}

#[test]
fn request_file_object_belongs_to_the_device() {
    isolated("request_file_object_belongs_to_the_device", || {
        let k = kernel(FaultPlan::default());
        let h = k.open(PATH, Caller::Administrator).unwrap();
        assert_eq!(
            value(&k.ioctl(h, test_driver::FILE_DEVICE, &[], 8).unwrap()),
            1
        );
        k.close(h).unwrap();
        k.shutdown().unwrap();
    });
}

#[test]
fn an_unimplemented_kmdf_entry_stops_the_kernel_naming_its_index() {
    isolated(
        "an_unimplemented_kmdf_entry_stops_the_kernel_naming_its_index",
        || {
            let k = kernel(FaultPlan::default());
            let h = k.open(PATH, Caller::Administrator).unwrap();
            match k.ioctl(h, test_driver::CALL_UNIMPLEMENTED, &[], 8) {
                Err(KernelError::Bugcheck(b)) => {
                    assert_eq!(b.code, codes::WDF_VIOLATION, "{b}");
                    assert_eq!(b.parameters[0], wdf_violation::UNIMPLEMENTED_FUNCTION);
                    assert_eq!(b.parameters[1], test_driver::UNIMPLEMENTED_INDEX);
                    assert!(b.message.contains("entry 0"), "{b}");
                }
                other => panic!("expected a bugcheck, got {other:?}"),
            }
        },
    );
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

#[test]
fn an_ioctl_runs_on_the_calling_thread_and_a_bugcheck_there_ends_the_process_with_its_report() {
    let name =
        "an_ioctl_runs_on_the_calling_thread_and_a_bugcheck_there_ends_the_process_with_its_report";
    let outcome = kemu::testing::isolated_outcome(name, || {
        let k = kernel_with(KernelConfig {
            dispatch_on_caller: true,
            ..KernelConfig::from_env()
        });
        let h = k.open(PATH, Caller::Administrator).unwrap();
        let _ = k.ioctl(h, test_driver::WAIT_AT_DISPATCH, &[], 8);
        panic!("the IOCTL returned to its caller after a bugcheck");
    });
    let Some(out) = outcome else { return };
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The machine stopped: the report, and the driver-failure status.
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("BUGCHECK 0xA "), "{stderr}");
    // It happened on the test's own thread (libtest names it after the test), inside the call.
    assert!(
        stderr.contains(&format!("on {name} (IOCTL 0x")),
        "not on the calling thread: {stderr}"
    );
}
