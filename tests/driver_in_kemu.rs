//! The wsktls driver, linked natively, running in kemu: load, open, GET_VERSION and its error
//! paths, access control, close, unload with zero leaks — and load under allocation failure at
//! every allocation DriverEntry makes. Each test runs in its own process (the natively linked
//! driver's statics are process-wide).

use kemu::testing::isolated;
use kemu::{Caller, FaultPlan, Kernel, KernelConfig, KernelError, NativeDriver};
use ksys::ntdef::{
    NTSTATUS, STATUS_ACCESS_DENIED, STATUS_BUFFER_TOO_SMALL, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_HANDLE, STATUS_INVALID_PARAMETER,
    STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS,
};
use proto::{GetVersionResponse, IOCTL_WSKTLS_GET_VERSION, WIRE_VERSION};

const DEVICE_PATH: &str = r"\\.\WskTls";

fn wsktls() -> NativeDriver {
    NativeDriver {
        service_name: "wsktls",
        entry: wsktls::FxDriverEntry,
        imports: ksys::imports::IMPORT_DIRECTORY,
    }
}

fn boot(plan: FaultPlan) -> Kernel {
    testkit::boot_with_faults(plan)
}

fn status_of(error: KernelError) -> NTSTATUS {
    match error.status() {
        Some(s) => s,
        None => panic!("expected a status, got {error}"),
    }
}

#[test]
fn get_version_round_trip_and_clean_unload() {
    isolated("get_version_round_trip_and_clean_unload", || {
        let kernel = boot(FaultPlan::default());
        kernel.load(wsktls()).expect("DriverEntry");
        let handle = kernel
            .open(DEVICE_PATH, Caller::Administrator)
            .expect("open as administrator");
        let result = kernel
            .ioctl(
                handle,
                IOCTL_WSKTLS_GET_VERSION,
                &[],
                GetVersionResponse::SIZE,
            )
            .expect("GET_VERSION");
        assert_eq!(result.status, STATUS_SUCCESS);
        assert_eq!(result.information, GetVersionResponse::SIZE);
        let response = GetVersionResponse::decode(&result.output).expect("decodes");
        assert_eq!(response.wire_version, WIRE_VERSION);
        assert_eq!(response.driver, wsktls::DRIVER_VERSION);
        assert_eq!((response.kmdf_major, response.kmdf_minor), (1, 15));
        // A larger output buffer gets exactly the response, nothing more.
        let big = kernel
            .ioctl(handle, IOCTL_WSKTLS_GET_VERSION, &[], 64)
            .unwrap();
        assert_eq!(big.information, GetVersionResponse::SIZE);
        assert!(
            big.output[GetVersionResponse::SIZE..]
                .iter()
                .all(|&b| b == 0)
        );
        kernel.close(handle).expect("close");
        assert!(
            kernel
                .debug_log()
                .iter()
                .any(|l| l.text.contains("control device \\Device\\WskTls ready"))
        );
        // The driver says which Windows it runs on and what that means for TLS 1.3.
        assert!(
            kernel.debug_log().iter().any(|l| l
                .text
                .contains("Windows build 22631: TLS 1.2 and 1.3 available")),
            "{:?}",
            kernel.debug_log()
        );
        kernel.unload().expect("unload with zero leaks");
        let usage = kernel.pool_usage();
        let driver_tag = usage
            .get("wskt")
            .expect("framework memory is charged to the driver's tag");
        assert_eq!(driver_tag.live_blocks, 0);
        assert!(driver_tag.allocations >= 4, "{driver_tag:?}");
        kernel.shutdown().expect("clean shutdown");
    });
}

#[test]
fn short_output_buffer_is_rejected_and_nothing_is_written() {
    isolated(
        "short_output_buffer_is_rejected_and_nothing_is_written",
        || {
            let kernel = boot(FaultPlan::default());
            kernel.load(wsktls()).unwrap();
            let handle = kernel.open(DEVICE_PATH, Caller::Administrator).unwrap();
            for length in [0, 1, GetVersionResponse::SIZE - 1] {
                let r = kernel
                    .ioctl(handle, IOCTL_WSKTLS_GET_VERSION, &[], length)
                    .unwrap();
                assert_eq!(r.status, STATUS_BUFFER_TOO_SMALL, "output length {length}");
                assert_eq!(r.information, 0);
                assert_eq!(r.output.len(), length);
                assert!(
                    r.output.iter().all(|&b| b == 0),
                    "bytes written into a short buffer"
                );
            }
            // Input is not accepted by GET_VERSION: a precise error, not a silent success.
            let r = kernel
                .ioctl(
                    handle,
                    IOCTL_WSKTLS_GET_VERSION,
                    &[1, 2, 3],
                    GetVersionResponse::SIZE,
                )
                .unwrap();
            assert_ne!(r.status, STATUS_SUCCESS);
            assert_eq!(r.information, 0);
            kernel.close(handle).unwrap();
            kernel.shutdown().expect("no leaks");
        },
    );
}

#[test]
fn unknown_code_and_bad_handles_get_precise_errors() {
    isolated("unknown_code_and_bad_handles_get_precise_errors", || {
        let kernel = boot(FaultPlan::default());
        kernel.load(wsktls()).unwrap();
        let handle = kernel.open(DEVICE_PATH, Caller::Administrator).unwrap();
        let unknown = ksys::io::ctl_code(proto::FILE_DEVICE_WSKTLS, 0xFFF, 0, 0);
        let r = kernel.ioctl(handle, unknown, &[0; 8], 8).unwrap();
        assert_eq!(r.status, STATUS_INVALID_DEVICE_REQUEST);
        assert_eq!(r.information, 0);
        let too_big = vec![0u8; kemu::MAX_IOCTL_BUFFER + 1];
        assert_eq!(
            status_of(kernel.ioctl(handle, unknown, &too_big, 0).unwrap_err()),
            STATUS_INVALID_PARAMETER
        );
        kernel.close(handle).unwrap();
        assert_eq!(
            status_of(
                kernel
                    .ioctl(handle, IOCTL_WSKTLS_GET_VERSION, &[], 24)
                    .unwrap_err()
            ),
            STATUS_INVALID_HANDLE
        );
        assert_eq!(
            status_of(kernel.close(handle).unwrap_err()),
            STATUS_INVALID_HANDLE
        );
        kernel.shutdown().expect("no leaks");
    });
}

#[test]
fn only_administrators_may_open_the_device() {
    isolated("only_administrators_may_open_the_device", || {
        let kernel = boot(FaultPlan::default());
        kernel.load(wsktls()).unwrap();
        assert_eq!(
            status_of(kernel.open(DEVICE_PATH, Caller::User).unwrap_err()),
            STATUS_ACCESS_DENIED
        );
        assert_eq!(
            status_of(
                kernel
                    .open(r"\\.\NoSuchDevice", Caller::Administrator)
                    .unwrap_err()
            ),
            STATUS_OBJECT_NAME_NOT_FOUND
        );
        let system = kernel
            .open(r"\DosDevices\wsktls", Caller::System)
            .expect("SYSTEM may open; names are case-insensitive");
        kernel.close(system).unwrap();
        kernel.shutdown().expect("no leaks");
    });
}

#[test]
fn open_handle_at_unload_is_reported_as_a_leak() {
    isolated("open_handle_at_unload_is_reported_as_a_leak", || {
        let kernel = boot(FaultPlan::default());
        kernel.load(wsktls()).unwrap();
        let _forgotten = kernel.open(DEVICE_PATH, Caller::Administrator).unwrap();
        match kernel.unload() {
            Err(KernelError::Leaks(report)) => {
                assert!(
                    report
                        .leaks
                        .iter()
                        .any(|l| l.kind == kemu::LeakKind::Handle),
                    "{report}"
                );
            }
            other => panic!("expected a leak report, got {other:?}"),
        }
    });
}

#[test]
fn allocation_failure_at_every_driver_entry_allocation_fails_cleanly() {
    isolated(
        "allocation_failure_at_every_driver_entry_allocation_fails_cleanly",
        || {
            let mut failures_seen = 0;
            for n in 1.. {
                let kernel = boot(FaultPlan {
                    fail_allocation: Some(n),
                    ..FaultPlan::default()
                });
                let outcome = kernel.load(wsktls());
                if kernel.injected_failures() == 0 {
                    outcome.expect("load without an injected failure");
                    kernel.shutdown().expect("clean unload");
                    break;
                }
                match outcome {
                    Err(KernelError::Status(status, _)) => {
                        assert_eq!(status, STATUS_INSUFFICIENT_RESOURCES, "allocation {n}")
                    }
                    other => panic!(
                        "allocation {n} failed: expected a clean STATUS_INSUFFICIENT_RESOURCES, got {other:?}"
                    ),
                }
                failures_seen += 1;
                kernel
                    .shutdown()
                    .unwrap_or_else(|e| panic!("allocation {n}: {e}"));
            }
            assert!(
                failures_seen >= 6,
                "only {failures_seen} allocation points exercised"
            );
        },
    );
}

#[test]
fn the_same_session_under_many_seeds() {
    isolated("the_same_session_under_many_seeds", || {
        let base = KernelConfig::from_env().seed;
        for seed in base..base + 8 {
            let kernel = Kernel::boot(KernelConfig {
                seed,
                faults: FaultPlan {
                    worker_delay: std::time::Duration::from_millis(2),
                    ..FaultPlan::default()
                },
                ..KernelConfig::from_env()
            });
            kernel.load(wsktls()).unwrap();
            let handles: Vec<_> = (0..3)
                .map(|_| kernel.open(DEVICE_PATH, Caller::Administrator).unwrap())
                .collect();
            for &h in &handles {
                let r = kernel
                    .ioctl(h, IOCTL_WSKTLS_GET_VERSION, &[], GetVersionResponse::SIZE)
                    .unwrap();
                assert_eq!(r.status, STATUS_SUCCESS, "seed {seed}");
            }
            for h in handles {
                kernel.close(h).unwrap();
            }
            kernel
                .shutdown()
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
    });
}
