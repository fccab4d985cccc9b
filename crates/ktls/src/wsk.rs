//! Winsock Kernel for sessions: the provider registration, reusable IRP operations whose
//! completion routines only record the result and signal the session's work item (returning
//! STATUS_MORE_PROCESSING_REQUIRED), and non-paged buffers with their MDLs.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};

use ksys::imports::*;
use ksys::io::{DEVICE_OBJECT, IRP, MDL, io_set_completion_routine};
use ksys::ntdef::*;
use ksys::wsk::*;

use crate::pool::PoolArc;

/// Whoever must hear that an operation completed (a session's worker, a test's event).
///
/// The in-flight call holds its own clone of the waker until it has signalled, so the waker
/// stays alive through the signal even if its owner tears down the moment it sees the result.
pub trait Wake: Send + Sync {
    /// Called at ≤ DISPATCH_LEVEL from the completion routine; must not block.
    fn wake(&self, bit: u32);
}

const IDLE: u32 = 0;
const PENDING: u32 = 1;
const DONE: u32 = 2;
/// The owner is taking the result (and giving back the loan) of a completed call.
const TAKING: u32 = 3;

/// One reusable IRP: at most one WSK call in flight at a time.
pub struct IrpOp<W: Wake> {
    irp: *mut IRP,
    /// The device object IoSetCompletionRoutineEx keeps referenced until the completion
    /// routine has returned, so the driver cannot unload under it (NULL: plain
    /// IoSetCompletionRoutine, only for code that is never unloaded, such as tests).
    device: *mut DEVICE_OBJECT,
    phase: AtomicU32,
    status: AtomicI32,
    information: AtomicUsize,
    bit: u32,
    /// Only the in-flight call touches this: `start` fills it, the completion routine empties it.
    waker: UnsafeCell<Option<W>>,
    /// The buffer range the call in flight reads or writes: `start` fills it, `take` (the
    /// owner, after the completion) gives it back.
    loan: UnsafeCell<Option<Loan>>,
    /// The WSK_BUF describing `loan`, here rather than on the caller's stack so it stays valid
    /// until the completion whether or not the provider copies it during the call.
    wsk_buf: UnsafeCell<WSK_BUF>,
}

// SAFETY: the IRP and the waker slot are only touched by the single in-flight call and its
// completion routine (ordered by `phase`); the rest is atomics.
unsafe impl<W: Wake> Send for IrpOp<W> {}
// SAFETY: as above.
unsafe impl<W: Wake> Sync for IrpOp<W> {}

impl<W: Wake> Drop for IrpOp<W> {
    fn drop(&mut self) {
        // Freeing from inside the IRP's own completion routine is allowed, since it returns
        // STATUS_MORE_PROCESSING_REQUIRED.
        // SAFETY: the last reference is gone, so no call is in flight (a pending call holds one).
        unsafe { IoFreeIrp(self.irp) };
    }
}

unsafe extern "win64" fn completed<W: Wake>(
    _device: *mut DEVICE_OBJECT,
    irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: the reference `start` gave up for this call.
    let op = unsafe { PoolArc::from_raw(context as *const IrpOp<W>) };
    // SAFETY: the slot belongs to the in-flight call, which is this one.
    let waker = unsafe { (*op.waker.get()).take() };
    // SAFETY: the IRP is ours and completing.
    let (status, information) = unsafe { ((*irp).IoStatus.Status, (*irp).IoStatus.Information) };
    op.status.store(status.0, Ordering::Release);
    op.information.store(information, Ordering::Release);
    op.phase.store(DONE, Ordering::Release);
    if let Some(waker) = waker {
        waker.wake(op.bit);
    }
    // Dropping `op` here may free the IRP (if the owner let go meanwhile): allowed, since the
    // I/O manager no longer touches an IRP whose routine returns this status.
    STATUS_MORE_PROCESSING_REQUIRED
}

impl<W: Wake> IrpOp<W> {
    /// Allocates the IRP (one stack location, as WSK needs); completions wake with `bit`;
    /// `device` is the driver's device object (see the field's note).
    pub fn try_new(bit: u32, device: *mut DEVICE_OBJECT) -> Result<PoolArc<IrpOp<W>>, NTSTATUS> {
        // SAFETY: plain allocation.
        let irp = unsafe { IoAllocateIrp(1, 0) };
        if irp.is_null() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        PoolArc::try_new(IrpOp {
            irp,
            device,
            phase: AtomicU32::new(IDLE),
            status: AtomicI32::new(0),
            information: AtomicUsize::new(0),
            bit,
            waker: UnsafeCell::new(None),
            loan: UnsafeCell::new(None),
            wsk_buf: UnsafeCell::new(WSK_BUF {
                Mdl: core::ptr::null_mut(),
                Offset: 0,
                Length: 0,
            }),
        })
        .inspect_err(|_| {
            // SAFETY: never used; freed once.
            unsafe { IoFreeIrp(irp) };
        })
    }

    /// Starts a WSK call with this IRP; `call` gets the prepared IRP, `waker` hears of the
    /// completion. Err (and nothing happens) if a call is already in flight.
    pub fn start(
        this: &PoolArc<IrpOp<W>>,
        waker: W,
        call: impl FnOnce(*mut IRP) -> NTSTATUS,
    ) -> Result<(), NTSTATUS> {
        Self::start_with(this, waker, None, |_, irp| call(irp))
    }

    /// [`Self::start`] for a call that reads or writes `loan`: the operation keeps it until
    /// [`Self::take`] after the completion, and `call` also gets the WSK_BUF describing it
    /// (valid until then too).
    pub fn start_with(
        this: &PoolArc<IrpOp<W>>,
        waker: W,
        loan: Option<Loan>,
        call: impl FnOnce(*mut WSK_BUF, *mut IRP) -> NTSTATUS,
    ) -> Result<(), NTSTATUS> {
        if this
            .phase
            .compare_exchange(IDLE, PENDING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(STATUS_INVALID_DEVICE_STATE);
        }
        // SAFETY: the phase was IDLE, so no call or completion touches the slots.
        unsafe {
            *this.waker.get() = Some(waker);
            *this.wsk_buf.get() = loan.as_ref().map_or(
                WSK_BUF {
                    Mdl: core::ptr::null_mut(),
                    Offset: 0,
                    Length: 0,
                },
                Loan::wsk,
            );
            *this.loan.get() = loan;
        }
        let context = PoolArc::into_raw(this.clone()) as *mut c_void;
        // SAFETY: the IRP is idle (no call in flight): reset it and set the completion routine.
        let set = unsafe {
            IoReuseIrp(this.irp, STATUS_UNSUCCESSFUL);
            if this.device.is_null() {
                io_set_completion_routine(
                    this.irp,
                    Some(completed::<W>),
                    context,
                    true,
                    true,
                    true,
                );
                STATUS_SUCCESS
            } else {
                IoSetCompletionRoutineEx(
                    this.device,
                    this.irp,
                    Some(completed::<W>),
                    context,
                    1,
                    1,
                    1,
                )
            }
        };
        if !nt_success(set) {
            // Nothing was issued: the call "completes" with the failure at once, through the
            // same path as a real completion (the owner's drain sees it).
            // SAFETY: the reference given to the context above, never handed to a routine.
            drop(unsafe { PoolArc::from_raw(context as *const IrpOp<W>) });
            this.status.store(set.0, Ordering::Release);
            this.information.store(0, Ordering::Release);
            this.phase.store(DONE, Ordering::Release);
            // SAFETY: phase is DONE and no completion routine exists: the slot is ours.
            if let Some(waker) = unsafe { (*this.waker.get()).take() } {
                waker.wake(this.bit);
            }
            return Ok(());
        }
        // The completion routine runs in every case (maybe before `call` returns); its result is
        // authoritative, the return value is only informative.
        let _ = call(this.wsk_buf.get(), this.irp);
        Ok(())
    }

    /// The result of the completed call, if it completed (and makes the IRP reusable, giving
    /// back the call's loan).
    pub fn take(&self) -> Option<(NTSTATUS, usize)> {
        if self
            .phase
            .compare_exchange(DONE, TAKING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // SAFETY: the call is over, and while TAKING nothing else touches the slot (no
            // `start` until IDLE, no other `take` past the exchange above).
            drop(unsafe { (*self.loan.get()).take() });
            let result = (
                NTSTATUS(self.status.load(Ordering::Acquire)),
                self.information.load(Ordering::Acquire),
            );
            self.phase.store(IDLE, Ordering::Release);
            Some(result)
        } else {
            None
        }
    }

    /// Whether a call is in flight.
    pub fn is_pending(&self) -> bool {
        self.phase.load(Ordering::Acquire) == PENDING
    }

    /// Whether no call is in flight and no result waits to be taken.
    pub fn is_idle(&self) -> bool {
        self.phase.load(Ordering::Acquire) == IDLE
    }

    /// IoCancelIrp on the call in flight (it completes with STATUS_CANCELLED).
    pub fn cancel(&self) {
        if self.is_pending() {
            // Cancelling an IRP that completed in the meantime is harmless: IoCancelIrp on a
            // driver-owned IRP only marks it and runs a cancel routine if one is set.
            // SAFETY: the IRP is allocated for as long as this op lives.
            unsafe { IoCancelIrp(self.irp) };
        }
    }
}

/// Pool memory with its MDL: one allocation a [`Buffer`] and its loans share.
struct Block {
    data: *mut u8,
    len: usize,
    mdl: *mut MDL,
    /// A [`Loan`] of it is out: its bytes belong to a call in flight.
    lent: AtomicBool,
}

// SAFETY: plain memory; who may touch the bytes is decided by `lent` (see Buffer::bytes).
unsafe impl Send for Block {}
// SAFETY: as above.
unsafe impl Sync for Block {}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: allocated in Buffer::try_new, freed once: the last holder (the buffer or the
        // loan of a call in flight) is gone.
        unsafe {
            IoFreeMdl(self.mdl);
            ExFreePoolWithTag(
                self.data as *mut c_void,
                u32::from_le_bytes(crate::POOL_TAG),
            );
        }
        ksys::pool::note_freed(self.len);
    }
}

/// A non-paged buffer described by an MDL, which a call in flight borrows through a [`Loan`]:
/// until the loan comes back the bytes are the call's ([`Self::bytes`] is empty then), and the
/// memory outlives the buffer if it is dropped or replaced meanwhile. This is what lets a
/// session hand its buffers to asynchronous WSK and SSPI calls without `unsafe`.
pub struct Buffer {
    block: Option<PoolArc<Block>>,
}

impl Buffer {
    /// No memory at all: what an idle connection keeps for sending (see [`Self::try_new`] to
    /// have some again).
    pub const EMPTY: Buffer = Buffer { block: None };

    /// Allocates `len` zeroed bytes of non-paged pool and their MDL.
    pub fn try_new(len: usize) -> Result<Buffer, NTSTATUS> {
        if len == 0 || len > u32::MAX as usize {
            return Err(STATUS_INVALID_PARAMETER);
        }
        // SAFETY: plain pool allocation and an MDL for it.
        let (data, mdl) = unsafe {
            let data = ExAllocatePool2(
                POOL_FLAG_NON_PAGED,
                len,
                u32::from_le_bytes(crate::POOL_TAG),
            ) as *mut u8;
            if data.is_null() {
                return Err(STATUS_INSUFFICIENT_RESOURCES);
            }
            let mdl = IoAllocateMdl(data as *mut c_void, len as u32, 0, 0, core::ptr::null_mut());
            if mdl.is_null() {
                ExFreePoolWithTag(data as *mut c_void, u32::from_le_bytes(crate::POOL_TAG));
                return Err(STATUS_INSUFFICIENT_RESOURCES);
            }
            MmBuildMdlForNonPagedPool(mdl);
            (data, mdl)
        };
        ksys::pool::note_allocated(len);
        let block = PoolArc::try_new(Block {
            data,
            len,
            mdl,
            lent: AtomicBool::new(false),
        })?;
        Ok(Buffer { block: Some(block) })
    }

    /// The bytes — none while a call has them (a loan is out), so code that would touch them
    /// then sees an empty slice instead of memory the kernel may be writing.
    pub fn bytes(&mut self) -> &mut [u8] {
        match &self.block {
            Some(block) if !block.lent.load(Ordering::Acquire) => {
                // SAFETY: `len` bytes of our block; no loan is out (checked), `lend` needs
                // `&self` (so none can start while this borrow lives), and no other Buffer
                // shares the block.
                unsafe { core::slice::from_raw_parts_mut(block.data, block.len) }
            }
            _ => &mut [],
        }
    }

    /// Lends `[offset, offset + len)` to a call; Err if the range is outside the buffer or a
    /// loan is already out.
    pub fn lend(&self, offset: usize, len: usize) -> Result<Loan, NTSTATUS> {
        let Some(block) = &self.block else {
            return Err(STATUS_INVALID_PARAMETER);
        };
        if offset.checked_add(len).is_none_or(|end| end > block.len) {
            return Err(STATUS_INVALID_PARAMETER);
        }
        if block.lent.swap(true, Ordering::AcqRel) {
            return Err(STATUS_INVALID_DEVICE_STATE);
        }
        Ok(Loan {
            block: block.clone(),
            offset,
            len,
        })
    }

    /// Whether a loan is out.
    pub fn is_lent(&self) -> bool {
        self.block
            .as_ref()
            .is_some_and(|b| b.lent.load(Ordering::Acquire))
    }

    /// Capacity in bytes.
    pub fn len(&self) -> usize {
        self.block.as_ref().map_or(0, |b| b.len)
    }

    /// Whether the buffer has no memory ([`Self::EMPTY`]).
    pub fn is_empty(&self) -> bool {
        self.block.is_none()
    }
}

/// A range of a [`Buffer`] a call in flight has: its memory stays allocated while the loan
/// lives, and the buffer's bytes are usable again once it is dropped.
pub struct Loan {
    block: PoolArc<Block>,
    offset: usize,
    len: usize,
}

impl Loan {
    /// The WSK_BUF describing the range.
    pub fn wsk(&self) -> WSK_BUF {
        WSK_BUF {
            Mdl: self.block.mdl,
            Offset: self.offset as u32,
            Length: self.len,
        }
    }

    /// Start of the range (for an SSPI buffer descriptor).
    pub fn as_ptr(&self) -> *mut u8 {
        self.block.data.wrapping_add(self.offset)
    }

    /// Length of the range.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        // Release: whatever the call wrote is visible to the next `bytes`.
        self.block.lent.store(false, Ordering::Release);
    }
}

struct Registration {
    registration: UnsafeCell<WSK_REGISTRATION>,
    dispatch: WSK_CLIENT_DISPATCH,
    client: UnsafeCell<WSK_CLIENT_NPI>,
    provider: UnsafeCell<WSK_PROVIDER_NPI>,
}

/// The driver's WSK registration with a captured provider NPI. Dropping it releases the NPI and
/// deregisters — which waits until every socket is closed.
pub struct Provider {
    inner: PoolArc<Registration>,
}

// SAFETY: the registration is pinned in pool; WSK synchronizes itself.
unsafe impl Send for Registration {}
// SAFETY: as above.
unsafe impl Sync for Registration {}

impl Provider {
    /// Registers as a WSK 1.0 client and captures the provider (waiting up to `wait_ms`).
    pub fn register(wait_ms: u32) -> Result<Provider, NTSTATUS> {
        let inner = PoolArc::try_new(Registration {
            // SAFETY: WSK_REGISTRATION is opaque plain data; WskRegister initializes it.
            registration: UnsafeCell::new(unsafe { core::mem::zeroed() }),
            dispatch: WSK_CLIENT_DISPATCH {
                Version: make_wsk_version(1, 0),
                Reserved: 0,
                WskClientEvent: core::ptr::null(),
            },
            client: UnsafeCell::new(WSK_CLIENT_NPI {
                ClientContext: core::ptr::null_mut(),
                Dispatch: core::ptr::null(),
            }),
            // SAFETY: WSK_PROVIDER_NPI is plain data; the capture fills it.
            provider: UnsafeCell::new(unsafe { core::mem::zeroed() }),
        })?;
        // SAFETY: the registration lives in pool (pinned) until Drop deregisters.
        unsafe {
            (*inner.client.get()).Dispatch = &inner.dispatch;
            let status = WskRegister(inner.client.get(), inner.registration.get());
            if !nt_success(status) {
                return Err(status);
            }
            let status =
                WskCaptureProviderNPI(inner.registration.get(), wait_ms, inner.provider.get());
            if !nt_success(status) {
                WskDeregister(inner.registration.get());
                return Err(status);
            }
        }
        Ok(Provider { inner })
    }

    /// The provider dispatch and the client pointer its calls take.
    pub fn npi(&self) -> WSK_PROVIDER_NPI {
        // SAFETY: written once by the capture.
        unsafe { *self.inner.provider.get() }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        // SAFETY: paired with the successful capture and registration (PASSIVE_LEVEL).
        unsafe {
            WskReleaseProviderNPI(self.inner.registration.get());
            WskDeregister(self.inner.registration.get());
        }
    }
}
