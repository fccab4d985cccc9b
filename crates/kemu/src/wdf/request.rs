//! Requests: parameters, METHOD_BUFFERED buffers (one shared system buffer), completion,
//! forwarding, and the cancelable-state machine (MarkCancelable[Ex] / UnmarkCancelable, with the
//! documented race outcome).

use std::ffi::c_void;

use ksys::io::IRP;
use ksys::ntdef::{
    NTSTATUS, STATUS_BUFFER_TOO_SMALL, STATUS_CANCELLED, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_PENDING, STATUS_SUCCESS,
};
use ksys::wdf::types::*;

use super::{Data, Kind, RequestData, RequestKind, RequestPlace, object, queue, violation};
use crate::bugcheck::{bugcheck, codes, verifier, wdf_violation};
use crate::thread::{self, DISPATCH};

/// Runs `f` on a live request's data, or bugchecks (invalid handle / already completed).
pub(crate) fn with_request<R>(
    request: usize,
    routine: &str,
    allow_completed: bool,
    f: impl FnOnce(&mut RequestData) -> R,
) -> R {
    let kernel = thread::kernel();
    let mut state = kernel.wdf.lock();
    let outcome = match state.get(request, &[Kind::Request], routine) {
        Ok(o) => match &mut o.data {
            Data::Request(r) if allow_completed || r.place != RequestPlace::Completed => Ok(f(r)),
            _ => Err((
                wdf_violation::REQUEST_ALREADY_COMPLETED,
                format!("{routine}: request {request:#x} is already completed"),
            )),
        },
        Err(m) => Err((wdf_violation::INVALID_HANDLE, m)),
    };
    drop(state);
    match outcome {
        Ok(r) => r,
        Err((sub, message)) => violation(sub, request, message),
    }
}

/// Completes a request (driver completion or framework cancellation): the request leaves its
/// queue, the IRP completes, and the handle dies unless referenced.
pub(crate) fn finish(request: usize, status: NTSTATUS, information: usize) {
    let kernel = thread::kernel();
    let (irp, create_result, left_queue, destroy) = {
        let mut state = kernel.wdf.lock();
        let Some(o) = state.objects.get_mut(&request) else {
            return;
        };
        let references = o.references;
        let Data::Request(r) = &mut o.data else {
            return;
        };
        let left_queue = match r.place {
            RequestPlace::Driver(q) => Some(q),
            _ => None,
        };
        r.place = RequestPlace::Completed;
        r.cancel_routine = None;
        (r.irp, r.create_result.clone(), left_queue, references == 0)
    };
    if let Some(q) = left_queue.filter(|&q| q != 0) {
        queue::request_left(q);
    }
    if let Some(result) = create_result {
        *result.lock().unwrap() = Some(status.0);
    }
    if irp != 0 {
        let irp = irp as *mut IRP;
        kernel.irps.clear_cancel(irp);
        // SAFETY: the request's IRP is live until this completion.
        unsafe {
            (*irp).IoStatus.Status = status;
            (*irp).IoStatus.Information = information;
        }
        kernel.irps.complete(irp);
    }
    if destroy {
        object::destroy(request);
    }
}

fn complete(routine: &str, request: WDFREQUEST, status: NTSTATUS, information: Option<usize>) {
    thread::require_at_most(routine, DISPATCH);
    let raw = request.as_raw() as usize;
    if status == STATUS_PENDING {
        violation(
            wdf_violation::INVALID_PARAMETER,
            raw,
            format!("{routine}: STATUS_PENDING is not a completion status"),
        );
    }
    let checked = with_request(raw, routine, false, |r| {
        if let Some(i) = information {
            r.information = i;
        }
        if !matches!(r.place, RequestPlace::Driver(_)) {
            return Err((
                wdf_violation::CANCEL_STATE,
                "the driver does not own it (it is still in a queue)".to_owned(),
            ));
        }
        if r.cancel_routine.is_some() {
            return Err((
                wdf_violation::CANCEL_STATE,
                "it is still cancelable: call WdfRequestUnmarkCancelable first".to_owned(),
            ));
        }
        if let RequestKind::DeviceControl { output_length, .. } = r.kind {
            if r.information > output_length && ksys::ntdef::nt_success(status) {
                return Err((
                    verifier::INFORMATION_TOO_LARGE,
                    format!(
                        "Information {} exceeds the output buffer length {output_length}",
                        r.information
                    ),
                ));
            }
        }
        Ok(r.information)
    });
    match checked {
        Ok(info) => finish(raw, status, info),
        Err((sub, why)) if sub == verifier::INFORMATION_TOO_LARGE => bugcheck(
            codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION,
            [sub, raw, 0, 0],
            format!("{routine}: request {raw:#x}: {why}"),
        ),
        Err((sub, why)) => violation(sub, raw, format!("{routine}: request {raw:#x}: {why}")),
    }
}

/// WdfRequestComplete.
pub(crate) unsafe extern "win64" fn wdf_request_complete(
    _g: *mut WDF_DRIVER_GLOBALS,
    request: WDFREQUEST,
    status: NTSTATUS,
) {
    complete("WdfRequestComplete", request, status, None);
}

/// WdfRequestCompleteWithInformation.
pub(crate) unsafe extern "win64" fn wdf_request_complete_with_information(
    _g: *mut WDF_DRIVER_GLOBALS,
    request: WDFREQUEST,
    status: NTSTATUS,
    information: usize,
) {
    complete(
        "WdfRequestCompleteWithInformation",
        request,
        status,
        Some(information),
    );
}

/// WdfRequestSetInformation.
pub(crate) unsafe extern "win64" fn wdf_request_set_information(
    _g: *mut WDF_DRIVER_GLOBALS,
    request: WDFREQUEST,
    information: usize,
) {
    thread::require_at_most("WdfRequestSetInformation", DISPATCH);
    with_request(
        request.as_raw() as usize,
        "WdfRequestSetInformation",
        false,
        |r| r.information = information,
    );
}

/// WdfRequestGetStatus.
pub(crate) unsafe extern "win64" fn wdf_request_get_status(
    _g: *mut WDF_DRIVER_GLOBALS,
    request: WDFREQUEST,
) -> NTSTATUS {
    thread::require_at_most("WdfRequestGetStatus", DISPATCH);
    let irp = with_request(
        request.as_raw() as usize,
        "WdfRequestGetStatus",
        false,
        |r| r.irp,
    );
    if irp == 0 {
        return STATUS_PENDING;
    }
    // SAFETY: the IRP of a live, uncompleted request.
    unsafe { (*(irp as *mut IRP)).IoStatus.Status }
}

/// WdfRequestGetParameters.
pub(crate) unsafe extern "win64" fn wdf_request_get_parameters(
    _g: *mut WDF_DRIVER_GLOBALS,
    request: WDFREQUEST,
    parameters: *mut WDF_REQUEST_PARAMETERS,
) {
    thread::require_at_most("WdfRequestGetParameters", DISPATCH);
    let raw = request.as_raw() as usize;
    let size = if parameters.is_null() {
        0
    } else {
        // SAFETY: a non-NULL parameters pointer is the driver's structure.
        unsafe { (*parameters).Size as usize }
    };
    if size != std::mem::size_of::<WDF_REQUEST_PARAMETERS>() {
        violation(
            wdf_violation::INVALID_PARAMETER,
            raw,
            "WdfRequestGetParameters: NULL or Size != 40 (use WDF_REQUEST_PARAMETERS_INIT)".into(),
        );
    }
    let kind = with_request(raw, "WdfRequestGetParameters", false, |r| r.kind);
    let mut p = WDF_REQUEST_PARAMETERS::init();
    match kind {
        RequestKind::Create => p.Type = 0,
        RequestKind::DeviceControl {
            code,
            input_length,
            output_length,
        } => {
            p.Type = WDF_REQUEST_TYPE_DEVICE_CONTROL;
            p.DeviceIoControl.IoControlCode = code;
            p.DeviceIoControl.InputBufferLength = input_length;
            p.DeviceIoControl.OutputBufferLength = output_length;
        }
    }
    // SAFETY: checked non-NULL above.
    unsafe { *parameters = p };
}

fn retrieve(
    routine: &str,
    request: WDFREQUEST,
    minimum: usize,
    buffer: *mut *mut c_void,
    length: *mut usize,
    output: bool,
) -> NTSTATUS {
    thread::require_at_most(routine, DISPATCH);
    let (kind, system_buffer, direct_buffer, irp) =
        with_request(request.as_raw() as usize, routine, false, |r| {
            (r.kind, r.system_buffer, r.direct_buffer, r.irp)
        });
    let RequestKind::DeviceControl {
        input_length,
        output_length,
        ..
    } = kind
    else {
        return STATUS_INVALID_DEVICE_REQUEST;
    };
    let available = if output { output_length } else { input_length };
    if available == 0 || available < minimum {
        return STATUS_BUFFER_TOO_SMALL;
    }
    if buffer.is_null() {
        violation(
            wdf_violation::INVALID_PARAMETER,
            request.as_raw() as usize,
            format!("{routine}: NULL Buffer"),
        );
    }
    // A direct request's output buffer is the caller's, reached through the MDL in
    // Irp->MdlAddress (MmGetSystemAddressForMdlSafe: NULL when it has no mapping, and then
    // STATUS_INSUFFICIENT_RESOURCES; no MDL, STATUS_BUFFER_TOO_SMALL — Windows-Driver-Frameworks
    // src/framework/shared/core/fxrequest.cpp, FxRequest::GetDeviceControlOutputMemoryObject).
    // Its input, like every buffered request's, is the system buffer.
    let address = if output && direct_buffer != 0 {
        // SAFETY: the request's live IRP; its MDL, if any, is live until the IRP completes.
        let mdl = unsafe { (*(irp as *mut IRP)).MdlAddress };
        if mdl.is_null() {
            return STATUS_BUFFER_TOO_SMALL;
        }
        // SAFETY: a live MDL (above).
        let mapped = unsafe { ksys::io::mm_get_system_address_for_nonpaged_mdl(mdl) };
        if mapped.is_null() {
            return STATUS_INSUFFICIENT_RESOURCES;
        }
        mapped as usize
    } else {
        system_buffer
    };
    // SAFETY: the driver's out-pointers (Buffer checked, Length optional).
    unsafe {
        *buffer = address as *mut c_void;
        if !length.is_null() {
            *length = available;
        }
    }
    STATUS_SUCCESS
}

/// WdfRequestRetrieveInputBuffer (METHOD_BUFFERED: the shared system buffer).
pub(crate) unsafe extern "win64" fn wdf_request_retrieve_input_buffer(
    _g: *mut WDF_DRIVER_GLOBALS,
    request: WDFREQUEST,
    minimum: usize,
    buffer: *mut *mut c_void,
    length: *mut usize,
) -> NTSTATUS {
    retrieve(
        "WdfRequestRetrieveInputBuffer",
        request,
        minimum,
        buffer,
        length,
        false,
    )
}

/// WdfRequestRetrieveOutputBuffer (METHOD_BUFFERED: the same shared system buffer; direct
/// methods: the caller's buffer).
pub(crate) unsafe extern "win64" fn wdf_request_retrieve_output_buffer(
    _g: *mut WDF_DRIVER_GLOBALS,
    request: WDFREQUEST,
    minimum: usize,
    buffer: *mut *mut c_void,
    length: *mut usize,
) -> NTSTATUS {
    retrieve(
        "WdfRequestRetrieveOutputBuffer",
        request,
        minimum,
        buffer,
        length,
        true,
    )
}

/// WdfRequestGetFileObject.
pub(crate) unsafe extern "win64" fn wdf_request_get_file_object(
    _g: *mut WDF_DRIVER_GLOBALS,
    request: WDFREQUEST,
) -> WDFFILEOBJECT {
    thread::require_at_most("WdfRequestGetFileObject", DISPATCH);
    let file = with_request(
        request.as_raw() as usize,
        "WdfRequestGetFileObject",
        false,
        |r| r.file,
    );
    super::handle(file, WDFFILEOBJECT::from_raw)
}

/// WdfRequestWdmGetIrp.
pub(crate) unsafe extern "win64" fn wdf_request_wdm_get_irp(
    _g: *mut WDF_DRIVER_GLOBALS,
    request: WDFREQUEST,
) -> *mut IRP {
    thread::require_at_most("WdfRequestWdmGetIrp", DISPATCH);
    with_request(
        request.as_raw() as usize,
        "WdfRequestWdmGetIrp",
        false,
        |r| r.irp as *mut IRP,
    )
}

/// WdfRequestIsCanceled.
pub(crate) unsafe extern "win64" fn wdf_request_is_canceled(
    _g: *mut WDF_DRIVER_GLOBALS,
    request: WDFREQUEST,
) -> u8 {
    thread::require_at_most("WdfRequestIsCanceled", DISPATCH);
    u8::from(with_request(
        request.as_raw() as usize,
        "WdfRequestIsCanceled",
        false,
        |r| r.cancel_requested,
    ))
}

/// WdfRequestMarkCancelableEx: STATUS_CANCELLED if already cancelled (the driver completes it;
/// the callback will not run).
pub(crate) unsafe extern "win64" fn wdf_request_mark_cancelable_ex(
    _g: *mut WDF_DRIVER_GLOBALS,
    request: WDFREQUEST,
    cancel: PFN_WDF_REQUEST_CANCEL,
) -> NTSTATUS {
    thread::require_at_most("WdfRequestMarkCancelableEx", DISPATCH);
    let raw = request.as_raw() as usize;
    if cancel.is_none() {
        violation(
            wdf_violation::INVALID_PARAMETER,
            raw,
            "WdfRequestMarkCancelableEx: NULL EvtRequestCancel".into(),
        );
    }
    with_request(raw, "WdfRequestMarkCancelableEx", false, |r| {
        if !matches!(r.place, RequestPlace::Driver(_))
            || r.cancel_routine.is_some()
            || r.kind == RequestKind::Create
        {
            STATUS_INVALID_DEVICE_REQUEST
        } else if r.cancel_requested {
            STATUS_CANCELLED
        } else {
            r.cancel_routine = cancel;
            STATUS_SUCCESS
        }
    })
}

/// WdfRequestMarkCancelable: if already cancelled, EvtRequestCancel runs before it returns.
pub(crate) unsafe extern "win64" fn wdf_request_mark_cancelable(
    _g: *mut WDF_DRIVER_GLOBALS,
    request: WDFREQUEST,
    cancel: PFN_WDF_REQUEST_CANCEL,
) {
    thread::require_at_most("WdfRequestMarkCancelable", DISPATCH);
    let raw = request.as_raw() as usize;
    let Some(cb) = cancel else {
        violation(
            wdf_violation::INVALID_PARAMETER,
            raw,
            "WdfRequestMarkCancelable: NULL EvtRequestCancel".into(),
        );
    };
    let run_now = with_request(raw, "WdfRequestMarkCancelable", false, |r| {
        if !matches!(r.place, RequestPlace::Driver(_)) || r.cancel_routine.is_some() {
            return Err(());
        }
        if r.cancel_requested {
            r.cancel_claimed = true;
            Ok(true)
        } else {
            r.cancel_routine = cancel;
            Ok(false)
        }
    });
    match run_now {
        Err(()) => violation(
            wdf_violation::CANCEL_STATE,
            raw,
            "WdfRequestMarkCancelable: request not owned by the driver, or already cancelable"
                .into(),
        ),
        Ok(true) => cb(request),
        Ok(false) => {}
    }
}

/// WdfRequestUnmarkCancelable: STATUS_CANCELLED means EvtRequestCancel runs (or ran) and will
/// complete the request — the caller must not touch it again.
pub(crate) unsafe extern "win64" fn wdf_request_unmark_cancelable(
    _g: *mut WDF_DRIVER_GLOBALS,
    request: WDFREQUEST,
) -> NTSTATUS {
    thread::require_at_most("WdfRequestUnmarkCancelable", DISPATCH);
    with_request(
        request.as_raw() as usize,
        "WdfRequestUnmarkCancelable",
        false,
        |r| {
            if r.cancel_claimed {
                STATUS_CANCELLED
            } else if r.cancel_routine.take().is_some() {
                STATUS_SUCCESS
            } else {
                STATUS_INVALID_DEVICE_REQUEST
            }
        },
    )
}

/// WdfRequestForwardToIoQueue.
pub(crate) unsafe extern "win64" fn wdf_request_forward_to_io_queue(
    _g: *mut WDF_DRIVER_GLOBALS,
    request: WDFREQUEST,
    target: WDFQUEUE,
) -> NTSTATUS {
    thread::require_at_most("WdfRequestForwardToIoQueue", DISPATCH);
    let raw = request.as_raw() as usize;
    let target = target.as_raw() as usize;
    let target_device = queue::device_of(target, "WdfRequestForwardToIoQueue");
    let source = with_request(raw, "WdfRequestForwardToIoQueue", false, |r| {
        match r.place {
            RequestPlace::Driver(q) if r.cancel_routine.is_none() && q != target && q != 0 => {
                Some(q)
            }
            _ => None,
        }
    });
    let Some(source) = source else {
        return STATUS_INVALID_DEVICE_REQUEST;
    };
    if queue::device_of(source, "WdfRequestForwardToIoQueue") != target_device {
        return STATUS_INVALID_DEVICE_REQUEST;
    }
    with_request(raw, "WdfRequestForwardToIoQueue", false, |r| {
        r.place = RequestPlace::Queued(target)
    });
    queue::request_left(source);
    queue::enqueue(target, raw);
    STATUS_SUCCESS
}

/// The IRP cancel routine kemu installs for every request's IRP (runs at DISPATCH_LEVEL inside
/// IoCancelIrp): a queued request is completed as cancelled; a cancelable driver-owned request
/// gets its EvtRequestCancel, delivered where the fault plan says.
pub(crate) fn on_irp_cancelled(request: usize, caller_irql: u8) {
    enum Action {
        Nothing,
        CompleteCancelled,
        Callback(extern "win64" fn(WDFREQUEST)),
    }
    let kernel = thread::kernel();
    let action = {
        let mut state = kernel.wdf.lock();
        let mut remove_from = None;
        let action = match state.objects.get_mut(&request).map(|o| &mut o.data) {
            Some(Data::Request(r)) if r.place != RequestPlace::Completed => {
                r.cancel_requested = true;
                match r.place {
                    RequestPlace::Queued(q) => {
                        remove_from = Some(q);
                        r.place = RequestPlace::Driver(0);
                        Action::CompleteCancelled
                    }
                    _ => match r.cancel_routine.take() {
                        Some(cb) => {
                            r.cancel_claimed = true;
                            Action::Callback(cb)
                        }
                        None => Action::Nothing,
                    },
                }
            }
            _ => Action::Nothing,
        };
        if let Some(q) = remove_from {
            if let Some(Data::Queue(qd)) = state.objects.get_mut(&q).map(|o| &mut o.data) {
                qd.pending.retain(|&p| p != request);
            }
        }
        action
    };
    match action {
        Action::Nothing => {}
        Action::CompleteCancelled => finish(request, STATUS_CANCELLED, 0),
        Action::Callback(cb) => {
            crate::ke::deliver::flexible("EvtRequestCancel", caller_irql, true, move || {
                cb(super::handle(request, WDFREQUEST::from_raw))
            })
        }
    }
}
