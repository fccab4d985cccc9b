//! InitializeSecurityContext / AcceptSecurityContext (asynchronous forms): checking the
//! caller's buffers as Schannel does, stepping the TLS engine, writing tokens, EXTRA and
//! attributes back; deleting contexts.

use super::*;

pub(super) struct HandshakeCall {
    pub(super) credential: Option<(usize, Arc<Credential>)>,
    pub(super) existing: Option<(usize, usize, bool, Arc<Mutex<Session>>)>,
    pub(super) inputs: Vec<InputBuffer>,
    pub(super) input_desc: Out,
    pub(super) output_desc: Out,
    pub(super) new_context: Out,
    pub(super) attributes: Out,
    pub(super) expiry: Out,
    pub(super) requirements: u32,
    pub(super) target: String,
    pub(super) inbound: bool,
    pub(super) bad_handle: bool,
}

/// One ISC/ASC call. Whatever fails, the output TOKEN's cbBuffer says what was really written
/// (0 on a failure before the handshake ran): a caller never sees its own capacity back.
pub(super) fn handshake(call: HandshakeCall) -> SECURITY_STATUS {
    let (output, requirements, inbound) = (call.output_desc, call.requirements, call.inbound);
    match handshake_steps(call) {
        Ok(status) => status,
        Err(status) => {
            let _ = write_output(output, &[], requirements, inbound);
            status
        }
    }
}

pub(super) fn handshake_steps(call: HandshakeCall) -> Result<SECURITY_STATUS, SECURITY_STATUS> {
    if call.bad_handle {
        return Err(SEC_E_INVALID_HANDLE);
    }
    let kernel = thread::kernel();
    let store = kernel.ksecdd.store().clone();
    let alpn: Vec<Vec<u8>> = call
        .inputs
        .iter()
        .filter(|b| b.kind == SECBUFFER_APPLICATION_PROTOCOLS)
        .flat_map(|b| buffers::alpn_ids(&b.data))
        .collect();
    let mut token: Vec<u8> = call
        .inputs
        .iter()
        .find(|b| b.kind == SECBUFFER_TOKEN)
        .map(|b| b.data.clone())
        .unwrap_or_default();
    // The session: an existing context's, or a new one from the credential.
    let mut asked = None;
    let (session, created) = match &call.existing {
        Some((_, credential, _, session)) => {
            if call
                .credential
                .as_ref()
                .is_some_and(|(id, _)| id != credential)
            {
                violation(
                    format!(
                        "security context used with credential {:#x}, not the one it was created with",
                        call.credential.as_ref().map_or(0, |c| c.0)
                    ),
                    *credential,
                );
            }
            (session.clone(), None)
        }
        None => {
            let Some((cred_id, credential)) = call.credential.clone() else {
                return Err(SEC_E_INVALID_HANDLE);
            };
            if credential.inbound != call.inbound {
                return Err(SEC_E_UNKNOWN_CREDENTIALS);
            }
            let conn = if call.inbound {
                let mutual = u64::from(call.requirements) & ASC_REQ_MUTUAL_AUTH != 0;
                match creds::server_config(&credential, &store, mutual, alpn).and_then(|c| {
                    UnbufferedServerConnection::new(c).map_err(|e| tls::status_of(&e))
                }) {
                    Ok(c) => Conn::Server(Box::new(c)),
                    Err(status) => return Err(status),
                }
            } else {
                asked = creds::may_look_for_default_certificate(&credential)
                    .then(|| Arc::new(creds::CertificateAsked::default()));
                match creds::client_config(
                    &credential,
                    &store,
                    call.requirements,
                    alpn,
                    asked.clone(),
                )
                .and_then(|c| {
                    UnbufferedClientConnection::new(c, creds::server_name(&call.target))
                        .map_err(|e| tls::status_of(&e))
                }) {
                    Ok(c) => Conn::Client(Box::new(c)),
                    Err(status) => return Err(status),
                }
            };
            let mut session = Session::new(conn);
            session.certificate_asked = asked;
            (Arc::new(Mutex::new(session)), Some(cred_id))
        }
    };
    let mut step = session
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .handshake(&mut token);
    let mut status = step.status;
    // A first call that consumed nothing creates no context.
    if created.is_some() && status == SEC_E_INCOMPLETE_MESSAGE {
        write_back_input(call.input_desc, &step, token.len());
        let _ = write_output(call.output_desc, &[], call.requirements, call.inbound);
        return Ok(status);
    }
    let id = match (&call.existing, created) {
        (Some((id, ..)), _) => *id,
        (None, Some(cred_id)) => {
            let mut s = kernel.ksecdd.lock();
            s.next_id += 1;
            let id = s.next_id;
            s.contexts.insert(
                id,
                ContextEntry {
                    credential: cred_id,
                    inbound: call.inbound,
                    session: session.clone(),
                    site: Site::here(kernel.next_sequence()),
                },
            );
            id
        }
        (None, None) => unreachable!("a call has an existing context or creates one"),
    };
    if status.is_success()
        && !output_fits(
            call.output_desc,
            step.output.len(),
            call.requirements,
            call.inbound,
        )
    {
        // The output TOKEN is too small for the flight: nothing is consumed and nothing lost —
        // the caller learns the size needed (cbBuffer) and calls again with the same input.
        let _ = write_output(
            call.output_desc,
            &step.output,
            call.requirements,
            call.inbound,
        );
        session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .defer(std::mem::take(&mut step.output), step.consumed);
        status = SECURITY_STATUS(STATUS_BUFFER_TOO_SMALL.0);
    } else {
        write_back_input(call.input_desc, &step, token.len());
        if let Err(s) = write_output(
            call.output_desc,
            &step.output,
            call.requirements,
            call.inbound,
        ) {
            status = s;
        }
    }
    // SAFETY: the caller's out-parameters, alive until the callback.
    unsafe {
        *call.new_context.get::<SecHandle>() = SecHandle {
            dwLower: CONTEXT_TAG,
            dwUpper: id,
        };
        if !call.attributes.get::<u32>().is_null() {
            *call.attributes.get::<u32>() = returned_attributes(call.requirements, call.inbound);
        }
        if !call.expiry.get::<TimeStamp>().is_null() {
            *call.expiry.get::<TimeStamp>() = i64::MAX;
        }
    }
    Ok(status)
}

pub(super) fn returned_attributes(requirements: u32, inbound: bool) -> u32 {
    let honoured = if inbound {
        (ASC_REQ_REPLAY_DETECT
            | ASC_REQ_SEQUENCE_DETECT
            | ASC_REQ_CONFIDENTIALITY
            | ASC_REQ_EXTENDED_ERROR
            | ASC_REQ_STREAM
            | ASC_REQ_ALLOCATE_MEMORY
            | ASC_REQ_MUTUAL_AUTH) as u32
    } else {
        (ISC_REQ_REPLAY_DETECT
            | ISC_REQ_SEQUENCE_DETECT
            | ISC_REQ_CONFIDENTIALITY
            | ISC_REQ_EXTENDED_ERROR
            | ISC_REQ_STREAM
            | ISC_REQ_ALLOCATE_MEMORY
            | ISC_REQ_MANUAL_CRED_VALIDATION) as u32
    };
    requirements & honoured
}

/// Writes SECBUFFER_EXTRA / SECBUFFER_MISSING into the caller's input array (the first EMPTY
/// slot after the token, as Schannel does), leaving pvBuffer alone.
pub(super) fn write_back_input(desc: Out, step: &tls::Step, total: usize) {
    // SAFETY: the caller's input descriptor, alive until the callback.
    let bufs = unsafe { buffers::buffers(desc.get::<SecBufferDesc>()) };
    let slot = bufs.iter().position(|b| b.kind() == SECBUFFER_EMPTY);
    let Some(slot) = slot else { return };
    if step.status == SEC_E_INCOMPLETE_MESSAGE {
        bufs[slot].BufferType = SECBUFFER_MISSING;
        bufs[slot].cbBuffer = step.missing as u32;
    } else if step.consumed < total {
        bufs[slot].BufferType = SECBUFFER_EXTRA;
        bufs[slot].cbBuffer = (total - step.consumed) as u32;
    }
}

/// Fills the caller's output TOKEN (and empties ALERT): copied into its buffer, or allocated
/// with *_REQ_ALLOCATE_MEMORY (freed with FreeContextBuffer).
pub(super) fn write_output(
    desc: Out,
    output: &[u8],
    requirements: u32,
    inbound: bool,
) -> Result<(), SECURITY_STATUS> {
    // SAFETY: the caller's output descriptor, alive until the callback.
    let bufs = unsafe { buffers::buffers(desc.get::<SecBufferDesc>()) };
    let allocate = allocates(requirements, inbound);
    let mut result = Ok(());
    let mut written = false;
    for b in bufs.iter_mut() {
        match b.kind() {
            SECBUFFER_TOKEN if !written => {
                written = true;
                if allocate {
                    if output.is_empty() {
                        b.pvBuffer = std::ptr::null_mut();
                        b.cbBuffer = 0;
                    } else {
                        b.pvBuffer = allocate_context_buffer(output) as *mut c_void;
                        b.cbBuffer = output.len() as u32;
                    }
                } else if (b.cbBuffer as usize) < output.len()
                    || (b.pvBuffer.is_null() && !output.is_empty())
                {
                    b.cbBuffer = output.len() as u32;
                    // The NTSTATUS value as the call's status: what a reverse-engineered
                    // ksecdd build reports (docs/windows-validation.md W13).
                    result = Err(SECURITY_STATUS(STATUS_BUFFER_TOO_SMALL.0));
                } else {
                    // SAFETY: the caller's buffer holds cbBuffer >= output.len() bytes.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            output.as_ptr(),
                            b.pvBuffer as *mut u8,
                            output.len(),
                        )
                    };
                    b.cbBuffer = output.len() as u32;
                }
            }
            SECBUFFER_ALERT => b.cbBuffer = 0,
            _ => {}
        }
    }
    result
}

/// Whether the call asked SSPI to allocate its output (*_REQ_ALLOCATE_MEMORY).
pub(super) fn allocates(requirements: u32, inbound: bool) -> bool {
    let flag = if inbound {
        ASC_REQ_ALLOCATE_MEMORY
    } else {
        ISC_REQ_ALLOCATE_MEMORY
    };
    u64::from(requirements) & flag != 0
}

/// Whether `length` bytes fit the caller's output TOKEN (always, with *_REQ_ALLOCATE_MEMORY).
pub(super) fn output_fits(desc: Out, length: usize, requirements: u32, inbound: bool) -> bool {
    let allocate = allocates(requirements, inbound);
    // SAFETY: the caller's output descriptor, alive until the callback.
    let bufs = unsafe { buffers::buffers(desc.get::<SecBufferDesc>()) };
    allocate
        || length == 0
        || bufs
            .iter()
            .find(|b| b.kind() == SECBUFFER_TOKEN)
            .is_some_and(|b| !b.pvBuffer.is_null() && b.cbBuffer as usize >= length)
}

pub(super) fn allocate_context_buffer(bytes: &[u8]) -> usize {
    let kernel = thread::kernel();
    let p = crate::io::alloc_zeroed(bytes.len());
    // SAFETY: a fresh allocation of bytes.len() bytes.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
    kernel.ksecdd.lock().context_buffers.insert(
        p as usize,
        (bytes.len(), Site::here(kernel.next_sequence())),
    );
    p as usize
}

/// Checks and copies what an ISC/ASC call hands over; Err is the synchronous return.
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare(
    routine: &str,
    credential: *mut SecHandle,
    context: *mut SecHandle,
    input: *mut SecBufferDesc,
    new_context: *mut SecHandle,
    output: *mut SecBufferDesc,
    attributes: *mut u32,
    expiry: *mut TimeStamp,
    requirements: u32,
    target: String,
    inbound: bool,
) -> Result<HandshakeCall, SECURITY_STATUS> {
    if (context.is_null() && credential.is_null()) || new_context.is_null() {
        return Err(SEC_E_INVALID_HANDLE);
    }
    if output.is_null() {
        violation(
            format!("{routine}: NULL output descriptor (Schannel dereferences it unconditionally)"),
            0,
        );
    }
    if attributes.is_null() {
        violation(
            format!("{routine}: NULL attributes pointer (written before the call returns)"),
            0,
        );
    }
    // SAFETY: checked non-NULL.
    if unsafe { buffers::count(output) } > MAX_OUTPUT_BUFFERS {
        return Err(SEC_E_INVALID_PARAMETER);
    }
    let mut bad_handle = false;
    let credential = match credential {
        p if p.is_null() => None,
        p => match self::credential(p, routine) {
            Lookup::Found(c) => Some(c),
            Lookup::Unknown => {
                bad_handle = true;
                None
            }
        },
    };
    let existing = match context {
        p if p.is_null() => None,
        p => match self::context(p, routine) {
            Lookup::Found(c) => Some(c),
            Lookup::Unknown => {
                bad_handle = true;
                None
            }
        },
    };
    if existing.as_ref().is_some_and(|c| c.2 != inbound) {
        bad_handle = true;
    }
    // SAFETY: the caller's input descriptor (or NULL): copied now, as Schannel marshals it.
    let inputs = unsafe { buffers::copy_inputs(input) };
    Ok(HandshakeCall {
        credential,
        existing,
        inputs,
        input_desc: Out::of(input),
        output_desc: Out::of(output),
        new_context: Out::of(new_context),
        attributes: Out::of(attributes),
        expiry: Out::of(expiry),
        requirements,
        target,
        inbound,
        bad_handle,
    })
}

/// SspiInitializeSecurityContextAsyncW (client).
pub(crate) unsafe extern "win64" fn sspi_initialize_security_context_async_w(
    async_context: *mut SspiAsyncContext,
    credential: *mut SecHandle,
    context: *mut SecHandle,
    target: *const UNICODE_STRING,
    requirements: u32,
    _reserved1: u32,
    _data_rep: u32,
    input: *mut SecBufferDesc,
    _reserved2: u32,
    new_context: *mut SecHandle,
    output: *mut SecBufferDesc,
    attributes: *mut u32,
    expiry: *mut TimeStamp,
) -> SECURITY_STATUS {
    thread::require_at_most("SspiInitializeSecurityContextAsyncW", PASSIVE);
    if target.is_null() {
        violation("SspiInitializeSecurityContextAsyncW: NULL target name (ksecdd would route the call as an Accept); pass an empty UNICODE_STRING instead".into(), 0);
    }
    let target = unicode(target).unwrap_or_default();
    match prepare(
        "SspiInitializeSecurityContextAsyncW",
        credential,
        context,
        input,
        new_context,
        output,
        attributes,
        expiry,
        requirements,
        target,
        false,
    ) {
        Ok(call) => start(
            async_context,
            "SspiInitializeSecurityContextAsyncW",
            true,
            move || handshake(call),
        ),
        Err(status) => status,
    }
}

/// SspiAcceptSecurityContextAsync (server).
pub(crate) unsafe extern "win64" fn sspi_accept_security_context_async(
    async_context: *mut SspiAsyncContext,
    credential: *mut SecHandle,
    context: *mut SecHandle,
    input: *mut SecBufferDesc,
    requirements: u32,
    _data_rep: u32,
    new_context: *mut SecHandle,
    output: *mut SecBufferDesc,
    attributes: *mut u32,
    expiry: *mut TimeStamp,
) -> SECURITY_STATUS {
    thread::require_at_most("SspiAcceptSecurityContextAsync", PASSIVE);
    if !attributes.is_null() {
        // SAFETY: the caller's out-parameters: ASC zeroes them before queueing.
        unsafe {
            *attributes = 0;
            if !expiry.is_null() {
                *expiry = 0;
            }
        }
    }
    match prepare(
        "SspiAcceptSecurityContextAsync",
        credential,
        context,
        input,
        new_context,
        output,
        attributes,
        expiry,
        requirements,
        String::new(),
        true,
    ) {
        Ok(call) => start(
            async_context,
            "SspiAcceptSecurityContextAsync",
            true,
            move || handshake(call),
        ),
        Err(status) => status,
    }
}

pub(super) fn delete_context(handle: SecHandle) -> SECURITY_STATUS {
    let kernel = ksecdd();
    let mut s = kernel.ksecdd.lock();
    if handle.dwLower != CONTEXT_TAG {
        return SEC_E_INVALID_HANDLE;
    }
    if s.freed_contexts.contains(&handle.dwUpper) {
        drop(s);
        violation(
            format!("security context {:#x} deleted twice", handle.dwUpper),
            handle.dwUpper,
        );
    }
    match s.contexts.remove(&handle.dwUpper) {
        Some(_) => {
            s.freed_contexts.insert(handle.dwUpper);
            SEC_E_OK
        }
        None => SEC_E_INVALID_HANDLE,
    }
}

/// DeleteSecurityContext.
pub(crate) unsafe extern "win64" fn delete_security_context(
    context: *mut SecHandle,
) -> SECURITY_STATUS {
    thread::require_at_most("DeleteSecurityContext", PASSIVE);
    ksecdd().ksecdd.count_release("DeleteSecurityContext");
    if context.is_null() {
        return SEC_E_INVALID_HANDLE;
    }
    // SAFETY: the caller's handle.
    delete_context(unsafe { *context })
}

/// SspiDeleteSecurityContextAsync (the only async call that may go without a callback).
pub(crate) unsafe extern "win64" fn sspi_delete_security_context_async(
    async_context: *mut SspiAsyncContext,
    context: *mut SecHandle,
) -> SECURITY_STATUS {
    thread::require_at_most("SspiDeleteSecurityContextAsync", PASSIVE);
    ksecdd()
        .ksecdd
        .count_release("SspiDeleteSecurityContextAsync");
    if context.is_null() {
        return SEC_E_INVALID_HANDLE;
    }
    // SAFETY: the caller's handle, copied now.
    let handle = unsafe { *context };
    start(
        async_context,
        "SspiDeleteSecurityContextAsync",
        false,
        move || delete_context(handle),
    )
}
