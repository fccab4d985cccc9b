//! SspiAsyncContext: create, free, reinit, set the notify callback, status — and how a
//! call's completion is delivered (inline or later, per the fault plan).

use super::*;

/// SspiCreateAsyncContext.
pub(crate) unsafe extern "win64" fn sspi_create_async_context() -> *mut SspiAsyncContext {
    thread::require_at_most("SspiCreateAsyncContext", PASSIVE);
    let kernel = ksecdd();
    if kernel.faults.allocation_fails() {
        return std::ptr::null_mut();
    }
    let block = crate::io::alloc_zeroed(ASYNC_CONTEXT_SIZE);
    let entry = AsyncContext {
        status: SEC_E_UNSUPPORTED_FUNCTION,
        callback: None,
        data: 0,
        pending: false,
        wedged: false,
        site: Site::here(kernel.next_sequence()),
    };
    kernel
        .ksecdd
        .lock()
        .async_contexts
        .insert(block as usize, entry);
    block as *mut SspiAsyncContext
}

/// SspiFreeAsyncContext (NULL is a no-op; freeing inside its own callback is allowed).
pub(crate) unsafe extern "win64" fn sspi_free_async_context(context: *mut SspiAsyncContext) {
    thread::require_at_most("SspiFreeAsyncContext", PASSIVE);
    if context.is_null() {
        return;
    }
    let kernel = ksecdd();
    let removed = {
        let mut s = kernel.ksecdd.lock();
        match s.async_contexts.get(&(context as usize)) {
            None => Err("is not an async context (double free?)"),
            Some(c) if c.pending && !c.wedged => Err(
                "is freed while its call is pending (the completion would write into freed memory)",
            ),
            Some(_) => Ok(s.async_contexts.remove(&(context as usize))),
        }
    };
    match removed {
        Ok(_) => crate::io::free(context as *mut u8, ASYNC_CONTEXT_SIZE),
        Err(why) => violation(
            format!("SspiFreeAsyncContext: {:#x} {why}", context as usize),
            context as usize,
        ),
    }
}

/// SspiReinitAsyncContext: back to the fresh state, keeping the callback.
pub(crate) unsafe extern "win64" fn sspi_reinit_async_context(
    context: *mut SspiAsyncContext,
) -> NTSTATUS {
    thread::require_at_most("SspiReinitAsyncContext", PASSIVE);
    let kernel = ksecdd();
    let mut s = kernel.ksecdd.lock();
    match s.async_contexts.get_mut(&(context as usize)) {
        Some(c) if !c.pending => {
            c.status = SEC_E_UNSUPPORTED_FUNCTION;
            STATUS_SUCCESS
        }
        _ => STATUS_INVALID_PARAMETER,
    }
}

/// SspiSetAsyncNotifyCallback.
pub(crate) unsafe extern "win64" fn sspi_set_async_notify_callback(
    context: *mut SspiAsyncContext,
    callback: SspiAsyncNotifyCallback,
    data: *mut c_void,
) -> SECURITY_STATUS {
    thread::require_at_most("SspiSetAsyncNotifyCallback", PASSIVE);
    let kernel = ksecdd();
    let mut s = kernel.ksecdd.lock();
    match s.async_contexts.get_mut(&(context as usize)) {
        Some(c) if !c.pending => {
            c.callback = callback;
            c.data = data as usize;
            SEC_E_OK
        }
        _ => SEC_E_INVALID_PARAMETER,
    }
}

/// SspiGetAsyncCallStatus.
pub(crate) unsafe extern "win64" fn sspi_get_async_call_status(
    context: *mut SspiAsyncContext,
) -> SECURITY_STATUS {
    thread::require_at_most("SspiGetAsyncCallStatus", PASSIVE);
    ksecdd()
        .ksecdd
        .lock()
        .async_contexts
        .get(&(context as usize))
        .map_or(SEC_E_INVALID_PARAMETER, |c| c.status)
}

/// SspiAsyncContextRequiresNotify: whether a callback is set.
pub(crate) unsafe extern "win64" fn sspi_async_context_requires_notify(
    context: *mut SspiAsyncContext,
) -> u8 {
    thread::require_at_most("SspiAsyncContextRequiresNotify", PASSIVE);
    u8::from(
        ksecdd()
            .ksecdd
            .lock()
            .async_contexts
            .get(&(context as usize))
            .is_some_and(|c| c.callback.is_some()),
    )
}

/// Starts an async call: checks the context, marks it pending and runs `work` on an LSA worker
/// (or inline), then stores its status and notifies. Returns the queueing status.
pub(super) fn start(
    context: *mut SspiAsyncContext,
    routine: &str,
    callback_required: bool,
    work: impl FnOnce() -> SECURITY_STATUS + Send + 'static,
) -> SECURITY_STATUS {
    start_after(context, routine, callback_required, Duration::ZERO, work)
}

/// As [`start`], for a call the LSA takes `delay` over: such a call never completes inline.
pub(super) fn start_after(
    context: *mut SspiAsyncContext,
    routine: &str,
    callback_required: bool,
    delay: Duration,
    work: impl FnOnce() -> SECURITY_STATUS + Send + 'static,
) -> SECURITY_STATUS {
    let kernel = ksecdd();
    {
        let mut s = kernel.ksecdd.lock();
        let Some(c) = s.async_contexts.get_mut(&(context as usize)) else {
            return SEC_E_INVALID_PARAMETER;
        };
        if c.pending || (callback_required && c.callback.is_none()) {
            return SEC_E_INVALID_PARAMETER;
        }
        c.status = SEC_I_ASYNC_CALL_PENDING;
        c.pending = true;
    }
    if kernel.faults.sspi_call_wedges() {
        if let Some(c) = kernel
            .ksecdd
            .lock()
            .async_contexts
            .get_mut(&(context as usize))
        {
            c.wedged = true;
        }
        // The queueing failed after the context went PENDING: no callback will ever come.
        crate::rtl::note(&format!(
            "{routine}: injected queueing failure; the async context stays pending"
        ));
        return SEC_E_INSUFFICIENT_MEMORY;
    }
    let address = context as usize;
    let label = format!("LSA: {routine}");
    let job = move || {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let status = thread::with_activity(&label, work);
        let k = thread::kernel();
        let notify = {
            let mut s = k.ksecdd.lock();
            match s.async_contexts.get_mut(&address) {
                Some(c) => {
                    c.status = status;
                    c.pending = false;
                    c.callback.map(|cb| (cb, c.data))
                }
                None => None,
            }
        };
        if let Some((cb, data)) = notify {
            let cb: Callback = cb;
            thread::with_activity("SSPI notify callback", || {
                // SAFETY: the callback and data the driver registered for this context.
                unsafe { cb(address as *mut SspiAsyncContext, data as *mut c_void) }
            });
            thread::check_balanced("SSPI notify callback", PASSIVE);
        }
    };
    if delay.is_zero() && kernel.faults.place(true, false).inline {
        job();
    } else {
        kernel.lsa.submit(job);
    }
    SEC_E_OK
}

/// Addresses the completion writes to, carried to the LSA worker.
#[derive(Clone, Copy)]
pub(super) struct Out(usize);

impl Out {
    pub(super) fn of<T>(p: *mut T) -> Out {
        Out(p as usize)
    }
    pub(super) fn get<T>(self) -> *mut T {
        self.0 as *mut T
    }
}
