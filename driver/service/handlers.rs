//! The IOCTL handlers that create and end objects: LISTEN and CONNECT (through a
//! non-blocking credential acquisition), CLOSE, PEER_CERTIFICATES, handle cleanup; starting
//! kernel TLS at load and shutting it down at unload.

use super::*;

/// Load: kernel TLS on the control device (its work items run there) and the service in the
/// device's context, found by unload through the driver object's context.
pub fn start(driver: WDFDRIVER, device: WDFDEVICE, limits: Limits) -> Result<(), NTSTATUS> {
    // SAFETY: the control device lives until unload, and `shutdown` (the unload routine) drops
    // the Tls — which waits for every connection — before it returns.
    let tls = unsafe { Tls::new(ksys::kmdf::wdm_device_object(device)) }.map_err(|e| e.status())?;
    let service = Service {
        device,
        table: SpinLock::new(Objects::new()),
        limits,
        tls: SpinLock::new(Some(PoolArc::try_new(tls)?)),
        counters: Counters::default(),
    };
    SERVICE.attach(device.as_object(), service)?;
    CONTROL_DEVICE.attach(driver.as_object(), ControlDevice(device))
}

impl Service {
    /// The driver's kernel TLS (a counted reference: `shutdown` waits until it is given back).
    pub(super) fn tls(&self) -> Result<PoolArc<Tls>, NTSTATUS> {
        self.tls.lock().clone().ok_or(STATUS_DEVICE_NOT_READY)
    }
}

/// The socket address an IOCTL's endpoint names.
pub(super) fn socket_address(endpoint: &Endpoint) -> SocketAddr {
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
pub(super) fn alpn_ids(mut wire: &[u8]) -> Result<Vec<&[u8]>, NTSTATUS> {
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

pub(super) fn versions(range: VersionRange) -> Versions {
    Versions {
        tls12: range.min <= TlsVersion::Tls12,
        tls13: range.max >= TlsVersion::Tls13,
    }
}

pub(super) fn copy(bytes: &[u8]) -> Result<Vec<u8>, NTSTATUS> {
    let mut v = Vec::new();
    v.try_reserve_exact(bytes.len())
        .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
    v.extend_from_slice(bytes);
    Ok(v)
}

/// LISTEN: starts acquiring the certificate's credential → the listener's id. The request
/// then waits (parked) until the listener is bound, or has failed.
pub fn listen(s: &Service, request: &ListenRequest<'_>, owner: usize) -> Result<u64, NTSTATUS> {
    check_limits(s, owner)?;
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
    start_acquiring(s, owner, |tls, observer| {
        tls.acquire_server(config, observer)
            .map(|pending| Acquiring::Server { pending, at })
    })
}

/// Where a CONNECT goes: an address, or a host name the session resolves.
pub(super) enum Destination {
    Address(SocketAddr),
    Name { host: Vec<u8>, port: u16 },
}

/// CONNECT: starts a client session (once its credential is there) → its id; the request
/// parks until the handshake ends.
pub fn connect(s: &Service, request: &ConnectRequest<'_>, owner: usize) -> Result<u64, NTSTATUS> {
    check_limits(s, owner)?;
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
        .resume_sessions(!request.full_handshake)
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
    start_acquiring(s, owner, |tls, observer| {
        tls.acquire_client(config, observer)
            .map(|pending| Acquiring::Client {
                pending,
                to,
                server_name,
            })
    })
}

/// An object waiting for its credential, and what it starts once the credential is there.
pub(super) enum Acquiring {
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
    /// The control device whose service holds the object.
    pub(super) device: WDFDEVICE,
    pub(super) target: PoolArc<AtomicU64>,
}

impl Observer for Acquired {
    fn changed(&self) {
        let id = self.target.load(Ordering::Acquire);
        if id != 0 {
            on_device(self.device, |s| acquired(s, id));
        }
    }
}

/// Puts in an object that waits for its credential (SspiAcquireCredentialsHandleAsyncW, issued
/// from a work item: nobody blocks; at once with a cached client credential) → its id.
pub(super) fn start_acquiring(
    s: &Service,
    owner: usize,
    begin: impl FnOnce(&Tls, Acquired) -> Result<Acquiring, Error>,
) -> Result<u64, NTSTATUS> {
    let target = PoolArc::try_new(AtomicU64::new(0))?;
    let observer = Acquired {
        device: s.device,
        target: target.clone(),
    };
    let acquiring = begin(&*s.tls()?, observer).map_err(|e| e.status())?;
    let object = insert(s, owner, Kind::Acquiring(acquiring))?;
    let id = object.id();
    target.store(id, Ordering::Release);
    // It may have finished already, reporting to nobody.
    acquired(s, id);
    Ok(id)
}

/// An object's credential acquisition has finished (or not yet: then nothing happens): it
/// starts listening or connecting with it, or records why it cannot.
pub(super) fn acquired(s: &Service, id: u64) {
    let Some(object) = lookup(s, id) else {
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
    let (kind, first_run) = made
        .map_err(|e| e.status())
        .and_then(|made| open(s, made, acquiring, id))
        .unwrap_or_else(|status| (Kind::Failed(status), None));
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
        release(s, kind);
    }
    // The session is where its observer finds it and no lock is held: its first run (the
    // socket and the connect) goes on this thread — the CONNECT's own when the credential
    // was cached — instead of a system worker's.
    drop(first_run);
    serve(s, &object);
}

/// What a finished acquisition made.
pub(super) enum Made {
    Server(Server),
    Client(Client),
}

/// Starts listening or connecting with what the acquisition made (PASSIVE_LEVEL); a client
/// session comes with the hold its first run waits for (drop it once the object holds the
/// session and no lock is held).
pub(super) fn open(
    s: &Service,
    made: Made,
    acquiring: Acquiring,
    id: u64,
) -> Result<(Kind, Option<SessionHold<Notify>>), NTSTATUS> {
    let notify = Notify::try_new(s, id)?;
    match (made, acquiring) {
        (Made::Server(server), Acquiring::Server { at, .. }) => {
            let listener = server.listen(at, notify).map_err(|e| e.status())?;
            Ok((
                Kind::Listener {
                    listener,
                    accepted: Vec::new(),
                },
                None,
            ))
        }
        (
            Made::Client(client),
            Acquiring::Client {
                to, server_name, ..
            },
        ) => {
            let name = core::str::from_utf8(&server_name).map_err(|_| STATUS_INVALID_PARAMETER)?;
            let (session, first_run) = match to {
                Destination::Address(addr) => client.connect_held(addr, name, notify),
                Destination::Name { host, port } => {
                    let host = core::str::from_utf8(&host).map_err(|_| STATUS_INVALID_PARAMETER)?;
                    client.connect_by_name_held(host, port, name, notify)
                }
            }
            .map_err(|e| e.status())?;
            Ok((Kind::Connection { session }, Some(first_run)))
        }
        _ => Err(STATUS_INTERNAL_ERROR),
    }
}

/// CLOSE: releases a listener or connection (abortively if it is still up); its parked requests
/// complete with STATUS_CANCELLED.
pub fn close(s: &Service, id: u64, owner: usize) -> Result<(), NTSTATUS> {
    if close_object(s, id, Some(owner)) {
        Ok(())
    } else {
        Err(STATUS_INVALID_HANDLE)
    }
}

/// EvtFileCleanup: the handle's objects close and their parked requests are cancelled.
pub fn cleanup(file: WDFFILEOBJECT) {
    on_device(ksys::kmdf::file_device(file), |s| {
        close_all(s, Some(file.as_raw() as usize))
    });
}

/// PEER_CERTIFICATES: the chain a connection kept (empty if its CONNECT did not ask), copied
/// into the request's output. STATUS_BUFFER_TOO_SMALL (nothing written) if it does not fit.
pub fn peer_certificates(
    s: &Service,
    request: &Request,
    id: u64,
    owner: usize,
) -> Result<usize, NTSTATUS> {
    let object = lookup(s, id)
        .filter(|o| o.owner == owner)
        .ok_or(STATUS_INVALID_HANDLE)?;
    let st = object.state.lock();
    let Kind::Connection { session } = &st.kind else {
        return Err(STATUS_INVALID_HANDLE);
    };
    session.with_peer_certificates(|chain| request.write_output(chain))
}

/// Unload: cancels every parked request, closes every object and waits (PASSIVE_LEVEL,
/// unbounded but reported) until each has released its socket, then releases WSK. The
/// service's memory goes with the control device, which the framework deletes afterwards.
pub fn shutdown(driver: WDFDRIVER) {
    let Some(device) = CONTROL_DEVICE.with(driver.as_object(), |c| c.0) else {
        return;
    };
    on_device(device, |s| s.shut_down());
}

impl Service {
    fn shut_down(&self) {
        // Dropping a session aborts it, dropping a listener closes it and the sessions it
        // still holds; each goes on releasing on its work item. The census counts them — and
        // the connections closed earlier that are still releasing (cancelling, waiting for an
        // SSPI call, closing the socket, deleting the context) — until all of it is done.
        close_all(self, None);
        // The empty table still holds its storage: give it back now (the context's own memory
        // goes with the device).
        let table = core::mem::take(&mut *self.table.lock());
        drop(table);
        // Unload never goes on while a session still has an SSPI call, an IRP or a socket out:
        // dropping the Tls waits for all of it (every teardown is bounded by timeouts; a call
        // the kernel never completes would keep the driver loaded, the only safe outcome), then
        // releases WSK. A dispatch routine or observer still holding it is waited for first.
        let tls = self.tls.lock().take();
        if let Some(tls) = tls {
            while PoolArc::references(&tls) > 1 {
                ksys::kmdf::sleep_ms(1);
            }
            drop(tls);
        }
    }
}
