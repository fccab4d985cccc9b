//! Device objects and symbolic links for WDM drivers: IoCreateDevice, IoDeleteDevice,
//! IoCreateSymbolicLink, IoDeleteSymbolicLink (all PASSIVE_LEVEL). A KMDF driver gets the same
//! through the framework; a plain WDM driver calls these and fills its DRIVER_OBJECT's
//! MajorFunction table itself.

use ksys::io::{DEVICE_OBJECT, DRIVER_OBJECT};
use ksys::ntdef::{
    NTSTATUS, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER,
    STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS, UNICODE_STRING,
};

use crate::bugcheck::{bugcheck, codes};
use crate::sddl::SecurityDescriptor;
use crate::thread::{self, PASSIVE};

/// The security a device object gets when its creator gives none (IoCreateDevice): full
/// access for SYSTEM and Administrators, read, write and execute for everyone — "for most
/// device types and characteristics", per Microsoft Learn's "Securing Device Objects".
pub(crate) const DEFAULT_DEVICE_SDDL: &str = "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGWGX;;;WD)";

/// DEVICE_OBJECT.NextDevice (x64).
const NEXT_DEVICE: usize = 0x10;
/// DEVICE_OBJECT.Flags (x64).
const FLAGS: usize = 0x30;
/// DEVICE_OBJECT.DeviceExtension (x64).
const DEVICE_EXTENSION: usize = 0x40;
/// DEVICE_OBJECT.DeviceType (x64).
const DEVICE_TYPE: usize = 0x48;
/// DO_DEVICE_INITIALIZING: set at creation; the I/O manager clears it for devices created in
/// DriverEntry once DriverEntry returns, a driver for devices it creates later.
pub(crate) const DO_DEVICE_INITIALIZING: u32 = 0x80;

/// ntoskrnl!IoCreateDevice. The device extension (zeroed) is freed with the device object.
pub(crate) unsafe extern "win64" fn io_create_device(
    driver: *mut DRIVER_OBJECT,
    extension_size: u32,
    name: *mut UNICODE_STRING,
    device_type: u32,
    _characteristics: u32,
    exclusive: u8,
    device_out: *mut *mut DEVICE_OBJECT,
) -> NTSTATUS {
    thread::require_at_most("IoCreateDevice", PASSIVE);
    if driver.is_null() || device_out.is_null() {
        bugcheck(
            codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
            [0x1000, driver as usize, device_out as usize, 0],
            "IoCreateDevice: NULL driver object or out-pointer".to_owned(),
        );
    }
    // SAFETY: the driver's out-pointer, cleared first.
    unsafe { *device_out = core::ptr::null_mut() };
    // SAFETY: NULL or the driver's UNICODE_STRING.
    let name = unsafe { crate::rtl::unicode_text(name) };
    if name.as_deref() == Some("") {
        return STATUS_INVALID_PARAMETER;
    }
    let descriptor =
        SecurityDescriptor::parse(DEFAULT_DEVICE_SDDL).expect("the default device SDDL parses");
    let kernel = thread::kernel();
    let device = match kernel
        .io
        .create_device(name, descriptor, exclusive != 0, 0, driver as usize)
    {
        Ok(device) => device,
        Err(status) => return status,
    };
    let extension = if extension_size == 0 {
        0
    } else {
        let Some(extension) = kernel.io.attach_extension(device, extension_size as usize) else {
            kernel.io.delete_device(device);
            return STATUS_INSUFFICIENT_RESOURCES;
        };
        extension
    };
    // SAFETY: the fresh device object (DEVICE_OBJECT_SIZE bytes) and the loader's driver
    // object; the driver's list of devices is only touched at PASSIVE_LEVEL by its own calls.
    unsafe {
        let base = device as *mut u8;
        (base.add(FLAGS) as *mut u32).write(DO_DEVICE_INITIALIZING);
        (base.add(DEVICE_EXTENSION) as *mut usize).write(extension);
        (base.add(DEVICE_TYPE) as *mut u32).write(device_type);
        (base.add(NEXT_DEVICE) as *mut *mut DEVICE_OBJECT).write((*driver).DeviceObject);
        (*driver).DeviceObject = device as *mut DEVICE_OBJECT;
        *device_out = device as *mut DEVICE_OBJECT;
    }
    STATUS_SUCCESS
}

/// ntoskrnl!IoDeleteDevice: the name goes now (and the device leaves its driver's list), the
/// memory with the last reference and the last open file.
pub(crate) unsafe extern "win64" fn io_delete_device(device: *mut DEVICE_OBJECT) {
    thread::require_at_most("IoDeleteDevice", PASSIVE);
    let kernel = thread::kernel();
    let Some(driver) = kernel.io.driver_of(device as usize) else {
        bugcheck(
            codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
            [0x1001, device as usize, 0, 0],
            format!(
                "IoDeleteDevice: {:#x} is not a live device object",
                device as usize
            ),
        );
    };
    if driver != 0 {
        // SAFETY: the device's driver object and the device list it heads (PASSIVE_LEVEL,
        // the driver's own calls only).
        unsafe {
            let driver = driver as *mut DRIVER_OBJECT;
            let next = ((device as *mut u8).add(NEXT_DEVICE) as *mut *mut DEVICE_OBJECT).read();
            let mut link: *mut *mut DEVICE_OBJECT = &mut (*driver).DeviceObject;
            while !(*link).is_null() {
                if *link == device {
                    *link = next;
                    break;
                }
                link = ((*link) as *mut u8).add(NEXT_DEVICE) as *mut *mut DEVICE_OBJECT;
            }
        }
    }
    kernel.io.delete_device(device as usize);
}

/// ntoskrnl!IoCreateSymbolicLink.
pub(crate) unsafe extern "win64" fn io_create_symbolic_link(
    link: *mut UNICODE_STRING,
    target: *mut UNICODE_STRING,
) -> NTSTATUS {
    thread::require_at_most("IoCreateSymbolicLink", PASSIVE);
    // SAFETY: NULL or the driver's UNICODE_STRINGs.
    let (link, target) = unsafe {
        (
            crate::rtl::unicode_text(link),
            crate::rtl::unicode_text(target),
        )
    };
    match (link, target) {
        (Some(link), Some(target)) if !link.is_empty() && !target.is_empty() => {
            match thread::kernel().io.create_link(&link, &target) {
                Ok(()) => STATUS_SUCCESS,
                Err(status) => status,
            }
        }
        _ => STATUS_INVALID_PARAMETER,
    }
}

/// ntoskrnl!IoDeleteSymbolicLink.
pub(crate) unsafe extern "win64" fn io_delete_symbolic_link(link: *mut UNICODE_STRING) -> NTSTATUS {
    thread::require_at_most("IoDeleteSymbolicLink", PASSIVE);
    // SAFETY: NULL or the driver's UNICODE_STRING.
    match unsafe { crate::rtl::unicode_text(link) } {
        Some(link) if !link.is_empty() => {
            if thread::kernel().io.delete_link(&link) {
                STATUS_SUCCESS
            } else {
                STATUS_OBJECT_NAME_NOT_FOUND
            }
        }
        _ => STATUS_INVALID_PARAMETER,
    }
}
