//! I/O work items: IoAllocateWorkItem / IoQueueWorkItem / IoFreeWorkItem. The routine runs at
//! PASSIVE_LEVEL on a system worker thread; the work item keeps its device object referenced
//! while allocated and while queued or running.

// Keys are addresses and small ids: a fast non-cryptographic hash (no peer chooses them).
use rustc_hash::FxHashMap as HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

use ksys::io::{DEVICE_OBJECT, IO_WORKITEM, PIO_WORKITEM_ROUTINE};

use crate::bugcheck::{bugcheck, codes, verifier};
use crate::leaks::{Leak, LeakKind, Site};
use crate::thread::{self, DISPATCH, PASSIVE};

/// Size of an IO_WORKITEM on x64 (opaque to drivers).
const WORK_ITEM_SIZE: usize = 0x58;

struct WorkItemInfo {
    device: usize,
    queued: bool,
    generation: u64,
    site: Site,
}

/// Live I/O work items of one kernel.
#[derive(Default)]
pub(crate) struct WorkItems {
    live: Mutex<HashMap<usize, WorkItemInfo>>,
    running: Mutex<usize>,
}

impl WorkItems {
    /// Work items still allocated.
    pub fn leaks(&self) -> Vec<Leak> {
        self.live
            .lock()
            .unwrap()
            .iter()
            .map(|(&address, i)| Leak {
                kind: LeakKind::WorkItem,
                address,
                tag: "IO_WORKITEM".into(),
                size: WORK_ITEM_SIZE,
                site: i.site.clone(),
            })
            .collect()
    }

    /// Number of routines queued or running.
    pub fn busy(&self) -> usize {
        let queued = self
            .live
            .lock()
            .unwrap()
            .values()
            .filter(|i| i.queued)
            .count();
        queued + *self.running.lock().unwrap()
    }
}

fn state_violation(message: String, wi: *mut IO_WORKITEM) -> ! {
    bugcheck(
        codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
        [verifier::WORK_ITEM_STATE, wi as usize, 0, 0],
        message,
    )
}

/// ntoskrnl!IoAllocateWorkItem.
pub(crate) unsafe extern "win64" fn io_allocate_work_item(
    device: *mut DEVICE_OBJECT,
) -> *mut IO_WORKITEM {
    thread::require_at_most("IoAllocateWorkItem", DISPATCH);
    let kernel = thread::kernel();
    if !kernel.io.reference_device(device as usize) {
        bugcheck(
            codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION,
            [verifier::UNKNOWN_DEVICE, device as usize, 0, 0],
            format!(
                "IoAllocateWorkItem: {:#x} is not a live device object",
                device as usize
            ),
        );
    }
    if kernel.faults.allocation_fails() {
        kernel.io.dereference_device(device as usize);
        return std::ptr::null_mut();
    }
    let wi = super::alloc_zeroed(WORK_ITEM_SIZE) as *mut IO_WORKITEM;
    let info = WorkItemInfo {
        device: device as usize,
        queued: false,
        generation: kernel.next_sequence(),
        site: Site::here(kernel.next_sequence()),
    };
    kernel
        .work_items
        .live
        .lock()
        .unwrap()
        .insert(wi as usize, info);
    wi
}

/// ntoskrnl!IoQueueWorkItem.
pub(crate) unsafe extern "win64" fn io_queue_work_item(
    wi: *mut IO_WORKITEM,
    routine: PIO_WORKITEM_ROUTINE,
    queue: i32,
    context: *mut c_void,
) {
    thread::require_at_most("IoQueueWorkItem", DISPATCH);
    let kernel = thread::kernel();
    if !(0..=6).contains(&queue) && !(32..49).contains(&queue) {
        state_violation(
            format!("IoQueueWorkItem: {queue} is not a WORK_QUEUE_TYPE"),
            wi,
        );
    }
    let Some(routine) = routine else {
        state_violation("IoQueueWorkItem: NULL routine".into(), wi);
    };
    let claimed = {
        let mut live = kernel.work_items.live.lock().unwrap();
        match live.get_mut(&(wi as usize)) {
            None => Err("is not allocated"),
            Some(i) if i.queued => {
                Err("is already queued (queuing it again corrupts the worker list)")
            }
            Some(i) => {
                i.queued = true;
                Ok((i.device, i.generation))
            }
        }
    };
    let (device, generation) = match claimed {
        Ok(v) => v,
        Err(why) => state_violation(
            format!("IoQueueWorkItem: work item {:#x} {why}", wi as usize),
            wi,
        ),
    };
    kernel.io.reference_device(device);
    let k = kernel.clone();
    let address = wi as usize;
    let context = context as usize;
    kernel.workers.submit_work_item(move || {
        let delay = k.faults.worker_delay();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        {
            let mut live = k.work_items.live.lock().unwrap();
            if let Some(i) = live
                .get_mut(&address)
                .filter(|i| i.generation == generation)
            {
                i.queued = false;
            }
            *k.work_items.running.lock().unwrap() += 1;
        }
        thread::with_activity("work item", || {
            // SAFETY: the routine and context the driver queued; the device is referenced.
            unsafe { routine(device as *mut DEVICE_OBJECT, context as *mut c_void) };
        });
        let state = thread::state();
        if state.irql.get() != PASSIVE || state.spin_locks_held.get() != 0 {
            bugcheck(
                codes::WORKER_THREAD_RETURNED_AT_BAD_IRQL,
                [
                    routine as usize,
                    state.irql.get() as usize,
                    context,
                    address,
                ],
                format!(
                    "work item routine returned at IRQL {} holding {} spin lock(s)",
                    state.irql.get(),
                    state.spin_locks_held.get()
                ),
            );
        }
        *k.work_items.running.lock().unwrap() -= 1;
        k.io.dereference_device(device);
    });
}

/// ntoskrnl!IoFreeWorkItem (allowed from inside its own routine).
pub(crate) unsafe extern "win64" fn io_free_work_item(wi: *mut IO_WORKITEM) {
    thread::require_at_most("IoFreeWorkItem", DISPATCH);
    let kernel = thread::kernel();
    let removed = {
        let mut live = kernel.work_items.live.lock().unwrap();
        match live.get(&(wi as usize)) {
            None => Err("is not allocated (double free?)"),
            Some(i) if i.queued => Err("is still queued"),
            Some(_) => Ok(live.remove(&(wi as usize)).expect("present").device),
        }
    };
    match removed {
        Ok(device) => {
            kernel.io.dereference_device(device);
            super::free(wi as *mut u8, WORK_ITEM_SIZE);
        }
        Err(why) => state_violation(
            format!("IoFreeWorkItem: work item {:#x} {why}", wi as usize),
            wi,
        ),
    }
}
