//! EvtIoDeviceControl: validates each request against `proto` and answers it, or parks it in
//! the service until what it waits for has happened.
//!
//! Every check that can fail (input layout, output room, id ownership, limits) runs before
//! anything changes, so a bad request gets a precise status and leaves no trace.

use alloc::vec::Vec;

use ksys::kmdf::Request;
use ksys::ntdef::{
    NTSTATUS, STATUS_BUFFER_TOO_SMALL, STATUS_DEVICE_NOT_READY, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_SUCCESS,
};
use ksys::wdf::types::{WDFQUEUE, WDFREQUEST};
use proto::session::*;
use proto::{GetVersionResponse, IOCTL_WSKTLS_GET_VERSION, WIRE_VERSION, WireError};

use crate::service::{self, Op, Service};

/// Dispatches one device-control request (PASSIVE_LEVEL, parallel queue) with the service of
/// the queue's device.
pub(crate) extern "win64" fn evt_io_device_control(
    queue: WDFQUEUE,
    request: WDFREQUEST,
    _output_length: usize,
    input_length: usize,
    code: u32,
) {
    let mut request = Some(Request::from_presented(request));
    service::on_device(ksys::kmdf::queue_device(queue), |s| {
        if let Some(request) = request.take() {
            dispatch(s, request, input_length, code);
        }
    });
    // A queue whose device has no service (cannot happen: the service goes in before the
    // device takes requests).
    if let Some(request) = request {
        request.complete(STATUS_DEVICE_NOT_READY, 0);
    }
}

fn dispatch(s: &Service, request: Request, input_length: usize, code: u32) {
    let outcome = match code {
        IOCTL_WSKTLS_GET_VERSION => get_version(&request, input_length),
        IOCTL_WSKTLS_CLOSE => close(s, &request, input_length),
        IOCTL_WSKTLS_STATS => stats(s, &request, input_length),
        IOCTL_WSKTLS_PEER_CERTIFICATES => peer_certificates(s, &request, input_length),
        IOCTL_WSKTLS_LISTEN
        | IOCTL_WSKTLS_ACCEPT
        | IOCTL_WSKTLS_CONNECT
        | IOCTL_WSKTLS_SEND
        | IOCTL_WSKTLS_RECV
        | IOCTL_WSKTLS_SHUTDOWN => match prepare_parked(s, &request, input_length, code) {
            Ok((id, op)) => {
                service::park(s, request, id, op);
                return;
            }
            Err(status) => Err(status),
        },
        _ => Err(STATUS_INVALID_DEVICE_REQUEST),
    };
    match outcome {
        Ok(written) => request.complete(STATUS_SUCCESS, written),
        Err(status) => request.complete(status, 0),
    }
}

fn wire(e: WireError) -> NTSTATUS {
    NTSTATUS(e.status())
}

/// Copies the input (at most `max` bytes) into a pool buffer.
fn input(request: &Request, input_length: usize, max: usize) -> Result<Vec<u8>, NTSTATUS> {
    if input_length > max {
        return Err(wire(WireError::TooLong {
            allowed: max,
            got: input_length,
        }));
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(input_length)
        .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
    bytes.resize(input_length, 0);
    let n = request.read_input(input_length, 0, &mut bytes)?;
    bytes.truncate(n);
    Ok(bytes)
}

fn need_output(request: &Request, size: usize) -> Result<(), NTSTATUS> {
    if request.output_length() < size {
        return Err(STATUS_BUFFER_TOO_SMALL);
    }
    Ok(())
}

fn owner(request: &Request) -> usize {
    request.file().as_raw() as usize
}

fn get_version(request: &Request, input_length: usize) -> Result<usize, NTSTATUS> {
    proto::validate_get_version_input(input_length).map_err(wire)?;
    let response = GetVersionResponse {
        wire_version: WIRE_VERSION,
        driver: crate::DRIVER_VERSION,
        kmdf_major: ksys::wdf::types::KMDF_VERSION_MAJOR as u16,
        kmdf_minor: ksys::wdf::types::KMDF_VERSION_MINOR as u16,
    };
    request.write_output(&response.encode())
}

fn close(s: &Service, request: &Request, input_length: usize) -> Result<usize, NTSTATUS> {
    let bytes = input(request, input_length, IdRequest::SIZE)?;
    let decoded = IdRequest::decode(&bytes).map_err(wire)?;
    service::close(s, decoded.id, owner(request))?;
    Ok(0)
}

fn peer_certificates(
    s: &Service,
    request: &Request,
    input_length: usize,
) -> Result<usize, NTSTATUS> {
    let bytes = input(request, input_length, IdRequest::SIZE)?;
    let decoded = IdRequest::decode(&bytes).map_err(wire)?;
    service::peer_certificates(s, request, decoded.id, owner(request))
}

fn stats(s: &Service, request: &Request, input_length: usize) -> Result<usize, NTSTATUS> {
    if input_length != 0 {
        return Err(wire(WireError::TooLong {
            allowed: 0,
            got: input_length,
        }));
    }
    need_output(request, Stats::SIZE)?;
    request.write_output(&service::stats(s).encode())
}

/// Validates a request that will wait, and starts what it waits for (LISTEN's listener,
/// CONNECT's session).
fn prepare_parked(
    s: &Service,
    request: &Request,
    input_length: usize,
    code: u32,
) -> Result<(u64, Op), NTSTATUS> {
    match code {
        IOCTL_WSKTLS_LISTEN => {
            let bytes = input(request, input_length, ListenRequest::FIXED + MAX_ALPN)?;
            let decoded = ListenRequest::decode(&bytes).map_err(wire)?;
            need_output(request, ListenResponse::SIZE)?;
            let id = service::listen(s, &decoded, owner(request))?;
            Ok((id, Op::Listen))
        }
        IOCTL_WSKTLS_ACCEPT => {
            let bytes = input(request, input_length, IdRequest::SIZE)?;
            let decoded = IdRequest::decode(&bytes).map_err(wire)?;
            need_output(request, ConnectionInfo::SIZE)?;
            Ok((decoded.id, Op::Accept))
        }
        IOCTL_WSKTLS_CONNECT => {
            let max = ConnectRequest::FIXED + 2 * MAX_NAME + MAX_ALPN;
            let bytes = input(request, input_length, max)?;
            let decoded = ConnectRequest::decode(&bytes).map_err(wire)?;
            need_output(request, ConnectionInfo::SIZE)?;
            let id = service::connect(s, &decoded, owner(request))?;
            Ok((id, Op::Connect))
        }
        IOCTL_WSKTLS_SEND => {
            let bytes = input(request, input_length, SendRequest::SIZE)?;
            let decoded = SendRequest::decode(&bytes).map_err(wire)?;
            // The payload is the caller's output buffer, read in place when it is queued.
            let len = request.output_length();
            SendRequest::check_payload(len).map_err(wire)?;
            Ok((decoded.id, Op::Send { len, at: 0 }))
        }
        IOCTL_WSKTLS_RECV => {
            let bytes = input(request, input_length, RecvRequest::SIZE)?;
            let decoded = RecvRequest::decode(&bytes).map_err(wire)?;
            need_output(request, 1)?;
            Ok((
                decoded.id,
                Op::Recv {
                    max: decoded.max as usize,
                },
            ))
        }
        IOCTL_WSKTLS_SHUTDOWN => {
            let bytes = input(request, input_length, IdRequest::SIZE)?;
            let decoded = IdRequest::decode(&bytes).map_err(wire)?;
            Ok((decoded.id, Op::Shutdown))
        }
        _ => Err(STATUS_INVALID_DEVICE_REQUEST),
    }
}
