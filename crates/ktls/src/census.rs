//! How many sessions and listeners still hold kernel resources.
//!
//! An owner drops a [`crate::session::Session`] (or a listener drops the sessions no one took)
//! and the session goes on releasing in the background: cancelling its IRPs, waiting for an
//! SSPI call in flight, closing its socket, deleting its security context. A driver's unload
//! must not return before all of that finished, or the context and the pool outlive the
//! driver. A [`Census`] shared by everything a driver starts counts what is still releasing;
//! unload waits until [`Census::live`] is zero.

use core::sync::atomic::{AtomicUsize, Ordering};

use ksys::ntdef::NTSTATUS;

use crate::pool::PoolArc;

/// A shared count of live sessions and listeners (clones share the count).
#[derive(Clone, Debug)]
pub struct Census {
    live: PoolArc<AtomicUsize>,
}

impl Census {
    /// A census with nothing in it.
    pub fn try_new() -> Result<Census, NTSTATUS> {
        Ok(Census {
            live: PoolArc::try_new(AtomicUsize::new(0))?,
        })
    }

    /// Sessions and listeners started and not yet fully released.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Counts one more member until the returned entry is dropped.
    pub(crate) fn enter(&self) -> Entry {
        self.live.fetch_add(1, Ordering::AcqRel);
        Entry {
            census: self.clone(),
        }
    }
}

/// One member of a census: dropped once its owner released every kernel resource.
#[derive(Debug)]
pub(crate) struct Entry {
    census: Census,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.census.live.fetch_sub(1, Ordering::AcqRel);
    }
}
