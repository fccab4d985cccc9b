//! Framework work items: enqueue while queued is ignored (coalesces), enqueue while running
//! queues another run, flush waits for both, deletion flushes unless called from the callback.
//! The callback runs at PASSIVE_LEVEL on a system worker thread; the parent device's
//! DEVICE_OBJECT stays referenced while the item is queued or running.

use std::time::Duration;

use ksys::ntdef::{
    NTSTATUS, STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_PARAMETER, STATUS_SUCCESS,
};
use ksys::wdf::types::*;

use super::{Data, Kind, WdfState, WorkItemData, object, violation, with_object};
use crate::bugcheck::{park_forever, wdf_violation};
use crate::thread::{self, DISPATCH, PASSIVE};

/// The DEVICE_OBJECT of the device `handle` is or descends from.
fn owning_device(state: &WdfState, mut handle: usize) -> Option<usize> {
    while let Some(o) = state.objects.get(&handle) {
        match &o.data {
            Data::Device(d) => return Some(d.device_object),
            _ => handle = o.parent,
        }
    }
    None
}

/// WdfWorkItemCreate.
pub(crate) unsafe extern "win64" fn wdf_work_item_create(
    _g: *mut WDF_DRIVER_GLOBALS,
    config: *mut WDF_WORKITEM_CONFIG,
    attrs: *mut WDF_OBJECT_ATTRIBUTES,
    work_item: *mut WDFWORKITEM,
) -> NTSTATUS {
    thread::require_at_most("WdfWorkItemCreate", DISPATCH);
    if config.is_null() || work_item.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: non-NULL config from the driver.
    let config = unsafe { *config };
    if config.Size as usize != std::mem::size_of::<WDF_WORKITEM_CONFIG>()
        || config.EvtWorkItemFunc.is_none()
    {
        violation(
            wdf_violation::INVALID_PARAMETER,
            0,
            "WdfWorkItemCreate: bad WDF_WORKITEM_CONFIG (Size 24, callback required)".into(),
        );
    }
    let Some(attrs) = object::attributes(attrs, "WdfWorkItemCreate") else {
        return STATUS_INVALID_DEVICE_REQUEST;
    };
    let parent = attrs.ParentObject.as_raw() as usize;
    let kernel = thread::kernel();
    let mut state = kernel.wdf.lock();
    let Some(device_object) = owning_device(&state, parent).filter(|_| parent != 0) else {
        return STATUS_INVALID_DEVICE_REQUEST;
    };
    let data = Data::WorkItem(WorkItemData {
        callback: config.EvtWorkItemFunc,
        device_object,
        queued: false,
        running: 0,
    });
    match object::create(&mut state, Kind::WorkItem, parent, Some(attrs), true, data) {
        Ok(h) => {
            // SAFETY: the driver's out-pointer (checked non-NULL).
            unsafe { *work_item = super::handle(h, WDFWORKITEM::from_raw) };
            STATUS_SUCCESS
        }
        Err(status) => status,
    }
}

/// WdfWorkItemEnqueue.
pub(crate) unsafe extern "win64" fn wdf_work_item_enqueue(
    _g: *mut WDF_DRIVER_GLOBALS,
    work_item: WDFWORKITEM,
) {
    thread::require_at_most("WdfWorkItemEnqueue", DISPATCH);
    let raw = work_item.as_raw() as usize;
    let queued = with_object(raw, &[Kind::WorkItem], "WdfWorkItemEnqueue", |o| {
        let deleted = o.deleted;
        match &mut o.data {
            Data::WorkItem(w) if deleted => Err(w.device_object),
            Data::WorkItem(w) if w.queued => Ok(None),
            Data::WorkItem(w) => {
                w.queued = true;
                Ok(Some((w.callback, w.device_object)))
            }
            _ => Ok(None),
        }
    });
    let (callback, device) = match queued {
        Err(_) => violation(
            wdf_violation::WORK_ITEM,
            raw,
            "WdfWorkItemEnqueue: work item already deleted".into(),
        ),
        Ok(None) => return,
        Ok(Some((Some(cb), device))) => (cb, device),
        Ok(Some((None, _))) => return,
    };
    let kernel = thread::kernel();
    kernel.io.reference_device(device);
    let k = kernel.clone();
    kernel.workers.submit_work_item(move || {
        let delay = k.faults.worker_delay();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let live = {
            let mut state = k.wdf.lock();
            match state.objects.get_mut(&raw).map(|o| &mut o.data) {
                Some(Data::WorkItem(w)) => {
                    w.queued = false;
                    w.running += 1;
                    true
                }
                _ => false,
            }
        };
        if live {
            let state = thread::state();
            let previous = state.work_item.replace(raw);
            thread::with_activity("WDF work item", || {
                callback(super::handle(raw, WDFWORKITEM::from_raw))
            });
            state.work_item.set(previous);
            thread::check_balanced("EvtWorkItem", PASSIVE);
            let mut s = k.wdf.lock();
            if let Some(Data::WorkItem(w)) = s.objects.get_mut(&raw).map(|o| &mut o.data) {
                w.running -= 1;
            }
        }
        k.io.dereference_device(device);
        k.notify();
    });
}

fn busy(raw: usize) -> bool {
    match thread::kernel()
        .wdf
        .lock()
        .objects
        .get(&raw)
        .map(|o| &o.data)
    {
        Some(Data::WorkItem(w)) => w.queued || w.running > 0,
        _ => false,
    }
}

fn wait_idle(raw: usize) {
    let kernel = thread::kernel();
    while busy(raw) {
        if kernel.bugcheck.get().is_some() {
            park_forever();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// WdfWorkItemFlush.
pub(crate) unsafe extern "win64" fn wdf_work_item_flush(
    _g: *mut WDF_DRIVER_GLOBALS,
    work_item: WDFWORKITEM,
) {
    thread::require_at_most("WdfWorkItemFlush", PASSIVE);
    let raw = work_item.as_raw() as usize;
    with_object(raw, &[Kind::WorkItem], "WdfWorkItemFlush", |_| ());
    if thread::state().work_item.get() == raw {
        violation(
            wdf_violation::WORK_ITEM,
            raw,
            "WdfWorkItemFlush called from the work item's own callback (deadlock)".into(),
        );
    }
    wait_idle(raw);
}

/// Deletion: waits for the queued/running callback unless called from inside it.
pub(crate) fn flush_for_delete(raw: usize) {
    if thread::state().work_item.get() != raw && thread::irql() == PASSIVE {
        wait_idle(raw);
    }
}

/// WdfWorkItemGetParentObject.
pub(crate) unsafe extern "win64" fn wdf_work_item_get_parent_object(
    _g: *mut WDF_DRIVER_GLOBALS,
    work_item: WDFWORKITEM,
) -> WDFOBJECT {
    thread::require_at_most("WdfWorkItemGetParentObject", DISPATCH);
    let parent = with_object(
        work_item.as_raw() as usize,
        &[Kind::WorkItem],
        "WdfWorkItemGetParentObject",
        |o| o.parent,
    );
    super::handle(parent, WDFOBJECT::from_raw)
}
