//! kemu: a user-mode Windows kernel that runs the wsktls driver on Linux.
//!
//! kemu is a faithful model of the documented behaviour of every routine it offers, with a
//! verifier: IRQL rules per thread, pool tags and guard bytes, IRP/MDL/work-item state, KMDF
//! request and object rules. A broken rule is a [`Bugcheck`]; anything the driver leaves behind
//! at unload is a [`LeakReport`]. Seeded fault injection ([`FaultPlan`]) produces the legal but
//! unpleasant schedules: inline or deferred callbacks at PASSIVE or DISPATCH_LEVEL, allocation
//! failures, worker delays.
//!
//! Routines are registered once by (module, export name) in [`exports`]; a natively linked
//! driver's ksys import slots are bound through that registry, as a PE image's import table
//! will be. Hosts (tests, the harness) use [`Kernel`].
//!
//! This crate is kemu's ABI edge: its `unsafe` is what calling and being called by driver code
//! through `extern "win64"` pointers requires.

#![allow(clippy::missing_safety_doc)]

mod bugcheck;
mod callers;
mod crt;
pub mod exports;
mod fault;
mod faults;
mod host;
mod io;
mod iomgr;
mod ke;
mod kernel;
mod ksecdd;
mod leaks;
mod netio;
pub mod pe;
mod registry;
mod rtl;
pub mod sddl;
pub mod testing;
mod thread;
mod wdf;

pub use bugcheck::{Bugcheck, codes, verifier, wdf_violation};
pub use faults::{CallbackIrql, CallbackSchedule, FaultPlan};
pub use host::{
    DriverEntry, Handle, Kernel, KernelConfig, KernelError, NativeDriver, PendingIo, ProcessUsage,
    process_usage, remove_temporary_stores,
};
pub use iomgr::{IoResult, MAX_IOCTL_BUFFER};
pub use ke::pool::TagUsage;
pub use ksecdd::store::{CertStore, IssuedCert, StoreError, TestCa, Thumbprint, Validity};
pub use leaks::{Leak, LeakKind, LeakReport, Site, tag_text};
pub use rtl::{LOG_LINES, LogLine};
pub use sddl::Caller;
pub use thread::{KERNEL_NICE, ThreadRanks, thread_ranks};
