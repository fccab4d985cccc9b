//! The driver's TLS service: listeners and connections (ktls) owned by file handles, and the
//! IOCTLs that wait on them.
//!
//! - One table, behind a spin lock, holds every object (with the file object that created it)
//!   and every pending request. Requests that cannot finish at once are marked cancelable and
//!   parked there.
//! - Every ktls session and listener reports changes to [`Notify`], which re-examines the parked
//!   requests (`service`). Readiness is decided under the lock; the request is removed, taken
//!   back from the cancel machinery (WdfRequestUnmarkCancelable) and only then completed — so a
//!   cancel racing with completion completes it exactly once.
//! - A handle's objects close when the handle is cleaned up; unload closes everything and waits
//!   until every session and listener — those still in the table and those closed earlier that
//!   are still releasing — has released its socket and security context before releasing WSK.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use ksys::io::DEVICE_OBJECT;
use ksys::kmdf::{ParkedRequest, Request};
use ksys::ntdef::*;
use ksys::wdf::types::{WDFFILEOBJECT, WDFREQUEST};
use ksys::wsk::*;
use ktls::census::Census;
use ktls::credential::{Credential, CredentialSpec, Versions};
use ktls::listener::{ListenState, Listener, ListenerConfig};
use ktls::pool::PoolArc;
use ktls::session::{Config, Failure, Observer, Received, Role, Session, State};
use ktls::sync::SpinLock;
use ktls::wsk::Provider;
use proto::session::{
    ConnectRequest, ConnectionInfo, Endpoint, ListenRequest, ListenResponse, Stats, TlsVersion,
    Validation, VersionRange,
};

/// Connections (and listeners) the driver holds at most.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections and listeners one handle may hold.
pub const MAX_CONNECTIONS_PER_HANDLE: usize = 512;
/// Plaintext a connection queues for sending before SEND pends.
pub const MAX_QUEUED_BYTES: usize = 1 << 20;
/// Plaintext a connection buffers for RECV before it stops reading the socket.
pub const RECEIVE_WINDOW: usize = 1 << 20;
/// Connect plus handshake limit.
pub const HANDSHAKE_TIMEOUT_MS: u32 = 10_000;
/// Accepted connections a listener holds (handshaking or waiting for ACCEPT) before it pauses.
pub const LISTEN_BACKLOG: usize = 64;

/// Observer of every ktls object: a change may let a parked request finish.
#[derive(Clone, Copy, Debug, Default)]
pub struct Notify;

impl Observer for Notify {
    fn changed(&self) {
        service();
    }
}

enum Kind {
    Listener {
        listener: Listener<Notify>,
        /// Accepted, still handshaking (or open and waiting for an ACCEPT).
        accepted: Vec<Session<Notify>>,
    },
    Connection {
        session: Session<Notify>,
    },
}

struct Object {
    id: u64,
    owner: usize,
    kind: Kind,
}

/// What a parked request waits for.
pub enum Op {
    Accept,
    Connect,
    /// The payload stays in the request's own buffer, `len` bytes at `offset`; `at` of them
    /// are queued so far.
    Send {
        offset: usize,
        len: usize,
        at: usize,
    },
    Recv {
        max: usize,
    },
    Shutdown,
}

struct Parked {
    request: ParkedRequest,
    owner: usize,
    id: u64,
    op: Op,
}

impl Parked {
    /// The (connection, direction) whose byte order this request takes part in.
    fn stream(&self) -> Option<(u64, bool)> {
        match self.op {
            Op::Send { .. } => Some((self.id, true)),
            Op::Recv { .. } => Some((self.id, false)),
            _ => None,
        }
    }
}

/// The streams with a request still waiting, in one pass over the parked requests.
#[derive(Default)]
struct Waiting {
    streams: Vec<(u64, bool)>,
    /// Out of memory to record one: hold back every later SEND and RECV this pass.
    all: bool,
}

impl Waiting {
    fn holds(&self, key: (u64, bool)) -> bool {
        self.all || self.streams.contains(&key)
    }

    fn add(&mut self, key: (u64, bool)) {
        if self.streams.try_reserve(1).is_ok() {
            self.streams.push(key);
        } else {
            self.all = true;
        }
    }
}

struct Table {
    objects: Vec<Object>,
    parked: Vec<Parked>,
}

static TABLE: SpinLock<Table> = SpinLock::new(Table {
    objects: Vec::new(),
    parked: Vec::new(),
});
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static DEVICE: AtomicUsize = AtomicUsize::new(0);
static PROVIDER: SpinLock<Option<Provider>> = SpinLock::new(None);
/// Every session and listener the driver started, until each has released its resources
/// (a closed connection goes on releasing after its id is gone; unload waits for it).
static CENSUS: SpinLock<Option<Census>> = SpinLock::new(None);
/// Client credentials by validation flags and versions (released at unload).
static CLIENT_CREDENTIALS: SpinLock<Vec<(u32, Versions, PoolArc<Credential>)>> =
    SpinLock::new(Vec::new());

static HANDSHAKES_OK: AtomicU64 = AtomicU64::new(0);
static HANDSHAKES_FAILED: AtomicU64 = AtomicU64::new(0);
static BYTES_SENT_CLOSED: AtomicU64 = AtomicU64::new(0);
static BYTES_RECEIVED_CLOSED: AtomicU64 = AtomicU64::new(0);

/// Remembers the control device's DEVICE_OBJECT (work items reference it).
pub fn set_device(device: *mut DEVICE_OBJECT) {
    DEVICE.store(device as usize, Ordering::Release);
}

fn device() -> *mut DEVICE_OBJECT {
    DEVICE.load(Ordering::Acquire) as *mut DEVICE_OBJECT
}

/// The captured WSK provider, registered at first use (PASSIVE_LEVEL).
fn provider_npi() -> Result<WSK_PROVIDER_NPI, NTSTATUS> {
    if let Some(p) = PROVIDER.lock().as_ref() {
        return Ok(p.npi());
    }
    let fresh = Provider::register(WSK_INFINITE_WAIT)?;
    let mut slot = PROVIDER.lock();
    if slot.is_none() {
        *slot = Some(fresh);
    } else {
        // Another request registered first: ours is released outside the lock below.
        drop(slot);
        drop(fresh);
        slot = PROVIDER.lock();
    }
    slot.as_ref().map(Provider::npi).ok_or(STATUS_UNSUCCESSFUL)
}

/// The driver's census, made at first use.
fn census() -> Result<Census, NTSTATUS> {
    let mut slot = CENSUS.lock();
    if slot.is_none() {
        *slot = Some(Census::try_new()?);
    }
    slot.clone().ok_or(STATUS_UNSUCCESSFUL)
}

fn sockaddr(endpoint: &Endpoint) -> SOCKADDR_STORAGE {
    let mut s = SOCKADDR_STORAGE {
        ss_family: if endpoint.v6 {
            AF_INET6 as u16
        } else {
            AF_INET as u16
        },
        data: [0; 126],
    };
    s.data[0..2].copy_from_slice(&endpoint.port.to_be_bytes());
    if endpoint.v6 {
        // flowinfo (4 bytes) then the address, then scope id.
        s.data[6..22].copy_from_slice(&endpoint.ip);
    } else {
        s.data[2..6].copy_from_slice(&endpoint.ip[..4]);
    }
    s
}

fn versions(range: VersionRange) -> Versions {
    Versions {
        tls12: range.min <= TlsVersion::Tls12,
        tls13: range.max >= TlsVersion::Tls13,
    }
}

fn copy(bytes: &[u8]) -> Result<Vec<u8>, NTSTATUS> {
    let mut v = Vec::new();
    v.try_reserve_exact(bytes.len())
        .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
    v.extend_from_slice(bytes);
    Ok(v)
}

/// Whether `owner` may create one more object.
fn check_limits(table: &Table, owner: usize) -> Result<(), NTSTATUS> {
    if table.objects.len() >= MAX_CONNECTIONS
        || table.objects.iter().filter(|o| o.owner == owner).count() >= MAX_CONNECTIONS_PER_HANDLE
    {
        return Err(STATUS_QUOTA_EXCEEDED);
    }
    Ok(())
}

fn insert(owner: usize, kind: Kind) -> Result<u64, (NTSTATUS, Kind)> {
    let mut t = TABLE.lock();
    if let Err(status) = check_limits(&t, owner) {
        return Err((status, kind));
    }
    if t.objects.try_reserve(1).is_err() {
        return Err((STATUS_INSUFFICIENT_RESOURCES, kind));
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    t.objects.push(Object { id, owner, kind });
    Ok(id)
}

/// LISTEN: acquires the certificate's credential, starts a listener → its id.
pub fn listen(request: &ListenRequest<'_>, owner: usize) -> Result<ListenResponse, NTSTATUS> {
    check_limits(&TABLE.lock(), owner)?;
    let credential = Credential::acquire(&CredentialSpec {
        inbound: true,
        thumbprint: Some(request.thumbprint),
        flags: 0,
        versions: versions(request.versions),
        require_client_certificate: request.require_client_certificate,
    })
    .map_err(sspi_to_status)?;
    let config = ListenerConfig {
        npi: provider_npi()?,
        local: sockaddr(&request.endpoint),
        alpn: copy(request.alpn)?,
        require_client_certificate: request.require_client_certificate,
        max_queued: MAX_QUEUED_BYTES,
        receive_window: RECEIVE_WINDOW,
        backlog: LISTEN_BACKLOG,
        handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS,
        census: Some(census()?),
    };
    // SAFETY: the control device lives until unload, which closes every listener first; the
    // provider stays captured until then too.
    let listener = unsafe { Listener::start(device(), config, credential, Notify) }?;
    // Wait (briefly, at PASSIVE_LEVEL) for the bind so LISTEN reports its outcome.
    let state = wait_listening(&listener);
    if let ListenState::Closed(status) = state {
        return Err(if nt_success(status) {
            STATUS_UNSUCCESSFUL
        } else {
            status
        });
    }
    let port = listener.local_port();
    let kind = Kind::Listener {
        listener,
        accepted: Vec::new(),
    };
    let id = insert(owner, kind).map_err(|(status, _)| status)?;
    Ok(ListenResponse { id, port })
}

fn wait_listening(listener: &Listener<Notify>) -> ListenState {
    let delay: i64 = -10_000; // 1 ms
    for _ in 0..5000 {
        let state = listener.state();
        if state != ListenState::Starting {
            return state;
        }
        // SAFETY: a PASSIVE_LEVEL delay in a dispatch routine.
        unsafe { ksys::imports::KeDelayExecutionThread(0, 0, &delay) };
    }
    listener.state()
}

/// CONNECT: starts a client session; the request parks until the handshake ends.
pub fn connect(request: &ConnectRequest<'_>, owner: usize) -> Result<u64, NTSTATUS> {
    check_limits(&TABLE.lock(), owner)?;
    // An unspecified address means "resolve the host name" (WskGetAddressInfo, in the session).
    let resolve = if request.endpoint.ip.iter().all(|&b| b == 0) {
        if request.host.is_empty() {
            return Err(STATUS_INVALID_PARAMETER);
        }
        let mut name = Vec::new();
        name.try_reserve_exact(request.host.len())
            .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        name.extend(request.host.iter().map(|&b| u16::from(b)));
        Some(name)
    } else {
        None
    };
    let flags = match request.validation {
        Validation::SystemRoots => 0,
        Validation::Insecure => {
            ksys::schannel::SCH_CRED_MANUAL_CRED_VALIDATION
                | ksys::schannel::SCH_CRED_NO_SERVERNAME_CHECK
        }
        // The chain is not validated; the session compares the certificate's SHA-256.
        Validation::Pinned(_) => {
            ksys::schannel::SCH_CRED_MANUAL_CRED_VALIDATION
                | ksys::schannel::SCH_CRED_NO_SERVERNAME_CHECK
        }
    };
    let pinned = match request.validation {
        Validation::Pinned(digest) => Some(digest),
        _ => None,
    };
    let credential = client_credential(flags, versions(request.versions))?;
    let name = if request.sni.is_empty() {
        request.host
    } else {
        request.sni
    };
    let mut target = Vec::new();
    target
        .try_reserve_exact(name.len())
        .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
    target.extend(name.iter().map(|&b| u16::from(b)));
    let config = Config {
        role: Role::Client {
            npi: provider_npi()?,
            remote: sockaddr(&request.endpoint),
            target,
            resolve,
        },
        alpn: copy(request.alpn)?,
        require_client_certificate: false,
        max_queued: MAX_QUEUED_BYTES,
        receive_window: RECEIVE_WINDOW,
        handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS,
        pinned,
        census: Some(census()?),
    };
    // SAFETY: as in `listen`.
    let session = unsafe { Session::start(device(), config, credential, Notify) }?;
    insert(owner, Kind::Connection { session }).map_err(|(status, _)| status)
}

/// A client credential for these validation flags and versions: acquired once and shared by
/// every CONNECT that asks for the same (an acquisition is a round trip to the LSA).
fn client_credential(flags: u32, versions: Versions) -> Result<PoolArc<Credential>, NTSTATUS> {
    let cached = CLIENT_CREDENTIALS
        .lock()
        .iter()
        .find(|(f, v, _)| *f == flags && *v == versions)
        .map(|(_, _, c)| c.clone());
    if let Some(credential) = cached {
        return Ok(credential);
    }
    let credential = Credential::acquire(&CredentialSpec {
        inbound: false,
        thumbprint: None,
        flags,
        versions,
        require_client_certificate: false,
    })
    .map_err(sspi_to_status)?;
    let mut cache = CLIENT_CREDENTIALS.lock();
    if !cache.iter().any(|(f, v, _)| *f == flags && *v == versions) && cache.try_reserve(1).is_ok()
    {
        cache.push((flags, versions, credential.clone()));
    }
    // A credential acquired twice by racing CONNECTs is released with its last session.
    Ok(credential)
}

/// Maps a credential failure to the NTSTATUS LISTEN/CONNECT complete with.
fn sspi_to_status(status: ksys::sspi::SECURITY_STATUS) -> NTSTATUS {
    match status {
        ksys::sspi::SEC_E_NO_CREDENTIALS | ksys::sspi::SEC_E_UNKNOWN_CREDENTIALS => {
            STATUS_NOT_FOUND
        }
        ksys::sspi::SEC_E_INSUFFICIENT_MEMORY => STATUS_INSUFFICIENT_RESOURCES,
        _ => STATUS_INVALID_PARAMETER,
    }
}

/// What a parked or immediate operation needs of its id.
fn check_owner(t: &Table, id: u64, owner: usize) -> Result<(), NTSTATUS> {
    match t.objects.iter().find(|o| o.id == id) {
        Some(o) if o.owner == owner => Ok(()),
        _ => Err(STATUS_INVALID_HANDLE),
    }
}

/// Parks a request: marks it cancelable, then services it at once (it may be ready already).
pub fn park(request: Request, id: u64, op: Op) {
    let owner = request.file().as_raw() as usize;
    {
        let mut t = TABLE.lock();
        let kind_ok = match (&op, t.objects.iter().find(|o| o.id == id)) {
            (_, Some(o)) if o.owner != owner => Err(STATUS_INVALID_HANDLE),
            (_, None) => Err(STATUS_INVALID_HANDLE),
            (
                Op::Accept,
                Some(Object {
                    kind: Kind::Listener { .. },
                    ..
                }),
            ) => Ok(()),
            (Op::Accept, _) => Err(STATUS_INVALID_HANDLE),
            (
                _,
                Some(Object {
                    kind: Kind::Connection { .. },
                    ..
                }),
            ) => Ok(()),
            (_, _) => Err(STATUS_INVALID_HANDLE),
        };
        if let Err(status) = kind_ok {
            drop(t);
            request.complete(status, 0);
            return;
        }
        if t.parked.try_reserve(1).is_err() {
            drop(t);
            request.complete(STATUS_INSUFFICIENT_RESOURCES, 0);
            return;
        }
        if let Err(status) = request.mark_cancelable(Some(cancel)) {
            drop(t);
            request.complete(status, 0);
            return;
        }
        if let Op::Shutdown = op {
            if let Some(Object {
                kind: Kind::Connection { session },
                ..
            }) = t.objects.iter().find(|o| o.id == id)
            {
                session.shutdown();
            }
        }
        t.parked.push(Parked {
            request: request.park(),
            owner,
            id,
            op,
        });
    }
    service();
}

/// EvtRequestCancel: the caller cancelled, or its handle is closing.
extern "win64" fn cancel(request: WDFREQUEST) {
    let removed = {
        let mut t = TABLE.lock();
        let at = t.parked.iter().position(|p| p.request.is(request));
        at.map(|i| t.parked.remove(i))
    };
    if let Some(p) = removed {
        // The cancelled request is completed below through the framework's handle.
        match p.op {
            // A cancelled CONNECT abandons its connection.
            Op::Connect => close_object(p.id, p.owner),
            // Say what the connection was doing: a request cancelled after a long wait is
            // how a stall shows.
            Op::Send { .. } | Op::Recv { .. } | Op::Shutdown => trace_cancelled(p.id, &p.op),
            Op::Accept => {}
        }
    }
    Request::from_presented(request).complete(STATUS_CANCELLED, 0);
}

// Outcomes only travel in a heap Vec, so the larger variant costs nothing on the stack.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Status(NTSTATUS),
    /// A finished handshake, with Schannel's stream sizes (traced after the table is released).
    Info(ConnectionInfo, [u32; 3]),
    /// A connection is ready for this ACCEPT (taken in `settle`).
    Accept,
    /// Plaintext or end of stream is there for this RECV (moved in `settle`).
    Recv,
    /// A RECV's final status and byte count.
    Received(NTSTATUS, usize),
}

fn trace_cancelled(id: u64, op: &Op) {
    let what = match op {
        Op::Send { .. } => "SEND",
        Op::Recv { .. } => "RECV",
        _ => "SHUTDOWN",
    };
    let state = {
        let t = TABLE.lock();
        match t.objects.iter().find(|o| o.id == id).map(|o| &o.kind) {
            Some(Kind::Connection { session }) => Some(session.describe()),
            _ => None,
        }
    };
    if let Some(state) = state {
        let line = alloc::format!("cancelled {what} on connection {id}: {state}");
        ksys::kmdf::debug_print(ksys::kmdf::DPFLTR_WARNING_LEVEL, &line);
    }
}

/// Re-examines every parked request; completes those whose condition now holds.
pub fn service() {
    let mut ready: Vec<(Parked, Outcome)> = Vec::new();
    let mut retired: Vec<Session<Notify>> = Vec::new();
    let mut promoted: Vec<Object> = Vec::new();
    {
        let mut t = TABLE.lock();
        let Table { objects, parked } = &mut *t;
        // Listeners: collect accepted sessions; drop those whose handshake failed.
        for o in objects.iter_mut() {
            if let Kind::Listener { listener, accepted } = &mut o.kind {
                while accepted.len() < LISTEN_BACKLOG && accepted.try_reserve(1).is_ok() {
                    match listener.next() {
                        Some(s) => accepted.push(s),
                        None => break,
                    }
                }
                let mut i = 0;
                while i < accepted.len() {
                    if accepted[i].state() == State::Closed {
                        HANDSHAKES_FAILED.fetch_add(1, Ordering::Relaxed);
                        retired.push(accepted.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
            }
        }
        // In parked order, so that requests on one connection finish in the order they came
        // (several SENDs or RECVs in flight must not overtake one another).
        // A SEND or RECV still waiting holds back the later ones of its kind on its connection:
        // the session's queues move on other threads meanwhile, and a later SEND must not slip
        // its bytes in before the rest of an earlier one (nor a later RECV take bytes first).
        let mut waiting = Waiting::default();
        let mut i = 0;
        while i < parked.len() {
            let stream = parked[i].stream();
            if stream.is_some_and(|key| waiting.holds(key)) {
                i += 1;
                continue;
            }
            let outcome = examine(objects, &mut parked[i], &mut promoted);
            // Settle cancellation here, under the table lock: once unmarked no cancel routine
            // runs, so what `settle` hands the request (an accepted connection, received bytes)
            // reaches the caller. If the cancel routine has it already, it stays parked for that
            // routine to take and complete.
            let Some(outcome) = outcome.filter(|_| {
                ready.try_reserve(1).is_ok()
                    && parked[i].request.with(|r| r.unmark_cancelable()).is_ok()
            }) else {
                if let Some(key) = stream {
                    waiting.add(key);
                }
                i += 1;
                continue;
            };
            let p = parked.remove(i);
            let outcome = settle(objects, &p, outcome, &mut promoted);
            ready.push((p, outcome));
        }
        // Sessions handed out by ACCEPT become connection objects of the accepting handle.
        if objects.try_reserve(promoted.len()).is_ok() {
            objects.append(&mut promoted);
        }
    }
    drop(retired);
    for (p, outcome) in ready {
        let request = p.request.resume();
        match outcome {
            Outcome::Status(status) => request.complete(status, 0),
            Outcome::Info(info, stream_sizes) => {
                trace_connection(&info, stream_sizes);
                match request.write_output(&info.encode()) {
                    Ok(n) => request.complete(STATUS_SUCCESS, n),
                    Err(status) => request.complete(status, 0),
                }
            }
            Outcome::Received(status, n) => request.complete(status, n),
            // `settle` turned these into one of the above.
            Outcome::Accept | Outcome::Recv => request.complete(STATUS_INTERNAL_ERROR, 0),
        }
    }
}

/// What a ready request finishes with, once it can no longer be cancelled: takes the accepted
/// session, counts the handshake, or moves received plaintext into the request's buffer — all
/// under the table lock, so RECVs on one connection take the bytes in the order they came.
fn settle(
    objects: &mut [Object],
    p: &Parked,
    outcome: Outcome,
    promoted: &mut Vec<Object>,
) -> Outcome {
    let object = objects.iter_mut().find(|o| o.id == p.id);
    match (outcome, object.map(|o| &mut o.kind)) {
        (Outcome::Accept, Some(Kind::Listener { accepted, .. })) => {
            let Some(at) = accepted.iter().position(|s| s.state() == State::Open) else {
                return Outcome::Status(STATUS_INTERNAL_ERROR);
            };
            // `examine` reserved the room in `promoted`.
            let session = accepted.swap_remove(at);
            HANDSHAKES_OK.fetch_add(1, Ordering::Relaxed);
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            let info = handshake_outcome(&session, id);
            promoted.push(Object {
                id,
                owner: p.owner,
                kind: Kind::Connection { session },
            });
            info
        }
        (Outcome::Recv, Some(Kind::Connection { session })) => {
            let Op::Recv { max } = p.op else {
                return Outcome::Status(STATUS_INTERNAL_ERROR);
            };
            let mut result = Received::Pending;
            let filled = p.request.with(|r| {
                r.fill_output(max, |out| {
                    result = session.recv(out);
                    match result {
                        Received::Data(n) => n,
                        _ => 0,
                    }
                })
            });
            match (filled, result) {
                (Err(status), _) => Outcome::Received(status, 0),
                (Ok(n), Received::Data(_)) => Outcome::Received(STATUS_SUCCESS, n),
                (Ok(_), Received::End) => Outcome::Received(STATUS_SUCCESS, 0),
                (Ok(_), Received::Failed(f)) => Outcome::Received(f.status, 0),
                // `examine` saw it readable under this same lock.
                (Ok(_), Received::Pending) => Outcome::Received(STATUS_INTERNAL_ERROR, 0),
            }
        }
        (outcome @ Outcome::Info(..), _) => {
            if let Op::Connect = p.op {
                let counter = match &outcome {
                    Outcome::Info(info, _) if info.status == STATUS_SUCCESS.0 => &HANDSHAKES_OK,
                    _ => &HANDSHAKES_FAILED,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            outcome
        }
        (outcome @ (Outcome::Status(_) | Outcome::Received(..)), _) => outcome,
        (Outcome::Accept | Outcome::Recv, _) => Outcome::Status(STATUS_INVALID_HANDLE),
    }
}

fn info_of(session: &Session<Notify>, id: u64) -> ConnectionInfo {
    let mut info = ConnectionInfo {
        status: STATUS_SUCCESS.0,
        sspi_status: 0,
        id,
        version: None,
        cipher_suite: 0,
        peer_certificate: None,
        alpn_len: 0,
        alpn: [0; 255],
    };
    if let Some(n) = session.negotiated() {
        use ksys::schannel::*;
        info.version = match n.protocol {
            p if p & (SP_PROT_TLS1_3_CLIENT | SP_PROT_TLS1_3_SERVER) != 0 => {
                Some(TlsVersion::Tls13)
            }
            p if p & (SP_PROT_TLS1_2_CLIENT | SP_PROT_TLS1_2_SERVER) != 0 => {
                Some(TlsVersion::Tls12)
            }
            _ => None,
        };
        info.cipher_suite = n.cipher_suite as u16;
        info.alpn_len = n.alpn_len;
        info.alpn = n.alpn;
        info.peer_certificate = n.peer_certificate;
    }
    if let Some(Failure { status, sspi }) = session.failure() {
        info.status = status.0;
        // The wire carries the SECURITY_STATUS's 32 bits as they are.
        info.sspi_status = sspi.0;
    }
    info
}

fn handshake_outcome(session: &Session<Notify>, id: u64) -> Outcome {
    let sizes = session.negotiated().map(|n| n.stream_sizes);
    Outcome::Info(info_of(session, id), sizes.unwrap_or_default())
}

/// One DbgPrint line per handshake outcome (INFO level): what Schannel negotiated and its stream
/// sizes, or both failure codes — how a Windows run shows where kemu's model differs.
fn trace_connection(info: &ConnectionInfo, sizes: [u32; 3]) {
    use ksys::kmdf::{DPFLTR_ERROR_LEVEL, DPFLTR_INFO_LEVEL};
    // Formatted without allocating: a trace must not fail (or panic) where memory is short.
    if info.status == STATUS_SUCCESS.0 {
        let [header, trailer, max] = sizes;
        ksys::kmdf::debug_print_args(
            DPFLTR_INFO_LEVEL,
            format_args!(
                "connection {}: protocol {:?}, cipher suite {:#06x}, ALPN {} bytes, stream sizes header {header} trailer {trailer} max message {max}",
                info.id, info.version, info.cipher_suite, info.alpn_len,
            ),
        );
    } else {
        ksys::kmdf::debug_print_args(
            DPFLTR_ERROR_LEVEL,
            format_args!(
                "handshake failed: NTSTATUS {:#010x}, SECURITY_STATUS {:#010x}",
                info.status as u32, info.sspi_status as u32
            ),
        );
    }
}

/// Decides whether a parked request can finish now. Only SEND acts here (it queues what fits);
/// what must not be lost to a cancellation is left to [`settle`].
fn examine(objects: &mut [Object], p: &mut Parked, promoted: &mut Vec<Object>) -> Option<Outcome> {
    let Some(object) = objects.iter_mut().find(|o| o.id == p.id) else {
        return Some(Outcome::Status(STATUS_CANCELLED));
    };
    match (&mut p.op, &mut object.kind) {
        (Op::Accept, Kind::Listener { accepted, listener }) => {
            if accepted.iter().any(|s| s.state() == State::Open) {
                // The room `settle` pushes the connection object into.
                return promoted.try_reserve(1).is_ok().then_some(Outcome::Accept);
            }
            match listener.state() {
                ListenState::Closed(status) => Some(Outcome::Status(if nt_success(status) {
                    STATUS_CANCELLED
                } else {
                    status
                })),
                _ => None,
            }
        }
        (Op::Connect, Kind::Connection { session }) => match session.state() {
            State::Handshaking => None,
            State::Open | State::Closed => Some(handshake_outcome(session, p.id)),
        },
        (Op::Send { offset, len, at }, Kind::Connection { session }) => {
            // Straight from the request's buffer into the connection's queue.
            let (start, end) = (*offset + *at, *offset + *len);
            let sent = p
                .request
                .with(|r| r.with_input(end, |input| session.send(&input[start..end])));
            match sent {
                Ok(Ok(n)) => {
                    *at += n;
                    (*at == *len).then_some(Outcome::Status(STATUS_SUCCESS))
                }
                Ok(Err(status)) | Err(status) => Some(Outcome::Status(status)),
            }
        }
        (Op::Recv { .. }, Kind::Connection { session }) => {
            session.readable().then_some(Outcome::Recv)
        }
        (Op::Shutdown, Kind::Connection { session }) => {
            if session.is_shut_down() {
                Some(Outcome::Status(STATUS_SUCCESS))
            } else if session.state() == State::Closed {
                Some(Outcome::Status(
                    session.failure().map_or(STATUS_SUCCESS, |f| f.status),
                ))
            } else {
                None
            }
        }
        _ => Some(Outcome::Status(STATUS_INVALID_HANDLE)),
    }
}

/// CLOSE: releases a listener or connection (abortively if it is still up); its parked requests
/// complete with STATUS_CANCELLED.
pub fn close(id: u64, owner: usize) -> Result<(), NTSTATUS> {
    check_owner(&TABLE.lock(), id, owner)?;
    close_object(id, owner);
    service();
    Ok(())
}

fn close_object(id: u64, owner: usize) {
    let removed = {
        let mut t = TABLE.lock();
        let at = t
            .objects
            .iter()
            .position(|o| o.id == id && o.owner == owner);
        at.map(|i| t.objects.swap_remove(i))
    };
    if let Some(o) = removed {
        retire(o);
    }
}

fn retire(o: Object) {
    if let Kind::Connection { session } = &o.kind {
        let c = session.counters();
        BYTES_SENT_CLOSED.fetch_add(c.sent, Ordering::Relaxed);
        BYTES_RECEIVED_CLOSED.fetch_add(c.received, Ordering::Relaxed);
    }
    match o.kind {
        // A connection its owner shut down finishes its graceful close on its own (bounded);
        // any other is aborted.
        Kind::Connection { session } => session.release(),
        // Dropping a listener closes it and its untaken sessions.
        Kind::Listener { .. } => drop(o),
    }
}

/// EvtFileCleanup: the handle's objects close and its parked requests are cancelled.
pub fn cleanup(file: WDFFILEOBJECT) {
    let owner = file.as_raw() as usize;
    let (objects, parked) = {
        let mut t = TABLE.lock();
        let mut objects = Vec::new();
        let mut parked = Vec::new();
        let mut i = 0;
        while i < t.objects.len() {
            if t.objects[i].owner == owner && objects.try_reserve(1).is_ok() {
                objects.push(t.objects.swap_remove(i));
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < t.parked.len() {
            if t.parked[i].owner == owner && parked.try_reserve(1).is_ok() {
                parked.push(t.parked.remove(i));
            } else {
                i += 1;
            }
        }
        (objects, parked)
    };
    for p in parked {
        let request = p.request.resume();
        if request.unmark_cancelable().is_ok() {
            request.complete(STATUS_CANCELLED, 0);
        }
    }
    for o in objects {
        retire(o);
    }
}

/// STATS.
pub fn stats() -> Stats {
    let t = TABLE.lock();
    let mut s = Stats {
        connections_open: 0,
        listeners_open: 0,
        handshakes_ok: HANDSHAKES_OK.load(Ordering::Relaxed),
        handshakes_failed: HANDSHAKES_FAILED.load(Ordering::Relaxed),
        bytes_sent: BYTES_SENT_CLOSED.load(Ordering::Relaxed),
        bytes_received: BYTES_RECEIVED_CLOSED.load(Ordering::Relaxed),
        pending_operations: t.parked.len() as u64,
        pool_bytes: ksys::pool::bytes_in_use() as u64,
        max_connections: MAX_CONNECTIONS as u64,
        max_connections_per_handle: MAX_CONNECTIONS_PER_HANDLE as u64,
        max_queued_bytes: MAX_QUEUED_BYTES as u64,
        handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS as u64,
    };
    for o in t.objects.iter() {
        match &o.kind {
            Kind::Listener { .. } => s.listeners_open += 1,
            Kind::Connection { session } => {
                s.connections_open += 1;
                let c = session.counters();
                s.bytes_sent += c.sent;
                s.bytes_received += c.received;
            }
        }
    }
    s
}

/// Unload: cancels every parked request, closes every object and waits (PASSIVE_LEVEL, bounded)
/// until each has released its socket, then releases WSK.
pub fn shutdown() {
    let (objects, parked) = {
        let mut t = TABLE.lock();
        (
            core::mem::take(&mut t.objects),
            core::mem::take(&mut t.parked),
        )
    };
    for p in parked {
        let request = p.request.resume();
        if request.unmark_cancelable().is_ok() {
            request.complete(STATUS_CANCELLED, 0);
        }
    }
    // Dropping a session aborts it, dropping a listener closes it and the sessions it still
    // holds; each goes on releasing on its work item. The census counts them — and the
    // connections closed earlier that are still releasing (cancelling, waiting for an SSPI call,
    // closing the socket, deleting the context) — until all of it is done.
    drop(objects);
    // Cached client credentials go once their last session lets go (taken out of the lock
    // first: freeing a credential needs PASSIVE_LEVEL).
    let credentials = core::mem::take(&mut *CLIENT_CREDENTIALS.lock());
    drop(credentials);
    // Unload never goes on while a session still has an SSPI call, an IRP or a socket out:
    // every session's teardown is bounded (timeouts on handshakes, graceful ends and releases),
    // so this ends; a call the kernel never completes would keep the driver loaded, which is
    // the only safe outcome. A line every 10 s says what it waits for.
    let census = CENSUS.lock().take();
    if let Some(census) = census {
        let delay: i64 = -10_000; // 1 ms
        let mut waited_ms: u64 = 0;
        while census.live() != 0 {
            // SAFETY: a PASSIVE_LEVEL delay in the unload routine.
            unsafe { ksys::imports::KeDelayExecutionThread(0, 0, &delay) };
            waited_ms += 1;
            if waited_ms % 10_000 == 0 {
                ksys::kmdf::debug_print_args(
                    ksys::kmdf::DPFLTR_WARNING_LEVEL,
                    format_args!(
                        "unload: waiting for {} session(s) still releasing ({} s)",
                        census.live(),
                        waited_ms / 1000
                    ),
                );
            }
        }
    }
    // WskDeregister waits for any socket still closing.
    let provider = PROVIDER.lock().take();
    drop(provider);
}
