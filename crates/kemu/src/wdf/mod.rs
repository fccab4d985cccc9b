//! The KMDF subset, bound through WdfVersionBind: kemu's 444-entry function table (entries kemu
//! does not implement bugcheck naming their index), the object model (handles, parents,
//! contexts, references, cleanup/destroy callbacks) and the per-object-type modules.

pub(crate) mod bind;
pub(crate) mod device;
pub(crate) mod dispatch;
pub(crate) mod driver;
pub(crate) mod file;
pub(crate) mod lock;
pub(crate) mod object;
pub(crate) mod queue;
pub(crate) mod registry;
pub(crate) mod request;
pub(crate) mod workitem;

use std::collections::VecDeque;

// Keys are addresses: a fast non-cryptographic hash (no peer chooses them).
use rustc_hash::FxHashMap as HashMap;
use std::ffi::c_void;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use ksys::wdf::types::*;

use crate::bugcheck::{bugcheck, codes, wdf_violation};
use crate::leaks::Site;

/// Framework object types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Driver,
    Device,
    Queue,
    Request,
    File,
    WorkItem,
    SpinLock,
    WaitLock,
    Key,
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestPlace {
    /// Waiting in a queue (not yet presented or retrieved).
    Queued(usize),
    /// Owned by the driver (presented by or retrieved from this queue).
    Driver(usize),
    /// Completed (handle kept alive only by references).
    Completed,
}

/// What a request stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// IRP_MJ_CREATE presented to EvtDeviceFileCreate.
    Create,
    /// IRP_MJ_DEVICE_CONTROL.
    DeviceControl {
        code: u32,
        input_length: usize,
        output_length: usize,
    },
}

pub(crate) struct RequestData {
    pub kind: RequestKind,
    pub irp: usize,
    pub file: usize,
    pub system_buffer: usize,
    /// METHOD_IN_DIRECT / METHOD_OUT_DIRECT: the caller's output buffer, locked for the
    /// request's life (0 for buffered requests).
    pub direct_buffer: usize,
    pub place: RequestPlace,
    pub cancel_routine: PFN_WDF_REQUEST_CANCEL,
    pub cancel_requested: bool,
    pub cancel_claimed: bool,
    pub information: usize,
    /// Create requests: where the outcome goes.
    pub create_result: Option<Arc<Mutex<Option<i32>>>>,
}

pub(crate) struct QueueData {
    pub device: usize,
    pub dispatch: i32,
    pub device_control: PFN_WDF_IO_QUEUE_IO_DEVICE_CONTROL,
    pub pending: VecDeque<usize>,
    pub owned: usize,
    pub passive: bool,
    pub accepting: bool,
}

pub(crate) struct DeviceData {
    pub device_object: usize,
    pub default_queue: usize,
    pub file_config: Option<WDF_FILEOBJECT_CONFIG>,
    pub links: Vec<String>,
    pub name: Option<String>,
}

pub(crate) struct WorkItemData {
    pub callback: PFN_WDF_WORKITEM,
    pub device_object: usize,
    pub queued: bool,
    pub running: usize,
}

pub(crate) enum Data {
    Driver {
        unload: PFN_WDF_DRIVER_UNLOAD,
    },
    Device(DeviceData),
    Queue(QueueData),
    Request(RequestData),
    File {
        device: usize,
    },
    WorkItem(WorkItemData),
    SpinLock {
        owner: Arc<AtomicUsize>,
        saved_irql: Arc<AtomicUsize>,
    },
    WaitLock {
        state: Arc<(Mutex<usize>, Condvar)>,
    },
    /// An open Parameters key of this service.
    Key {
        service: String,
    },
}

pub(crate) struct Object {
    pub kind: Kind,
    pub parent: usize,
    pub children: Vec<usize>,
    pub cleanup: PFN_WDF_OBJECT_CONTEXT_CLEANUP,
    pub destroy: PFN_WDF_OBJECT_CONTEXT_CLEANUP,
    /// The cleanup and destroy callbacks of contexts added by WdfObjectAllocateContext, in
    /// order (the framework calls each context header's after the object's own).
    pub context_callbacks: Vec<(
        PFN_WDF_OBJECT_CONTEXT_CLEANUP,
        PFN_WDF_OBJECT_CONTEXT_CLEANUP,
    )>,
    /// (UniqueType, context address) pairs.
    pub contexts: Vec<(usize, usize)>,
    /// Pool blocks charged to the driver (object + first context, extra contexts).
    pub blocks: Vec<usize>,
    pub references: usize,
    pub deleted: bool,
    pub passive_callbacks: bool,
    pub site: Site,
    pub data: Data,
}

/// A device-init block between WdfControlDeviceInitAllocate and WdfDeviceCreate.
pub(crate) struct DeviceInit {
    pub driver: usize,
    pub sddl: String,
    pub name: Option<String>,
    pub exclusive: bool,
    pub file_config: Option<WDF_FILEOBJECT_CONFIG>,
}

#[derive(Default)]
pub(crate) struct WdfState {
    pub objects: HashMap<usize, Object>,
    pub next_handle: usize,
    pub globals: usize,
    pub driver: usize,
    pub driver_object: usize,
    pub pool_tag: u32,
    pub service_name: String,
    pub inits: HashMap<usize, DeviceInit>,
    /// FILE_OBJECT → framework file object (KMDF keeps this association for control devices,
    /// whose file objects it may not put in FsContext).
    pub files: HashMap<usize, usize>,
}

/// The framework of one kernel.
#[derive(Default)]
pub(crate) struct Framework {
    state: Mutex<WdfState>,
}

impl Framework {
    pub fn lock(&self) -> MutexGuard<'_, WdfState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl WdfState {
    /// Looks up a live handle of one of `kinds`; anything else is a WDF_VIOLATION.
    pub fn get(
        &mut self,
        handle: usize,
        kinds: &[Kind],
        routine: &str,
    ) -> Result<&mut Object, String> {
        match self.objects.get_mut(&handle) {
            Some(o) if kinds.is_empty() || kinds.contains(&o.kind) => Ok(o),
            Some(o) => Err(format!(
                "{routine}: handle {handle:#x} is a {:?}, expected {kinds:?}",
                o.kind
            )),
            None => Err(format!(
                "{routine}: {handle:#x} is not a live framework handle"
            )),
        }
    }
}

/// Stops the kernel for a KMDF rule violation.
pub(crate) fn violation(sub: usize, handle: usize, message: String) -> ! {
    bugcheck(codes::WDF_VIOLATION, [sub, handle, 0, 0], message)
}

/// Looks up `handle` under the framework lock and runs `f`, or bugchecks (after unlocking).
pub(crate) fn with_object<R>(
    handle: usize,
    kinds: &[Kind],
    routine: &str,
    f: impl FnOnce(&mut Object) -> R,
) -> R {
    let kernel = crate::thread::kernel();
    let mut state = kernel.wdf.lock();
    match state.get(handle, kinds, routine) {
        Ok(o) => f(o),
        Err(message) => {
            drop(state);
            violation(wdf_violation::INVALID_HANDLE, handle, message)
        }
    }
}

/// Turns a raw handle into a typed one for a driver callback.
pub(crate) fn handle<T>(raw: usize, make: unsafe fn(*mut c_void) -> T) -> T {
    // SAFETY: `raw` is a live handle kemu issued for this object type.
    unsafe { make(raw as *mut c_void) }
}
