//! kemu's ntoskrnl subset, called the way a driver calls it (through ksys's import wrappers on
//! kernel threads), including every verifier stop. Each test boots its own kernel; kernels in
//! one process are independent (their threads know which kernel they belong to).

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kemu::{Bugcheck, FaultPlan, Kernel, KernelConfig, KernelError, codes, verifier};
use ksys::imports::*;
use ksys::io::*;
use ksys::ktimer::{KDPC, KTIMER};
use ksys::ntdef::*;

const TAG: u32 = u32::from_le_bytes(*b"Test");

fn boot() -> Kernel {
    boot_with(FaultPlan::default())
}

fn boot_with(faults: FaultPlan) -> Kernel {
    kemu::exports::bind_native(IMPORT_DIRECTORY);
    Kernel::boot(KernelConfig {
        faults,
        ..KernelConfig::from_env()
    })
}

fn expect_bugcheck<R: std::fmt::Debug>(result: Result<R, KernelError>, code: u32) -> Bugcheck {
    match result {
        Err(KernelError::Bugcheck(b)) => {
            assert_eq!(b.code, code, "wrong bugcheck: {b}");
            b
        }
        other => panic!("expected bugcheck {code:#x}, got {other:?}"),
    }
}

/// A value a kernel thread may carry across (the test owns the memory behind it).
#[derive(Clone, Copy, Debug)]
struct Addr(usize);

#[test]
fn pool_is_tagged_zeroed_and_accounted() {
    let kernel = boot();
    kernel
        .run("test", || {
            // SAFETY: well-formed pool calls at PASSIVE_LEVEL.
            unsafe {
                let p = ExAllocatePool2(POOL_FLAG_NON_PAGED, 100, TAG) as *mut u8;
                assert!(!p.is_null());
                assert!(
                    (0..100).all(|i| *p.add(i) == 0),
                    "ExAllocatePool2 zeroes by default"
                );
                assert_eq!(p as usize % 16, 0);
                let q = ExAllocatePool2(POOL_FLAG_NON_PAGED | POOL_FLAG_UNINITIALIZED, 8, TAG)
                    as *mut u8;
                ExFreePoolWithTag(p as *mut c_void, TAG);
                ExFreePool(q as *mut c_void);
            }
        })
        .unwrap();
    let usage = kernel.pool_usage()["Test"];
    assert_eq!(
        (
            usage.allocations,
            usage.frees,
            usage.live_blocks,
            usage.live_bytes
        ),
        (2, 2, 0, 0)
    );
    kernel.shutdown().unwrap();
}

#[test]
fn nth_allocation_fails_when_asked() {
    let kernel = boot_with(FaultPlan {
        fail_allocation: Some(2),
        ..FaultPlan::default()
    });
    let results = kernel
        .run("test", || {
            // SAFETY: well-formed pool calls; non-NULL blocks are freed.
            unsafe {
                let r: Vec<usize> = (0..3)
                    .map(|_| ExAllocatePool2(POOL_FLAG_NON_PAGED, 8, TAG) as usize)
                    .collect();
                for &p in &r {
                    if p != 0 {
                        ExFreePoolWithTag(p as *mut c_void, TAG);
                    }
                }
                r
            }
        })
        .unwrap();
    assert!(
        results[0] != 0 && results[1] == 0 && results[2] != 0,
        "{results:x?}"
    );
    assert_eq!(kernel.pool_usage()["Test"].failures, 1);
    kernel.shutdown().unwrap();
}

#[test]
fn double_free_is_a_bugcheck() {
    let kernel = boot();
    let r = kernel.run("test", || {
        // SAFETY: deliberately freeing twice; kemu stops before touching the memory again.
        unsafe {
            let p = ExAllocatePool2(POOL_FLAG_NON_PAGED, 8, TAG);
            ExFreePoolWithTag(p, TAG);
            ExFreePoolWithTag(p, TAG);
        }
    });
    let b = expect_bugcheck(r, codes::BAD_POOL_CALLER);
    assert_eq!(b.parameters[0], 0x07);
}

#[test]
fn freeing_with_the_wrong_tag_is_a_bugcheck() {
    let kernel = boot();
    let r = kernel.run("test", || {
        // SAFETY: a live block freed with a mismatched tag; kemu stops first.
        unsafe {
            ExFreePoolWithTag(
                ExAllocatePool2(POOL_FLAG_NON_PAGED, 8, TAG),
                u32::from_le_bytes(*b"Othr"),
            )
        }
    });
    assert_eq!(
        expect_bugcheck(r, codes::BAD_POOL_CALLER).parameters[0],
        0x0A
    );
}

#[test]
fn writing_past_a_block_is_caught_at_free() {
    let kernel = boot();
    let r = kernel.run("test", || {
        // SAFETY: the write lands in kemu's guard bytes right after the 8-byte block.
        unsafe {
            let p = ExAllocatePool2(POOL_FLAG_NON_PAGED, 8, TAG) as *mut u8;
            *p.add(8) = 1;
            ExFreePool(p as *mut c_void);
        }
    });
    expect_bugcheck(r, codes::SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION);
}

#[test]
fn paged_pool_at_dispatch_is_a_bugcheck() {
    let kernel = boot();
    let r = kernel.run("test", || {
        let mut lock: KSPIN_LOCK = 0;
        // SAFETY: a valid lock; the paged allocation at DISPATCH_LEVEL is the bug under test.
        unsafe {
            let _old = KeAcquireSpinLockRaiseToDpc(&mut lock);
            ExAllocatePool2(POOL_FLAG_PAGED, 8, TAG);
        }
    });
    assert_eq!(
        expect_bugcheck(r, codes::BAD_POOL_CALLER).parameters[0],
        0x08
    );
}

#[test]
fn leaked_pool_is_reported_at_shutdown_with_tag_and_site() {
    let kernel = boot();
    kernel
        .run("allocating test", || {
            // SAFETY: a plain allocation, deliberately never freed.
            unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, 40, TAG) }.is_null()
        })
        .unwrap();
    match kernel.shutdown() {
        Err(KernelError::Leaks(report)) => {
            assert_eq!(report.leaks.len(), 1, "{report}");
            let leak = &report.leaks[0];
            assert_eq!(
                (leak.kind, leak.tag.as_str(), leak.size),
                (kemu::LeakKind::Pool, "Test", 40)
            );
            assert_eq!(leak.site.activity, "allocating test");
        }
        other => panic!("expected a leak report, got {other:?}"),
    }
}

#[test]
fn spin_locks_raise_irql_and_exclude() {
    let kernel = boot();
    let lock = Arc::new(AtomicUsize::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for _ in 0..4 {
        let (lock, inside) = (lock.clone(), inside.clone());
        threads.push(kernel.run("spinner", move || {
            for _ in 0..200 {
                // SAFETY: the AtomicUsize is a KSPIN_LOCK-sized, aligned word that outlives the call.
                unsafe {
                    let l = lock.as_ptr() as *mut KSPIN_LOCK;
                    let old = KeAcquireSpinLockRaiseToDpc(l);
                    assert_eq!(old, PASSIVE_LEVEL);
                    assert_eq!(KeGetCurrentIrql(), DISPATCH_LEVEL);
                    assert_eq!(
                        inside.fetch_add(1, Ordering::SeqCst),
                        0,
                        "two holders at once"
                    );
                    std::hint::spin_loop();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    KeReleaseSpinLock(l, old);
                    assert_eq!(KeGetCurrentIrql(), PASSIVE_LEVEL);
                }
            }
        }));
    }
    for t in threads {
        t.unwrap();
    }
    kernel.shutdown().unwrap();
}

#[test]
fn spin_lock_released_at_the_wrong_irql_is_a_bugcheck() {
    let kernel = boot();
    let r = kernel.run("test", || {
        let mut lock: KSPIN_LOCK = 0;
        // SAFETY: the lock is held; releasing from DPC level while at DISPATCH is legal, but
        // KeReleaseSpinLock at PASSIVE (after lowering by hand) is the bug under test.
        unsafe {
            KeAcquireSpinLockAtDpcLevel(&mut lock);
        }
    });
    expect_bugcheck(r, codes::IRQL_NOT_GREATER_OR_EQUAL);
    let kernel = boot();
    let r = kernel.run("test", || {
        let mut lock: KSPIN_LOCK = 0;
        // SAFETY: releasing a lock nobody acquired, at PASSIVE_LEVEL.
        unsafe { KeReleaseSpinLock(&mut lock, PASSIVE_LEVEL) }
    });
    expect_bugcheck(r, codes::IRQL_NOT_GREATER_OR_EQUAL);
}

#[test]
fn returning_with_a_spin_lock_held_is_a_bugcheck() {
    let kernel = boot();
    let r = kernel.run("test", || {
        let lock = Box::leak(Box::new(0usize));
        // SAFETY: a valid lock, deliberately not released.
        unsafe { KeAcquireSpinLockRaiseToDpc(lock) }
    });
    expect_bugcheck(r, codes::IRQL_UNEXPECTED_VALUE);
}

#[test]
fn passive_only_routine_at_dispatch_is_a_bugcheck() {
    let kernel = boot();
    let r = kernel.run("test", || {
        let mut lock: KSPIN_LOCK = 0;
        let delay: i64 = -10_000;
        // SAFETY: valid arguments; waiting at DISPATCH_LEVEL is the bug under test.
        unsafe {
            let _ = KeAcquireSpinLockRaiseToDpc(&mut lock);
            KeDelayExecutionThread(0, 0, &delay);
        }
    });
    let b = expect_bugcheck(r, codes::IRQL_NOT_LESS_OR_EQUAL);
    assert_eq!((b.parameters[1], b.parameters[2]), (2, 1));
    assert!(b.message.contains("KeDelayExecutionThread"), "{b}");
}

#[test]
fn events_wake_waiters_and_time_out() {
    let kernel = boot();
    // SAFETY: KEVENT is plain data; KeInitializeEvent sets it up below.
    let event: &'static mut KEVENT = Box::leak(Box::new(unsafe { std::mem::zeroed::<KEVENT>() }));
    let address = Addr(event as *mut KEVENT as usize);
    kernel
        .run("init", move || {
            // SAFETY: `address` is a live KEVENT owned by the test.
            unsafe { KeInitializeEvent(address.0 as *mut KEVENT, SYNCHRONIZATION_EVENT, 0) }
        })
        .unwrap();
    let timed_out = kernel
        .run("poll", move || {
            let zero = 0i64;
            // SAFETY: a live event; a zero timeout only polls.
            unsafe {
                KeWaitForSingleObject(address.0 as *mut c_void, EXECUTIVE, KERNEL_MODE, 0, &zero)
            }
        })
        .unwrap();
    assert_eq!(timed_out, STATUS_TIMEOUT);
    let pending = {
        let (tx, rx) = std::sync::mpsc::channel();
        let k = &kernel;
        std::thread::scope(|s| {
            s.spawn(|| {
                let r = k.run("waiter", move || {
                    let timeout = -50_000_000i64;
                    // SAFETY: a live event, waited on at PASSIVE_LEVEL.
                    unsafe {
                        KeWaitForSingleObject(
                            address.0 as *mut c_void,
                            EXECUTIVE,
                            KERNEL_MODE,
                            0,
                            &timeout,
                        )
                    }
                });
                tx.send(r).unwrap();
            });
            std::thread::sleep(Duration::from_millis(20));
            let previous = k
                .run("setter", move || {
                    // SAFETY: a live event.
                    unsafe { KeSetEvent(address.0 as *mut KEVENT, 0, 0) }
                })
                .unwrap();
            assert_eq!(previous, 0);
            rx.recv().unwrap()
        })
    };
    assert_eq!(pending.unwrap(), STATUS_SUCCESS);
    // A synchronization event resets when it satisfies a wait.
    let again = kernel
        .run("poll", move || {
            let zero = 0i64;
            // SAFETY: a live event.
            unsafe {
                KeWaitForSingleObject(address.0 as *mut c_void, EXECUTIVE, KERNEL_MODE, 0, &zero)
            }
        })
        .unwrap();
    assert_eq!(again, STATUS_TIMEOUT);
    kernel.shutdown().unwrap();
}

struct TimerBlock {
    timer: KTIMER,
    dpc: KDPC,
    fired: AtomicUsize,
    irql: AtomicUsize,
}

extern "win64" fn count_dpc(
    _dpc: *mut KDPC,
    context: *mut c_void,
    _a: *mut c_void,
    _b: *mut c_void,
) {
    // SAFETY: the context is the test's live TimerBlock.
    let block = unsafe { &*(context as *const TimerBlock) };
    // SAFETY: a plain query of the current IRQL.
    let irql = unsafe { KeGetCurrentIrql() };
    block.irql.store(irql as usize, Ordering::SeqCst);
    block.fired.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn timers_fire_their_dpc_at_dispatch_and_cancel() {
    let kernel = boot();
    let block = Box::leak(Box::new(TimerBlock {
        timer: KTIMER::zeroed(),
        dpc: KDPC::zeroed(),
        fired: AtomicUsize::new(0),
        irql: AtomicUsize::new(99),
    }));
    let address = Addr(block as *mut TimerBlock as usize);
    kernel
        .run("arm", move || {
            let b = address.0 as *mut TimerBlock;
            // SAFETY: the block is leaked, so it outlives the kernel.
            unsafe {
                KeInitializeTimer(&raw mut (*b).timer);
                KeInitializeDpc(&raw mut (*b).dpc, Some(count_dpc), b as *mut c_void);
                assert_eq!(
                    KeSetTimer(&raw mut (*b).timer, -10_000, &raw mut (*b).dpc),
                    0
                );
                let wait = -2_000_000_000i64;
                assert_eq!(
                    KeWaitForSingleObject(
                        &raw mut (*b).timer as *mut c_void,
                        EXECUTIVE,
                        KERNEL_MODE,
                        0,
                        &wait
                    ),
                    STATUS_SUCCESS
                );
            }
        })
        .unwrap();
    let started = std::time::Instant::now();
    while block.fired.load(Ordering::SeqCst) == 0 && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(block.fired.load(Ordering::SeqCst), 1);
    assert_eq!(block.irql.load(Ordering::SeqCst), DISPATCH_LEVEL as usize);
    let cancelled = kernel
        .run("cancel", move || {
            let b = address.0 as *mut TimerBlock;
            // SAFETY: as above.
            unsafe {
                assert_eq!(
                    KeSetTimer(&raw mut (*b).timer, -100_000_000, &raw mut (*b).dpc),
                    0
                );
                KeCancelTimer(&raw mut (*b).timer)
            }
        })
        .unwrap();
    assert_eq!(cancelled, 1);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        block.fired.load(Ordering::SeqCst),
        1,
        "a cancelled timer fired"
    );
    kernel.shutdown().unwrap();
}

#[test]
fn freeing_a_set_timer_is_a_bugcheck() {
    let kernel = boot();
    kernel
        .run("arm", || {
            // SAFETY: the timer lives in pool; freeing it while set is the bug under test.
            unsafe {
                let t = ExAllocatePool2(POOL_FLAG_NON_PAGED, std::mem::size_of::<KTIMER>(), TAG)
                    as *mut KTIMER;
                KeInitializeTimer(t);
                KeSetTimer(t, -600_000_000, std::ptr::null_mut());
                ExFreePoolWithTag(t as *mut c_void, TAG);
            }
        })
        .map(|_| ())
        .map_err(|e| match e {
            KernelError::Bugcheck(b) => assert_eq!(b.code, codes::TIMER_OR_DPC_INVALID),
            other => panic!("{other}"),
        })
        .expect_err("freeing a set timer must stop the kernel");
}

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

#[test]
fn debug_print_formats_into_the_kernel_log() {
    let kernel = boot();
    kernel
        .run("print", || {
            let wide: Vec<u16> = "wide".encode_utf16().chain([0]).collect();
            let args: [usize; 6] = [
                (-5i32) as u32 as usize,
                0xBEEF,
                3,
                b"abcdef".as_ptr() as usize,
                wide.as_ptr() as usize,
                42,
            ];
            // SAFETY: the format's conversions match the argument slots.
            unsafe {
                vDbgPrintEx(
                    77,
                    3,
                    c"n=%d x=%04X s=%.*s w=%ws %5u|\n".as_ptr() as *const u8,
                    args.as_ptr(),
                )
            };
        })
        .unwrap();
    let log = kernel.debug_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].text, "n=-5 x=BEEF s=abc w=wide    42|");
    assert_eq!((log[0].component, log[0].level), (77, 3));
    kernel.shutdown().unwrap();
}

#[test]
fn time_moves_forward() {
    let kernel = boot();
    let (a, b) = kernel
        .run("time", || {
            // SAFETY: plain queries and a short delay at PASSIVE_LEVEL.
            unsafe {
                let a = KeQueryUnbiasedInterruptTime();
                let delay = -20_000i64;
                KeDelayExecutionThread(0, 0, &delay);
                (a, KeQueryUnbiasedInterruptTime())
            }
        })
        .unwrap();
    assert!(b >= a + 20_000, "{a} -> {b}");
    kernel.shutdown().unwrap();
}

#[test]
fn a_panic_on_a_kernel_thread_is_a_bugcheck() {
    let kernel = boot();
    let r = kernel.run("panicking", || {
        let v: Vec<u8> = Vec::new();
        v[3]
    });
    let b = expect_bugcheck(r, codes::KMODE_EXCEPTION_NOT_HANDLED);
    assert!(b.message.contains("index out of bounds"), "{b}");
    assert!(b.thread.contains("panicking"), "{b}");
}

#[test]
fn a_timer_still_set_at_shutdown_is_a_leak() {
    let kernel = boot();
    kernel
        .run("arm", || {
            let timer = Box::leak(Box::new(KTIMER::zeroed()));
            // SAFETY: the timer is leaked memory, so it outlives the kernel.
            unsafe {
                KeInitializeTimer(timer);
                KeSetTimer(timer, -600_000_000, std::ptr::null_mut())
            }
        })
        .unwrap();
    match kernel.shutdown() {
        Err(KernelError::Leaks(r)) => assert_eq!(r.leaks[0].kind, kemu::LeakKind::Timer, "{r}"),
        other => panic!("{other:?}"),
    }
}
