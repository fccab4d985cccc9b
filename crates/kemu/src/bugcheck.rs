//! Bugchecks: how a kemu kernel stops when the driver breaks a rule.
//!
//! A bugcheck records its code, four parameters and a message naming the broken rule, wakes every
//! host call waiting on the kernel (they return [`KernelError::Bugcheck`](crate::KernelError)),
//! and parks the offending thread for good — as on Windows, nothing on that machine runs on.
//! A Rust panic on a kernel thread (a driver `assert!`, an index out of bounds) becomes a bugcheck
//! the same way, through a panic hook, so it cannot unwind through `extern "win64"` frames.

use std::fmt;
use std::sync::Once;

use crate::thread;

/// Bugcheck codes kemu raises. The codes are Windows'; the parameters are kemu's (documented
/// per call site in the message and in docs/kemu.md).
pub mod codes {
    /// A routine called above its maximum IRQL. P2 = current IRQL, P3 = maximum.
    pub const IRQL_NOT_LESS_OR_EQUAL: u32 = 0x0A;
    /// A routine called below its required IRQL. P2 = current IRQL, P3 = required.
    pub const IRQL_NOT_GREATER_OR_EQUAL: u32 = 0x09;
    /// Driver code returned to kemu at the wrong IRQL or holding spin locks.
    pub const IRQL_UNEXPECTED_VALUE: u32 = 0xC8;
    /// A Rust panic on a kernel thread outside the driver's own panic handler.
    pub const KMODE_EXCEPTION_NOT_HANDLED: u32 = 0x1E;
    /// An IRP completed twice. P1 = IRP address.
    pub const MULTIPLE_IRP_COMPLETE_REQUESTS: u32 = 0x44;
    /// A spin lock released by a thread that does not own it. P1 = lock address.
    pub const SPIN_LOCK_NOT_OWNED: u32 = 0x10;
    /// Bad pool call. P1: 0x00 zero size, 0x07 double free/unknown address, 0x08 allocation at
    /// bad IRQL, 0x09 free at bad IRQL, 0x0A wrong tag, 0x9B zero tag, 0x9C bad flags.
    pub const BAD_POOL_CALLER: u32 = 0xC2;
    /// Bytes written past the end of a pool block. P1 = block address, P2 = size, P3 = tag.
    pub const SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION: u32 = 0xC1;
    /// Freed pool still holds an active timer or DPC. P1 = object address, P2 = block.
    pub const TIMER_OR_DPC_INVALID: u32 = 0xC7;
    /// I/O manager rule broken (IRP or MDL misuse). P1 = kemu sub-code, P2 = object.
    pub const DRIVER_VERIFIER_IOMANAGER_VIOLATION: u32 = 0xC9;
    /// A verifier rule outside the I/O manager (work items, events). P1 = kemu sub-code.
    pub const DRIVER_VERIFIER_DETECTED_VIOLATION: u32 = 0xC4;
    /// A system worker routine returned at raised IRQL. P1 = routine, P2 = IRQL.
    pub const WORKER_THREAD_RETURNED_AT_BAD_IRQL: u32 = 0xE1;
    /// A KMDF rule broken. P1 = kemu sub-code (see [`super::wdf_violation`]), P2 = handle.
    pub const WDF_VIOLATION: u32 = 0x10D;
    /// Freed pool touched (what special pool reports). P1 = address touched.
    pub const PAGE_FAULT_IN_FREED_SPECIAL_POOL: u32 = 0xCC;
    /// Too long at DISPATCH_LEVEL: a spin lock waited for past the watchdog's limit (P1 = 1,
    /// the cumulative kind; P4 = the lock).
    pub const DPC_WATCHDOG_VIOLATION: u32 = 0x133;
    /// The driver's own panic handler (ksys::kmdf::WSKTLS_PANIC_BUGCHECK, "WKTS").
    pub const WSKTLS_PANIC: u32 = ksys::kmdf::WSKTLS_PANIC_BUGCHECK;
}

/// P1 sub-codes of [`codes::WDF_VIOLATION`].
pub mod wdf_violation {
    /// A handle that is not (or no longer) a live framework object of the expected type.
    pub const INVALID_HANDLE: usize = 0x1;
    /// A request completed twice, or touched after completion.
    pub const REQUEST_ALREADY_COMPLETED: usize = 0x2;
    /// An object the driver may not delete.
    pub const CANNOT_DELETE: usize = 0x3;
    /// A KMDF table entry kemu does not implement. P2 = table index.
    pub const UNIMPLEMENTED_FUNCTION: usize = 0x4;
    /// Cancelable-state misuse (unmark after the cancel callback completed it, ...).
    pub const CANCEL_STATE: usize = 0x5;
    /// A callback that must complete its request returned without doing so.
    pub const REQUEST_NOT_COMPLETED: usize = 0x6;
    /// Dereference below zero, or another reference-count error.
    pub const REFERENCE_COUNT: usize = 0x7;
    /// A work item flushed from its own callback or enqueued after deletion.
    pub const WORK_ITEM: usize = 0x8;
    /// A lock released that the caller does not hold, or acquired twice.
    pub const LOCK: usize = 0x9;
    /// A structure with a wrong Size field or an invalid parameter combination.
    pub const INVALID_PARAMETER: usize = 0xA;
}

/// P1 sub-codes of [`codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION`] and
/// [`codes::DRIVER_VERIFIER_DETECTED_VIOLATION`].
pub mod verifier {
    /// An IRP that is not live (never allocated, or freed) passed to an I/O routine.
    pub const IRP_NOT_LIVE: usize = 0x100;
    /// An IRP freed or reused while a completion is in progress or while it is pending.
    pub const IRP_BUSY: usize = 0x101;
    /// A driver-allocated IRP completed all the way up (no STATUS_MORE_PROCESSING_REQUIRED).
    pub const IRP_NO_MORE_PROCESSING: usize = 0x102;
    /// Completion routine set on an IRP without a next stack location.
    pub const IRP_NO_STACK_LOCATION: usize = 0x103;
    /// An MDL that is not live passed to an MDL routine.
    pub const MDL_NOT_LIVE: usize = 0x110;
    /// A work item that is not live, or queued twice, or freed while queued.
    pub const WORK_ITEM_STATE: usize = 0x120;
    /// An unknown device object passed to an I/O routine.
    pub const UNKNOWN_DEVICE: usize = 0x121;
    /// A wait at DISPATCH_LEVEL with a non-zero timeout, or on an unknown object.
    pub const BAD_WAIT: usize = 0x130;
    /// Output information larger than the caller's output buffer.
    pub const INFORMATION_TOO_LARGE: usize = 0x140;
    /// An operation on an unknown or uninitialized timer/DPC.
    pub const TIMER_STATE: usize = 0x150;
    /// Unload left work outstanding that would run in unloaded code.
    pub const UNLOAD_PENDING_OPERATIONS: usize = 0x160;
}

/// How a kernel stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bugcheck {
    /// Bugcheck code (see [`codes`]).
    pub code: u32,
    /// The four bugcheck parameters.
    pub parameters: [usize; 4],
    /// What rule was broken, by which routine.
    pub message: String,
    /// Thread name and activity at the time.
    pub thread: String,
}

impl fmt::Display for Bugcheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BUGCHECK 0x{:X} ({:#x}, {:#x}, {:#x}, {:#x}) on {}: {}",
            self.code,
            self.parameters[0],
            self.parameters[1],
            self.parameters[2],
            self.parameters[3],
            self.thread,
            self.message
        )
    }
}

/// Stops the calling thread's kernel. Never returns: the thread parks for good.
///
/// Must not be called while holding any kemu lock (waiters would deadlock).
pub(crate) fn bugcheck(code: u32, parameters: [usize; 4], message: String) -> ! {
    let record = Bugcheck {
        code,
        parameters,
        message,
        thread: format!(
            "{} ({})",
            std::thread::current().name().unwrap_or("unnamed"),
            thread::activity()
        ),
    };
    match thread::try_state() {
        Some(state) if state.borrowed => {
            // A host thread dispatching its own call (KernelConfig::dispatch_on_caller): it is
            // inside driver code and can neither go back to its caller nor unwind through the
            // driver's frames. The machine stops as Windows does: the report, then the process
            // ends with the driver-failure status.
            state.kernel.record_bugcheck(record.clone());
            eprintln!("kemu: the kernel stopped on the calling thread: {record}");
            std::process::exit(BUGCHECK_EXIT_STATUS)
        }
        Some(state) => {
            state.kernel.record_bugcheck(record);
            park_forever()
        }
        // Not a kernel thread: a host-side misuse of kemu, reported as a plain panic.
        None => panic!("{record}"),
    }
}

/// Exit status of a process whose kernel stopped on a host thread that was dispatching its own
/// call (what `wsktls` reports for a driver failure).
pub const BUGCHECK_EXIT_STATUS: i32 = 5;

/// Parks the calling thread until the process exits.
pub(crate) fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// Installs (once per process) the hook that turns panics on kernel threads into bugchecks.
///
/// The hook records the bugcheck and returns: the panic then unwinds to the kernel thread's
/// entry, which ends the thread (host calls see the bugcheck). A panic inside driver code cannot
/// unwind through the driver's `extern "win64"` frames: Rust aborts the process there, after the
/// hook has printed the bugcheck. (Parking inside the hook is not an option: std holds its hook
/// lock while the hook runs.)
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let Some(state) = thread::try_state() else {
                previous(info);
                return;
            };
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_default();
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_owned());
            let activity = state
                .activity
                .try_borrow()
                .map(|a| a.clone())
                .unwrap_or_default();
            let record = Bugcheck {
                code: codes::KMODE_EXCEPTION_NOT_HANDLED,
                parameters: [0, 0, 0, 0],
                message: format!("panic at {location}: {payload}"),
                thread: format!(
                    "{} ({activity})",
                    std::thread::current().name().unwrap_or("unnamed")
                ),
            };
            if std::env::var_os("KEMU_QUIET").is_none() {
                eprintln!("kemu kernel {}: {record}", state.kernel.id);
                if std::env::var_os("KEMU_BACKTRACE").is_some_and(|v| v == "1") {
                    eprintln!("{}", std::backtrace::Backtrace::force_capture());
                }
            }
            state.kernel.record_bugcheck(record);
        }));
    });
}
