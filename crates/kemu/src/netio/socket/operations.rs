//! Queued operations and how they move: arming cancel routines, claiming an IRP, the
//! progress engine that runs accepts, connects, receives and sends against the host socket,
//! and finishing their IRPs.

use super::*;

/// Where completions decided under the lock come from.
#[derive(Clone, Copy)]
pub(super) enum Origin {
    /// A driver's call on the socket with this token: placed per fault plan, inline or as a
    /// DPC on the socket's processor (see `ke::processors`).
    Call(usize),
    /// The poller: at DISPATCH_LEVEL on the poller thread.
    Poller,
}

/// Runs completions decided under the lock.
pub(super) fn finish(completions: Vec<Done>, origin: Origin) {
    for c in completions {
        if c.drop_socket != 0 {
            drop_socket(c.drop_socket);
        }
        if c.irp == 0 {
            continue;
        }
        let irp = c.irp as *mut IRP;
        if let Origin::Call(flow) = origin {
            let kernel = thread::kernel();
            let placement = kernel.faults.place(true, true);
            if placement.inline {
                let level = if placement.dispatch {
                    DISPATCH
                } else {
                    thread::irql()
                };
                thread::at_irql(level, || {
                    crate::netio::complete_now(irp, c.status, c.information)
                });
            } else {
                let (status, info) = (c.status, c.information);
                kernel.dpc.submit(Some(flow), move || {
                    complete_at_dispatch(c.irp as *mut IRP, status, info)
                });
            }
        } else {
            complete_at_dispatch(irp, c.status, c.information);
        }
    }
}

pub(super) fn lookup_violation(routine: &str, socket: *mut WSK_SOCKET) -> ! {
    wsk_violation(
        format!(
            "{routine}: {:#x} is not an open WSK socket (closed already?)",
            socket as usize
        ),
        socket as usize,
    )
}

/// Queues `irp` as pending on `socket`: marks it pending and installs its cancel routine.
/// Returns false if the IRP was already cancelled (the caller completes it as cancelled).
pub(super) fn arm(socket: usize, irp: usize) -> bool {
    mark_pending(irp as *mut IRP);
    rearm(socket, irp)
}

pub(super) fn rearm(socket: usize, irp: usize) -> bool {
    thread::kernel().irps.set_cancel(
        irp as *mut IRP,
        Box::new(move |irp| cancel_pending(socket, irp as usize)),
    )
}

/// Cancel routine of a queued WSK IRP (runs at DISPATCH_LEVEL inside IoCancelIrp).
pub(super) fn cancel_pending(socket: usize, irp: usize) {
    let kernel = thread::kernel();
    let cell = kernel.netio.lock().sockets.get(&socket).cloned();
    let orphaned = match cell {
        Some(cell) => {
            let mut s = lock_socket(&cell);
            let socket_connect = s
                .connect
                .as_ref()
                .is_some_and(|c| c.irp == irp && c.socket_connect);
            s.remove_op(irp);
            socket_connect && !s.closed
        }
        None => false,
    };
    // A cancelled WskSocketConnect never hands its socket to the caller: free it.
    if orphaned {
        drop_socket(socket);
    }
    crate::netio::complete_now(irp as *mut IRP, STATUS_CANCELLED, 0);
}

/// Claims a queued IRP for completion; false if its cancel routine has it.
pub(super) fn claim(irp: usize) -> bool {
    irp == 0 || thread::kernel().irps.clear_cancel(irp as *mut IRP)
}

/// A connection a listener accepted, waiting to become a WSK socket (under the provider lock,
/// after the listener's own lock is released: see [`adopt`]).
pub(super) struct Accepted {
    stream: mio::net::TcpStream,
    peer: SocketAddr,
    irp: usize,
    local_out: usize,
    remote_out: usize,
    family: u16,
    registration: usize,
}

/// Moves every queued operation of socket `s` (at address `socket`, locked by the caller)
/// forward as far as the OS socket allows. Returns the connections a listener accepted, for
/// [`adopt`] once the socket's lock is released.
pub(super) fn progress(s: &mut Socket, socket: usize, out: &mut Vec<Done>) -> Vec<Accepted> {
    let mut accepted: Vec<Accepted> = Vec::new();
    if s.closed {
        return accepted;
    }
    match &mut s.io {
        Io::Listener(listener) => {
            while let Some(op) = s.accepts.pop_front() {
                if !claim(op.irp) {
                    continue;
                }
                match listener.accept() {
                    Ok((stream, peer)) => accepted.push(Accepted {
                        stream,
                        peer,
                        irp: op.irp,
                        local_out: op.local_out,
                        remote_out: op.remote_out,
                        family: s.family,
                        registration: s.registration,
                    }),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if rearm(socket, op.irp) {
                            s.accepts.push_front(op);
                        } else {
                            out.push(done(op.irp, STATUS_CANCELLED, 0));
                        }
                        break;
                    }
                    Err(e) => out.push(done(op.irp, status_of(&e), 0)),
                }
            }
        }
        Io::Connecting(stream) => {
            if let Some(op) = s.connect.take() {
                let outcome = match stream.take_error() {
                    Ok(Some(e)) | Err(e) => Some(Err(e)),
                    Ok(None) => match stream.peer_addr() {
                        Ok(_) => Some(Ok(())),
                        Err(e)
                            if e.kind() == ErrorKind::NotConnected
                                || e.raw_os_error() == Some(115) =>
                        {
                            None
                        }
                        Err(e) => Some(Err(e)),
                    },
                };
                match outcome {
                    None => s.connect = Some(op),
                    Some(result) => {
                        let connected = result.is_ok();
                        if claim(op.irp) {
                            match result {
                                Ok(()) => {
                                    let info = if op.socket_connect { socket } else { 0 };
                                    out.push(done(op.irp, STATUS_SUCCESS, info));
                                }
                                Err(e) => {
                                    let mut d = done(op.irp, status_of(&e), 0);
                                    // WskSocketConnect closes its socket when the connect fails.
                                    if op.socket_connect {
                                        d.drop_socket = socket;
                                    }
                                    out.push(d);
                                }
                            }
                        } else if op.socket_connect {
                            // Cancelled as it finished: the caller never gets the socket.
                            let mut d = done(0, STATUS_CANCELLED, 0);
                            d.drop_socket = socket;
                            out.push(d);
                        }
                        let old = std::mem::replace(&mut s.io, Io::Dead);
                        if let (true, Io::Connecting(stream)) = (connected, old) {
                            s.io = Io::Stream(stream);
                        }
                    }
                }
            }
        }
        _ => {}
    }
    if let Io::Stream(stream) = &mut s.io {
        // Receives.
        while let Some(mut op) = s.receives.pop_front() {
            if !claim(op.irp) {
                continue;
            }
            if s.fin_received {
                out.push(done(op.irp, STATUS_SUCCESS, op.filled));
                continue;
            }
            let read = if s.readable {
                stream.read_vectored(&mut op.unfilled())
            } else {
                Err(ErrorKind::WouldBlock.into())
            };
            match read {
                Ok(0) => {
                    s.fin_received = true;
                    out.push(done(op.irp, STATUS_SUCCESS, op.filled));
                }
                Ok(n) => {
                    op.filled += n;
                    if op.wait_all && op.filled < op.length {
                        if rearm(socket, op.irp) {
                            s.receives.push_front(op);
                        } else {
                            out.push(done(op.irp, STATUS_CANCELLED, op.filled));
                        }
                        continue;
                    }
                    out.push(done(op.irp, STATUS_SUCCESS, op.filled));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    s.readable = false;
                    if rearm(socket, op.irp) {
                        s.receives.push_front(op);
                    } else {
                        out.push(done(op.irp, STATUS_CANCELLED, op.filled));
                    }
                    break;
                }
                Err(e) => out.push(done(op.irp, status_of(&e), 0)),
            }
        }
        // Sends: never partial; an IRP completes once all of its bytes are written.
        while let Some(mut op) = s.sends.pop_front() {
            if !claim(op.irp) {
                continue;
            }
            let mut failed = None;
            while op.written < op.length {
                let result = stream.write_vectored(&op.remaining());
                match result {
                    Ok(n) => op.written += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        failed = Some(status_of(&e));
                        break;
                    }
                }
            }
            if let Some(status) = failed {
                if op.irp != 0 {
                    out.push(done(op.irp, status, op.written));
                }
                continue;
            }
            if op.written < op.length {
                if op.irp == 0 || rearm(socket, op.irp) {
                    s.sends.push_front(op);
                } else {
                    out.push(done(op.irp, STATUS_CANCELLED, op.written));
                }
                break;
            }
            if op.irp != 0 {
                out.push(done(op.irp, STATUS_SUCCESS, op.written));
            }
        }
        // A graceful disconnect waits for the sends queued before it.
        if s.sends.is_empty() {
            if let Some(irp) = s.disconnect.take() {
                if claim(irp) {
                    let result = stream.shutdown(Shutdown::Write);
                    s.fin_sent = true;
                    out.push(done(
                        irp,
                        result.map_or_else(|e| status_of(&e), |()| STATUS_SUCCESS),
                        0,
                    ));
                }
            }
        }
    }
    accepted
}

/// Makes WSK sockets of accepted connections and completes their WskAccept IRPs (into `out`).
/// Registration with the poller and the token's entry happen under the provider lock, which
/// the poller takes to find a token, so no event of the new socket is looked up before it is.
pub(super) fn adopt(accepted: Vec<Accepted>, out: &mut Vec<Done>) {
    if accepted.is_empty() {
        return;
    }
    let kernel = thread::kernel();
    let registry = kernel.netio.poller.registry();
    let mut state = kernel.netio.lock();
    for Accepted {
        mut stream,
        peer,
        irp,
        local_out,
        remote_out,
        family,
        registration,
    } in accepted
    {
        let local = stream.local_addr().ok();
        state.next_token += 1;
        let token = state.next_token;
        if let Err(e) = registry.register(
            &mut stream,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            out.push(done(irp, status_of(&e), 0));
            continue;
        }
        let block = crate::io::alloc_zeroed(SOCKET_BLOCK);
        // SAFETY: a fresh block whose first field is the WSK_SOCKET Dispatch pointer.
        unsafe {
            (*(block as *mut WSK_SOCKET)).Dispatch =
                &CONNECTION_DISPATCH.0 as *const _ as *const c_void
        };
        // SAFETY: the driver's address buffers stay valid until this completion.
        unsafe {
            if let Some(l) = local {
                addr::write(local_out as *mut SOCKADDR, l);
            }
            addr::write(remote_out as *mut SOCKADDR, peer);
        }
        state.sockets.insert(
            block as usize,
            Arc::new(Mutex::new(Socket::new(
                Category::Connection,
                family,
                registration,
                token,
                Io::Stream(stream),
                Site::here(kernel.next_sequence()),
            ))),
        );
        state.tokens.insert(token, block as usize);
        if let Some(r) = state.registrations.get_mut(&registration) {
            r.sockets += 1;
        }
        out.push(done(irp, STATUS_SUCCESS, block as usize));
    }
}

impl Socket {
    pub(super) fn new(
        category: Category,
        family: u16,
        registration: usize,
        token: usize,
        io: Io,
        site: Site,
    ) -> Socket {
        Socket {
            category,
            family,
            registration,
            token,
            io,
            accepts: VecDeque::new(),
            receives: VecDeque::new(),
            sends: VecDeque::new(),
            connect: None,
            disconnect: None,
            fin_sent: false,
            fin_received: false,
            readable: true,
            aborted: false,
            closed: false,
            v6only: None,
            site,
        }
    }
}

/// The poller saw `token` ready (`readable`: for reading, or closed or failed).
pub(crate) fn on_ready(token: usize, readable: bool) {
    let kernel = thread::kernel();
    let found = {
        let state = kernel.netio.lock();
        state
            .tokens
            .get(&token)
            .and_then(|&socket| Some((socket, state.sockets.get(&socket)?.clone())))
    };
    let Some((socket, cell)) = found else {
        return;
    };
    let mut out = Vec::new();
    let accepted = {
        let mut sock = lock_socket(&cell);
        // Set under the socket's lock: a thread whose read just found nothing clears it
        // before this event can be looked at.
        sock.readable |= readable;
        progress(&mut sock, socket, &mut out)
    };
    adopt(accepted, &mut out);
    finish(out, Origin::Poller);
}

/// Looks up an open socket, runs `f` under its own lock (the provider lock is held only to
/// find it).
pub(super) fn with_socket<R>(
    routine: &str,
    socket: *mut WSK_SOCKET,
    f: impl FnOnce(&mut Socket) -> R,
) -> R {
    let kernel = thread::kernel();
    let cell = kernel.netio.lock().sockets.get(&(socket as usize)).cloned();
    let Some(cell) = cell else {
        lookup_violation(routine, socket)
    };
    let mut sock = lock_socket(&cell);
    if sock.closed {
        drop(sock);
        lookup_violation(routine, socket);
    }
    f(&mut sock)
}

/// Queues an operation (already pushed by `push`) and runs the socket forward.
pub(super) fn queue_and_progress(
    routine: &str,
    socket: *mut WSK_SOCKET,
    irp: *mut IRP,
    push: impl FnOnce(&mut Socket),
) -> NTSTATUS {
    let mut out = Vec::new();
    let (armed, flow) = with_socket(routine, socket, |sock| {
        if !arm(socket as usize, irp as usize) {
            return (None, sock.token);
        }
        push(sock);
        (Some(progress(sock, socket as usize, &mut out)), sock.token)
    });
    match armed {
        Some(accepted) => adopt(accepted, &mut out),
        None => out.push(done(irp as usize, STATUS_CANCELLED, 0)),
    }
    finish(out, Origin::Call(flow));
    STATUS_PENDING
}
