//! Driver entry and unload: the framework driver, the `\Device\WskTls` control device, its
//! symbolic link and its parallel PASSIVE_LEVEL queue.

use ksys::kmdf::{
    self, ControlDeviceConfig, DPFLTR_ERROR_LEVEL, DPFLTR_INFO_LEVEL, DPFLTR_WARNING_LEVEL,
    DriverEntryArgs, FileCallbacks, Request,
};
use ksys::ntdef::{NTSTATUS, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS};
use ksys::utf16;
use ksys::wdf::types::{WDFDEVICE, WDFDRIVER, WDFFILEOBJECT, WDFREQUEST};

use crate::objects::Limits;
use crate::service::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_HANDLE};

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
    file_callbacks: Some(FileCallbacks {
        create: Some(evt_file_create),
        cleanup: Some(evt_file_cleanup),
        close: None,
    }),
};

/// EvtDeviceFileCreate: every open succeeds (the device's SDDL already decided who may open).
extern "win64" fn evt_file_create(_device: WDFDEVICE, request: WDFREQUEST, _file: WDFFILEOBJECT) {
    Request::from_presented(request).complete(STATUS_SUCCESS, 0);
}

/// EvtFileCleanup: the handle is closing — its listeners and connections go with it.
extern "win64" fn evt_file_cleanup(file: WDFFILEOBJECT) {
    crate::service::cleanup(file);
}

/// DriverEntry proper (after the KMDF bind): on any failure everything created so far is
/// released (the framework deletes the driver object and its children at unbind).
pub(crate) fn driver_entry(args: &DriverEntryArgs) -> Result<(), NTSTATUS> {
    let result = create_everything(args);
    match result {
        Ok(()) => {
            kmdf::debug_print(
                DPFLTR_INFO_LEVEL,
                "loaded; control device \\Device\\WskTls ready",
            );
            log_windows_floor();
        }
        Err(_) => kmdf::debug_print(DPFLTR_ERROR_LEVEL, "DriverEntry failed"),
    }
    result
}

/// Build that ExAllocatePool2 needs (Windows 10 2004): below it the image does not load at all.
const MINIMUM_BUILD: u32 = 19041;
/// First build whose kernel Schannel offers TLS 1.3 (Windows Server 2022; Windows 11 is 22000).
const TLS13_BUILD: u32 = 20348;

/// Says which Windows this is and what it means for TLS 1.3 (the floors are in README).
fn log_windows_floor() {
    let build = kmdf::windows_build();
    let verdict = match build {
        Some(b) if b >= TLS13_BUILD => "TLS 1.2 and 1.3 available",
        Some(b) if b >= MINIMUM_BUILD => "TLS 1.3 needs build 20348 or later: TLS 1.2 only",
        Some(_) => "below the supported floor (build 19041)",
        None => "build unknown",
    };
    kmdf::debug_print_args(
        DPFLTR_INFO_LEVEL,
        format_args!("Windows build {}: {verdict}", build.map_or(0, |b| b)),
    );
}

fn create_everything(args: &DriverEntryArgs) -> Result<(), NTSTATUS> {
    let driver = kmdf::create_non_pnp_driver(args, evt_driver_unload)?;
    let limits = read_limits(driver);
    let device = kmdf::create_control_device(driver, &CONTROL_DEVICE)?;
    if let Err(status) =
        kmdf::create_default_parallel_queue(device, crate::ioctl::evt_io_device_control)
    {
        kmdf::delete_object(device.as_object());
        return Err(status);
    }
    if let Err(status) = crate::service::start(driver, device, limits) {
        kmdf::delete_object(device.as_object());
        return Err(status);
    }
    kmdf::finish_initializing(device);
    Ok(())
}

/// Registry value (REG_DWORD under the service's Parameters key): connections and listeners the
/// driver holds at most.
pub const MAX_CONNECTIONS_VALUE: &[u16] = utf16!("MaxConnections");
/// Registry value: connections and listeners one handle may hold.
pub const MAX_CONNECTIONS_PER_HANDLE_VALUE: &[u16] = utf16!("MaxConnectionsPerHandle");
/// Largest limit the registry may set (each connection costs pool even when idle).
pub const LARGEST_LIMIT: u32 = 1 << 20;

/// The object limits: the defaults, or what the service's Parameters key sets (read once, at
/// load). A value of 0 or above [`LARGEST_LIMIT`] is refused with a warning.
fn read_limits(driver: WDFDRIVER) -> Limits {
    let mut limits = Limits {
        total: DEFAULT_MAX_CONNECTIONS,
        per_handle: DEFAULT_MAX_CONNECTIONS_PER_HANDLE,
    };
    if let Ok(key) = kmdf::ParametersKey::open(driver) {
        for (name, label, slot) in [
            (MAX_CONNECTIONS_VALUE, "MaxConnections", &mut limits.total),
            (
                MAX_CONNECTIONS_PER_HANDLE_VALUE,
                "MaxConnectionsPerHandle",
                &mut limits.per_handle,
            ),
        ] {
            match key.dword(name) {
                Ok(v) if (1..=LARGEST_LIMIT).contains(&v) => *slot = v as usize,
                Ok(v) => kmdf::debug_print_args(
                    DPFLTR_WARNING_LEVEL,
                    format_args!(
                        "registry {label} = {v} ignored: must be 1 to {LARGEST_LIMIT}; using {}",
                        *slot
                    ),
                ),
                // Absent: the default.
                Err(status) if status == STATUS_OBJECT_NAME_NOT_FOUND => {}
                Err(status) => kmdf::debug_print_args(
                    DPFLTR_WARNING_LEVEL,
                    format_args!(
                        "registry {label} unreadable ({:#010x}, not a REG_DWORD?); using {}",
                        status.0 as u32, *slot
                    ),
                ),
            }
        }
    }
    kmdf::debug_print_args(
        DPFLTR_INFO_LEVEL,
        format_args!(
            "limits: {} connections, {} per handle",
            limits.total, limits.per_handle
        ),
    );
    limits
}

/// EvtDriverUnload: the framework deletes the control device (and its queue) after this returns.
extern "win64" fn evt_driver_unload(driver: WDFDRIVER) {
    kmdf::debug_print(DPFLTR_INFO_LEVEL, "unloading");
    crate::service::shutdown(driver);
}
