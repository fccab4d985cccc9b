//! File objects (one per open handle): EvtDeviceFileCreate with its create request, cleanup at
//! the last handle close (queued requests of the handle are cancelled), close after the handle's
//! I/O is done.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ksys::ntdef::{NTSTATUS, STATUS_CANCELLED};
use ksys::wdf::types::*;

use super::{Data, Kind, RequestData, RequestKind, RequestPlace, object, request, with_object};
use crate::bugcheck::park_forever;
use crate::thread::{self, DISPATCH, PASSIVE};

fn file_callbacks(device: usize) -> Option<WDF_FILEOBJECT_CONFIG> {
    with_object(device, &[Kind::Device], "file object", |o| match &o.data {
        Data::Device(d) => d.file_config,
        _ => None,
    })
}

/// IRP_MJ_CREATE on a control device: returns the WDFFILEOBJECT or the failure status.
pub(crate) fn create(device: usize) -> Result<usize, NTSTATUS> {
    let kernel = thread::kernel();
    let file = {
        let mut state = kernel.wdf.lock();
        object::create(
            &mut state,
            Kind::File,
            device,
            None,
            false,
            Data::File { device },
        )?
    };
    let Some(callback) = file_callbacks(device).and_then(|c| c.EvtDeviceFileCreate) else {
        return Ok(file);
    };
    let result = Arc::new(Mutex::new(None));
    let req = {
        let mut state = kernel.wdf.lock();
        let data = Data::Request(RequestData {
            kind: RequestKind::Create,
            irp: 0,
            file,
            system_buffer: 0,
            direct_buffer: 0,
            place: RequestPlace::Driver(0),
            cancel_routine: None,
            cancel_requested: false,
            cancel_claimed: false,
            information: 0,
            create_result: Some(result.clone()),
        });
        object::create(&mut state, Kind::Request, 0, None, false, data)?
    };
    thread::with_activity("EvtDeviceFileCreate", || {
        callback(
            super::handle(device, WDFDEVICE::from_raw),
            super::handle(req, WDFREQUEST::from_raw),
            super::handle(file, WDFFILEOBJECT::from_raw),
        )
    });
    thread::check_balanced("EvtDeviceFileCreate", PASSIVE);
    // The driver must complete the create request, possibly later on another thread.
    let status = loop {
        if let Some(status) = *result.lock().unwrap() {
            break status;
        }
        if kernel.bugcheck.get().is_some() {
            park_forever();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    if status < 0 {
        object::delete_tree(file);
        return Err(NTSTATUS(status));
    }
    Ok(file)
}

/// IRP_MJ_CLEANUP: EvtFileCleanup, then the handle's requests still waiting in queues are
/// cancelled (requests the driver owns stay the driver's to finish).
pub(crate) fn cleanup(file: usize) {
    let device = with_object(file, &[Kind::File], "cleanup", |o| match o.data {
        Data::File { device, .. } => device,
        _ => 0,
    });
    if let Some(cb) = file_callbacks(device).and_then(|c| c.EvtFileCleanup) {
        thread::with_activity("EvtFileCleanup", || {
            cb(super::handle(file, WDFFILEOBJECT::from_raw))
        });
        thread::check_balanced("EvtFileCleanup", PASSIVE);
    }
    let kernel = thread::kernel();
    let queued: Vec<usize> = {
        let mut state = kernel.wdf.lock();
        let mut found = Vec::new();
        let handles: Vec<usize> = state.objects.keys().copied().collect();
        for h in handles {
            let is_file_request = matches!(&state.objects[&h].data, Data::Request(r) if r.file == file && matches!(r.place, RequestPlace::Queued(_)));
            if is_file_request {
                found.push(h);
            }
        }
        for &h in &found {
            if let Some(Data::Request(r)) = state.objects.get(&h).map(|o| &o.data) {
                if let RequestPlace::Queued(q) = r.place {
                    if let Some(Data::Queue(qd)) = state.objects.get_mut(&q).map(|o| &mut o.data) {
                        qd.pending.retain(|&p| p != h);
                    }
                }
            }
        }
        found
    };
    for r in queued {
        request::finish(r, STATUS_CANCELLED, 0);
    }
}

/// IRP_MJ_CLOSE: EvtFileClose at PASSIVE_LEVEL, then the file object goes away.
pub(crate) fn close(file: usize) {
    let run = move || {
        let device = with_object(file, &[Kind::File], "close", |o| match o.data {
            Data::File { device, .. } => device,
            _ => 0,
        });
        if let Some(cb) = file_callbacks(device).and_then(|c| c.EvtFileClose) {
            thread::with_activity("EvtFileClose", || {
                cb(super::handle(file, WDFFILEOBJECT::from_raw))
            });
            thread::check_balanced("EvtFileClose", PASSIVE);
        }
        object::delete_tree(file);
    };
    if thread::irql() > PASSIVE {
        thread::kernel().workers.submit(run);
    } else {
        run();
    }
}

/// WdfFileObjectGetDevice.
pub(crate) unsafe extern "win64" fn wdf_file_object_get_device(
    _g: *mut WDF_DRIVER_GLOBALS,
    file: WDFFILEOBJECT,
) -> WDFDEVICE {
    thread::require_at_most("WdfFileObjectGetDevice", DISPATCH);
    let device = with_object(
        file.as_raw() as usize,
        &[Kind::File],
        "WdfFileObjectGetDevice",
        |o| match o.data {
            Data::File { device, .. } => device,
            _ => 0,
        },
    );
    super::handle(device, WDFDEVICE::from_raw)
}
