//! The one poller thread of a kernel's WSK provider: waits on every socket with mio and moves
//! their queued operations forward; completions run on it at DISPATCH_LEVEL.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Events, Poll, Token, Waker};

use crate::kernel::Shared;
use crate::thread::{self, Rank};

/// Token of the waker (sockets use tokens from 1).
const WAKER: Token = Token(0);

thread_local! {
    /// The poller thread's poll and event buffer (None on every other thread).
    static POLL: RefCell<Option<(Poll, Events)>> = const { RefCell::new(None) };
}

/// What other threads need of the poller: its registry and a way to wake it.
#[derive(Default)]
pub(crate) struct PollerHandle {
    parts: OnceLock<(mio::Registry, Waker)>,
    /// The poller thread waits for a dispatcher object (a work item it runs waits): a signal
    /// must wake its poll.
    waiting: AtomicBool,
}

/// Waits up to `timeout` for socket events and delivers them (completions at DISPATCH_LEVEL on
/// this thread). `collect`: the work items those completions queue run here afterwards (see
/// `ke::workers`), unless the fault plan delays work items. False on any thread but the poller.
fn deliver(kernel: &Arc<Shared>, timeout: Duration, collect: bool) -> bool {
    let ready = POLL.with(|p| {
        let mut p = p.borrow_mut();
        let (poll, events) = p.as_mut()?;
        if let Err(e) = poll.poll(events, Some(timeout)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                panic!("kemu WSK poller: {e}");
            }
            return Some(Vec::new());
        }
        Some(
            events
                .iter()
                .filter(|e| e.token() != WAKER)
                .map(|e| {
                    let readable = e.is_readable() || e.is_read_closed() || e.is_error();
                    (e.token().0, readable)
                })
                .collect::<Vec<_>>(),
        )
    });
    let Some(ready) = ready else {
        return false;
    };
    let collect = collect && !ready.is_empty() && !kernel.faults.delays_workers();
    if collect {
        crate::ke::workers::collect_work_items();
    }
    for (token, readable) in ready {
        super::socket::on_ready(token, readable);
    }
    if collect {
        kernel.workers.run_collected(kernel);
    }
    true
}

/// Called by a wait on the poller thread (a work item it runs waits for an object): delivers
/// socket events for up to `slice` instead of sleeping, so completions the wait may depend on
/// still come. False on any other thread (sleep as usual).
pub(crate) fn wait_delivering(kernel: &Arc<Shared>, slice: Duration) -> bool {
    let handle = &kernel.netio.poller;
    handle.waiting.store(true, Ordering::SeqCst);
    let delivered = deliver(kernel, slice, false);
    handle.waiting.store(false, Ordering::SeqCst);
    delivered
}

impl PollerHandle {
    /// Starts the poller thread of `kernel`.
    pub fn start(kernel: &Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let _ = kernel.netio.poller.parts.set((registry, waker));
        let k = kernel.clone();
        Ok(thread::spawn(
            kernel,
            "wsk-poller",
            Rank::Kernel,
            move || {
                POLL.with(|p| *p.borrow_mut() = Some((poll, Events::with_capacity(1024))));
                loop {
                    if k.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    deliver(&k, Duration::from_millis(200), true);
                }
            },
        ))
    }

    /// The registry sockets register with.
    pub fn registry(&self) -> &mio::Registry {
        &self.parts.get().expect("WSK poller started at boot").0
    }

    /// Wakes the poller if it waits for a dispatcher object (see [`wait_delivering`]).
    pub fn wake_if_waiting(&self) {
        if self.waiting.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    /// Wakes the poller (shutdown).
    pub fn wake(&self) {
        if let Some((_, waker)) = self.parts.get() {
            let _ = waker.wake();
        }
    }
}
