//! The test-only driver: a control device whose IOCTLs exercise one framework feature each.

use core::ffi::c_void;
use core::sync::atomic::{AtomicUsize, Ordering};

use ksys::imports::*;
use ksys::io::{
    DELAYED_WORK_QUEUE, DEVICE_OBJECT, EXECUTIVE, IO_WORKITEM, IRP, KERNEL_MODE, KEVENT,
    NOTIFICATION_EVENT, ctl_code,
};
use ksys::kmdf::{self, ControlDeviceConfig, DriverEntryArgs, FileCallbacks, Request};
use ksys::ntdef::*;
use ksys::utf16;
use ksys::wdf::functions::*;
use ksys::wdf::types::*;

pub const PEND: u32 = ctl_code(0x9000, 0x801, 0, 0);
pub const COMPLETE_PENDED: u32 = ctl_code(0x9000, 0x802, 0, 0);
pub const LEAK_POOL: u32 = ctl_code(0x9000, 0x803, 0, 0);
pub const WAIT_AT_DISPATCH: u32 = ctl_code(0x9000, 0x804, 0, 0);
pub const COMPLETE_TWICE: u32 = ctl_code(0x9000, 0x805, 0, 0);
pub const WDF_WORK_ITEM: u32 = ctl_code(0x9000, 0x806, 0, 0);
pub const IO_WORK_ITEM: u32 = ctl_code(0x9000, 0x807, 0, 0);
pub const COUNTERS: u32 = ctl_code(0x9000, 0x808, 0, 0);

/// The pended request, guarded by the WDFSPINLOCK in `LOCK` (the documented race fix:
/// whoever clears it under the lock owns completion; Unmark is called under the lock).
static PENDED: AtomicUsize = AtomicUsize::new(0);
static LOCK: AtomicUsize = AtomicUsize::new(0);
/// Set by a test before load: the default queue is sequential instead of parallel.
pub static SEQUENTIAL: AtomicUsize = AtomicUsize::new(0);
static CLEANUP_CALLBACKS: AtomicUsize = AtomicUsize::new(0);
static DESTROY_CALLBACKS: AtomicUsize = AtomicUsize::new(0);
pub const OBJECTS: u32 = ctl_code(0x9000, 0x809, 0, 0);
pub const FILE_DEVICE: u32 = ctl_code(0x9000, 0x80A, 0, 0);
pub const CALL_UNIMPLEMENTED: u32 = ctl_code(0x9000, 0x80B, 0, 0);
/// In: a loopback port (u16). Connects there, posts a receive whose completion queues an I/O
/// work item; the work item receives again, waiting up to 5 s. Out: (work item ran on the WSK
/// poller) << 32 | bytes of its own receive (u32::MAX: it timed out).
pub const WSK_WORK_ITEM: u32 = ctl_code(0x9000, 0x80C, 0, 0);
/// A timer's DPC queues an I/O work item, which sets a second timer and waits (5 s at most) for
/// that timer's DPC to set an event. Out: (work item ran on the DPC thread) << 32 | (its wait
/// succeeded).
pub const DPC_WORK_ITEM: u32 = ctl_code(0x9000, 0x80D, 0, 0);
/// KMDF table index kemu does not implement (WdfChildListCreate).
pub const UNIMPLEMENTED_INDEX: usize = 0;

#[repr(C)]
struct Counter {
    value: u64,
    magic: u64,
}

static COUNTER_TYPE: WDF_OBJECT_CONTEXT_TYPE_INFO = WDF_OBJECT_CONTEXT_TYPE_INFO {
    Size: core::mem::size_of::<WDF_OBJECT_CONTEXT_TYPE_INFO>() as u32,
    ContextName: c"Counter".as_ptr() as *const u8,
    ContextSize: core::mem::size_of::<Counter>(),
    UniqueType: &COUNTER_TYPE,
    EvtDriverGetUniqueContextType: core::ptr::null(),
};
static OTHER_TYPE: WDF_OBJECT_CONTEXT_TYPE_INFO = WDF_OBJECT_CONTEXT_TYPE_INFO {
    Size: core::mem::size_of::<WDF_OBJECT_CONTEXT_TYPE_INFO>() as u32,
    ContextName: c"Other".as_ptr() as *const u8,
    ContextSize: 8,
    UniqueType: &OTHER_TYPE,
    EvtDriverGetUniqueContextType: core::ptr::null(),
};
static DEVICE: AtomicUsize = AtomicUsize::new(0);
static WORK_ITEM: AtomicUsize = AtomicUsize::new(0);
static WORK_RUNS: AtomicUsize = AtomicUsize::new(0);
static CLEANUPS: AtomicUsize = AtomicUsize::new(0);
static CLOSES: AtomicUsize = AtomicUsize::new(0);
static IO_WORK_IRQL: AtomicUsize = AtomicUsize::new(99);

const CONFIG: ControlDeviceConfig = ControlDeviceConfig {
    name: utf16!("\\Device\\KemuTest"),
    symbolic_link: utf16!("\\DosDevices\\KemuTest"),
    sddl: utf16!("D:P(A;;GA;;;SY)(A;;GA;;;BA)"),
    file_callbacks: Some(FileCallbacks {
        create: None,
        cleanup: Some(file_cleanup),
        close: Some(file_close),
    }),
};

pub fn driver_entry(args: &DriverEntryArgs) -> Result<(), NTSTATUS> {
    let driver = kmdf::create_non_pnp_driver(args, unload)?;
    let device = kmdf::create_control_device(driver, &CONFIG)?;
    if SEQUENTIAL.load(Ordering::SeqCst) != 0 {
        create_sequential_queue(device)?;
    } else {
        kmdf::create_default_parallel_queue(device, device_control)?;
    }
    let mut attrs = WDF_OBJECT_ATTRIBUTES::init();
    attrs.ParentObject = device.as_object();
    let mut lock = WDFSPINLOCK::NULL;
    // SAFETY: valid attributes and out-pointer.
    let status = unsafe { WdfSpinLockCreate(&mut attrs, &mut lock) };
    if !nt_success(status) {
        return Err(status);
    }
    LOCK.store(lock.as_raw() as usize, Ordering::SeqCst);
    DEVICE.store(device.as_raw() as usize, Ordering::SeqCst);
    kmdf::finish_initializing(device);
    Ok(())
}

fn create_sequential_queue(device: WDFDEVICE) -> Result<(), NTSTATUS> {
    let mut config = WDF_IO_QUEUE_CONFIG {
        Size: core::mem::size_of::<WDF_IO_QUEUE_CONFIG>() as u32,
        DispatchType: WDF_IO_QUEUE_DISPATCH_SEQUENTIAL,
        PowerManaged: WDF_FALSE,
        AllowZeroLengthRequests: 0,
        DefaultQueue: 1,
        EvtIoDefault: core::ptr::null(),
        EvtIoRead: core::ptr::null(),
        EvtIoWrite: core::ptr::null(),
        EvtIoDeviceControl: Some(device_control),
        EvtIoInternalDeviceControl: core::ptr::null(),
        EvtIoStop: core::ptr::null(),
        EvtIoResume: core::ptr::null(),
        EvtIoCanceledOnQueue: core::ptr::null(),
        NumberOfPresentedRequests: 0,
        Driver: WDFDRIVER::NULL,
    };
    let mut attrs = WDF_OBJECT_ATTRIBUTES::init();
    attrs.ExecutionLevel = WDF_EXECUTION_LEVEL_PASSIVE;
    let mut queue = WDFQUEUE::NULL;
    // SAFETY: valid config and attributes; the device is live.
    let status = unsafe { WdfIoQueueCreate(device, &mut config, &mut attrs, &mut queue) };
    if nt_success(status) {
        Ok(())
    } else {
        Err(status)
    }
}

fn lock() -> WDFSPINLOCK {
    // SAFETY: created in DriverEntry, parented to the device, live until unload.
    unsafe { WDFSPINLOCK::from_raw(LOCK.load(Ordering::SeqCst) as *mut c_void) }
}

extern "win64" fn object_cleanup(_object: WDFOBJECT) {
    CLEANUP_CALLBACKS.fetch_add(1, Ordering::SeqCst);
}

extern "win64" fn object_destroy(_object: WDFOBJECT) {
    DESTROY_CALLBACKS.fetch_add(1, Ordering::SeqCst);
}

/// The allocated context's own cleanup: counted like the object's.
extern "win64" fn other_cleanup(_object: WDFOBJECT) {
    CLEANUP_CALLBACKS.fetch_add(1, Ordering::SeqCst);
}

/// The allocated context's own destroy: counted only if the context is still there and
/// holds what was written into it (the framework calls it before freeing the contexts).
extern "win64" fn other_destroy(object: WDFOBJECT) {
    // SAFETY: the object being destroyed; its OTHER context is 8 bytes.
    let value = unsafe {
        let other = WdfObjectGetTypedContextWorker(object, &OTHER_TYPE) as *const u64;
        if other.is_null() { 0 } else { *other }
    };
    if value == 7 {
        DESTROY_CALLBACKS.fetch_add(1, Ordering::SeqCst);
    }
}

/// Contexts, wait locks, references and deletion: returns cleanups * 100 + destroys seen,
/// or STATUS_UNSUCCESSFUL if any rule did not hold.
fn objects(device: WDFDEVICE) -> Result<usize, NTSTATUS> {
    let mut attrs = WDF_OBJECT_ATTRIBUTES::init();
    attrs.ParentObject = device.as_object();
    attrs.ContextTypeInfo = &COUNTER_TYPE;
    attrs.EvtCleanupCallback = Some(object_cleanup);
    attrs.EvtDestroyCallback = Some(object_destroy);
    let mut wait_lock = WDFWAITLOCK::NULL;
    let cleanups = CLEANUP_CALLBACKS.load(Ordering::SeqCst);
    let destroys = DESTROY_CALLBACKS.load(Ordering::SeqCst);
    // SAFETY: every handle is live when used; the contexts are the object's own.
    unsafe {
        let status = WdfWaitLockCreate(&mut attrs, &mut wait_lock);
        if !nt_success(status) {
            return Err(status);
        }
        let object = wait_lock.as_object();
        let counter = WdfObjectGetTypedContextWorker(object, &COUNTER_TYPE) as *mut Counter;
        if counter.is_null() || (*counter).value != 0 || (counter as usize) % 8 != 0 {
            return Err(STATUS_UNSUCCESSFUL);
        }
        (*counter).value = 41;
        (*counter).magic = 0x5EED;
        if !WdfObjectGetTypedContextWorker(object, &OTHER_TYPE).is_null() {
            return Err(STATUS_UNSUCCESSFUL);
        }
        let mut other_attrs = WDF_OBJECT_ATTRIBUTES::init();
        other_attrs.ContextTypeInfo = &OTHER_TYPE;
        other_attrs.EvtCleanupCallback = Some(other_cleanup);
        other_attrs.EvtDestroyCallback = Some(other_destroy);
        let mut other: *mut c_void = core::ptr::null_mut();
        if WdfObjectAllocateContext(object, &mut other_attrs, &mut other) != STATUS_SUCCESS
            || WdfObjectGetTypedContextWorker(object, &OTHER_TYPE) != other
            || WdfObjectAllocateContext(object, &mut other_attrs, &mut other)
                != STATUS_OBJECT_NAME_EXISTS
        {
            return Err(STATUS_UNSUCCESSFUL);
        }
        *(other as *mut u64) = 7;
        if WdfWaitLockAcquire(wait_lock, core::ptr::null()) != STATUS_SUCCESS {
            return Err(STATUS_UNSUCCESSFUL);
        }
        WdfWaitLockRelease(wait_lock);
        let zero = 0i64;
        if WdfWaitLockAcquire(wait_lock, &zero) != STATUS_SUCCESS {
            return Err(STATUS_UNSUCCESSFUL);
        }
        WdfWaitLockRelease(wait_lock);
        // A reference keeps the deleted object's memory (and context) alive.
        WdfObjectReferenceActual(object, core::ptr::null_mut(), 0, core::ptr::null());
        WdfObjectDelete(object);
        let seen = (
            CLEANUP_CALLBACKS.load(Ordering::SeqCst) - cleanups,
            DESTROY_CALLBACKS.load(Ordering::SeqCst) - destroys,
        );
        // The object's cleanup and the allocated context's; no destroy while referenced.
        if seen != (2, 0) || (*counter).value != 41 {
            return Err(STATUS_UNSUCCESSFUL);
        }
        WdfObjectDereferenceActual(object, core::ptr::null_mut(), 0, core::ptr::null());
    }
    Ok((CLEANUP_CALLBACKS.load(Ordering::SeqCst) - cleanups) * 100
        + DESTROY_CALLBACKS.load(Ordering::SeqCst)
        - destroys)
}

extern "win64" fn unload(_driver: WDFDRIVER) {
    WORK_ITEM.store(0, Ordering::SeqCst);
}

extern "win64" fn file_cleanup(_file: WDFFILEOBJECT) {
    CLEANUPS.fetch_add(1, Ordering::SeqCst);
    finish_pended(STATUS_CANCELLED);
}

extern "win64" fn file_close(_file: WDFFILEOBJECT) {
    CLOSES.fetch_add(1, Ordering::SeqCst);
}

fn request(raw: usize) -> WDFREQUEST {
    // SAFETY: `raw` is a request handle the framework presented to this driver.
    unsafe { WDFREQUEST::from_raw(raw as *mut c_void) }
}

/// EvtRequestCancel: completes the request if it is still the stored one.
extern "win64" fn cancel(req: WDFREQUEST) {
    // SAFETY: the lock is live; held only for the exchange.
    let mine = unsafe {
        WdfSpinLockAcquire(lock());
        let mine = PENDED
            .compare_exchange(req.as_raw() as usize, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        WdfSpinLockRelease(lock());
        mine
    };
    if mine {
        // SAFETY: we cleared the stored handle under the lock: completion is ours.
        unsafe { WdfRequestComplete(req, STATUS_CANCELLED) };
    }
}

/// Completes the pended request unless its cancel callback owns it (Unmark under the lock).
fn finish_pended(status: NTSTATUS) -> bool {
    // SAFETY: the stored handle is live while stored; Unmark runs under the lock, so the
    // cancel callback cannot complete it in between.
    let (found, ours) = unsafe {
        WdfSpinLockAcquire(lock());
        let raw = PENDED.load(Ordering::SeqCst);
        let mut ours = 0;
        if raw != 0 && WdfRequestUnmarkCancelable(request(raw)) != STATUS_CANCELLED {
            PENDED.store(0, Ordering::SeqCst);
            ours = raw;
        }
        WdfSpinLockRelease(lock());
        (raw != 0, ours)
    };
    if ours != 0 {
        // SAFETY: unmarked and cleared under the lock: completion is ours.
        unsafe { WdfRequestComplete(request(ours), status) };
    }
    found
}

extern "win64" fn work_item(_wi: WDFWORKITEM) {
    WORK_RUNS.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "win64" fn io_work_routine(_device: *mut DEVICE_OBJECT, context: *mut c_void) {
    // SAFETY: a plain query; the context is the caller's live event.
    unsafe {
        IO_WORK_IRQL.store(KeGetCurrentIrql() as usize, Ordering::SeqCst);
        KeSetEvent(context as *mut KEVENT, 0, 0);
    }
}

fn wdf_work_item(device: WDFDEVICE) -> Result<usize, NTSTATUS> {
    let mut wi = WORK_ITEM.load(Ordering::SeqCst);
    if wi == 0 {
        let mut config = WDF_WORKITEM_CONFIG {
            Size: 24,
            EvtWorkItemFunc: Some(work_item),
            AutomaticSerialization: 0,
        };
        let mut attrs = WDF_OBJECT_ATTRIBUTES::init();
        attrs.ParentObject = device.as_object();
        let mut handle = WDFWORKITEM::NULL;
        // SAFETY: valid config and attributes; the device is live.
        let status = unsafe { WdfWorkItemCreate(&mut config, &mut attrs, &mut handle) };
        if !nt_success(status) {
            return Err(status);
        }
        wi = handle.as_raw() as usize;
        WORK_ITEM.store(wi, Ordering::SeqCst);
    }
    // SAFETY: a live work item created above.
    let handle = unsafe { WDFWORKITEM::from_raw(wi as *mut c_void) };
    let before = WORK_RUNS.load(Ordering::SeqCst);
    // SAFETY: as above; Flush at PASSIVE_LEVEL outside the callback.
    unsafe {
        WdfWorkItemEnqueue(handle);
        WdfWorkItemEnqueue(handle);
        WdfWorkItemEnqueue(handle);
        WdfWorkItemFlush(handle);
    }
    Ok(WORK_RUNS.load(Ordering::SeqCst) - before)
}

fn io_work_item(device: WDFDEVICE) -> Result<usize, NTSTATUS> {
    // SAFETY: the device is live; the event lives on this stack until the wait returns.
    unsafe {
        let object = WdfDeviceWdmGetDeviceObject(device);
        let wi: *mut IO_WORKITEM = IoAllocateWorkItem(object);
        if wi.is_null() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        let mut event: KEVENT = core::mem::zeroed();
        KeInitializeEvent(&mut event, NOTIFICATION_EVENT, 0);
        IoQueueWorkItem(
            wi,
            Some(io_work_routine),
            DELAYED_WORK_QUEUE,
            &mut event as *mut KEVENT as *mut c_void,
        );
        KeWaitForSingleObject(
            &mut event as *mut KEVENT as *mut c_void,
            EXECUTIVE,
            KERNEL_MODE,
            0,
            core::ptr::null(),
        );
        IoFreeWorkItem(wi);
    }
    Ok(IO_WORK_IRQL.load(Ordering::SeqCst))
}

/// What the WSK work-item test shares between its IOCTL, completion routine and work item.
struct WskWork {
    item: *mut IO_WORKITEM,
    socket: kemu::testing::wsk::Sock,
    first: kemu::testing::wsk::Buffer,
    second: kemu::testing::wsk::Buffer,
    done: KEVENT,
    on_poller: AtomicUsize,
    second_len: AtomicUsize,
}

/// Completion of the first receive (DISPATCH_LEVEL, wherever the provider completes it): queue
/// the work item, as a driver hands completions to PASSIVE_LEVEL.
unsafe extern "win64" fn wsk_first_received(
    _device: *mut DEVICE_OBJECT,
    irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: the context is the IOCTL's live WskWork; the IRP is ours to free.
    unsafe {
        IoFreeIrp(irp);
        let work = &*(context as *const WskWork);
        IoQueueWorkItem(
            work.item,
            Some(wsk_work_routine),
            DELAYED_WORK_QUEUE,
            context,
        );
    }
    STATUS_MORE_PROCESSING_REQUIRED
}

/// The work item: notes which thread runs it, then waits (KeWaitForSingleObject, 5 s at most)
/// for a second receive — data the peer sends only later, which must still be delivered.
unsafe extern "win64" fn wsk_work_routine(_device: *mut DEVICE_OBJECT, context: *mut c_void) {
    use kemu::testing::wsk::conn;
    // SAFETY: the context is the IOCTL's live WskWork (it waits for `done`); the event and IRP
    // live in this frame until the IRP completed.
    unsafe {
        let work = &*(context as *const WskWork);
        let on_poller = std::thread::current()
            .name()
            .is_some_and(|n| n.contains("wsk-poller"));
        work.on_poller
            .store(usize::from(on_poller), Ordering::SeqCst);
        let mut event: KEVENT = core::mem::zeroed();
        KeInitializeEvent(&mut event, NOTIFICATION_EVENT, 0);
        let irp = IoAllocateIrp(1, 0);
        ksys::io::io_set_completion_routine(
            irp,
            Some(kemu::testing::wsk::signal_event),
            &mut event as *mut KEVENT as *mut c_void,
            true,
            true,
            true,
        );
        let mut buf = work.second.wsk(0, 64);
        let s = work.socket;
        conn(s).WskReceive.unwrap()(s.raw(), &mut buf, 0, irp);
        let five_seconds = -50_000_000i64;
        let event_ptr = &mut event as *mut KEVENT as *mut c_void;
        let waited = KeWaitForSingleObject(event_ptr, EXECUTIVE, KERNEL_MODE, 0, &five_seconds);
        let len = if waited == STATUS_SUCCESS && (*irp).IoStatus.Status == STATUS_SUCCESS {
            (*irp).IoStatus.Information
        } else {
            IoCancelIrp(irp);
            KeWaitForSingleObject(event_ptr, EXECUTIVE, KERNEL_MODE, 0, core::ptr::null());
            u32::MAX as usize
        };
        IoFreeIrp(irp);
        work.second_len.store(len, Ordering::SeqCst);
        KeSetEvent(&work.done as *const KEVENT as *mut KEVENT, 0, 0);
    }
}

/// What the DPC work-item test shares between its IOCTL, DPCs and work item.
struct DpcWork {
    item: *mut IO_WORKITEM,
    first: ksys::ktimer::KTIMER,
    first_dpc: ksys::ktimer::KDPC,
    second: ksys::ktimer::KTIMER,
    second_dpc: ksys::ktimer::KDPC,
    fired: KEVENT,
    done: KEVENT,
    on_dpc_thread: AtomicUsize,
    waited: AtomicUsize,
}

unsafe extern "win64" fn dpc_queue_work(
    _dpc: *mut ksys::ktimer::KDPC,
    context: *mut c_void,
    _a: *mut c_void,
    _b: *mut c_void,
) {
    // SAFETY: the context is the IOCTL's live DpcWork.
    unsafe {
        let work = &*(context as *const DpcWork);
        IoQueueWorkItem(
            work.item,
            Some(dpc_work_routine),
            DELAYED_WORK_QUEUE,
            context,
        );
    }
}

unsafe extern "win64" fn dpc_fire(
    _dpc: *mut ksys::ktimer::KDPC,
    context: *mut c_void,
    _a: *mut c_void,
    _b: *mut c_void,
) {
    // SAFETY: the context is the IOCTL's live DpcWork.
    unsafe {
        let work = &*(context as *const DpcWork);
        KeSetEvent(&work.fired as *const KEVENT as *mut KEVENT, 0, 0);
    }
}

/// The work item: notes its thread, then waits for a DPC that runs only after it started.
unsafe extern "win64" fn dpc_work_routine(_device: *mut DEVICE_OBJECT, context: *mut c_void) {
    // SAFETY: the context is the IOCTL's live DpcWork (it waits for `done`).
    unsafe {
        let work = &mut *(context as *mut DpcWork);
        let on_dpc = std::thread::current()
            .name()
            .is_some_and(|n| n.contains("-dpc"));
        work.on_dpc_thread
            .store(usize::from(on_dpc), Ordering::SeqCst);
        KeSetTimer(&mut work.second, -1_000_000, &mut work.second_dpc);
        let five_seconds = -50_000_000i64;
        let waited = KeWaitForSingleObject(
            &mut work.fired as *mut KEVENT as *mut c_void,
            EXECUTIVE,
            KERNEL_MODE,
            0,
            &five_seconds,
        );
        work.waited
            .store(usize::from(waited == STATUS_SUCCESS), Ordering::SeqCst);
        KeSetEvent(&mut work.done, 0, 0);
    }
}

fn dpc_work_item(device: WDFDEVICE) -> Result<usize, NTSTATUS> {
    // SAFETY: everything the DPCs and the work item use lives in `work`, which outlives them
    // (the IOCTL waits for `done`, and both timers have fired by then).
    unsafe {
        let mut work: Box<DpcWork> = Box::new(core::mem::zeroed());
        work.item = IoAllocateWorkItem(WdfDeviceWdmGetDeviceObject(device));
        let context = &mut *work as *mut DpcWork as *mut c_void;
        KeInitializeEvent(&mut work.fired, NOTIFICATION_EVENT, 0);
        KeInitializeEvent(&mut work.done, NOTIFICATION_EVENT, 0);
        KeInitializeTimer(&mut work.first);
        KeInitializeTimer(&mut work.second);
        KeInitializeDpc(&mut work.first_dpc, Some(dpc_queue_work), context);
        KeInitializeDpc(&mut work.second_dpc, Some(dpc_fire), context);
        KeSetTimer(&mut work.first, -10_000, &mut work.first_dpc);
        KeWaitForSingleObject(
            &mut work.done as *mut KEVENT as *mut c_void,
            EXECUTIVE,
            KERNEL_MODE,
            0,
            core::ptr::null(),
        );
        // The work item's last act was setting `done`: give it a moment to return.
        let delay = -100_000i64;
        KeDelayExecutionThread(0, 0, &delay);
        IoFreeWorkItem(work.item);
        Ok((work.on_dpc_thread.load(Ordering::SeqCst) << 32) | work.waited.load(Ordering::SeqCst))
    }
}

fn wsk_work_item(device: WDFDEVICE, port: u16) -> Result<usize, NTSTATUS> {
    use kemu::testing::wsk::{Buffer, Client, close, conn, connect, send};
    let client = Client::register();
    let socket = connect(&client, port)?;
    // SAFETY: the device is live; everything the completion and work item use lives in `work`,
    // which outlives them (the IOCTL waits for `done`).
    unsafe {
        let item = IoAllocateWorkItem(WdfDeviceWdmGetDeviceObject(device));
        let mut work = Box::new(WskWork {
            item,
            socket,
            first: Buffer::new(64),
            second: Buffer::new(64),
            done: core::mem::zeroed(),
            on_poller: AtomicUsize::new(0),
            second_len: AtomicUsize::new(0),
        });
        KeInitializeEvent(&mut work.done, NOTIFICATION_EVENT, 0);
        let context = &mut *work as *mut WskWork as *mut c_void;
        let irp = IoAllocateIrp(1, 0);
        ksys::io::io_set_completion_routine(
            irp,
            Some(wsk_first_received),
            context,
            true,
            true,
            true,
        );
        let mut buf = work.first.wsk(0, 64);
        conn(socket).WskReceive.unwrap()(socket.raw(), &mut buf, 0, irp);
        // The receive is posted: tell the peer to send (so it completes from the poller).
        let ready = Buffer::new(1);
        send(socket, &ready, 1);
        KeWaitForSingleObject(
            &mut work.done as *mut KEVENT as *mut c_void,
            EXECUTIVE,
            KERNEL_MODE,
            0,
            core::ptr::null(),
        );
        IoFreeWorkItem(item);
        let result =
            (work.on_poller.load(Ordering::SeqCst) << 32) | work.second_len.load(Ordering::SeqCst);
        close(socket);
        drop(work);
        client.finish();
        Ok(result)
    }
}

extern "win64" fn device_control(
    _queue: WDFQUEUE,
    req: WDFREQUEST,
    _out: usize,
    _in: usize,
    code: u32,
) {
    let r = Request::from_presented(req);
    // SAFETY: the device handle stored at DriverEntry stays live until unload.
    let device = unsafe { WDFDEVICE::from_raw(DEVICE.load(Ordering::SeqCst) as *mut c_void) };
    let outcome: Result<usize, NTSTATUS> = match code {
        PEND => {
            // SAFETY: the request is presented to us; marking and storing happen under the
            // lock so a cancel callback always finds it stored.
            let status = unsafe {
                WdfSpinLockAcquire(lock());
                let status = WdfRequestMarkCancelableEx(req, Some(cancel));
                if status == STATUS_SUCCESS {
                    PENDED.store(req.as_raw() as usize, Ordering::SeqCst);
                }
                WdfSpinLockRelease(lock());
                status
            };
            if status == STATUS_SUCCESS {
                return;
            }
            Err(status)
        }
        COMPLETE_PENDED => Ok(usize::from(finish_pended(STATUS_SUCCESS))),
        LEAK_POOL => {
            // SAFETY: a plain allocation, deliberately never freed (the bug under test).
            let p =
                unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, 48, u32::from_le_bytes(*b"Leak")) };
            if p.is_null() {
                Err(STATUS_INSUFFICIENT_RESOURCES)
            } else {
                Ok(0)
            }
        }
        WAIT_AT_DISPATCH => {
            let mut lock: KSPIN_LOCK = 0;
            let delay = -10_000i64;
            // SAFETY: valid arguments; the wait at DISPATCH_LEVEL is the bug under test.
            unsafe {
                let old = KeAcquireSpinLockRaiseToDpc(&mut lock);
                KeDelayExecutionThread(0, 0, &delay);
                KeReleaseSpinLock(&mut lock, old);
            }
            Ok(0)
        }
        COMPLETE_TWICE => {
            // SAFETY: the first completion is legal; the second is the bug under test.
            unsafe { WdfRequestComplete(req, STATUS_SUCCESS) };
            Ok(0)
        }
        WDF_WORK_ITEM => wdf_work_item(device),
        IO_WORK_ITEM => io_work_item(device),
        DPC_WORK_ITEM => dpc_work_item(device),
        WSK_WORK_ITEM => r
            .with_input(2, |port| u16::from_le_bytes([port[0], port[1]]))
            .and_then(|port| wsk_work_item(device, port)),
        OBJECTS => objects(device),
        FILE_DEVICE => {
            // SAFETY: the request is presented to us; its file object is live meanwhile.
            let owner = unsafe { WdfFileObjectGetDevice(WdfRequestGetFileObject(req)) };
            Ok(usize::from(owner == device))
        }
        CALL_UNIMPLEMENTED => {
            let entry = ksys::wdf::bind::function(UNIMPLEMENTED_INDEX);
            // SAFETY: deliberately calling a table entry kemu does not implement (with the
            // globals only); kemu stops before anything else is read.
            unsafe {
                let f: unsafe extern "win64" fn(*mut WDF_DRIVER_GLOBALS) -> usize =
                    core::mem::transmute(entry);
                f(ksys::wdf::bind::globals());
            }
            Ok(0)
        }
        COUNTERS => Ok(CLEANUPS.load(Ordering::SeqCst) * 100 + CLOSES.load(Ordering::SeqCst)),
        _ => Err(STATUS_INVALID_DEVICE_REQUEST),
    };
    match outcome {
        Ok(value) => {
            let bytes = (value as u64).to_le_bytes();
            match r.write_output(&bytes) {
                Ok(n) => r.complete(STATUS_SUCCESS, n),
                Err(status) => r.complete(status, 0),
            }
        }
        Err(status) => r.complete(status, 0),
    }
}
