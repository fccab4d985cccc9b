//! Dispatcher objects: events, timers and their DPCs.

use super::*;

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
