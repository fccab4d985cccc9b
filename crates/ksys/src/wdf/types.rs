//! KMDF handles, configuration structures, enums and callback types (x64 layouts).

#![allow(non_snake_case, non_camel_case_types)]

use core::ffi::c_void;

use crate::ntdef::NTSTATUS;

macro_rules! wdf_handles {
    ($($(#[doc = $doc:literal])* $name:ident;)*) => {$(
        $(#[doc = $doc])*
        ///
        /// Opaque framework handle: only the framework (or ksys, from a framework answer) makes one.
        #[repr(transparent)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(*mut c_void);

        impl $name {
            /// The NULL handle (what a failed creation leaves behind).
            pub const NULL: $name = $name(core::ptr::null_mut());

            /// Wraps a raw handle value.
            ///
            /// # Safety
            /// `raw` must be NULL or a live handle of this type handed out by the framework.
            pub const unsafe fn from_raw(raw: *mut c_void) -> Self {
                $name(raw)
            }

            /// The raw handle value.
            pub const fn as_raw(self) -> *mut c_void {
                self.0
            }

            /// Whether this is the NULL handle.
            pub fn is_null(self) -> bool {
                self.0.is_null()
            }

            /// The same object as a generic `WDFOBJECT`.
            pub const fn as_object(self) -> WDFOBJECT {
                WDFOBJECT(self.0)
            }
        }

        // SAFETY: a WDF handle is an opaque token; the framework synchronizes the object behind it.
        unsafe impl Send for $name {}
        // SAFETY: as above.
        unsafe impl Sync for $name {}
    )*};
}

wdf_handles! {
    /// Any framework object.
    WDFOBJECT;
    /// The framework driver object.
    WDFDRIVER;
    /// A framework device (wsktls: the control device).
    WDFDEVICE;
    /// An I/O queue.
    WDFQUEUE;
    /// An I/O request.
    WDFREQUEST;
    /// A file object (one per open handle).
    WDFFILEOBJECT;
    /// A framework work item.
    WDFWORKITEM;
    /// A framework spin lock.
    WDFSPINLOCK;
    /// A framework wait lock.
    WDFWAITLOCK;
    /// An open registry key.
    WDFKEY;
}

/// `KEY_READ`: query values, enumerate subkeys, be notified, read the security descriptor.
pub const KEY_READ: u32 = 0x0002_0019;

/// Opaque device-initialization block (`PWDFDEVICE_INIT`).
#[repr(C)]
#[derive(Debug)]
pub struct WDFDEVICE_INIT {
    _opaque: [u8; 0],
}
/// Pointer to [`WDFDEVICE_INIT`].
pub type PWDFDEVICE_INIT = *mut WDFDEVICE_INIT;

/// `EvtDriverUnload`.
pub type PFN_WDF_DRIVER_UNLOAD = Option<extern "win64" fn(driver: WDFDRIVER)>;
/// `EvtDriverDeviceAdd` (PnP only; NULL for wsktls).
pub type PFN_WDF_DRIVER_DEVICE_ADD =
    Option<extern "win64" fn(driver: WDFDRIVER, init: PWDFDEVICE_INIT) -> NTSTATUS>;
/// `EvtIoDeviceControl`.
pub type PFN_WDF_IO_QUEUE_IO_DEVICE_CONTROL = Option<
    extern "win64" fn(
        queue: WDFQUEUE,
        request: WDFREQUEST,
        output_len: usize,
        input_len: usize,
        ioctl: u32,
    ),
>;
/// `EvtIoDefault`/`EvtIoRead`/`EvtIoWrite` shapes (unused; typed as raw pointers).
pub type PFN_WDF_UNUSED = *const c_void;
/// `EvtDeviceFileCreate` (must complete the request).
pub type PFN_WDF_DEVICE_FILE_CREATE =
    Option<extern "win64" fn(device: WDFDEVICE, request: WDFREQUEST, file: WDFFILEOBJECT)>;
/// `EvtFileCleanup` / `EvtFileClose`.
pub type PFN_WDF_FILE_EVENT = Option<extern "win64" fn(file: WDFFILEOBJECT)>;
/// `EvtRequestCancel`.
pub type PFN_WDF_REQUEST_CANCEL = Option<extern "win64" fn(request: WDFREQUEST)>;
/// `EvtWorkItem`.
pub type PFN_WDF_WORKITEM = Option<extern "win64" fn(work_item: WDFWORKITEM)>;
/// `EvtCleanupCallback` / `EvtDestroyCallback`.
pub type PFN_WDF_OBJECT_CONTEXT_CLEANUP = Option<extern "win64" fn(object: WDFOBJECT)>;

/// `WDF_VERSION`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WDF_VERSION {
    pub Major: u32,
    pub Minor: u32,
    pub Build: u32,
}

/// What the bind stub hands `WdfVersionBind` (must be `'static`: the framework keeps it).
#[repr(C)]
#[derive(Debug)]
pub struct WDF_BIND_INFO {
    pub Size: u32,
    /// NUL-terminated UTF-16 "KmdfLibrary".
    pub Component: *const u16,
    pub Version: WDF_VERSION,
    pub FuncCount: u32,
    /// For 1.15+ the framework stores the address of its own table into `*FuncTable`.
    pub FuncTable: *mut *const WdfFunction,
    /// Loader-private; NULL at bind.
    pub Module: *mut c_void,
}

/// One entry of the framework's function table (called after a cast to its real type).
pub type WdfFunction = *const c_void;

/// Per-driver framework globals; the first argument of every WDF function.
#[repr(C)]
#[derive(Debug)]
pub struct WDF_DRIVER_GLOBALS {
    pub Driver: WDFDRIVER,
    pub DriverFlags: u32,
    pub DriverTag: u32,
    pub DriverName: [u8; 32],
    pub DisplaceDriverUnload: u8,
}

/// `WDF_DRIVER_CONFIG`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WDF_DRIVER_CONFIG {
    pub Size: u32,
    pub EvtDriverDeviceAdd: PFN_WDF_DRIVER_DEVICE_ADD,
    pub EvtDriverUnload: PFN_WDF_DRIVER_UNLOAD,
    pub DriverInitFlags: u32,
    pub DriverPoolTag: u32,
}

/// `WDF_OBJECT_ATTRIBUTES`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WDF_OBJECT_ATTRIBUTES {
    pub Size: u32,
    pub EvtCleanupCallback: PFN_WDF_OBJECT_CONTEXT_CLEANUP,
    pub EvtDestroyCallback: PFN_WDF_OBJECT_CONTEXT_CLEANUP,
    pub ExecutionLevel: i32,
    pub SynchronizationScope: i32,
    pub ParentObject: WDFOBJECT,
    pub ContextSizeOverride: usize,
    pub ContextTypeInfo: *const WDF_OBJECT_CONTEXT_TYPE_INFO,
}

impl WDF_OBJECT_ATTRIBUTES {
    /// `WDF_OBJECT_ATTRIBUTES_INIT`: inherit execution level and synchronization scope.
    pub const fn init() -> Self {
        WDF_OBJECT_ATTRIBUTES {
            Size: core::mem::size_of::<WDF_OBJECT_ATTRIBUTES>() as u32,
            EvtCleanupCallback: None,
            EvtDestroyCallback: None,
            ExecutionLevel: WDF_EXECUTION_LEVEL_INHERIT_FROM_PARENT,
            SynchronizationScope: WDF_SYNCHRONIZATION_SCOPE_INHERIT_FROM_PARENT,
            ParentObject: WDFOBJECT::NULL,
            ContextSizeOverride: 0,
            ContextTypeInfo: core::ptr::null(),
        }
    }
}

/// Describes an object context type; matched by the address of the struct itself.
#[repr(C)]
#[derive(Debug)]
pub struct WDF_OBJECT_CONTEXT_TYPE_INFO {
    pub Size: u32,
    pub ContextName: *const u8,
    pub ContextSize: usize,
    pub UniqueType: *const WDF_OBJECT_CONTEXT_TYPE_INFO,
    pub EvtDriverGetUniqueContextType: *const c_void,
}

// SAFETY: context type infos are immutable statics that only hold pointers to other statics.
unsafe impl Sync for WDF_OBJECT_CONTEXT_TYPE_INFO {}

/// `WDF_IO_QUEUE_CONFIG`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WDF_IO_QUEUE_CONFIG {
    pub Size: u32,
    pub DispatchType: i32,
    pub PowerManaged: i32,
    pub AllowZeroLengthRequests: u8,
    pub DefaultQueue: u8,
    pub EvtIoDefault: PFN_WDF_UNUSED,
    pub EvtIoRead: PFN_WDF_UNUSED,
    pub EvtIoWrite: PFN_WDF_UNUSED,
    pub EvtIoDeviceControl: PFN_WDF_IO_QUEUE_IO_DEVICE_CONTROL,
    pub EvtIoInternalDeviceControl: PFN_WDF_UNUSED,
    pub EvtIoStop: PFN_WDF_UNUSED,
    pub EvtIoResume: PFN_WDF_UNUSED,
    pub EvtIoCanceledOnQueue: PFN_WDF_UNUSED,
    /// `Settings.Parallel.NumberOfPresentedRequests` (u32::MAX = unlimited).
    pub NumberOfPresentedRequests: u32,
    pub Driver: WDFDRIVER,
}

/// `WDF_FILEOBJECT_CONFIG`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WDF_FILEOBJECT_CONFIG {
    pub Size: u32,
    pub EvtDeviceFileCreate: PFN_WDF_DEVICE_FILE_CREATE,
    pub EvtFileClose: PFN_WDF_FILE_EVENT,
    pub EvtFileCleanup: PFN_WDF_FILE_EVENT,
    pub AutoForwardCleanupClose: i32,
    pub FileObjectClass: i32,
}

/// `WDF_WORKITEM_CONFIG`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WDF_WORKITEM_CONFIG {
    pub Size: u32,
    pub EvtWorkItemFunc: PFN_WDF_WORKITEM,
    pub AutomaticSerialization: u8,
}

/// Device-control arm of `WDF_REQUEST_PARAMETERS.Parameters`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WDF_REQUEST_DEVICE_IO_CONTROL {
    pub OutputBufferLength: usize,
    pub InputBufferLength: usize,
    pub IoControlCode: u32,
    pub Type3InputBuffer: *mut c_void,
}

/// `WDF_REQUEST_PARAMETERS` (only the device-control arm of the union is modelled).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WDF_REQUEST_PARAMETERS {
    pub Size: u16,
    pub MinorFunction: u8,
    pub Type: i32,
    pub DeviceIoControl: WDF_REQUEST_DEVICE_IO_CONTROL,
}

impl WDF_REQUEST_PARAMETERS {
    /// `WDF_REQUEST_PARAMETERS_INIT`.
    pub const fn init() -> Self {
        WDF_REQUEST_PARAMETERS {
            Size: core::mem::size_of::<WDF_REQUEST_PARAMETERS>() as u16,
            MinorFunction: 0,
            Type: 0,
            DeviceIoControl: WDF_REQUEST_DEVICE_IO_CONTROL {
                OutputBufferLength: 0,
                InputBufferLength: 0,
                IoControlCode: 0,
                Type3InputBuffer: core::ptr::null_mut(),
            },
        }
    }
}

/// WDF_REQUEST_TYPE value for device-control requests.
pub const WDF_REQUEST_TYPE_DEVICE_CONTROL: i32 = 0x0E;

/// WDF_EXECUTION_LEVEL.
pub const WDF_EXECUTION_LEVEL_INHERIT_FROM_PARENT: i32 = 1;
/// Callbacks run at PASSIVE_LEVEL.
pub const WDF_EXECUTION_LEVEL_PASSIVE: i32 = 2;
/// Callbacks may run at DISPATCH_LEVEL.
pub const WDF_EXECUTION_LEVEL_DISPATCH: i32 = 3;
/// WDF_SYNCHRONIZATION_SCOPE: inherit.
pub const WDF_SYNCHRONIZATION_SCOPE_INHERIT_FROM_PARENT: i32 = 1;
/// No framework serialization.
pub const WDF_SYNCHRONIZATION_SCOPE_NONE: i32 = 4;
/// WDF_TRI_STATE.
pub const WDF_FALSE: i32 = 0;
/// True.
pub const WDF_TRUE: i32 = 1;
/// Framework default.
pub const WDF_USE_DEFAULT: i32 = 2;
/// WDF_DEVICE_IO_TYPE: buffered.
pub const WDF_DEVICE_IO_BUFFERED: i32 = 2;
/// WDF_DRIVER_INIT_FLAGS: non-PnP driver (needs EvtDriverUnload to be unloadable).
pub const WDF_DRIVER_INIT_NON_PNP_DRIVER: u32 = 0x1;
/// WDF_IO_QUEUE_DISPATCH_TYPE: sequential.
pub const WDF_IO_QUEUE_DISPATCH_SEQUENTIAL: i32 = 1;
/// Parallel: requests are presented as soon as they arrive.
pub const WDF_IO_QUEUE_DISPATCH_PARALLEL: i32 = 2;
/// Manual: the driver pulls requests.
pub const WDF_IO_QUEUE_DISPATCH_MANUAL: i32 = 3;
/// WDF_FILEOBJECT_CLASS used by WDF_FILEOBJECT_CONFIG_INIT.
pub const WDF_FILE_OBJECT_WDF_CANNOT_USE_FS_CONTEXTS: i32 = 4;

/// KMDF version wsktls binds (inbox on every Windows 10 and 11).
pub const KMDF_VERSION_MAJOR: u32 = 1;
/// Minor version bound.
pub const KMDF_VERSION_MINOR: u32 = 15;
/// Function-table size of KMDF 1.15 (the framework requires this exact count).
pub const KMDF_1_15_FUNCTION_COUNT: u32 = 444;
