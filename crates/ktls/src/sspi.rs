//! An asynchronous SSPI operation: the SspiAsyncContext, its reuse and its failure modes.
//!
//! - The context is created once and reused: before each call [`AsyncOp::begin`] re-initialises
//!   it (SspiReinitAsyncContext), or replaces it when it is stuck.
//! - A call's queueing status decides everything synchronously: on SEC_E_OK the notify callback
//!   will come (maybe already came, inline, before the call returned) and is the single place
//!   where the step ends; on an error no callback comes — and if the context was left pending
//!   (the wedged mode of real ksecdd) it is marked stuck and replaced before the next call.
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

/// One reusable asynchronous SSPI operation slot.
#[derive(Debug)]
pub struct AsyncOp {
    context: *mut SspiAsyncContext,
    callback: SspiAsyncNotifyCallback,
    data: *mut c_void,
    used: bool,
    stuck: bool,
    replacements: u32,
}

// SAFETY: the context is an opaque kernel object; the owner serializes calls on it.
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
    /// Creates the context with its callback and the data the callback receives.
    pub fn try_new(
        callback: NotifyCallback,
        data: *mut c_void,
    ) -> Result<AsyncOp, SECURITY_STATUS> {
        let context = create(Some(callback), data)?;
        Ok(AsyncOp {
            context,
            callback: Some(callback),
            data,
            used: false,
            stuck: false,
            replacements: 0,
        })
    }

    /// Readies the context for the next call and returns it.
    pub fn begin(&mut self) -> Result<*mut SspiAsyncContext, SECURITY_STATUS> {
        if self.stuck {
            let fresh = create(self.callback, self.data)?;
            // SAFETY: freeing a stuck context is the documented way out; no callback will come.
            unsafe { SspiFreeAsyncContext(self.context) };
            self.context = fresh;
            self.stuck = false;
            self.used = false;
            self.replacements += 1;
        } else if self.used {
            // SAFETY: the previous call completed (its callback ran), so the context is idle.
            let status = unsafe { SspiReinitAsyncContext(self.context) };
            if !nt_success(status) {
                self.stuck = true;
                return self.begin();
            }
        }
        self.used = true;
        Ok(self.context)
    }

    /// Records a call's queueing status: Ok if the callback will come, else the error (and the
    /// context is marked stuck if it was left pending).
    pub fn issued(&mut self, queued: SECURITY_STATUS) -> Result<(), SECURITY_STATUS> {
        if queued == SEC_E_OK {
            return Ok(());
        }
        if self.status() == SEC_I_ASYNC_CALL_PENDING {
            self.stuck = true;
        }
        Err(queued)
    }

    /// The current status of the context (SEC_I_ASYNC_CALL_PENDING while in flight).
    pub fn status(&self) -> SECURITY_STATUS {
        // SAFETY: a live context.
        unsafe { SspiGetAsyncCallStatus(self.context) }
    }

    /// Whether the context is stuck (it will be replaced by the next `begin`).
    pub fn is_stuck(&self) -> bool {
        self.stuck
    }

    /// How many stuck contexts were replaced.
    pub fn replacements(&self) -> u32 {
        self.replacements
    }
}

impl Drop for AsyncOp {
    fn drop(&mut self) {
        // SAFETY: the owner drops an operation only when no callback is outstanding (or the
        // context is stuck, where freeing is the way out).
        unsafe { SspiFreeAsyncContext(self.context) };
    }
}
