//! IRQL: spin locks raise it and exclude; the verifier stops a lock released wrong or kept, and
//! a PASSIVE-only routine called at DISPATCH_LEVEL.

use super::*;

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

/// A spin lock inside pool the driver already freed (its owner gone, the lock with it): the
/// wait would never end; kemu reports the use after free instead.
#[test]
fn acquiring_a_spin_lock_in_freed_pool_is_a_bugcheck() {
    let kernel = boot();
    let r = kernel.run("test", || {
        // SAFETY: a 256-byte block whose word at offset 128 serves as a spin lock, freed and
        // then used: the bug under test (kemu poisons freed pool and stops at the acquire).
        unsafe {
            let block = ExAllocatePool2(POOL_FLAG_NON_PAGED, 256, TAG) as *mut u8;
            let lock = block.add(128) as *mut KSPIN_LOCK;
            lock.write(0);
            ExFreePoolWithTag(block as *mut c_void, TAG);
            KeAcquireSpinLockRaiseToDpc(lock)
        }
    });
    let b = expect_bugcheck(r, codes::PAGE_FAULT_IN_FREED_SPECIAL_POOL);
    assert!(b.message.contains("freed pool"), "{b}");
}

/// A spin lock whose owner never lets go: the waiter is stopped by the watchdog with a report
/// naming the lock, not left spinning for ever.
#[test]
fn a_spin_lock_never_released_ends_in_the_dpc_watchdog() {
    let kernel = boot_with(FaultPlan {
        spin_watchdog: Duration::from_millis(300),
        ..FaultPlan::default()
    });
    // The word names an owner that is not the waiter (as a lock another CPU holds does).
    let held = Addr(Box::leak(Box::new(usize::MAX - 1)) as *mut usize as usize);
    let r = kernel.run("waiter", move || {
        // SAFETY: a leaked, aligned word another owner holds for ever.
        unsafe { KeAcquireSpinLockRaiseToDpc(held.0 as *mut KSPIN_LOCK) }
    });
    let b = expect_bugcheck(r, codes::DPC_WATCHDOG_VIOLATION);
    assert!(b.message.contains("held by another thread"), "{b}");
    assert_eq!(b.parameters[3], held.0, "{b}");
}
