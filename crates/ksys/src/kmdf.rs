//! The safe KMDF surface the driver is written against: driver entry, a non-PnP control device
//! with a parallel PASSIVE queue, METHOD_BUFFERED requests, debug output and panics.
//!
//! Handles come only from the framework, so these wrappers can be safe: each one states which
//! framework contract it relies on.

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

/// The service's `Parameters` registry key
/// (`HKLM\SYSTEM\CurrentControlSet\Services\<service>\Parameters`), opened read-only: where an
/// administrator tunes a driver. Closed on drop. PASSIVE_LEVEL only.
#[derive(Debug)]
pub struct ParametersKey {
    key: WDFKEY,
}

impl ParametersKey {
    /// Opens the key. Err (typically STATUS_OBJECT_NAME_NOT_FOUND) when it does not exist —
    /// nothing was set — or cannot be read.
    pub fn open(driver: WDFDRIVER) -> Result<ParametersKey, NTSTATUS> {
        let mut key = WDFKEY::NULL;
        // SAFETY: a live driver handle; NULL attributes are allowed (the key's parent is the
        // driver); the out-param is a local.
        check(unsafe {
            WdfDriverOpenParametersRegistryKey(driver, KEY_READ, ptr::null_mut(), &mut key)
        })?;
        if key.is_null() {
            return Err(STATUS_UNSUCCESSFUL);
        }
        Ok(ParametersKey { key })
    }

    /// The REG_DWORD value `name` (UTF-16, no terminator needed). Err(STATUS_OBJECT_NAME_NOT_FOUND)
    /// when it is absent; another error when it is not a DWORD.
    pub fn dword(&self, name: &'static [u16]) -> Result<u32, NTSTATUS> {
        let name = UNICODE_STRING::from_static(name);
        let mut value = 0u32;
        // SAFETY: the key is open (ours until drop); the name and out-param are locals.
        check(unsafe { WdfRegistryQueryULong(self.key, &name, &mut value) })?;
        Ok(value)
    }

    /// Copies the REG_SZ value `name` into `buffer` as UTF-16 and returns how many code
    /// units it has (its NUL left out). Err: STATUS_OBJECT_NAME_NOT_FOUND when absent,
    /// STATUS_OBJECT_TYPE_MISMATCH when not a string, STATUS_BUFFER_OVERFLOW when it does not
    /// fit (with its NUL), STATUS_INVALID_PARAMETER for an empty buffer.
    pub fn string(&self, name: &'static [u16], buffer: &mut [u16]) -> Result<usize, NTSTATUS> {
        let name = UNICODE_STRING::from_static(name);
        let room = buffer.len().min(usize::from(u16::MAX) / 2);
        let mut value = UNICODE_STRING {
            Length: 0,
            MaximumLength: (room * 2) as u16,
            Buffer: buffer.as_mut_ptr(),
        };
        // SAFETY: the key is open; the buffer holds MaximumLength bytes and outlives the call.
        check(unsafe {
            WdfRegistryQueryUnicodeString(self.key, &name, ptr::null_mut(), &mut value)
        })?;
        Ok(usize::from(value.Length) / 2)
    }
}

impl Drop for ParametersKey {
    fn drop(&mut self) {
        // SAFETY: the key was opened by `open` and is closed exactly once, here.
        unsafe { WdfRegistryClose(self.key) }
    }
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

/// A METHOD_BUFFERED device-control request presented to the driver.
///
/// Input and output share one system buffer: [`Request::read_input`] copies the input out before
/// [`Request::write_output`] may overwrite it.
#[derive(Debug)]
pub struct Request {
    handle: WDFREQUEST,
}

impl Request {
    /// Takes over a request the framework presented to an EvtIo callback.
    pub fn from_presented(handle: WDFREQUEST) -> Self {
        Request { handle }
    }

    /// The framework handle.
    pub fn handle(&self) -> WDFREQUEST {
        self.handle
    }

    /// Copies the whole input into `destination`; returns the input length.
    ///
    /// Errors: STATUS_BUFFER_TOO_SMALL if shorter than `minimum`, STATUS_INVALID_BUFFER_SIZE if
    /// longer than `destination`. Zero-length input is `Ok(0)` when `minimum` is 0.
    pub fn read_input(
        &self,
        input_length: usize,
        minimum: usize,
        destination: &mut [u8],
    ) -> Result<usize, NTSTATUS> {
        if input_length < minimum {
            return Err(STATUS_BUFFER_TOO_SMALL);
        }
        if input_length == 0 {
            return Ok(0);
        }
        if input_length > destination.len() {
            return Err(STATUS_INVALID_BUFFER_SIZE);
        }
        self.with_input(input_length, |input| {
            destination[..input_length].copy_from_slice(input);
            input_length
        })
    }

    /// Lets `read` look at the whole input where the framework keeps it (no copy): SEND's
    /// payload goes from here straight into the connection's queue, even while it is parked.
    /// STATUS_BUFFER_TOO_SMALL if the input is shorter than `input_length`.
    pub fn with_input<R>(
        &self,
        input_length: usize,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, NTSTATUS> {
        if input_length == 0 {
            return Ok(read(&[]));
        }
        let mut buffer: *mut c_void = ptr::null_mut();
        let mut length = 0usize;
        // SAFETY: the request is presented to us and not completed; out-params are locals.
        check(unsafe {
            WdfRequestRetrieveInputBuffer(self.handle, input_length, &mut buffer, &mut length)
        })?;
        if buffer.is_null() || length < input_length {
            return Err(STATUS_BUFFER_TOO_SMALL);
        }
        // SAFETY: the framework guarantees `length` (>= input_length) readable bytes at `buffer`
        // while the request is ours; the slice does not outlive this call.
        let input = unsafe { core::slice::from_raw_parts(buffer as *const u8, input_length) };
        Ok(read(input))
    }

    /// Lets `read` look at the first `length` bytes of the output buffer where they are: for
    /// METHOD_IN_DIRECT the caller's own buffer (a SEND's payload), read in place through its
    /// MDL. STATUS_BUFFER_TOO_SMALL if the output buffer is shorter.
    pub fn with_output_data<R>(
        &self,
        length: usize,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, NTSTATUS> {
        if length == 0 {
            return Ok(read(&[]));
        }
        let mut buffer: *mut c_void = ptr::null_mut();
        let mut available = 0usize;
        // SAFETY: as in `with_input`.
        check(unsafe {
            WdfRequestRetrieveOutputBuffer(self.handle, length, &mut buffer, &mut available)
        })?;
        if buffer.is_null() || available < length {
            return Err(STATUS_BUFFER_TOO_SMALL);
        }
        // SAFETY: the framework guarantees `available` (>= length) bytes at `buffer` while the
        // request is ours; the slice does not outlive this call.
        let data = unsafe { core::slice::from_raw_parts(buffer as *const u8, length) };
        Ok(read(data))
    }

    /// Copies `data` into the output buffer; STATUS_BUFFER_TOO_SMALL (nothing written) if the
    /// caller's output buffer is shorter. Returns the byte count to complete with.
    pub fn write_output(&self, data: &[u8]) -> Result<usize, NTSTATUS> {
        if data.is_empty() {
            return Ok(0);
        }
        let mut buffer: *mut c_void = ptr::null_mut();
        let mut length = 0usize;
        // SAFETY: as in `with_input`.
        check(unsafe {
            WdfRequestRetrieveOutputBuffer(self.handle, data.len(), &mut buffer, &mut length)
        })?;
        if buffer.is_null() || length < data.len() {
            return Err(STATUS_BUFFER_TOO_SMALL);
        }
        // SAFETY: the framework guarantees `length` (>= data.len()) writable bytes at `buffer`.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), buffer as *mut u8, data.len()) };
        Ok(data.len())
    }

    /// The file object (open handle) the request came through.
    pub fn file(&self) -> WDFFILEOBJECT {
        // SAFETY: the request is ours and not completed.
        unsafe { WdfRequestGetFileObject(self.handle) }
    }

    /// The caller's output buffer length (0 if none).
    pub fn output_length(&self) -> usize {
        let mut buffer: *mut c_void = ptr::null_mut();
        let mut length = 0usize;
        // SAFETY: the request is ours and not completed; out-params are locals.
        match unsafe { WdfRequestRetrieveOutputBuffer(self.handle, 0, &mut buffer, &mut length) } {
            status if nt_success(status) && !buffer.is_null() => length,
            _ => 0,
        }
    }

    /// Lets `fill` write up to `limit` bytes straight into the output buffer; it returns how
    /// many it wrote, which is what to complete with.
    pub fn fill_output(
        &self,
        limit: usize,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<usize, NTSTATUS> {
        let mut buffer: *mut c_void = ptr::null_mut();
        let mut length = 0usize;
        // SAFETY: as in `with_input`.
        check(unsafe { WdfRequestRetrieveOutputBuffer(self.handle, 1, &mut buffer, &mut length) })?;
        if buffer.is_null() {
            return Err(STATUS_BUFFER_TOO_SMALL);
        }
        // SAFETY: the framework guarantees `length` writable bytes at `buffer` while the request
        // is ours; the slice does not outlive this call.
        let out = unsafe { core::slice::from_raw_parts_mut(buffer as *mut u8, length.min(limit)) };
        Ok(fill(out).min(out.len()))
    }

    /// Makes a request the driver keeps pending cancelable: `cancel` runs (and must complete
    /// it) if the caller cancels or closes its handle. Err(STATUS_CANCELLED): already cancelled —
    /// complete it now.
    pub fn mark_cancelable(&self, cancel: PFN_WDF_REQUEST_CANCEL) -> Result<(), NTSTATUS> {
        // SAFETY: the request is ours, not completed and not cancelable yet.
        check(unsafe { WdfRequestMarkCancelableEx(self.handle, cancel) })
    }

    /// Takes back a cancelable request before completing it. Err(STATUS_CANCELLED): the cancel
    /// routine runs (or ran) and completes it — do not touch it any more.
    pub fn unmark_cancelable(&self) -> Result<(), NTSTATUS> {
        // SAFETY: the request is ours and was marked cancelable.
        check(unsafe { WdfRequestUnmarkCancelable(self.handle) })
    }

    /// Completes the request; `information` is the number of output bytes to return.
    pub fn complete(self, status: NTSTATUS, information: usize) {
        // SAFETY: the request is ours and, consuming `self`, is completed exactly once here.
        unsafe { WdfRequestCompleteWithInformation(self.handle, status, information) }
    }
}

/// The context type of [`Request::set_tag`]: one `u64` per tagged request.
static REQUEST_TAG: WDF_OBJECT_CONTEXT_TYPE_INFO = WDF_OBJECT_CONTEXT_TYPE_INFO {
    Size: core::mem::size_of::<WDF_OBJECT_CONTEXT_TYPE_INFO>() as u32,
    ContextName: c"WSKTLS_REQUEST_TAG".as_ptr().cast(),
    ContextSize: core::mem::size_of::<u64>(),
    UniqueType: &REQUEST_TAG,
    EvtDriverGetUniqueContextType: ptr::null(),
};

impl Request {
    /// Attaches `tag` to the request (a KMDF object context, freed with the request), so a
    /// cancel routine, which only gets the handle, can tell where the driver keeps it.
    pub fn set_tag(&self, tag: u64) -> Result<(), NTSTATUS> {
        let mut attributes = WDF_OBJECT_ATTRIBUTES::init();
        attributes.ContextTypeInfo = &REQUEST_TAG;
        let mut context: *mut c_void = ptr::null_mut();
        // SAFETY: the request is ours and not completed; the attributes and out-param are locals
        // and the type info is a static.
        check(unsafe {
            WdfObjectAllocateContext(self.handle.as_object(), &mut attributes, &mut context)
        })?;
        if context.is_null() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        // SAFETY: the framework allocated ContextSize (8) bytes for this type, aligned for u64.
        unsafe { (context as *mut u64).write(tag) };
        Ok(())
    }

    /// The tag [`Self::set_tag`] attached, if any.
    pub fn tag(&self) -> Option<u64> {
        let object = self.handle.as_object();
        // SAFETY: the request is live (presented or in its cancel routine); the type info is a
        // static.
        let context = unsafe { WdfObjectGetTypedContextWorker(object, &REQUEST_TAG) };
        // SAFETY: a non-NULL context of this type is the u64 `set_tag` wrote.
        (!context.is_null()).then(|| unsafe { (context as *const u64).read() })
    }
}

/// A request the driver keeps pending (marked cancelable) in its own tables: only its handle,
/// so it can sit in any structure; [`ParkedRequest::resume`] gives the [`Request`] back.
#[derive(Debug, PartialEq, Eq)]
pub struct ParkedRequest {
    handle: usize,
}

impl Request {
    /// Parks the request (the driver must resume and complete it, or let its cancel routine).
    pub fn park(self) -> ParkedRequest {
        ParkedRequest {
            handle: self.handle.as_raw() as usize,
        }
    }
}

impl ParkedRequest {
    /// Whether this is the request the framework names by `handle` (e.g. in a cancel routine).
    pub fn is(&self, handle: WDFREQUEST) -> bool {
        self.handle == handle.as_raw() as usize
    }

    /// Lends the request to `use_it` — to read its input, fill its output or unmark it — while
    /// it stays parked: a borrow cannot complete it (that takes [`Self::resume`]). Live for the
    /// same reason as there.
    pub fn with<R>(&self, use_it: impl FnOnce(&Request) -> R) -> R {
        let request = Request {
            // SAFETY: as in `resume`.
            handle: unsafe { WDFREQUEST::from_raw(self.handle as *mut c_void) },
        };
        use_it(&request)
    }

    /// The request again, to unmark and complete.
    pub fn resume(self) -> Request {
        Request {
            // A parked request stays live until completed, which only the holder of this value
            // (or the cancel routine, which then never finds this value) does.
            // SAFETY: the handle came from a live Request in `park`, still live (above).
            handle: unsafe { WDFREQUEST::from_raw(self.handle as *mut c_void) },
        }
    }
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

/// Writes one line to the kernel debugger log (DbgView / WinDbg; kemu's per-kernel log).
pub fn debug_print(level: u32, message: &str) {
    let length = message.len().min(i32::MAX as usize);
    let args: [usize; 2] = [length, message.as_ptr() as usize];
    // SAFETY: "%.*s" consumes an int length and a pointer to that many bytes: both in `args`,
    // laid out as the win64 va_list the routine expects.
    unsafe {
        vDbgPrintEx(
            DPFLTR_IHVDRIVER_ID,
            level,
            c"wsktls: %.*s\n".as_ptr() as *const u8,
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
