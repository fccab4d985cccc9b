//! Moving data and ending a connection: WskSend, WskReceive, WskDisconnect, WskRelease,
//! WskCloseSocket (and the reset a close without disconnect means).

use super::*;

/// Why a data call cannot run on this socket now, if it cannot.
pub(super) fn data_state(sock: &Socket, sending: bool) -> Option<NTSTATUS> {
    if sock.aborted {
        return Some(STATUS_CONNECTION_ABORTED);
    }
    match sock.io {
        Io::Stream(_) if sending && (sock.fin_sent || sock.disconnect.is_some()) => {
            Some(STATUS_INVALID_DEVICE_STATE)
        }
        Io::Stream(_) => None,
        _ => Some(STATUS_INVALID_DEVICE_STATE),
    }
}

/// WskSend: completes only once every byte is written (Information = Length).
pub(super) unsafe extern "win64" fn wsk_send(
    socket: *mut WSK_SOCKET,
    buf: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskSend", DISPATCH);
    let state = with_socket("WskSend", socket, |sock| data_state(sock, true));
    if let Err(s) = take_irp(irp) {
        return s;
    }
    if flags & !WSK_FLAG_NODELAY != 0 {
        return respond(irp, STATUS_NOT_SUPPORTED, 0);
    }
    if let Some(status) = state {
        return respond(irp, status, 0);
    }
    // SAFETY: the driver's WSK_BUF and MDLs.
    let (segments, length) = match unsafe { segments(buf) } {
        Ok(v) => v,
        Err(status) => return respond(irp, status, 0),
    };
    if length == 0 {
        return respond(irp, STATUS_SUCCESS, 0);
    }
    queue_and_progress("WskSend", socket, irp, |s| {
        s.sends.push_back(SendOp {
            irp: irp as usize,
            segments,
            length,
            written: 0,
        })
    })
}

/// WskReceive: completes with what arrived (≤ Length; WSK_FLAG_WAITALL waits for all of it);
/// success with 0 bytes is the peer's graceful close.
pub(super) unsafe extern "win64" fn wsk_receive(
    socket: *mut WSK_SOCKET,
    buf: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskReceive", DISPATCH);
    let state = with_socket("WskReceive", socket, |sock| data_state(sock, false));
    if let Err(s) = take_irp(irp) {
        return s;
    }
    if flags & !WSK_FLAG_WAITALL != 0 {
        return respond(irp, STATUS_NOT_SUPPORTED, 0);
    }
    if let Some(status) = state {
        return respond(irp, status, 0);
    }
    // SAFETY: the driver's WSK_BUF and MDLs.
    let (segments, length) = match unsafe { segments(buf) } {
        Ok(v) => v,
        Err(status) => return respond(irp, status, 0),
    };
    if length == 0 {
        return respond(irp, STATUS_SUCCESS, 0);
    }
    let wait_all = flags & WSK_FLAG_WAITALL != 0;
    queue_and_progress("WskReceive", socket, irp, |s| {
        s.receives.push_back(ReceiveOp {
            irp: irp as usize,
            segments,
            length,
            filled: 0,
            wait_all,
        })
    })
}

/// Resets a connection: linger 0, close (RST); pending data calls fail with CONNECTION_ABORTED.
pub(super) fn reset(sock: &mut Socket, out: &mut Vec<Done>) {
    deregister_io(&mut sock.io);
    if let Io::Stream(stream) | Io::Connecting(stream) = &sock.io {
        let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
    }
    sock.io = Io::Dead;
    sock.aborted = true;
    let mut pending: Vec<usize> = sock.receives.drain(..).map(|o| o.irp).collect();
    pending.extend(sock.sends.drain(..).map(|o| o.irp).filter(|&i| i != 0));
    pending.extend(sock.disconnect.take());
    for irp in pending {
        if claim(irp) {
            out.push(done(irp, STATUS_CONNECTION_ABORTED, 0));
        }
    }
}

/// WskDisconnect: graceful (optional final buffer, then FIN once queued sends are out) or
/// abortive (WSK_FLAG_ABORTIVE: RST at once).
pub(super) unsafe extern "win64" fn wsk_disconnect(
    socket: *mut WSK_SOCKET,
    buf: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskDisconnect", DISPATCH);
    let state = with_socket("WskDisconnect", socket, |sock| data_state(sock, true));
    if let Err(s) = take_irp(irp) {
        return s;
    }
    if flags & !WSK_FLAG_ABORTIVE != 0 {
        return respond(irp, STATUS_NOT_SUPPORTED, 0);
    }
    if let Some(status) = state {
        return respond(irp, status, 0);
    }
    if flags & WSK_FLAG_ABORTIVE != 0 {
        if !buf.is_null() {
            return respond(irp, STATUS_INVALID_PARAMETER, 0);
        }
        let mut out = Vec::new();
        let flow = with_socket("WskDisconnect", socket, |sock| {
            reset(sock, &mut out);
            sock.token
        });
        finish(out, Origin::Call(flow));
        return respond(irp, STATUS_SUCCESS, 0);
    }
    let (final_segments, final_length) = if buf.is_null() {
        (Vec::new(), 0)
    } else {
        // SAFETY: the driver's WSK_BUF and MDLs.
        match unsafe { segments(buf) } {
            Ok(v) => v,
            Err(status) => return respond(irp, status, 0),
        }
    };
    queue_and_progress("WskDisconnect", socket, irp, |s| {
        if final_length > 0 {
            s.sends.push_back(SendOp {
                irp: 0,
                segments: final_segments,
                length: final_length,
                written: 0,
            });
        }
        s.disconnect = Some(irp as usize);
    })
}

/// WskRelease: only for data indicated through receive events, which kemu does not offer.
pub(super) unsafe extern "win64" fn wsk_release(
    socket: *mut WSK_SOCKET,
    _list: *mut WSK_DATA_INDICATION,
) -> NTSTATUS {
    thread::require_at_most("WskRelease", DISPATCH);
    with_socket("WskRelease", socket, |_| ());
    STATUS_NOT_SUPPORTED
}

/// WskCloseSocket: cancels pending IRPs, resets a connection unless both directions are shut,
/// frees the socket.
pub(super) unsafe extern "win64" fn wsk_close_socket(
    socket: *mut WSK_SOCKET,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskCloseSocket", DISPATCH);
    with_socket("WskCloseSocket", socket, |_| ());
    if let Err(s) = take_irp(irp) {
        return s;
    }
    let kernel = thread::kernel();
    let removed = {
        let mut state = kernel.netio.lock();
        let removed = state.sockets.remove(&(socket as usize));
        if let Some(cell) = &removed {
            let token = lock_socket(cell).token;
            state.tokens.remove(&token);
        }
        removed
    };
    let Some(cell) = removed else {
        lookup_violation("WskCloseSocket", socket)
    };
    let mut out = Vec::new();
    let (registration, category, flow) = {
        // A thread that found the socket before it left the map may hold its lock: it
        // finishes first, then finds the socket closed.
        let mut sock = lock_socket(&cell);
        let (pending, io) = sock.shut();
        for irp in pending {
            if claim(irp) {
                out.push(done(irp, STATUS_CANCELLED, 0));
            }
        }
        if let Io::Stream(stream) | Io::Connecting(stream) = &io {
            if !(sock.fin_sent && sock.fin_received) {
                let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
            }
        }
        drop(io);
        (sock.registration, sock.category, sock.token)
    };
    {
        let mut state = kernel.netio.lock();
        if let Some(r) = state.registrations.get_mut(&registration) {
            r.sockets -= 1;
        }
        retire(&mut state, socket as usize, category);
    }
    finish(out, Origin::Call(flow));
    respond(irp, STATUS_SUCCESS, 0)
}
