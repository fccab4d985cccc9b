//! DeviceIoControl: the IRP with its system buffer (and, for the direct methods, the caller's
//! locked output buffer and its MDL), its final completion, cancellation.

use super::*;

impl IoManager {
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
            // The I/O manager unlocks and frees the MDLs on its IRP (its own for a direct
            // buffer first) before the caller sees the result.
            k.mdls.release_irp_chain(irp);
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
            let mut result = done_slot.result.lock().unwrap();
            *result = Some(IoResult {
                status,
                information,
                output: std::sync::Arc::new(output),
            });
            let waiting = done_slot.waiters.load(std::sync::atomic::Ordering::Relaxed) > 0;
            drop(result);
            if waiting {
                done_slot.done.notify_all();
            }
            k.notify();
        });
        let irp = kernel.irps.allocate(1, Owner::Kernel, Some(finish));
        let id = kernel.next_sequence();
        *slot.irp.lock().unwrap() = Some((irp as usize, id));
        kernel.irps.tag(irp, id);
        let stack = kernel.irps.call_lower(irp);
        // Direct methods: the caller's output buffer, described by an MDL with its pages locked
        // until completion (for writing under METHOD_OUT_DIRECT), in Irp->MdlAddress; none for
        // an empty buffer (Microsoft Learn, "Buffer Descriptions for I/O Control Codes").
        let mdl = if direct_buffer != 0 {
            kernel.mdls.lock_caller_buffer(
                id,
                direct_buffer as *mut u8,
                output_length as u32,
                code & 3 == METHOD_OUT_DIRECT,
            )
        } else {
            std::ptr::null_mut()
        };
        // SAFETY: a fresh kernel IRP and its only stack location.
        unsafe {
            (*irp).AssociatedIrp = system_buffer as *mut std::ffi::c_void;
            (*irp).MdlAddress = mdl;
            // The caller's output address (Windows sets it for every method; a METHOD_BUFFERED
            // driver must not use it, and kemu leaves it NULL there).
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
}
