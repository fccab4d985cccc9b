//! ksecdd.sys: kernel Schannel — the asynchronous SSPI calls (their result delivered through
//! SspiGetAsyncCallStatus after a notify callback on an LSA-like worker thread at PASSIVE_LEVEL,
//! or inline before the call returns), credentials from the emulated machine store, and the
//! synchronous EncryptMessage / DecryptMessage / QueryContextAttributesW of stream TLS, on rustls.

mod async_context;
pub(crate) mod buffers;
mod credential_calls;
pub(crate) mod creds;
mod handles;
mod handshake;
mod messages;
pub mod store;
pub(crate) mod tls;

// Keys are addresses and small ids: a fast non-cryptographic hash (no peer chooses them).
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
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

fn ksecdd() -> thread::KernelRef {
    thread::kernel()
}

pub(crate) use async_context::*;
pub(crate) use credential_calls::*;
use handles::*;
pub(crate) use handshake::*;
pub(crate) use messages::*;
