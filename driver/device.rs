//! Driver entry and unload: the framework driver, the `\Device\WskTls` control device, its
//! symbolic link and its parallel PASSIVE_LEVEL queue.

use ksys::kmdf::{
    self, ControlDeviceConfig, DPFLTR_ERROR_LEVEL, DPFLTR_INFO_LEVEL, DriverEntryArgs,
};
use ksys::ntdef::NTSTATUS;
use ksys::utf16;
use ksys::wdf::types::WDFDRIVER;

/// NT name of the control device.
pub const DEVICE_NAME: &[u16] = utf16!("\\Device\\WskTls");
/// DOS name user mode opens as `\\.\WskTls`.
pub const DOS_DEVICE_NAME: &[u16] = utf16!("\\DosDevices\\WskTls");
/// Full access for SYSTEM and Administrators, nobody else (SDDL_DEVOBJ_SYS_ALL_ADM_ALL).
pub const SDDL_SYSTEM_AND_ADMINISTRATORS: &[u16] = utf16!("D:P(A;;GA;;;SY)(A;;GA;;;BA)");

const CONTROL_DEVICE: ControlDeviceConfig = ControlDeviceConfig {
    name: DEVICE_NAME,
    symbolic_link: DOS_DEVICE_NAME,
    sddl: SDDL_SYSTEM_AND_ADMINISTRATORS,
    file_callbacks: None,
};

/// DriverEntry proper (after the KMDF bind): on any failure everything created so far is
/// released (the framework deletes the driver object and its children at unbind).
pub(crate) fn driver_entry(args: &DriverEntryArgs) -> Result<(), NTSTATUS> {
    let result = create_everything(args);
    match result {
        Ok(()) => kmdf::debug_print(
            DPFLTR_INFO_LEVEL,
            "loaded; control device \\Device\\WskTls ready",
        ),
        Err(_) => kmdf::debug_print(DPFLTR_ERROR_LEVEL, "DriverEntry failed"),
    }
    result
}

fn create_everything(args: &DriverEntryArgs) -> Result<(), NTSTATUS> {
    let driver = kmdf::create_non_pnp_driver(args, evt_driver_unload)?;
    let device = kmdf::create_control_device(driver, &CONTROL_DEVICE)?;
    if let Err(status) =
        kmdf::create_default_parallel_queue(device, crate::ioctl::evt_io_device_control)
    {
        kmdf::delete_object(device.as_object());
        return Err(status);
    }
    kmdf::finish_initializing(device);
    Ok(())
}

/// EvtDriverUnload: the framework deletes the control device (and its queue) after this returns.
extern "win64" fn evt_driver_unload(_driver: WDFDRIVER) {
    kmdf::debug_print(DPFLTR_INFO_LEVEL, "unloading");
}
