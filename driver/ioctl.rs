//! EvtIoDeviceControl: validates each request against `proto` and answers it.

use ksys::kmdf::Request;
use ksys::ntdef::{NTSTATUS, STATUS_INVALID_DEVICE_REQUEST, STATUS_SUCCESS};
use ksys::wdf::types::{WDFQUEUE, WDFREQUEST};
use proto::{GetVersionResponse, IOCTL_WSKTLS_GET_VERSION, WIRE_VERSION};

/// Dispatches one device-control request (PASSIVE_LEVEL, parallel queue) and completes it.
pub(crate) extern "win64" fn evt_io_device_control(
    _queue: WDFQUEUE,
    request: WDFREQUEST,
    _output_length: usize,
    input_length: usize,
    code: u32,
) {
    let request = Request::from_presented(request);
    let outcome = match code {
        IOCTL_WSKTLS_GET_VERSION => get_version(&request, input_length),
        _ => Err(STATUS_INVALID_DEVICE_REQUEST),
    };
    match outcome {
        Ok(written) => request.complete(STATUS_SUCCESS, written),
        Err(status) => request.complete(status, 0),
    }
}

fn get_version(request: &Request, input_length: usize) -> Result<usize, NTSTATUS> {
    proto::validate_get_version_input(input_length).map_err(|e| e.status())?;
    let response = GetVersionResponse {
        wire_version: WIRE_VERSION,
        driver: crate::DRIVER_VERSION,
        kmdf_major: ksys::wdf::types::KMDF_VERSION_MAJOR as u16,
        kmdf_minor: ksys::wdf::types::KMDF_VERSION_MINOR as u16,
    };
    request.write_output(&response.encode())
}
