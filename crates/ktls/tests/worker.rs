//! ktls's one-work-item-per-session scheduler in a test-only driver under kemu: every signalled
//! event is drained exactly once, never concurrently, signals are accepted at DISPATCH_LEVEL, and
//! the worker is freed with its last reference.

use kemu::testing::isolated;
use kemu::{Caller, FaultPlan, Handle, Kernel, KernelConfig, NativeDriver};
use ksys::ntdef::STATUS_SUCCESS;

mod test_driver {
    use core::ffi::c_void;
    use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

    use ksys::imports::*;
    use ksys::kmdf::{self, ControlDeviceConfig, DriverEntryArgs, Request};
    use ksys::ntdef::*;
    use ksys::utf16;
    use ksys::wdf::functions::WdfDeviceWdmGetDeviceObject;
    use ksys::wdf::types::*;
    use ktls::work::{Drain, Worker};

    pub const RUN: u32 = ksys::io::ctl_code(0x9001, 0x801, 0, 0);
    pub const PING_PONG: u32 = ksys::io::ctl_code(0x9001, 0x802, 0, 0);
    static DEVICE: AtomicUsize = AtomicUsize::new(0);

    const CONFIG: ControlDeviceConfig = ControlDeviceConfig {
        name: utf16!("\\Device\\KtlsTest"),
        symbolic_link: utf16!("\\DosDevices\\KtlsTest"),
        sddl: utf16!("D:P(A;;GA;;;SY)(A;;GA;;;BA)"),
        file_callbacks: None,
    };

    pub fn driver_entry(args: &DriverEntryArgs) -> Result<(), NTSTATUS> {
        let driver = kmdf::create_non_pnp_driver(args, unload)?;
        let device = kmdf::create_control_device(driver, &CONFIG)?;
        kmdf::create_default_parallel_queue(device, device_control)?;
        DEVICE.store(device.as_raw() as usize, Ordering::SeqCst);
        kmdf::finish_initializing(device);
        Ok(())
    }

    extern "win64" fn unload(_driver: WDFDRIVER) {}

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
        // SAFETY: the device stored at DriverEntry is live until unload.
        let object = unsafe {
            WdfDeviceWdmGetDeviceObject(WDFDEVICE::from_raw(
                DEVICE.load(Ordering::SeqCst) as *mut c_void
            ))
        };
        let counter = Counter {
            seen: AtomicU32::new(0),
            drained: AtomicUsize::new(0),
            inside: AtomicBool::new(false),
            overlaps: AtomicUsize::new(0),
        };
        // SAFETY: the control device's live DEVICE_OBJECT.
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
        // SAFETY: the device stored at DriverEntry is live until unload.
        let object = unsafe {
            WdfDeviceWdmGetDeviceObject(WDFDEVICE::from_raw(
                DEVICE.load(Ordering::SeqCst) as *mut c_void
            ))
        };
        let pong = Pong {
            drained: AtomicUsize::new(0),
        };
        // SAFETY: the control device's live DEVICE_OBJECT.
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

    extern "win64" fn device_control(
        _queue: WDFQUEUE,
        req: WDFREQUEST,
        _out: usize,
        _in: usize,
        code: u32,
    ) {
        let r = Request::from_presented(req);
        let outcome = if code == RUN {
            run()
        } else if code == PING_PONG {
            ping_pong()
        } else {
            Err(STATUS_INVALID_DEVICE_REQUEST)
        };
        match outcome.and_then(|runs| r.write_output(&(runs as u64).to_le_bytes())) {
            Ok(n) => r.complete(STATUS_SUCCESS, n),
            Err(status) => r.complete(status, 0),
        }
    }
}

ksys::kmdf_driver_entry!(test_driver::driver_entry);

/// A kernel with four system workers and the test driver loaded, and a handle to its device.
fn boot_test_driver(faults: FaultPlan) -> (Kernel, Handle) {
    let kernel = Kernel::boot(KernelConfig {
        faults,
        workers: 4,
        ..KernelConfig::from_env()
    });
    kernel
        .load(NativeDriver {
            service_name: "ktlstest",
            entry: FxDriverEntry,
            imports: ksys::imports::IMPORT_DIRECTORY,
        })
        .unwrap();
    let h = kernel.open(r"\\.\KtlsTest", Caller::Administrator).unwrap();
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
                let r = kernel.ioctl(h, test_driver::RUN, &[], 8).unwrap();
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
            let r = kernel.ioctl(h, test_driver::PING_PONG, &[], 8).unwrap();
            assert_eq!(r.status, STATUS_SUCCESS, "a signal was lost");
            kernel.close(h).unwrap();
            kernel.shutdown().unwrap();
        },
    );
}
