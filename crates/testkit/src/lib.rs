//! What the test suites share, so each suite states only what it tests:
//!
//! - [`Pki`]: a CA the kernel trusts, a server certificate (in the machine store, by
//!   thumbprint) for the names asked, the same as PEM files for peer programs (openssl, curl),
//!   and the leaf's SHA-256 for pinning;
//! - [`test_driver`]: a minimal KMDF driver — a control device and nothing else — whose device
//!   object ktls's sessions, listeners and work items can run on;
//! - [`boot`]: a kernel from the environment's configuration (seed, fault plan) or a given one.
//!
//! Host only (kemu): empty when built for Windows.

#![cfg(not(windows))]

pub mod pki;
pub mod test_driver;

pub use pki::Pki;

use kemu::{FaultPlan, Kernel, KernelConfig};

/// A kernel booted with `config` (kemu's exports bound for natively linked driver code first).
pub fn boot(config: KernelConfig) -> Kernel {
    kemu::exports::bind_native(ksys::imports::IMPORT_DIRECTORY);
    Kernel::boot(config)
}

/// A kernel with the environment's configuration (seed, dispatch) and this fault plan.
pub fn boot_with_faults(faults: FaultPlan) -> Kernel {
    boot(KernelConfig {
        faults,
        ..KernelConfig::from_env()
    })
}
