//! One work item per session: completion paths (≤ DISPATCH_LEVEL) record event bits and schedule
//! it; the work item runs at PASSIVE_LEVEL on a system worker and drains every pending event each
//! time it runs, so no event is lost whatever order completions arrive in, and the session's code
//! never runs twice at once.
//!
//! A caller that changes a session under its own lock can *hold* the worker ([`Worker::hold`]):
//! signals meanwhile only record their events, and when the last hold goes the events are drained
//! right there if that thread is at PASSIVE_LEVEL and no run is under way (an IOCTL's dispatch
//! routine encrypting what its SEND queued, with no hand-off to a system worker), else the work
//! item is queued as a signal would. Such an inline run is bounded ([`INLINE_PASSES`]): a session
//! that keeps getting completions goes on on the work item, so a caller is never held captive.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::sync::atomic::{AtomicU32, Ordering};

use ksys::imports::{IoAllocateWorkItem, IoFreeWorkItem, IoQueueWorkItem, KeGetCurrentIrql};
use ksys::io::{DELAYED_WORK_QUEUE, DEVICE_OBJECT, IO_WORKITEM};
use ksys::ntdef::{NTSTATUS, PASSIVE_LEVEL, STATUS_INSUFFICIENT_RESOURCES};
use ksys::sspi::SspiAsyncContext;

use crate::pool::PoolArc;

/// What a session does with the events it was signalled (at PASSIVE_LEVEL, never concurrently).
pub trait Drain: Send + Sync + Sized {
    /// The state only the drain touches (a session's engine: socket, IRPs, buffers, context).
    /// The worker owns it and lends it to one drain at a time, so no lock guards it.
    type Exclusive: Send;

    /// Handles `events` (the OR of every signal since the last drain).
    fn drain(worker: &Worker<Self>, exclusive: &mut Self::Exclusive, events: u32);
}

const IDLE: u32 = 0;
const QUEUED: u32 = 1;
const RUNNING: u32 = 2;

/// Drain passes a released hold may run on its caller's thread before the rest goes to the work
/// item (each pass takes every event recorded so far).
pub const INLINE_PASSES: u32 = 4;

/// The shared state of a worker (kept alive by references while queued or running).
pub struct WorkerState<T: Drain> {
    item: *mut IO_WORKITEM,
    phase: AtomicU32,
    events: AtomicU32,
    runs: AtomicU32,
    /// Holds taken ([`Worker::hold`]): while any is, a signal only records its events.
    holds: AtomicU32,
    /// Runs made on a releasing caller's thread instead of the work item (diagnostics, tests).
    inline_runs: AtomicU32,
    target: T,
    /// Dropped after `target` (whose observer may hold what an unload waiting for the census
    /// entry in here must outlive).
    exclusive: UnsafeCell<T::Exclusive>,
}

// SAFETY: the work item is only handed to the I/O manager; the rest is atomics, T, and the
// exclusive state, which only `routine` reaches and never from two threads at once.
unsafe impl<T: Drain> Send for WorkerState<T> {}
// SAFETY: as above.
unsafe impl<T: Drain> Sync for WorkerState<T> {}

impl<T: Drain> Drop for WorkerState<T> {
    fn drop(&mut self) {
        // SAFETY: the last reference is gone, so the item is neither queued nor running (queueing
        // takes a reference that the routine gives back after its last use of the item).
        unsafe { IoFreeWorkItem(self.item) };
    }
}

/// A session's work item and the session it drives.
pub struct Worker<T: Drain> {
    state: PoolArc<WorkerState<T>>,
}

impl<T: Drain> Clone for Worker<T> {
    fn clone(&self) -> Self {
        Worker {
            state: self.state.clone(),
        }
    }
}

impl<T: Drain> Worker<T> {
    /// Allocates the work item (on `device`, which it keeps referenced) and the shared state:
    /// `target` for everyone holding the worker, `exclusive` for its drain alone.
    ///
    /// # Safety
    /// `device` must be a live device object of the calling driver.
    pub unsafe fn try_new(
        device: *mut DEVICE_OBJECT,
        target: T,
        exclusive: T::Exclusive,
    ) -> Result<Worker<T>, NTSTATUS> {
        // SAFETY: per the contract.
        let item = unsafe { IoAllocateWorkItem(device) };
        if item.is_null() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        match PoolArc::try_new(WorkerState {
            item,
            phase: AtomicU32::new(IDLE),
            events: AtomicU32::new(0),
            runs: AtomicU32::new(0),
            holds: AtomicU32::new(0),
            inline_runs: AtomicU32::new(0),
            target,
            exclusive: UnsafeCell::new(exclusive),
        }) {
            Ok(state) => Ok(Worker { state }),
            Err(status) => {
                // SAFETY: never queued; freed once.
                unsafe { IoFreeWorkItem(item) };
                Err(status)
            }
        }
    }

    /// The session.
    pub fn target(&self) -> &T {
        &self.state.target
    }

    /// Gives up this reference as a raw pointer (an SSPI notify context); see [`Self::from_raw`].
    pub fn into_raw(self) -> *const c_void {
        PoolArc::into_raw(self.state) as *const c_void
    }

    /// Takes back a reference given up by [`Self::into_raw`].
    ///
    /// # Safety
    /// `p` must come from `into_raw` of a `Worker<T>` (same `T`), and be taken back once.
    pub unsafe fn from_raw(p: *const c_void) -> Worker<T> {
        Worker {
            // SAFETY: per the contract.
            state: unsafe { PoolArc::from_raw(p as *const WorkerState<T>) },
        }
    }

    /// The address `into_raw` gives (stable for the worker's life), without giving up a reference.
    pub fn as_raw(&self) -> *const c_void {
        &*self.state as *const WorkerState<T> as *const c_void
    }

    /// How many times the routine has run (diagnostics and tests).
    pub fn runs(&self) -> u32 {
        self.state.runs.load(Ordering::Acquire)
    }

    /// How many of those runs were made inline by a released hold.
    pub fn inline_runs(&self) -> u32 {
        self.state.inline_runs.load(Ordering::Acquire)
    }

    /// Records `events` and makes sure the work item will run (≤ DISPATCH_LEVEL; never blocks).
    /// While the worker is held, only records: the hold's release takes them.
    pub fn signal(&self, events: u32) {
        // SeqCst here and in `routine`: each side writes its own word, then reads the other's
        // (events then phase here; phase then events there). With weaker orderings both reads may
        // see the old values — on x86 a store can still sit in the store buffer while a later load
        // is served — and the event is lost: the signaller sees RUNNING, the routine sees no
        // events and goes idle. The same pairing holds with `Held::drop` (events then holds here;
        // holds then events there).
        self.state.events.fetch_or(events, Ordering::SeqCst);
        if self.state.holds.load(Ordering::SeqCst) > 0 {
            return;
        }
        if self
            .state
            .phase
            .compare_exchange(IDLE, QUEUED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.queue();
        }
    }

    fn queue(&self) {
        let context = PoolArc::into_raw(self.state.clone()) as *mut c_void;
        // SAFETY: the item is allocated and not queued (phase was IDLE); the context carries a
        // reference the routine gives back.
        unsafe {
            IoQueueWorkItem(
                self.state.item,
                Some(routine::<T>),
                DELAYED_WORK_QUEUE,
                context,
            )
        };
    }
}

impl<T: Drain> Worker<T> {
    /// Defers what signals bring until the returned hold is dropped (see the module's text):
    /// take it before changing the session under a lock its observer also takes, drop it once
    /// that lock is released. Any IRQL ≤ DISPATCH_LEVEL; never blocks.
    pub fn hold(&self) -> Held<T> {
        self.state.holds.fetch_add(1, Ordering::SeqCst);
        Held {
            worker: self.clone(),
        }
    }

    /// Runs the drain on this thread: the caller has moved the phase from IDLE to RUNNING.
    /// After [`INLINE_PASSES`] passes with events still coming, the rest goes to the work item.
    fn run_inline(&self) {
        self.state.runs.fetch_add(1, Ordering::AcqRel);
        self.state.inline_runs.fetch_add(1, Ordering::AcqRel);
        if !self.run(INLINE_PASSES) {
            // Still RUNNING, so no signal queued meanwhile: the work item takes over.
            self.state.phase.store(QUEUED, Ordering::SeqCst);
            self.queue();
        }
    }

    /// Drains events until none are left (true: the worker went IDLE) or `passes` drains were
    /// made (false: still RUNNING, events may remain). The phase is RUNNING on entry.
    fn run(&self, passes: u32) -> bool {
        let mut made = 0;
        loop {
            let events = self.state.events.swap(0, Ordering::SeqCst);
            if events != 0 {
                if made == passes {
                    // Put them back for whoever runs next.
                    self.state.events.fetch_or(events, Ordering::SeqCst);
                    return false;
                }
                made += 1;
                // A signal while RUNNING only records events; a run starts only by moving the
                // phase out of IDLE or QUEUED, which one thread wins.
                // SAFETY: only a run reaches the exclusive state, and runs never overlap (above).
                let exclusive = unsafe { &mut *self.state.exclusive.get() };
                T::drain(self, exclusive, events);
                continue;
            }
            self.state.phase.store(IDLE, Ordering::SeqCst);
            // An event signalled between the swap and going idle found us RUNNING and did not
            // queue: take it now (unless another signal already queued a new run, or a released
            // hold started one). SeqCst: see `Worker::signal`.
            if self.state.events.load(Ordering::SeqCst) == 0
                || self
                    .state
                    .phase
                    .compare_exchange(IDLE, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
            {
                return true;
            }
        }
    }

    /// Lends a reference to this worker to the asynchronous call `issue` makes, for its notify
    /// callback ([`signal_on_notify`], created with [`Self::as_raw`] as its data) to give back;
    /// an Err from `issue` means no callback will come, and the reference is taken back at once.
    /// So the session stays alive until every call it issued has called back.
    pub fn lend<R, E>(&self, issue: impl FnOnce() -> Result<R, E>) -> Result<R, E> {
        let reference = self.clone().into_raw();
        let issued = issue();
        if issued.is_err() {
            // SAFETY: the reference given up above; no callback will take it.
            drop(unsafe { Worker::<T>::from_raw(reference) });
        }
        issued
    }
}

/// An SSPI notify callback that signals `BIT` to the worker whose reference the call was lent
/// ([`Worker::lend`]) and gives that reference back. Its data must be the worker's
/// [`Worker::as_raw`].
///
/// # Safety
/// Called by ksecdd once per call issued through [`Worker::lend`] that returned Ok.
pub unsafe extern "win64" fn signal_on_notify<T: Drain, const BIT: u32>(
    _context: *mut SspiAsyncContext,
    data: *mut c_void,
) {
    // SAFETY: the reference lent for this call (per the contract).
    let worker = unsafe { Worker::<T>::from_raw(data) };
    worker.signal(BIT);
}

impl<T: Drain> crate::wsk::Wake for Worker<T> {
    fn wake(&self, bit: u32) {
        self.signal(bit);
    }
}

/// The work item routine: drains events until none are left, then goes idle (or runs again if
/// an event raced in).
unsafe extern "win64" fn routine<T: Drain>(_device: *mut DEVICE_OBJECT, context: *mut c_void) {
    // SAFETY: the reference `queue` gave up for this run.
    let state = unsafe { PoolArc::from_raw(context as *const WorkerState<T>) };
    let worker = Worker { state };
    worker.state.phase.store(RUNNING, Ordering::Release);
    worker.state.runs.fetch_add(1, Ordering::AcqRel);
    worker.run(u32::MAX);
}

/// A hold on a worker ([`Worker::hold`]): dropping the last one drains what was signalled
/// meanwhile — on this thread at PASSIVE_LEVEL when no run is under way, else on the work item.
#[must_use = "dropping the hold at once defers nothing"]
pub struct Held<T: Drain> {
    worker: Worker<T>,
}

impl<T: Drain> Drop for Held<T> {
    fn drop(&mut self) {
        let state = &self.worker.state;
        if state.holds.fetch_sub(1, Ordering::SeqCst) != 1
            || state.events.load(Ordering::SeqCst) == 0
        {
            return;
        }
        // SAFETY: KeGetCurrentIrql has no preconditions.
        let passive = unsafe { KeGetCurrentIrql() } == PASSIVE_LEVEL;
        if passive {
            if state
                .phase
                .compare_exchange(IDLE, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                self.worker.run_inline();
            }
        } else if state
            .phase
            .compare_exchange(IDLE, QUEUED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.worker.queue();
        }
    }
}
