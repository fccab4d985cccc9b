//! The KMDF bind stub: what the WDK's WdfDriverEntry.lib does, in Rust.
//!
//! `FxDriverEntry` (the image entry point) copies the registry path, binds KMDF 1.15 through
//! `WDFLDR.SYS!WdfVersionBind` — which stores the address of the framework's 444-entry function
//! table in [`FUNCTIONS`] and hands back the driver globals — runs the driver's own entry, and
//! arranges for `WdfVersionUnbind` after the framework's unload (or at once if the driver's entry
//! failed). Class extensions and `.kmdftypeinit` processing are not needed and not done.

use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use super::types::*;
use crate::imports::{WdfVersionBind, WdfVersionUnbind};
use crate::io::{DRIVER_OBJECT, PDRIVER_UNLOAD};
use crate::ntdef::{NTSTATUS, STATUS_INVALID_PARAMETER, UNICODE_STRING, nt_success};

/// UTF-16 "KmdfLibrary", NUL-terminated: the framework component wsktls binds to.
static COMPONENT: [u16; 12] = [
    b'K' as u16,
    b'm' as u16,
    b'd' as u16,
    b'f' as u16,
    b'L' as u16,
    b'i' as u16,
    b'b' as u16,
    b'r' as u16,
    b'a' as u16,
    b'r' as u16,
    b'y' as u16,
    0,
];

/// Capacity of the saved registry path, in UTF-16 units (520 bytes, as the WDK stub keeps).
pub const REGISTRY_PATH_CAPACITY: usize = 260;

/// Where the framework stores the address of its function table (the `WdfFunctions` of the WDK).
static FUNCTIONS: AtomicPtr<WdfFunction> = AtomicPtr::new(ptr::null_mut());
/// The driver globals `WdfVersionBind` returned (the `WdfDriverGlobals` of the WDK).
static GLOBALS: AtomicPtr<WDF_DRIVER_GLOBALS> = AtomicPtr::new(ptr::null_mut());

/// State the framework keeps pointers into for as long as the driver is bound.
struct BindState {
    info: UnsafeCell<WDF_BIND_INFO>,
    registry_path: UnsafeCell<UNICODE_STRING>,
    registry_buffer: UnsafeCell<[u16; REGISTRY_PATH_CAPACITY]>,
    displaced_unload: UnsafeCell<PDRIVER_UNLOAD>,
}

// SAFETY: the cells are written only by the entry stub and the unload stub, which the I/O manager
// serializes (DriverEntry returns before unload can run); the framework only reads them.
unsafe impl Sync for BindState {}

static STATE: BindState = BindState {
    info: UnsafeCell::new(WDF_BIND_INFO {
        Size: core::mem::size_of::<WDF_BIND_INFO>() as u32,
        Component: COMPONENT.as_ptr(),
        Version: WDF_VERSION {
            Major: KMDF_VERSION_MAJOR,
            Minor: KMDF_VERSION_MINOR,
            Build: 0,
        },
        FuncCount: KMDF_1_15_FUNCTION_COUNT,
        FuncTable: FUNCTIONS.as_ptr() as *mut *const WdfFunction,
        Module: ptr::null_mut(),
    }),
    registry_path: UnsafeCell::new(UNICODE_STRING::EMPTY),
    registry_buffer: UnsafeCell::new([0; REGISTRY_PATH_CAPACITY]),
    displaced_unload: UnsafeCell::new(None),
};

/// Entry `index` of the bound function table.
///
/// Calling a WDF function before the bind or with an index past 1.15's table is a driver bug;
/// it stops the driver (panic → bugcheck on Windows, test failure under kemu).
pub fn function(index: usize) -> WdfFunction {
    let table = FUNCTIONS.load(Ordering::Acquire);
    assert!(
        !table.is_null(),
        "KMDF function {index} called before WdfVersionBind"
    );
    assert!(
        index < KMDF_1_15_FUNCTION_COUNT as usize,
        "KMDF function index {index} out of range"
    );
    // SAFETY: the framework's table holds KMDF_1_15_FUNCTION_COUNT entries and index is in range.
    unsafe { *table.add(index) }
}

/// The driver globals (first argument of every WDF function); NULL before the bind.
pub fn globals() -> *mut WDF_DRIVER_GLOBALS {
    GLOBALS.load(Ordering::Acquire)
}

/// Whether the framework is bound (between a successful bind and the unbind).
pub fn is_bound() -> bool {
    !FUNCTIONS.load(Ordering::Acquire).is_null()
}

/// Runs the bind sequence around the driver's own entry `init`.
///
/// # Safety
/// Must be called once per load, as the image entry point, with the I/O manager's arguments.
pub unsafe fn fx_driver_entry(
    driver: *mut DRIVER_OBJECT,
    registry_path: *mut UNICODE_STRING,
    init: impl FnOnce(*mut DRIVER_OBJECT, *mut UNICODE_STRING) -> NTSTATUS,
) -> NTSTATUS {
    // SAFETY: the I/O manager passes a valid registry path; nothing else touches STATE yet.
    let saved = unsafe { save_registry_path(registry_path) };
    let saved = match saved {
        Ok(p) => p,
        Err(status) => return status,
    };
    let mut globals: *mut WDF_DRIVER_GLOBALS = ptr::null_mut();
    // SAFETY: STATE lives for the program; the loader keeps pointers into it until unbind.
    let status = unsafe { WdfVersionBind(driver, saved, STATE.info.get(), &mut globals) };
    if !nt_success(status) {
        FUNCTIONS.store(ptr::null_mut(), Ordering::Release);
        return status;
    }
    GLOBALS.store(globals, Ordering::Release);

    let status = init(driver, saved);
    if !nt_success(status) {
        // SAFETY: bound above with the same arguments.
        unsafe { unbind() };
        return status;
    }
    // SAFETY: `driver` is the live driver object; `globals` came from a successful bind.
    unsafe {
        let displace = (*globals).DisplaceDriverUnload != 0;
        if displace || (*driver).DriverUnload.is_none() {
            *STATE.displaced_unload.get() = (*driver).DriverUnload;
            (*driver).DriverUnload = Some(stub_driver_unload);
        }
    }
    status
}

/// Copies the registry path into static storage the framework may keep pointing at.
///
/// # Safety
/// `source` must be NULL or a valid UNICODE_STRING; no other code may use STATE concurrently.
unsafe fn save_registry_path(source: *mut UNICODE_STRING) -> Result<*mut UNICODE_STRING, NTSTATUS> {
    if source.is_null() {
        return Err(STATUS_INVALID_PARAMETER);
    }
    // SAFETY: checked non-NULL; the caller guarantees validity.
    let src = unsafe { *source };
    let units = src.Length as usize / 2;
    if units >= REGISTRY_PATH_CAPACITY || (units > 0 && src.Buffer.is_null()) {
        return Err(STATUS_INVALID_PARAMETER);
    }
    let buffer = STATE.registry_buffer.get() as *mut u16;
    // SAFETY: `units` < capacity; the source holds `units` UTF-16 units; the regions are distinct.
    unsafe {
        if units > 0 {
            ptr::copy_nonoverlapping(src.Buffer, buffer, units);
        }
        *buffer.add(units) = 0;
        *STATE.registry_path.get() = UNICODE_STRING {
            Length: (units * 2) as u16,
            MaximumLength: (REGISTRY_PATH_CAPACITY * 2) as u16,
            Buffer: buffer,
        };
    }
    Ok(STATE.registry_path.get())
}

/// The driver's service name — the last component of the registry path DriverEntry got — as
/// ASCII into `out` (anything else as '?'); its length, 0 before DriverEntry.
pub(crate) fn service_name(out: &mut [u8]) -> usize {
    // SAFETY: the path is written once, by the entry stub before the driver's own code runs
    // (so before any caller of this); later reads see it unchanged.
    let path = unsafe { *STATE.registry_path.get() };
    let units = path.Length as usize / 2;
    if units == 0 || path.Buffer.is_null() {
        return 0;
    }
    // SAFETY: the saved path holds `units` UTF-16 units in STATE's buffer.
    let path = unsafe { core::slice::from_raw_parts(path.Buffer, units) };
    let start = path
        .iter()
        .rposition(|&u| u == u16::from(b'\\'))
        .map_or(0, |i| i + 1);
    let name = &path[start..];
    let n = name.len().min(out.len());
    for (o, &u) in out.iter_mut().zip(&name[..n]) {
        *o = if (0x20..0x7F).contains(&u) {
            u as u8
        } else {
            b'?'
        };
    }
    n
}

/// Unbinds from the framework and forgets the table.
///
/// # Safety
/// The framework must be bound and no WDF call may be running or follow.
unsafe fn unbind() {
    let globals = GLOBALS.swap(ptr::null_mut(), Ordering::AcqRel);
    // SAFETY: same bind info and saved path the bind used; globals from that bind.
    unsafe {
        WdfVersionUnbind(STATE.registry_path.get(), STATE.info.get(), globals);
    }
    FUNCTIONS.store(ptr::null_mut(), Ordering::Release);
}

/// Unload routine installed over the framework's: runs it, then unbinds.
unsafe extern "win64" fn stub_driver_unload(driver: *mut DRIVER_OBJECT) {
    // SAFETY: written once by the entry stub; unload is serialized by the I/O manager.
    let displaced = unsafe { (*STATE.displaced_unload.get()).take() };
    if let Some(framework_unload) = displaced {
        // SAFETY: the routine the framework installed, called with its own driver object.
        unsafe { framework_unload(driver) };
    }
    // SAFETY: the framework is bound (entry succeeded) and has finished its unload.
    unsafe { unbind() };
}
