//! A one-shot deadline (KTIMER + KDPC) that wakes a session's work item when it expires — the
//! handshake timeout.
//!
//! An armed deadline holds a reference to itself and to its waker, given to the DPC; disarming
//! takes both back when KeCancelTimer says the DPC will not run, otherwise the DPC releases them.
//! So the timer is never freed while set, whatever order cancel and expiry race in.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::sync::atomic::{AtomicU32, Ordering};

use ksys::imports::{KeCancelTimer, KeInitializeDpc, KeInitializeTimer, KeSetTimer};
use ksys::ktimer::{KDPC, KTIMER};
use ksys::ntdef::{NTSTATUS, STATUS_INVALID_DEVICE_STATE};

use crate::pool::PoolArc;
use crate::wsk::Wake;

const IDLE: u32 = 0;
const ARMED: u32 = 1;
const FIRED: u32 = 2;

/// A reusable one-shot timer.
pub struct Deadline<W: Wake> {
    timer: UnsafeCell<KTIMER>,
    dpc: UnsafeCell<KDPC>,
    phase: AtomicU32,
    bit: u32,
    /// Filled by `arm`, emptied by the DPC or a successful `disarm`.
    waker: UnsafeCell<Option<W>>,
}

// SAFETY: the timer and DPC are kernel objects; the waker slot is owned by whoever holds the
// armed reference (ordered by `phase` and KeCancelTimer's answer).
unsafe impl<W: Wake> Send for Deadline<W> {}
// SAFETY: as above.
unsafe impl<W: Wake> Sync for Deadline<W> {}

unsafe extern "win64" fn expired<W: Wake>(
    _dpc: *mut KDPC,
    context: *mut c_void,
    _a: *mut c_void,
    _b: *mut c_void,
) {
    // SAFETY: the reference `arm` gave up for the DPC.
    let this = unsafe { PoolArc::from_raw(context as *const Deadline<W>) };
    // SAFETY: the DPC owns the slot now (cancel failed or was never tried).
    let waker = unsafe { (*this.waker.get()).take() };
    this.phase.store(FIRED, Ordering::Release);
    if let Some(w) = waker {
        w.wake(this.bit);
    }
}

impl<W: Wake> Deadline<W> {
    /// A disarmed deadline that wakes with `bit`.
    pub fn try_new(bit: u32) -> Result<PoolArc<Deadline<W>>, NTSTATUS> {
        let this = PoolArc::try_new(Deadline {
            timer: UnsafeCell::new(KTIMER::zeroed()),
            dpc: UnsafeCell::new(KDPC::zeroed()),
            phase: AtomicU32::new(IDLE),
            bit,
            waker: UnsafeCell::new(None),
        })?;
        // SAFETY: pool-resident storage, initialized once before any use.
        unsafe { KeInitializeTimer(this.timer.get()) };
        Ok(this)
    }

    /// Arms the deadline `ms` milliseconds from now. Err if it is armed (or its DPC is running).
    pub fn arm(this: &PoolArc<Deadline<W>>, waker: W, ms: u32) -> Result<(), NTSTATUS> {
        if this
            .phase
            .compare_exchange(IDLE, ARMED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
            && this
                .phase
                .compare_exchange(FIRED, ARMED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Err(STATUS_INVALID_DEVICE_STATE);
        }
        // SAFETY: not armed, so neither the timer's DPC nor anyone else uses the slot or DPC.
        unsafe {
            *this.waker.get() = Some(waker);
            let context = PoolArc::into_raw(this.clone()) as *mut c_void;
            KeInitializeDpc(this.dpc.get(), Some(expired::<W>), context);
            KeSetTimer(this.timer.get(), -(ms as i64) * 10_000, this.dpc.get());
        }
        Ok(())
    }

    /// Disarms the deadline if it has not expired yet.
    pub fn disarm(this: &PoolArc<Deadline<W>>) {
        if this.phase.load(Ordering::Acquire) != ARMED {
            return;
        }
        // SAFETY: the timer was set by `arm`.
        let cancelled = unsafe { KeCancelTimer(this.timer.get()) } != 0;
        if cancelled {
            // The DPC will not run: take back what `arm` gave it.
            // SAFETY: the slot and the reference are ours again.
            unsafe {
                drop((*this.waker.get()).take());
                drop(PoolArc::from_raw(&**this as *const Deadline<W>));
            }
            this.phase.store(IDLE, Ordering::Release);
        }
    }

    /// Whether the deadline expired since it was last armed.
    pub fn expired(&self) -> bool {
        self.phase.load(Ordering::Acquire) == FIRED
    }
}
