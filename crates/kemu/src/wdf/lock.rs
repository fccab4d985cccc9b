//! Framework locks: WDFSPINLOCK (raises to DISPATCH_LEVEL) and WDFWAITLOCK (PASSIVE waits, or a
//! zero-timeout try at DISPATCH_LEVEL). Both detect recursion and release by a non-owner.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ksys::ntdef::{NTSTATUS, STATUS_SUCCESS, STATUS_TIMEOUT};
use ksys::wdf::types::*;

use super::{Data, Kind, object, violation, with_object};
use crate::bugcheck::{park_forever, wdf_violation};
use crate::ke::sync::deadline_of;
use crate::thread::{self, APC, DISPATCH};

fn me() -> usize {
    std::rc::Rc::as_ptr(&thread::state()) as usize | 1
}

fn create(
    routine: &str,
    attrs: *mut WDF_OBJECT_ATTRIBUTES,
    kind: Kind,
    data: Data,
) -> Result<usize, NTSTATUS> {
    let attrs = object::attributes(attrs, routine);
    let kernel = thread::kernel();
    let mut state = kernel.wdf.lock();
    let parent = attrs
        .filter(|a| !a.ParentObject.is_null())
        .map(|a| a.ParentObject.as_raw() as usize)
        .unwrap_or(state.driver);
    if let Err(m) = state.get(parent, &[], routine) {
        drop(state);
        violation(wdf_violation::INVALID_HANDLE, parent, m);
    }
    object::create(&mut state, kind, parent, attrs, true, data)
}

/// WdfSpinLockCreate.
pub(crate) unsafe extern "win64" fn wdf_spin_lock_create(
    _g: *mut WDF_DRIVER_GLOBALS,
    attrs: *mut WDF_OBJECT_ATTRIBUTES,
    lock: *mut WDFSPINLOCK,
) -> NTSTATUS {
    thread::require_at_most("WdfSpinLockCreate", DISPATCH);
    let data = Data::SpinLock {
        owner: Arc::new(AtomicUsize::new(0)),
        saved_irql: Arc::new(AtomicUsize::new(0)),
    };
    match create("WdfSpinLockCreate", attrs, Kind::SpinLock, data) {
        Ok(h) => {
            // SAFETY: the driver's out-pointer.
            unsafe { *lock = super::handle(h, WDFSPINLOCK::from_raw) };
            STATUS_SUCCESS
        }
        Err(status) => status,
    }
}

fn spin_parts(lock: WDFSPINLOCK, routine: &str) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    with_object(
        lock.as_raw() as usize,
        &[Kind::SpinLock],
        routine,
        |o| match &o.data {
            Data::SpinLock { owner, saved_irql } => (owner.clone(), saved_irql.clone()),
            _ => unreachable!("spin lock data"),
        },
    )
}

/// WdfSpinLockAcquire.
pub(crate) unsafe extern "win64" fn wdf_spin_lock_acquire(
    _g: *mut WDF_DRIVER_GLOBALS,
    lock: WDFSPINLOCK,
) {
    thread::require_at_most("WdfSpinLockAcquire", DISPATCH);
    let (owner, saved) = spin_parts(lock, "WdfSpinLockAcquire");
    let me = me();
    let old = thread::set_irql(DISPATCH);
    let kernel = thread::kernel();
    loop {
        match owner.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(o) if o == me => violation(
                wdf_violation::LOCK,
                lock.as_raw() as usize,
                "WdfSpinLockAcquire: lock already held by this thread".into(),
            ),
            Err(_) => {
                if kernel.bugcheck.get().is_some() {
                    park_forever();
                }
                std::thread::yield_now();
            }
        }
    }
    saved.store(old as usize, Ordering::Release);
    let s = thread::state();
    s.spin_locks_held.set(s.spin_locks_held.get() + 1);
}

/// WdfSpinLockRelease.
pub(crate) unsafe extern "win64" fn wdf_spin_lock_release(
    _g: *mut WDF_DRIVER_GLOBALS,
    lock: WDFSPINLOCK,
) {
    thread::require_exactly("WdfSpinLockRelease", DISPATCH);
    let (owner, saved) = spin_parts(lock, "WdfSpinLockRelease");
    if owner.load(Ordering::Acquire) != me() {
        violation(
            wdf_violation::LOCK,
            lock.as_raw() as usize,
            "WdfSpinLockRelease: lock not held by this thread".into(),
        );
    }
    let old = saved.load(Ordering::Acquire) as u8;
    owner.store(0, Ordering::Release);
    let s = thread::state();
    s.spin_locks_held
        .set(s.spin_locks_held.get().saturating_sub(1));
    thread::set_irql(old);
}

/// WdfWaitLockCreate.
pub(crate) unsafe extern "win64" fn wdf_wait_lock_create(
    _g: *mut WDF_DRIVER_GLOBALS,
    attrs: *mut WDF_OBJECT_ATTRIBUTES,
    lock: *mut WDFWAITLOCK,
) -> NTSTATUS {
    thread::require_at_most("WdfWaitLockCreate", DISPATCH);
    let data = Data::WaitLock {
        state: Arc::new((Mutex::new(0), Condvar::new())),
    };
    match create("WdfWaitLockCreate", attrs, Kind::WaitLock, data) {
        Ok(h) => {
            // SAFETY: the driver's out-pointer.
            unsafe { *lock = super::handle(h, WDFWAITLOCK::from_raw) };
            STATUS_SUCCESS
        }
        Err(status) => status,
    }
}

fn wait_parts(lock: WDFWAITLOCK, routine: &str) -> Arc<(Mutex<usize>, Condvar)> {
    with_object(
        lock.as_raw() as usize,
        &[Kind::WaitLock],
        routine,
        |o| match &o.data {
            Data::WaitLock { state } => state.clone(),
            _ => unreachable!("wait lock data"),
        },
    )
}

/// WdfWaitLockAcquire: NULL timeout waits (PASSIVE/APC); a zero timeout only tries.
pub(crate) unsafe extern "win64" fn wdf_wait_lock_acquire(
    _g: *mut WDF_DRIVER_GLOBALS,
    lock: WDFWAITLOCK,
    timeout: *const i64,
) -> NTSTATUS {
    let timeout = if timeout.is_null() {
        None
    } else {
        // SAFETY: a non-NULL timeout points to the driver's LONGLONG.
        Some(unsafe { *timeout })
    };
    if timeout == Some(0) {
        thread::require_at_most("WdfWaitLockAcquire (zero timeout)", DISPATCH);
    } else {
        thread::require_at_most("WdfWaitLockAcquire", APC);
    }
    let parts = wait_parts(lock, "WdfWaitLockAcquire");
    let me = me();
    let deadline = timeout.map(deadline_of);
    let kernel = thread::kernel();
    let mut owner = parts.0.lock().unwrap();
    loop {
        if *owner == 0 {
            *owner = me;
            return STATUS_SUCCESS;
        }
        if *owner == me {
            drop(owner);
            violation(
                wdf_violation::LOCK,
                lock.as_raw() as usize,
                "WdfWaitLockAcquire: lock already held by this thread (deadlock)".into(),
            );
        }
        if kernel.bugcheck.get().is_some() {
            drop(owner);
            park_forever();
        }
        let slice = match deadline {
            Some(d) => {
                let now = std::time::Instant::now();
                if now >= d {
                    return STATUS_TIMEOUT;
                }
                (d - now).min(Duration::from_millis(100))
            }
            None => Duration::from_millis(100),
        };
        owner = parts.1.wait_timeout(owner, slice).unwrap().0;
    }
}

/// WdfWaitLockRelease.
pub(crate) unsafe extern "win64" fn wdf_wait_lock_release(
    _g: *mut WDF_DRIVER_GLOBALS,
    lock: WDFWAITLOCK,
) {
    thread::require_at_most("WdfWaitLockRelease", DISPATCH);
    let parts = wait_parts(lock, "WdfWaitLockRelease");
    let mut owner = parts.0.lock().unwrap();
    if *owner != me() {
        drop(owner);
        violation(
            wdf_violation::LOCK,
            lock.as_raw() as usize,
            "WdfWaitLockRelease: lock not held by this thread".into(),
        );
    }
    *owner = 0;
    drop(owner);
    parts.1.notify_one();
}
