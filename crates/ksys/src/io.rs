//! I/O manager structures (IRP, stack locations, MDLs, driver objects, events) and the
//! header-only helpers the WDK provides as macros or FORCEINLINE functions (never exports).

#![allow(non_snake_case)]

use core::ffi::c_void;

use crate::ntdef::{LIST_ENTRY, NTSTATUS, UNICODE_STRING};

/// A device object; its layout is never relied on (always handled by pointer).
#[repr(C)]
#[derive(Debug)]
pub struct DEVICE_OBJECT {
    _opaque: [u8; 0],
}

/// A file object, handled by pointer only.
#[repr(C)]
#[derive(Debug)]
pub struct FILE_OBJECT {
    _opaque: [u8; 0],
}

/// An I/O work item from `IoAllocateWorkItem`, handled by pointer only.
#[repr(C)]
#[derive(Debug)]
pub struct IO_WORKITEM {
    _opaque: [u8; 0],
}

/// Completion routine attached to an IRP stack location (DeviceObject may be NULL).
pub type PIO_COMPLETION_ROUTINE = Option<
    unsafe extern "win64" fn(
        device: *mut DEVICE_OBJECT,
        irp: *mut IRP,
        context: *mut c_void,
    ) -> NTSTATUS,
>;
/// Driver unload routine.
pub type PDRIVER_UNLOAD = Option<unsafe extern "win64" fn(driver: *mut DRIVER_OBJECT)>;
/// IRP dispatch routine.
pub type PDRIVER_DISPATCH =
    Option<unsafe extern "win64" fn(device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS>;
/// Driver entry point as the I/O manager calls it.
pub type PDRIVER_INITIALIZE = Option<
    unsafe extern "win64" fn(
        driver: *mut DRIVER_OBJECT,
        registry_path: *mut UNICODE_STRING,
    ) -> NTSTATUS,
>;
/// `IoQueueWorkItem` routine; runs at PASSIVE_LEVEL on a system worker thread.
pub type PIO_WORKITEM_ROUTINE =
    Option<unsafe extern "win64" fn(device: *mut DEVICE_OBJECT, context: *mut c_void)>;

/// Final status and byte count of an I/O operation.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IO_STATUS_BLOCK {
    /// NTSTATUS (the C union's pointer member shares this 8-byte slot).
    pub Status: NTSTATUS,
    _pad: u32,
    pub Information: usize,
}

impl IO_STATUS_BLOCK {
    /// A block with the given status and information.
    pub const fn new(status: NTSTATUS, information: usize) -> Self {
        IO_STATUS_BLOCK {
            Status: status,
            _pad: 0,
            Information: information,
        }
    }
}

/// The "Overlay" arm of the IRP's Tail union: where the current stack location lives.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IRP_TAIL_OVERLAY {
    /// DeviceQueueEntry / DriverContext[4] (drivers that own the IRP may use it).
    pub DriverContext: [*mut c_void; 4],
    pub Thread: *mut c_void,
    pub AuxiliaryBuffer: *mut u8,
    pub ListEntry: LIST_ENTRY,
    /// Current stack location (the union's PacketType member shares it).
    pub CurrentStackLocation: *mut IO_STACK_LOCATION,
    pub OriginalFileObject: *mut FILE_OBJECT,
    _rest: [u8; 8],
}

/// I/O request packet header (stack locations follow it in the same allocation).
#[repr(C)]
#[derive(Debug)]
pub struct IRP {
    pub Type: i16,
    pub Size: u16,
    pub AllocationProcessorNumber: u16,
    pub Reserved: u16,
    pub MdlAddress: *mut MDL,
    pub Flags: u32,
    /// AssociatedIrp union: SystemBuffer for buffered I/O.
    pub AssociatedIrp: *mut c_void,
    pub ThreadListEntry: LIST_ENTRY,
    pub IoStatus: IO_STATUS_BLOCK,
    pub RequestorMode: i8,
    pub PendingReturned: u8,
    pub StackCount: i8,
    pub CurrentLocation: i8,
    pub Cancel: u8,
    pub CancelIrql: u8,
    pub ApcEnvironment: i8,
    pub AllocationFlags: u8,
    pub UserIosb: *mut IO_STATUS_BLOCK,
    pub UserEvent: *mut KEVENT,
    /// Overlay union (AsynchronousParameters / AllocationSize), 16 bytes.
    pub Overlay: [u64; 2],
    pub CancelRoutine: Option<unsafe extern "win64" fn(device: *mut DEVICE_OBJECT, irp: *mut IRP)>,
    pub UserBuffer: *mut c_void,
    /// Tail union; only the Overlay arm is used.
    pub Tail: IRP_TAIL_OVERLAY,
}

/// Parameters of an IRP_MJ_DEVICE_CONTROL stack location.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IO_STACK_DEVICE_IO_CONTROL {
    pub OutputBufferLength: u32,
    _pad0: u32,
    pub InputBufferLength: u32,
    _pad1: u32,
    pub IoControlCode: u32,
    _pad2: u32,
    pub Type3InputBuffer: *mut c_void,
}

/// The 32-byte Parameters union of a stack location.
#[repr(C)]
#[derive(Clone, Copy)]
pub union IO_STACK_PARAMETERS {
    pub DeviceIoControl: IO_STACK_DEVICE_IO_CONTROL,
    pub Others: [*mut c_void; 4],
}

impl core::fmt::Debug for IO_STACK_PARAMETERS {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("IO_STACK_PARAMETERS { .. }")
    }
}

/// One driver's view of an IRP.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IO_STACK_LOCATION {
    pub MajorFunction: u8,
    pub MinorFunction: u8,
    pub Flags: u8,
    pub Control: u8,
    pub Parameters: IO_STACK_PARAMETERS,
    pub DeviceObject: *mut DEVICE_OBJECT,
    pub FileObject: *mut FILE_OBJECT,
    pub CompletionRoutine: PIO_COMPLETION_ROUTINE,
    pub Context: *mut c_void,
}

/// Memory descriptor list header (the PFN array follows it).
#[repr(C)]
#[derive(Debug)]
pub struct MDL {
    pub Next: *mut MDL,
    pub Size: i16,
    pub MdlFlags: i16,
    pub AllocationProcessorNumber: u16,
    pub Reserved: u16,
    pub Process: *mut c_void,
    pub MappedSystemVa: *mut c_void,
    pub StartVa: *mut c_void,
    pub ByteCount: u32,
    pub ByteOffset: u32,
}

/// Driver object as the I/O manager passes it to DriverEntry.
#[repr(C)]
#[derive(Debug)]
pub struct DRIVER_OBJECT {
    pub Type: i16,
    pub Size: i16,
    pub DeviceObject: *mut DEVICE_OBJECT,
    pub Flags: u32,
    pub DriverStart: *mut c_void,
    pub DriverSize: u32,
    pub DriverSection: *mut c_void,
    pub DriverExtension: *mut c_void,
    pub DriverName: UNICODE_STRING,
    pub HardwareDatabase: *mut UNICODE_STRING,
    pub FastIoDispatch: *mut c_void,
    pub DriverInit: PDRIVER_INITIALIZE,
    pub DriverStartIo: *mut c_void,
    pub DriverUnload: PDRIVER_UNLOAD,
    pub MajorFunction: [PDRIVER_DISPATCH; 28],
}

/// Header shared by every waitable kernel object.
#[repr(C)]
#[derive(Debug)]
pub struct DISPATCHER_HEADER {
    /// Type/flags word (Lock in the C union).
    pub Lock: i32,
    pub SignalState: i32,
    pub WaitListHead: LIST_ENTRY,
}

/// Kernel event (notification or synchronization).
#[repr(C)]
#[derive(Debug)]
pub struct KEVENT {
    pub Header: DISPATCHER_HEADER,
}

/// Event types for `KeInitializeEvent`.
pub const NOTIFICATION_EVENT: u32 = 0;
/// Auto-reset event.
pub const SYNCHRONIZATION_EVENT: u32 = 1;
/// `KeWaitForSingleObject` reason used by drivers.
pub const EXECUTIVE: u32 = 0;
/// Processor mode: kernel.
pub const KERNEL_MODE: i8 = 0;
/// `IoQueueWorkItem` queue drivers must use.
pub const DELAYED_WORK_QUEUE: i32 = 1;

/// Stack-location control bits (`IoSetCompletionRoutine`).
pub const SL_PENDING_RETURNED: u8 = 0x01;
/// Invoke the completion routine on cancel.
pub const SL_INVOKE_ON_CANCEL: u8 = 0x20;
/// Invoke on success.
pub const SL_INVOKE_ON_SUCCESS: u8 = 0x40;
/// Invoke on error.
pub const SL_INVOKE_ON_ERROR: u8 = 0x80;

/// MDL flags.
pub const MDL_MAPPED_TO_SYSTEM_VA: i16 = 0x0001;
/// Pages are locked.
pub const MDL_PAGES_LOCKED: i16 = 0x0002;
/// Built over non-paged pool by `MmBuildMdlForNonPagedPool`.
pub const MDL_SOURCE_IS_NONPAGED_POOL: i16 = 0x0004;
/// Allocated with a fixed size.
pub const MDL_ALLOCATED_FIXED_SIZE: i16 = 0x0008;
/// Describes part of another MDL's buffer.
pub const MDL_PARTIAL: i16 = 0x0010;
/// The pages were locked for writing (IoWriteAccess: a METHOD_OUT_DIRECT output buffer).
pub const MDL_WRITE_OPERATION: i16 = 0x0080;

/// IRP major function for opening a file object (CreateFile).
pub const IRP_MJ_CREATE: u8 = 0x00;
/// IRP major function for the last reference to a file object going away.
pub const IRP_MJ_CLOSE: u8 = 0x02;
/// IRP major function for DeviceIoControl.
pub const IRP_MJ_DEVICE_CONTROL: u8 = 0x0E;
/// IRP major function for the last handle to a file object closing.
pub const IRP_MJ_CLEANUP: u8 = 0x12;
/// Entries of a DRIVER_OBJECT's MajorFunction table (IRP_MJ_MAXIMUM_FUNCTION + 1).
pub const IRP_MJ_COUNT: usize = 28;
/// x64 page size.
pub const PAGE_SIZE: usize = 0x1000;

/// I/O control code methods and access bits (`CTL_CODE`).
pub const METHOD_BUFFERED: u32 = 0;
/// The output buffer is the caller's, locked and described by an MDL; the driver reads it.
pub const METHOD_IN_DIRECT: u32 = 1;
/// The output buffer is the caller's, locked and described by an MDL; the driver writes it.
pub const METHOD_OUT_DIRECT: u32 = 2;
/// Neither (raw user pointers).
pub const METHOD_NEITHER: u32 = 3;
/// Any access (discouraged).
pub const FILE_ANY_ACCESS: u32 = 0;
/// Caller must hold read access.
pub const FILE_READ_ACCESS: u32 = 1;
/// Caller must hold write access.
pub const FILE_WRITE_ACCESS: u32 = 2;
/// Generic device type (vendor types are 0x8000 and above).
pub const FILE_DEVICE_UNKNOWN: u32 = 0x22;

/// `CTL_CODE(device, function, method, access)`.
pub const fn ctl_code(device_type: u32, function: u32, method: u32, access: u32) -> u32 {
    (device_type << 16) | (access << 14) | (function << 2) | method
}

/// `IoSizeOfIrp(stack_count)`: bytes of an IRP with that many stack locations.
pub const fn io_size_of_irp(stack_count: u8) -> usize {
    core::mem::size_of::<IRP>() + stack_count as usize * core::mem::size_of::<IO_STACK_LOCATION>()
}

/// `IoGetCurrentIrpStackLocation`.
///
/// # Safety
/// `irp` must point to a live IRP.
#[inline]
pub unsafe fn io_get_current_irp_stack_location(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: the caller guarantees `irp` is a live IRP, so its tail is readable.
    unsafe { (*irp).Tail.CurrentStackLocation }
}

/// `IoGetNextIrpStackLocation`: the location below the current one (the callee's).
///
/// # Safety
/// `irp` must point to a live IRP whose current location is not its first.
#[inline]
pub unsafe fn io_get_next_irp_stack_location(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: the caller guarantees a live IRP with a location below the current one; the
    // stack locations are contiguous, so stepping back one element stays inside the IRP.
    unsafe { io_get_current_irp_stack_location(irp).sub(1) }
}

/// `IoSetCompletionRoutine`: installs `routine` in the next (callee's) stack location.
///
/// # Safety
/// As for [`io_get_next_irp_stack_location`]; the IRP must be owned by the caller.
#[inline]
pub unsafe fn io_set_completion_routine(
    irp: *mut IRP,
    routine: PIO_COMPLETION_ROUTINE,
    context: *mut c_void,
    on_success: bool,
    on_error: bool,
    on_cancel: bool,
) {
    // SAFETY: forwarded from the caller's contract.
    let next = unsafe { io_get_next_irp_stack_location(irp) };
    let mut control = 0;
    if on_success {
        control |= SL_INVOKE_ON_SUCCESS;
    }
    if on_error {
        control |= SL_INVOKE_ON_ERROR;
    }
    if on_cancel {
        control |= SL_INVOKE_ON_CANCEL;
    }
    // SAFETY: `next` lies inside the caller-owned IRP (see above).
    unsafe {
        (*next).CompletionRoutine = routine;
        (*next).Context = context;
        (*next).Control = control;
    }
}

/// `MmGetSystemAddressForMdlSafe` for MDLs built over non-paged pool (the only kind wsktls
/// makes): their system address is already known; anything else yields NULL.
///
/// # Safety
/// `mdl` must point to a live MDL.
#[inline]
pub unsafe fn mm_get_system_address_for_nonpaged_mdl(mdl: *const MDL) -> *mut c_void {
    // SAFETY: the caller guarantees a live MDL.
    let (flags, va) = unsafe { ((*mdl).MdlFlags, (*mdl).MappedSystemVa) };
    if flags & (MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL) != 0 {
        va
    } else {
        core::ptr::null_mut()
    }
}
