//! ktls's one-work-item-per-session scheduler in a test-only driver under kemu: every signalled
//! event is drained exactly once, never concurrently, signals are accepted at DISPATCH_LEVEL, and
//! the worker is freed with its last reference; a hold defers signals and, released at
//! PASSIVE_LEVEL, drains on the releasing thread (a bounded number of passes), at DISPATCH_LEVEL
//! hands over to the work item.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use kemu::testing::isolated;
use kemu::{Caller, FaultPlan, Handle, Kernel, KernelConfig};
use ksys::imports::*;
use ksys::ntdef::*;
use ktls::work::{Drain, INLINE_PASSES, Worker};
use testkit::test_driver;

/// IOCTL: drain 200 signals (half at DISPATCH_LEVEL) through one worker; out: its runs.
const RUN: u32 = ksys::io::ctl_code(0x9001, 0x801, 0, 0);
/// IOCTL: signal, wait for the drain, signal again, 20,000 times; out: the worker's runs.
const PING_PONG: u32 = ksys::io::ctl_code(0x9001, 0x802, 0, 0);
/// IOCTL: signals under a hold, the hold released at PASSIVE then at DISPATCH_LEVEL; out: 0, or
/// the number of the check that failed.
const HOLD: u32 = ksys::io::ctl_code(0x9001, 0x803, 0, 0);
/// IOCTL: a drain that signals itself again 1,000 times, started by releasing a hold; out:
/// drains made on the releasing thread << 32 | all drains made.
const BOUNDED: u32 = ksys::io::ctl_code(0x9001, 0x804, 0, 0);

std::thread_local! {
    /// Set on the thread that releases a hold in the BOUNDED test.
    static RELEASING: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Counts drained events; flags any concurrent drain.
struct Counter {
    seen: AtomicU32,
    drained: AtomicUsize,
    inside: AtomicBool,
    overlaps: AtomicUsize,
}

impl Counter {
    fn new() -> Counter {
        Counter {
            seen: AtomicU32::new(0),
            drained: AtomicUsize::new(0),
            inside: AtomicBool::new(false),
            overlaps: AtomicUsize::new(0),
        }
    }
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
    let counter = Counter::new();
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

/// Waits (PASSIVE_LEVEL, up to `ms` milliseconds) until `done` holds.
fn wait_until(ms: u32, done: impl Fn() -> bool) -> bool {
    let delay = -10_000i64;
    for _ in 0..ms {
        if done() {
            return true;
        }
        // SAFETY: a short PASSIVE_LEVEL delay.
        unsafe { KeDelayExecutionThread(0, 0, &delay) };
    }
    done()
}

/// Runs `f` at DISPATCH_LEVEL (under a local spin lock), as a completion path would.
fn at_dispatch(f: impl FnOnce()) {
    let mut lock: KSPIN_LOCK = 0;
    // SAFETY: a local spin lock, released right after.
    unsafe {
        let old = KeAcquireSpinLockRaiseToDpc(&mut lock);
        f();
        KeReleaseSpinLock(&mut lock, old);
    }
}

fn hold() -> Result<usize, NTSTATUS> {
    let counter = Counter::new();
    // SAFETY: the test driver's DEVICE_OBJECT, live until it unloads after this returns.
    let worker = unsafe { Worker::try_new(test_driver::device(), counter, ()) }?;
    let seen = || worker.target().seen.load(Ordering::SeqCst);
    let held = worker.hold();
    worker.signal(2);
    at_dispatch(|| worker.signal(4));
    // Nothing runs while held, however long it is held.
    if wait_until(50, || seen() != 0) || worker.runs() != 0 {
        return Ok(1);
    }
    drop(held);
    // Released at PASSIVE_LEVEL: drained right here, before the release returned.
    if seen() != 6 || worker.runs() != 1 || worker.inline_runs() != 1 {
        return Ok(2);
    }
    let held = worker.hold();
    worker.signal(8);
    at_dispatch(|| drop(held));
    // Released at DISPATCH_LEVEL: the work item drains it.
    if !wait_until(2000, || seen() & 8 != 0) {
        return Ok(3);
    }
    if worker.inline_runs() != 1 || worker.runs() != 2 {
        return Ok(4);
    }
    if worker.target().overlaps.load(Ordering::SeqCst) != 0 {
        return Ok(5);
    }
    // Two holds (on a worker that never ran, so no run is under way): only the last release
    // drains.
    let counter = Counter::new();
    // SAFETY: as above.
    let worker = unsafe { Worker::try_new(test_driver::device(), counter, ()) }?;
    let seen = || worker.target().seen.load(Ordering::SeqCst);
    let (first, second) = (worker.hold(), worker.hold());
    worker.signal(16);
    drop(first);
    if seen() != 0 {
        return Ok(6);
    }
    drop(second);
    if seen() != 16 || worker.inline_runs() != 1 {
        return Ok(7);
    }
    Ok(0)
}

/// A drain that signals itself again until it has run `LIMIT` times.
struct Relay {
    drains: AtomicUsize,
    on_releasing_thread: AtomicUsize,
}

impl Relay {
    const LIMIT: usize = 1000;
}

impl Drain for Relay {
    type Exclusive = ();

    fn drain(worker: &Worker<Self>, _: &mut (), _events: u32) {
        let r = worker.target();
        if RELEASING.with(|c| c.get()) {
            r.on_releasing_thread.fetch_add(1, Ordering::SeqCst);
        }
        if r.drains.fetch_add(1, Ordering::SeqCst) + 1 < Relay::LIMIT {
            worker.signal(1);
        }
    }
}

fn bounded() -> Result<usize, NTSTATUS> {
    let relay = Relay {
        drains: AtomicUsize::new(0),
        on_releasing_thread: AtomicUsize::new(0),
    };
    // SAFETY: the test driver's DEVICE_OBJECT, live until it unloads after this returns.
    let worker = unsafe { Worker::try_new(test_driver::device(), relay, ()) }?;
    let held = worker.hold();
    worker.signal(1);
    RELEASING.with(|c| c.set(true));
    drop(held);
    RELEASING.with(|c| c.set(false));
    let r = worker.target();
    if !wait_until(2000, || r.drains.load(Ordering::SeqCst) == Relay::LIMIT) {
        return Err(STATUS_IO_TIMEOUT);
    }
    Ok((r.on_releasing_thread.load(Ordering::SeqCst) << 32) | r.drains.load(Ordering::SeqCst))
}

/// The test driver's IOCTLs for this suite.
fn ioctl(code: u32) -> Result<u64, NTSTATUS> {
    let runs = match code {
        RUN => run()?,
        PING_PONG => ping_pong()?,
        HOLD => hold()?,
        BOUNDED => bounded()?,
        _ => return Err(STATUS_INVALID_DEVICE_REQUEST),
    };
    Ok(runs as u64)
}

/// Boots the test driver (default fault plan), sends `code` once and returns its 8-byte output.
fn one_ioctl(code: u32) -> u64 {
    let (kernel, h) = boot_test_driver(FaultPlan::default());
    let r = kernel.ioctl(h, code, &[], 8).unwrap();
    assert_eq!(r.status, STATUS_SUCCESS, "IOCTL {code:#x}");
    kernel.close(h).unwrap();
    kernel.shutdown().unwrap();
    u64::from_le_bytes(r.output[..8].try_into().unwrap())
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

#[test]
fn a_held_worker_defers_signals_and_its_release_drains_inline_at_passive_only() {
    isolated(
        "a_held_worker_defers_signals_and_its_release_drains_inline_at_passive_only",
        || {
            let failed = one_ioctl(HOLD);
            assert_eq!(failed, 0, "check {failed} of the HOLD IOCTL failed");
        },
    );
}

#[test]
fn a_release_drains_at_most_inline_passes_on_its_thread_and_the_work_item_the_rest() {
    isolated(
        "a_release_drains_at_most_inline_passes_on_its_thread_and_the_work_item_the_rest",
        || {
            let v = one_ioctl(BOUNDED);
            assert_eq!(v & 0xFFFF_FFFF, 1000, "every drain made");
            assert_eq!(
                v >> 32,
                u64::from(INLINE_PASSES),
                "drains on the releasing thread"
            );
        },
    );
}
