//! The driver's TLS service: listeners and connections (ktls) owned by file handles, and the
//! IOCTLs that wait on them.
//!
//! - The object table ([`crate::objects`]) finds a listener or connection by id in one step.
//!   Each object keeps its own waiting requests behind its own spin lock: SENDs and RECVs each in
//!   arrival order, ACCEPT/CONNECT/SHUTDOWN beside them.
//! - Each ktls session and listener reports its changes to a [`Notify`] naming its object, and
//!   only that object's requests are re-examined (`service`), so one connection's traffic never
//!   walks another's requests. A request that can finish when it arrives (a SEND that fits, a
//!   RECV with data waiting) completes in the dispatch routine; only the rest park.
//! - Readiness is decided under the object's lock; a parked request is taken back from the
//!   cancel machinery (WdfRequestUnmarkCancelable) before it is completed, so a cancel racing
//!   with completion completes it exactly once. A parked request carries its object's id as a
//!   KMDF context, so its cancel routine finds it without a search.
//! - A handle's objects close when the handle is cleaned up; unload closes everything and waits
//!   until every session and listener — those still in the table and those closed earlier that
//!   are still releasing — has released its socket and security context before releasing WSK.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::net::{IpAddr, SocketAddr};
use core::sync::atomic::{AtomicU64, Ordering};

use ksys::io::DEVICE_OBJECT;
use ksys::kmdf::{ParkedRequest, Request};
use ksys::ntdef::*;
use ksys::wdf::types::{WDFFILEOBJECT, WDFREQUEST};
use ktls::{
    Client, ClientConfig, Error, ListenObserver, ListenState, Listener, Observer, Pending, PoolArc,
    Received, Server, ServerConfig, Session, SpinLock, State, Tls, Verify, Versions,
};
use proto::session::{
    ConnectRequest, ConnectionInfo, Endpoint, ListenRequest, ListenResponse, Stats, TlsVersion,
    Validation, VersionRange,
};

use crate::objects::{Limits, Objects};

/// Connections (and listeners) the driver holds at most, unless the registry says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Connections and listeners one handle may hold, unless the registry says otherwise.
pub const DEFAULT_MAX_CONNECTIONS_PER_HANDLE: usize = 16_384;
/// Plaintext a connection queues for sending before SEND pends.
pub const MAX_QUEUED_BYTES: usize = 1 << 20;
/// Plaintext a connection buffers for RECV before it stops reading the socket.
pub const RECEIVE_WINDOW: usize = 1 << 20;
/// Connect plus handshake limit.
pub const HANDSHAKE_TIMEOUT_MS: u32 = 10_000;
/// Accepted connections a listener holds (handshaking or waiting for ACCEPT) before it pauses.
pub const LISTEN_BACKLOG: usize = 64;

/// Tells the driver which object changed: a ktls session or listener reports here, and only
/// that object's waiting requests are looked at again. The id is shared with the session so
/// that an accepted session, reported under its listener until ACCEPT hands it out, can be
/// pointed at its own connection object then.
pub struct Notify {
    target: PoolArc<AtomicU64>,
    /// An accepted session's listener, reported to while the session has no object of its own.
    listener: Option<PoolArc<AtomicU64>>,
}

impl Notify {
    /// An observer reporting to `id` (0: nobody yet).
    fn try_new(id: u64) -> Result<Notify, NTSTATUS> {
        Ok(Notify {
            target: PoolArc::try_new(AtomicU64::new(id))?,
            listener: None,
        })
    }

    /// Reports to `id` from now on.
    fn retarget(&self, id: u64) {
        self.target.store(id, Ordering::Release);
    }
}

impl Observer for Notify {
    fn changed(&self) {
        let mut id = self.target.load(Ordering::Acquire);
        if id == 0 {
            id = self
                .listener
                .as_ref()
                .map_or(0, |l| l.load(Ordering::Acquire));
        }
        if id != 0 {
            service(id);
        }
    }
}

impl ListenObserver for Notify {
    fn for_accepted(&self) -> Option<Self> {
        let mut notify = Notify::try_new(0).ok()?;
        notify.listener = Some(self.target.clone());
        Some(notify)
    }
}

// Objects live in pool one by one (never on the stack or in arrays), so the larger waiting-for-
// a-credential variant only costs the few hundred bytes of its plan per object.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Listener {
        listener: Listener<Notify>,
        /// Accepted, still handshaking (or open and waiting for an ACCEPT).
        accepted: Vec<Session<Notify>>,
    },
    Connection {
        session: Session<Notify>,
    },
    /// Waiting for its credential (LISTEN, or a CONNECT without a cached one).
    Acquiring(Acquiring),
    /// Credential acquired; its listener or session is being started.
    Opening,
    /// The credential could not be acquired, or the listener or session not started: the
    /// waiting LISTEN or CONNECT completes with this, and the object goes.
    Failed(NTSTATUS),
    /// Taken out of the table; what it held is being released.
    Closed,
}

/// What a parked request waits for.
pub enum Op {
    Listen,
    Accept,
    Connect,
    /// The payload is the request's output buffer (the caller's, METHOD_IN_DIRECT), `len`
    /// bytes; `at` of them are queued so far.
    Send {
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
    op: Op,
}

/// A listener or connection with the requests that wait on it.
struct Object {
    /// Set once, when the object goes into the table.
    id: AtomicU64,
    owner: usize,
    state: SpinLock<ObjectState>,
}

impl Object {
    fn id(&self) -> u64 {
        self.id.load(Ordering::Acquire)
    }
}

struct ObjectState {
    kind: Kind,
    /// SENDs in arrival order: only the first may queue bytes, so streams never interleave.
    sends: VecDeque<Parked>,
    /// RECVs in arrival order: only the first may take bytes.
    recvs: VecDeque<Parked>,
    /// ACCEPT, CONNECT and SHUTDOWN: each finishes on its own condition.
    others: Vec<Parked>,
}

impl ObjectState {
    fn queue(&mut self, op: &Op) -> Queue<'_> {
        match op {
            Op::Send { .. } => Queue::Fifo(&mut self.sends),
            Op::Recv { .. } => Queue::Fifo(&mut self.recvs),
            _ => Queue::Any(&mut self.others),
        }
    }

    /// Takes out any one parked request.
    fn pop_any(&mut self) -> Option<Parked> {
        self.sends
            .pop_front()
            .or_else(|| self.recvs.pop_front())
            .or_else(|| self.others.pop())
    }

    /// Takes out the parked request the framework names by `handle`.
    fn remove(&mut self, handle: WDFREQUEST) -> Option<Parked> {
        if let Some(at) = self.sends.iter().position(|p| p.request.is(handle)) {
            return self.sends.remove(at);
        }
        if let Some(at) = self.recvs.iter().position(|p| p.request.is(handle)) {
            return self.recvs.remove(at);
        }
        let at = self.others.iter().position(|p| p.request.is(handle))?;
        Some(self.others.remove(at))
    }
}

enum Queue<'a> {
    Fifo(&'a mut VecDeque<Parked>),
    Any(&'a mut Vec<Parked>),
}

static TABLE: SpinLock<Objects<PoolArc<Object>>> = SpinLock::new(Objects::new());
static LIMITS: SpinLock<Limits> = SpinLock::new(Limits {
    total: DEFAULT_MAX_CONNECTIONS,
    per_handle: DEFAULT_MAX_CONNECTIONS_PER_HANDLE,
});
/// The driver's kernel TLS (WSK registration, census, cached client credentials): made at
/// load, dropped at unload after every object is closed.
static TLS: SpinLock<Option<PoolArc<Tls>>> = SpinLock::new(None);

static HANDSHAKES_OK: AtomicU64 = AtomicU64::new(0);
static HANDSHAKES_FAILED: AtomicU64 = AtomicU64::new(0);
static BYTES_SENT_CLOSED: AtomicU64 = AtomicU64::new(0);
static BYTES_RECEIVED_CLOSED: AtomicU64 = AtomicU64::new(0);
static PARKED: AtomicU64 = AtomicU64::new(0);
/// Parked requests looked at by `service`: what proves one connection's traffic does not walk
/// the others' requests.
static EXAMINED: AtomicU64 = AtomicU64::new(0);

/// Sets the object limits (at load, from the service's registry parameters).
pub fn set_limits(limits: Limits) {
    *LIMITS.lock() = limits;
}

fn limits() -> Limits {
    *LIMITS.lock()
}

/// Starts kernel TLS on the control device's DEVICE_OBJECT (its work items run there).
pub fn start(device: *mut DEVICE_OBJECT) -> Result<(), NTSTATUS> {
    // SAFETY: the control device lives until unload, and `shutdown` (the unload routine) drops
    // the Tls — which waits for every connection — before it returns.
    let tls = unsafe { Tls::new(device) }.map_err(|e| e.status())?;
    *TLS.lock() = Some(PoolArc::try_new(tls)?);
    Ok(())
}

/// The driver's kernel TLS (a counted reference: `shutdown` waits until it is given back).
fn tls() -> Result<PoolArc<Tls>, NTSTATUS> {
    TLS.lock().clone().ok_or(STATUS_DEVICE_NOT_READY)
}

/// The socket address an IOCTL's endpoint names.
fn socket_address(endpoint: &Endpoint) -> SocketAddr {
    let ip = if endpoint.v6 {
        IpAddr::from(endpoint.ip)
    } else {
        IpAddr::from([
            endpoint.ip[0],
            endpoint.ip[1],
            endpoint.ip[2],
            endpoint.ip[3],
        ])
    };
    SocketAddr::new(ip, endpoint.port)
}

/// The ids of an ALPN list in wire format (each prefixed by its length).
fn alpn_ids(mut wire: &[u8]) -> Result<Vec<&[u8]>, NTSTATUS> {
    let mut ids = Vec::new();
    while let Some((&len, rest)) = wire.split_first() {
        let len = usize::from(len);
        if len == 0 || len > rest.len() {
            return Err(STATUS_INVALID_PARAMETER);
        }
        ids.try_reserve(1)
            .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
        ids.push(&rest[..len]);
        wire = &rest[len..];
    }
    Ok(ids)
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

/// The object `id` names (a counted reference, taken under the table lock only for the lookup).
fn lookup(id: u64) -> Option<PoolArc<Object>> {
    TABLE.lock().get(id).map(|(_, object)| object.clone())
}

/// Puts a new object of `owner` in the table. On error the object is dropped here, outside
/// every lock.
fn insert(owner: usize, kind: Kind) -> Result<PoolArc<Object>, NTSTATUS> {
    let object = PoolArc::try_new(Object {
        id: AtomicU64::new(0),
        owner,
        state: SpinLock::new(ObjectState {
            kind,
            sends: VecDeque::new(),
            recvs: VecDeque::new(),
            others: Vec::new(),
        }),
    })?;
    let limits = limits();
    let inserted = TABLE.lock().insert(owner, &limits, |id| {
        object.id.store(id, Ordering::Release);
        object.clone()
    });
    inserted.map(|_| object)
}

/// Whether `owner` may create one more object (checked again when it goes in).
fn check_limits(owner: usize) -> Result<(), NTSTATUS> {
    let limits = limits();
    TABLE.lock().check(owner, &limits)
}

/// LISTEN: starts acquiring the certificate's credential → the listener's id. The request
/// then waits (parked) until the listener is bound, or has failed.
pub fn listen(request: &ListenRequest<'_>, owner: usize) -> Result<u64, NTSTATUS> {
    check_limits(owner)?;
    let config = ServerConfig::builder(request.thumbprint)
        .versions(versions(request.versions))
        .alpn(alpn_ids(request.alpn)?)
        .require_client_certificate(request.require_client_certificate)
        .backlog(LISTEN_BACKLOG)
        .max_queued(MAX_QUEUED_BYTES)
        .receive_window(RECEIVE_WINDOW)
        .handshake_timeout_ms(HANDSHAKE_TIMEOUT_MS)
        .build()
        .map_err(|e| e.status())?;
    let at = socket_address(&request.endpoint);
    start_acquiring(owner, |tls, observer| {
        tls.acquire_server(config, observer)
            .map(|pending| Acquiring::Server { pending, at })
    })
}

/// Where a CONNECT goes: an address, or a host name the session resolves.
enum Destination {
    Address(SocketAddr),
    Name { host: Vec<u8>, port: u16 },
}

/// CONNECT: starts a client session (once its credential is there) → its id; the request
/// parks until the handshake ends.
pub fn connect(request: &ConnectRequest<'_>, owner: usize) -> Result<u64, NTSTATUS> {
    check_limits(owner)?;
    // An unspecified address means "resolve the host name" (WskGetAddressInfo, in the session).
    let to = if request.endpoint.ip.iter().all(|&b| b == 0) {
        if request.host.is_empty() {
            return Err(STATUS_INVALID_PARAMETER);
        }
        Destination::Name {
            host: copy(request.host)?,
            port: request.endpoint.port,
        }
    } else {
        Destination::Address(socket_address(&request.endpoint))
    };
    let verify = match request.validation {
        Validation::SystemRoots => Verify::SystemRoots,
        Validation::Insecure => Verify::InsecureAcceptAnyCertificate,
        Validation::Pinned(digest) => Verify::Pinned(digest),
    };
    let mut config = ClientConfig::builder(verify)
        .versions(versions(request.versions))
        .alpn(alpn_ids(request.alpn)?)
        .keep_peer_certificates(request.keep_peer_certificates)
        .max_queued(MAX_QUEUED_BYTES)
        .receive_window(RECEIVE_WINDOW)
        .handshake_timeout_ms(HANDSHAKE_TIMEOUT_MS);
    if let Some(thumbprint) = request.client_certificate {
        config = config.client_certificate(thumbprint);
    }
    let config = config.build().map_err(|e| e.status())?;
    let name = if request.sni.is_empty() {
        request.host
    } else {
        request.sni
    };
    let server_name = copy(name)?;
    start_acquiring(owner, |tls, observer| {
        tls.acquire_client(config, observer)
            .map(|pending| Acquiring::Client {
                pending,
                to,
                server_name,
            })
    })
}

/// An object waiting for its credential, and what it starts once the credential is there.
enum Acquiring {
    /// LISTEN: listen here.
    Server {
        pending: Pending<Server, Acquired>,
        at: SocketAddr,
    },
    /// CONNECT: connect there, with this server name (ASCII bytes).
    Client {
        pending: Pending<Client, Acquired>,
        to: Destination,
        server_name: Vec<u8>,
    },
}

/// Hears that an object's credential acquisition finished (on its work item, PASSIVE_LEVEL).
pub struct Acquired {
    target: PoolArc<AtomicU64>,
}

impl Observer for Acquired {
    fn changed(&self) {
        let id = self.target.load(Ordering::Acquire);
        if id != 0 {
            acquired(id);
        }
    }
}

/// Puts in an object that waits for its credential (SspiAcquireCredentialsHandleAsyncW, issued
/// from a work item: nobody blocks; at once with a cached client credential) → its id.
fn start_acquiring(
    owner: usize,
    begin: impl FnOnce(&Tls, Acquired) -> Result<Acquiring, Error>,
) -> Result<u64, NTSTATUS> {
    let target = PoolArc::try_new(AtomicU64::new(0))?;
    let observer = Acquired {
        target: target.clone(),
    };
    let acquiring = begin(&*tls()?, observer).map_err(|e| e.status())?;
    let object = insert(owner, Kind::Acquiring(acquiring))?;
    let id = object.id();
    target.store(id, Ordering::Release);
    // It may have finished already, reporting to nobody.
    acquired(id);
    Ok(id)
}

/// An object's credential acquisition has finished (or not yet: then nothing happens): it
/// starts listening or connecting with it, or records why it cannot.
fn acquired(id: u64) {
    let Some(object) = lookup(id) else {
        return;
    };
    let finished = {
        let mut st = object.state.lock();
        let ready = match &mut st.kind {
            Kind::Acquiring(Acquiring::Server { pending, .. }) => {
                pending.take().map(|r| r.map(Made::Server))
            }
            Kind::Acquiring(Acquiring::Client { pending, .. }) => {
                pending.take().map(|r| r.map(Made::Client))
            }
            _ => None,
        };
        ready.map(|made| (made, core::mem::replace(&mut st.kind, Kind::Opening)))
    };
    let Some((made, Kind::Acquiring(acquiring))) = finished else {
        return;
    };
    let kind = made
        .map_err(|e| e.status())
        .and_then(|made| open(made, acquiring, id))
        .unwrap_or_else(Kind::Failed);
    let closed_meanwhile = {
        let mut st = object.state.lock();
        if matches!(st.kind, Kind::Opening) {
            st.kind = kind;
            None
        } else {
            Some(kind)
        }
    };
    if let Some(kind) = closed_meanwhile {
        release(kind);
    }
    serve(&object);
}

/// What a finished acquisition made.
enum Made {
    Server(Server),
    Client(Client),
}

/// Starts listening or connecting with what the acquisition made (PASSIVE_LEVEL).
fn open(made: Made, acquiring: Acquiring, id: u64) -> Result<Kind, NTSTATUS> {
    let notify = Notify::try_new(id)?;
    match (made, acquiring) {
        (Made::Server(server), Acquiring::Server { at, .. }) => {
            let listener = server.listen(at, notify).map_err(|e| e.status())?;
            Ok(Kind::Listener {
                listener,
                accepted: Vec::new(),
            })
        }
        (
            Made::Client(client),
            Acquiring::Client {
                to, server_name, ..
            },
        ) => {
            let name = core::str::from_utf8(&server_name).map_err(|_| STATUS_INVALID_PARAMETER)?;
            let session = match to {
                Destination::Address(addr) => client.connect(addr, name, notify),
                Destination::Name { host, port } => {
                    let host = core::str::from_utf8(&host).map_err(|_| STATUS_INVALID_PARAMETER)?;
                    client.connect_by_name(host, port, name, notify)
                }
            }
            .map_err(|e| e.status())?;
            Ok(Kind::Connection { session })
        }
        _ => Err(STATUS_INTERNAL_ERROR),
    }
}

/// Parks a request, or finishes it at once if nothing is ahead of it and it can.
pub fn park(request: Request, id: u64, mut op: Op) {
    let owner = request.file().as_raw() as usize;
    let Some(object) = lookup(id).filter(|o| o.owner == owner) else {
        request.complete(STATUS_INVALID_HANDLE, 0);
        return;
    };
    let mut retired = Vec::new();
    let finished = {
        let mut guard = object.state.lock();
        let st = &mut *guard;
        match (&op, &st.kind) {
            (Op::Shutdown, Kind::Connection { session }) => {
                session.shutdown();
                Ok(())
            }
            // Nothing to shut down before the connection exists.
            (Op::Shutdown, Kind::Acquiring(_) | Kind::Opening) => Err(STATUS_INVALID_DEVICE_STATE),
            (op, kind) if applies(op, kind) => Ok(()),
            _ => Err(STATUS_INVALID_HANDLE),
        }
        .and_then(|()| {
            collect_accepted(&mut st.kind, &mut retired);
            let first = match st.queue(&op) {
                Queue::Fifo(q) => q.is_empty(),
                Queue::Any(_) => true,
            };
            let ready = if first {
                EXAMINED.fetch_add(1, Ordering::Relaxed);
                examine(&mut st.kind, object.id(), &request, &mut op)
            } else {
                None
            };
            match ready {
                // Never parked, so never cancelable: nothing to take back.
                Some(outcome) => Ok(Some(settle(&mut st.kind, owner, &request, &op, outcome))),
                None => enqueue(st, &request, id, op).map(|()| None),
            }
        })
    };
    drop(retired);
    match finished {
        Ok(Some(outcome)) => {
            if finish(request, outcome) {
                close_object(id, None);
            }
        }
        // Parked: its queue holds it now.
        Ok(None) => {}
        Err(status) => request.complete(status, 0),
    }
}

/// Whether `op` is a request for an object like `kind`.
fn applies(op: &Op, kind: &Kind) -> bool {
    let connection = matches!(
        kind,
        Kind::Acquiring(Acquiring::Client { .. }) | Kind::Opening | Kind::Connection { .. }
    );
    match op {
        Op::Listen => matches!(
            kind,
            Kind::Acquiring(Acquiring::Server { .. })
                | Kind::Opening
                | Kind::Failed(_)
                | Kind::Listener { .. }
        ),
        Op::Accept => matches!(kind, Kind::Listener { .. }),
        Op::Connect => connection || matches!(kind, Kind::Failed(_)),
        Op::Send { .. } | Op::Recv { .. } | Op::Shutdown => connection,
    }
}

/// Puts a request that must wait at the end of its queue, cancelable.
fn enqueue(st: &mut ObjectState, request: &Request, id: u64, op: Op) -> Result<(), NTSTATUS> {
    let room = match st.queue(&op) {
        Queue::Fifo(q) => q.try_reserve(1).is_ok(),
        Queue::Any(v) => v.try_reserve(1).is_ok(),
    };
    if !room {
        return Err(STATUS_INSUFFICIENT_RESOURCES);
    }
    request.set_tag(id)?;
    // Err(STATUS_CANCELLED): cancelled already — it completes with that at once.
    request.mark_cancelable(Some(cancel))?;
    let parked = Parked {
        request: Request::from_presented(request.handle()).park(),
        op,
    };
    match st.queue(&parked.op) {
        Queue::Fifo(q) => q.push_back(parked),
        Queue::Any(v) => v.push(parked),
    }
    PARKED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// EvtRequestCancel: the caller cancelled, or its handle is closing.
extern "win64" fn cancel(handle: WDFREQUEST) {
    let request = Request::from_presented(handle);
    let object = request.tag().and_then(lookup);
    let removed = object
        .as_ref()
        .and_then(|o| o.state.lock().remove(handle).map(|p| (o, p)));
    // The cancelled request is completed below through the framework's handle.
    if let Some((object, p)) = removed {
        PARKED.fetch_sub(1, Ordering::Relaxed);
        match p.op {
            // A cancelled LISTEN or CONNECT abandons its object.
            Op::Listen | Op::Connect => {
                close_object(object.id(), Some(object.owner));
            }
            // Say what the connection was doing: a request cancelled after a long wait is
            // how a stall shows.
            Op::Send { .. } | Op::Recv { .. } | Op::Shutdown => trace_cancelled(object, &p.op),
            Op::Accept => {}
        }
    }
    request.complete(STATUS_CANCELLED, 0);
    // The request behind a cancelled one in its queue may go now.
    if let Some(object) = object {
        serve(&object);
    }
}

// Outcomes only travel in a heap Vec, so the larger variant costs nothing on the stack.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Status(NTSTATUS),
    /// A finished handshake, with Schannel's stream sizes (traced after the lock is released).
    Info(ConnectionInfo, [u32; 3]),
    /// A connection is ready for this ACCEPT (taken in `settle`).
    Accept,
    /// Plaintext or end of stream is there for this RECV (moved in `settle`).
    Recv,
    /// A RECV's final status and byte count.
    Received(NTSTATUS, usize),
    /// LISTEN: bound.
    Listening(ListenResponse),
    /// LISTEN or CONNECT could not start: the object goes once the request has completed.
    Failed(NTSTATUS),
}

fn trace_cancelled(object: &Object, op: &Op) {
    let what = match op {
        Op::Send { .. } => "SEND",
        Op::Recv { .. } => "RECV",
        _ => "SHUTDOWN",
    };
    let state = match &object.state.lock().kind {
        Kind::Connection { session } => Some(session.describe()),
        _ => None,
    };
    if let Some(state) = state {
        ksys::kmdf::debug_print_args(
            ksys::kmdf::DPFLTR_WARNING_LEVEL,
            format_args!("cancelled {what} on connection {}: {state}", object.id()),
        );
    }
}

/// Re-examines the parked requests of object `id` (its session or listener changed).
pub fn service(id: u64) {
    if let Some(object) = lookup(id) {
        serve(&object);
    }
}

/// Completes what can finish of `object`'s parked requests: the first SEND and the first RECV
/// (and those behind each while they can), and any ACCEPT, CONNECT or SHUTDOWN whose condition
/// holds.
fn serve(object: &Object) {
    let mut ready: Vec<(Request, Outcome)> = Vec::new();
    let mut retired = Vec::new();
    {
        let mut guard = object.state.lock();
        let st = &mut *guard;
        collect_accepted(&mut st.kind, &mut retired);
        for fifo in [&mut st.sends, &mut st.recvs] {
            while let Some(head) = fifo.front_mut() {
                if ready.try_reserve(1).is_err() {
                    break;
                }
                let Some(outcome) = try_finish(object, &mut st.kind, head) else {
                    break;
                };
                if let Some(p) = fifo.pop_front() {
                    PARKED.fetch_sub(1, Ordering::Relaxed);
                    ready.push((p.request.resume(), outcome));
                }
            }
        }
        let mut i = 0;
        while i < st.others.len() && ready.try_reserve(1).is_ok() {
            match try_finish(object, &mut st.kind, &mut st.others[i]) {
                Some(outcome) => {
                    let p = st.others.remove(i);
                    PARKED.fetch_sub(1, Ordering::Relaxed);
                    ready.push((p.request.resume(), outcome));
                }
                None => i += 1,
            }
        }
    }
    drop(retired);
    let mut doomed = false;
    for (request, outcome) in ready {
        doomed |= finish(request, outcome);
    }
    if doomed {
        close_object(object.id(), None);
    }
}

/// A listener's newly accepted sessions join its list (up to the backlog); those whose
/// handshake failed leave it, into `retired` (dropped once the lock is released).
fn collect_accepted(kind: &mut Kind, retired: &mut Vec<Session<Notify>>) {
    let Kind::Listener { listener, accepted } = kind else {
        return;
    };
    while accepted.len() < LISTEN_BACKLOG && accepted.try_reserve(1).is_ok() {
        match listener.next() {
            Some(s) => accepted.push(s),
            None => break,
        }
    }
    let mut i = 0;
    while i < accepted.len() {
        if accepted[i].state() == State::Closed && retired.try_reserve(1).is_ok() {
            HANDSHAKES_FAILED.fetch_add(1, Ordering::Relaxed);
            if let Some(error) = accepted[i].failure() {
                let (status, sspi) = (error.status(), error.sspi());
                ksys::kmdf::debug_print_args(
                    ksys::kmdf::DPFLTR_ERROR_LEVEL,
                    format_args!(
                        "accepted connection's handshake failed: NTSTATUS {:#010x}, SECURITY_STATUS {:#010x}",
                        status.0 as u32, sspi.0 as u32
                    ),
                );
            }
            retired.push(accepted.swap_remove(i));
        } else {
            i += 1;
        }
    }
}

/// Examines one parked request; if it can finish, takes it back from the cancel machinery and
/// settles it. None: it stays (not ready, or its cancel routine has it already and will take it).
fn try_finish(object: &Object, kind: &mut Kind, p: &mut Parked) -> Option<Outcome> {
    EXAMINED.fetch_add(1, Ordering::Relaxed);
    let outcome = p
        .request
        .with(|r| examine(kind, object.id(), r, &mut p.op))?;
    // Once unmarked no cancel routine runs, so what `settle` hands the request (an accepted
    // connection, received bytes) reaches the caller.
    p.request.with(|r| r.unmark_cancelable()).ok()?;
    Some(
        p.request
            .with(|r| settle(kind, object.owner, r, &p.op, outcome)),
    )
}

/// Completes a request with its outcome (no lock held); true if its object must go (a LISTEN or
/// CONNECT that could not start).
fn finish(request: Request, outcome: Outcome) -> bool {
    let doomed = matches!(outcome, Outcome::Failed(_));
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
        Outcome::Listening(response) => match request.write_output(&response.encode()) {
            Ok(n) => request.complete(STATUS_SUCCESS, n),
            Err(status) => request.complete(status, 0),
        },
        Outcome::Failed(status) => request.complete(status, 0),
        // `settle` turned these into one of the above.
        Outcome::Accept | Outcome::Recv => request.complete(STATUS_INTERNAL_ERROR, 0),
    }
    doomed
}

/// What a ready request finishes with, once it can no longer be cancelled: hands out the
/// accepted session as a connection object of the accepting handle, counts the handshake, or
/// moves received plaintext into the request's buffer — under the object's lock, so RECVs on
/// one connection take the bytes in the order they came.
fn settle(kind: &mut Kind, owner: usize, r: &Request, op: &Op, outcome: Outcome) -> Outcome {
    match (outcome, kind) {
        (Outcome::Accept, Kind::Listener { accepted, .. }) => {
            let Some(at) = accepted.iter().position(|s| s.state() == State::Open) else {
                return Outcome::Status(STATUS_INTERNAL_ERROR);
            };
            // The connection object goes in first: at a limit the session stays for a later
            // ACCEPT and this one says why.
            let object = match insert(owner, Kind::Closed) {
                Ok(object) => object,
                Err(status) => return Outcome::Status(status),
            };
            let session = accepted.swap_remove(at);
            let id = object.id();
            session.observer().retarget(id);
            HANDSHAKES_OK.fetch_add(1, Ordering::Relaxed);
            let info = handshake_outcome(&session, id);
            // Nobody else knows the new id yet, so this lock is uncontended.
            object.state.lock().kind = Kind::Connection { session };
            info
        }
        (Outcome::Recv, Kind::Connection { session }) => {
            let Op::Recv { max } = *op else {
                return Outcome::Status(STATUS_INTERNAL_ERROR);
            };
            let mut result = Received::Pending;
            let filled = r.fill_output(max, |out| {
                result = session.recv(out);
                match result {
                    Received::Data(n) => n,
                    _ => 0,
                }
            });
            match (filled, result) {
                (Err(status), _) => Outcome::Received(status, 0),
                (Ok(n), Received::Data(_)) => Outcome::Received(STATUS_SUCCESS, n),
                (Ok(_), Received::End) => Outcome::Received(STATUS_SUCCESS, 0),
                (Ok(_), Received::Failed(f)) => Outcome::Received(f.status(), 0),
                // `examine` saw it readable under this same lock.
                (Ok(_), Received::Pending) => Outcome::Received(STATUS_INTERNAL_ERROR, 0),
            }
        }
        (outcome @ Outcome::Info(..), _) => {
            if let Op::Connect = op {
                let counter = match &outcome {
                    Outcome::Info(info, _) if info.status == STATUS_SUCCESS.0 => &HANDSHAKES_OK,
                    _ => &HANDSHAKES_FAILED,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            outcome
        }
        (
            outcome @ (Outcome::Status(_)
            | Outcome::Received(..)
            | Outcome::Listening(_)
            | Outcome::Failed(_)),
            _,
        ) => outcome,
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
    if let Some(error) = session.failure() {
        let (status, sspi) = (error.status(), error.sspi());
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

/// Decides whether a request can finish now. Only SEND acts here (it queues what fits); what
/// must not be lost to a cancellation is left to [`settle`].
fn examine(kind: &mut Kind, id: u64, r: &Request, op: &mut Op) -> Option<Outcome> {
    match (op, kind) {
        // Not started yet.
        (
            Op::Listen | Op::Connect | Op::Send { .. } | Op::Recv { .. },
            Kind::Acquiring(_) | Kind::Opening,
        ) => None,
        (Op::Listen | Op::Connect, Kind::Failed(status)) => Some(Outcome::Failed(*status)),
        (Op::Listen, Kind::Listener { listener, .. }) => match listener.state() {
            ListenState::Starting => None,
            ListenState::Closed(status) => Some(Outcome::Failed(if nt_success(status) {
                STATUS_UNSUCCESSFUL
            } else {
                status
            })),
            _ => Some(Outcome::Listening(ListenResponse {
                id,
                port: listener.local_port(),
            })),
        },
        (Op::Accept, Kind::Listener { accepted, listener }) => {
            if accepted.iter().any(|s| s.state() == State::Open) {
                return Some(Outcome::Accept);
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
            State::Open | State::Closed => Some(handshake_outcome(session, id)),
        },
        (Op::Send { len, at }, Kind::Connection { session }) => {
            // Straight from the caller's buffer into the connection's queue.
            let (start, end) = (*at, *len);
            match r.with_output_data(end, |payload| session.send(&payload[start..end])) {
                Ok(Ok(n)) => {
                    *at += n;
                    (*at == *len).then_some(Outcome::Status(STATUS_SUCCESS))
                }
                Ok(Err(error)) => Some(Outcome::Status(error.status())),
                Err(status) => Some(Outcome::Status(status)),
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
                    session.failure().map_or(STATUS_SUCCESS, |f| f.status()),
                ))
            } else {
                None
            }
        }
        (_, Kind::Closed) => Some(Outcome::Status(STATUS_CANCELLED)),
        _ => Some(Outcome::Status(STATUS_INVALID_HANDLE)),
    }
}

/// CLOSE: releases a listener or connection (abortively if it is still up); its parked requests
/// complete with STATUS_CANCELLED.
pub fn close(id: u64, owner: usize) -> Result<(), NTSTATUS> {
    if close_object(id, Some(owner)) {
        Ok(())
    } else {
        Err(STATUS_INVALID_HANDLE)
    }
}

/// Takes object `id` out of the table (if `owner` holds it) and releases it.
fn close_object(id: u64, owner: Option<usize>) -> bool {
    let removed = TABLE.lock().remove(id, owner);
    match removed {
        Some(object) => {
            retire(&object);
            true
        }
        None => false,
    }
}

/// Cancels an object's parked requests and releases what it holds.
fn retire(object: &Object) {
    loop {
        let next = object.state.lock().pop_any();
        let Some(p) = next else { break };
        PARKED.fetch_sub(1, Ordering::Relaxed);
        let request = p.request.resume();
        // Err: its cancel routine runs and completes it.
        if request.unmark_cancelable().is_ok() {
            request.complete(STATUS_CANCELLED, 0);
        }
    }
    let kind = core::mem::replace(&mut object.state.lock().kind, Kind::Closed);
    release(kind);
}

/// Lets go of what an object held.
fn release(kind: Kind) {
    match kind {
        // A connection its owner shut down finishes its graceful close on its own (bounded);
        // any other is aborted.
        Kind::Connection { session } => {
            let c = session.counters();
            BYTES_SENT_CLOSED.fetch_add(c.sent, Ordering::Relaxed);
            BYTES_RECEIVED_CLOSED.fetch_add(c.received, Ordering::Relaxed);
            session.release();
        }
        // Dropping a listener closes it and its untaken sessions; dropping an acquisition
        // abandons it (the call finishes and its credential goes then); an object being opened
        // is released by `acquired`, which finds it closed.
        Kind::Listener { .. }
        | Kind::Acquiring(_)
        | Kind::Opening
        | Kind::Failed(_)
        | Kind::Closed => drop(kind),
    }
}

/// Closes every object `owner` holds (every object, for None).
fn close_all(owner: Option<usize>) {
    let mut ids = Vec::new();
    let listed = TABLE.lock().ids(owner, &mut ids);
    if listed.is_err() {
        // Out of memory for the list: one at a time.
        loop {
            let next = TABLE.lock().first(owner);
            match next {
                Some(id) => close_object(id, owner),
                None => break,
            };
        }
        return;
    }
    for id in ids {
        close_object(id, owner);
    }
}

/// EvtFileCleanup: the handle's objects close and their parked requests are cancelled.
pub fn cleanup(file: WDFFILEOBJECT) {
    close_all(Some(file.as_raw() as usize));
}

/// PEER_CERTIFICATES: the chain a connection kept (empty if its CONNECT did not ask), copied
/// into the request's output. STATUS_BUFFER_TOO_SMALL (nothing written) if it does not fit.
pub fn peer_certificates(request: &Request, id: u64, owner: usize) -> Result<usize, NTSTATUS> {
    let object = lookup(id)
        .filter(|o| o.owner == owner)
        .ok_or(STATUS_INVALID_HANDLE)?;
    let st = object.state.lock();
    let Kind::Connection { session } = &st.kind else {
        return Err(STATUS_INVALID_HANDLE);
    };
    session.with_peer_certificates(|chain| request.write_output(chain))
}

/// STATS.
pub fn stats() -> Stats {
    let limits = limits();
    let mut s = Stats {
        connections_open: 0,
        listeners_open: 0,
        handshakes_ok: HANDSHAKES_OK.load(Ordering::Relaxed),
        handshakes_failed: HANDSHAKES_FAILED.load(Ordering::Relaxed),
        bytes_sent: BYTES_SENT_CLOSED.load(Ordering::Relaxed),
        bytes_received: BYTES_RECEIVED_CLOSED.load(Ordering::Relaxed),
        pending_operations: PARKED.load(Ordering::Relaxed),
        pool_bytes: ksys::pool::bytes_in_use() as u64,
        max_connections: limits.total as u64,
        max_connections_per_handle: limits.per_handle as u64,
        max_queued_bytes: MAX_QUEUED_BYTES as u64,
        handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS as u64,
        requests_examined: EXAMINED.load(Ordering::Relaxed),
    };
    let mut ids = Vec::new();
    if TABLE.lock().ids(None, &mut ids).is_err() {
        return s;
    }
    for object in ids.into_iter().filter_map(lookup) {
        match &object.state.lock().kind {
            Kind::Listener { .. } => s.listeners_open += 1,
            Kind::Connection { session } => {
                s.connections_open += 1;
                let c = session.counters();
                s.bytes_sent += c.sent;
                s.bytes_received += c.received;
            }
            Kind::Acquiring(_) | Kind::Opening | Kind::Failed(_) | Kind::Closed => {}
        }
    }
    s
}

/// Unload: cancels every parked request, closes every object and waits (PASSIVE_LEVEL,
/// unbounded but reported) until each has released its socket, then releases WSK.
pub fn shutdown() {
    // Dropping a session aborts it, dropping a listener closes it and the sessions it still
    // holds; each goes on releasing on its work item. The census counts them — and the
    // connections closed earlier that are still releasing (cancelling, waiting for an SSPI call,
    // closing the socket, deleting the context) — until all of it is done.
    close_all(None);
    // The empty table still holds its storage: give it back (unload leaves no pool behind).
    let table = core::mem::take(&mut *TABLE.lock());
    drop(table);
    // Unload never goes on while a session still has an SSPI call, an IRP or a socket out:
    // dropping the Tls waits for all of it (every teardown is bounded by timeouts; a call the
    // kernel never completes would keep the driver loaded, the only safe outcome), then
    // releases WSK. A dispatch routine or observer still holding it is waited for first.
    let tls = TLS.lock().take();
    if let Some(tls) = tls {
        while PoolArc::references(&tls) > 1 {
            ksys::kmdf::sleep_ms(1);
        }
        drop(tls);
    }
}
