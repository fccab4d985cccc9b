//! The device interface over a handle of a kemu kernel.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Set once the completion (with the caller's buffer, moved, not copied) went to a waiter.
    taken: AtomicBool,
}

impl KemuPending {
    fn already_taken() -> DeviceError {
        DeviceError("this request's completion was already taken".into())
    }
}

impl Pending for KemuPending {
    fn wait(&self, timeout: Duration) -> Result<Option<Completion>, DeviceError> {
        if self.taken.load(Ordering::Acquire) {
            return Err(Self::already_taken());
        }
        Ok(self
            .io
            .wait_timeout(timeout)
            .map_err(err)?
            .map(|r| Completion {
                status: r.status.0,
                output: r.output[..r.information.min(r.output.len())].to_vec(),
            }))
    }

    fn take(&self, timeout: Duration) -> Result<Option<Completion>, DeviceError> {
        if self.taken.load(Ordering::Acquire) {
            return Err(Self::already_taken());
        }
        let Some(r) = self.io.take_timeout(timeout).map_err(err)? else {
            return Ok(None);
        };
        if self.taken.swap(true, Ordering::AcqRel) {
            return Err(Self::already_taken());
        }
        // The caller's own buffer comes back (kemu kept no other reference to it).
        let mut output = Arc::try_unwrap(r.output).unwrap_or_else(|shared| (*shared).clone());
        output.truncate(r.information);
        Ok(Some(Completion {
            status: r.status.0,
            output,
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
        Ok(Box::new(KemuPending {
            io,
            taken: AtomicBool::new(false),
        }))
    }
}
