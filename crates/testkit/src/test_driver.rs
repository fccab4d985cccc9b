//! A minimal KMDF driver: a control device (SYSTEM and Administrators only) whose queue refuses
//! every IOCTL. It gives natively linked code under test a device object to queue work items
//! on, as a real driver's would.

use core::sync::atomic::{AtomicUsize, Ordering};

use kemu::{Kernel, KernelError, NativeDriver};
use ksys::io::{DEVICE_OBJECT, DRIVER_OBJECT};
use ksys::kmdf::{self, ControlDeviceConfig, DriverEntryArgs, Request};
use ksys::ntdef::*;
use ksys::utf16;
use ksys::wdf::types::*;

/// The control device's DEVICE_OBJECT, once loaded.
static DEVICE: AtomicUsize = AtomicUsize::new(0);

const CONFIG: ControlDeviceConfig = ControlDeviceConfig {
    name: utf16!("\\Device\\KtlsTest"),
    symbolic_link: utf16!("\\DosDevices\\KtlsTest"),
    sddl: utf16!("D:P(A;;GA;;;SY)(A;;GA;;;BA)"),
    file_callbacks: None,
};

fn driver_entry(args: &DriverEntryArgs) -> Result<(), NTSTATUS> {
    let driver = kmdf::create_non_pnp_driver(args, unload)?;
    let device = kmdf::create_control_device(driver, &CONFIG)?;
    kmdf::create_default_parallel_queue(device, device_control)?;
    kmdf::finish_initializing(device);
    DEVICE.store(kmdf::wdm_device_object(device) as usize, Ordering::SeqCst);
    Ok(())
}

extern "win64" fn unload(_driver: WDFDRIVER) {
    DEVICE.store(0, Ordering::SeqCst);
}

extern "win64" fn device_control(_q: WDFQUEUE, req: WDFREQUEST, _o: usize, _i: usize, _c: u32) {
    Request::from_presented(req).complete(STATUS_INVALID_DEVICE_REQUEST, 0);
}

/// The image entry point (bound to KMDF like any driver's; not exported by name, so a suite
/// that also links a real driver has no clash).
///
/// # Safety
/// Called by kemu's loader with its own arguments.
unsafe extern "win64" fn entry(
    driver: *mut DRIVER_OBJECT,
    registry: *mut UNICODE_STRING,
) -> NTSTATUS {
    // SAFETY: forwarded from the loader's call of the entry point.
    unsafe {
        ksys::wdf::bind::fx_driver_entry(driver, registry, |d, r| {
            kmdf::run_driver_entry(d, r, driver_entry)
        })
    }
}

/// Loads the test driver into `kernel` as service `service`.
///
/// # Errors
/// What kemu's loader reports (a failed DriverEntry, leaks).
pub fn load(kernel: &Kernel, service: &'static str) -> Result<(), KernelError> {
    kernel.load(NativeDriver {
        service_name: service,
        entry,
        imports: ksys::imports::IMPORT_DIRECTORY,
    })
}

/// The loaded test driver's device object (NULL before `load` and after unload).
pub fn device() -> *mut DEVICE_OBJECT {
    DEVICE.load(Ordering::SeqCst) as *mut DEVICE_OBJECT
}
