//! I/O queues: creation (parallel, sequential, manual), presenting requests to EvtIoDeviceControl
//! at the queue's execution level, retrieval from manual queues, purge, and teardown.

use std::collections::VecDeque;
use std::time::Duration;

use ksys::io::IRP;
use ksys::ntdef::{
    NTSTATUS, STATUS_CANCELLED, STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_DEVICE_STATE,
    STATUS_INVALID_PARAMETER, STATUS_NO_MORE_ENTRIES, STATUS_SUCCESS,
};
use ksys::wdf::types::*;

use super::{
    Data, Kind, QueueData, RequestData, RequestKind, RequestPlace, object, request, violation,
    with_object,
};
use crate::bugcheck::{park_forever, wdf_violation};
use crate::thread::{self, DISPATCH, PASSIVE};

/// The device a queue belongs to.
pub(crate) fn device_of(queue: usize, routine: &str) -> usize {
    with_object(queue, &[Kind::Queue], routine, |o| match &o.data {
        Data::Queue(q) => q.device,
        _ => 0,
    })
}

/// WdfIoQueueCreate.
pub(crate) unsafe extern "win64" fn wdf_io_queue_create(
    _g: *mut WDF_DRIVER_GLOBALS,
    device: WDFDEVICE,
    config: *mut WDF_IO_QUEUE_CONFIG,
    attrs: *mut WDF_OBJECT_ATTRIBUTES,
    queue_out: *mut WDFQUEUE,
) -> NTSTATUS {
    thread::require_at_most("WdfIoQueueCreate", DISPATCH);
    let device = device.as_raw() as usize;
    with_object(device, &[Kind::Device], "WdfIoQueueCreate", |_| ());
    if config.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: non-NULL config from the driver.
    let config = unsafe { *config };
    if config.Size as usize != std::mem::size_of::<WDF_IO_QUEUE_CONFIG>() {
        violation(
            wdf_violation::INVALID_PARAMETER,
            device,
            format!(
                "WdfIoQueueCreate: WDF_IO_QUEUE_CONFIG.Size is {}",
                config.Size
            ),
        );
    }
    let attrs = object::attributes(attrs, "WdfIoQueueCreate");
    if attrs
        .is_some_and(|a| !a.ParentObject.is_null() && a.ParentObject.as_raw() as usize != device)
    {
        return STATUS_INVALID_PARAMETER;
    }
    let has_callback = config.EvtIoDeviceControl.is_some() || !config.EvtIoDefault.is_null();
    match config.DispatchType {
        WDF_IO_QUEUE_DISPATCH_SEQUENTIAL | WDF_IO_QUEUE_DISPATCH_PARALLEL if !has_callback => {
            return STATUS_INVALID_PARAMETER;
        }
        WDF_IO_QUEUE_DISPATCH_MANUAL if has_callback => return STATUS_INVALID_PARAMETER,
        WDF_IO_QUEUE_DISPATCH_SEQUENTIAL
        | WDF_IO_QUEUE_DISPATCH_PARALLEL
        | WDF_IO_QUEUE_DISPATCH_MANUAL => {}
        _ => return STATUS_INVALID_PARAMETER,
    }
    let kernel = thread::kernel();
    let mut state = kernel.wdf.lock();
    let default_taken = matches!(state.objects.get(&device).map(|o| &o.data), Some(Data::Device(d)) if d.default_queue != 0);
    if config.DefaultQueue != 0 && default_taken {
        return STATUS_INVALID_DEVICE_STATE;
    }
    let data = Data::Queue(QueueData {
        device,
        dispatch: config.DispatchType,
        device_control: config.EvtIoDeviceControl,
        pending: VecDeque::new(),
        owned: 0,
        passive: false,
        accepting: true,
    });
    let handle = match object::create(&mut state, Kind::Queue, device, attrs, true, data) {
        Ok(h) => h,
        Err(status) => return status,
    };
    let passive = state.objects[&handle].passive_callbacks;
    if let Some(Data::Queue(q)) = state.objects.get_mut(&handle).map(|o| &mut o.data) {
        q.passive = passive;
    }
    if config.DefaultQueue != 0 {
        if let Some(Data::Device(d)) = state.objects.get_mut(&device).map(|o| &mut o.data) {
            d.default_queue = handle;
        }
    }
    drop(state);
    if !queue_out.is_null() {
        // SAFETY: the driver's out-pointer.
        unsafe { *queue_out = super::handle(handle, WDFQUEUE::from_raw) };
    }
    STATUS_SUCCESS
}

/// A new device-control IRP for `device`'s default queue (from the I/O manager).
/// Where a device-control request's data is (addresses and lengths).
pub(crate) struct ControlBuffers {
    /// The system buffer: input (and, buffered, output).
    pub system: usize,
    /// Direct methods: the caller's output buffer (0 otherwise).
    pub direct: usize,
    pub input_length: usize,
    pub output_length: usize,
}

pub(crate) fn dispatch_device_control(
    device: usize,
    irp: *mut IRP,
    file: usize,
    code: u32,
    buffers: ControlBuffers,
) {
    let ControlBuffers {
        system: system_buffer,
        direct: direct_buffer,
        input_length,
        output_length,
    } = buffers;
    let kernel = thread::kernel();
    let created = {
        let mut state = kernel.wdf.lock();
        let queue = match state.objects.get(&device).map(|o| &o.data) {
            Some(Data::Device(d)) => d.default_queue,
            _ => 0,
        };
        if queue == 0 {
            Err(STATUS_INVALID_DEVICE_REQUEST)
        } else {
            let data = Data::Request(RequestData {
                kind: RequestKind::DeviceControl {
                    code,
                    input_length,
                    output_length,
                },
                irp: irp as usize,
                file,
                system_buffer,
                direct_buffer,
                place: RequestPlace::Queued(queue),
                cancel_routine: None,
                cancel_requested: false,
                cancel_claimed: false,
                information: 0,
                create_result: None,
            });
            object::create(&mut state, Kind::Request, 0, None, false, data).map(|r| (r, queue))
        }
    };
    match created {
        Err(status) => {
            // SAFETY: the I/O manager's live IRP, not yet seen by anyone else.
            unsafe { (*irp).IoStatus.Status = status };
            kernel.irps.complete(irp);
        }
        Ok((request, queue)) => {
            let installed = kernel.irps.set_cancel(
                irp,
                Box::new(move |irp| {
                    // SAFETY: IoCancelIrp recorded the caller's IRQL in the live IRP.
                    let caller = unsafe { (*irp).CancelIrql };
                    request::on_irp_cancelled(request, caller)
                }),
            );
            if !installed {
                with_object(request, &[Kind::Request], "dispatch", |o| {
                    if let Data::Request(r) = &mut o.data {
                        r.cancel_requested = true;
                    }
                });
            }
            enqueue(queue, request);
        }
    }
}

/// Puts a request into a queue (or presents it at once, per the dispatch type).
pub(crate) fn enqueue(queue: usize, request: usize) {
    let kernel = thread::kernel();
    enum Next {
        Present,
        Wait,
        Fail(NTSTATUS),
    }
    let next = {
        let mut state = kernel.wdf.lock();
        let cancelled = matches!(state.objects.get(&request).map(|o| &o.data), Some(Data::Request(r)) if r.cancel_requested);
        let Some(Data::Queue(q)) = state.objects.get_mut(&queue).map(|o| &mut o.data) else {
            return;
        };
        let next = if cancelled {
            Next::Fail(STATUS_CANCELLED)
        } else if !q.accepting {
            Next::Fail(STATUS_INVALID_DEVICE_STATE)
        } else if q.dispatch == WDF_IO_QUEUE_DISPATCH_PARALLEL
            || (q.dispatch == WDF_IO_QUEUE_DISPATCH_SEQUENTIAL && q.owned == 0)
        {
            q.owned += 1;
            Next::Present
        } else {
            q.pending.push_back(request);
            Next::Wait
        };
        let place = match next {
            Next::Present => RequestPlace::Driver(queue),
            Next::Wait => RequestPlace::Queued(queue),
            Next::Fail(_) => RequestPlace::Driver(0),
        };
        if let Some(Data::Request(r)) = state.objects.get_mut(&request).map(|o| &mut o.data) {
            r.place = place;
        }
        next
    };
    match next {
        Next::Present => present(queue, request),
        Next::Wait => {}
        Next::Fail(status) => request::finish(request, status, 0),
    }
}

/// Calls EvtIoDeviceControl for a request the queue now hands the driver.
fn present(queue: usize, request: usize) {
    let kernel = thread::kernel();
    let (callback, passive, kind) = {
        let state = kernel.wdf.lock();
        let (callback, passive) = match state.objects.get(&queue).map(|o| &o.data) {
            Some(Data::Queue(q)) => (q.device_control, q.passive),
            _ => return,
        };
        let kind = match state.objects.get(&request).map(|o| &o.data) {
            Some(Data::Request(r)) => r.kind,
            _ => return,
        };
        (callback, passive, kind)
    };
    let RequestKind::DeviceControl {
        code,
        input_length,
        output_length,
    } = kind
    else {
        return;
    };
    let Some(callback) = callback else {
        request::finish(request, STATUS_INVALID_DEVICE_REQUEST, 0);
        return;
    };
    let call = move || {
        let label = format!("IOCTL {code:#010X}");
        let level = thread::irql();
        thread::with_activity(&label, || {
            callback(
                super::handle(queue, WDFQUEUE::from_raw),
                super::handle(request, WDFREQUEST::from_raw),
                output_length,
                input_length,
                code,
            )
        });
        thread::check_balanced("EvtIoDeviceControl", level);
    };
    if passive {
        if thread::irql() == PASSIVE {
            call();
        } else {
            kernel.workers.submit(call);
        }
    } else {
        crate::ke::deliver::flexible("EvtIoDeviceControl", thread::irql(), true, call);
    }
}

/// A request the driver owned from `queue` left it (completed or forwarded): a sequential queue
/// presents its next request.
pub(crate) fn request_left(queue: usize) {
    let kernel = thread::kernel();
    let next = {
        let mut state = kernel.wdf.lock();
        let Some(Data::Queue(q)) = state.objects.get_mut(&queue).map(|o| &mut o.data) else {
            return;
        };
        q.owned = q.owned.saturating_sub(1);
        if q.dispatch == WDF_IO_QUEUE_DISPATCH_SEQUENTIAL && q.owned == 0 {
            let next = q.pending.pop_front();
            if next.is_some() {
                q.owned += 1;
            }
            next
        } else {
            None
        }
    };
    if let Some(r) = next {
        with_object(r, &[Kind::Request], "queue", |o| {
            if let Data::Request(rd) = &mut o.data {
                rd.place = RequestPlace::Driver(queue);
            }
        });
        present(queue, r);
    }
}

fn retrieve(queue: usize, file: Option<usize>, routine: &str, out: *mut WDFREQUEST) -> NTSTATUS {
    thread::require_at_most(routine, DISPATCH);
    if out.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    let kernel = thread::kernel();
    let mut state = kernel.wdf.lock();
    let manual = match state.get(queue, &[Kind::Queue], routine) {
        Ok(o) => matches!(&o.data, Data::Queue(q) if q.dispatch == WDF_IO_QUEUE_DISPATCH_MANUAL),
        Err(m) => {
            drop(state);
            violation(wdf_violation::INVALID_HANDLE, queue, m)
        }
    };
    if !manual {
        return STATUS_INVALID_DEVICE_REQUEST;
    }
    let pending: Vec<usize> = match state.objects.get(&queue).map(|o| &o.data) {
        Some(Data::Queue(q)) => q.pending.iter().copied().collect(),
        _ => Vec::new(),
    };
    let found = pending.into_iter().find(|r| {
        file.is_none_or(|f| matches!(state.objects.get(r).map(|o| &o.data), Some(Data::Request(rd)) if rd.file == f))
    });
    let Some(request) = found else {
        return STATUS_NO_MORE_ENTRIES;
    };
    if let Some(Data::Queue(q)) = state.objects.get_mut(&queue).map(|o| &mut o.data) {
        q.pending.retain(|&p| p != request);
        q.owned += 1;
    }
    if let Some(Data::Request(r)) = state.objects.get_mut(&request).map(|o| &mut o.data) {
        r.place = RequestPlace::Driver(queue);
    }
    // SAFETY: the driver's out-pointer (checked non-NULL).
    unsafe { *out = super::handle(request, WDFREQUEST::from_raw) };
    STATUS_SUCCESS
}

/// WdfIoQueueRetrieveNextRequest (manual queues).
pub(crate) unsafe extern "win64" fn wdf_io_queue_retrieve_next_request(
    _g: *mut WDF_DRIVER_GLOBALS,
    queue: WDFQUEUE,
    request: *mut WDFREQUEST,
) -> NTSTATUS {
    retrieve(
        queue.as_raw() as usize,
        None,
        "WdfIoQueueRetrieveNextRequest",
        request,
    )
}

/// WdfIoQueueRetrieveRequestByFileObject (manual queues).
pub(crate) unsafe extern "win64" fn wdf_io_queue_retrieve_request_by_file_object(
    _g: *mut WDF_DRIVER_GLOBALS,
    queue: WDFQUEUE,
    file: WDFFILEOBJECT,
    request: *mut WDFREQUEST,
) -> NTSTATUS {
    retrieve(
        queue.as_raw() as usize,
        Some(file.as_raw() as usize),
        "WdfIoQueueRetrieveRequestByFileObject",
        request,
    )
}

/// WdfIoQueueGetDevice.
pub(crate) unsafe extern "win64" fn wdf_io_queue_get_device(
    _g: *mut WDF_DRIVER_GLOBALS,
    queue: WDFQUEUE,
) -> WDFDEVICE {
    thread::require_at_most("WdfIoQueueGetDevice", DISPATCH);
    super::handle(
        device_of(queue.as_raw() as usize, "WdfIoQueueGetDevice"),
        WDFDEVICE::from_raw,
    )
}

/// Stops accepting, cancels what waits in the queue; returns how many driver-owned remain.
fn purge(queue: usize) -> usize {
    let kernel = thread::kernel();
    let pending: Vec<usize> = {
        let mut state = kernel.wdf.lock();
        let Some(Data::Queue(q)) = state.objects.get_mut(&queue).map(|o| &mut o.data) else {
            return 0;
        };
        q.accepting = false;
        let pending: Vec<usize> = q.pending.drain(..).collect();
        for &r in &pending {
            if let Some(Data::Request(rd)) = state.objects.get_mut(&r).map(|o| &mut o.data) {
                rd.place = RequestPlace::Driver(0);
            }
        }
        pending
    };
    for r in pending {
        request::finish(r, STATUS_CANCELLED, 0);
    }
    owned(queue)
}

fn owned(queue: usize) -> usize {
    match thread::kernel()
        .wdf
        .lock()
        .objects
        .get(&queue)
        .map(|o| &o.data)
    {
        Some(Data::Queue(q)) => q.owned,
        _ => 0,
    }
}

/// WdfIoQueuePurgeSynchronously: cancels queued requests, waits for the driver-owned ones.
pub(crate) unsafe extern "win64" fn wdf_io_queue_purge_synchronously(
    _g: *mut WDF_DRIVER_GLOBALS,
    queue: WDFQUEUE,
) {
    thread::require_at_most("WdfIoQueuePurgeSynchronously", PASSIVE);
    let raw = queue.as_raw() as usize;
    with_object(raw, &[Kind::Queue], "WdfIoQueuePurgeSynchronously", |_| ());
    purge(raw);
    let kernel = thread::kernel();
    while owned(raw) > 0 {
        if kernel.bugcheck.get().is_some() {
            park_forever();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Queue deletion: queued requests are cancelled (driver-owned ones stay the driver's; if never
/// completed they are reported as leaks).
pub(crate) fn teardown(queue: usize) {
    purge(queue);
}
