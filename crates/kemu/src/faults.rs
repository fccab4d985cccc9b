//! Seeded fault injection: the unpleasant-but-legal schedules Windows can produce, on demand.
//!
//! One seed per kernel drives every choice, so a failing run is replayed by rerunning with the
//! same seed (`KEMU_SEED`). What can be injected:
//! - where a callback that the real routine may deliver inline or later runs: inline on the
//!   caller's thread or deferred to another thread, at PASSIVE or DISPATCH_LEVEL (within what
//!   the routine allows);
//! - pool allocation failure at the Nth counted allocation, or at a seeded rate;
//! - delays before system worker threads pick up work.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How callbacks that may run inline or later are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackSchedule {
    /// Always on the caller's thread, before the call returns.
    Inline,
    /// Always later, on another kernel thread.
    Deferred,
    /// Seeded choice per callback.
    Random,
}

/// The IRQL callbacks that may run at PASSIVE or DISPATCH_LEVEL get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackIrql {
    /// The lowest the routine allows (usually the caller's level).
    Lowest,
    /// DISPATCH_LEVEL whenever the routine allows it.
    Dispatch,
    /// Seeded choice per callback.
    Random,
}

/// Fault plan of one kernel.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Fail exactly the Nth counted pool allocation (1-based).
    pub fail_allocation: Option<u64>,
    /// Fail each counted allocation with this probability (0.0 = never).
    pub allocation_failure_rate: f64,
    /// Where flexible callbacks run.
    pub callbacks: CallbackSchedule,
    /// At what IRQL flexible callbacks run.
    pub callback_irql: CallbackIrql,
    /// Upper bound of a random delay before a worker thread runs a work item.
    pub worker_delay: Duration,
    /// Wedge the Nth asynchronous SSPI call (1-based): it fails after the context went pending
    /// and no callback ever comes — the stuck-context failure mode of real ksecdd.
    pub wedge_sspi_call: Option<u64>,
    /// The first N WskAccept calls fail with STATUS_CONNECTION_RESET (a client that reset
    /// before its connection was taken), each as soon as it is made.
    pub failing_accepts: u64,
    /// How long the LSA takes over each SspiAcquireCredentialsHandleAsyncW (a busy or slow
    /// LSA: certificate lookups, CRL fetches), so a caller can be seen not to wait for it and
    /// its cancellation can be tried while the call is in flight.
    pub credential_delay: Duration,
    /// How long a thread may wait for a spin lock before the kernel stops with
    /// DPC_WATCHDOG_VIOLATION (20 s by default: Windows' DPC watchdog allows 20 s for one DPC
    /// and 120 s at DISPATCH_LEVEL in all; kemu takes the shorter). Not a fault: a lock never
    /// released (or memory reused under it) ends in a report instead of a hang.
    pub spin_watchdog: Duration,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            fail_allocation: None,
            allocation_failure_rate: 0.0,
            callbacks: CallbackSchedule::Random,
            callback_irql: CallbackIrql::Random,
            worker_delay: Duration::ZERO,
            wedge_sspi_call: None,
            failing_accepts: 0,
            credential_delay: Duration::ZERO,
            spin_watchdog: Duration::from_secs(20),
        }
    }
}

impl FaultPlan {
    /// No faults: callbacks deferred at the lowest IRQL, no failures, no delays (for
    /// diagnosing a failure by elimination).
    pub fn none() -> Self {
        FaultPlan {
            callbacks: CallbackSchedule::Deferred,
            callback_irql: CallbackIrql::Lowest,
            ..FaultPlan::default()
        }
    }
}

/// Where one flexible callback runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub inline: bool,
    pub dispatch: bool,
}

/// Runtime state of the plan.
pub(crate) struct Faults {
    plan: FaultPlan,
    seed: u64,
    rng: Mutex<fastrand::Rng>,
    counted_allocations: AtomicU64,
    injected_failures: AtomicU64,
    sspi_calls: AtomicU64,
    accepts: AtomicU64,
}

impl Faults {
    pub fn new(seed: u64, plan: FaultPlan) -> Self {
        Faults {
            plan,
            seed,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            counted_allocations: AtomicU64::new(0),
            injected_failures: AtomicU64::new(0),
            sspi_calls: AtomicU64::new(0),
            accepts: AtomicU64::new(0),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn rng<R>(&self, f: impl FnOnce(&mut fastrand::Rng) -> R) -> R {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut rng)
    }

    /// Counts one fallible allocation and says whether it must fail.
    pub fn allocation_fails(&self) -> bool {
        let n = self.counted_allocations.fetch_add(1, Ordering::AcqRel) + 1;
        let fail = self.plan.fail_allocation == Some(n)
            || (self.plan.allocation_failure_rate > 0.0
                && self.rng(|r| r.f64()) < self.plan.allocation_failure_rate);
        if fail {
            self.injected_failures.fetch_add(1, Ordering::AcqRel);
        }
        fail
    }

    /// Number of counted allocations so far.
    pub fn counted_allocations(&self) -> u64 {
        self.counted_allocations.load(Ordering::Acquire)
    }

    /// Number of allocations failed on purpose so far.
    pub fn injected_failures(&self) -> u64 {
        self.injected_failures.load(Ordering::Acquire)
    }

    /// Chooses where a flexible callback runs. `inline_allowed`: the routine may call back
    /// before returning; `dispatch_allowed`: the callback may run at DISPATCH_LEVEL.
    pub fn place(&self, inline_allowed: bool, dispatch_allowed: bool) -> Placement {
        let inline = inline_allowed
            && match self.plan.callbacks {
                CallbackSchedule::Inline => true,
                CallbackSchedule::Deferred => false,
                CallbackSchedule::Random => self.rng(|r| r.bool()),
            };
        let dispatch = dispatch_allowed
            && match self.plan.callback_irql {
                CallbackIrql::Lowest => false,
                CallbackIrql::Dispatch => true,
                CallbackIrql::Random => self.rng(|r| r.bool()),
            };
        Placement { inline, dispatch }
    }

    /// Counts one asynchronous SSPI call and says whether it must wedge.
    pub fn sspi_call_wedges(&self) -> bool {
        let n = self.sspi_calls.fetch_add(1, Ordering::AcqRel) + 1;
        self.plan.wedge_sspi_call == Some(n)
    }

    /// Counts a WskAccept call: whether the plan fails it.
    pub fn accept_fails(&self) -> bool {
        self.accepts.fetch_add(1, Ordering::AcqRel) < self.plan.failing_accepts
    }

    /// WskAccept calls made so far.
    pub fn accepts(&self) -> u64 {
        self.accepts.load(Ordering::Acquire)
    }

    /// Whether the plan delays work items (then none is run early on the thread that queued it).
    pub fn delays_workers(&self) -> bool {
        !self.plan.worker_delay.is_zero()
    }

    /// The delay before a worker runs its next item.
    pub fn worker_delay(&self) -> Duration {
        let max = self.plan.worker_delay;
        if max.is_zero() {
            return Duration::ZERO;
        }
        let micros = max.as_micros().min(u64::MAX as u128) as u64;
        Duration::from_micros(self.rng(|r| r.u64(0..=micros)))
    }

    /// How long each credential acquisition takes on the LSA thread.
    pub fn credential_delay(&self) -> Duration {
        self.plan.credential_delay
    }

    /// How long a spin lock may be waited for.
    pub fn spin_watchdog(&self) -> Duration {
        self.plan.spin_watchdog
    }
}
