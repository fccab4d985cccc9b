//! Spin locks (real mutual exclusion, IRQL raising, owner checks), events and waits, delays and
//! the interrupt-time clock.

use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ksys::io::KEVENT;
use ksys::ntdef::{KIRQL, KSPIN_LOCK, NTSTATUS, STATUS_SUCCESS, STATUS_TIMEOUT};

use crate::bugcheck::{bugcheck, codes, park_forever, verifier};
use crate::thread::{self, APC, DISPATCH};

/// Dispatcher object types kemu understands (byte 0 of DISPATCHER_HEADER).
pub(crate) const EVENT_NOTIFICATION: u8 = 0;
pub(crate) const EVENT_SYNCHRONIZATION: u8 = 1;
pub(crate) const TIMER_NOTIFICATION: u8 = 8;
pub(crate) const TIMER_SYNCHRONIZATION: u8 = 9;

/// The dispatcher lock of one kernel: every signal state change happens under it and wakes
/// every waiter, who rechecks its own object.
#[derive(Default)]
pub(crate) struct Dispatcher {
    lock: Mutex<Vec<usize>>,
    changed: Condvar,
}

fn header_type(object: *mut c_void) -> &'static AtomicU8 {
    // SAFETY: callers pass a live dispatcher object (KEVENT/KTIMER), whose first byte is the type.
    unsafe { AtomicU8::from_ptr(object as *mut u8) }
}

fn signal_state(object: *mut c_void) -> &'static AtomicI32 {
    // SAFETY: SignalState is the aligned i32 at offset 4 of every dispatcher header.
    unsafe { AtomicI32::from_ptr((object as *mut u8).add(4) as *mut i32) }
}

impl Dispatcher {
    /// Sets an object's signal state under the dispatcher lock and wakes waiters; returns the
    /// previous state.
    pub fn signal(&self, object: *mut c_void, state: i32) -> i32 {
        let guard = self.lock.lock().unwrap();
        let previous = signal_state(object).swap(state, Ordering::AcqRel);
        drop(guard);
        if state != 0 {
            self.changed.notify_all();
            // A work item running on the WSK poller waits by polling (see `wait`).
            if let Some(thread) = thread::try_state() {
                thread.kernel.netio.poller.wake_if_waiting();
            }
        }
        previous
    }

    /// Wakes every waiter (bugcheck, shutdown).
    pub fn wake_all(&self) {
        self.changed.notify_all();
    }

    /// An object being waited on inside `[address, address + size)`, if any.
    pub fn waited_in(&self, address: usize, size: usize) -> Option<usize> {
        let waiting = self.lock.lock().unwrap();
        waiting
            .iter()
            .copied()
            .find(|&o| o >= address && o < address + size)
    }

    /// Waits until `object` is signaled or `deadline` passes.
    fn wait(&self, object: *mut c_void, deadline: Option<Instant>) -> NTSTATUS {
        let kernel = thread::kernel();
        let kind = header_type(object).load(Ordering::Acquire);
        let auto_reset = kind == EVENT_SYNCHRONIZATION || kind == TIMER_SYNCHRONIZATION;
        let mut waiting = self.lock.lock().unwrap();
        waiting.push(object as usize);
        let status = loop {
            if kernel.bugcheck.get().is_some() {
                drop(waiting);
                park_forever();
            }
            let state = signal_state(object);
            if state.load(Ordering::Acquire) > 0 {
                if auto_reset {
                    state.store(0, Ordering::Release);
                }
                break STATUS_SUCCESS;
            }
            let slice = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break STATUS_TIMEOUT;
                    }
                    (d - now).min(Duration::from_millis(200))
                }
                None => Duration::from_millis(200),
            };
            // On the WSK poller (a work item it runs, see `ke::workers`, waits): deliver socket
            // events meanwhile, as the processors a Windows wait leaves free still take the
            // network's interrupts — the wait may be for one of those completions.
            drop(waiting);
            let delivered = crate::netio::poller::wait_delivering(&kernel, slice)
                || crate::ke::workers::wait_running_queued(slice);
            waiting = self.lock.lock().unwrap();
            if !delivered {
                waiting = self.changed.wait_timeout(waiting, slice).unwrap().0;
            }
        };
        if let Some(i) = waiting.iter().position(|&o| o == object as usize) {
            waiting.swap_remove(i);
        }
        status
    }
}

/// Converts a kernel timeout (100 ns units; negative relative, positive absolute system time)
/// into a deadline.
pub(crate) fn deadline_of(timeout: i64) -> Instant {
    if timeout <= 0 {
        Instant::now() + Duration::from_nanos(timeout.unsigned_abs().saturating_mul(100))
    } else {
        // Absolute: 100 ns units since 1601-01-01.
        const EPOCH_DIFF_100NS: i64 = 116_444_736_000_000_000;
        let now_100ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| (d.as_nanos() / 100) as i64)
            .unwrap_or(0)
            + EPOCH_DIFF_100NS;
        let remaining = (timeout - now_100ns).max(0) as u64;
        Instant::now() + Duration::from_nanos(remaining.saturating_mul(100))
    }
}

/// Owner token of the calling thread (never 0).
fn owner_token() -> usize {
    std::rc::Rc::as_ptr(&thread::state()) as usize | 1
}

fn lock_word(lock: *mut KSPIN_LOCK) -> &'static AtomicUsize {
    // SAFETY: the caller passes a live, aligned KSPIN_LOCK (a usize).
    unsafe { AtomicUsize::from_ptr(lock) }
}

fn acquire(lock: *mut KSPIN_LOCK, routine: &str) {
    if lock.is_null() {
        bugcheck(
            codes::SPIN_LOCK_NOT_OWNED,
            [0, 0, 0, 0],
            format!("{routine}: NULL spin lock"),
        );
    }
    let me = owner_token();
    let word = lock_word(lock);
    let kernel = thread::kernel();
    let mut spins = 0u32;
    let mut waiting_since: Option<Instant> = None;
    loop {
        match word.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(owner) if owner == me => bugcheck(
                codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
                [0x200, lock as usize, 0, 0],
                format!(
                    "{routine}: spin lock {:#x} acquired recursively (deadlock)",
                    lock as usize
                ),
            ),
            Err(owner) => {
                if kernel.bugcheck.get().is_some() {
                    park_forever();
                }
                if owner == super::pool::FREED_WORD {
                    bugcheck(
                        codes::PAGE_FAULT_IN_FREED_SPECIAL_POOL,
                        [lock as usize, 0, 0, 0],
                        format!(
                            "{routine}: spin lock {:#x} lies in freed pool (use after free)",
                            lock as usize
                        ),
                    );
                }
                spins = spins.wrapping_add(1);
                if spins % 64 == 0 {
                    let started = *waiting_since.get_or_insert_with(Instant::now);
                    let limit = kernel.faults.spin_watchdog();
                    if started.elapsed() >= limit {
                        bugcheck(
                            codes::DPC_WATCHDOG_VIOLATION,
                            [1, 0, 0, lock as usize],
                            format!(
                                "{routine}: spin lock {:#x} held by another thread for over {:.1} s \
                                 (a lock never released, or memory reused under it)",
                                lock as usize,
                                limit.as_secs_f64()
                            ),
                        );
                    }
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }
    let s = thread::state();
    s.spin_locks_held.set(s.spin_locks_held.get() + 1);
}

fn release(lock: *mut KSPIN_LOCK, routine: &str) {
    let me = owner_token();
    let word = if lock.is_null() {
        None
    } else {
        Some(lock_word(lock))
    };
    match word {
        Some(w) if w.load(Ordering::Acquire) == me => {
            w.store(0, Ordering::Release);
            let s = thread::state();
            s.spin_locks_held
                .set(s.spin_locks_held.get().saturating_sub(1));
        }
        _ => bugcheck(
            codes::SPIN_LOCK_NOT_OWNED,
            [lock as usize, 0, 0, 0],
            format!(
                "{routine}: spin lock {:#x} is not held by this thread",
                lock as usize
            ),
        ),
    }
}

/// ntoskrnl!KeGetCurrentIrql.
pub(crate) unsafe extern "win64" fn ke_get_current_irql() -> KIRQL {
    thread::irql()
}

/// ntoskrnl!KeAcquireSpinLockRaiseToDpc.
pub(crate) unsafe extern "win64" fn ke_acquire_spin_lock_raise_to_dpc(
    lock: *mut KSPIN_LOCK,
) -> KIRQL {
    thread::require_at_most("KeAcquireSpinLockRaiseToDpc", DISPATCH);
    let old = thread::set_irql(DISPATCH);
    acquire(lock, "KeAcquireSpinLockRaiseToDpc");
    old
}

/// ntoskrnl!KeReleaseSpinLock.
pub(crate) unsafe extern "win64" fn ke_release_spin_lock(lock: *mut KSPIN_LOCK, old_irql: KIRQL) {
    thread::require_exactly("KeReleaseSpinLock", DISPATCH);
    if old_irql > DISPATCH {
        bugcheck(
            codes::IRQL_NOT_LESS_OR_EQUAL,
            [0, old_irql as usize, DISPATCH as usize, 0],
            format!("KeReleaseSpinLock: NewIrql {old_irql} is above DISPATCH_LEVEL"),
        );
    }
    release(lock, "KeReleaseSpinLock");
    thread::set_irql(old_irql);
}

/// ntoskrnl!KeAcquireSpinLockAtDpcLevel.
pub(crate) unsafe extern "win64" fn ke_acquire_spin_lock_at_dpc_level(lock: *mut KSPIN_LOCK) {
    thread::require_exactly("KeAcquireSpinLockAtDpcLevel", DISPATCH);
    acquire(lock, "KeAcquireSpinLockAtDpcLevel");
}

/// ntoskrnl!KeReleaseSpinLockFromDpcLevel.
pub(crate) unsafe extern "win64" fn ke_release_spin_lock_from_dpc_level(lock: *mut KSPIN_LOCK) {
    thread::require_exactly("KeReleaseSpinLockFromDpcLevel", DISPATCH);
    release(lock, "KeReleaseSpinLockFromDpcLevel");
}

/// ntoskrnl!KeInitializeEvent.
pub(crate) unsafe extern "win64" fn ke_initialize_event(event: *mut KEVENT, kind: u32, state: u8) {
    if kind > 1 {
        bugcheck(
            codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
            [verifier::BAD_WAIT, event as usize, kind as usize, 0],
            format!(
                "KeInitializeEvent: type {kind} is neither NotificationEvent nor SynchronizationEvent"
            ),
        );
    }
    // SAFETY: the caller passes storage for a KEVENT (24 bytes, 8-aligned).
    unsafe {
        std::ptr::write_bytes(event as *mut u8, 0, std::mem::size_of::<KEVENT>());
        let p = event as *mut u8;
        *p = kind as u8;
        *p.add(2) = (std::mem::size_of::<KEVENT>() / 4) as u8;
        let list = p.add(8) as *mut usize;
        *list = list as usize;
        *list.add(1) = list as usize;
    }
    signal_state(event as *mut c_void).store(i32::from(state != 0), Ordering::Release);
}

fn check_event(event: *mut KEVENT, routine: &str) {
    let kind = header_type(event as *mut c_void).load(Ordering::Acquire);
    if event.is_null() || kind > EVENT_SYNCHRONIZATION {
        bugcheck(
            codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
            [verifier::BAD_WAIT, event as usize, kind as usize, 0],
            format!(
                "{routine}: {:#x} is not an initialized event",
                event as usize
            ),
        );
    }
}

/// ntoskrnl!KeSetEvent.
pub(crate) unsafe extern "win64" fn ke_set_event(
    event: *mut KEVENT,
    _increment: i32,
    _wait: u8,
) -> i32 {
    thread::require_at_most("KeSetEvent", DISPATCH);
    check_event(event, "KeSetEvent");
    thread::kernel().dispatcher.signal(event as *mut c_void, 1)
}

/// ntoskrnl!KeClearEvent.
pub(crate) unsafe extern "win64" fn ke_clear_event(event: *mut KEVENT) {
    thread::require_at_most("KeClearEvent", DISPATCH);
    check_event(event, "KeClearEvent");
    thread::kernel().dispatcher.signal(event as *mut c_void, 0);
}

/// ntoskrnl!KeWaitForSingleObject (events and timers).
pub(crate) unsafe extern "win64" fn ke_wait_for_single_object(
    object: *mut c_void,
    _reason: u32,
    _mode: i8,
    _alertable: u8,
    timeout: *const i64,
) -> NTSTATUS {
    let timeout = if timeout.is_null() {
        None
    } else {
        // SAFETY: a non-NULL timeout points to the caller's LARGE_INTEGER.
        Some(unsafe { *timeout })
    };
    if timeout == Some(0) {
        thread::require_at_most("KeWaitForSingleObject (zero timeout)", DISPATCH);
    } else {
        thread::require_at_most("KeWaitForSingleObject", APC);
    }
    let kind = if object.is_null() {
        u8::MAX
    } else {
        header_type(object).load(Ordering::Acquire)
    };
    if !matches!(
        kind,
        EVENT_NOTIFICATION | EVENT_SYNCHRONIZATION | TIMER_NOTIFICATION | TIMER_SYNCHRONIZATION
    ) {
        bugcheck(
            codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
            [verifier::BAD_WAIT, object as usize, kind as usize, 0],
            format!(
                "KeWaitForSingleObject: {:#x} is not an event or timer kemu knows",
                object as usize
            ),
        );
    }
    if thread::state().spin_locks_held.get() > 0 && timeout != Some(0) {
        bugcheck(
            codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
            [verifier::BAD_WAIT, object as usize, 0, 0],
            "KeWaitForSingleObject: waiting while holding a spin lock".into(),
        );
    }
    let deadline = timeout.map(deadline_of);
    thread::kernel().dispatcher.wait(object, deadline)
}

/// ntoskrnl!KeDelayExecutionThread.
pub(crate) unsafe extern "win64" fn ke_delay_execution_thread(
    _mode: i8,
    _alertable: u8,
    interval: *const i64,
) -> NTSTATUS {
    thread::require_at_most("KeDelayExecutionThread", APC);
    if interval.is_null() {
        bugcheck(
            codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
            [verifier::BAD_WAIT, 0, 0, 0],
            "KeDelayExecutionThread: NULL interval".into(),
        );
    }
    // SAFETY: checked non-NULL; points to the caller's LARGE_INTEGER.
    let deadline = deadline_of(unsafe { *interval });
    let kernel = thread::kernel();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if kernel.bugcheck.get().is_some() {
            park_forever();
        }
        let slice = (deadline - now).min(Duration::from_millis(100));
        // On the WSK poller, sleeping would stop the network: deliver meanwhile (see `wait`).
        if !crate::netio::poller::wait_delivering(&kernel, slice)
            && !crate::ke::workers::wait_running_queued(slice)
        {
            std::thread::sleep(slice);
        }
    }
    STATUS_SUCCESS
}

/// ntoskrnl!KeQueryUnbiasedInterruptTime: 100 ns units since boot (never goes backwards).
pub(crate) unsafe extern "win64" fn ke_query_unbiased_interrupt_time() -> u64 {
    (thread::kernel().uptime().as_nanos() / 100) as u64
}
