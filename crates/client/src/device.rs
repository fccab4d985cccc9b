//! The device layer: one interface over `\\.\WskTls`, whichever world it lives in (a handle
//! under kemu, an overlapped handle on Windows). Everything above it — the typed calls of
//! [`crate::driver`], the harness's commands, the test suites — is the same code everywhere.

use std::time::Duration;

/// How a device-control request ended.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The NTSTATUS.
    pub status: i32,
    /// The output bytes the driver returned (IoStatus.Information of them).
    pub output: Vec<u8>,
}

/// A failure of the device layer itself (not of the request).
#[derive(Debug)]
pub struct DeviceError(pub String);

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeviceError {}

/// A request in flight.
pub trait Pending: Send {
    /// Waits up to `timeout` for completion (None: still pending); may be asked again.
    fn wait(&self, timeout: Duration) -> Result<Option<Completion>, DeviceError>;
    /// As [`Self::wait`], for the last look at the request: the caller's buffer may move to the
    /// completion instead of being copied (kemu), so once this returned Some the request is
    /// not waited for again.
    fn take(&self, timeout: Duration) -> Result<Option<Completion>, DeviceError> {
        self.wait(timeout)
    }
    /// Asks for cancellation (CancelIoEx); the request still completes, usually as cancelled.
    fn cancel(&self) -> Result<(), DeviceError>;
}

/// One open handle to the driver; several requests may be in flight on it at once.
pub trait Device: Send + Sync {
    /// Sends a request without waiting for it; `output` is the caller's output buffer (its
    /// contents matter for METHOD_IN_DIRECT: a SEND's payload).
    fn submit_buffer(
        &self,
        code: u32,
        input: &[u8],
        output: Vec<u8>,
    ) -> Result<Box<dyn Pending>, DeviceError>;

    /// Sends a request without waiting for it, with a zeroed output buffer.
    fn submit(
        &self,
        code: u32,
        input: &[u8],
        output_length: usize,
    ) -> Result<Box<dyn Pending>, DeviceError> {
        self.submit_buffer(code, input, vec![0; output_length])
    }

    /// Sends a request and waits (up to `timeout`) for it.
    fn call(
        &self,
        code: u32,
        input: &[u8],
        output_length: usize,
        timeout: Duration,
    ) -> Result<Completion, DeviceError> {
        let pending = self.submit(code, input, output_length)?;
        match pending.take(timeout)? {
            Some(c) => Ok(c),
            None => {
                let state = self.diagnose();
                pending.cancel()?;
                let state = state.map(|s| format!("; {s}")).unwrap_or_default();
                Err(DeviceError(format!(
                    "IOCTL {code:#x} did not complete within {timeout:?} (cancelled){state}"
                )))
            }
        }
    }

    /// What the machine can tell about a stalled request (kemu: its sockets and what is
    /// queued on them); None where nothing more is known.
    fn diagnose(&self) -> Option<String> {
        None
    }
}
