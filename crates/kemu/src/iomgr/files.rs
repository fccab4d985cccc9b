//! Handles and file objects: open with an access check, the IRPs sent through the driver's
//! MajorFunction table for create, cleanup and close.

use super::*;

impl IoManager {
    /// IoCallDriver: the device's driver gets the IRP through its MajorFunction table (the
    /// IRP's current stack location is already set up).
    pub(super) fn call_driver(&self, device: usize, irp: *mut IRP, major: u8) -> NTSTATUS {
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
    pub(super) fn send_file_irp(&self, device: usize, file_object: usize, major: u8) -> NTSTATUS {
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

    pub(super) fn request_finished(&self, file_object: usize) {
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

    pub(super) fn close_file(&self, file_object: usize) {
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
