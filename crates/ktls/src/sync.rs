//! A spin lock around data (KeAcquireSpinLockRaiseToDpc / KeReleaseSpinLock): the one lock
//! completion paths (≤ DISPATCH_LEVEL) and callers share. Held briefly; never across a call out.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

use ksys::imports::{KeAcquireSpinLockRaiseToDpc, KeReleaseSpinLock};
use ksys::ntdef::{KIRQL, KSPIN_LOCK};

/// Data behind a kernel spin lock.
pub struct SpinLock<T> {
    lock: UnsafeCell<KSPIN_LOCK>,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialized by the spin lock.
unsafe impl<T: Send> Send for SpinLock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// A new, released lock.
    pub const fn new(data: T) -> SpinLock<T> {
        SpinLock {
            lock: UnsafeCell::new(0),
            data: UnsafeCell::new(data),
        }
    }

    /// Acquires the lock (raising to DISPATCH_LEVEL until the guard drops).
    pub fn lock(&self) -> SpinGuard<'_, T> {
        // SAFETY: the lock word lives as long as `self`; the guard releases it.
        let old = unsafe { KeAcquireSpinLockRaiseToDpc(self.lock.get()) };
        SpinGuard { owner: self, old }
    }
}

/// Exclusive access while held.
pub struct SpinGuard<'a, T> {
    owner: &'a SpinLock<T>,
    old: KIRQL,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held.
        unsafe { &*self.owner.data.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held exclusively.
        unsafe { &mut *self.owner.data.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: acquired in `lock` with this old IRQL.
        unsafe { KeReleaseSpinLock(self.owner.lock.get(), self.old) };
    }
}
