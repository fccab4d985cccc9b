//! ksecdd.sys: kernel Schannel — the asynchronous SSPI calls (their result delivered through
//! SspiGetAsyncCallStatus after a notify callback on an LSA-like worker thread at PASSIVE_LEVEL,
//! or inline before the call returns), credentials from the emulated machine store, and the
//! synchronous EncryptMessage / DecryptMessage / QueryContextAttributesW of stream TLS, on rustls.

pub(crate) mod buffers;
pub(crate) mod creds;
pub mod store;
pub(crate) mod tls;

use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use ksys::ntdef::{
    NTSTATUS, STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_PARAMETER, STATUS_SUCCESS, UNICODE_STRING,
};
use ksys::schannel::*;
use ksys::sspi::*;
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;

use self::buffers::InputBuffer;
use self::creds::Credential;
use self::store::CertStore;
use self::tls::{Conn, Session};
use crate::bugcheck::{bugcheck, codes};
use crate::leaks::{Leak, LeakKind, Site};
use crate::thread::{self, PASSIVE};

/// P1 sub-code of DRIVER_VERIFIER_DETECTED_VIOLATION for SSPI rule violations.
pub const SSPI_RULE: usize = 0x500;

const CREDENTIAL_TAG: usize = 0x6372_6564; // "cred"
const CONTEXT_TAG: usize = 0x6374_7874; // "ctxt"
const ASYNC_CONTEXT_SIZE: usize = 0xF0;
/// Most output buffers Schannel accepts.
const MAX_OUTPUT_BUFFERS: u32 = 18;
/// SECQOP_WRAP_OOB_DATA: EncryptMessage sends an alert whose level/description is the DATA.
const SECQOP_WRAP_OOB_DATA: u32 = 0x4000_0000;

type Callback = unsafe extern "win64" fn(*mut SspiAsyncContext, *mut c_void);

struct AsyncContext {
    status: SECURITY_STATUS,
    callback: SspiAsyncNotifyCallback,
    data: usize,
    pending: bool,
    /// The queueing failed after the context went pending: no completion will ever come, and
    /// freeing it is the only (documented) way out.
    wedged: bool,
    site: Site,
}

struct CredentialEntry {
    credential: Arc<Credential>,
    site: Site,
}

struct ContextEntry {
    credential: usize,
    inbound: bool,
    session: Arc<Mutex<Session>>,
    site: Site,
}

#[derive(Default)]
struct SecState {
    async_contexts: HashMap<usize, AsyncContext>,
    credentials: HashMap<usize, CredentialEntry>,
    contexts: HashMap<usize, ContextEntry>,
    freed_credentials: HashSet<usize>,
    freed_contexts: HashSet<usize>,
    context_buffers: HashMap<usize, (usize, Site)>,
    next_id: usize,
    /// How often each releasing routine was called (which of them a driver uses for teardown).
    release_calls: HashMap<&'static str, u64>,
}

/// Kernel Schannel of one kernel.
#[derive(Default)]
pub(crate) struct Ksecdd {
    state: Mutex<SecState>,
    store: OnceLock<CertStore>,
}

impl Ksecdd {
    fn lock(&self) -> MutexGuard<'_, SecState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls of `routine` so far (DeleteSecurityContext, SspiDeleteSecurityContextAsync,
    /// FreeCredentialsHandle, SspiFreeCredentialsHandleAsync).
    pub fn release_calls(&self, routine: &str) -> u64 {
        self.lock().release_calls.get(routine).copied().unwrap_or(0)
    }

    fn count_release(&self, routine: &'static str) {
        *self.lock().release_calls.entry(routine).or_default() += 1;
    }

    /// Sets the machine store (at boot).
    pub fn set_store(&self, store: CertStore) {
        let _ = self.store.set(store);
    }

    /// The machine store.
    pub fn store(&self) -> &CertStore {
        self.store
            .get()
            .expect("kemu: certificate store set at boot")
    }

    /// Everything SSPI still holds for the driver.
    pub fn leaks(&self) -> Vec<Leak> {
        let s = self.lock();
        let mut leaks: Vec<Leak> = s
            .async_contexts
            .iter()
            .map(|(&a, c)| Leak {
                kind: LeakKind::Sspi,
                address: a,
                tag: format!(
                    "SspiAsyncContext{}",
                    if c.pending { " (call pending)" } else { "" }
                ),
                size: ASYNC_CONTEXT_SIZE,
                site: c.site.clone(),
            })
            .collect();
        leaks.extend(s.credentials.iter().map(|(&id, c)| Leak {
            kind: LeakKind::Sspi,
            address: id,
            tag: format!(
                "credential handle ({})",
                if c.credential.inbound {
                    "inbound"
                } else {
                    "outbound"
                }
            ),
            size: 0,
            site: c.site.clone(),
        }));
        leaks.extend(s.contexts.iter().map(|(&id, c)| Leak {
            kind: LeakKind::Sspi,
            address: id,
            tag: format!(
                "security context ({})",
                if c.inbound { "server" } else { "client" }
            ),
            size: 0,
            site: c.site.clone(),
        }));
        leaks.extend(s.context_buffers.iter().map(|(&a, (size, site))| Leak {
            kind: LeakKind::Sspi,
            address: a,
            tag: "context buffer (FreeContextBuffer)".into(),
            size: *size,
            site: site.clone(),
        }));
        leaks
    }
}

fn violation(message: String, object: usize) -> ! {
    bugcheck(
        codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
        [SSPI_RULE, object, 0, 0],
        message,
    )
}

fn ksecdd() -> Arc<crate::kernel::Shared> {
    thread::kernel()
}

// ---------------------------------------------------------------- handles

enum Lookup<T> {
    Found(T),
    Unknown,
}

/// Finds a credential; a freed one is a verifier stop (use after free).
fn credential(handle: *const SecHandle, routine: &str) -> Lookup<(usize, Arc<Credential>)> {
    if handle.is_null() {
        return Lookup::Unknown;
    }
    // SAFETY: the caller's handle.
    let h = unsafe { *handle };
    let kernel = ksecdd();
    let s = kernel.ksecdd.lock();
    if h.dwLower != CREDENTIAL_TAG {
        return Lookup::Unknown;
    }
    if s.freed_credentials.contains(&h.dwUpper) {
        drop(s);
        violation(
            format!(
                "{routine}: credential handle {:#x} used after it was freed",
                h.dwUpper
            ),
            h.dwUpper,
        );
    }
    match s.credentials.get(&h.dwUpper) {
        Some(c) => Lookup::Found((h.dwUpper, c.credential.clone())),
        None => Lookup::Unknown,
    }
}

/// Finds a context; a deleted one is a verifier stop.
fn context(
    handle: *const SecHandle,
    routine: &str,
) -> Lookup<(usize, usize, bool, Arc<Mutex<Session>>)> {
    if handle.is_null() {
        return Lookup::Unknown;
    }
    // SAFETY: the caller's handle.
    let h = unsafe { *handle };
    let kernel = ksecdd();
    let s = kernel.ksecdd.lock();
    if h.dwLower != CONTEXT_TAG {
        return Lookup::Unknown;
    }
    if s.freed_contexts.contains(&h.dwUpper) {
        drop(s);
        violation(
            format!(
                "{routine}: security context {:#x} used after it was deleted",
                h.dwUpper
            ),
            h.dwUpper,
        );
    }
    match s.contexts.get(&h.dwUpper) {
        Some(c) => Lookup::Found((h.dwUpper, c.credential, c.inbound, c.session.clone())),
        None => Lookup::Unknown,
    }
}

// ---------------------------------------------------------------- async contexts

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
fn start(
    context: *mut SspiAsyncContext,
    routine: &str,
    callback_required: bool,
    work: impl FnOnce() -> SECURITY_STATUS + Send + 'static,
) -> SECURITY_STATUS {
    start_after(context, routine, callback_required, Duration::ZERO, work)
}

/// As [`start`], for a call the LSA takes `delay` over: such a call never completes inline.
fn start_after(
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
struct Out(usize);

impl Out {
    fn of<T>(p: *mut T) -> Out {
        Out(p as usize)
    }
    fn get<T>(self) -> *mut T {
        self.0 as *mut T
    }
}

// ---------------------------------------------------------------- credentials

fn unicode(s: *const UNICODE_STRING) -> Option<String> {
    // SAFETY: the caller's UNICODE_STRING (or NULL).
    unsafe { crate::rtl::unicode_text(s) }
}

/// SspiAcquireCredentialsHandleAsyncW.
pub(crate) unsafe extern "win64" fn sspi_acquire_credentials_handle_async_w(
    context: *mut SspiAsyncContext,
    _principal: *const UNICODE_STRING,
    package: *const UNICODE_STRING,
    credential_use: u32,
    _logon_id: *mut c_void,
    auth_data: *mut c_void,
    _get_key_fn: *mut c_void,
    _get_key_argument: *mut c_void,
    credential_out: *mut SecHandle,
    expiry: *mut TimeStamp,
) -> SECURITY_STATUS {
    thread::require_at_most("SspiAcquireCredentialsHandleAsyncW", PASSIVE);
    if credential_out.is_null() {
        return SEC_E_INVALID_HANDLE;
    }
    let package = unicode(package).unwrap_or_default();
    let known = package.eq_ignore_ascii_case("Schannel")
        || package.eq_ignore_ascii_case("Microsoft Unified Security Protocol Provider");
    let inbound = credential_use & SECPKG_CRED_INBOUND != 0;
    // SCH_CREDENTIALS and everything it points to are read now (the caller keeps them alive
    // until the callback, as it must; reading early is the strict choice).
    let parsed = if known && credential_use & SECPKG_CRED_BOTH != 0 {
        // SAFETY: auth_data is the caller's SCH_CREDENTIALS (or NULL).
        Some(unsafe {
            creds::parse(
                auth_data as *const SCH_CREDENTIALS,
                inbound,
                ksecdd().ksecdd.store(),
            )
        })
    } else {
        None
    };
    let (out, expiry) = (Out::of(credential_out), Out::of(expiry));
    start_after(
        context,
        "SspiAcquireCredentialsHandleAsyncW",
        true,
        ksecdd().faults.credential_delay(),
        move || {
            let credential = match parsed {
                None if !known => return SEC_E_SECPKG_NOT_FOUND,
                None => return SEC_E_UNKNOWN_CREDENTIALS,
                Some(Err(status)) => return status,
                Some(Ok(c)) => c,
            };
            let kernel = thread::kernel();
            let id = {
                let mut s = kernel.ksecdd.lock();
                s.next_id += 1;
                let id = s.next_id;
                s.credentials.insert(
                    id,
                    CredentialEntry {
                        credential: Arc::new(credential),
                        site: Site::here(kernel.next_sequence()),
                    },
                );
                id
            };
            // SAFETY: the caller's out-parameters, alive until the callback.
            unsafe {
                *out.get::<SecHandle>() = SecHandle {
                    dwLower: CREDENTIAL_TAG,
                    dwUpper: id,
                };
                if !expiry.get::<TimeStamp>().is_null() {
                    *expiry.get::<TimeStamp>() = i64::MAX;
                }
            }
            SEC_E_OK
        },
    )
}

/// SetCredentialsAttributesW: SECPKG_ATTR_CLIENT_CERT_POLICY on a server credential (how a
/// server that requires client certificates says how to build their chains, as MsQuic does).
pub(crate) unsafe extern "win64" fn set_credentials_attributes_w(
    credential: *mut SecHandle,
    attribute: u32,
    buffer: *mut c_void,
    size: u32,
) -> SECURITY_STATUS {
    thread::require_at_most("SetCredentialsAttributesW", PASSIVE);
    let Lookup::Found((_, credential)) = self::credential(credential, "SetCredentialsAttributesW")
    else {
        return SEC_E_INVALID_HANDLE;
    };
    match attribute {
        SECPKG_ATTR_CLIENT_CERT_POLICY if credential.inbound => {
            if buffer.is_null()
                || (size as usize) < std::mem::size_of::<SecPkgCred_ClientCertPolicy>()
            {
                return SEC_E_INVALID_PARAMETER;
            }
            // SAFETY: the caller's structure of at least its size.
            let policy = unsafe { *(buffer as *const SecPkgCred_ClientCertPolicy) };
            *credential
                .client_cert_policy
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(policy.dwCertFlags);
            SEC_E_OK
        }
        _ => SEC_E_UNSUPPORTED_FUNCTION,
    }
}

fn free_credential(handle: SecHandle) -> SECURITY_STATUS {
    let kernel = ksecdd();
    let mut s = kernel.ksecdd.lock();
    if handle.dwLower != CREDENTIAL_TAG {
        return SEC_E_INVALID_HANDLE;
    }
    if s.freed_credentials.contains(&handle.dwUpper) {
        drop(s);
        violation(
            format!("credential handle {:#x} freed twice", handle.dwUpper),
            handle.dwUpper,
        );
    }
    match s.credentials.remove(&handle.dwUpper) {
        Some(_) => {
            s.freed_credentials.insert(handle.dwUpper);
            SEC_E_OK
        }
        None => SEC_E_INVALID_HANDLE,
    }
}

/// FreeCredentialsHandle.
pub(crate) unsafe extern "win64" fn free_credentials_handle(
    credential: *mut SecHandle,
) -> SECURITY_STATUS {
    thread::require_at_most("FreeCredentialsHandle", PASSIVE);
    ksecdd().ksecdd.count_release("FreeCredentialsHandle");
    if credential.is_null() {
        return SEC_E_INVALID_HANDLE;
    }
    // SAFETY: the caller's handle.
    free_credential(unsafe { *credential })
}

/// SspiFreeCredentialsHandleAsync.
pub(crate) unsafe extern "win64" fn sspi_free_credentials_handle_async(
    context: *mut SspiAsyncContext,
    credential: *mut SecHandle,
) -> SECURITY_STATUS {
    thread::require_at_most("SspiFreeCredentialsHandleAsync", PASSIVE);
    ksecdd()
        .ksecdd
        .count_release("SspiFreeCredentialsHandleAsync");
    if credential.is_null() {
        return SEC_E_INVALID_HANDLE;
    }
    // SAFETY: the caller's handle, copied now.
    let handle = unsafe { *credential };
    start(context, "SspiFreeCredentialsHandleAsync", true, move || {
        free_credential(handle)
    })
}

// ---------------------------------------------------------------- ISC / ASC

struct HandshakeCall {
    credential: Option<(usize, Arc<Credential>)>,
    existing: Option<(usize, usize, bool, Arc<Mutex<Session>>)>,
    inputs: Vec<InputBuffer>,
    input_desc: Out,
    output_desc: Out,
    new_context: Out,
    attributes: Out,
    expiry: Out,
    requirements: u32,
    target: String,
    inbound: bool,
    bad_handle: bool,
}

/// One ISC/ASC call. Whatever fails, the output TOKEN's cbBuffer says what was really written
/// (0 on a failure before the handshake ran): a caller never sees its own capacity back.
fn handshake(call: HandshakeCall) -> SECURITY_STATUS {
    let (output, requirements, inbound) = (call.output_desc, call.requirements, call.inbound);
    match handshake_steps(call) {
        Ok(status) => status,
        Err(status) => {
            let _ = write_output(output, &[], requirements, inbound);
            status
        }
    }
}

fn handshake_steps(call: HandshakeCall) -> Result<SECURITY_STATUS, SECURITY_STATUS> {
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

fn returned_attributes(requirements: u32, inbound: bool) -> u32 {
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
fn write_back_input(desc: Out, step: &tls::Step, total: usize) {
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
fn write_output(
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
fn allocates(requirements: u32, inbound: bool) -> bool {
    let flag = if inbound {
        ASC_REQ_ALLOCATE_MEMORY
    } else {
        ISC_REQ_ALLOCATE_MEMORY
    };
    u64::from(requirements) & flag != 0
}

/// Whether `length` bytes fit the caller's output TOKEN (always, with *_REQ_ALLOCATE_MEMORY).
fn output_fits(desc: Out, length: usize, requirements: u32, inbound: bool) -> bool {
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

fn allocate_context_buffer(bytes: &[u8]) -> usize {
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
fn prepare(
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

fn delete_context(handle: SecHandle) -> SECURITY_STATUS {
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

// ---------------------------------------------------------------- messages

fn session_of(
    context: *mut SecHandle,
    routine: &str,
) -> Result<Arc<Mutex<Session>>, SECURITY_STATUS> {
    match self::context(context, routine) {
        Lookup::Found((.., session)) => Ok(session),
        Lookup::Unknown => Err(SEC_E_INVALID_HANDLE),
    }
}

/// EncryptMessage (ksecdd!SealMessage): one record into STREAM_HEADER / DATA / STREAM_TRAILER.
pub(crate) unsafe extern "win64" fn encrypt_message(
    context: *mut SecHandle,
    qop: u32,
    message: *mut SecBufferDesc,
    _sequence: u32,
) -> SECURITY_STATUS {
    thread::require_at_most("EncryptMessage", PASSIVE);
    let session = match session_of(context, "EncryptMessage") {
        Ok(s) => s,
        Err(status) => return status,
    };
    // SAFETY: the caller's message descriptor.
    let bufs = unsafe { buffers::buffers(message) };
    let find = |kind: u32| bufs.iter().position(|b| b.kind() == kind);
    let (Some(h), Some(d), Some(t)) = (
        find(SECBUFFER_STREAM_HEADER),
        find(SECBUFFER_DATA),
        find(SECBUFFER_STREAM_TRAILER),
    ) else {
        return SEC_E_INVALID_TOKEN;
    };
    let length = bufs[d].cbBuffer as usize;
    if length > tls::MAX_MESSAGE || (length > 0 && bufs[d].pvBuffer.is_null()) {
        return SEC_E_INVALID_PARAMETER;
    }
    let mut session = session.lock().unwrap_or_else(|e| e.into_inner());
    let (header, trailer) = session.framing();
    if (bufs[h].cbBuffer as usize) < header
        || (bufs[t].cbBuffer as usize) < trailer
        || bufs[h].pvBuffer.is_null()
        || bufs[t].pvBuffer.is_null()
    {
        return SEC_E_BUFFER_TOO_SMALL;
    }
    // SAFETY: the DATA buffer holds `length` bytes.
    let data = unsafe { std::slice::from_raw_parts_mut(bufs[d].pvBuffer as *mut u8, length) };
    let alert;
    let record = match qop {
        0 => session.encrypt(data),
        SECQOP_WRAP_OOB_DATA if data == [1, 0] => session.close_notify(),
        // A fatal alert after a failure: the one rustls queued for it (kemu cannot write an
        // alert of another description; the caller's is not checked against it).
        SECQOP_WRAP_OOB_DATA if length == 2 && data[0] == TLS1_ALERT_FATAL as u8 => {
            match session.take_failure_alert() {
                Some(a) => {
                    alert = a;
                    Ok(&alert[..])
                }
                None => Err(SEC_E_INVALID_TOKEN),
            }
        }
        _ => return SEC_E_UNSUPPORTED_FUNCTION,
    };
    let record = match record {
        Ok(r) => r,
        Err(status) => return status,
    };
    if record.len() < header + length || record.len() - header - length > bufs[t].cbBuffer as usize
    {
        return SEC_E_INTERNAL_ERROR;
    }
    let actual_trailer = record.len() - header - length;
    // SAFETY: header and trailer buffers hold at least `header` / `actual_trailer` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(record.as_ptr(), bufs[h].pvBuffer as *mut u8, header);
        std::ptr::copy_nonoverlapping(
            record[header + length..].as_ptr(),
            bufs[t].pvBuffer as *mut u8,
            actual_trailer,
        );
    }
    data.copy_from_slice(&record[header..header + length]);
    bufs[h].cbBuffer = header as u32;
    bufs[t].cbBuffer = actual_trailer as u32;
    SEC_E_OK
}

/// DecryptMessage (ksecdd!UnsealMessage): decrypts one record in place.
pub(crate) unsafe extern "win64" fn decrypt_message(
    context: *mut SecHandle,
    message: *mut SecBufferDesc,
    _sequence: u32,
    qop: *mut u32,
) -> SECURITY_STATUS {
    thread::require_at_most("DecryptMessage", PASSIVE);
    let session = match session_of(context, "DecryptMessage") {
        Ok(s) => s,
        Err(status) => return status,
    };
    // SAFETY: the caller's message descriptor.
    let bufs = unsafe { buffers::buffers(message) };
    if bufs.len() < 4 {
        return SEC_E_INVALID_TOKEN;
    }
    let Some(d) = bufs.iter().position(|b| b.kind() == SECBUFFER_DATA) else {
        return SEC_E_INVALID_TOKEN;
    };
    let base = bufs[d].pvBuffer as *mut u8;
    let total = bufs[d].cbBuffer as usize;
    if base.is_null() && total > 0 {
        return SEC_E_INVALID_TOKEN;
    }
    if !qop.is_null() {
        // SAFETY: the caller's out-parameter.
        unsafe { *qop = 0 };
    }
    let data = if total == 0 {
        &mut [][..]
    } else {
        // SAFETY: the DATA buffer holds `total` bytes, decrypted in place.
        unsafe { std::slice::from_raw_parts_mut(base, total) }
    };
    let r = session
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .decrypt(data);
    let at = |offset: usize| -> *mut c_void {
        // SAFETY: offsets stay within the caller's buffer.
        unsafe { base.add(offset) as *mut c_void }
    };
    if r.status == SEC_E_INCOMPLETE_MESSAGE {
        if let Some(slot) = bufs.iter().position(|b| b.kind() == SECBUFFER_EMPTY) {
            bufs[slot] = SecBuffer::new(SECBUFFER_MISSING, std::ptr::null_mut(), r.missing as u32);
        }
        return r.status;
    }
    let extra = if r.consumed < total {
        SecBuffer::new(SECBUFFER_EXTRA, at(r.consumed), (total - r.consumed) as u32)
    } else {
        SecBuffer::EMPTY
    };
    if r.status == SEC_E_OK && r.header + r.plaintext + r.trailer > 0 {
        bufs[0] = SecBuffer::new(SECBUFFER_STREAM_HEADER, at(r.record_start), r.header as u32);
        bufs[1] = SecBuffer::new(
            SECBUFFER_DATA,
            at(r.record_start + r.header),
            r.plaintext as u32,
        );
        bufs[2] = SecBuffer::new(
            SECBUFFER_STREAM_TRAILER,
            at(r.record_start + r.header + r.plaintext),
            r.trailer as u32,
        );
        bufs[3] = extra;
    } else if r.status.is_success() {
        bufs[0] = SecBuffer::new(SECBUFFER_STREAM_HEADER, at(0), 0);
        bufs[1] = SecBuffer::new(SECBUFFER_DATA, at(0), 0);
        bufs[2] = SecBuffer::new(SECBUFFER_STREAM_TRAILER, at(0), 0);
        bufs[3] = extra;
    }
    r.status
}

/// ApplyControlToken (exported by ksecdd): SCHANNEL_SHUTDOWN readies a close_notify and
/// SCHANNEL_ALERT the failure's fatal alert, each produced by the next ISC/ASC call.
pub(crate) unsafe extern "win64" fn apply_control_token(
    context: *mut SecHandle,
    input: *mut SecBufferDesc,
) -> SECURITY_STATUS {
    thread::require_at_most("ApplyControlToken", PASSIVE);
    let session = match session_of(context, "ApplyControlToken") {
        Ok(s) => s,
        Err(status) => return status,
    };
    if input.is_null() {
        return SEC_E_INVALID_TOKEN;
    }
    // SAFETY: the caller's descriptor: the token is copied now.
    let inputs = unsafe { buffers::copy_inputs(input) };
    let Some(token) = inputs.iter().find(|b| b.kind == SECBUFFER_TOKEN) else {
        return SEC_E_INVALID_TOKEN;
    };
    let word = |i: usize| {
        token
            .data
            .get(i * 4..i * 4 + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    };
    let control = match (word(0), word(1), word(2)) {
        (Some(SCHANNEL_SHUTDOWN), ..) => tls::Control::Shutdown,
        (Some(SCHANNEL_ALERT), Some(TLS1_ALERT_FATAL), Some(number)) if number < 256 => {
            tls::Control::Alert(number as u8)
        }
        (Some(SCHANNEL_ALERT), Some(_), Some(_)) => return SEC_E_UNSUPPORTED_FUNCTION,
        (Some(SCHANNEL_RENEGOTIATE), ..) => return SEC_E_UNSUPPORTED_FUNCTION,
        _ => return SEC_E_INVALID_TOKEN,
    };
    session
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .apply_control(control)
}

/// FreeContextBuffer.
pub(crate) unsafe extern "win64" fn free_context_buffer(buffer: *mut c_void) -> SECURITY_STATUS {
    thread::require_at_most("FreeContextBuffer", PASSIVE);
    let removed = ksecdd()
        .ksecdd
        .lock()
        .context_buffers
        .remove(&(buffer as usize));
    match removed {
        Some((size, _)) => {
            crate::io::free(buffer as *mut u8, size);
            SEC_E_OK
        }
        None => violation(
            format!(
                "FreeContextBuffer: {:#x} was not allocated by SSPI (or is freed already)",
                buffer as usize
            ),
            buffer as usize,
        ),
    }
}

fn utf16_into(dst: &mut [u16], text: &str) {
    for (i, u) in text.encode_utf16().take(dst.len() - 1).enumerate() {
        dst[i] = u;
    }
}

/// QueryContextAttributesW: stream sizes, connection and cipher info, negotiated ALPN, remote
/// certificates (allocated; FreeContextBuffer).
pub(crate) unsafe extern "win64" fn query_context_attributes_w(
    context: *mut SecHandle,
    attribute: u32,
    buffer: *mut c_void,
) -> SECURITY_STATUS {
    thread::require_at_most("QueryContextAttributesW", PASSIVE);
    let (inbound, session) = match self::context(context, "QueryContextAttributesW") {
        Lookup::Found((_, _, inbound, session)) => (inbound, session),
        Lookup::Unknown => return SEC_E_INVALID_HANDLE,
    };
    if buffer.is_null() {
        return SEC_E_INVALID_PARAMETER;
    }
    let session = session.lock().unwrap_or_else(|e| e.into_inner());
    if session.is_handshaking() || session.dead.is_some() && session.suite().is_none() {
        return SEC_E_INVALID_HANDLE;
    }
    let suite = session.suite();
    let name = suite
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let aes256 = name.contains("AES_256");
    let chacha = name.contains("CHACHA20");
    let sha384 = name.contains("SHA384");
    let protocol = creds::protocol_bit(session.version(), inbound);
    match attribute {
        SECPKG_ATTR_STREAM_SIZES => {
            let (header, trailer) = session.framing();
            // SAFETY: the caller's SecPkgContext_StreamSizes.
            unsafe {
                *(buffer as *mut SecPkgContext_StreamSizes) = SecPkgContext_StreamSizes {
                    cbHeader: header as u32,
                    cbTrailer: trailer as u32,
                    cbMaximumMessage: tls::MAX_MESSAGE as u32,
                    cBuffers: 4,
                    cbBlockSize: 1,
                };
            }
        }
        SECPKG_ATTR_CONNECTION_INFO => {
            let info = SecPkgContext_ConnectionInfo {
                dwProtocol: protocol,
                aiCipher: if chacha {
                    0
                } else if aes256 {
                    0x6610
                } else {
                    0x660E
                },
                dwCipherStrength: if aes256 || chacha { 256 } else { 128 },
                aiHash: if sha384 { 0x800D } else { 0x800C },
                dwHashStrength: if sha384 { 384 } else { 256 },
                aiExch: 0xAE06,
                dwExchStrength: 255,
            };
            // SAFETY: the caller's SecPkgContext_ConnectionInfo.
            unsafe { *(buffer as *mut SecPkgContext_ConnectionInfo) = info };
        }
        SECPKG_ATTR_CIPHER_INFO => {
            // SAFETY: SecPkgContext_CipherInfo is plain data; all-zero is valid.
            let mut info: SecPkgContext_CipherInfo = unsafe { std::mem::zeroed() };
            info.dwVersion = 1;
            info.dwProtocol = protocol;
            info.dwCipherSuite = suite.map_or(0, |s| u32::from(u16::from(s.suite())));
            info.dwBaseCipherSuite = info.dwCipherSuite;
            utf16_into(&mut info.szCipherSuite, &name);
            utf16_into(
                &mut info.szCipher,
                if chacha { "CHACHA20_POLY1305" } else { "AES" },
            );
            info.dwCipherLen = if aes256 || chacha { 256 } else { 128 };
            utf16_into(&mut info.szHash, if sha384 { "SHA384" } else { "SHA256" });
            info.dwHashLen = if sha384 { 384 } else { 256 };
            utf16_into(&mut info.szExchange, "ECDHE");
            // SAFETY: the caller's SecPkgContext_CipherInfo.
            unsafe { *(buffer as *mut SecPkgContext_CipherInfo) = info };
        }
        SECPKG_ATTR_APPLICATION_PROTOCOL => {
            // SAFETY: SecPkgContext_ApplicationProtocol is plain data.
            let mut info: SecPkgContext_ApplicationProtocol = unsafe { std::mem::zeroed() };
            if let Some(alpn) = session.alpn() {
                info.ProtoNegoStatus = 1;
                info.ProtoNegoExt = 2;
                info.ProtocolIdSize = alpn.len().min(255) as u8;
                info.ProtocolId[..alpn.len().min(255)]
                    .copy_from_slice(&alpn[..alpn.len().min(255)]);
            }
            // SAFETY: the caller's structure.
            unsafe { *(buffer as *mut SecPkgContext_ApplicationProtocol) = info };
        }
        SECPKG_ATTR_SESSION_INFO => {
            let info = SecPkgContext_SessionInfo {
                dwFlags: if session.resumed() {
                    SSL_SESSION_RECONNECT
                } else {
                    0
                },
                // rustls does not expose the session id; no id is reported.
                cbSessionId: 0,
                rgbSessionId: [0; 32],
            };
            // SAFETY: the caller's SecPkgContext_SessionInfo.
            unsafe { *(buffer as *mut SecPkgContext_SessionInfo) = info };
        }
        SECPKG_ATTR_CERT_CHECK_RESULT_INPROC if inbound => {
            // The verdict on the client's chain (ASC_REQ_MUTUAL_AUTH completes without one).
            let chain: Vec<rustls::pki_types::CertificateDer<'static>> = session
                .peer_certificates()
                .into_iter()
                .map(rustls::pki_types::CertificateDer::from)
                .collect();
            if chain.is_empty() {
                return SEC_E_NO_CREDENTIALS;
            }
            let verdict = creds::client_certificate_verdict(ksecdd().ksecdd.store(), &chain);
            // SAFETY: the caller's SecPkgContext_CertificateValidationResult.
            unsafe { *(buffer as *mut SecPkgContext_CertificateValidationResult) = verdict };
        }
        SECPKG_ATTR_REMOTE_CERTIFICATES => {
            let certs = session.peer_certificates();
            let mut chain = Vec::new();
            for c in &certs {
                chain.extend_from_slice(&(c.len() as u32).to_le_bytes());
                chain.extend_from_slice(c);
            }
            let p = if chain.is_empty() {
                0
            } else {
                allocate_context_buffer(&chain)
            };
            // SAFETY: the caller's SecPkgContext_Certificates.
            unsafe {
                *(buffer as *mut SecPkgContext_Certificates) = SecPkgContext_Certificates {
                    cCertificates: certs.len() as u32,
                    cbCertificateChain: chain.len() as u32,
                    pbCertificateChain: p as *mut u8,
                };
            }
        }
        _ => return SEC_E_UNSUPPORTED_FUNCTION,
    }
    SEC_E_OK
}
