//! The one poller thread of a kernel's WSK provider: waits on every socket with mio and moves
//! their queued operations forward; completions run on it at DISPATCH_LEVEL.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Events, Poll, Token, Waker};

use crate::kernel::Shared;
use crate::thread;

/// Token of the waker (sockets use tokens from 1).
const WAKER: Token = Token(0);

/// What other threads need of the poller: its registry and a way to wake it.
#[derive(Default)]
pub(crate) struct PollerHandle {
    parts: OnceLock<(mio::Registry, Waker)>,
}

impl PollerHandle {
    /// Starts the poller thread of `kernel`.
    pub fn start(kernel: &Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
        let mut poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let _ = kernel.netio.poller.parts.set((registry, waker));
        let k = kernel.clone();
        Ok(thread::spawn(kernel, "wsk-poller", move || {
            let mut events = Events::with_capacity(1024);
            loop {
                if k.stopping.load(Ordering::Acquire) {
                    return;
                }
                if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(200))) {
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        panic!("kemu WSK poller: {e}");
                    }
                    continue;
                }
                for event in events.iter() {
                    if event.token() != WAKER {
                        super::socket::on_ready(event.token().0);
                    }
                }
            }
        }))
    }

    /// The registry sockets register with.
    pub fn registry(&self) -> &mio::Registry {
        &self.parts.get().expect("WSK poller started at boot").0
    }

    /// Wakes the poller (shutdown).
    pub fn wake(&self) {
        if let Some((_, waker)) = self.parts.get() {
            let _ = waker.wake();
        }
    }
}
