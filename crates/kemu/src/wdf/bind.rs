//! WDFLDR.SYS: WdfVersionBind / WdfVersionUnbind and the KMDF 1.15 function table kemu hands out.

use std::sync::OnceLock;

use ksys::DRIVER_OBJECT;
use ksys::ntdef::{
    NTSTATUS, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_DEVICE_STATE, STATUS_INVALID_PARAMETER,
    STATUS_REVISION_MISMATCH, STATUS_SUCCESS, UNICODE_STRING,
};
use ksys::wdf::functions::{WDF_FUNCTION_DIRECTORY, index as fi, pfn as fp};
use ksys::wdf::types::*;
use seq_macro::seq;

use super::{object, violation};
use crate::bugcheck::wdf_violation;
use crate::ke::pool::Owner;
use crate::thread::{self, PASSIVE};

/// Number of entries in the KMDF 1.15 table.
pub(crate) const TABLE_SIZE: usize = 444;

unsafe extern "win64" fn unimplemented<const N: usize>(_globals: *mut WDF_DRIVER_GLOBALS) -> usize {
    let name = WDF_FUNCTION_DIRECTORY
        .iter()
        .find(|e| e.index == N)
        .map_or("(unnamed)", |e| e.name);
    violation(
        wdf_violation::UNIMPLEMENTED_FUNCTION,
        N,
        format!("KMDF function table entry {N} {name} is not implemented by kemu"),
    )
}

fn unimplemented_table() -> [usize; TABLE_SIZE] {
    seq!(N in 0..444 {
        [ #( unimplemented::<N> as *const () as usize, )* ]
    })
}

/// The table: every entry kemu implements, type-checked against ksys's declaration.
pub(crate) fn table() -> &'static [usize; TABLE_SIZE] {
    static TABLE: OnceLock<Box<[usize; TABLE_SIZE]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new(unimplemented_table());
        macro_rules! implement {
            ($($name:ident => $imp:path,)*) => {$(
                let f: fp::$name = $imp;
                t[fi::$name] = f as usize;
            )*};
        }
        use super::{device, driver, file, lock, queue, registry, request, workitem};
        implement! {
            WdfControlDeviceInitAllocate => device::wdf_control_device_init_allocate,
            WdfControlFinishInitializing => device::wdf_control_finish_initializing,
            WdfDeviceWdmGetDeviceObject => device::wdf_device_wdm_get_device_object,
            WdfDeviceInitFree => device::wdf_device_init_free,
            WdfDeviceInitSetIoType => device::wdf_device_init_set_io_type,
            WdfDeviceInitSetExclusive => device::wdf_device_init_set_exclusive,
            WdfDeviceInitAssignName => device::wdf_device_init_assign_name,
            WdfDeviceInitAssignSDDLString => device::wdf_device_init_assign_sddl_string,
            WdfDeviceInitSetFileObjectConfig => device::wdf_device_init_set_file_object_config,
            WdfDeviceCreate => device::wdf_device_create,
            WdfDeviceCreateSymbolicLink => device::wdf_device_create_symbolic_link,
            WdfDriverCreate => driver::wdf_driver_create,
            WdfDriverWdmGetDriverObject => driver::wdf_driver_wdm_get_driver_object,
            WdfDriverOpenParametersRegistryKey => registry::wdf_driver_open_parameters_registry_key,
            WdfRegistryClose => registry::wdf_registry_close,
            WdfRegistryQueryULong => registry::wdf_registry_query_ulong,
            WdfRegistryQueryUnicodeString => registry::wdf_registry_query_unicode_string,
            WdfFileObjectGetDevice => file::wdf_file_object_get_device,
            WdfIoQueueCreate => queue::wdf_io_queue_create,
            WdfIoQueueGetDevice => queue::wdf_io_queue_get_device,
            WdfIoQueueRetrieveNextRequest => queue::wdf_io_queue_retrieve_next_request,
            WdfIoQueueRetrieveRequestByFileObject => queue::wdf_io_queue_retrieve_request_by_file_object,
            WdfIoQueuePurgeSynchronously => queue::wdf_io_queue_purge_synchronously,
            WdfObjectGetTypedContextWorker => object::wdf_object_get_typed_context_worker,
            WdfObjectAllocateContext => object::wdf_object_allocate_context,
            WdfObjectReferenceActual => object::wdf_object_reference_actual,
            WdfObjectDereferenceActual => object::wdf_object_dereference_actual,
            WdfObjectDelete => object::wdf_object_delete,
            WdfRequestGetStatus => request::wdf_request_get_status,
            WdfRequestMarkCancelable => request::wdf_request_mark_cancelable,
            WdfRequestUnmarkCancelable => request::wdf_request_unmark_cancelable,
            WdfRequestIsCanceled => request::wdf_request_is_canceled,
            WdfRequestComplete => request::wdf_request_complete,
            WdfRequestCompleteWithInformation => request::wdf_request_complete_with_information,
            WdfRequestGetParameters => request::wdf_request_get_parameters,
            WdfRequestRetrieveInputBuffer => request::wdf_request_retrieve_input_buffer,
            WdfRequestRetrieveOutputBuffer => request::wdf_request_retrieve_output_buffer,
            WdfRequestSetInformation => request::wdf_request_set_information,
            WdfRequestGetFileObject => request::wdf_request_get_file_object,
            WdfRequestForwardToIoQueue => request::wdf_request_forward_to_io_queue,
            WdfRequestWdmGetIrp => request::wdf_request_wdm_get_irp,
            WdfWaitLockCreate => lock::wdf_wait_lock_create,
            WdfWaitLockAcquire => lock::wdf_wait_lock_acquire,
            WdfWaitLockRelease => lock::wdf_wait_lock_release,
            WdfSpinLockCreate => lock::wdf_spin_lock_create,
            WdfSpinLockAcquire => lock::wdf_spin_lock_acquire,
            WdfSpinLockRelease => lock::wdf_spin_lock_release,
            WdfWorkItemCreate => workitem::wdf_work_item_create,
            WdfWorkItemEnqueue => workitem::wdf_work_item_enqueue,
            WdfWorkItemGetParentObject => workitem::wdf_work_item_get_parent_object,
            WdfWorkItemFlush => workitem::wdf_work_item_flush,
            WdfRequestMarkCancelableEx => request::wdf_request_mark_cancelable_ex,
        }
        t
    })
}

/// Whether table entry `index` is implemented (not the bugchecking placeholder).
pub fn is_implemented(index: usize) -> bool {
    index < TABLE_SIZE && table()[index] != unimplemented_table()[index]
}

fn component_is_kmdf(p: *const u16) -> bool {
    if p.is_null() {
        return false;
    }
    let expected = "KmdfLibrary";
    // SAFETY: the bind info's component is a NUL-terminated UTF-16 string; we read at most
    // expected.len() + 1 units, stopping at the first mismatch.
    unsafe {
        for (i, c) in expected.encode_utf16().enumerate() {
            let u = *p.add(i);
            if u == 0 || !char::from(u as u8).eq_ignore_ascii_case(&char::from(c as u8)) {
                return false;
            }
        }
        *p.add(expected.len()) == 0
    }
}

/// WDFLDR.SYS!WdfVersionBind.
pub(crate) unsafe extern "win64" fn wdf_version_bind(
    driver: *mut DRIVER_OBJECT,
    _registry_path: *mut UNICODE_STRING,
    bind_info: *mut WDF_BIND_INFO,
    globals_out: *mut *mut WDF_DRIVER_GLOBALS,
) -> NTSTATUS {
    thread::require_at_most("WdfVersionBind", PASSIVE);
    if bind_info.is_null() || globals_out.is_null() || driver.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: non-NULL bind info from the driver's stub.
    let info = unsafe { &*bind_info };
    if info.Size as usize != std::mem::size_of::<WDF_BIND_INFO>()
        || !component_is_kmdf(info.Component)
        || info.FuncTable.is_null()
    {
        return STATUS_INVALID_PARAMETER;
    }
    if info.Version.Major != 1
        || info.Version.Minor > 15
        || info.FuncCount == 0
        || info.FuncCount as usize > TABLE_SIZE
    {
        return STATUS_REVISION_MISMATCH;
    }
    let kernel = thread::kernel();
    let mut state = kernel.wdf.lock();
    if state.globals != 0 || state.driver_object != driver as usize {
        return STATUS_INVALID_DEVICE_STATE;
    }
    let size = std::mem::size_of::<WDF_DRIVER_GLOBALS>();
    let globals = kernel
        .pool
        .allocate(size, state.pool_tag, true, false, Owner::Driver, true)
        as *mut WDF_DRIVER_GLOBALS;
    if globals.is_null() {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    // SAFETY: a fresh zeroed block of the globals' size; FuncTable is the stub's slot.
    unsafe {
        (*globals).DriverTag = state.pool_tag;
        for (i, b) in state.service_name.bytes().take(31).enumerate() {
            (*globals).DriverName[i] = b;
        }
        (*globals).DisplaceDriverUnload = 1;
        *info.FuncTable = table().as_ptr() as *const WdfFunction;
        *globals_out = globals;
    }
    state.globals = globals as usize;
    STATUS_SUCCESS
}

/// WDFLDR.SYS!WdfVersionUnbind: deletes what DriverEntry left (if it failed) and the globals.
pub(crate) unsafe extern "win64" fn wdf_version_unbind(
    _registry_path: *mut UNICODE_STRING,
    _bind_info: *mut WDF_BIND_INFO,
    globals: *mut WDF_DRIVER_GLOBALS,
) -> NTSTATUS {
    thread::require_at_most("WdfVersionUnbind", PASSIVE);
    let kernel = thread::kernel();
    let (driver, tag) = {
        let state = kernel.wdf.lock();
        if state.globals == 0 || state.globals != globals as usize {
            return STATUS_INVALID_PARAMETER;
        }
        (state.driver, state.pool_tag)
    };
    if driver != 0 {
        thread::with_activity("WdfVersionUnbind", || object::delete_tree(driver));
        kernel.wdf.lock().driver = 0;
    }
    kernel.pool.free(
        globals as *mut u8,
        Some(tag),
        Owner::Driver,
        "WdfVersionUnbind",
    );
    kernel.wdf.lock().globals = 0;
    STATUS_SUCCESS
}
