//! Kernel threads: which kernel a thread belongs to, its IRQL, and what it is doing.
//!
//! Every thread that runs driver code is started by kemu and carries a [`ThreadState`]: the
//! kernel it belongs to (so several kernels can live in one process for kemu's own tests), its
//! current IRQL, the spin locks it holds, and an "activity" label that allocation sites and leak
//! reports quote ("DriverEntry", "IOCTL 0x8A576000", "work item", ...).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use ksys::ntdef::KIRQL;

use crate::bugcheck::{self, codes};
use crate::kernel::Shared;

/// PASSIVE_LEVEL.
pub const PASSIVE: KIRQL = 0;
/// APC_LEVEL.
pub const APC: KIRQL = 1;
/// DISPATCH_LEVEL.
pub const DISPATCH: KIRQL = 2;

/// Per-thread kernel state.
pub(crate) struct ThreadState {
    pub kernel: Arc<Shared>,
    pub irql: Cell<KIRQL>,
    pub spin_locks_held: Cell<u32>,
    /// Shared, so each allocation site records it without copying the text.
    pub activity: RefCell<Arc<str>>,
    /// Non-zero while a KMDF work item callback runs on this thread (its handle).
    pub work_item: Cell<usize>,
    /// A host thread inside the kernel for one call (see [`borrow`]).
    pub borrowed: bool,
}

thread_local! {
    static STATE: RefCell<Option<Rc<ThreadState>>> = const { RefCell::new(None) };
}

/// Makes the calling thread a kernel thread of `kernel` at PASSIVE_LEVEL.
pub(crate) fn enter(kernel: Arc<Shared>, activity: &str) {
    install(kernel, activity, false);
}

fn install(kernel: Arc<Shared>, activity: &str, borrowed: bool) {
    let state = Rc::new(ThreadState {
        kernel,
        irql: Cell::new(PASSIVE),
        spin_locks_held: Cell::new(0),
        activity: RefCell::new(Arc::from(activity)),
        work_item: Cell::new(0),
        borrowed,
    });
    STATE.with(|s| *s.borrow_mut() = Some(state));
}

/// A host thread that entered the kernel for one call; it leaves when this is dropped.
pub(crate) struct Borrowed(());

impl Drop for Borrowed {
    fn drop(&mut self) {
        STATE.with(|s| *s.borrow_mut() = None);
    }
}

/// Makes the calling host thread a kernel thread of `kernel` (PASSIVE_LEVEL) for one call, as a
/// user thread entering the kernel through a system call is: None if it is a kernel thread
/// already.
pub(crate) fn borrow(kernel: Arc<Shared>, activity: &str) -> Option<Borrowed> {
    if try_state().is_some() {
        return None;
    }
    install(kernel, activity, true);
    Some(Borrowed(()))
}

/// The calling thread's state, if it is a kernel thread.
pub(crate) fn try_state() -> Option<Rc<ThreadState>> {
    STATE.try_with(|s| s.borrow().clone()).ok().flatten()
}

/// The calling thread's state; a kemu export called from a thread kemu did not start is a host
/// bug (the routine would have no kernel to act on).
pub(crate) fn state() -> Rc<ThreadState> {
    match try_state() {
        Some(s) => s,
        None => panic!("kemu: a kernel routine was called on a thread that is not a kernel thread"),
    }
}

/// The kernel the calling thread belongs to, borrowed through the thread's own state: no
/// atomic reference count is touched (every thread taking a count on the one `Arc` made its
/// cache line travel between processors on each kernel call); `.clone()` gives an
/// `Arc<Shared>` to keep or send.
pub(crate) fn kernel() -> KernelRef {
    KernelRef(state())
}

/// The calling thread's kernel (see [`kernel`]); not `Send`.
pub(crate) struct KernelRef(Rc<ThreadState>);

impl std::ops::Deref for KernelRef {
    type Target = Arc<Shared>;

    fn deref(&self) -> &Arc<Shared> {
        &self.0.kernel
    }
}

/// Current IRQL of the calling thread (PASSIVE for non-kernel threads).
pub(crate) fn irql() -> KIRQL {
    try_state().map(|s| s.irql.get()).unwrap_or(PASSIVE)
}

/// Sets the calling thread's IRQL (raise or lower), returning the previous one.
pub(crate) fn set_irql(new: KIRQL) -> KIRQL {
    let s = state();
    s.irql.replace(new)
}

/// The calling thread's activity label.
pub(crate) fn activity() -> Arc<str> {
    try_state()
        .map(|s| s.activity.borrow().clone())
        .unwrap_or_else(|| Arc::from("host"))
}

/// Runs `f` with the activity label set to `label`, restoring the previous label after.
pub(crate) fn with_activity<R>(label: &str, f: impl FnOnce() -> R) -> R {
    let s = state();
    let previous = s.activity.replace(Arc::from(label));
    let result = f();
    *s.activity.borrow_mut() = previous;
    result
}

/// Bugchecks unless the caller runs at or below `max` — each routine's documented ceiling.
pub(crate) fn require_at_most(routine: &str, max: KIRQL) {
    let current = irql();
    if current > max {
        bugcheck::bugcheck(
            codes::IRQL_NOT_LESS_OR_EQUAL,
            [0, current as usize, max as usize, 0],
            format!("{routine} called at IRQL {current}; it requires IRQL <= {max}"),
        );
    }
}

/// Bugchecks unless the caller runs exactly at `level`.
pub(crate) fn require_exactly(routine: &str, level: KIRQL) {
    let current = irql();
    if current != level {
        let code = if current < level {
            codes::IRQL_NOT_GREATER_OR_EQUAL
        } else {
            codes::IRQL_NOT_LESS_OR_EQUAL
        };
        bugcheck::bugcheck(
            code,
            [0, current as usize, level as usize, 0],
            format!("{routine} called at IRQL {current}; it requires IRQL == {level}"),
        );
    }
}

/// Runs `f` at `level` (raising or lowering), then restores the previous IRQL.
pub(crate) fn at_irql<R>(level: KIRQL, f: impl FnOnce() -> R) -> R {
    let previous = set_irql(level);
    let result = f();
    set_irql(previous);
    result
}

/// Checks a thread returning to kemu from driver code left IRQL and spin locks as it found them.
pub(crate) fn check_balanced(what: &str, expected: KIRQL) {
    let s = state();
    let current = s.irql.get();
    let locks = s.spin_locks_held.get();
    if current != expected || locks != 0 {
        bugcheck::bugcheck(
            codes::IRQL_UNEXPECTED_VALUE,
            [current as usize, expected as usize, locks as usize, 0],
            format!(
                "{what} returned at IRQL {current} holding {locks} spin lock(s); expected IRQL {expected} and none"
            ),
        );
    }
}

/// Whom a kemu thread stands for, and so how it ranks against the application's threads (the
/// harness's, a test's) when both want a processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rank {
    /// Code Windows runs above every application thread: DPCs and the network stack's
    /// completions (DISPATCH_LEVEL, above all threads), the clock's timers, system worker threads
    /// (priority 12, 13 for the critical queue, where an application thread's base priority is 8).
    Kernel,
    /// Code that runs at an application's priority: a user thread's call into the kernel, LSA
    /// (a user-mode service; its priority is not documented, so it gets no edge).
    Application,
}

/// Spawns a named kernel thread of `kernel` that starts at PASSIVE_LEVEL.
pub(crate) fn spawn(
    kernel: &Arc<Shared>,
    name: &str,
    rank: Rank,
    f: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let kernel = kernel.clone();
    let label = name.to_owned();
    std::thread::Builder::new()
        .name(format!("kemu-{}-{}", kernel.id, name))
        .stack_size(1 << 20)
        .spawn(move || {
            forgo_wakeup_preemption();
            if rank == Rank::Kernel {
                outrank_applications();
            }
            enter(kernel, &label);
            // A panic was recorded as a bugcheck by the panic hook; the thread just ends.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        })
        .expect("kemu: cannot spawn a kernel thread")
}

/// Puts the calling host thread under Linux's SCHED_BATCH policy: when another thread wakes it,
/// it takes a free processor, or the waker's once the waker sleeps or the tick comes round,
/// instead of preempting the waker there and then.
///
/// Why: the wakers here are mostly kemu's poller and DPC threads, which stand for code at
/// DISPATCH_LEVEL (the network stack's completions, DPCs). On Windows nothing a DPC readies or
/// queues preempts it: the dispatcher does not switch threads on a processor at DISPATCH_LEVEL,
/// and a processor's DPCs run one after another. Under Linux's default policy each DPC thread,
/// LSA thread or worker the poller woke preempted the poller on the spot, one extra context
/// switch per wake-up. The policy changes when a thread runs, never what it does; where the host
/// refuses it, the thread keeps the default policy and behaves the same, only slower
/// (docs/performance.md measures both).
fn forgo_wakeup_preemption() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` lives across the call; pid 0 names the calling thread; the call reads
        // nothing else and changes only this thread's scheduling policy.
        let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    }
}

/// Linux nice value of the threads that stand for kernel code ([`Rank::Kernel`]).
pub const KERNEL_NICE: i32 = -10;

/// Gives the calling host thread [`KERNEL_NICE`]: about nine times an application thread's
/// share of a contended processor under Linux's fair scheduler.
///
/// Why: on Windows the code these threads stand for outranks the application outright (a
/// priority scheduler; DPCs above every thread, system workers at 12–13 against an
/// application's 8), so an application thread woken by a completed IOCTL waits for them. At
/// equal weight a woken harness thread took the processor from kemu's DPC thread mid-batch:
/// an extra switch per completed request in a stream. Linux has no strict ranks short of
/// real-time policies, which could starve the host; a weight is the nearest safe model. Raising
/// a thread's priority needs CAP_SYS_NICE (or RLIMIT_NICE); refused, the thread keeps nice 0 and
/// behaves the same, only slower (docs/performance.md, docs/kemu.md "Threads and IRQL").
fn outrank_applications() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: who = 0 names the calling thread (Linux's nice is per thread); the call reads
        // no memory and changes only this thread's nice value.
        let granted = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, KERNEL_NICE) } == 0;
        let outcome = if granted {
            ThreadRanks::Granted
        } else {
            ThreadRanks::Refused
        };
        // One refusal is the news: it is never overwritten by a later grant.
        let _ = RANKS.fetch_max(outcome as u8, Ordering::Relaxed);
    }
}

/// Whether the host let kemu's kernel-code threads outrank the application's
/// ([`KERNEL_NICE`]): figures measured without it are slower (docs/performance.md), so a
/// benchmark reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadRanks {
    /// No kernel thread has started on this host yet (or the host has no such control).
    NotTried = 0,
    /// Every kernel-code thread got its rank.
    Granted = 1,
    /// The host refused at least once (no CAP_SYS_NICE or RLIMIT_NICE): those threads run at
    /// the application's rank.
    Refused = 2,
}

static RANKS: AtomicU8 = AtomicU8::new(ThreadRanks::NotTried as u8);

/// What the host said when kemu's kernel-code threads asked for their rank (see [`ThreadRanks`]).
pub fn thread_ranks() -> ThreadRanks {
    match RANKS.load(Ordering::Relaxed) {
        0 => ThreadRanks::NotTried,
        1 => ThreadRanks::Granted,
        _ => ThreadRanks::Refused,
    }
}
