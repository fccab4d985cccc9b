//! The safe KMDF surface the driver is written against: driver entry, a non-PnP control device
//! with a parallel PASSIVE queue, METHOD_BUFFERED requests, debug output and panics.
//!
//! Handles come only from the framework, so these wrappers can be safe: each one states which
//! framework contract it relies on.

mod registry;
mod request;

pub use registry::ParametersKey;
pub use request::{ParkedRequest, Request};

use core::ffi::c_void;
use core::ptr;

use crate::imports::{KeBugCheckEx, vDbgPrintEx};
use crate::io::DRIVER_OBJECT;
use crate::ntdef::*;
use crate::wdf::functions::*;
use crate::wdf::types::*;

/// Bugcheck code of a driver panic ("WKTS"): parameters are file name pointer and length, line, column.
pub const WSKTLS_PANIC_BUGCHECK: u32 = u32::from_be_bytes(*b"WKTS");

/// Defines the image entry point `FxDriverEntry` (link with `/ENTRY:FxDriverEntry`), which binds
/// KMDF and then calls `$init(&DriverEntryArgs) -> Result<(), NTSTATUS>`.
#[macro_export]
macro_rules! kmdf_driver_entry {
    ($init:path) => {
        /// Image entry point: binds KMDF 1.15, then runs the driver's entry.
        ///
        /// # Safety
        /// Called once per load by the I/O manager (or kemu) with its own arguments.
        #[unsafe(no_mangle)]
        #[cfg_attr(windows, unsafe(link_section = "INIT"))]
        pub unsafe extern "win64" fn FxDriverEntry(
            driver: *mut $crate::io::DRIVER_OBJECT,
            registry_path: *mut $crate::ntdef::UNICODE_STRING,
        ) -> $crate::ntdef::NTSTATUS {
            // SAFETY: forwarded from the I/O manager's call of the entry point.
            unsafe {
                $crate::wdf::bind::fx_driver_entry(driver, registry_path, |d, r| {
                    $crate::kmdf::run_driver_entry(d, r, $init)
                })
            }
        }
    };
}

/// What DriverEntry receives, kept opaque so driver code stays safe.
#[derive(Debug)]
pub struct DriverEntryArgs {
    driver: *mut DRIVER_OBJECT,
    registry_path: *mut UNICODE_STRING,
}

/// Adapts the bind stub's raw call to the driver's safe entry. Not for direct use.
#[doc(hidden)]
pub fn run_driver_entry(
    driver: *mut DRIVER_OBJECT,
    registry_path: *mut UNICODE_STRING,
    init: fn(&DriverEntryArgs) -> Result<(), NTSTATUS>,
) -> NTSTATUS {
    match init(&DriverEntryArgs {
        driver,
        registry_path,
    }) {
        Ok(()) => STATUS_SUCCESS,
        Err(status) => status,
    }
}

fn check(status: NTSTATUS) -> Result<(), NTSTATUS> {
    if nt_success(status) {
        Ok(())
    } else {
        Err(status)
    }
}

/// Creates the framework driver object of a non-PnP driver (unloadable through `unload`).
pub fn create_non_pnp_driver(
    args: &DriverEntryArgs,
    unload: extern "win64" fn(WDFDRIVER),
) -> Result<WDFDRIVER, NTSTATUS> {
    let mut config = WDF_DRIVER_CONFIG {
        Size: core::mem::size_of::<WDF_DRIVER_CONFIG>() as u32,
        EvtDriverDeviceAdd: None,
        EvtDriverUnload: Some(unload),
        DriverInitFlags: WDF_DRIVER_INIT_NON_PNP_DRIVER,
        DriverPoolTag: 0,
    };
    let mut attributes = WDF_OBJECT_ATTRIBUTES::init();
    let mut driver = WDFDRIVER::NULL;
    // SAFETY: the driver object and registry path are the I/O manager's; the structs outlive the call.
    check(unsafe {
        WdfDriverCreate(
            args.driver,
            args.registry_path,
            &mut attributes,
            &mut config,
            &mut driver,
        )
    })?;
    Ok(driver)
}

/// The WDM DEVICE_OBJECT behind a framework device (what IoAllocateWorkItem takes).
pub fn wdm_device_object(device: WDFDEVICE) -> *mut crate::io::DEVICE_OBJECT {
    // SAFETY: a live framework device handle; the call only reads the framework's object.
    unsafe { WdfDeviceWdmGetDeviceObject(device) }
}

/// The device a queue belongs to (a handle the framework passed to a queue callback).
pub fn queue_device(queue: WDFQUEUE) -> WDFDEVICE {
    // SAFETY: a live queue handle; the call only reads the framework's object.
    unsafe { WdfIoQueueGetDevice(queue) }
}

/// The device a file object was opened on (a handle the framework passed to a callback).
pub fn file_device(file: WDFFILEOBJECT) -> WDFDEVICE {
    // SAFETY: a live file object handle; the call only reads the framework's object.
    unsafe { WdfFileObjectGetDevice(file) }
}

/// File-object callbacks of a control device (per-handle state lives behind them).
#[derive(Debug, Clone, Copy, Default)]
pub struct FileCallbacks {
    /// Runs at open; must complete the request.
    pub create: PFN_WDF_DEVICE_FILE_CREATE,
    /// Runs when the last handle is closed (I/O may still be outstanding).
    pub cleanup: PFN_WDF_FILE_EVENT,
    /// Runs after all of the handle's I/O has finished.
    pub close: PFN_WDF_FILE_EVENT,
}

/// How to create a named non-PnP control device.
#[derive(Debug, Clone, Copy)]
pub struct ControlDeviceConfig {
    /// NT device name, e.g. `\Device\WskTls` (UTF-16, optionally NUL-terminated).
    pub name: &'static [u16],
    /// DOS symbolic link, e.g. `\DosDevices\WskTls`.
    pub symbolic_link: &'static [u16],
    /// Security descriptor in SDDL, e.g. SYSTEM + Administrators only.
    pub sddl: &'static [u16],
    /// Optional per-handle callbacks.
    pub file_callbacks: Option<FileCallbacks>,
}

/// Creates the control device and its symbolic link (not yet accepting I/O: see [`finish_initializing`]).
pub fn create_control_device(
    driver: WDFDRIVER,
    config: &ControlDeviceConfig,
) -> Result<WDFDEVICE, NTSTATUS> {
    let sddl = UNICODE_STRING::from_static(config.sddl);
    let name = UNICODE_STRING::from_static(config.name);
    let link = UNICODE_STRING::from_static(config.symbolic_link);
    // SAFETY: `driver` is the framework driver; the SDDL string outlives the call.
    let mut init = unsafe { WdfControlDeviceInitAllocate(driver, &sddl) };
    if init.is_null() {
        return Err(STATUS_INSUFFICIENT_RESOURCES);
    }
    // SAFETY: `init` is a live device-init block owned by us until WdfDeviceCreate succeeds.
    let status = unsafe {
        WdfDeviceInitSetExclusive(init, 0);
        WdfDeviceInitSetIoType(init, WDF_DEVICE_IO_BUFFERED);
        let mut status = WdfDeviceInitAssignName(init, &name);
        if nt_success(status) {
            if let Some(callbacks) = config.file_callbacks {
                let mut file_config = WDF_FILEOBJECT_CONFIG {
                    Size: core::mem::size_of::<WDF_FILEOBJECT_CONFIG>() as u32,
                    EvtDeviceFileCreate: callbacks.create,
                    EvtFileClose: callbacks.close,
                    EvtFileCleanup: callbacks.cleanup,
                    AutoForwardCleanupClose: WDF_USE_DEFAULT,
                    FileObjectClass: WDF_FILE_OBJECT_WDF_CANNOT_USE_FS_CONTEXTS,
                };
                let mut file_attributes = WDF_OBJECT_ATTRIBUTES::init();
                file_attributes.ExecutionLevel = WDF_EXECUTION_LEVEL_PASSIVE;
                WdfDeviceInitSetFileObjectConfig(init, &mut file_config, &mut file_attributes);
            }
            let mut attributes = WDF_OBJECT_ATTRIBUTES::init();
            let mut device = WDFDEVICE::NULL;
            status = WdfDeviceCreate(&mut init, &mut attributes, &mut device);
            if nt_success(status) {
                status = WdfDeviceCreateSymbolicLink(device, &link);
                if nt_success(status) {
                    return Ok(device);
                }
                WdfObjectDelete(device.as_object());
                return Err(status);
            }
        }
        status
    };
    // SAFETY: creation failed, so the framework did not take `init`; free it once.
    unsafe {
        if !init.is_null() {
            WdfDeviceInitFree(init);
        }
    }
    Err(status)
}

/// Creates the device's default queue: parallel dispatch, callbacks at PASSIVE_LEVEL.
pub fn create_default_parallel_queue(
    device: WDFDEVICE,
    device_control: extern "win64" fn(WDFQUEUE, WDFREQUEST, usize, usize, u32),
) -> Result<WDFQUEUE, NTSTATUS> {
    let mut config = WDF_IO_QUEUE_CONFIG {
        Size: core::mem::size_of::<WDF_IO_QUEUE_CONFIG>() as u32,
        DispatchType: WDF_IO_QUEUE_DISPATCH_PARALLEL,
        PowerManaged: WDF_FALSE,
        AllowZeroLengthRequests: 0,
        DefaultQueue: 1,
        EvtIoDefault: ptr::null(),
        EvtIoRead: ptr::null(),
        EvtIoWrite: ptr::null(),
        EvtIoDeviceControl: Some(device_control),
        EvtIoInternalDeviceControl: ptr::null(),
        EvtIoStop: ptr::null(),
        EvtIoResume: ptr::null(),
        EvtIoCanceledOnQueue: ptr::null(),
        NumberOfPresentedRequests: u32::MAX,
        Driver: WDFDRIVER::NULL,
    };
    let mut attributes = WDF_OBJECT_ATTRIBUTES::init();
    attributes.ExecutionLevel = WDF_EXECUTION_LEVEL_PASSIVE;
    let mut queue = WDFQUEUE::NULL;
    // SAFETY: `device` is a live framework device; the structs outlive the call.
    check(unsafe { WdfIoQueueCreate(device, &mut config, &mut attributes, &mut queue) })?;
    Ok(queue)
}

/// Lets I/O reach the control device.
pub fn finish_initializing(device: WDFDEVICE) {
    // SAFETY: `device` is a live control device.
    unsafe { WdfControlFinishInitializing(device) }
}

/// Debug output levels (DPFLTR_*_LEVEL).
pub const DPFLTR_ERROR_LEVEL: u32 = 0;
/// Warnings.
pub const DPFLTR_WARNING_LEVEL: u32 = 1;
/// Tracing.
pub const DPFLTR_TRACE_LEVEL: u32 = 2;
/// Informational.
pub const DPFLTR_INFO_LEVEL: u32 = 3;
/// Component id for third-party drivers (DPFLTR_IHVDRIVER_ID).
pub const DPFLTR_IHVDRIVER_ID: u32 = 77;

/// Writes one line to the kernel debugger log (DbgView / WinDbg; kemu's per-kernel log),
/// prefixed with the driver's service name (`wsktls: ...`).
pub fn debug_print(level: u32, message: &str) {
    let mut name = [0u8; 32];
    let mut name_length = crate::wdf::bind::service_name(&mut name);
    if name_length == 0 {
        name[..6].copy_from_slice(b"driver");
        name_length = 6;
    }
    let length = message.len().min(i32::MAX as usize);
    let args: [usize; 4] = [
        name_length,
        name.as_ptr() as usize,
        length,
        message.as_ptr() as usize,
    ];
    // SAFETY: each "%.*s" consumes an int length and a pointer to that many bytes: all four in
    // `args`, laid out as the win64 va_list the routine expects.
    unsafe {
        vDbgPrintEx(
            DPFLTR_IHVDRIVER_ID,
            level,
            c"%.*s: %.*s\n".as_ptr() as *const u8,
            args.as_ptr(),
        );
    }
}

/// `debug_print` of formatted text without allocating (so it is safe where an allocation may
/// fail, such as DriverEntry and unload): at most 160 bytes, the rest cut.
pub fn debug_print_args(level: u32, args: core::fmt::Arguments<'_>) {
    struct Line {
        bytes: [u8; 160],
        len: usize,
    }
    impl core::fmt::Write for Line {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let n = s.len().min(self.bytes.len() - self.len);
            self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
            Ok(())
        }
    }
    let mut line = Line {
        bytes: [0; 160],
        len: 0,
    };
    let _ = core::fmt::write(&mut line, args);
    // A cut in the middle of a UTF-8 sequence keeps only the whole characters.
    let text = match core::str::from_utf8(&line.bytes[..line.len]) {
        Ok(t) => t,
        Err(e) => core::str::from_utf8(&line.bytes[..e.valid_up_to()]).unwrap_or(""),
    };
    debug_print(level, text);
}

/// Waits `ms` milliseconds (KeDelayExecutionThread: kernel mode, not alertable). PASSIVE_LEVEL
/// only: for an unload routine that waits for work still finishing elsewhere.
pub fn sleep_ms(ms: u32) {
    let interval = -(i64::from(ms) * 10_000);
    // SAFETY: a relative interval that outlives the call.
    unsafe { crate::imports::KeDelayExecutionThread(0, 0, &interval) };
}

/// The running Windows build (RtlGetVersion; PASSIVE_LEVEL).
pub fn windows_build() -> Option<u32> {
    // SAFETY: RTL_OSVERSIONINFOW is plain data; all-zero is valid.
    let mut info: crate::ntdef::RTL_OSVERSIONINFOW = unsafe { core::mem::zeroed() };
    info.dwOSVersionInfoSize = core::mem::size_of::<crate::ntdef::RTL_OSVERSIONINFOW>() as u32;
    // SAFETY: a structure of the size it says.
    let status = unsafe { crate::imports::RtlGetVersion(&mut info) };
    crate::ntdef::nt_success(status).then_some(info.dwBuildNumber)
}

/// Stops the machine on a driver panic with [`WSKTLS_PANIC_BUGCHECK`] (kernel images only).
pub fn bugcheck_on_panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let (file, line, column) = match info.location() {
        Some(l) => (l.file(), l.line(), l.column()),
        None => ("", 0, 0),
    };
    // SAFETY: KeBugCheckEx never returns; its parameters are plain values.
    unsafe {
        KeBugCheckEx(
            WSKTLS_PANIC_BUGCHECK,
            file.as_ptr() as usize,
            file.len(),
            line as usize,
            column as usize,
        )
    }
}

/// Deletes a framework object the driver created (PASSIVE_LEVEL for control devices).
pub fn delete_object(object: WDFOBJECT) {
    // SAFETY: `object` is a live framework object the driver owns.
    unsafe { WdfObjectDelete(object) }
}
