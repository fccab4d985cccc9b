//! Kernel timers and DPCs: KeInitializeTimer / KeSetTimer / KeCancelTimer / KeInitializeDpc.
//!
//! A timer thread per kernel fires due timers: it signals the timer object (waiters wake) and
//! queues its DPC, which the DPC thread runs at DISPATCH_LEVEL. A DPC already queued is not
//! queued again (KeInsertQueueDpc semantics); cancelling a timer does not dequeue its DPC.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ksys::ktimer::{KDPC, KTIMER, PKDEFERRED_ROUTINE};

use crate::bugcheck::{bugcheck, codes, verifier};
use crate::ke::sync::{TIMER_NOTIFICATION, deadline_of};
use crate::kernel::Shared;
use crate::leaks::{Leak, LeakKind, Site};
use crate::thread::{self, DISPATCH};

const DPC_TYPE: u8 = 0x13;
const DPC_ROUTINE_OFFSET: usize = 0x18;
const DPC_CONTEXT_OFFSET: usize = 0x20;

struct SetTimer {
    due: Instant,
    dpc: usize,
    site: Site,
}

#[derive(Clone, Copy)]
struct Dpc {
    routine: PKDEFERRED_ROUTINE,
    context: usize,
    queued: bool,
}

#[derive(Default)]
/// Keyed by address and ordered, so the checks at every pool free look at the freed range only
/// (one entry per session's timer and DPC: thousands with many connections).
struct TimerState {
    set: BTreeMap<usize, SetTimer>,
    dpcs: BTreeMap<usize, Dpc>,
    stopping: bool,
    /// When the sleeping timer thread wakes by itself (None while it is awake: it looks at every
    /// set timer before it sleeps again). A timer due no earlier needs no wake-up, as Windows'
    /// clock interrupt finds a newly set timer without anyone being woken.
    sleeping_until: Option<Instant>,
}

/// Timers and DPCs of one kernel.
#[derive(Default)]
pub(crate) struct Timers {
    state: Mutex<TimerState>,
    changed: Condvar,
}

impl Timers {
    /// The timer thread body.
    pub fn run(kernel: Arc<Shared>) {
        let timers = &kernel.timers;
        let mut state = timers.state.lock().unwrap();
        loop {
            if state.stopping {
                return;
            }
            let now = Instant::now();
            let due: Vec<usize> = state
                .set
                .iter()
                .filter(|(_, t)| t.due <= now)
                .map(|(&a, _)| a)
                .collect();
            for timer in due {
                // The lock is let go while each timer fires: one found due may have been
                // cancelled meanwhile (KeCancelTimer saw it set, so it must not fire).
                let Some(entry) = state.set.remove(&timer) else {
                    continue;
                };
                let queue = match state.dpcs.get_mut(&entry.dpc) {
                    Some(d) if !d.queued => {
                        d.queued = true;
                        Some((*d, entry.dpc))
                    }
                    _ => None,
                };
                drop(state);
                kernel.dispatcher.signal(timer as *mut c_void, 1);
                if let Some((dpc, address)) = queue {
                    Timers::queue_dpc(&kernel, address, dpc);
                }
                state = timers.state.lock().unwrap();
            }
            let next = state.set.values().map(|t| t.due).min();
            let wait = next
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(500))
                .min(Duration::from_millis(500));
            state.sleeping_until = Some(Instant::now() + wait);
            state = timers.changed.wait_timeout(state, wait).unwrap().0;
            state.sleeping_until = None;
        }
    }

    fn queue_dpc(kernel: &Arc<Shared>, address: usize, dpc: Dpc) {
        let k = kernel.clone();
        kernel.dpc.submit(None, move || {
            {
                let mut state = k.timers.state.lock().unwrap();
                if let Some(d) = state.dpcs.get_mut(&address) {
                    d.queued = false;
                }
            }
            if let Some(routine) = dpc.routine {
                thread::with_activity("DPC", || {
                    thread::at_irql(DISPATCH, || {
                        // SAFETY: the routine and context the driver registered with KeInitializeDpc.
                        unsafe {
                            routine(
                                address as *mut KDPC,
                                dpc.context as *mut c_void,
                                std::ptr::null_mut(),
                                std::ptr::null_mut(),
                            )
                        };
                        thread::check_balanced("DPC routine", DISPATCH);
                    })
                });
            }
        });
    }

    /// Stops the timer thread.
    pub fn stop(&self) {
        self.state.lock().unwrap().stopping = true;
        self.changed.notify_all();
    }

    /// An active timer or queued DPC inside `[address, address + size)`.
    pub fn active_in(&self, address: usize, size: usize) -> Option<(usize, &'static str)> {
        let state = self.state.lock().unwrap();
        let range = address..address.saturating_add(size);
        if let Some(&t) = state.set.range(range.clone()).map(|(t, _)| t).next() {
            return Some((t, "timer"));
        }
        state
            .dpcs
            .range(range)
            .find(|(_, d)| d.queued)
            .map(|(&a, _)| (a, "queued DPC"))
    }

    /// Forgets DPC registrations inside a freed block (they may be reinitialized later).
    pub fn forget_in(&self, address: usize, size: usize) {
        let mut state = self.state.lock().unwrap();
        let inside: Vec<usize> = state
            .dpcs
            .range(address..address.saturating_add(size))
            .map(|(&a, _)| a)
            .collect();
        for a in inside {
            state.dpcs.remove(&a);
        }
    }

    /// Timers still set, as leaks.
    pub fn leaks(&self) -> Vec<Leak> {
        let state = self.state.lock().unwrap();
        state
            .set
            .iter()
            .map(|(&address, t)| Leak {
                kind: LeakKind::Timer,
                address,
                tag: "KTIMER".into(),
                size: 0x40,
                site: t.site.clone(),
            })
            .collect()
    }

    /// Whether no DPC is queued.
    pub fn no_dpc_queued(&self) -> bool {
        self.state.lock().unwrap().dpcs.values().all(|d| !d.queued)
    }
}

/// ntoskrnl!KeInitializeTimer (a notification timer).
pub(crate) unsafe extern "win64" fn ke_initialize_timer(timer: *mut KTIMER) {
    let kernel = thread::kernel();
    if kernel
        .timers
        .state
        .lock()
        .unwrap()
        .set
        .contains_key(&(timer as usize))
    {
        bugcheck(
            codes::TIMER_OR_DPC_INVALID,
            [timer as usize, 0, 0, 0],
            format!(
                "KeInitializeTimer: timer {:#x} is set; cancel it before reinitializing",
                timer as usize
            ),
        );
    }
    // SAFETY: the caller passes storage for a KTIMER.
    unsafe {
        std::ptr::write_bytes(timer as *mut u8, 0, std::mem::size_of::<KTIMER>());
        *(timer as *mut u8) = TIMER_NOTIFICATION;
    }
}

/// ntoskrnl!KeInitializeDpc.
pub(crate) unsafe extern "win64" fn ke_initialize_dpc(
    dpc: *mut KDPC,
    routine: PKDEFERRED_ROUTINE,
    context: *mut c_void,
) {
    let kernel = thread::kernel();
    let mut state = kernel.timers.state.lock().unwrap();
    if state.dpcs.get(&(dpc as usize)).is_some_and(|d| d.queued) {
        drop(state);
        bugcheck(
            codes::TIMER_OR_DPC_INVALID,
            [dpc as usize, 0, 0, 0],
            format!("KeInitializeDpc: DPC {:#x} is queued", dpc as usize),
        );
    }
    state.dpcs.insert(
        dpc as usize,
        Dpc {
            routine,
            context: context as usize,
            queued: false,
        },
    );
    drop(state);
    // SAFETY: the caller passes storage for a KDPC (0x40 bytes).
    unsafe {
        let p = dpc as *mut u8;
        std::ptr::write_bytes(p, 0, std::mem::size_of::<KDPC>());
        *p = DPC_TYPE;
        *(p.add(DPC_ROUTINE_OFFSET) as *mut usize) = routine.map_or(0, |r| r as usize);
        *(p.add(DPC_CONTEXT_OFFSET) as *mut usize) = context as usize;
    }
}

/// ntoskrnl!KeSetTimer: TRUE if the timer was already set (it is re-armed).
pub(crate) unsafe extern "win64" fn ke_set_timer(
    timer: *mut KTIMER,
    due_time: i64,
    dpc: *mut KDPC,
) -> u8 {
    thread::require_at_most("KeSetTimer", DISPATCH);
    let kernel = thread::kernel();
    let kind = if timer.is_null() {
        0
    } else {
        // SAFETY: the caller passes an initialized KTIMER; byte 0 is its type.
        unsafe { *(timer as *const u8) }
    };
    if kind != TIMER_NOTIFICATION {
        bugcheck(
            codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
            [verifier::TIMER_STATE, timer as usize, 0, 0],
            format!(
                "KeSetTimer: {:#x} is not an initialized timer",
                timer as usize
            ),
        );
    }
    let mut state = kernel.timers.state.lock().unwrap();
    if !dpc.is_null() && !state.dpcs.contains_key(&(dpc as usize)) {
        drop(state);
        bugcheck(
            codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
            [verifier::TIMER_STATE, timer as usize, dpc as usize, 0],
            format!("KeSetTimer: DPC {:#x} was never initialized", dpc as usize),
        );
    }
    let site = Site::here(kernel.next_sequence());
    let due = deadline_of(due_time);
    let previous = state.set.insert(
        timer as usize,
        SetTimer {
            due,
            dpc: dpc as usize,
            site,
        },
    );
    // Wake the timer thread only if it sleeps past the new due time.
    let wake = state.sleeping_until.is_some_and(|until| due < until);
    if wake {
        state.sleeping_until = Some(due);
    }
    drop(state);
    kernel.dispatcher.signal(timer as *mut c_void, 0);
    if wake {
        kernel.timers.changed.notify_all();
    }
    u8::from(previous.is_some())
}

/// ntoskrnl!KeCancelTimer: TRUE if the timer was set.
pub(crate) unsafe extern "win64" fn ke_cancel_timer(timer: *mut KTIMER) -> u8 {
    thread::require_at_most("KeCancelTimer", DISPATCH);
    let kernel = thread::kernel();
    let removed = kernel
        .timers
        .state
        .lock()
        .unwrap()
        .set
        .remove(&(timer as usize));
    u8::from(removed.is_some())
}
