//! A minimal KMDF driver: a control device (SYSTEM and Administrators only). It gives natively
//! linked code under test a device object to queue work items on, as a real driver's would, and
//! runs a suite's own code in a dispatch routine when the suite sets an [`IoctlHandler`] (every
//! IOCTL is refused otherwise).

use core::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use kemu::{Kernel, KernelError, NativeDriver};
use ksys::io::{DEVICE_OBJECT, DRIVER_OBJECT};
use ksys::kmdf::{self, ControlDeviceConfig, DriverEntryArgs, Request};
use ksys::ntdef::*;
use ksys::utf16;
use ksys::wdf::types::*;

/// The control device's DEVICE_OBJECT, once loaded.
static DEVICE: AtomicUsize = AtomicUsize::new(0);

/// A suite's code for the device's IOCTLs: the control code in, a u64 for the output buffer out
/// (or the status to complete with). It runs in the dispatch routine, at PASSIVE_LEVEL on the
/// calling thread, as a real driver's handler would.
pub type IoctlHandler = fn(code: u32) -> Result<u64, NTSTATUS>;

static HANDLER: Mutex<Option<IoctlHandler>> = Mutex::new(None);

/// Has the device's IOCTLs run `handler` (from now on, in this process).
pub fn set_ioctl_handler(handler: IoctlHandler) {
    *HANDLER.lock().unwrap_or_else(|e| e.into_inner()) = Some(handler);
}

/// Where a host thread opens the control device.
pub const PATH: &str = r"\\.\KtlsTest";

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

extern "win64" fn device_control(_q: WDFQUEUE, req: WDFREQUEST, _o: usize, _i: usize, code: u32) {
    let r = Request::from_presented(req);
    let handler = *HANDLER.lock().unwrap_or_else(|e| e.into_inner());
    let outcome = match handler {
        Some(handler) => handler(code),
        None => Err(STATUS_INVALID_DEVICE_REQUEST),
    };
    match outcome.and_then(|value| r.write_output(&value.to_le_bytes())) {
        Ok(n) => r.complete(STATUS_SUCCESS, n),
        Err(status) => r.complete(status, 0),
    }
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
