//! IRPs a driver allocates (completion routines, reuse, the verifier's stops) and MDLs.

use super::*;

extern "win64" fn more_processing(
    _d: *mut DEVICE_OBJECT,
    irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: the context is the test's counter; the IRP is live during its completion.
    unsafe {
        (*(context as *const AtomicUsize)).store((*irp).IoStatus.Information, Ordering::SeqCst);
    }
    STATUS_MORE_PROCESSING_REQUIRED
}

extern "win64" fn continue_completion(
    _d: *mut DEVICE_OBJECT,
    _irp: *mut IRP,
    _c: *mut c_void,
) -> NTSTATUS {
    STATUS_SUCCESS
}

#[test]
fn irp_completion_runs_the_routine_and_stops_on_more_processing_required() {
    let kernel = boot();
    let seen = Box::leak(Box::new(AtomicUsize::new(0)));
    let seen_addr = Addr(seen as *mut AtomicUsize as usize);
    kernel
        .run("irp", move || {
            // SAFETY: a driver-allocated IRP, completed once (as a lower driver would), reused
            // and freed by its owner.
            unsafe {
                let irp = IoAllocateIrp(1, 0);
                assert!(!irp.is_null());
                assert_eq!((*irp).StackCount, 1);
                assert_eq!((*irp).CurrentLocation, 2);
                io_set_completion_routine(
                    irp,
                    Some(more_processing),
                    seen_addr.0 as *mut c_void,
                    true,
                    true,
                    true,
                );
                // Act as the lower driver: take the stack location, then complete.
                (*irp).CurrentLocation -= 1;
                (*irp).Tail.CurrentStackLocation = (*irp).Tail.CurrentStackLocation.sub(1);
                (*irp).IoStatus = IO_STATUS_BLOCK::new(STATUS_SUCCESS, 77);
                IofCompleteRequest(irp, 0);
                IoReuseIrp(irp, STATUS_SUCCESS);
                assert_eq!((*irp).CurrentLocation, 2);
                IoFreeIrp(irp);
            }
        })
        .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 77);
    kernel.shutdown().unwrap();
}

extern "win64" fn reuse_before_returning(
    _d: *mut DEVICE_OBJECT,
    irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: the routine owns the IRP once it runs: it reuses it for a second request and
    // completes that one (as a waiter woken by this routine might, before the routine returns).
    unsafe {
        IoReuseIrp(irp, STATUS_SUCCESS);
        io_set_completion_routine(irp, Some(more_processing), context, true, true, true);
        (*irp).CurrentLocation -= 1;
        (*irp).Tail.CurrentStackLocation = (*irp).Tail.CurrentStackLocation.sub(1);
        (*irp).IoStatus = IO_STATUS_BLOCK::new(STATUS_SUCCESS, 99);
        IofCompleteRequest(irp, 0);
    }
    STATUS_MORE_PROCESSING_REQUIRED
}

#[test]
fn an_irp_may_be_reused_while_its_completion_routine_is_still_running() {
    let kernel = boot();
    let seen = Box::leak(Box::new(AtomicUsize::new(0)));
    let seen_addr = Addr(seen as *mut AtomicUsize as usize);
    kernel
        .run("irp", move || {
            // SAFETY: a driver-allocated IRP completed by the test acting as the lower driver.
            unsafe {
                let irp = IoAllocateIrp(1, 0);
                io_set_completion_routine(
                    irp,
                    Some(reuse_before_returning),
                    seen_addr.0 as *mut c_void,
                    true,
                    true,
                    true,
                );
                (*irp).CurrentLocation -= 1;
                (*irp).Tail.CurrentStackLocation = (*irp).Tail.CurrentStackLocation.sub(1);
                (*irp).IoStatus = IO_STATUS_BLOCK::new(STATUS_SUCCESS, 1);
                IofCompleteRequest(irp, 0);
                IoFreeIrp(irp);
            }
        })
        .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 99);
    kernel.shutdown().unwrap();
}

#[test]
fn driver_irp_completed_past_its_last_location_is_a_bugcheck() {
    let kernel = boot();
    let r = kernel.run("irp", || {
        // SAFETY: the completion routine returns STATUS_SUCCESS: the bug under test.
        unsafe {
            let irp = IoAllocateIrp(1, 0);
            io_set_completion_routine(
                irp,
                Some(continue_completion),
                std::ptr::null_mut(),
                true,
                true,
                true,
            );
            (*irp).CurrentLocation -= 1;
            (*irp).Tail.CurrentStackLocation = (*irp).Tail.CurrentStackLocation.sub(1);
            IofCompleteRequest(irp, 0);
        }
    });
    assert_eq!(
        expect_bugcheck(r, codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION).parameters[0],
        verifier::IRP_NO_MORE_PROCESSING
    );
}

#[test]
fn touching_a_freed_irp_is_a_bugcheck() {
    let kernel = boot();
    let r = kernel.run("irp", || {
        // SAFETY: the IRP is freed, then handed to IoCancelIrp: the bug under test (kemu checks
        // its table before touching the memory).
        unsafe {
            let irp = IoAllocateIrp(2, 0);
            IoFreeIrp(irp);
            IoCancelIrp(irp);
        }
    });
    assert_eq!(
        expect_bugcheck(r, codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION).parameters[0],
        verifier::IRP_NOT_LIVE
    );
}

#[test]
fn mdls_describe_buffers_and_attach_to_irps() {
    let kernel = boot();
    kernel
        .run("mdl", || {
            // SAFETY: the buffer is a live pool block; the MDLs and IRP are freed by their owner.
            unsafe {
                let buffer = ExAllocatePool2(POOL_FLAG_NON_PAGED, 3 * PAGE_SIZE, TAG) as *mut u8;
                let va = buffer.add(100);
                let irp = IoAllocateIrp(1, 0);
                let first = IoAllocateMdl(va as *mut c_void, (2 * PAGE_SIZE) as u32, 0, 0, irp);
                let second = IoAllocateMdl(buffer as *mut c_void, 16, 1, 0, irp);
                assert_eq!((*irp).MdlAddress, first);
                assert_eq!((*first).Next, second);
                assert_eq!((*first).ByteCount as usize, 2 * PAGE_SIZE);
                assert_eq!(
                    (*first).ByteOffset as usize,
                    (va as usize) & (PAGE_SIZE - 1)
                );
                MmBuildMdlForNonPagedPool(first);
                assert_eq!(mm_get_system_address_for_nonpaged_mdl(first) as *mut u8, va);
                (*irp).MdlAddress = std::ptr::null_mut();
                IoFreeMdl(second);
                IoFreeMdl(first);
                IoFreeIrp(irp);
                ExFreePoolWithTag(buffer as *mut c_void, TAG);
            }
        })
        .unwrap();
    kernel.shutdown().unwrap();
}

#[test]
fn double_mdl_free_is_a_bugcheck_and_a_kept_mdl_is_a_leak() {
    let kernel = boot();
    let r = kernel.run("mdl", || {
        let mut buffer = [0u8; 64];
        // SAFETY: freeing the MDL twice is the bug under test.
        unsafe {
            let mdl = IoAllocateMdl(
                buffer.as_mut_ptr() as *mut c_void,
                64,
                0,
                0,
                std::ptr::null_mut(),
            );
            IoFreeMdl(mdl);
            IoFreeMdl(mdl);
        }
    });
    assert_eq!(
        expect_bugcheck(r, codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION).parameters[0],
        verifier::MDL_NOT_LIVE
    );
    let kernel = boot();
    kernel
        .run("mdl", || {
            let buffer = Box::leak(Box::new([0u8; 64]));
            // SAFETY: a valid MDL, deliberately kept.
            unsafe {
                IoAllocateMdl(
                    buffer.as_mut_ptr() as *mut c_void,
                    64,
                    0,
                    0,
                    std::ptr::null_mut(),
                )
            }
            .is_null()
        })
        .unwrap();
    match kernel.shutdown() {
        Err(KernelError::Leaks(r)) => assert_eq!(r.leaks[0].kind, kemu::LeakKind::Mdl),
        other => panic!("{other:?}"),
    }
}
