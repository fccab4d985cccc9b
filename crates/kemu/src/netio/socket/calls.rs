//! The socket calls that make and wire up sockets: WskSocket, WskSocketConnect, WskBind,
//! WskConnect, WskAccept, the name and address queries.

use super::*;

pub(super) fn domain_of(family: u16) -> Option<Domain> {
    match u32::from(family) {
        AF_INET => Some(Domain::IPV4),
        AF_INET6 => Some(Domain::IPV6),
        _ => None,
    }
}

/// Creates the OS socket and the WSK_SOCKET; Err is the status to complete with.
pub(super) fn create(
    registration: usize,
    family: u16,
    category: Category,
) -> Result<usize, NTSTATUS> {
    let kernel = thread::kernel();
    let domain = domain_of(family).ok_or(STATUS_INVALID_PARAMETER)?;
    if kernel.faults.allocation_fails() {
        return Err(STATUS_INSUFFICIENT_RESOURCES);
    }
    let os = socket2::Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| status_of(&e))?;
    os.set_nonblocking(true).map_err(|e| status_of(&e))?;
    let block = crate::io::alloc_zeroed(SOCKET_BLOCK);
    let dispatch: *const c_void = match category {
        Category::Listen => &LISTEN_DISPATCH.0 as *const _ as *const c_void,
        Category::Connection => &CONNECTION_DISPATCH.0 as *const _ as *const c_void,
    };
    // SAFETY: a fresh block whose first field is the WSK_SOCKET Dispatch pointer.
    unsafe { (*(block as *mut WSK_SOCKET)).Dispatch = dispatch };
    let mut state = kernel.netio.lock();
    state.next_token += 1;
    let token = state.next_token;
    let refused = state
        .registrations
        .get(&registration)
        .is_none_or(|r| r.deregistering);
    if refused {
        drop(state);
        crate::io::free(block, SOCKET_BLOCK);
        return Err(STATUS_DEVICE_NOT_READY);
    }
    state.sockets.insert(
        block as usize,
        Arc::new(Mutex::new(Socket::new(
            category,
            family,
            registration,
            token,
            Io::Fresh(os),
            Site::here(kernel.next_sequence()),
        ))),
    );
    state.tokens.insert(token, block as usize);
    if let Some(r) = state.registrations.get_mut(&registration) {
        r.sockets += 1;
    }
    Ok(block as usize)
}

/// WskSocket: listen and connection sockets over TCP; other kinds are STATUS_NOT_SUPPORTED.
pub(super) unsafe extern "win64" fn wsk_socket(
    client: *mut c_void,
    family: u16,
    socket_type: u16,
    protocol: u32,
    flags: u32,
    _context: *mut c_void,
    _dispatch: *const c_void,
    _owning_process: *mut c_void,
    _owning_thread: *mut c_void,
    _security_descriptor: *mut c_void,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskSocket", DISPATCH);
    let registration = check_client(client, "WskSocket");
    if let Err(s) = take_irp(irp) {
        return s;
    }
    let category = match flags {
        WSK_FLAG_LISTEN_SOCKET => Category::Listen,
        WSK_FLAG_CONNECTION_SOCKET => Category::Connection,
        _ => return respond(irp, STATUS_NOT_SUPPORTED, 0),
    };
    if u32::from(socket_type) != SOCK_STREAM || (protocol != IPPROTO_TCP && protocol != 0) {
        return respond(irp, STATUS_NOT_SUPPORTED, 0);
    }
    match create(registration, family, category) {
        Ok(socket) => respond(irp, STATUS_SUCCESS, socket),
        Err(status) => respond(irp, status, 0),
    }
}

/// WskSocketConnect: a connection socket bound to `local` and connected to `remote`.
pub(super) unsafe extern "win64" fn wsk_socket_connect(
    client: *mut c_void,
    socket_type: u16,
    protocol: u32,
    local: *mut SOCKADDR,
    remote: *mut SOCKADDR,
    flags: u32,
    _context: *mut c_void,
    _dispatch: *const WSK_CLIENT_CONNECTION_DISPATCH,
    _owning_process: *mut c_void,
    _owning_thread: *mut c_void,
    _security_descriptor: *mut c_void,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskSocketConnect", DISPATCH);
    let registration = check_client(client, "WskSocketConnect");
    if let Err(s) = take_irp(irp) {
        return s;
    }
    if u32::from(socket_type) != SOCK_STREAM
        || (protocol != IPPROTO_TCP && protocol != 0)
        || flags != 0
    {
        return respond(irp, STATUS_NOT_SUPPORTED, 0);
    }
    // SAFETY: the driver's addresses (or NULL).
    let (Some(local), Some(remote)) = (unsafe { addr::read(local) }, unsafe { addr::read(remote) })
    else {
        return respond(irp, STATUS_INVALID_PARAMETER, 0);
    };
    let socket = match create(registration, addr::family_of(&local), Category::Connection) {
        Ok(s) => s,
        Err(status) => return respond(irp, status, 0),
    };
    let started = with_socket("WskSocketConnect", socket as *mut WSK_SOCKET, |sock| {
        bind_os(sock, local).and_then(|()| start_connect(sock, remote))
    });
    match started {
        Ok(()) => queue_and_progress("WskSocketConnect", socket as *mut WSK_SOCKET, irp, |s| {
            s.connect = Some(ConnectOp {
                irp: irp as usize,
                socket_connect: true,
            })
        }),
        Err(status) => {
            drop_socket(socket);
            respond(irp, status, 0)
        }
    }
}

/// WskGetNameInfo: reverse lookups are not offered.
pub(super) unsafe extern "win64" fn wsk_get_name_info(
    client: *mut c_void,
    _addr: *mut SOCKADDR,
    _len: u32,
    _node: *mut UNICODE_STRING,
    _service: *mut UNICODE_STRING,
    _flags: u32,
    _process: *mut c_void,
    _thread: *mut c_void,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskGetNameInfo", ksys::ntdef::PASSIVE_LEVEL);
    check_client(client, "WskGetNameInfo");
    if let Err(s) = take_irp(irp) {
        return s;
    }
    respond(irp, STATUS_NOT_SUPPORTED, 0)
}

pub(super) fn bind_os(sock: &mut Socket, local: SocketAddr) -> Result<(), NTSTATUS> {
    if addr::family_of(&local) != sock.family {
        return Err(STATUS_INVALID_PARAMETER);
    }
    let Io::Fresh(os) = std::mem::replace(&mut sock.io, Io::Dead) else {
        return Err(STATUS_INVALID_DEVICE_STATE);
    };
    let fail = |sock: &mut Socket, os: socket2::Socket, status: NTSTATUS| {
        sock.io = Io::Fresh(os);
        Err(status)
    };
    if sock.category == Category::Listen {
        // Windows lets a listener reuse a port held by TIME_WAIT connections; Linux needs
        // SO_REUSEADDR for that (it still refuses a port another socket listens on).
        if let Err(e) = os.set_reuse_address(true) {
            return fail(sock, os, status_of(&e));
        }
    }
    if local.is_ipv6() {
        // WSK sockets are IPv6-only unless IPV6_V6ONLY was set to FALSE before the bind
        // (echosrv does so to accept IPv4 on [::]); Linux defaults to dual stack.
        if let Err(e) = os.set_only_v6(sock.v6only.unwrap_or(true)) {
            return fail(sock, os, status_of(&e));
        }
    }
    if let Err(e) = os.bind(&local.into()) {
        return fail(sock, os, status_of(&e));
    }
    match sock.category {
        Category::Connection => sock.io = Io::Bound(os),
        Category::Listen => {
            // A WSK listen socket listens as soon as it is bound.
            if let Err(e) = os.listen(BACKLOG) {
                return fail(sock, os, status_of(&e));
            }
            let mut listener = mio::net::TcpListener::from_std(os.into());
            if let Err(e) = thread::kernel().netio.poller.registry().register(
                &mut listener,
                Token(sock.token),
                Interest::READABLE,
            ) {
                return Err(status_of(&e));
            }
            sock.io = Io::Listener(listener);
        }
    }
    Ok(())
}

pub(super) fn start_connect(sock: &mut Socket, remote: SocketAddr) -> Result<(), NTSTATUS> {
    if addr::family_of(&remote) != sock.family {
        return Err(STATUS_INVALID_PARAMETER);
    }
    let Io::Bound(os) = std::mem::replace(&mut sock.io, Io::Dead) else {
        return Err(STATUS_INVALID_DEVICE_STATE);
    };
    match os.connect(&remote.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(115) || e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => {
            sock.io = Io::Bound(os);
            return Err(status_of(&e));
        }
    }
    let mut stream = mio::net::TcpStream::from_std(os.into());
    if let Err(e) = thread::kernel().netio.poller.registry().register(
        &mut stream,
        Token(sock.token),
        Interest::READABLE | Interest::WRITABLE,
    ) {
        return Err(status_of(&e));
    }
    sock.io = Io::Connecting(stream);
    Ok(())
}

/// Drops a socket kemu created for a call that then failed.
pub(super) fn drop_socket(socket: usize) {
    let kernel = thread::kernel();
    let removed = {
        let mut state = kernel.netio.lock();
        let removed = state.sockets.remove(&socket);
        if let Some(cell) = &removed {
            let (token, registration) = {
                let s = lock_socket(cell);
                (s.token, s.registration)
            };
            state.tokens.remove(&token);
            if let Some(r) = state.registrations.get_mut(&registration) {
                r.sockets -= 1;
            }
        }
        removed
    };
    if let Some(cell) = removed {
        // Nothing is queued on a socket its caller never got; the host socket closes here.
        drop(lock_socket(&cell).shut());
        crate::io::free(socket as *mut u8, SOCKET_BLOCK);
    }
}

pub(super) fn deregister_io(io: &mut Io) {
    let kernel = thread::kernel();
    let registry = kernel.netio.poller.registry();
    match io {
        Io::Listener(l) => {
            let _ = registry.deregister(l);
        }
        Io::Connecting(s) | Io::Stream(s) => {
            let _ = registry.deregister(s);
        }
        _ => {}
    }
}

/// WskBind.
pub(super) unsafe extern "win64" fn wsk_bind(
    socket: *mut WSK_SOCKET,
    local: *mut SOCKADDR,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskBind", DISPATCH);
    with_socket("WskBind", socket, |_| ());
    if let Err(s) = take_irp(irp) {
        return s;
    }
    // SAFETY: the driver's address (or NULL).
    let Some(local) = (unsafe { addr::read(local) }).filter(|_| flags == 0) else {
        return respond(irp, STATUS_INVALID_PARAMETER, 0);
    };
    let result = with_socket("WskBind", socket, |sock| bind_os(sock, local));
    respond(irp, result.err().unwrap_or(STATUS_SUCCESS), 0)
}

/// WskConnect (the socket must be bound).
pub(super) unsafe extern "win64" fn wsk_connect(
    socket: *mut WSK_SOCKET,
    remote: *mut SOCKADDR,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskConnect", DISPATCH);
    with_socket("WskConnect", socket, |_| ());
    if let Err(s) = take_irp(irp) {
        return s;
    }
    // SAFETY: the driver's address (or NULL).
    let Some(remote) = (unsafe { addr::read(remote) }).filter(|_| flags == 0) else {
        return respond(irp, STATUS_INVALID_PARAMETER, 0);
    };
    let started = with_socket("WskConnect", socket, |sock| start_connect(sock, remote));
    match started {
        Ok(()) => queue_and_progress("WskConnect", socket, irp, |s| {
            s.connect = Some(ConnectOp {
                irp: irp as usize,
                socket_connect: false,
            })
        }),
        Err(status) => respond(irp, status, 0),
    }
}

/// WskAccept: completes with the accepted socket in Information.
pub(super) unsafe extern "win64" fn wsk_accept(
    socket: *mut WSK_SOCKET,
    flags: u32,
    _context: *mut c_void,
    _dispatch: *const WSK_CLIENT_CONNECTION_DISPATCH,
    local: *mut SOCKADDR,
    remote: *mut SOCKADDR,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskAccept", DISPATCH);
    let listening = with_socket("WskAccept", socket, |sock| {
        matches!(sock.io, Io::Listener(_))
    });
    if let Err(s) = take_irp(irp) {
        return s;
    }
    if flags != 0 {
        return respond(irp, STATUS_INVALID_PARAMETER, 0);
    }
    if !listening {
        return respond(irp, STATUS_INVALID_DEVICE_STATE, 0);
    }
    if thread::kernel().faults.accept_fails() {
        return respond(irp, STATUS_CONNECTION_RESET, 0);
    }
    queue_and_progress("WskAccept", socket, irp, |s| {
        s.accepts.push_back(AcceptOp {
            irp: irp as usize,
            local_out: local as usize,
            remote_out: remote as usize,
        })
    })
}

/// WskInspectComplete: conditional accept is not offered.
pub(super) unsafe extern "win64" fn wsk_inspect_complete(
    socket: *mut WSK_SOCKET,
    _id: *mut c_void,
    _action: i32,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskInspectComplete", DISPATCH);
    with_socket("WskInspectComplete", socket, |_| ());
    if let Err(s) = take_irp(irp) {
        return s;
    }
    respond(irp, STATUS_NOT_SUPPORTED, 0)
}

pub(super) fn get_address(
    routine: &str,
    socket: *mut WSK_SOCKET,
    out: *mut SOCKADDR,
    irp: *mut IRP,
    remote: bool,
) -> NTSTATUS {
    thread::require_at_most(routine, DISPATCH);
    with_socket(routine, socket, |_| ());
    if let Err(s) = take_irp(irp) {
        return s;
    }
    if out.is_null() {
        return respond(irp, STATUS_INVALID_PARAMETER, 0);
    }
    let found = with_socket(routine, socket, |sock| match (&sock.io, remote) {
        (Io::Bound(os), false) => os.local_addr().ok().and_then(|a| a.as_socket()),
        (Io::Listener(l), false) => l.local_addr().ok(),
        (Io::Connecting(st) | Io::Stream(st), false) => st.local_addr().ok(),
        (Io::Stream(st), true) => st.peer_addr().ok(),
        _ => None,
    });
    match found {
        Some(a) => {
            // SAFETY: the driver's SOCKADDR storage for its socket's family.
            unsafe { addr::write(out, a) };
            respond(irp, STATUS_SUCCESS, 0)
        }
        None => respond(irp, STATUS_INVALID_DEVICE_STATE, 0),
    }
}

/// WskGetLocalAddress.
pub(super) unsafe extern "win64" fn wsk_get_local_address(
    socket: *mut WSK_SOCKET,
    out: *mut SOCKADDR,
    irp: *mut IRP,
) -> NTSTATUS {
    get_address("WskGetLocalAddress", socket, out, irp, false)
}

/// WskGetRemoteAddress.
pub(super) unsafe extern "win64" fn wsk_get_remote_address(
    socket: *mut WSK_SOCKET,
    out: *mut SOCKADDR,
    irp: *mut IRP,
) -> NTSTATUS {
    get_address("WskGetRemoteAddress", socket, out, irp, true)
}
