//! A plain WDM driver (no KMDF) under kemu: it creates its device and symbolic link with
//! IoCreateDevice / IoCreateSymbolicLink, fills its DRIVER_OBJECT's MajorFunction table, and gets
//! every request as an IRP through that table — create, device control, cleanup, close — as the
//! I/O manager hands them out. A major function it leaves alone is answered for it
//! (STATUS_INVALID_DEVICE_REQUEST), and unload leaves nothing behind.

use kemu::testing::isolated;
use kemu::{Caller, Kernel, KernelConfig, KernelError, NativeDriver, codes, verifier};
use ksys::ntdef::{STATUS_INVALID_DEVICE_REQUEST, STATUS_SUCCESS};

/// The WDM driver.
mod wdm_driver {
    use core::sync::atomic::{AtomicUsize, Ordering};

    use ksys::imports::*;
    use ksys::io::{
        DEVICE_OBJECT, DRIVER_OBJECT, IRP, IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE,
        IRP_MJ_DEVICE_CONTROL, MDL, MDL_PAGES_LOCKED, MDL_WRITE_OPERATION, ctl_code,
        mm_get_system_address_for_nonpaged_mdl,
    };
    use ksys::ntdef::*;
    use ksys::utf16;

    /// Reverses its input into the output (METHOD_BUFFERED).
    pub const REVERSE: u32 = ctl_code(0x9100, 0x801, 0, 0);
    /// Answers with the counts of create, cleanup and close IRPs seen (3 × u32).
    pub const COUNTS: u32 = ctl_code(0x9100, 0x802, 0, 0);
    /// METHOD_OUT_DIRECT: writes `a`, `b`, `c`, ... into the caller's output buffer through the
    /// MDL in Irp->MdlAddress.
    pub const FILL: u32 = ctl_code(0x9100, 0x803, 2, 0);
    /// METHOD_IN_DIRECT: succeeds if the caller's second buffer, read through the MDL, holds the
    /// same bytes as the input (the system buffer).
    pub const COMPARE: u32 = ctl_code(0x9100, 0x804, 1, 0);
    /// METHOD_OUT_DIRECT, wrongly: frees the I/O manager's MDL itself, leaves Irp->MdlAddress
    /// pointing at it, and completes.
    pub const FREE_MDL: u32 = ctl_code(0x9100, 0x805, 2, 0);
    /// What the driver answers when an MDL is not as the I/O manager must hand it over.
    pub const WRONG_MDL: NTSTATUS = STATUS_INVALID_PARAMETER;
    /// The last DriverEntry installs no IRP_MJ_DEVICE_CONTROL routine when set.
    pub static NO_DEVICE_CONTROL: AtomicUsize = AtomicUsize::new(0);

    static CREATES: AtomicUsize = AtomicUsize::new(0);
    static CLEANUPS: AtomicUsize = AtomicUsize::new(0);
    static CLOSES: AtomicUsize = AtomicUsize::new(0);

    const DEVICE_NAME: &[u16] = utf16!("\\Device\\KemuWdm");
    const LINK_NAME: &[u16] = utf16!("\\DosDevices\\KemuWdm");

    fn name(text: &'static [u16]) -> UNICODE_STRING {
        UNICODE_STRING::from_static(text)
    }

    /// The current stack location of an IRP the I/O manager sent.
    fn stack(irp: *mut IRP) -> *mut ksys::io::IO_STACK_LOCATION {
        // SAFETY: a live IRP handed to a dispatch routine.
        unsafe { (*irp).Tail.CurrentStackLocation }
    }

    fn complete(irp: *mut IRP, status: NTSTATUS, information: usize) -> NTSTATUS {
        // SAFETY: our live IRP, completed once.
        unsafe {
            (*irp).IoStatus.Status = status;
            (*irp).IoStatus.Information = information;
            IofCompleteRequest(irp, 0);
        }
        status
    }

    /// The caller's direct buffer through `mdl`, if the MDL describes `length` bytes, locked
    /// for writing exactly when `write`, and has a system address.
    ///
    /// # Safety
    /// `mdl` is NULL or the live MDL of an IRP being handled.
    unsafe fn direct_buffer(mdl: *mut MDL, length: usize, write: bool) -> Option<*mut u8> {
        if mdl.is_null() {
            return None;
        }
        // SAFETY: a live MDL per the contract.
        unsafe {
            let flags = (*mdl).MdlFlags;
            let locked = flags & MDL_PAGES_LOCKED != 0;
            let for_writing = flags & MDL_WRITE_OPERATION != 0;
            if (*mdl).ByteCount as usize != length || !locked || for_writing != write {
                return None;
            }
            let address = mm_get_system_address_for_nonpaged_mdl(mdl) as *mut u8;
            (!address.is_null()).then_some(address)
        }
    }

    unsafe extern "win64" fn open_close(_device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
        // SAFETY: see `stack`.
        let counter = match unsafe { (*stack(irp)).MajorFunction } {
            IRP_MJ_CREATE => &CREATES,
            IRP_MJ_CLEANUP => &CLEANUPS,
            _ => &CLOSES,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        complete(irp, STATUS_SUCCESS, 0)
    }

    unsafe extern "win64" fn device_control(
        _device: *mut DEVICE_OBJECT,
        irp: *mut IRP,
    ) -> NTSTATUS {
        // SAFETY: the I/O manager's IRP: its stack location and, METHOD_BUFFERED, one system
        // buffer as large as the larger of input and output.
        unsafe {
            let parameters = (*stack(irp)).Parameters.DeviceIoControl;
            let input = parameters.InputBufferLength as usize;
            let output = parameters.OutputBufferLength as usize;
            let buffer = (*irp).AssociatedIrp as *mut u8;
            let mdl = (*irp).MdlAddress;
            match parameters.IoControlCode {
                FREE_MDL => {
                    IoFreeMdl(mdl);
                    complete(irp, STATUS_SUCCESS, 0)
                }
                // A buffered request has no MDL.
                REVERSE if !mdl.is_null() => complete(irp, WRONG_MDL, 0),
                // An empty direct buffer has none either.
                FILL | COMPARE if output == 0 => {
                    let status = if mdl.is_null() {
                        STATUS_SUCCESS
                    } else {
                        WRONG_MDL
                    };
                    complete(irp, status, 0)
                }
                FILL => match direct_buffer(mdl, output, true) {
                    Some(out) => {
                        for i in 0..output {
                            *out.add(i) = b'a' + (i % 26) as u8;
                        }
                        complete(irp, STATUS_SUCCESS, output)
                    }
                    None => complete(irp, WRONG_MDL, 0),
                },
                COMPARE => match direct_buffer(mdl, output, false) {
                    Some(data) => {
                        let same = input == output
                            && core::slice::from_raw_parts(data, output)
                                == core::slice::from_raw_parts(buffer, input);
                        let status = if same {
                            STATUS_SUCCESS
                        } else {
                            STATUS_UNSUCCESSFUL
                        };
                        complete(irp, status, 0)
                    }
                    None => complete(irp, WRONG_MDL, 0),
                },
                REVERSE if output >= input => {
                    core::slice::from_raw_parts_mut(buffer, input).reverse();
                    complete(irp, STATUS_SUCCESS, input)
                }
                REVERSE => complete(irp, STATUS_BUFFER_TOO_SMALL, 0),
                COUNTS if output >= 12 => {
                    let counts =
                        [&CREATES, &CLEANUPS, &CLOSES].map(|c| c.load(Ordering::SeqCst) as u32);
                    for (i, c) in counts.iter().enumerate() {
                        core::ptr::copy_nonoverlapping(
                            c.to_le_bytes().as_ptr(),
                            buffer.add(4 * i),
                            4,
                        );
                    }
                    complete(irp, STATUS_SUCCESS, 12)
                }
                _ => complete(irp, STATUS_INVALID_DEVICE_REQUEST, 0),
            }
        }
    }

    unsafe extern "win64" fn unload(driver: *mut DRIVER_OBJECT) {
        let mut link = name(LINK_NAME);
        // SAFETY: our link and our only device, deleted once at PASSIVE_LEVEL.
        unsafe {
            IoDeleteSymbolicLink(&mut link);
            IoDeleteDevice((*driver).DeviceObject);
        }
    }

    /// DriverEntry.
    ///
    /// # Safety
    /// Called by the loader with its driver object.
    pub unsafe extern "win64" fn driver_entry(
        driver: *mut DRIVER_OBJECT,
        _registry: *mut UNICODE_STRING,
    ) -> NTSTATUS {
        let mut device_name = name(DEVICE_NAME);
        let mut link = name(LINK_NAME);
        let mut device: *mut DEVICE_OBJECT = core::ptr::null_mut();
        // SAFETY: the loader's driver object; our names; an out-pointer on the stack.
        unsafe {
            let status = IoCreateDevice(driver, 16, &mut device_name, 0x22, 0, 0, &mut device);
            if !nt_success(status) {
                return status;
            }
            let status = IoCreateSymbolicLink(&mut link, &mut device_name);
            if !nt_success(status) {
                IoDeleteDevice(device);
                return status;
            }
            let table = &mut (*driver).MajorFunction;
            table[IRP_MJ_CREATE as usize] = Some(open_close);
            table[IRP_MJ_CLEANUP as usize] = Some(open_close);
            table[IRP_MJ_CLOSE as usize] = Some(open_close);
            if NO_DEVICE_CONTROL.load(Ordering::SeqCst) == 0 {
                table[IRP_MJ_DEVICE_CONTROL as usize] = Some(device_control);
            }
            (*driver).DriverUnload = Some(unload);
        }
        STATUS_SUCCESS
    }
}

fn load(kernel: &Kernel) {
    kernel
        .load(NativeDriver {
            service_name: "kemuwdm",
            entry: wdm_driver::driver_entry,
            imports: ksys::imports::IMPORT_DIRECTORY,
        })
        .unwrap();
}

/// A kernel with the WDM driver loaded and its device opened by an administrator.
fn booted_and_opened() -> (Kernel, kemu::Handle) {
    let kernel = Kernel::boot(KernelConfig::from_env());
    load(&kernel);
    let h = kernel
        .open("\\\\.\\KemuWdm", Caller::Administrator)
        .unwrap();
    (kernel, h)
}

#[test]
fn a_wdm_driver_gets_its_irps_through_its_major_function_table() {
    isolated(
        "a_wdm_driver_gets_its_irps_through_its_major_function_table",
        || {
            let (kernel, h) = booted_and_opened();
            let reversed = kernel.ioctl(h, wdm_driver::REVERSE, b"abcdef", 6).unwrap();
            assert_eq!(reversed.status, STATUS_SUCCESS);
            assert_eq!(&reversed.output[..reversed.information], b"fedcba");
            let short = kernel.ioctl(h, wdm_driver::REVERSE, b"abcdef", 2).unwrap();
            assert_eq!(short.status, ksys::ntdef::STATUS_BUFFER_TOO_SMALL);
            // Everyone may read and write a device created without a security descriptor.
            let user = kernel.open("\\\\.\\KemuWdm", Caller::User).unwrap();
            kernel.close(user).unwrap();
            let counts = kernel.ioctl(h, wdm_driver::COUNTS, &[], 12).unwrap();
            let words: Vec<u32> = counts.output[..12]
                .chunks(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            // Two opens; the user's handle was cleaned up and closed.
            assert_eq!(words, [2, 1, 1]);
            kernel.close(h).unwrap();
            kernel.unload().unwrap();
            // The link went with the device.
            assert!(kernel.open("\\\\.\\KemuWdm", Caller::System).is_err());
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn a_direct_requests_buffer_reaches_the_driver_through_an_mdl_the_io_manager_frees() {
    isolated(
        "a_direct_requests_buffer_reaches_the_driver_through_an_mdl_the_io_manager_frees",
        || {
            let (kernel, h) = booted_and_opened();
            // METHOD_OUT_DIRECT: written in place through the MDL (locked for writing), across
            // a page boundary, and handed back.
            let filled = kernel
                .ioctl_async_with(h, wdm_driver::FILL, &[], vec![0u8; 5000])
                .unwrap()
                .wait()
                .unwrap();
            assert_eq!((filled.status, filled.information), (STATUS_SUCCESS, 5000));
            assert_eq!(&filled.output[..3], b"abc");
            assert_eq!(filled.output[4999], b'a' + (4999 % 26) as u8);
            // METHOD_IN_DIRECT: the driver reads the caller's bytes through the MDL (locked for
            // reading); a difference is seen as one.
            let same = kernel
                .ioctl_async_with(h, wdm_driver::COMPARE, b"kernel", b"kernel".to_vec())
                .unwrap()
                .wait()
                .unwrap();
            assert_eq!(same.status, STATUS_SUCCESS);
            let other = kernel
                .ioctl_async_with(h, wdm_driver::COMPARE, b"kernel", b"kernal".to_vec())
                .unwrap()
                .wait()
                .unwrap();
            assert_eq!(other.status, ksys::ntdef::STATUS_UNSUCCESSFUL);
            // No buffer, no MDL; a buffered request never has one.
            let empty = kernel.ioctl(h, wdm_driver::FILL, &[], 0).unwrap();
            assert_eq!(empty.status, STATUS_SUCCESS);
            let buffered = kernel.ioctl(h, wdm_driver::REVERSE, b"ab", 2).unwrap();
            assert_eq!(buffered.status, STATUS_SUCCESS);
            kernel.close(h).unwrap();
            // Unload reports every MDL still allocated: the I/O manager freed its own.
            kernel.unload().unwrap();
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn freeing_the_io_managers_mdl_before_completing_is_a_bugcheck() {
    isolated(
        "freeing_the_io_managers_mdl_before_completing_is_a_bugcheck",
        || {
            // A kemu caller thread takes the IOCTL, so the bugcheck comes back as an error.
            let kernel = Kernel::boot(KernelConfig {
                dispatch_on_caller: false,
                ..KernelConfig::from_env()
            });
            load(&kernel);
            let h = kernel
                .open("\\\\.\\KemuWdm", Caller::Administrator)
                .unwrap();
            match kernel.ioctl(h, wdm_driver::FREE_MDL, &[], 64) {
                Err(KernelError::Bugcheck(b)) => {
                    assert_eq!(b.code, codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION, "{b}");
                    assert_eq!(b.parameters[0], verifier::MDL_NOT_LIVE, "{b}");
                }
                other => panic!("expected a bugcheck, got {other:?}"),
            }
        },
    );
}

#[test]
fn a_major_function_the_driver_leaves_alone_is_an_invalid_device_request() {
    isolated(
        "a_major_function_the_driver_leaves_alone_is_an_invalid_device_request",
        || {
            wdm_driver::NO_DEVICE_CONTROL.store(1, std::sync::atomic::Ordering::SeqCst);
            let (kernel, h) = booted_and_opened();
            let answer = kernel.ioctl(h, wdm_driver::REVERSE, b"abc", 3).unwrap();
            assert_eq!(answer.status, STATUS_INVALID_DEVICE_REQUEST);
            kernel.close(h).unwrap();
            kernel.unload().unwrap();
            kernel.shutdown().unwrap();
        },
    );
}
