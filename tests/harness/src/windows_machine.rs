//! The Windows backend: `\\.\WskTls` of the installed driver, opened for overlapped I/O, with
//! several IOCTLs in flight at once. Requests go through NtDeviceIoControlFile so the harness
//! sees the driver's exact NTSTATUS (DeviceIoControl would fold it into a Win32 error code).
//!
//! This module is the harness's only `unsafe`: the Windows API edge, like kemu's ABI edge.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use windows_sys::Wdk::System::IO::NtDeviceIoControlFile;
use windows_sys::Win32::Foundation::{
    CloseHandle, GENERIC_READ, GENERIC_WRITE, GetLastError, HANDLE, INVALID_HANDLE_VALUE,
    WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_OVERLAPPED, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::IO::{CancelIoEx, IO_STATUS_BLOCK, OVERLAPPED};
use windows_sys::Win32::System::Threading::{CreateEventW, INFINITE, WaitForSingleObject};

use crate::device::{Completion, Device, DeviceError, Pending};
use crate::machine::Machine;

const DEVICE_PATH: &str = r"\\.\WskTls";

/// A kernel handle; usable from any thread.
struct OwnedHandle(HANDLE);

// SAFETY: Windows kernel handles are process-wide values, valid on every thread.
unsafe impl Send for OwnedHandle {}
// SAFETY: as above; every call taking the handle is thread-safe.
unsafe impl Sync for OwnedHandle {}

impl Drop for OwnedHandle {
    fn drop(&mut self) {
        // SAFETY: a handle this module opened and closes exactly once.
        unsafe { CloseHandle(self.0) };
    }
}

fn last_error(what: &str) -> DeviceError {
    // SAFETY: reads the calling thread's last-error value.
    let code = unsafe { GetLastError() };
    let hint = match code {
        2 => " (the driver is not installed or not started: sc query wsktls)",
        5 => " (access denied: run as Administrator)",
        _ => "",
    };
    DeviceError(format!("{what} failed with Win32 error {code}{hint}"))
}

/// The installed driver on this machine.
pub struct WindowsMachine {
    opened: Mutex<Vec<Arc<OwnedHandle>>>,
}

impl WindowsMachine {
    /// Checks that the device can be opened.
    pub fn connect() -> Result<WindowsMachine, DeviceError> {
        let machine = WindowsMachine {
            opened: Mutex::new(Vec::new()),
        };
        drop(machine.open_handle()?);
        Ok(machine)
    }

    fn open_handle(&self) -> Result<Arc<OwnedHandle>, DeviceError> {
        let path: Vec<u16> = DEVICE_PATH.encode_utf16().chain(Some(0)).collect();
        // SAFETY: a NUL-terminated path; no security attributes, no template.
        let handle = unsafe {
            CreateFileW(
                path.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                std::ptr::null(),
                OPEN_EXISTING,
                FILE_FLAG_OVERLAPPED,
                std::ptr::null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            return Err(last_error(&format!("opening {DEVICE_PATH}")));
        }
        Ok(Arc::new(OwnedHandle(handle)))
    }
}

/// One request's memory: the kernel writes the status block and output until completion, so
/// it lives on the heap and is freed only once the request is known to be complete.
struct Request {
    iosb: IO_STATUS_BLOCK,
    event: OwnedHandle,
    input: Vec<u8>,
    /// The kernel writes through a pointer to its heap bytes until completion; after it,
    /// [`Pending::take`] moves the Vec out (the bytes stay where they are).
    output: Mutex<Vec<u8>>,
}

struct WindowsPending {
    handle: Arc<OwnedHandle>,
    request: Box<Request>,
    /// Set when the call completed synchronously with an error (no status block written).
    immediate: Option<i32>,
    done: Mutex<bool>,
    /// The output went to the caller ([`Pending::take`]): the request is not looked at again.
    taken: std::sync::atomic::AtomicBool,
}

// SAFETY: the request's memory is only read after completion, which the event publishes.
unsafe impl Send for WindowsPending {}

impl WindowsPending {
    /// The completed request's status and output: a copy of the output, or with `take` the
    /// caller's buffer itself.
    fn completion(&self, take: bool) -> Completion {
        if let Some(status) = self.immediate {
            return Completion {
                status,
                output: Vec::new(),
            };
        }
        // SAFETY: the request completed (its event is signalled): the status block is final.
        let (status, information) = unsafe {
            (
                self.request.iosb.Anonymous.Status,
                self.request.iosb.Information,
            )
        };
        let mut output = self.request.output.lock().unwrap();
        let n = information.min(output.len());
        let output = if take {
            let mut mine = std::mem::take(&mut *output);
            mine.truncate(n);
            mine
        } else {
            output[..n].to_vec()
        };
        Completion { status, output }
    }

    /// Waits up to `timeout`; once complete, the completion (see [`Self::completion`]).
    fn finish(&self, timeout: Duration, take: bool) -> Result<Option<Completion>, DeviceError> {
        use std::sync::atomic::Ordering;
        if self.taken.load(Ordering::Acquire) {
            return Err(DeviceError(
                "this request's completion was already taken".into(),
            ));
        }
        let complete = self.immediate.is_some() || *self.done.lock().unwrap() || {
            let ms = timeout.as_millis().min(u128::from(INFINITE - 1)) as u32;
            // SAFETY: an event this request owns.
            match unsafe { WaitForSingleObject(self.request.event.0, ms) } {
                WAIT_OBJECT_0 => {
                    *self.done.lock().unwrap() = true;
                    true
                }
                WAIT_TIMEOUT => false,
                _ => return Err(last_error("waiting for an IOCTL")),
            }
        };
        if !complete {
            return Ok(None);
        }
        if take && self.taken.swap(true, Ordering::AcqRel) {
            return Err(DeviceError(
                "this request's completion was already taken".into(),
            ));
        }
        Ok(Some(self.completion(take)))
    }
}

impl Pending for WindowsPending {
    fn wait(&self, timeout: Duration) -> Result<Option<Completion>, DeviceError> {
        self.finish(timeout, false)
    }

    fn take(&self, timeout: Duration) -> Result<Option<Completion>, DeviceError> {
        self.finish(timeout, true)
    }

    fn cancel(&self) -> Result<(), DeviceError> {
        if self.immediate.is_some() || *self.done.lock().unwrap() {
            return Ok(());
        }
        // CancelIoEx finds the request by its status block (the OVERLAPPED's first fields).
        let target = &self.request.iosb as *const IO_STATUS_BLOCK as *const OVERLAPPED;
        // SAFETY: our handle and the status block of a request issued on it.
        unsafe { CancelIoEx(self.handle.0, target) };
        Ok(())
    }
}

impl Drop for WindowsPending {
    fn drop(&mut self) {
        if self.immediate.is_some() || *self.done.lock().unwrap() {
            return;
        }
        // Still in flight: the kernel may write into `request` until it completes, so cancel
        // and wait before the memory goes.
        let _ = self.cancel();
        // SAFETY: an event this request owns.
        unsafe { WaitForSingleObject(self.request.event.0, INFINITE) };
    }
}

struct WindowsDevice {
    handle: Arc<OwnedHandle>,
}

impl Device for WindowsDevice {
    fn submit_buffer(
        &self,
        code: u32,
        input: &[u8],
        output: Vec<u8>,
    ) -> Result<Box<dyn Pending>, DeviceError> {
        // SAFETY: a manual-reset, initially unsignalled, unnamed event.
        let event = unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) };
        if event.is_null() {
            return Err(last_error("CreateEventW"));
        }
        let mut request = Box::new(Request {
            // SAFETY: IO_STATUS_BLOCK is plain data; all zero is a valid value.
            iosb: unsafe { std::mem::zeroed() },
            event: OwnedHandle(event),
            input: input.to_vec(),
            output: Mutex::new(output),
        });
        let in_len =
            u32::try_from(request.input.len()).map_err(|_| DeviceError("input too long".into()))?;
        let r = &mut *request;
        let output = r.output.get_mut().unwrap();
        let out_len =
            u32::try_from(output.len()).map_err(|_| DeviceError("output too long".into()))?;
        let out_ptr = output.as_mut_ptr();
        // SAFETY: every pointer is into `request`, heap memory kept until completion (Drop
        // waits for it); the handle was opened for overlapped I/O.
        let status = unsafe {
            NtDeviceIoControlFile(
                self.handle.0,
                r.event.0,
                None,
                std::ptr::null(),
                &mut r.iosb,
                code,
                r.input.as_ptr() as *const c_void,
                in_len,
                out_ptr as *mut c_void,
                out_len,
            )
        };
        // An error (severity 3) returned at once never reaches the status block or the event;
        // success, information and warning statuses (and STATUS_PENDING) do.
        let immediate = ((status as u32) >> 30 == 3).then_some(status);
        Ok(Box::new(WindowsPending {
            handle: self.handle.clone(),
            request,
            immediate,
            done: Mutex::new(false),
            taken: std::sync::atomic::AtomicBool::new(false),
        }))
    }
}

impl Machine for WindowsMachine {
    fn open(&self) -> Result<Box<dyn Device>, DeviceError> {
        let handle = self.open_handle()?;
        self.opened.lock().unwrap().push(handle.clone());
        Ok(Box::new(WindowsDevice { handle }))
    }

    fn describe(&self) -> String {
        format!("Windows, the installed driver at {DEVICE_PATH}")
    }

    fn finish(self: Box<Self>) -> Result<String, DeviceError> {
        let handles = std::mem::take(&mut *self.opened.lock().unwrap());
        let count = handles.len();
        drop(handles);
        Ok(format!(
            "closed {count} handle(s); the driver stays loaded (check `sc query wsktls`, and pool tag usage with poolmon)"
        ))
    }
}
