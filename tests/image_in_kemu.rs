//! The shipped image itself — `target/x86_64-pc-windows-msvc/{debug,release}/wsktls.sys`, built
//! by `cargo xtask test` before the tests — loaded by kemu's PE loader and driven like the
//! natively linked driver: its own statics per kernel, its heap in kemu's pool.

use std::path::PathBuf;

use kemu::{Caller, FaultPlan, Kernel, KernelError};
use ksys::ntdef::{
    STATUS_ACCESS_DENIED, STATUS_BUFFER_TOO_SMALL, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_SUCCESS,
};
use proto::{GetVersionResponse, IOCTL_WSKTLS_GET_VERSION};

const DEVICE: &str = r"\\.\WskTls";

fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| !v.is_empty() && v != "false" && v != "0")
        .unwrap_or(false)
}

/// The built images; outside CI, none yet means "skip" (CI always builds them first).
fn images() -> Vec<PathBuf> {
    let found: Vec<PathBuf> = ["debug", "release"]
        .iter()
        .map(|p| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/x86_64-pc-windows-msvc")
                .join(p)
                .join("wsktls.sys")
        })
        .filter(|p| p.exists())
        .collect();
    assert!(
        !found.is_empty() || !in_ci(),
        "no wsktls.sys built: run `cargo xtask test`"
    );
    if found.is_empty() {
        eprintln!("SKIPPED: no wsktls.sys built yet (run `cargo xtask driver`)");
    }
    found
}

fn boot(plan: FaultPlan) -> Kernel {
    testkit::boot_with_faults(plan)
}

#[test]
fn the_shipped_image_serves_get_version_and_unloads_clean() {
    for image in images() {
        let kernel = boot(FaultPlan::default());
        kernel
            .load_image("wsktls", &image)
            .unwrap_or_else(|e| panic!("{}: {e}", image.display()));
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
        let h = kernel.open(DEVICE, Caller::Administrator).unwrap();
        let r = kernel
            .ioctl(h, IOCTL_WSKTLS_GET_VERSION, &[], GetVersionResponse::SIZE)
            .unwrap();
        assert_eq!(
            (r.status, r.information),
            (STATUS_SUCCESS, GetVersionResponse::SIZE)
        );
        let v = GetVersionResponse::decode(&r.output).unwrap();
        assert_eq!(v.driver, wsktls::DRIVER_VERSION, "{}", image.display());
        let short = kernel.ioctl(h, IOCTL_WSKTLS_GET_VERSION, &[], 3).unwrap();
        assert_eq!(short.status, STATUS_BUFFER_TOO_SMALL);
        assert!(short.output.iter().all(|&b| b == 0));
        let unknown = kernel
            .ioctl(
                h,
                ksys::io::ctl_code(proto::FILE_DEVICE_WSKTLS, 0xFFF, 0, 0),
                &[],
                8,
            )
            .unwrap();
        assert_eq!(unknown.status, STATUS_INVALID_DEVICE_REQUEST);
        assert_eq!(
            kernel.open(DEVICE, Caller::User).unwrap_err().status(),
            Some(STATUS_ACCESS_DENIED)
        );
        kernel.close(h).unwrap();
        kernel
            .unload()
            .unwrap_or_else(|e| panic!("{}: {e}", image.display()));
        assert_eq!(kernel.pool_usage()["wskt"].live_blocks, 0);
        kernel.shutdown().unwrap();
    }
}

#[test]
fn two_kernels_each_run_their_own_copy_of_the_image() {
    for image in images() {
        let (a, b) = (boot(FaultPlan::default()), boot(FaultPlan::default()));
        a.load_image("wsktls", &image).unwrap();
        b.load_image("wsktls", &image).unwrap();
        std::thread::scope(|scope| {
            for k in [&a, &b] {
                scope.spawn(move || {
                    let h = k.open(DEVICE, Caller::Administrator).unwrap();
                    for _ in 0..50 {
                        assert_eq!(
                            k.ioctl(h, IOCTL_WSKTLS_GET_VERSION, &[], 24)
                                .unwrap()
                                .status,
                            STATUS_SUCCESS
                        );
                    }
                    k.close(h).unwrap();
                });
            }
        });
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    }
}

#[test]
fn the_image_fails_cleanly_at_every_driver_entry_allocation() {
    for image in images() {
        let mut failures = 0;
        for n in 1.. {
            let kernel = boot(FaultPlan {
                fail_allocation: Some(n),
                ..FaultPlan::default()
            });
            let outcome = kernel.load_image("wsktls", &image);
            if kernel.injected_failures() == 0 {
                outcome.unwrap();
                kernel.shutdown().unwrap();
                break;
            }
            match outcome {
                Err(KernelError::Status(s, _)) => {
                    assert_eq!(s, STATUS_INSUFFICIENT_RESOURCES, "allocation {n}")
                }
                other => panic!("allocation {n}: {other:?}"),
            }
            failures += 1;
            kernel
                .shutdown()
                .unwrap_or_else(|e| panic!("allocation {n}: {e}"));
        }
        assert!(failures >= 6, "{failures}");
    }
}

#[test]
fn an_import_kemu_lacks_fails_the_load_naming_it() {
    for image in images() {
        let mut data = std::fs::read(&image).unwrap();
        let at = data
            .windows(11)
            .position(|w| w == b"vDbgPrintEx")
            .expect("the image imports vDbgPrintEx");
        data[at + 10] = b'Y';
        let patched = std::env::temp_dir().join(format!("kemu-patched-{}.sys", std::process::id()));
        std::fs::write(&patched, &data).unwrap();
        let kernel = boot(FaultPlan::default());
        match kernel.load_image("wsktls", &patched) {
            Err(KernelError::Load(why)) => {
                assert!(why.contains("ntoskrnl.exe!vDbgPrintEY"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_file(&patched);
        assert!(matches!(
            kernel.load_image(
                "wsktls",
                &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")
            ),
            Err(KernelError::Load(_))
        ));
        kernel.shutdown().unwrap();
    }
}
