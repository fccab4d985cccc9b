//! ktls's one-work-item-per-session scheduler in a test-only driver under kemu: every signalled
//! event is drained exactly once, never concurrently, signals are accepted at DISPATCH_LEVEL, and
//! the worker is freed with its last reference.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use kemu::testing::isolated;
use kemu::{Caller, FaultPlan, Handle, Kernel, KernelConfig};
use ksys::imports::*;
use ksys::ntdef::*;
use ktls::work::{Drain, Worker};
use testkit::test_driver;

/// IOCTL: drain 200 signals (half at DISPATCH_LEVEL) through one worker; out: its runs.
const RUN: u32 = ksys::io::ctl_code(0x9001, 0x801, 0, 0);
/// IOCTL: signal, wait for the drain, signal again, 20,000 times; out: the worker's runs.
const PING_PONG: u32 = ksys::io::ctl_code(0x9001, 0x802, 0, 0);

/// Counts drained events; flags any concurrent drain.
struct Counter {
    seen: AtomicU32,
    drained: AtomicUsize,
    inside: AtomicBool,
    overlaps: AtomicUsize,
}

impl Drain for Counter {
    type Exclusive = ();

    fn drain(worker: &Worker<Self>, _: &mut (), events: u32) {
        let c = worker.target();
        if c.inside.swap(true, Ordering::SeqCst) {
            c.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        c.seen.fetch_or(events, Ordering::SeqCst);
        c.drained
            .fetch_add(events.count_ones() as usize, Ordering::SeqCst);
        // Signalling from inside the drain schedules another pass, never a second runner.
        if events & 1 != 0 {
            worker.signal(1 << 31);
        }
        c.inside.store(false, Ordering::SeqCst);
    }
}

fn run() -> Result<usize, NTSTATUS> {
    let object = test_driver::device();
    let counter = Counter {
        seen: AtomicU32::new(0),
        drained: AtomicUsize::new(0),
        inside: AtomicBool::new(false),
        overlaps: AtomicUsize::new(0),
    };
    // SAFETY: the test driver's DEVICE_OBJECT, live until it unloads after this returns.
    let worker = unsafe { Worker::try_new(object, counter, ()) }?;
    let mut lock: KSPIN_LOCK = 0;
    for round in 0..200u32 {
        let bit = 1u32 << (round % 30);
        if round % 2 == 0 {
            worker.signal(bit);
        } else {
            // SAFETY: a local spin lock: signalling at DISPATCH_LEVEL is what completion paths do.
            unsafe {
                let old = KeAcquireSpinLockRaiseToDpc(&mut lock);
                worker.signal(bit);
                KeReleaseSpinLock(&mut lock, old);
            }
        }
    }
    worker.signal(1);
    let delay = -10_000i64;
    for _ in 0..2000 {
        if worker.target().seen.load(Ordering::SeqCst) == 0x3FFF_FFFF | (1 << 31) {
            break;
        }
        // SAFETY: a short PASSIVE_LEVEL delay.
        unsafe { KeDelayExecutionThread(0, 0, &delay) };
    }
    let c = worker.target();
    let all = c.seen.load(Ordering::SeqCst);
    if all != (0x3FFF_FFFF | (1 << 31)) || c.overlaps.load(Ordering::SeqCst) != 0 {
        return Err(STATUS_UNSUCCESSFUL);
    }
    Ok(worker.runs() as usize)
}

/// Counts drains (one event each).
struct Pong {
    drained: AtomicUsize,
}

impl Drain for Pong {
    type Exclusive = ();

    fn drain(worker: &Worker<Self>, _: &mut (), _events: u32) {
        worker.target().drained.fetch_add(1, Ordering::SeqCst);
    }
}

/// Signals, waits for the drain, signals again at once — so the next signal races the
/// routine going idle, every time. A lost signal leaves the count stuck.
fn ping_pong() -> Result<usize, NTSTATUS> {
    const ROUNDS: usize = 20_000;
    let object = test_driver::device();
    let pong = Pong {
        drained: AtomicUsize::new(0),
    };
    // SAFETY: the test driver's DEVICE_OBJECT, live until it unloads after this returns.
    let worker = unsafe { Worker::try_new(object, pong, ()) }?;
    let delay = -10_000i64;
    for round in 1..=ROUNDS {
        worker.signal(1);
        let mut spins = 0u32;
        let mut sleeps = 0u32;
        while worker.target().drained.load(Ordering::SeqCst) < round {
            if spins < 100_000 {
                spins += 1;
                core::hint::spin_loop();
            } else if sleeps < 2000 {
                sleeps += 1;
                // SAFETY: a short PASSIVE_LEVEL delay.
                unsafe { KeDelayExecutionThread(0, 0, &delay) };
            } else {
                return Err(STATUS_IO_TIMEOUT);
            }
        }
    }
    Ok(worker.runs() as usize)
}

/// The test driver's IOCTLs for this suite.
fn ioctl(code: u32) -> Result<u64, NTSTATUS> {
    let runs = match code {
        RUN => run()?,
        PING_PONG => ping_pong()?,
        _ => return Err(STATUS_INVALID_DEVICE_REQUEST),
    };
    Ok(runs as u64)
}

/// A kernel with four system workers and the test driver loaded, and a handle to its device.
fn boot_test_driver(faults: FaultPlan) -> (Kernel, Handle) {
    let kernel = testkit::boot(KernelConfig {
        faults,
        workers: 4,
        ..KernelConfig::from_env()
    });
    test_driver::set_ioctl_handler(ioctl);
    test_driver::load(&kernel, "ktlstest").unwrap();
    let h = kernel
        .open(test_driver::PATH, Caller::Administrator)
        .unwrap();
    (kernel, h)
}

#[test]
fn every_event_drained_once_never_concurrently_and_the_worker_freed() {
    isolated(
        "every_event_drained_once_never_concurrently_and_the_worker_freed",
        || {
            for delay in [0u64, 2] {
                let (kernel, h) = boot_test_driver(FaultPlan {
                    worker_delay: std::time::Duration::from_millis(delay),
                    ..FaultPlan::default()
                });
                let r = kernel.ioctl(h, RUN, &[], 8).unwrap();
                assert_eq!(r.status, STATUS_SUCCESS, "delay {delay}");
                let runs = u64::from_le_bytes(r.output[..8].try_into().unwrap());
                assert!(runs >= 1, "{runs}");
                kernel.close(h).unwrap();
                kernel
                    .shutdown()
                    .unwrap_or_else(|e| panic!("delay {delay}: {e}"));
            }
        },
    );
}

#[test]
fn a_signal_racing_the_routine_going_idle_is_never_lost() {
    isolated(
        "a_signal_racing_the_routine_going_idle_is_never_lost",
        || {
            let (kernel, h) = boot_test_driver(FaultPlan::default());
            let r = kernel.ioctl(h, PING_PONG, &[], 8).unwrap();
            assert_eq!(r.status, STATUS_SUCCESS, "a signal was lost");
            kernel.close(h).unwrap();
            kernel.shutdown().unwrap();
        },
    );
}
