//! Non-PnP control devices: WdfControlDeviceInitAllocate and the WdfDeviceInit* setters a control
//! device may use, WdfDeviceCreate, WdfDeviceCreateSymbolicLink, WdfControlFinishInitializing.

use ksys::io::DEVICE_OBJECT;
use ksys::ntdef::{
    NTSTATUS, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_DEVICE_REQUEST,
    STATUS_INVALID_PARAMETER, STATUS_SUCCESS, UNICODE_STRING,
};
use ksys::wdf::types::*;

use super::{Data, DeviceData, DeviceInit, Kind, object, violation, with_object};
use crate::bugcheck::wdf_violation;
use crate::ke::pool::Owner;
use crate::rtl::unicode_text;
use crate::sddl::SecurityDescriptor;
use crate::thread::{self, DISPATCH, PASSIVE};

const INIT_BLOCK: usize = 0x40;

fn with_init<R>(init: PWDFDEVICE_INIT, routine: &str, f: impl FnOnce(&mut DeviceInit) -> R) -> R {
    let kernel = thread::kernel();
    let mut state = kernel.wdf.lock();
    match state.inits.get_mut(&(init as usize)) {
        Some(i) => f(i),
        None => {
            drop(state);
            violation(
                wdf_violation::INVALID_HANDLE,
                init as usize,
                format!(
                    "{routine}: {:#x} is not a live WDFDEVICE_INIT",
                    init as usize
                ),
            )
        }
    }
}

/// WdfControlDeviceInitAllocate.
pub(crate) unsafe extern "win64" fn wdf_control_device_init_allocate(
    _g: *mut WDF_DRIVER_GLOBALS,
    driver: WDFDRIVER,
    sddl: *const UNICODE_STRING,
) -> PWDFDEVICE_INIT {
    thread::require_at_most("WdfControlDeviceInitAllocate", PASSIVE);
    with_object(
        driver.as_raw() as usize,
        &[Kind::Driver],
        "WdfControlDeviceInitAllocate",
        |_| (),
    );
    // SAFETY: the driver passes a valid UNICODE_STRING (or NULL).
    let Some(sddl) = (unsafe { unicode_text(sddl) }) else {
        violation(
            wdf_violation::INVALID_PARAMETER,
            0,
            "WdfControlDeviceInitAllocate: NULL SDDL string".into(),
        );
    };
    let kernel = thread::kernel();
    let mut state = kernel.wdf.lock();
    let block = kernel
        .pool
        .allocate(INIT_BLOCK, state.pool_tag, true, false, Owner::Driver, true);
    if block.is_null() {
        return std::ptr::null_mut();
    }
    state.inits.insert(
        block as usize,
        DeviceInit {
            driver: driver.as_raw() as usize,
            sddl,
            name: None,
            exclusive: false,
            file_config: None,
        },
    );
    block as PWDFDEVICE_INIT
}

fn free_init(init: PWDFDEVICE_INIT) {
    let kernel = thread::kernel();
    let tag = {
        let mut state = kernel.wdf.lock();
        state.inits.remove(&(init as usize));
        state.pool_tag
    };
    kernel.pool.free(
        init as *mut u8,
        Some(tag),
        Owner::Driver,
        "WdfDeviceInitFree",
    );
}

/// WdfDeviceInitFree.
pub(crate) unsafe extern "win64" fn wdf_device_init_free(
    _g: *mut WDF_DRIVER_GLOBALS,
    init: PWDFDEVICE_INIT,
) {
    thread::require_at_most("WdfDeviceInitFree", PASSIVE);
    with_init(init, "WdfDeviceInitFree", |_| ());
    free_init(init);
}

/// WdfDeviceInitSetIoType (affects read/write only; accepted and validated).
pub(crate) unsafe extern "win64" fn wdf_device_init_set_io_type(
    _g: *mut WDF_DRIVER_GLOBALS,
    init: PWDFDEVICE_INIT,
    io_type: i32,
) {
    thread::require_at_most("WdfDeviceInitSetIoType", PASSIVE);
    if !(1..=4).contains(&io_type) {
        violation(
            wdf_violation::INVALID_PARAMETER,
            init as usize,
            format!("WdfDeviceInitSetIoType: {io_type} is not a WDF_DEVICE_IO_TYPE"),
        );
    }
    with_init(init, "WdfDeviceInitSetIoType", |_| ());
}

/// WdfDeviceInitSetExclusive.
pub(crate) unsafe extern "win64" fn wdf_device_init_set_exclusive(
    _g: *mut WDF_DRIVER_GLOBALS,
    init: PWDFDEVICE_INIT,
    exclusive: u8,
) {
    thread::require_at_most("WdfDeviceInitSetExclusive", PASSIVE);
    with_init(init, "WdfDeviceInitSetExclusive", |i| {
        i.exclusive = exclusive != 0
    });
}

/// WdfDeviceInitAssignName (copies the name: an allocation that can fail).
pub(crate) unsafe extern "win64" fn wdf_device_init_assign_name(
    _g: *mut WDF_DRIVER_GLOBALS,
    init: PWDFDEVICE_INIT,
    name: *const UNICODE_STRING,
) -> NTSTATUS {
    thread::require_at_most("WdfDeviceInitAssignName", PASSIVE);
    with_init(init, "WdfDeviceInitAssignName", |_| ());
    // SAFETY: the driver passes a valid UNICODE_STRING or NULL.
    let text = unsafe { unicode_text(name) };
    if text.is_some() && thread::kernel().faults.allocation_fails() {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    if text.as_deref().is_some_and(|t| !t.starts_with('\\')) {
        return STATUS_INVALID_PARAMETER;
    }
    with_init(init, "WdfDeviceInitAssignName", |i| i.name = text);
    STATUS_SUCCESS
}

/// WdfDeviceInitAssignSDDLString.
pub(crate) unsafe extern "win64" fn wdf_device_init_assign_sddl_string(
    _g: *mut WDF_DRIVER_GLOBALS,
    init: PWDFDEVICE_INIT,
    sddl: *const UNICODE_STRING,
) -> NTSTATUS {
    thread::require_at_most("WdfDeviceInitAssignSDDLString", PASSIVE);
    // SAFETY: the driver passes a valid UNICODE_STRING or NULL.
    let Some(text) = (unsafe { unicode_text(sddl) }) else {
        return STATUS_INVALID_PARAMETER;
    };
    if thread::kernel().faults.allocation_fails() {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    with_init(init, "WdfDeviceInitAssignSDDLString", |i| i.sddl = text);
    STATUS_SUCCESS
}

/// WdfDeviceInitSetFileObjectConfig.
pub(crate) unsafe extern "win64" fn wdf_device_init_set_file_object_config(
    _g: *mut WDF_DRIVER_GLOBALS,
    init: PWDFDEVICE_INIT,
    config: *mut WDF_FILEOBJECT_CONFIG,
    attrs: *mut WDF_OBJECT_ATTRIBUTES,
) {
    thread::require_at_most("WdfDeviceInitSetFileObjectConfig", PASSIVE);
    if config.is_null() {
        violation(
            wdf_violation::INVALID_PARAMETER,
            init as usize,
            "WdfDeviceInitSetFileObjectConfig: NULL config".into(),
        );
    }
    // SAFETY: non-NULL config from the driver.
    let config = unsafe { *config };
    if config.Size as usize != std::mem::size_of::<WDF_FILEOBJECT_CONFIG>() {
        violation(
            wdf_violation::INVALID_PARAMETER,
            init as usize,
            format!("WdfDeviceInitSetFileObjectConfig: Size is {}", config.Size),
        );
    }
    // File callbacks always run at PASSIVE_LEVEL here (create and cleanup on the caller's
    // thread, close deferred to a worker if the last request completes at DISPATCH_LEVEL), so
    // the attributes are only validated.
    let _ = object::attributes(attrs, "WdfDeviceInitSetFileObjectConfig");
    with_init(init, "WdfDeviceInitSetFileObjectConfig", |i| {
        i.file_config = Some(config);
    });
}

/// WdfDeviceCreate: on success the framework takes the init block and NULLs the caller's pointer.
pub(crate) unsafe extern "win64" fn wdf_device_create(
    _g: *mut WDF_DRIVER_GLOBALS,
    init: *mut PWDFDEVICE_INIT,
    attrs: *mut WDF_OBJECT_ATTRIBUTES,
    device_out: *mut WDFDEVICE,
) -> NTSTATUS {
    thread::require_at_most("WdfDeviceCreate", PASSIVE);
    if init.is_null() || device_out.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: non-NULL pointer to the driver's PWDFDEVICE_INIT.
    let block = unsafe { *init };
    let attrs = object::attributes(attrs, "WdfDeviceCreate");
    let (driver, sddl, name, exclusive, file_config) = with_init(block, "WdfDeviceCreate", |i| {
        (
            i.driver,
            i.sddl.clone(),
            i.name.clone(),
            i.exclusive,
            i.file_config,
        )
    });
    let Ok(descriptor) = SecurityDescriptor::parse(&sddl) else {
        return STATUS_INVALID_PARAMETER;
    };
    let kernel = thread::kernel();
    let handle = {
        let mut state = kernel.wdf.lock();
        let data = Data::Device(DeviceData {
            device_object: 0,
            default_queue: 0,
            file_config,
            links: Vec::new(),
            name: name.clone(),
        });
        match object::create(&mut state, Kind::Device, driver, attrs, true, data) {
            Ok(h) => h,
            Err(status) => return status,
        }
    };
    let driver_object = kernel.wdf.lock().driver_object;
    let device_object =
        match kernel
            .io
            .create_device(name, descriptor, exclusive, handle, driver_object)
        {
            Ok(d) => d,
            Err(status) => {
                let mut state = kernel.wdf.lock();
                if let Some(p) = state.objects.get_mut(&driver) {
                    p.children.retain(|&c| c != handle);
                }
                drop(state);
                object::destroy(handle);
                return status;
            }
        };
    with_object(handle, &[Kind::Device], "WdfDeviceCreate", |o| {
        if let Data::Device(d) = &mut o.data {
            d.device_object = device_object;
        }
    });
    free_init(block);
    // SAFETY: the driver's out-pointers (checked non-NULL).
    unsafe {
        *init = std::ptr::null_mut();
        *device_out = super::handle(handle, WDFDEVICE::from_raw);
    }
    STATUS_SUCCESS
}

fn device_data<R>(device: usize, routine: &str, f: impl FnOnce(&mut DeviceData) -> R) -> R {
    with_object(device, &[Kind::Device], routine, |o| match &mut o.data {
        Data::Device(d) => f(d),
        _ => unreachable!("device object without device data"),
    })
}

/// WdfDeviceCreateSymbolicLink.
pub(crate) unsafe extern "win64" fn wdf_device_create_symbolic_link(
    _g: *mut WDF_DRIVER_GLOBALS,
    device: WDFDEVICE,
    link: *const UNICODE_STRING,
) -> NTSTATUS {
    thread::require_at_most("WdfDeviceCreateSymbolicLink", PASSIVE);
    let raw = device.as_raw() as usize;
    let Some(name) = device_data(raw, "WdfDeviceCreateSymbolicLink", |d| d.name.clone()) else {
        return STATUS_INVALID_DEVICE_REQUEST;
    };
    // SAFETY: the driver passes a valid UNICODE_STRING or NULL.
    let Some(link) = (unsafe { unicode_text(link) }) else {
        return STATUS_INVALID_PARAMETER;
    };
    let kernel = thread::kernel();
    if kernel.faults.allocation_fails() {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    if let Err(status) = kernel.io.create_link(&link, &name) {
        return status;
    }
    device_data(raw, "WdfDeviceCreateSymbolicLink", |d| d.links.push(link));
    STATUS_SUCCESS
}

/// WdfControlFinishInitializing.
pub(crate) unsafe extern "win64" fn wdf_control_finish_initializing(
    _g: *mut WDF_DRIVER_GLOBALS,
    device: WDFDEVICE,
) {
    thread::require_at_most("WdfControlFinishInitializing", DISPATCH);
    let object = device_data(
        device.as_raw() as usize,
        "WdfControlFinishInitializing",
        |d| d.device_object,
    );
    thread::kernel().io.finish_initializing(object);
}

/// WdfDeviceWdmGetDeviceObject.
pub(crate) unsafe extern "win64" fn wdf_device_wdm_get_device_object(
    _g: *mut WDF_DRIVER_GLOBALS,
    device: WDFDEVICE,
) -> *mut DEVICE_OBJECT {
    thread::require_at_most("WdfDeviceWdmGetDeviceObject", DISPATCH);
    device_data(
        device.as_raw() as usize,
        "WdfDeviceWdmGetDeviceObject",
        |d| d.device_object,
    ) as *mut DEVICE_OBJECT
}

/// Device deletion: its links and name go away; the DEVICE_OBJECT lives on while referenced.
pub(crate) fn teardown(device: usize) {
    let kernel = thread::kernel();
    let (links, object) = {
        let mut state = kernel.wdf.lock();
        match state.objects.get_mut(&device).map(|o| &mut o.data) {
            Some(Data::Device(d)) => (std::mem::take(&mut d.links), d.device_object),
            _ => return,
        }
    };
    for link in links {
        let _ = kernel.io.delete_link(&link);
    }
    kernel.io.delete_device(object);
}
