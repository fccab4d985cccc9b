//! The I/O manager: device objects and their names, symbolic links, handles (file objects) and
//! the host's I/O — open with an access check against the device's security descriptor,
//! Device-control IRPs — METHOD_BUFFERED with one system buffer, METHOD_IN_DIRECT /
//! METHOD_OUT_DIRECT with the input in a system buffer and the caller's output buffer locked for
//! the request's life — cancellation, cleanup and close.
//!
//! Every request is an IRP handed to the device's driver through its DRIVER_OBJECT's
//! MajorFunction table, as IoCallDriver does: IRP_MJ_CREATE at open, IRP_MJ_CLEANUP when the
//! handle closes, IRP_MJ_CLOSE when the file object's last request is done, IRP_MJ_DEVICE_CONTROL
//! per DeviceIoControl. A KMDF driver's table holds the framework's routines
//! (`wdf::dispatch`); an entry nobody set answers STATUS_INVALID_DEVICE_REQUEST.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use ksys::io::{
    DEVICE_OBJECT, DRIVER_OBJECT, FILE_OBJECT, IRP, IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE,
    IRP_MJ_DEVICE_CONTROL, METHOD_BUFFERED, METHOD_IN_DIRECT, METHOD_OUT_DIRECT,
};
use ksys::ntdef::{
    NTSTATUS, STATUS_ACCESS_DENIED, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_HANDLE,
    STATUS_INVALID_PARAMETER, STATUS_NO_SUCH_DEVICE, STATUS_NOT_SUPPORTED,
    STATUS_OBJECT_NAME_COLLISION, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_PENDING,
};

use crate::bugcheck::{bugcheck, codes, verifier};
use crate::ke::pool::Owner;
use crate::leaks::{Leak, LeakKind, Site};
use crate::sddl::{
    Caller, FILE_GENERIC_READ, FILE_GENERIC_WRITE, FILE_READ_DATA, FILE_WRITE_DATA,
    SecurityDescriptor,
};
use crate::thread;

/// Size of a DEVICE_OBJECT on x64 (opaque to drivers).
const DEVICE_OBJECT_SIZE: usize = 0x150;
/// Size of a FILE_OBJECT on x64.
const FILE_OBJECT_SIZE: usize = 0xD8;
/// Largest buffer kemu accepts for one IOCTL (the I/O manager's own limit is pool-bound).
pub const MAX_IOCTL_BUFFER: usize = 16 << 20;
/// Tag of the system buffers kemu allocates for METHOD_BUFFERED I/O.
const SYSTEM_BUFFER_TAG: u32 = u32::from_le_bytes(*b"IoSB");

struct DeviceEntry {
    name: Option<String>,
    descriptor: SecurityDescriptor,
    exclusive: bool,
    initializing: bool,
    deleted: bool,
    references: usize,
    wdf_device: usize,
    /// The DRIVER_OBJECT whose MajorFunction table serves the device.
    driver_object: usize,
    /// IoCreateDevice's device extension (0: none), freed with the device object.
    extension: (usize, usize),
    open_files: usize,
}

struct FileEntry {
    device: usize,
    outstanding: usize,
    cleaned_up: bool,
}

struct HandleEntry {
    file_object: usize,
    granted: u32,
    site: Site,
}

#[derive(Default)]
struct IoState {
    devices: HashMap<usize, DeviceEntry>,
    names: HashMap<String, usize>,
    links: HashMap<String, String>,
    files: HashMap<usize, FileEntry>,
    handles: HashMap<u64, HandleEntry>,
    next_handle: u64,
}

/// The outcome of one device-control request, as DeviceIoControl reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoResult {
    /// Final NTSTATUS.
    pub status: NTSTATUS,
    /// IoStatus.Information (bytes returned for METHOD_BUFFERED).
    pub information: usize,
    /// The caller's output buffer after completion (its full requested length; only the first
    /// `information` bytes were written by the I/O manager).
    pub output: Vec<u8>,
}

/// Where a pending request's completion lands.
#[derive(Default)]
pub(crate) struct IoSlot {
    pub result: Mutex<Option<IoResult>>,
    pub done: Condvar,
    /// The IRP and its id while in flight (for cancellation).
    pub irp: Mutex<Option<(usize, u64)>>,
}

/// The I/O manager of one kernel.
#[derive(Default)]
pub(crate) struct IoManager {
    state: Mutex<IoState>,
}

fn key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Maps a DOS path the way Win32 does: `\\.\X` and `\??\X` are `\DosDevices\X`.
fn dos_link(path: &str) -> String {
    let stripped = path
        .strip_prefix("\\\\.\\")
        .or_else(|| path.strip_prefix("\\??\\"))
        .or_else(|| path.strip_prefix("\\DosDevices\\"))
        .or_else(|| path.strip_prefix("\\GLOBAL??\\"))
        .unwrap_or(path);
    key(&format!("\\DosDevices\\{stripped}"))
}

impl IoManager {
    fn lock(&self) -> std::sync::MutexGuard<'_, IoState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// IoCreateDevice(Secure) on behalf of the framework.
    pub fn create_device(
        &self,
        name: Option<String>,
        descriptor: SecurityDescriptor,
        exclusive: bool,
        wdf_device: usize,
        driver_object: usize,
    ) -> Result<usize, NTSTATUS> {
        let kernel = thread::kernel();
        let mut state = self.lock();
        if let Some(n) = &name {
            if state.names.contains_key(&key(n)) {
                return Err(STATUS_OBJECT_NAME_COLLISION);
            }
        }
        if kernel.faults.allocation_fails() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        let object = crate::io::alloc_zeroed(DEVICE_OBJECT_SIZE) as usize;
        // DEVICE_OBJECT.DriverObject (offset 8), as IoCreateDevice sets it.
        // SAFETY: a fresh DEVICE_OBJECT_SIZE-byte allocation.
        unsafe { ((object + 8) as *mut usize).write(driver_object) };
        if let Some(n) = &name {
            state.names.insert(key(n), object);
        }
        state.devices.insert(
            object,
            DeviceEntry {
                name,
                descriptor,
                exclusive,
                initializing: true,
                deleted: false,
                references: 0,
                wdf_device,
                driver_object,
                extension: (0, 0),
                open_files: 0,
            },
        );
        Ok(object)
    }

    /// Gives a WDM device object its zeroed extension of `size` bytes → its address.
    pub fn attach_extension(&self, device: usize, size: usize) -> Option<usize> {
        let extension = crate::io::alloc_zeroed(size) as usize;
        match self.lock().devices.get_mut(&device) {
            Some(d) => {
                d.extension = (extension, size);
                Some(extension)
            }
            None => {
                crate::io::free(extension as *mut u8, size);
                None
            }
        }
    }

    /// The driver object of a live device object (None: not a live device).
    pub fn driver_of(&self, device: usize) -> Option<usize> {
        self.lock()
            .devices
            .get(&device)
            .filter(|d| !d.deleted)
            .map(|d| d.driver_object)
    }

    /// After DriverEntry: the WDM devices it created stop initializing (the I/O manager clears
    /// DO_DEVICE_INITIALIZING for them).
    pub fn driver_entry_returned(&self, driver_object: usize) {
        let mut state = self.lock();
        for (&object, d) in state.devices.iter_mut() {
            if d.driver_object == driver_object && d.wdf_device == 0 && !d.deleted {
                d.initializing = false;
                // SAFETY: a live DEVICE_OBJECT; Flags at offset 0x30.
                unsafe {
                    let flags = (object + 0x30) as *mut u32;
                    flags.write(flags.read() & !crate::io::device::DO_DEVICE_INITIALIZING);
                }
            }
        }
    }

    /// The framework device a device object belongs to (0: none, or unknown).
    pub fn framework_device(&self, device: usize) -> usize {
        self.lock().devices.get(&device).map_or(0, |d| d.wdf_device)
    }

    /// IoCallDriver: the device's driver gets the IRP through its MajorFunction table (the
    /// IRP's current stack location is already set up).
    fn call_driver(&self, device: usize, irp: *mut IRP, major: u8) -> NTSTATUS {
        let driver_object = self
            .lock()
            .devices
            .get(&device)
            .map_or(0, |d| d.driver_object);
        let routine = if driver_object == 0 {
            None
        } else {
            // SAFETY: the loaded driver's object, alive while its devices are.
            unsafe { (*(driver_object as *const DRIVER_OBJECT)).MajorFunction[major as usize] }
        };
        match routine {
            // SAFETY: the driver's dispatch routine with its device and a live IRP.
            Some(dispatch) => unsafe { dispatch(device as *mut DEVICE_OBJECT, irp) },
            None => {
                // SAFETY: the live IRP, ours to complete.
                unsafe { (*irp).IoStatus.Status = ksys::ntdef::STATUS_INVALID_DEVICE_REQUEST };
                thread::kernel().irps.complete(irp);
                ksys::ntdef::STATUS_INVALID_DEVICE_REQUEST
            }
        }
    }

    /// Sends a CREATE, CLEANUP or CLOSE IRP for `file_object` to the device's driver and waits
    /// for its completion → the final status.
    fn send_file_irp(&self, device: usize, file_object: usize, major: u8) -> NTSTATUS {
        let kernel = thread::kernel();
        let done: Arc<(Mutex<Option<NTSTATUS>>, Condvar)> = Arc::default();
        let signal = done.clone();
        let finish = Box::new(move |irp: *mut IRP| {
            // SAFETY: the final completion runs on the live IRP before kemu frees it.
            let status = unsafe { (*irp).IoStatus.Status };
            *signal.0.lock().unwrap() = Some(status);
            signal.1.notify_all();
        });
        let irp = kernel.irps.allocate(1, Owner::Kernel, Some(finish));
        let stack = kernel.irps.call_lower(irp);
        // SAFETY: a fresh kernel IRP and its only stack location.
        unsafe {
            (*irp).IoStatus.Status = STATUS_PENDING;
            (*irp).Tail.OriginalFileObject = file_object as *mut FILE_OBJECT;
            (*stack).MajorFunction = major;
            (*stack).FileObject = file_object as *mut FILE_OBJECT;
        }
        let activity = match major {
            IRP_MJ_CREATE => "IRP_MJ_CREATE",
            IRP_MJ_CLEANUP => "IRP_MJ_CLEANUP",
            _ => "IRP_MJ_CLOSE",
        };
        thread::with_activity(activity, || self.call_driver(device, irp, major));
        let mut status = done.0.lock().unwrap();
        loop {
            if let Some(s) = *status {
                return s;
            }
            if kernel.bugcheck.get().is_some() {
                drop(status);
                crate::bugcheck::park_forever();
            }
            status = done
                .1
                .wait_timeout(status, std::time::Duration::from_millis(10))
                .unwrap()
                .0;
        }
    }

    /// IoCreateSymbolicLink.
    pub fn create_link(&self, link: &str, target: &str) -> Result<(), NTSTATUS> {
        let mut state = self.lock();
        let k = dos_link(link);
        if state.links.contains_key(&k) {
            return Err(STATUS_OBJECT_NAME_COLLISION);
        }
        state.links.insert(k, target.to_owned());
        Ok(())
    }

    /// IoDeleteSymbolicLink.
    pub fn delete_link(&self, link: &str) -> bool {
        self.lock().links.remove(&dos_link(link)).is_some()
    }

    /// Clears DO_DEVICE_INITIALIZING.
    pub fn finish_initializing(&self, device: usize) {
        if let Some(d) = self.lock().devices.get_mut(&device) {
            d.initializing = false;
        }
    }

    /// IoDeleteDevice: the name goes now, the memory when the last reference goes.
    pub fn delete_device(&self, device: usize) {
        let mut state = self.lock();
        let Some(d) = state.devices.get_mut(&device) else {
            return;
        };
        d.deleted = true;
        let name = d.name.take();
        if let Some(n) = name {
            state.names.remove(&key(&n));
        }
        self.reap(&mut state, device);
    }

    fn reap(&self, state: &mut IoState, device: usize) {
        let gone = state
            .devices
            .get(&device)
            .is_some_and(|d| d.deleted && d.references == 0 && d.open_files == 0);
        if gone {
            if let Some(d) = state.devices.remove(&device) {
                if d.extension.0 != 0 {
                    crate::io::free(d.extension.0 as *mut u8, d.extension.1);
                }
            }
            crate::io::free(device as *mut u8, DEVICE_OBJECT_SIZE);
        }
    }

    /// Takes a reference on a live device object; false if unknown or deleted.
    pub fn reference_device(&self, device: usize) -> bool {
        match self.lock().devices.get_mut(&device) {
            Some(d) if !d.deleted => {
                d.references += 1;
                true
            }
            _ => false,
        }
    }

    /// Drops a reference (the device object is freed with the last one after deletion).
    pub fn dereference_device(&self, device: usize) {
        let mut state = self.lock();
        if let Some(d) = state.devices.get_mut(&device) {
            d.references = d.references.saturating_sub(1);
        }
        self.reap(&mut state, device);
    }

    /// Open handles, as leaks.
    pub fn leaks(&self) -> Vec<Leak> {
        self.lock()
            .handles
            .iter()
            .map(|(&h, e)| Leak {
                kind: LeakKind::Handle,
                address: h as usize,
                tag: format!("handle to file object {:#x}", e.file_object),
                size: 0,
                site: e.site.clone(),
            })
            .collect()
    }

    /// CreateFile(path, GENERIC_READ | GENERIC_WRITE) as `caller`. Runs on a kernel thread.
    pub fn open(&self, path: &str, caller: Caller) -> Result<u64, NTSTATUS> {
        let kernel = thread::kernel();
        let (device, granted) = {
            let mut state = self.lock();
            let target = state
                .links
                .get(&dos_link(path))
                .cloned()
                .ok_or(STATUS_OBJECT_NAME_NOT_FOUND)?;
            let device = *state
                .names
                .get(&key(&target))
                .ok_or(STATUS_OBJECT_NAME_NOT_FOUND)?;
            let d = state
                .devices
                .get_mut(&device)
                .ok_or(STATUS_NO_SUCH_DEVICE)?;
            if d.initializing || d.deleted {
                return Err(STATUS_NO_SUCH_DEVICE);
            }
            let granted = d
                .descriptor
                .access_check(caller, FILE_GENERIC_READ | FILE_GENERIC_WRITE)
                .map_err(|_| STATUS_ACCESS_DENIED)?;
            if d.exclusive && d.open_files > 0 {
                return Err(STATUS_ACCESS_DENIED);
            }
            d.open_files += 1;
            (device, granted)
        };
        let file_object = crate::io::alloc_zeroed(FILE_OBJECT_SIZE) as usize;
        // FILE_OBJECT.DeviceObject (offset 8).
        // SAFETY: a fresh FILE_OBJECT_SIZE-byte allocation.
        unsafe { ((file_object + 8) as *mut usize).write(device) };
        let created = self.send_file_irp(device, file_object, IRP_MJ_CREATE);
        let mut state = self.lock();
        match ksys::ntdef::nt_success(created) {
            true => {
                state.files.insert(
                    file_object,
                    FileEntry {
                        device,
                        outstanding: 0,
                        cleaned_up: false,
                    },
                );
                state.next_handle += 1;
                let handle = state.next_handle * 4;
                state.handles.insert(
                    handle,
                    HandleEntry {
                        file_object,
                        granted,
                        site: Site::here(kernel.next_sequence()),
                    },
                );
                Ok(handle)
            }
            false => {
                if let Some(d) = state.devices.get_mut(&device) {
                    d.open_files -= 1;
                }
                self.reap(&mut state, device);
                crate::io::free(file_object as *mut u8, FILE_OBJECT_SIZE);
                Err(created)
            }
        }
    }

    /// DeviceIoControl: builds the IRP and hands it to the framework. Runs on a kernel thread;
    /// the returned slot fills when the IRP completes (maybe before this returns).
    pub fn device_control(
        &self,
        handle: u64,
        code: u32,
        input: &[u8],
        user_output: Vec<u8>,
    ) -> Result<Arc<IoSlot>, NTSTATUS> {
        let kernel = thread::kernel();
        let output_length = user_output.len();
        if input.len() > MAX_IOCTL_BUFFER || output_length > MAX_IOCTL_BUFFER {
            return Err(STATUS_INVALID_PARAMETER);
        }
        let direct = match code & 3 {
            METHOD_BUFFERED => false,
            METHOD_IN_DIRECT | METHOD_OUT_DIRECT => true,
            _ => return Err(STATUS_NOT_SUPPORTED),
        };
        let (file_object, device) = {
            let mut state = self.lock();
            let entry = state.handles.get(&handle).ok_or(STATUS_INVALID_HANDLE)?;
            let access = (code >> 14) & 3;
            let needed = (if access & 1 != 0 { FILE_READ_DATA } else { 0 })
                | (if access & 2 != 0 { FILE_WRITE_DATA } else { 0 });
            if entry.granted & needed != needed {
                return Err(STATUS_ACCESS_DENIED);
            }
            let file_object = entry.file_object;
            let file = state
                .files
                .get_mut(&file_object)
                .ok_or(STATUS_INVALID_HANDLE)?;
            file.outstanding += 1;
            (file_object, file.device)
        };
        // Buffered: one system buffer for both. Direct: the system buffer holds the input and the
        // caller's own output buffer is used in place (kept here until completion).
        let length = if direct {
            input.len()
        } else {
            input.len().max(output_length)
        };
        let mut user_output = user_output;
        let direct_buffer = if direct && output_length > 0 {
            user_output.as_mut_ptr() as usize
        } else {
            0
        };
        let system_buffer = if length == 0 {
            std::ptr::null_mut()
        } else {
            kernel
                .pool
                .allocate(length, SYSTEM_BUFFER_TAG, true, false, Owner::Kernel, false)
        };
        if !system_buffer.is_null() && !input.is_empty() {
            // SAFETY: the system buffer holds `length` >= input.len() bytes.
            unsafe { std::ptr::copy_nonoverlapping(input.as_ptr(), system_buffer, input.len()) };
        }
        let slot = Arc::new(IoSlot::default());
        let done_slot = slot.clone();
        let k = kernel.clone();
        let buffer_address = system_buffer as usize;
        let finish = Box::new(move |irp: *mut IRP| {
            // SAFETY: the final completion runs on the live IRP before kemu frees it.
            let (status, information) =
                unsafe { ((*irp).IoStatus.Status, (*irp).IoStatus.Information) };
            if information > output_length && ksys::ntdef::nt_success(status) {
                bugcheck(
                    codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION,
                    [
                        verifier::INFORMATION_TOO_LARGE,
                        irp as usize,
                        information,
                        output_length,
                    ],
                    format!(
                        "IRP {:#x} completed with Information {information} > output buffer length {output_length}",
                        irp as usize
                    ),
                );
            }
            let copied = if ksys::ntdef::nt_success(status) {
                information.min(output_length)
            } else {
                0
            };
            let mut output = if direct {
                // The driver wrote (or read) the caller's buffer in place; it goes back as is.
                std::mem::take(&mut user_output)
            } else {
                vec![0u8; output_length]
            };
            if copied > 0 && !direct {
                // SAFETY: the system buffer holds at least output_length bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        buffer_address as *const u8,
                        output.as_mut_ptr(),
                        copied,
                    )
                };
            }
            if buffer_address != 0 {
                k.pool.free(
                    buffer_address as *mut u8,
                    Some(SYSTEM_BUFFER_TAG),
                    Owner::Kernel,
                    "I/O completion",
                );
            }
            *done_slot.irp.lock().unwrap() = None;
            // The handle's bookkeeping first (it may close the file, or queue its close): a
            // waiter woken by the result must find the request gone from its handle.
            k.io.request_finished(file_object);
            *done_slot.result.lock().unwrap() = Some(IoResult {
                status,
                information,
                output,
            });
            done_slot.done.notify_all();
            k.notify();
        });
        let irp = kernel.irps.allocate(1, Owner::Kernel, Some(finish));
        let id = kernel.next_sequence();
        *slot.irp.lock().unwrap() = Some((irp as usize, id));
        kernel.irps.tag(irp, id);
        let stack = kernel.irps.call_lower(irp);
        // SAFETY: a fresh kernel IRP and its only stack location.
        unsafe {
            (*irp).AssociatedIrp = system_buffer as *mut std::ffi::c_void;
            // Direct methods: the caller's output buffer, locked until completion.
            (*irp).UserBuffer = direct_buffer as *mut std::ffi::c_void;
            (*irp).IoStatus.Status = STATUS_PENDING;
            (*irp).Tail.OriginalFileObject = file_object as *mut FILE_OBJECT;
            (*stack).MajorFunction = IRP_MJ_DEVICE_CONTROL;
            (*stack).FileObject = file_object as *mut FILE_OBJECT;
            (*stack).Parameters.DeviceIoControl.IoControlCode = code;
            (*stack).Parameters.DeviceIoControl.InputBufferLength = input.len() as u32;
            (*stack).Parameters.DeviceIoControl.OutputBufferLength = output_length as u32;
        }
        thread::with_activity(&format!("IOCTL {code:#010X}"), || {
            self.call_driver(device, irp, IRP_MJ_DEVICE_CONTROL)
        });
        Ok(slot)
    }

    /// CancelIoEx for one request: IoCancelIrp if it is still in flight.
    pub fn cancel(&self, slot: &IoSlot) -> bool {
        let target = *slot.irp.lock().unwrap();
        match target {
            Some((irp, id)) => thread::kernel().irps.cancel_tagged(irp as *mut IRP, id),
            None => false,
        }
    }

    fn request_finished(&self, file_object: usize) {
        let close = {
            let mut state = self.lock();
            let Some(f) = state.files.get_mut(&file_object) else {
                return;
            };
            f.outstanding -= 1;
            f.cleaned_up && f.outstanding == 0
        };
        if close {
            self.close_file(file_object);
        }
    }

    fn close_file(&self, file_object: usize) {
        if thread::irql() > thread::PASSIVE {
            // The last request completed at raised IRQL: IRP_MJ_CLOSE goes at PASSIVE_LEVEL, as
            // the I/O manager sends it once the file object's last reference is gone.
            thread::kernel()
                .workers
                .submit(move || thread::kernel().io.close_file(file_object));
            return;
        }
        let device = self.lock().files.get(&file_object).map(|f| f.device);
        let Some(device) = device else { return };
        self.send_file_irp(device, file_object, IRP_MJ_CLOSE);
        let entry = self.lock().files.remove(&file_object);
        let Some(entry) = entry else { return };
        let mut state = self.lock();
        if let Some(d) = state.devices.get_mut(&entry.device) {
            d.open_files -= 1;
        }
        self.reap(&mut state, entry.device);
        drop(state);
        crate::io::free(file_object as *mut u8, FILE_OBJECT_SIZE);
    }

    /// CloseHandle: cleanup now; close once the handle's requests are done.
    pub fn close(&self, handle: u64) -> Result<(), NTSTATUS> {
        let entry = self
            .lock()
            .handles
            .remove(&handle)
            .ok_or(STATUS_INVALID_HANDLE)?;
        let device = self.lock().files.get(&entry.file_object).map(|f| f.device);
        if let Some(device) = device {
            self.send_file_irp(device, entry.file_object, IRP_MJ_CLEANUP);
        }
        let close = {
            let mut state = self.lock();
            match state.files.get_mut(&entry.file_object) {
                Some(f) => {
                    f.cleaned_up = true;
                    f.outstanding == 0
                }
                None => false,
            }
        };
        if close {
            self.close_file(entry.file_object);
        }
        Ok(())
    }
}
