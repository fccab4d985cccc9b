//! An asynchronous SSPI operation: its SspiAsyncContexts, their reuse and their failure modes.
//!
//! - Two contexts serve the calls in turn: before each call [`AsyncOp::begin`] re-initialises
//!   (SspiReinitAsyncContext) the one that served the call before last. ksecdd may still be
//!   returning from a context's notify callback when the work item it signalled runs, so a
//!   context is never re-initialised right after its own callback — by the time it serves again,
//!   a whole asynchronous round trip of the other context lies in between.
//! - A call's queueing status decides everything synchronously: on SEC_E_OK the notify callback
//!   will come (maybe already came, inline, before the call returned) and is the single place
//!   where the step ends; on an error no callback comes — and if the context was left pending
//!   (the wedged mode of real ksecdd) it is marked stuck and replaced (freeing a stuck context is
//!   the documented way out).
//! - The callback should only record the status and signal the session's work item.

use core::ffi::c_void;

use ksys::imports::{
    SspiCreateAsyncContext, SspiFreeAsyncContext, SspiGetAsyncCallStatus, SspiReinitAsyncContext,
    SspiSetAsyncNotifyCallback,
};
use ksys::ntdef::nt_success;
use ksys::sspi::{
    SEC_E_INSUFFICIENT_MEMORY, SEC_E_OK, SEC_I_ASYNC_CALL_PENDING, SECURITY_STATUS,
    SspiAsyncContext, SspiAsyncNotifyCallback,
};

/// The notify callback type (PASSIVE_LEVEL, maybe inline on the issuing thread).
pub type NotifyCallback = unsafe extern "win64" fn(*mut SspiAsyncContext, *mut c_void);

/// One of the two contexts.
#[derive(Debug)]
struct Slot {
    /// NULL until first needed.
    context: *mut SspiAsyncContext,
    used: bool,
    stuck: bool,
}

const EMPTY: Slot = Slot {
    context: core::ptr::null_mut(),
    used: false,
    stuck: false,
};

/// One reusable asynchronous SSPI operation: one call in flight at a time.
#[derive(Debug)]
pub struct AsyncOp {
    slots: [Slot; 2],
    /// The slot of the call issued last.
    current: usize,
    callback: SspiAsyncNotifyCallback,
    data: *mut c_void,
    replacements: u32,
}

// SAFETY: the contexts are opaque kernel objects; the owner serializes calls on them.
unsafe impl Send for AsyncOp {}
// SAFETY: as above.
unsafe impl Sync for AsyncOp {}

fn create(
    callback: SspiAsyncNotifyCallback,
    data: *mut c_void,
) -> Result<*mut SspiAsyncContext, SECURITY_STATUS> {
    // SAFETY: plain SSPI calls at PASSIVE_LEVEL.
    unsafe {
        let context = SspiCreateAsyncContext();
        if context.is_null() {
            return Err(SEC_E_INSUFFICIENT_MEMORY);
        }
        let status = SspiSetAsyncNotifyCallback(context, callback, data);
        if status != SEC_E_OK {
            SspiFreeAsyncContext(context);
            return Err(status);
        }
        Ok(context)
    }
}

impl AsyncOp {
    /// Creates the first context with its callback and the data the callback receives.
    pub fn try_new(
        callback: NotifyCallback,
        data: *mut c_void,
    ) -> Result<AsyncOp, SECURITY_STATUS> {
        let context = create(Some(callback), data)?;
        Ok(AsyncOp {
            slots: [
                Slot {
                    context,
                    used: false,
                    stuck: false,
                },
                EMPTY,
            ],
            current: 0,
            callback: Some(callback),
            data,
            replacements: 0,
        })
    }

    /// Readies a context for the next call and returns it: the other one than last time
    /// (re-initialised, or created), after replacing the last one if it is stuck.
    pub fn begin(&mut self) -> Result<*mut SspiAsyncContext, SECURITY_STATUS> {
        if self.slots[self.current].stuck {
            self.replace(self.current)?;
        }
        let next = if self.slots[self.current].used {
            1 - self.current
        } else {
            self.current
        };
        let slot = &mut self.slots[next];
        if slot.context.is_null() {
            slot.context = create(self.callback, self.data)?;
        } else if slot.used {
            // SAFETY: this context's last call completed a full call of the other context ago.
            let status = unsafe { SspiReinitAsyncContext(slot.context) };
            if !nt_success(status) {
                self.replace(next)?;
            }
        }
        self.current = next;
        self.slots[next].used = true;
        Ok(self.slots[next].context)
    }

    /// Frees a stuck (or unusable) context and puts a fresh one in its slot.
    fn replace(&mut self, index: usize) -> Result<(), SECURITY_STATUS> {
        let fresh = create(self.callback, self.data)?;
        // SAFETY: freeing a stuck context is the documented way out; no callback will come.
        unsafe { SspiFreeAsyncContext(self.slots[index].context) };
        self.slots[index] = Slot {
            context: fresh,
            used: false,
            stuck: false,
        };
        self.replacements += 1;
        Ok(())
    }

    /// Records a call's queueing status: Ok if the callback will come, else the error (and the
    /// context is marked stuck if it was left pending).
    pub fn issued(&mut self, queued: SECURITY_STATUS) -> Result<(), SECURITY_STATUS> {
        if queued == SEC_E_OK {
            return Ok(());
        }
        if self.status() == SEC_I_ASYNC_CALL_PENDING {
            self.slots[self.current].stuck = true;
        }
        Err(queued)
    }

    /// The current status of the last call's context (SEC_I_ASYNC_CALL_PENDING while in flight).
    pub fn status(&self) -> SECURITY_STATUS {
        // SAFETY: a live context.
        unsafe { SspiGetAsyncCallStatus(self.slots[self.current].context) }
    }

    /// Whether the last call's context is stuck (it will be replaced by the next `begin`).
    pub fn is_stuck(&self) -> bool {
        self.slots[self.current].stuck
    }

    /// The context of the call issued last.
    pub fn context(&self) -> *mut SspiAsyncContext {
        self.slots[self.current].context
    }

    /// How many stuck contexts were replaced.
    pub fn replacements(&self) -> u32 {
        self.replacements
    }
}

impl Drop for AsyncOp {
    fn drop(&mut self) {
        for slot in &self.slots {
            if !slot.context.is_null() {
                // SAFETY: the owner drops an operation only when no callback is outstanding (or
                // the context is stuck, where freeing is the way out).
                unsafe { SspiFreeAsyncContext(slot.context) };
            }
        }
    }
}
