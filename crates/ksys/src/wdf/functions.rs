//! Typed accessors for the KMDF functions wsktls calls: index and signature in one place.
//!
//! Each `WdfXxx` here loads entry `index` of the table the framework handed the bind stub, casts
//! it to its declared type and calls it with the driver's globals first — what the WDK's
//! `WdfFunctions[WdfXxxTableIndex](WdfDriverGlobals, ...)` macros do.

#![allow(non_snake_case, clippy::too_many_arguments)]

use core::ffi::c_void;

use super::bind;
use super::types::*;
use crate::io::{DEVICE_OBJECT, DRIVER_OBJECT, IRP};
use crate::ntdef::{NTSTATUS, UNICODE_STRING};

/// One KMDF function wsktls uses: its table index and name (kemu implements exactly these).
#[derive(Debug)]
pub struct WdfFunctionEntry {
    /// Index in the KMDF 1.15 function table.
    pub index: usize,
    /// Function name without the `Wdf` prefix stripped.
    pub name: &'static str,
}

macro_rules! wdf_functions {
    ($( $index:literal => fn $name:ident ( $($arg:ident : $ty:ty),* $(,)? ) $(-> $ret:ty)? ; )*) => {
        /// Function-pointer types of the table entries (globals first).
        pub mod pfn {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[allow(non_camel_case_types)]
                #[doc = concat!("Table entry ", stringify!($index), ": `", stringify!($name), "`.")]
                pub type $name = unsafe extern "win64" fn(*mut WDF_DRIVER_GLOBALS, $($ty),*) $(-> $ret)?;
            )*
        }

        /// Table indices.
        pub mod index {
            $(
                #[allow(non_upper_case_globals)]
                #[doc = concat!("Index of `", stringify!($name), "`.")]
                pub const $name: usize = $index;
            )*
        }

        $(
            #[doc = concat!("`", stringify!($name), "` (KMDF table index ", stringify!($index), ").")]
            ///
            /// # Safety
            /// The framework must be bound, and the function's documented contract (valid handles,
            /// IRQL) must hold.
            #[inline]
            pub unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
                let entry = bind::function($index);
                // SAFETY: `entry` is table slot `$index` of the bound KMDF 1.15 table, whose type
                // is `pfn::$name` (indices are identical in every KMDF version >= 1.15).
                let f = unsafe { core::mem::transmute::<WdfFunction, pfn::$name>(entry) };
                // SAFETY: forwarded contract of this very function.
                unsafe { f(bind::globals(), $($arg),*) }
            }
        )*

        /// Every KMDF function ksys declares.
        pub static WDF_FUNCTION_DIRECTORY: &[WdfFunctionEntry] = &[
            $( WdfFunctionEntry { index: $index, name: stringify!($name) }, )*
        ];
    };
}

wdf_functions! {
    25 => fn WdfControlDeviceInitAllocate(driver: WDFDRIVER, sddl: *const UNICODE_STRING) -> PWDFDEVICE_INIT;
    27 => fn WdfControlFinishInitializing(device: WDFDEVICE);
    31 => fn WdfDeviceWdmGetDeviceObject(device: WDFDEVICE) -> *mut DEVICE_OBJECT;
    54 => fn WdfDeviceInitFree(init: PWDFDEVICE_INIT);
    61 => fn WdfDeviceInitSetIoType(init: PWDFDEVICE_INIT, io_type: i32);
    62 => fn WdfDeviceInitSetExclusive(init: PWDFDEVICE_INIT, exclusive: u8);
    67 => fn WdfDeviceInitAssignName(init: PWDFDEVICE_INIT, name: *const UNICODE_STRING) -> NTSTATUS;
    68 => fn WdfDeviceInitAssignSDDLString(init: PWDFDEVICE_INIT, sddl: *const UNICODE_STRING) -> NTSTATUS;
    71 => fn WdfDeviceInitSetFileObjectConfig(init: PWDFDEVICE_INIT, config: *mut WDF_FILEOBJECT_CONFIG, attributes: *mut WDF_OBJECT_ATTRIBUTES);
    75 => fn WdfDeviceCreate(init: *mut PWDFDEVICE_INIT, attributes: *mut WDF_OBJECT_ATTRIBUTES, device: *mut WDFDEVICE) -> NTSTATUS;
    80 => fn WdfDeviceCreateSymbolicLink(device: WDFDEVICE, link: *const UNICODE_STRING) -> NTSTATUS;
    116 => fn WdfDriverCreate(driver_object: *mut DRIVER_OBJECT, registry_path: *const UNICODE_STRING, attributes: *mut WDF_OBJECT_ATTRIBUTES, config: *mut WDF_DRIVER_CONFIG, driver: *mut WDFDRIVER) -> NTSTATUS;
    118 => fn WdfDriverWdmGetDriverObject(driver: WDFDRIVER) -> *mut DRIVER_OBJECT;
    119 => fn WdfDriverOpenParametersRegistryKey(driver: WDFDRIVER, desired_access: u32, attributes: *mut WDF_OBJECT_ATTRIBUTES, key: *mut WDFKEY) -> NTSTATUS;
    139 => fn WdfFileObjectGetDevice(file: WDFFILEOBJECT) -> WDFDEVICE;
    152 => fn WdfIoQueueCreate(device: WDFDEVICE, config: *mut WDF_IO_QUEUE_CONFIG, attributes: *mut WDF_OBJECT_ATTRIBUTES, queue: *mut WDFQUEUE) -> NTSTATUS;
    157 => fn WdfIoQueueGetDevice(queue: WDFQUEUE) -> WDFDEVICE;
    158 => fn WdfIoQueueRetrieveNextRequest(queue: WDFQUEUE, request: *mut WDFREQUEST) -> NTSTATUS;
    159 => fn WdfIoQueueRetrieveRequestByFileObject(queue: WDFQUEUE, file: WDFFILEOBJECT, request: *mut WDFREQUEST) -> NTSTATUS;
    164 => fn WdfIoQueuePurgeSynchronously(queue: WDFQUEUE);
    202 => fn WdfObjectGetTypedContextWorker(object: WDFOBJECT, type_info: *const WDF_OBJECT_CONTEXT_TYPE_INFO) -> *mut c_void;
    203 => fn WdfObjectAllocateContext(object: WDFOBJECT, attributes: *mut WDF_OBJECT_ATTRIBUTES, context: *mut *mut c_void) -> NTSTATUS;
    205 => fn WdfObjectReferenceActual(object: WDFOBJECT, tag: *mut c_void, line: i32, file: *const u8);
    206 => fn WdfObjectDereferenceActual(object: WDFOBJECT, tag: *mut c_void, line: i32, file: *const u8);
    208 => fn WdfObjectDelete(object: WDFOBJECT);
    231 => fn WdfRegistryClose(key: WDFKEY);
    238 => fn WdfRegistryQueryUnicodeString(key: WDFKEY, value_name: *const UNICODE_STRING, value_byte_length: *mut u16, value: *mut UNICODE_STRING) -> NTSTATUS;
    240 => fn WdfRegistryQueryULong(key: WDFKEY, value_name: *const UNICODE_STRING, value: *mut u32) -> NTSTATUS;
    254 => fn WdfRequestGetStatus(request: WDFREQUEST) -> NTSTATUS;
    255 => fn WdfRequestMarkCancelable(request: WDFREQUEST, cancel: PFN_WDF_REQUEST_CANCEL);
    256 => fn WdfRequestUnmarkCancelable(request: WDFREQUEST) -> NTSTATUS;
    257 => fn WdfRequestIsCanceled(request: WDFREQUEST) -> u8;
    263 => fn WdfRequestComplete(request: WDFREQUEST, status: NTSTATUS);
    265 => fn WdfRequestCompleteWithInformation(request: WDFREQUEST, status: NTSTATUS, information: usize);
    266 => fn WdfRequestGetParameters(request: WDFREQUEST, parameters: *mut WDF_REQUEST_PARAMETERS);
    269 => fn WdfRequestRetrieveInputBuffer(request: WDFREQUEST, minimum: usize, buffer: *mut *mut c_void, length: *mut usize) -> NTSTATUS;
    270 => fn WdfRequestRetrieveOutputBuffer(request: WDFREQUEST, minimum: usize, buffer: *mut *mut c_void, length: *mut usize) -> NTSTATUS;
    275 => fn WdfRequestSetInformation(request: WDFREQUEST, information: usize);
    277 => fn WdfRequestGetFileObject(request: WDFREQUEST) -> WDFFILEOBJECT;
    281 => fn WdfRequestForwardToIoQueue(request: WDFREQUEST, queue: WDFQUEUE) -> NTSTATUS;
    285 => fn WdfRequestWdmGetIrp(request: WDFREQUEST) -> *mut IRP;
    312 => fn WdfWaitLockCreate(attributes: *mut WDF_OBJECT_ATTRIBUTES, lock: *mut WDFWAITLOCK) -> NTSTATUS;
    313 => fn WdfWaitLockAcquire(lock: WDFWAITLOCK, timeout: *const i64) -> NTSTATUS;
    314 => fn WdfWaitLockRelease(lock: WDFWAITLOCK);
    315 => fn WdfSpinLockCreate(attributes: *mut WDF_OBJECT_ATTRIBUTES, lock: *mut WDFSPINLOCK) -> NTSTATUS;
    316 => fn WdfSpinLockAcquire(lock: WDFSPINLOCK);
    317 => fn WdfSpinLockRelease(lock: WDFSPINLOCK);
    379 => fn WdfWorkItemCreate(config: *mut WDF_WORKITEM_CONFIG, attributes: *mut WDF_OBJECT_ATTRIBUTES, work_item: *mut WDFWORKITEM) -> NTSTATUS;
    380 => fn WdfWorkItemEnqueue(work_item: WDFWORKITEM);
    381 => fn WdfWorkItemGetParentObject(work_item: WDFWORKITEM) -> WDFOBJECT;
    382 => fn WdfWorkItemFlush(work_item: WDFWORKITEM);
    393 => fn WdfRequestMarkCancelableEx(request: WDFREQUEST, cancel: PFN_WDF_REQUEST_CANCEL) -> NTSTATUS;
}
