//! The framework's WDM dispatch routines. Before DriverEntry the I/O manager points every entry
//! of the DRIVER_OBJECT's MajorFunction table at [`invalid_device_request`]; WdfDriverCreate puts
//! the framework's routines in the entries kemu's framework serves (KMDF fills the table with its
//! own dispatcher the same way), and each routine finds the framework device and file object the
//! IRP is for, then hands the request to the framework proper.

use ksys::io::{
    DEVICE_OBJECT, DRIVER_OBJECT, IO_STACK_LOCATION, IRP, IRP_MJ_CLEANUP, IRP_MJ_CLOSE,
    IRP_MJ_COUNT, IRP_MJ_CREATE, IRP_MJ_DEVICE_CONTROL,
};
use ksys::ntdef::{NTSTATUS, STATUS_INVALID_DEVICE_REQUEST, STATUS_PENDING, STATUS_SUCCESS};

use crate::thread;

/// Completes `irp` with `status` and nothing transferred.
fn complete(irp: *mut IRP, status: NTSTATUS) -> NTSTATUS {
    // SAFETY: the live IRP the I/O manager passed in; nobody else completes it.
    unsafe {
        (*irp).IoStatus.Status = status;
        (*irp).IoStatus.Information = 0;
    }
    thread::kernel().irps.complete(irp);
    status
}

/// The stack location the IRP's receiver reads.
fn stack(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: a live IRP passed to a dispatch routine has a current stack location.
    unsafe { (*irp).Tail.CurrentStackLocation }
}

/// The I/O manager's routine for a major function nobody serves (IopInvalidDeviceRequest).
pub(crate) unsafe extern "win64" fn invalid_device_request(
    _device: *mut DEVICE_OBJECT,
    irp: *mut IRP,
) -> NTSTATUS {
    complete(irp, STATUS_INVALID_DEVICE_REQUEST)
}

/// A new driver object's table, as the I/O manager sets it before DriverEntry.
pub(crate) fn initialize_major_functions(driver_object: &mut DRIVER_OBJECT) {
    driver_object.MajorFunction = [Some(invalid_device_request); IRP_MJ_COUNT];
}

/// What WdfDriverCreate installs.
pub(crate) fn install_framework_dispatch(driver_object: *mut DRIVER_OBJECT) {
    // SAFETY: the loader's driver object, alive while the driver is loaded.
    let table = unsafe { &mut (*driver_object).MajorFunction };
    table[IRP_MJ_CREATE as usize] = Some(dispatch_create);
    table[IRP_MJ_CLEANUP as usize] = Some(dispatch_cleanup);
    table[IRP_MJ_CLOSE as usize] = Some(dispatch_close);
    table[IRP_MJ_DEVICE_CONTROL as usize] = Some(dispatch_device_control);
}

/// The framework device behind a DEVICE_OBJECT (0 if it has none).
fn framework_device(device: *mut DEVICE_OBJECT) -> usize {
    thread::kernel().io.framework_device(device as usize)
}

/// The FILE_OBJECT of the IRP's stack location.
fn file_object(irp: *mut IRP) -> usize {
    // SAFETY: see `stack`.
    unsafe { (*stack(irp)).FileObject as usize }
}

/// IRP_MJ_CREATE: a framework file object, EvtDeviceFileCreate, the result.
unsafe extern "win64" fn dispatch_create(device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    let wdf_device = framework_device(device);
    if wdf_device == 0 {
        return complete(irp, STATUS_INVALID_DEVICE_REQUEST);
    }
    match super::file::create(wdf_device) {
        Ok(wdf_file) => {
            thread::kernel()
                .wdf
                .lock()
                .files
                .insert(file_object(irp), wdf_file);
            complete(irp, STATUS_SUCCESS)
        }
        Err(status) => complete(irp, status),
    }
}

/// IRP_MJ_CLEANUP: EvtFileCleanup, then the file's queued requests are cancelled.
unsafe extern "win64" fn dispatch_cleanup(_device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    let wdf_file = thread::kernel()
        .wdf
        .lock()
        .files
        .get(&file_object(irp))
        .copied();
    if let Some(wdf_file) = wdf_file {
        super::file::cleanup(wdf_file);
    }
    complete(irp, STATUS_SUCCESS)
}

/// IRP_MJ_CLOSE: EvtFileClose and the framework file object goes.
unsafe extern "win64" fn dispatch_close(_device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    let wdf_file = thread::kernel().wdf.lock().files.remove(&file_object(irp));
    if let Some(wdf_file) = wdf_file {
        super::file::close(wdf_file);
    }
    complete(irp, STATUS_SUCCESS)
}

/// IRP_MJ_DEVICE_CONTROL: a framework request on the device's default queue. The system buffer
/// is the IRP's AssociatedIrp; for the direct methods the caller's locked output buffer is its
/// UserBuffer (kemu's I/O manager keeps it locked for the request's life; it builds no MDL).
unsafe extern "win64" fn dispatch_device_control(
    device: *mut DEVICE_OBJECT,
    irp: *mut IRP,
) -> NTSTATUS {
    let wdf_device = framework_device(device);
    let wdf_file = thread::kernel()
        .wdf
        .lock()
        .files
        .get(&file_object(irp))
        .copied();
    let (Some(wdf_file), true) = (wdf_file, wdf_device != 0) else {
        return complete(irp, STATUS_INVALID_DEVICE_REQUEST);
    };
    // SAFETY: the live IRP and its current stack location, filled by the I/O manager.
    let (code, input_length, output_length, system, direct) = unsafe {
        let parameters = (*stack(irp)).Parameters.DeviceIoControl;
        (
            parameters.IoControlCode,
            parameters.InputBufferLength as usize,
            parameters.OutputBufferLength as usize,
            (*irp).AssociatedIrp as usize,
            (*irp).UserBuffer as usize,
        )
    };
    super::queue::dispatch_device_control(
        wdf_device,
        irp,
        wdf_file,
        code,
        super::queue::ControlBuffers {
            system,
            direct,
            input_length,
            output_length,
        },
    );
    STATUS_PENDING
}
