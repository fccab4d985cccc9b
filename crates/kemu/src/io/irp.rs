//! IRPs: allocation, reuse, completion (completion routines in stack order, honouring
//! STATUS_MORE_PROCESSING_REQUIRED) and cancellation.
//!
//! Driver-allocated IRPs (IoAllocateIrp) have no thread to complete to: their completion routine
//! must return STATUS_MORE_PROCESSING_REQUIRED, or the verifier stops the kernel. IRPs kemu
//! builds for host I/O end in a host completion (buffers copied back, waiter woken).

// Keys are addresses and small ids: a fast non-cryptographic hash (no peer chooses them).
use rustc_hash::FxHashMap as HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

use ksys::io::{
    DEVICE_OBJECT, IO_STACK_LOCATION, IRP, PIO_COMPLETION_ROUTINE, SL_INVOKE_ON_CANCEL,
    SL_INVOKE_ON_ERROR, SL_INVOKE_ON_SUCCESS, SL_PENDING_RETURNED, io_size_of_irp,
};
use ksys::ntdef::{
    NTSTATUS, STATUS_INSUFFICIENT_RESOURCES, STATUS_MORE_PROCESSING_REQUIRED, STATUS_PENDING,
    STATUS_SUCCESS, nt_success,
};

use crate::bugcheck::{bugcheck, codes, verifier};
use crate::ke::pool::Owner;
use crate::leaks::{Leak, LeakKind, Site};
use crate::thread::{self, DISPATCH};

const IO_TYPE_IRP: i16 = 6;

/// What happens when an IRP's last stack location completes.
pub(crate) type FinalCompletion = Box<dyn FnOnce(*mut IRP) + Send>;
/// A cancel routine kemu's own providers install (runs at DISPATCH_LEVEL).
pub(crate) type CancelHandler = Box<dyn FnOnce(*mut IRP) + Send>;

struct IrpInfo {
    owner: Owner,
    stack_count: i8,
    site: Site,
    /// Passed down to a provider and not yet completed.
    in_flight: bool,
    /// Inside IofCompleteRequest (but not inside a completion routine, which owns the IRP).
    completing: bool,
    /// Counts passes down to a provider, so completion can tell whether a routine reused the IRP.
    generation: u64,
    cancel: Option<CancelHandler>,
    final_completion: Option<FinalCompletion>,
    /// Host I/O: identifies the request (addresses are reused after free).
    id: u64,
}

/// Live IRPs of one kernel.
#[derive(Default)]
pub(crate) struct Irps {
    live: Mutex<HashMap<usize, IrpInfo>>,
    /// IofCompleteRequest calls still running (a completion routine may still be releasing
    /// memory after it signalled its owner): leak checks wait for zero.
    completions: std::sync::atomic::AtomicUsize,
}

/// Counts one running IofCompleteRequest; the kernel is told when it ends.
struct CompletionInProgress<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> CompletionInProgress<'a> {
    fn enter(counter: &'a std::sync::atomic::AtomicUsize) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        CompletionInProgress(counter)
    }
}

impl Drop for CompletionInProgress<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if let Some(state) = thread::try_state() {
            state.kernel.notify();
        }
    }
}

fn not_live(routine: &str, irp: *mut IRP) -> ! {
    bugcheck(
        codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION,
        [verifier::IRP_NOT_LIVE, irp as usize, 0, 0],
        format!(
            "{routine}: IRP {:#x} is not allocated (freed, or never an IRP)",
            irp as usize
        ),
    )
}

/// Writes a fresh IRP header and stack locations.
///
/// # Safety
/// `irp` must point to `io_size_of_irp(stack_count)` writable bytes.
unsafe fn initialize(irp: *mut IRP, stack_count: i8, status: NTSTATUS) {
    let size = io_size_of_irp(stack_count as u8);
    // SAFETY: per the contract, the whole IRP is writable.
    unsafe {
        std::ptr::write_bytes(irp as *mut u8, 0, size);
        (*irp).Type = IO_TYPE_IRP;
        (*irp).Size = size as u16;
        (*irp).StackCount = stack_count;
        (*irp).CurrentLocation = stack_count + 1;
        (*irp).IoStatus.Status = status;
        let first = (irp as *mut u8).add(std::mem::size_of::<IRP>()) as *mut IO_STACK_LOCATION;
        (*irp).Tail.CurrentStackLocation = first.add(stack_count as usize);
        let list = &raw mut (*irp).ThreadListEntry;
        (*list).Flink = list;
        (*list).Blink = list;
    }
}

impl Irps {
    /// Allocates an IRP. `Owner::Kernel` IRPs carry a final completion for host I/O.
    pub fn allocate(
        &self,
        stack_count: i8,
        owner: Owner,
        final_completion: Option<FinalCompletion>,
    ) -> *mut IRP {
        let kernel = thread::kernel();
        let size = io_size_of_irp(stack_count as u8);
        let irp = super::alloc_zeroed(size) as *mut IRP;
        // SAFETY: freshly allocated with the IRP's full size.
        unsafe { initialize(irp, stack_count, STATUS_SUCCESS) };
        let info = IrpInfo {
            owner,
            stack_count,
            site: Site::here(kernel.next_sequence()),
            in_flight: false,
            completing: false,
            generation: 0,
            cancel: None,
            final_completion,
            id: 0,
        };
        self.live.lock().unwrap().insert(irp as usize, info);
        irp
    }

    fn with<R>(&self, routine: &str, irp: *mut IRP, f: impl FnOnce(&mut IrpInfo) -> R) -> R {
        let mut live = self.live.lock().unwrap();
        match live.get_mut(&(irp as usize)) {
            Some(info) => f(info),
            None => {
                drop(live);
                not_live(routine, irp)
            }
        }
    }

    /// Frees an IRP (driver's IoFreeIrp, or kemu after a host completion).
    fn release(&self, routine: &str, irp: *mut IRP, by: Owner) {
        let info = self.with(routine, irp, |info| {
            (info.owner, info.in_flight, info.stack_count)
        });
        let (owner, in_flight, stack_count) = info;
        if owner != by {
            bugcheck(
                codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION,
                [verifier::IRP_NOT_LIVE, irp as usize, 1, 0],
                format!(
                    "{routine}: IRP {:#x} was not allocated by the driver",
                    irp as usize
                ),
            );
        }
        if in_flight {
            bugcheck(
                codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION,
                [verifier::IRP_BUSY, irp as usize, 0, 0],
                format!(
                    "{routine}: IRP {:#x} is still pending in a lower driver",
                    irp as usize
                ),
            );
        }
        self.live.lock().unwrap().remove(&(irp as usize));
        super::free(irp as *mut u8, io_size_of_irp(stack_count as u8));
    }

    /// Passes an IRP to the next lower driver (IoCallDriver's stack step): returns the stack
    /// location the lower driver reads. The IRP is in flight until completed.
    pub fn call_lower(&self, irp: *mut IRP) -> *mut IO_STACK_LOCATION {
        self.with("IoCallDriver", irp, |info| {
            if info.in_flight {
                return Err(());
            }
            info.in_flight = true;
            info.generation += 1;
            Ok(())
        })
        .unwrap_or_else(|()| {
            bugcheck(
                codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION,
                [verifier::IRP_BUSY, irp as usize, 0, 0],
                format!(
                    "IoCallDriver: IRP {:#x} is already pending in a lower driver",
                    irp as usize
                ),
            )
        });
        // SAFETY: the IRP is live; stepping down one location stays inside it when one is left.
        unsafe {
            if (*irp).CurrentLocation <= 1 {
                bugcheck(
                    0x35,
                    [irp as usize, 0, 0, 0],
                    format!("NO_MORE_IRP_STACK_LOCATIONS: IRP {:#x}", irp as usize),
                );
            }
            (*irp).CurrentLocation -= 1;
            (*irp).Tail.CurrentStackLocation = (*irp).Tail.CurrentStackLocation.sub(1);
            (*irp).Tail.CurrentStackLocation
        }
    }

    /// Installs a cancel routine on an in-flight IRP. False: the IRP is already cancelled (the
    /// caller completes it with STATUS_CANCELLED itself).
    pub fn set_cancel(&self, irp: *mut IRP, handler: CancelHandler) -> bool {
        self.with("IoSetCancelRoutine", irp, |info| {
            // SAFETY: the IRP is live (we hold the table lock).
            if unsafe { (*irp).Cancel } != 0 {
                return false;
            }
            info.cancel = Some(handler);
            true
        })
    }

    /// Removes the cancel routine. True: it had not run, so the caller owns completion.
    pub fn clear_cancel(&self, irp: *mut IRP) -> bool {
        self.with("IoSetCancelRoutine", irp, |info| {
            info.cancel.take().is_some()
        })
    }

    /// Driver-owned IRPs still allocated.
    pub fn leaks(&self, owner: Owner) -> Vec<Leak> {
        let live = self.live.lock().unwrap();
        live.iter()
            .filter(|(_, i)| i.owner == owner)
            .map(|(&address, i)| Leak {
                kind: LeakKind::Irp,
                address,
                tag: "IRP".into(),
                size: io_size_of_irp(i.stack_count as u8),
                site: i.site.clone(),
            })
            .collect()
    }

    /// Whether no IofCompleteRequest is running anywhere.
    pub fn no_completion_running(&self) -> bool {
        self.completions.load(std::sync::atomic::Ordering::Acquire) == 0
    }

    /// IofCompleteRequest: runs completion routines from the current location upwards.
    pub fn complete(&self, irp: *mut IRP) {
        let _running = CompletionInProgress::enter(&self.completions);
        let status_now = self.with("IofCompleteRequest", irp, |info| {
            if info.completing {
                return Err(());
            }
            info.completing = true;
            info.in_flight = false;
            info.cancel = None;
            Ok(())
        });
        if status_now.is_err() {
            bugcheck(
                codes::MULTIPLE_IRP_COMPLETE_REQUESTS,
                [irp as usize, 0, 0, 0],
                format!(
                    "IofCompleteRequest: IRP {:#x} is already being completed",
                    irp as usize
                ),
            );
        }
        // SAFETY: the IRP is live and now ours to walk (nobody else may touch it while completing).
        let status = unsafe { (*irp).IoStatus.Status };
        if status == STATUS_PENDING {
            bugcheck(
                codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION,
                [
                    verifier::IRP_BUSY,
                    irp as usize,
                    status.0 as u32 as usize,
                    0,
                ],
                format!(
                    "IofCompleteRequest: IRP {:#x} completed with STATUS_PENDING",
                    irp as usize
                ),
            );
        }
        let stack_count = self.with("IofCompleteRequest", irp, |i| i.stack_count);
        let irql = thread::irql();
        loop {
            // SAFETY: the IRP is live (checked after every routine below).
            let (location, stack) =
                unsafe { ((*irp).CurrentLocation, (*irp).Tail.CurrentStackLocation) };
            if location > stack_count {
                break;
            }
            // SAFETY: `stack` is a location inside the live IRP; advancing by one stays inside or
            // reaches one-past-the-end, which is never dereferenced.
            let (routine, context, control, device) = unsafe {
                let s = *stack;
                (*irp).CurrentLocation += 1;
                (*irp).Tail.CurrentStackLocation = stack.add(1);
                (*irp).PendingReturned = s.Control & SL_PENDING_RETURNED;
                let device = if (*irp).CurrentLocation <= stack_count {
                    (*(*irp).Tail.CurrentStackLocation).DeviceObject
                } else {
                    std::ptr::null_mut()
                };
                std::ptr::write_bytes(
                    stack as *mut u8,
                    0,
                    std::mem::size_of::<IO_STACK_LOCATION>(),
                );
                (s.CompletionRoutine, s.Context, s.Control, device)
            };
            // SAFETY: the IRP is live.
            let (status, cancelled) = unsafe { ((*irp).IoStatus.Status, (*irp).Cancel != 0) };
            let invoke = (nt_success(status) && control & SL_INVOKE_ON_SUCCESS != 0)
                || (!nt_success(status) && control & SL_INVOKE_ON_ERROR != 0)
                || (cancelled && control & SL_INVOKE_ON_CANCEL != 0);
            match (routine, invoke) {
                (Some(r), true) => {
                    // While its routine runs the IRP belongs to that driver: it may signal a
                    // waiter that reuses the IRP before the routine has even returned, so kemu
                    // must not hold the IRP as "being completed" across the call, nor touch it
                    // after STATUS_MORE_PROCESSING_REQUIRED.
                    let generation = self.with("IofCompleteRequest", irp, |info| {
                        info.completing = false;
                        info.generation
                    });
                    // SAFETY: the routine and context the driver installed for this location.
                    let result = unsafe { r(device, irp, context) };
                    thread::check_balanced("IRP completion routine", irql);
                    if result == STATUS_MORE_PROCESSING_REQUIRED {
                        return;
                    }
                    let resumed = {
                        let mut live = self.live.lock().unwrap();
                        match live.get_mut(&(irp as usize)) {
                            Some(info) if info.generation == generation && !info.completing => {
                                info.completing = true;
                                true
                            }
                            _ => false,
                        }
                    };
                    if !resumed {
                        bugcheck(
                            codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION,
                            [verifier::IRP_NOT_LIVE, irp as usize, 2, 0],
                            format!(
                                "IRP {:#x} freed, reused or completed again by a completion routine that did not return STATUS_MORE_PROCESSING_REQUIRED",
                                irp as usize
                            ),
                        );
                    }
                }
                _ => {
                    // SAFETY: the IRP is live; propagate the pending flag as IoMarkIrpPending would.
                    unsafe {
                        if (*irp).PendingReturned != 0 && (*irp).CurrentLocation <= stack_count {
                            (*(*irp).Tail.CurrentStackLocation).Control |= SL_PENDING_RETURNED;
                        }
                    }
                }
            }
        }
        let (owner, final_completion) = self.with("IofCompleteRequest", irp, |info| {
            info.completing = false;
            (info.owner, info.final_completion.take())
        });
        match (owner, final_completion) {
            (Owner::Kernel, Some(done)) => {
                done(irp);
                self.release("IofCompleteRequest", irp, Owner::Kernel);
            }
            _ => bugcheck(
                codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION,
                [verifier::IRP_NO_MORE_PROCESSING, irp as usize, 0, 0],
                format!(
                    "IRP {:#x} allocated by the driver completed past its last stack location: its completion routine must return STATUS_MORE_PROCESSING_REQUIRED",
                    irp as usize
                ),
            ),
        }
    }

    /// Labels a host-I/O IRP so a later cancel cannot hit a reused address.
    pub fn tag(&self, irp: *mut IRP, id: u64) {
        self.with("IoCallDriver", irp, |info| info.id = id);
    }

    /// IoCancelIrp on a host-I/O IRP, if it is still the one labelled `id`.
    pub fn cancel_tagged(&self, irp: *mut IRP, id: u64) -> bool {
        let caller_irql = thread::irql();
        let handler = {
            let mut live = self.live.lock().unwrap();
            match live.get_mut(&(irp as usize)) {
                Some(info) if info.id == id && !info.completing => {
                    // SAFETY: the IRP is live (table lock held).
                    unsafe {
                        (*irp).Cancel = 1;
                        (*irp).CancelIrql = caller_irql;
                    }
                    info.cancel.take()
                }
                _ => None,
            }
        };
        match handler {
            Some(h) => {
                thread::at_irql(DISPATCH, || h(irp));
                true
            }
            None => false,
        }
    }

    /// IoCancelIrp: marks the IRP cancelled and runs its cancel routine, if any, at DISPATCH.
    pub fn cancel(&self, irp: *mut IRP) -> bool {
        let caller_irql = thread::irql();
        let handler = self.with("IoCancelIrp", irp, |info| {
            // SAFETY: the IRP is live (table lock held); CancelIrql is the IRQL the cancel
            // routine returns to, as IoAcquireCancelSpinLock records it.
            unsafe {
                (*irp).Cancel = 1;
                (*irp).CancelIrql = caller_irql;
            }
            info.cancel.take()
        });
        match handler {
            Some(h) => {
                thread::at_irql(DISPATCH, || h(irp));
                true
            }
            None => false,
        }
    }
}

/// ntoskrnl!IoAllocateIrp.
pub(crate) unsafe extern "win64" fn io_allocate_irp(stack_size: i8, _charge_quota: u8) -> *mut IRP {
    thread::require_at_most("IoAllocateIrp", DISPATCH);
    if stack_size < 1 {
        bugcheck(
            codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION,
            [verifier::IRP_NO_STACK_LOCATION, stack_size as usize, 0, 0],
            format!("IoAllocateIrp: stack size {stack_size} (at least 1 is needed)"),
        );
    }
    let kernel = thread::kernel();
    if kernel.faults.allocation_fails() {
        return std::ptr::null_mut();
    }
    kernel.irps.allocate(stack_size, Owner::Driver, None)
}

/// ntoskrnl!IoFreeIrp.
pub(crate) unsafe extern "win64" fn io_free_irp(irp: *mut IRP) {
    thread::require_at_most("IoFreeIrp", DISPATCH);
    thread::kernel()
        .irps
        .release("IoFreeIrp", irp, Owner::Driver);
}

/// ntoskrnl!IoReuseIrp.
pub(crate) unsafe extern "win64" fn io_reuse_irp(irp: *mut IRP, status: NTSTATUS) {
    thread::require_at_most("IoReuseIrp", DISPATCH);
    let kernel = thread::kernel();
    let (owner, in_flight, stack_count) = kernel
        .irps
        .with("IoReuseIrp", irp, |i| (i.owner, i.in_flight, i.stack_count));
    if owner != Owner::Driver || in_flight {
        bugcheck(
            codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION,
            [verifier::IRP_BUSY, irp as usize, 0, 0],
            format!(
                "IoReuseIrp: IRP {:#x} is not the driver's, or is pending in a lower driver",
                irp as usize
            ),
        );
    }
    // SAFETY: live driver-owned IRP of `stack_count` locations.
    unsafe { initialize(irp, stack_count, status) };
}

/// ntoskrnl!IofCompleteRequest.
pub(crate) unsafe extern "win64" fn iof_complete_request(irp: *mut IRP, _boost: i8) {
    thread::require_at_most("IofCompleteRequest", DISPATCH);
    thread::kernel().irps.complete(irp);
}

/// ntoskrnl!IoCancelIrp.
pub(crate) unsafe extern "win64" fn io_cancel_irp(irp: *mut IRP) -> u8 {
    thread::require_at_most("IoCancelIrp", DISPATCH);
    u8::from(thread::kernel().irps.cancel(irp))
}

/// What IoSetCompletionRoutineEx keeps for one completion: the driver's routine and context,
/// and the device object it holds referenced until that routine has returned.
struct UnloadSafe {
    routine: PIO_COMPLETION_ROUTINE,
    context: *mut c_void,
    device: usize,
    /// When the driver's routine runs: on success, on error, on cancel.
    invoke: [bool; 3],
}

/// The routine IoSetCompletionRoutineEx really installs (as Windows does): it calls the
/// driver's routine, and only after that returns drops the device reference that keeps the
/// driver (object and image) from going away — no driver code can run after its unload.
unsafe extern "win64" fn unload_safe_completion(
    device: *mut DEVICE_OBJECT,
    irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: the block IoSetCompletionRoutineEx allocated for exactly this completion.
    let block = unsafe { Box::from_raw(context as *mut UnloadSafe) };
    // SAFETY: the IRP being completed.
    let (status, cancelled) = unsafe { ((*irp).IoStatus.Status, (*irp).Cancel != 0) };
    let [on_success, on_error, on_cancel] = block.invoke;
    let wanted = if cancelled {
        on_cancel
    } else if ksys::ntdef::nt_success(status) {
        on_success
    } else {
        on_error
    };
    let status = match block.routine {
        // SAFETY: the driver's routine with the context it gave, as IofCompleteRequest would.
        Some(routine) if wanted => unsafe { routine(device, irp, block.context) },
        _ => STATUS_SUCCESS,
    };
    thread::kernel().io.dereference_device(block.device);
    status
}

/// ntoskrnl!IoSetCompletionRoutineEx: like IoSetCompletionRoutine, but the device object stays
/// referenced until the routine has returned (an allocation: it can fail, and then nothing is
/// set).
pub(crate) unsafe extern "win64" fn io_set_completion_routine_ex(
    device: *mut DEVICE_OBJECT,
    irp: *mut IRP,
    routine: PIO_COMPLETION_ROUTINE,
    context: *mut c_void,
    on_success: u8,
    on_error: u8,
    on_cancel: u8,
) -> NTSTATUS {
    thread::require_at_most("IoSetCompletionRoutineEx", DISPATCH);
    let kernel = thread::kernel();
    kernel.irps.with("IoSetCompletionRoutineEx", irp, |_| ());
    // SAFETY: the IRP is live.
    if unsafe { (*irp).CurrentLocation } <= 1 {
        bugcheck(
            codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION,
            [verifier::IRP_NO_STACK_LOCATION, irp as usize, 0, 0],
            format!(
                "IoSetCompletionRoutineEx: IRP {:#x} has no next stack location",
                irp as usize
            ),
        );
    }
    if kernel.faults.allocation_fails() {
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    if !kernel.io.reference_device(device as usize) {
        // Not a live device object of this kernel: nothing could keep the driver loaded.
        return ksys::ntdef::STATUS_INVALID_PARAMETER;
    }
    let block = Box::into_raw(Box::new(UnloadSafe {
        routine,
        context,
        device: device as usize,
        invoke: [on_success != 0, on_error != 0, on_cancel != 0],
    }));
    // SAFETY: the IRP is live and has a next location.
    unsafe {
        ksys::io::io_set_completion_routine(
            irp,
            Some(unload_safe_completion),
            block as *mut c_void,
            true,
            true,
            true,
        )
    };
    STATUS_SUCCESS
}
