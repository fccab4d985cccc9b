//! The state of one kemu kernel, shared by its threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::bugcheck::{Bugcheck, bugcheck, codes};
use crate::faults::{FaultPlan, Faults};
use crate::io::irp::Irps;
use crate::io::mdl::Mdls;
use crate::io::workitem::WorkItems;
use crate::iomgr::IoManager;
use crate::ke::pool::Pool;
use crate::ke::sync::Dispatcher;
use crate::ke::timer::Timers;
use crate::ke::workers::ThreadPool;
use crate::ksecdd::Ksecdd;
use crate::netio::Netio;
use crate::rtl::DebugLog;
use crate::wdf::Framework;

static NEXT_KERNEL_ID: AtomicU64 = AtomicU64::new(1);

/// Everything one kernel is made of.
/// What host waiters watch: a counter bumped on every state change, and how many sleep on it.
#[derive(Default)]
struct Signal {
    generation: u64,
    waiters: usize,
}

pub(crate) struct Shared {
    pub id: u64,
    pub faults: Faults,
    pub boot_time: Instant,
    pub bugcheck: OnceLock<Bugcheck>,
    signal: (Mutex<Signal>, Condvar),
    sequence: AtomicU64,
    pub stopping: AtomicBool,
    pub pool: Pool,
    pub log: DebugLog,
    pub dispatcher: Dispatcher,
    pub timers: Timers,
    pub irps: Irps,
    pub mdls: Mdls,
    pub work_items: WorkItems,
    pub workers: Arc<ThreadPool>,
    /// The processors' DPC queues and threads.
    pub dpc: crate::ke::processors::Processors,
    pub io: IoManager,
    pub wdf: Framework,
    pub netio: Netio,
    pub ksecdd: Ksecdd,
    pub lsa: Arc<ThreadPool>,
    pub registry: crate::registry::Registry,
    pub callers: crate::callers::Callers,
}

impl Shared {
    pub fn new(seed: u64, plan: FaultPlan, processors: usize) -> Arc<Shared> {
        Arc::new(Shared {
            id: NEXT_KERNEL_ID.fetch_add(1, Ordering::Relaxed),
            faults: Faults::new(seed, plan),
            boot_time: Instant::now(),
            bugcheck: OnceLock::new(),
            signal: (Mutex::new(Signal::default()), Condvar::new()),
            sequence: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            pool: Pool::default(),
            log: DebugLog::default(),
            dispatcher: Dispatcher::default(),
            timers: Timers::default(),
            irps: Irps::default(),
            mdls: Mdls::default(),
            work_items: WorkItems::default(),
            workers: Arc::new(ThreadPool::default()),
            dpc: crate::ke::processors::Processors::new(processors),
            io: IoManager::default(),
            wdf: Framework::default(),
            netio: Netio::default(),
            ksecdd: Ksecdd::default(),
            lsa: Arc::new(ThreadPool::default()),
            registry: crate::registry::Registry::default(),
            callers: Default::default(),
        })
    }

    /// Next kernel-wide sequence number (allocation order).
    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records the first bugcheck and wakes every waiter.
    pub fn record_bugcheck(&self, record: Bugcheck) {
        if self.bugcheck.set(record.clone()).is_ok() && std::env::var_os("KEMU_LOG").is_some() {
            eprintln!("kemu kernel {}: {record}", self.id);
        }
        self.dispatcher.wake_all();
        self.notify();
    }

    /// Wakes host threads waiting for a state change.
    pub fn notify(&self) {
        let mut signal = self.signal.0.lock().unwrap();
        signal.generation += 1;
        let waiting = signal.waiters > 0;
        drop(signal);
        // Every completed job and IRP lands here: skip the futex call when no host thread
        // waits (a waiter registers under the same lock before it sleeps).
        if waiting {
            self.signal.1.notify_all();
        }
    }

    /// Waits (host side) until `ready` returns Some, the kernel bugchecks, or `timeout` passes.
    pub fn wait_for<R>(
        &self,
        timeout: Option<Duration>,
        mut ready: impl FnMut() -> Option<R>,
    ) -> Result<Option<R>, Bugcheck> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let generation = self.signal.0.lock().unwrap().generation;
            if let Some(b) = self.bugcheck.get() {
                return Err(b.clone());
            }
            if let Some(r) = ready() {
                return Ok(Some(r));
            }
            let mut wait = Duration::from_millis(100);
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    return Ok(None);
                }
                wait = wait.min(d - now);
            }
            let mut guard = self.signal.0.lock().unwrap();
            if guard.generation == generation {
                guard.waiters += 1;
                let (mut guard, _) = self.signal.1.wait_timeout(guard, wait).unwrap();
                guard.waiters -= 1;
            }
        }
    }

    /// Freeing `[address, address + size)`: nothing kemu is still using may live there.
    pub fn check_free_range(&self, address: usize, size: usize) {
        if let Some((object, what)) = self.timers.active_in(address, size) {
            bugcheck(
                codes::TIMER_OR_DPC_INVALID,
                [object, address, size, 0],
                format!(
                    "pool block {address:#x} freed while it holds an active {what} at {object:#x}"
                ),
            );
        }
        if let Some(event) = self.dispatcher.waited_in(address, size) {
            bugcheck(
                codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
                [crate::bugcheck::verifier::BAD_WAIT, event, address, size],
                format!(
                    "pool block {address:#x} freed while a thread waits on the object at {event:#x}"
                ),
            );
        }
    }

    /// Milliseconds since boot (for log lines).
    pub fn uptime(&self) -> Duration {
        self.boot_time.elapsed()
    }
}
