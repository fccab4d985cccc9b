//! Kernel settings: the seed, the fault plan, workers, the certificate store, where IOCTLs
//! are dispatched — from the environment or given.

use super::*;

/// Kernel settings.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// Seed of every fault-injection choice.
    pub seed: u64,
    /// What to inject.
    pub faults: FaultPlan,
    /// Number of system worker threads.
    pub workers: usize,
    /// Processors modelled: each has its own DPC queue and thread, and a connection's deferred
    /// WSK completions go to one of them (see `ke::processors`). Two by default, as the
    /// machines this runs on have; `KEMU_PROCESSORS` sets it.
    pub processors: usize,
    /// The machine certificate store's folder; None: a fresh temporary store per kernel
    /// (removed at shutdown).
    pub cert_store: Option<std::path::PathBuf>,
    /// IOCTLs are dispatched on the calling host thread, as Windows runs a DeviceIoControl on
    /// the caller's thread (true by default). A bugcheck on such a thread cannot return to its
    /// caller: kemu prints it and the process exits with status 5. False: a kemu caller thread
    /// takes each IOCTL and the caller gets `KernelError::Bugcheck` (for tests that provoke
    /// bugchecks through IOCTLs).
    pub dispatch_on_caller: bool,
}

impl KernelConfig {
    /// Default plan with the seed from `KEMU_SEED` (decimal or 0x-hex), else a fixed seed, so a
    /// suite can be rerun under many seeds.
    pub fn from_env() -> KernelConfig {
        Self::try_from_env().unwrap_or_else(|_| Self::with_seed(0x5EED))
    }

    /// As [`Self::from_env`], but a `KEMU_SEED` that is not a number is an error (for tools
    /// that must not silently run under another seed than the user asked for).
    pub fn try_from_env() -> Result<KernelConfig, String> {
        let seed = match std::env::var("KEMU_SEED") {
            Err(_) => 0x5EED,
            Ok(text) => match text.trim().strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => text.trim().parse().ok(),
            }
            .ok_or_else(|| {
                format!("KEMU_SEED={text:?}: give a 64-bit number, decimal or 0x-hex")
            })?,
        };
        let mut config = Self::with_seed(seed);
        if let Ok(text) = std::env::var("KEMU_PROCESSORS") {
            config.processors = text
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| format!("KEMU_PROCESSORS={text:?}: give a number from 1 to 64"))?;
        }
        Ok(config)
    }

    fn with_seed(seed: u64) -> KernelConfig {
        KernelConfig {
            seed,
            faults: FaultPlan::default(),
            workers: 2,
            processors: 2,
            cert_store: None,
            dispatch_on_caller: true,
        }
    }
}
