//! A fault inside a loaded image stops the kernel with a report naming the image RVA and, with
//! the .pdb beside the image, the function.

use std::path::PathBuf;

use kemu::{FaultPlan, Kernel, KernelConfig, KernelError, codes};

fn images() -> Vec<PathBuf> {
    let root =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/x86_64-pc-windows-msvc");
    let found: Vec<PathBuf> = ["debug", "release"]
        .iter()
        .map(|p| root.join(p).join("wsktls.sys"))
        .filter(|p| p.exists())
        .collect();
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !found.is_empty() || !ci,
        "no wsktls.sys built: run `cargo xtask test`"
    );
    found
}

#[test]
fn calling_discarded_init_code_is_a_bugcheck_naming_the_function() {
    for image in images() {
        let kernel = Kernel::boot(KernelConfig {
            faults: FaultPlan::default(),
            ..KernelConfig::from_env()
        });
        let mapped = kemu::pe::MappedImage::map_file(&image).unwrap();
        mapped.discard_init();
        let entry = mapped.entry() as usize;
        let r = kernel.run("call into discarded INIT", move || {
            // SAFETY: deliberately calling the image's entry point after INIT was discarded; the
            // access faults before any argument is used.
            let f = unsafe { std::mem::transmute::<usize, kemu::DriverEntry>(entry) };
            // SAFETY: as above.
            unsafe { f(std::ptr::null_mut(), std::ptr::null_mut()) }
        });
        match r {
            Err(KernelError::Bugcheck(b)) => {
                assert_eq!(b.code, codes::KMODE_EXCEPTION_NOT_HANDLED, "{b}");
                assert_eq!(b.parameters[0], 0xC000_0005, "{b}");
                assert!(b.message.contains("wsktls.sys+0x"), "{b}");
                if image.with_extension("pdb").exists() {
                    assert!(b.message.contains("FxDriverEntry"), "{b}");
                }
            }
            other => panic!("expected a bugcheck, got {other:?}"),
        }
        // The faulting thread is parked for good; the mapping must outlive it.
        std::mem::forget(mapped);
    }
}
