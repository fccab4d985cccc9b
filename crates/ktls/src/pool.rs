//! Fallible, pool-backed reference counting.
//!
//! [`PoolArc`] is an atomically reference-counted value in non-paged pool, allocated through
//! ExAllocatePool2 in both worlds (the kernel image and a natively linked driver), so the
//! verifier tracks it and allocation failure is an error the caller handles, never a panic.

use core::alloc::{GlobalAlloc, Layout};
use core::ops::Deref;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering, fence};

use ksys::ntdef::{NTSTATUS, STATUS_INSUFFICIENT_RESOURCES};
use ksys::pool::PoolAllocator;

static ALLOCATOR: PoolAllocator = PoolAllocator::new(crate::POOL_TAG);

struct Inner<T> {
    references: AtomicUsize,
    value: T,
}

/// A shared, pool-backed value.
pub struct PoolArc<T> {
    inner: NonNull<Inner<T>>,
}

// SAFETY: like alloc::sync::Arc: shared access to T across threads needs T: Send + Sync.
unsafe impl<T: Send + Sync> Send for PoolArc<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for PoolArc<T> {}

impl<T> PoolArc<T> {
    /// Moves `value` into non-paged pool; STATUS_INSUFFICIENT_RESOURCES if the pool is out.
    pub fn try_new(value: T) -> Result<PoolArc<T>, NTSTATUS> {
        let layout = Layout::new::<Inner<T>>();
        // SAFETY: a non-zero-sized layout (Inner has a counter).
        let raw = unsafe { ALLOCATOR.alloc(layout) } as *mut Inner<T>;
        let Some(inner) = NonNull::new(raw) else {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        };
        // SAFETY: a fresh, suitably aligned block for Inner<T>.
        unsafe {
            inner.as_ptr().write(Inner {
                references: AtomicUsize::new(1),
                value,
            })
        };
        Ok(PoolArc { inner })
    }

    fn inner(&self) -> &Inner<T> {
        // SAFETY: the block lives while any PoolArc (this one) points to it.
        unsafe { self.inner.as_ref() }
    }

    /// Gives up this reference as a raw pointer (for a callback context); see [`Self::from_raw`].
    pub fn into_raw(this: PoolArc<T>) -> *const T {
        let p = &this.inner().value as *const T;
        core::mem::forget(this);
        p
    }

    /// Takes back a reference given up by [`Self::into_raw`].
    ///
    /// # Safety
    /// `p` must come from `into_raw` of a `PoolArc<T>`, and be taken back once.
    pub unsafe fn from_raw(p: *const T) -> PoolArc<T> {
        let offset = core::mem::offset_of!(Inner<T>, value);
        // SAFETY: `p` points at the value field of a live Inner<T>.
        let inner = unsafe { (p as *const u8).sub(offset) } as *mut Inner<T>;
        // SAFETY: non-null: derived from a live allocation.
        let inner = unsafe { NonNull::new_unchecked(inner) };
        PoolArc { inner }
    }

    /// A new reference to the value behind a raw pointer without taking one over.
    ///
    /// # Safety
    /// `p` must come from `into_raw` of a `PoolArc<T>` whose reference is still outstanding.
    pub unsafe fn clone_raw(p: *const T) -> PoolArc<T> {
        // SAFETY: per the contract the raw reference keeps the value alive.
        let borrowed = core::mem::ManuallyDrop::new(unsafe { PoolArc::from_raw(p) });
        PoolArc::clone(&borrowed)
    }

    /// Number of references (diagnostics only: it can change at once).
    pub fn references(this: &PoolArc<T>) -> usize {
        this.inner().references.load(Ordering::Acquire)
    }
}

impl<T> Clone for PoolArc<T> {
    fn clone(&self) -> PoolArc<T> {
        self.inner().references.fetch_add(1, Ordering::Relaxed);
        PoolArc { inner: self.inner }
    }
}

impl<T> Deref for PoolArc<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner().value
    }
}

impl<T> Drop for PoolArc<T> {
    fn drop(&mut self) {
        if self.inner().references.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        // SAFETY: this was the last reference: drop the value and free the block exactly once.
        unsafe {
            core::ptr::drop_in_place(self.inner.as_ptr());
            ALLOCATOR.dealloc(self.inner.as_ptr() as *mut u8, Layout::new::<Inner<T>>());
        }
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for PoolArc<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.inner().value.fmt(f)
    }
}
