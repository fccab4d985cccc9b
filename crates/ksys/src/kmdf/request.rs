//! Device-control requests as the driver sees them: reading input, writing output, direct
//! I/O, cancelation, a tag a cancel routine can find, completion — and parked requests kept
//! in the driver's own tables.

use super::*;

/// A METHOD_BUFFERED device-control request presented to the driver.
///
/// Input and output share one system buffer: [`Request::read_input`] copies the input out before
/// [`Request::write_output`] may overwrite it.
#[derive(Debug)]
pub struct Request {
    handle: WDFREQUEST,
}

impl Request {
    /// Takes over a request the framework presented to an EvtIo callback.
    pub fn from_presented(handle: WDFREQUEST) -> Self {
        Request { handle }
    }

    /// The framework handle.
    pub fn handle(&self) -> WDFREQUEST {
        self.handle
    }

    /// Copies the whole input into `destination`; returns the input length.
    ///
    /// Errors: STATUS_BUFFER_TOO_SMALL if shorter than `minimum`, STATUS_INVALID_BUFFER_SIZE if
    /// longer than `destination`. Zero-length input is `Ok(0)` when `minimum` is 0.
    pub fn read_input(
        &self,
        input_length: usize,
        minimum: usize,
        destination: &mut [u8],
    ) -> Result<usize, NTSTATUS> {
        if input_length < minimum {
            return Err(STATUS_BUFFER_TOO_SMALL);
        }
        if input_length == 0 {
            return Ok(0);
        }
        if input_length > destination.len() {
            return Err(STATUS_INVALID_BUFFER_SIZE);
        }
        self.with_input(input_length, |input| {
            destination[..input_length].copy_from_slice(input);
            input_length
        })
    }

    /// Lets `read` look at the whole input where the framework keeps it (no copy): SEND's
    /// payload goes from here straight into the connection's queue, even while it is parked.
    /// STATUS_BUFFER_TOO_SMALL if the input is shorter than `input_length`.
    pub fn with_input<R>(
        &self,
        input_length: usize,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, NTSTATUS> {
        if input_length == 0 {
            return Ok(read(&[]));
        }
        let mut buffer: *mut c_void = ptr::null_mut();
        let mut length = 0usize;
        // SAFETY: the request is presented to us and not completed; out-params are locals.
        check(unsafe {
            WdfRequestRetrieveInputBuffer(self.handle, input_length, &mut buffer, &mut length)
        })?;
        if buffer.is_null() || length < input_length {
            return Err(STATUS_BUFFER_TOO_SMALL);
        }
        // SAFETY: the framework guarantees `length` (>= input_length) readable bytes at `buffer`
        // while the request is ours; the slice does not outlive this call.
        let input = unsafe { core::slice::from_raw_parts(buffer as *const u8, input_length) };
        Ok(read(input))
    }

    /// Lets `read` look at the first `length` bytes of the output buffer where they are: for
    /// METHOD_IN_DIRECT the caller's own buffer (a SEND's payload), read in place through its
    /// MDL. STATUS_BUFFER_TOO_SMALL if the output buffer is shorter.
    pub fn with_output_data<R>(
        &self,
        length: usize,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, NTSTATUS> {
        if length == 0 {
            return Ok(read(&[]));
        }
        let mut buffer: *mut c_void = ptr::null_mut();
        let mut available = 0usize;
        // SAFETY: as in `with_input`.
        check(unsafe {
            WdfRequestRetrieveOutputBuffer(self.handle, length, &mut buffer, &mut available)
        })?;
        if buffer.is_null() || available < length {
            return Err(STATUS_BUFFER_TOO_SMALL);
        }
        // SAFETY: the framework guarantees `available` (>= length) bytes at `buffer` while the
        // request is ours; the slice does not outlive this call.
        let data = unsafe { core::slice::from_raw_parts(buffer as *const u8, length) };
        Ok(read(data))
    }

    /// Copies `data` into the output buffer; STATUS_BUFFER_TOO_SMALL (nothing written) if the
    /// caller's output buffer is shorter. Returns the byte count to complete with.
    pub fn write_output(&self, data: &[u8]) -> Result<usize, NTSTATUS> {
        if data.is_empty() {
            return Ok(0);
        }
        let mut buffer: *mut c_void = ptr::null_mut();
        let mut length = 0usize;
        // SAFETY: as in `with_input`.
        check(unsafe {
            WdfRequestRetrieveOutputBuffer(self.handle, data.len(), &mut buffer, &mut length)
        })?;
        if buffer.is_null() || length < data.len() {
            return Err(STATUS_BUFFER_TOO_SMALL);
        }
        // SAFETY: the framework guarantees `length` (>= data.len()) writable bytes at `buffer`.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), buffer as *mut u8, data.len()) };
        Ok(data.len())
    }

    /// The file object (open handle) the request came through.
    pub fn file(&self) -> WDFFILEOBJECT {
        // SAFETY: the request is ours and not completed.
        unsafe { WdfRequestGetFileObject(self.handle) }
    }

    /// The caller's output buffer length (0 if none).
    pub fn output_length(&self) -> usize {
        let mut buffer: *mut c_void = ptr::null_mut();
        let mut length = 0usize;
        // SAFETY: the request is ours and not completed; out-params are locals.
        match unsafe { WdfRequestRetrieveOutputBuffer(self.handle, 0, &mut buffer, &mut length) } {
            status if nt_success(status) && !buffer.is_null() => length,
            _ => 0,
        }
    }

    /// Lets `fill` write up to `limit` bytes straight into the output buffer; it returns how
    /// many it wrote, which is what to complete with.
    pub fn fill_output(
        &self,
        limit: usize,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<usize, NTSTATUS> {
        let mut buffer: *mut c_void = ptr::null_mut();
        let mut length = 0usize;
        // SAFETY: as in `with_input`.
        check(unsafe { WdfRequestRetrieveOutputBuffer(self.handle, 1, &mut buffer, &mut length) })?;
        if buffer.is_null() {
            return Err(STATUS_BUFFER_TOO_SMALL);
        }
        // SAFETY: the framework guarantees `length` writable bytes at `buffer` while the request
        // is ours; the slice does not outlive this call.
        let out = unsafe { core::slice::from_raw_parts_mut(buffer as *mut u8, length.min(limit)) };
        Ok(fill(out).min(out.len()))
    }

    /// Makes a request the driver keeps pending cancelable: `cancel` runs (and must complete
    /// it) if the caller cancels or closes its handle. Err(STATUS_CANCELLED): already cancelled —
    /// complete it now.
    pub fn mark_cancelable(&self, cancel: PFN_WDF_REQUEST_CANCEL) -> Result<(), NTSTATUS> {
        // SAFETY: the request is ours, not completed and not cancelable yet.
        check(unsafe { WdfRequestMarkCancelableEx(self.handle, cancel) })
    }

    /// Takes back a cancelable request before completing it. Err(STATUS_CANCELLED): the cancel
    /// routine runs (or ran) and completes it — do not touch it any more.
    pub fn unmark_cancelable(&self) -> Result<(), NTSTATUS> {
        // SAFETY: the request is ours and was marked cancelable.
        check(unsafe { WdfRequestUnmarkCancelable(self.handle) })
    }

    /// Completes the request; `information` is the number of output bytes to return.
    pub fn complete(self, status: NTSTATUS, information: usize) {
        // SAFETY: the request is ours and, consuming `self`, is completed exactly once here.
        unsafe { WdfRequestCompleteWithInformation(self.handle, status, information) }
    }
}

/// The context type of [`Request::set_tag`]: one `u64` per tagged request.
static REQUEST_TAG: WDF_OBJECT_CONTEXT_TYPE_INFO = WDF_OBJECT_CONTEXT_TYPE_INFO {
    Size: core::mem::size_of::<WDF_OBJECT_CONTEXT_TYPE_INFO>() as u32,
    ContextName: c"WSKTLS_REQUEST_TAG".as_ptr().cast(),
    ContextSize: core::mem::size_of::<u64>(),
    UniqueType: &REQUEST_TAG,
    EvtDriverGetUniqueContextType: ptr::null(),
};

impl Request {
    /// Attaches `tag` to the request (a KMDF object context, freed with the request), so a
    /// cancel routine, which only gets the handle, can tell where the driver keeps it.
    pub fn set_tag(&self, tag: u64) -> Result<(), NTSTATUS> {
        let mut attributes = WDF_OBJECT_ATTRIBUTES::init();
        attributes.ContextTypeInfo = &REQUEST_TAG;
        let mut context: *mut c_void = ptr::null_mut();
        // SAFETY: the request is ours and not completed; the attributes and out-param are locals
        // and the type info is a static.
        check(unsafe {
            WdfObjectAllocateContext(self.handle.as_object(), &mut attributes, &mut context)
        })?;
        if context.is_null() {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        // SAFETY: the framework allocated ContextSize (8) bytes for this type, aligned for u64.
        unsafe { (context as *mut u64).write(tag) };
        Ok(())
    }

    /// The tag [`Self::set_tag`] attached, if any.
    pub fn tag(&self) -> Option<u64> {
        let object = self.handle.as_object();
        // SAFETY: the request is live (presented or in its cancel routine); the type info is a
        // static.
        let context = unsafe { WdfObjectGetTypedContextWorker(object, &REQUEST_TAG) };
        // SAFETY: a non-NULL context of this type is the u64 `set_tag` wrote.
        (!context.is_null()).then(|| unsafe { (context as *const u64).read() })
    }
}

/// A request the driver keeps pending (marked cancelable) in its own tables: only its handle,
/// so it can sit in any structure; [`ParkedRequest::resume`] gives the [`Request`] back.
#[derive(Debug, PartialEq, Eq)]
pub struct ParkedRequest {
    handle: usize,
}

impl Request {
    /// Parks the request (the driver must resume and complete it, or let its cancel routine).
    pub fn park(self) -> ParkedRequest {
        ParkedRequest {
            handle: self.handle.as_raw() as usize,
        }
    }
}

impl ParkedRequest {
    /// Whether this is the request the framework names by `handle` (e.g. in a cancel routine).
    pub fn is(&self, handle: WDFREQUEST) -> bool {
        self.handle == handle.as_raw() as usize
    }

    /// Lends the request to `use_it` — to read its input, fill its output or unmark it — while
    /// it stays parked: a borrow cannot complete it (that takes [`Self::resume`]). Live for the
    /// same reason as there.
    pub fn with<R>(&self, use_it: impl FnOnce(&Request) -> R) -> R {
        let request = Request {
            // SAFETY: as in `resume`.
            handle: unsafe { WDFREQUEST::from_raw(self.handle as *mut c_void) },
        };
        use_it(&request)
    }

    /// The request again, to unmark and complete.
    pub fn resume(self) -> Request {
        Request {
            // A parked request stays live until completed, which only the holder of this value
            // (or the cancel routine, which then never finds this value) does.
            // SAFETY: the handle came from a live Request in `park`, still live (above).
            handle: unsafe { WDFREQUEST::from_raw(self.handle as *mut c_void) },
        }
    }
}
