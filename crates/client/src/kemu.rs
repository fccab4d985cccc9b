//! The device interface over a handle of a kemu kernel.

use std::ops::Deref;
use std::time::Duration;

use kemu::{Handle, Kernel, PendingIo};

use crate::device::{Completion, Device, DeviceError, Pending};

fn err(e: impl std::fmt::Display) -> DeviceError {
    DeviceError(e.to_string())
}

/// An open handle of a kemu kernel, reached through `K` (an `Arc<Kernel>` to own it, a
/// `&Kernel` to borrow it).
pub struct KemuDevice<K> {
    kernel: K,
    handle: Handle,
}

impl<K: Deref<Target = Kernel>> KemuDevice<K> {
    /// The device interface over `handle` (opened by the caller, who also closes it).
    pub fn new(kernel: K, handle: Handle) -> KemuDevice<K> {
        KemuDevice { kernel, handle }
    }
}

struct KemuPending {
    io: PendingIo,
}

impl Pending for KemuPending {
    fn wait(&self, timeout: Duration) -> Result<Option<Completion>, DeviceError> {
        Ok(self
            .io
            .wait_timeout(timeout)
            .map_err(err)?
            .map(|r| Completion {
                status: r.status.0,
                output: r.output[..r.information.min(r.output.len())].to_vec(),
            }))
    }

    fn cancel(&self) -> Result<(), DeviceError> {
        self.io.cancel().map(|_| ()).map_err(err)
    }
}

impl<K: Deref<Target = Kernel> + Send + Sync> Device for KemuDevice<K> {
    fn diagnose(&self) -> Option<String> {
        Some(format!(
            "kemu sockets: {:?}",
            self.kernel.describe_sockets()
        ))
    }

    fn submit_buffer(
        &self,
        code: u32,
        input: &[u8],
        output: Vec<u8>,
    ) -> Result<Box<dyn Pending>, DeviceError> {
        let io = self
            .kernel
            .ioctl_async_with(self.handle, code, input, output)
            .map_err(err)?;
        Ok(Box::new(KemuPending { io }))
    }
}
