//! The framework driver object: WdfDriverCreate, the framework's unload routine (which runs
//! EvtDriverUnload, then deletes the driver's objects), WdfDriverWdmGetDriverObject.

use ksys::DRIVER_OBJECT;
use ksys::ntdef::{
    NTSTATUS, STATUS_INVALID_DEVICE_STATE, STATUS_INVALID_PARAMETER, STATUS_SUCCESS, UNICODE_STRING,
};
use ksys::wdf::types::*;

use super::{Data, Kind, object, violation};
use crate::bugcheck::wdf_violation;
use crate::thread::{self, DISPATCH, PASSIVE};

/// WdfDriverCreate.
pub(crate) unsafe extern "win64" fn wdf_driver_create(
    globals: *mut WDF_DRIVER_GLOBALS,
    driver_object: *mut DRIVER_OBJECT,
    _registry_path: *const UNICODE_STRING,
    attrs: *mut WDF_OBJECT_ATTRIBUTES,
    config: *mut WDF_DRIVER_CONFIG,
    driver_out: *mut WDFDRIVER,
) -> NTSTATUS {
    thread::require_at_most("WdfDriverCreate", PASSIVE);
    let attrs = object::attributes(attrs, "WdfDriverCreate");
    if config.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: non-NULL config from the driver.
    let config = unsafe { *config };
    if config.Size as usize != std::mem::size_of::<WDF_DRIVER_CONFIG>() {
        violation(
            wdf_violation::INVALID_PARAMETER,
            0,
            format!("WdfDriverCreate: WDF_DRIVER_CONFIG.Size is {}", config.Size),
        );
    }
    let kernel = thread::kernel();
    let mut state = kernel.wdf.lock();
    if state.globals != globals as usize || state.driver_object != driver_object as usize {
        return STATUS_INVALID_PARAMETER;
    }
    if state.driver != 0 {
        return STATUS_INVALID_DEVICE_STATE;
    }
    if config.DriverPoolTag != 0 {
        state.pool_tag = config.DriverPoolTag;
    }
    let handle = match object::create(
        &mut state,
        Kind::Driver,
        0,
        attrs,
        true,
        Data::Driver {
            unload: config.EvtDriverUnload,
        },
    ) {
        Ok(h) => h,
        Err(status) => return status,
    };
    state.driver = handle;
    // The driver object's default execution level is Dispatch; nothing inherits Passive from it.
    if let Some(o) = state.objects.get_mut(&handle) {
        o.passive_callbacks =
            attrs.is_some_and(|a| a.ExecutionLevel == WDF_EXECUTION_LEVEL_PASSIVE);
    }
    drop(state);
    // SAFETY: the live driver object and globals the I/O manager and WdfVersionBind handed out.
    unsafe {
        (*globals).Driver = super::handle(handle, WDFDRIVER::from_raw);
        super::dispatch::install_framework_dispatch(driver_object);
        if config.DriverInitFlags & WDF_DRIVER_INIT_NON_PNP_DRIVER != 0
            && config.EvtDriverUnload.is_some()
        {
            (*driver_object).DriverUnload = Some(framework_unload);
        }
        if !driver_out.is_null() {
            *driver_out = super::handle(handle, WDFDRIVER::from_raw);
        }
    }
    STATUS_SUCCESS
}

/// The framework's DriverUnload: EvtDriverUnload, then every framework object of the driver.
unsafe extern "win64" fn framework_unload(_driver_object: *mut DRIVER_OBJECT) {
    thread::require_at_most("DriverUnload", PASSIVE);
    let kernel = thread::kernel();
    let (driver, unload) = {
        let state = kernel.wdf.lock();
        let unload = match state.objects.get(&state.driver).map(|o| &o.data) {
            Some(Data::Driver { unload }) => *unload,
            _ => None,
        };
        (state.driver, unload)
    };
    if driver == 0 {
        return;
    }
    if let Some(cb) = unload {
        thread::with_activity("EvtDriverUnload", || {
            cb(super::handle(driver, WDFDRIVER::from_raw))
        });
        thread::check_balanced("EvtDriverUnload", PASSIVE);
    }
    thread::with_activity("framework unload", || object::delete_tree(driver));
    kernel.wdf.lock().driver = 0;
}

/// WdfDriverWdmGetDriverObject.
pub(crate) unsafe extern "win64" fn wdf_driver_wdm_get_driver_object(
    _g: *mut WDF_DRIVER_GLOBALS,
    driver: WDFDRIVER,
) -> *mut DRIVER_OBJECT {
    thread::require_at_most("WdfDriverWdmGetDriverObject", DISPATCH);
    super::with_object(
        driver.as_raw() as usize,
        &[Kind::Driver],
        "WdfDriverWdmGetDriverObject",
        |_| (),
    );
    thread::kernel().wdf.lock().driver_object as *mut DRIVER_OBJECT
}
