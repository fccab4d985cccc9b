//! The host's I/O: opening a device as a caller, IOCTLs waited for or left pending (with
//! cancellation), closing handles.

use super::*;

/// A device-control request that has not necessarily completed.
pub struct PendingIo {
    shared: Arc<Shared>,
    slot: Arc<IoSlot>,
}

impl fmt::Debug for PendingIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PendingIo {{ complete: {} }}", self.is_complete())
    }
}

impl PendingIo {
    /// Whether the request has completed.
    pub fn is_complete(&self) -> bool {
        self.slot.result.lock().unwrap().is_some()
    }

    /// Waits for completion (or a bugcheck) up to `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<IoResult>, KernelError> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    /// As [`Self::wait_timeout`], but the completed request's output buffer moves to the caller
    /// instead of being shared (a caller that owns the only reference can take the `Vec` back
    /// without copying it, as a Windows caller keeps its own buffer). Later waits find the
    /// request complete with an empty output.
    pub fn take_timeout(&self, timeout: Duration) -> Result<Option<IoResult>, KernelError> {
        self.wait_until(Some(Instant::now() + timeout))?;
        let mut result = self.slot.result.lock().unwrap();
        Ok(result.as_mut().map(|r| IoResult {
            status: r.status,
            information: r.information,
            output: std::mem::take(&mut r.output),
        }))
    }

    /// Waits for completion (or a bugcheck).
    pub fn wait(&self) -> Result<IoResult, KernelError> {
        self.wait_until(None)
            .map(|r| r.expect("an unbounded wait returns a result"))
    }

    /// Waits on this request's own slot (not the kernel-wide signal, so completing one request
    /// wakes only its waiter), looking for a bugcheck every BUGCHECK_POLL.
    fn wait_until(&self, deadline: Option<Instant>) -> Result<Option<IoResult>, KernelError> {
        let mut result = self.slot.result.lock().unwrap();
        loop {
            if let Some(r) = result.as_ref() {
                return Ok(Some(r.clone()));
            }
            if let Some(b) = self.shared.bugcheck.get() {
                return Err(KernelError::Bugcheck(b.clone()));
            }
            let mut slice = BUGCHECK_POLL;
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    return Ok(None);
                }
                slice = slice.min(d - now);
            }
            // Counted under the result lock, so a completion that follows sees the waiter.
            self.slot.waiters.fetch_add(1, Ordering::Relaxed);
            result = self.slot.done.wait_timeout(result, slice).unwrap().0;
            self.slot.waiters.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// CancelIoEx: asks the I/O manager to cancel the request (it completes however the driver
    /// decides). Returns whether a cancel routine ran.
    pub fn cancel(&self) -> Result<bool, KernelError> {
        let slot = self.slot.clone();
        run_on(&self.shared, "CancelIoEx", move || {
            thread::kernel().io.cancel(&slot)
        })
    }
}

impl Kernel {
    /// Opens `path` (`\\.\WskTls`, `\DosDevices\WskTls`, ...) for read/write as `caller`.
    pub fn open(&self, path: &str, caller: Caller) -> Result<Handle, KernelError> {
        let p = path.to_owned();
        let result = self.run("CreateFile", move || thread::kernel().io.open(&p, caller))?;
        result
            .map(Handle)
            .map_err(|s| KernelError::Status(s, format!("CreateFile({path})")))
    }

    /// Sends an IOCTL and returns at once; the request may still be pending.
    pub fn ioctl_async(
        &self,
        handle: Handle,
        code: u32,
        input: &[u8],
        output_length: usize,
    ) -> Result<PendingIo, KernelError> {
        self.ioctl_async_with(handle, code, input, vec![0; output_length])
    }

    /// As [`Self::ioctl_async`], with the caller's own output buffer: for METHOD_IN_DIRECT the
    /// data the driver reads (a SEND's payload), for METHOD_OUT_DIRECT where it writes; kept
    /// (locked) until the request completes and handed back in its result.
    pub fn ioctl_async_with(
        &self,
        handle: Handle,
        code: u32,
        input: &[u8],
        output: Vec<u8>,
    ) -> Result<PendingIo, KernelError> {
        let input = input.to_vec();
        let slot = self.syscall("DeviceIoControl", move || {
            thread::kernel()
                .io
                .device_control(handle.0, code, &input, output)
        })?;
        let slot =
            slot.map_err(|s| KernelError::Status(s, format!("DeviceIoControl({code:#010X})")))?;
        Ok(PendingIo {
            shared: self.shared.clone(),
            slot,
        })
    }

    /// Sends an IOCTL and waits for it to complete (DeviceIoControl without OVERLAPPED).
    pub fn ioctl(
        &self,
        handle: Handle,
        code: u32,
        input: &[u8],
        output_length: usize,
    ) -> Result<IoResult, KernelError> {
        self.ioctl_async(handle, code, input, output_length)?.wait()
    }

    /// CloseHandle: cleanup now, close when the handle's requests are done.
    pub fn close(&self, handle: Handle) -> Result<(), KernelError> {
        let result = self.run("CloseHandle", move || thread::kernel().io.close(handle.0))?;
        result.map_err(|s| KernelError::Status(s, "CloseHandle".into()))
    }
}
