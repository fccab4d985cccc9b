//! Listen and connection sockets: the provider dispatch tables and every socket call.
//!
//! Each call validates its socket and IRP, then either answers at once ([`super::respond`]:
//! inline or deferred completion) or queues an operation that the poller (or the next call on
//! the socket) moves forward. Queued operations carry a cancel routine: IoCancelIrp completes
//! them with STATUS_CANCELLED. Whoever clears the cancel routine owns the IRP's completion.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use ksys::io::{IRP, MDL, MDL_MAPPED_TO_SYSTEM_VA, MDL_SOURCE_IS_NONPAGED_POOL};
use ksys::ntdef::*;
use ksys::wsk::*;
use mio::{Interest, Token};
use socket2::{Domain, Protocol, Type};

use super::{
    addr, check_client, complete_at_dispatch, mark_pending, respond, take_irp, wsk_violation,
};
use crate::bugcheck::{bugcheck, codes, verifier};
use crate::leaks::Site;
use crate::thread::{self, DISPATCH};

/// Bytes of the WSK_SOCKET kemu hands out (the Dispatch pointer; the rest is kemu's).
const SOCKET_BLOCK: usize = 16;
/// Listen backlog.
const BACKLOG: i32 = 1024;

/// A dispatch table holding pointer-typed unused members, shareable as a static.
pub(crate) struct Table<T>(pub T);
// SAFETY: the tables are immutable and only hold function pointers and NULLs.
unsafe impl<T> Sync for Table<T> {}

pub(crate) static PROVIDER_DISPATCH: WSK_PROVIDER_DISPATCH = WSK_PROVIDER_DISPATCH {
    Version: super::WSK_VERSION,
    Reserved: 0,
    WskSocket: Some(wsk_socket),
    WskSocketConnect: Some(wsk_socket_connect),
    WskControlClient: Some(super::wsk_control_client),
    WskGetAddressInfo: Some(super::wsk_get_address_info),
    WskFreeAddressInfo: Some(super::wsk_free_address_info),
    WskGetNameInfo: Some(wsk_get_name_info),
};

static LISTEN_DISPATCH: Table<WSK_PROVIDER_LISTEN_DISPATCH> = Table(WSK_PROVIDER_LISTEN_DISPATCH {
    Basic: WSK_PROVIDER_BASIC_DISPATCH {
        WskControlSocket: Some(wsk_control_socket),
        WskCloseSocket: Some(wsk_close_socket),
    },
    WskBind: Some(wsk_bind),
    WskAccept: Some(wsk_accept),
    WskInspectComplete: Some(wsk_inspect_complete),
    WskGetLocalAddress: Some(wsk_get_local_address),
});

static CONNECTION_DISPATCH: Table<WSK_PROVIDER_CONNECTION_DISPATCH> =
    Table(WSK_PROVIDER_CONNECTION_DISPATCH {
        Basic: WSK_PROVIDER_BASIC_DISPATCH {
            WskControlSocket: Some(wsk_control_socket),
            WskCloseSocket: Some(wsk_close_socket),
        },
        WskBind: Some(wsk_bind),
        WskConnect: Some(wsk_connect),
        WskGetLocalAddress: Some(wsk_get_local_address),
        WskGetRemoteAddress: Some(wsk_get_remote_address),
        WskSend: Some(wsk_send),
        WskReceive: Some(wsk_receive),
        WskDisconnect: Some(wsk_disconnect),
        WskRelease: Some(wsk_release),
        WskConnectEx: std::ptr::null(),
        WskSendEx: std::ptr::null(),
        WskReceiveEx: std::ptr::null(),
    });

fn dead(routine: &str, socket: *mut WSK_SOCKET) -> ! {
    wsk_violation(
        format!(
            "{routine} on socket {:#x} after WskCloseSocket",
            socket as usize
        ),
        socket as usize,
    )
}

unsafe extern "win64" fn dead_control(
    s: *mut WSK_SOCKET,
    _t: i32,
    _c: u32,
    _l: u32,
    _il: usize,
    _ib: *mut c_void,
    _ol: usize,
    _ob: *mut c_void,
    _or: *mut usize,
    _irp: *mut IRP,
) -> NTSTATUS {
    dead("WskControlSocket", s)
}
unsafe extern "win64" fn dead_close(s: *mut WSK_SOCKET, _irp: *mut IRP) -> NTSTATUS {
    dead("WskCloseSocket", s)
}
unsafe extern "win64" fn dead_bind(
    s: *mut WSK_SOCKET,
    _a: *mut SOCKADDR,
    _f: u32,
    _irp: *mut IRP,
) -> NTSTATUS {
    dead("WskBind/WskConnect", s)
}
unsafe extern "win64" fn dead_accept(
    s: *mut WSK_SOCKET,
    _f: u32,
    _c: *mut c_void,
    _d: *const WSK_CLIENT_CONNECTION_DISPATCH,
    _l: *mut SOCKADDR,
    _r: *mut SOCKADDR,
    _irp: *mut IRP,
) -> NTSTATUS {
    dead("WskAccept", s)
}
unsafe extern "win64" fn dead_inspect(
    s: *mut WSK_SOCKET,
    _i: *mut c_void,
    _a: i32,
    _irp: *mut IRP,
) -> NTSTATUS {
    dead("WskInspectComplete", s)
}
unsafe extern "win64" fn dead_address(
    s: *mut WSK_SOCKET,
    _a: *mut SOCKADDR,
    _irp: *mut IRP,
) -> NTSTATUS {
    dead("WskGetLocalAddress/WskGetRemoteAddress", s)
}
unsafe extern "win64" fn dead_data(
    s: *mut WSK_SOCKET,
    _b: *mut WSK_BUF,
    _f: u32,
    _irp: *mut IRP,
) -> NTSTATUS {
    dead("WskSend/WskReceive/WskDisconnect", s)
}
unsafe extern "win64" fn dead_release(
    s: *mut WSK_SOCKET,
    _l: *mut WSK_DATA_INDICATION,
) -> NTSTATUS {
    dead("WskRelease", s)
}

/// What a closed socket's Dispatch points to while kemu keeps its memory in quarantine: every
/// member stops the kernel naming the call made after WskCloseSocket.
static DEAD_LISTEN_DISPATCH: Table<WSK_PROVIDER_LISTEN_DISPATCH> =
    Table(WSK_PROVIDER_LISTEN_DISPATCH {
        Basic: WSK_PROVIDER_BASIC_DISPATCH {
            WskControlSocket: Some(dead_control),
            WskCloseSocket: Some(dead_close),
        },
        WskBind: Some(dead_bind),
        WskAccept: Some(dead_accept),
        WskInspectComplete: Some(dead_inspect),
        WskGetLocalAddress: Some(dead_address),
    });

static DEAD_CONNECTION_DISPATCH: Table<WSK_PROVIDER_CONNECTION_DISPATCH> =
    Table(WSK_PROVIDER_CONNECTION_DISPATCH {
        Basic: WSK_PROVIDER_BASIC_DISPATCH {
            WskControlSocket: Some(dead_control),
            WskCloseSocket: Some(dead_close),
        },
        WskBind: Some(dead_bind),
        WskConnect: Some(dead_bind),
        WskGetLocalAddress: Some(dead_address),
        WskGetRemoteAddress: Some(dead_address),
        WskSend: Some(dead_data),
        WskReceive: Some(dead_data),
        WskDisconnect: Some(dead_data),
        WskRelease: Some(dead_release),
        WskConnectEx: std::ptr::null(),
        WskSendEx: std::ptr::null(),
        WskReceiveEx: std::ptr::null(),
    });

/// Closed sockets kept allocated (with a dead dispatch) so late calls are caught, not crashes.
const QUARANTINE: usize = 4096;

/// Retires a closed socket's memory: dead dispatch now, freed after QUARANTINE more closes.
fn retire(state: &mut super::NetState, socket: usize, category: Category) {
    let dead: *const c_void = match category {
        Category::Listen => &DEAD_LISTEN_DISPATCH.0 as *const _ as *const c_void,
        Category::Connection => &DEAD_CONNECTION_DISPATCH.0 as *const _ as *const c_void,
    };
    // SAFETY: kemu's own socket block, still allocated.
    unsafe { (*(socket as *mut WSK_SOCKET)).Dispatch = dead };
    state.quarantine.push_back(socket);
    while state.quarantine.len() > QUARANTINE {
        if let Some(old) = state.quarantine.pop_front() {
            crate::io::free(old as *mut u8, SOCKET_BLOCK);
        }
    }
}

/// Frees every quarantined socket block (kernel shutdown).
pub(crate) fn free_quarantine(state: &mut super::NetState) {
    for s in state.quarantine.drain(..) {
        crate::io::free(s as *mut u8, SOCKET_BLOCK);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Category {
    Listen,
    Connection,
}

pub(crate) enum Io {
    Fresh(socket2::Socket),
    Bound(socket2::Socket),
    Listener(mio::net::TcpListener),
    Connecting(mio::net::TcpStream),
    Stream(mio::net::TcpStream),
    /// Reset (abortive disconnect) or failed: no OS socket any more.
    Dead,
}

struct AcceptOp {
    irp: usize,
    local_out: usize,
    remote_out: usize,
}

#[derive(Clone, Copy)]
struct Segment {
    address: usize,
    length: usize,
}

struct ReceiveOp {
    irp: usize,
    segments: Vec<Segment>,
    length: usize,
    filled: usize,
    wait_all: bool,
}

struct SendOp {
    /// 0 for a graceful disconnect's final buffer.
    irp: usize,
    /// The driver's buffer, read in place (it must stay valid until completion).
    segments: Vec<Segment>,
    length: usize,
    written: usize,
}

impl SendOp {
    /// The bytes still to write, as I/O slices over the driver's memory.
    fn remaining(&self) -> Vec<std::io::IoSlice<'_>> {
        let mut skip = self.written;
        let mut out = Vec::with_capacity(self.segments.len());
        for seg in &self.segments {
            if skip >= seg.length {
                skip -= seg.length;
                continue;
            }
            // SAFETY: the segment lies in memory a live MDL describes; the driver keeps it
            // until this send completes.
            let bytes = unsafe {
                std::slice::from_raw_parts((seg.address + skip) as *const u8, seg.length - skip)
            };
            out.push(std::io::IoSlice::new(bytes));
            skip = 0;
        }
        out
    }
}

struct ConnectOp {
    irp: usize,
    /// WskSocketConnect reports the socket in Information and closes it on failure.
    socket_connect: bool,
}

pub(crate) struct Socket {
    pub category: Category,
    pub family: u16,
    pub registration: usize,
    pub token: usize,
    pub io: Io,
    accepts: VecDeque<AcceptOp>,
    receives: VecDeque<ReceiveOp>,
    sends: VecDeque<SendOp>,
    connect: Option<ConnectOp>,
    disconnect: Option<usize>,
    fin_sent: bool,
    fin_received: bool,
    aborted: bool,
    v6only: Option<bool>,
    pub site: Site,
}

impl Socket {
    /// One line for leak reports.
    pub fn describe(&self) -> String {
        let state = match &self.io {
            Io::Fresh(_) => "unbound",
            Io::Bound(_) => "bound",
            Io::Listener(_) => "listening",
            Io::Connecting(_) => "connecting",
            Io::Stream(_) => "connected",
            Io::Dead => "reset",
        };
        format!("{:?} socket ({state}), never closed", self.category)
    }

    /// One line for diagnostics about a socket still open: its state and what is pending.
    pub fn describe_open(&self) -> String {
        format!(
            "{:?} socket {} [accepts {}, receives {}, sends {}, connect {}, disconnect {}, fin sent {}, fin received {}]",
            self.category,
            match &self.io {
                Io::Fresh(_) => "unbound",
                Io::Bound(_) => "bound",
                Io::Listener(_) => "listening",
                Io::Connecting(_) => "connecting",
                Io::Stream(_) => "connected",
                Io::Dead => "reset",
            },
            self.accepts.len(),
            self.receives.len(),
            self.sends.len(),
            self.connect.is_some(),
            self.disconnect.is_some(),
            self.fin_sent,
            self.fin_received
        )
    }

    fn pending_irps(&self) -> Vec<usize> {
        let mut irps: Vec<usize> = self.accepts.iter().map(|o| o.irp).collect();
        irps.extend(self.receives.iter().map(|o| o.irp));
        irps.extend(self.sends.iter().map(|o| o.irp).filter(|&i| i != 0));
        irps.extend(self.connect.as_ref().map(|c| c.irp));
        irps.extend(self.disconnect);
        irps
    }

    fn remove_op(&mut self, irp: usize) -> bool {
        let before = self.accepts.len() + self.receives.len() + self.sends.len();
        self.accepts.retain(|o| o.irp != irp);
        self.receives.retain(|o| o.irp != irp);
        self.sends.retain(|o| o.irp != irp);
        let mut removed = before != self.accepts.len() + self.receives.len() + self.sends.len();
        if self.connect.as_ref().is_some_and(|c| c.irp == irp) {
            self.connect = None;
            removed = true;
        }
        if self.disconnect == Some(irp) {
            self.disconnect = None;
            removed = true;
        }
        removed
    }
}

/// A completion decided under the provider lock, run after it is released.
pub(crate) struct Done {
    /// 0: nothing to complete (only a socket to drop).
    irp: usize,
    status: NTSTATUS,
    information: usize,
    /// A socket WskSocketConnect created that its caller will never own (the connect failed
    /// or was cancelled): freed before the completion runs.
    drop_socket: usize,
}

fn done(irp: usize, status: NTSTATUS, information: usize) -> Done {
    Done {
        irp,
        status,
        information,
        drop_socket: 0,
    }
}

/// Maps a host socket error to the NTSTATUS Windows reports.
fn status_of(e: &std::io::Error) -> NTSTATUS {
    match e.kind() {
        ErrorKind::ConnectionRefused => STATUS_CONNECTION_REFUSED,
        ErrorKind::ConnectionReset => STATUS_CONNECTION_RESET,
        ErrorKind::ConnectionAborted => STATUS_CONNECTION_ABORTED,
        ErrorKind::NotConnected => STATUS_CONNECTION_DISCONNECTED,
        ErrorKind::AddrInUse => STATUS_ADDRESS_ALREADY_EXISTS,
        // The host refused the bind (a port below 1024 without privilege on Linux); Windows
        // refuses a reserved or exclusively held address the same way.
        ErrorKind::PermissionDenied => STATUS_ACCESS_DENIED,
        ErrorKind::AddrNotAvailable => STATUS_INVALID_ADDRESS,
        ErrorKind::TimedOut => STATUS_IO_TIMEOUT,
        ErrorKind::BrokenPipe => STATUS_CONNECTION_RESET,
        ErrorKind::NetworkUnreachable => STATUS_NETWORK_UNREACHABLE,
        ErrorKind::HostUnreachable => STATUS_HOST_UNREACHABLE,
        _ => match e.raw_os_error() {
            Some(101) => STATUS_NETWORK_UNREACHABLE,
            Some(113) => STATUS_HOST_UNREACHABLE,
            _ => STATUS_UNSUCCESSFUL,
        },
    }
}

/// Resolves a WSK_BUF into the memory segments it names (checking every MDL is live).
///
/// # Safety
/// `buf` must be NULL or point to the driver's WSK_BUF whose MDLs describe resident memory.
unsafe fn segments(buf: *const WSK_BUF) -> Result<(Vec<Segment>, usize), NTSTATUS> {
    if buf.is_null() {
        return Err(STATUS_INVALID_PARAMETER);
    }
    // SAFETY: per the contract.
    let buf = unsafe { *buf };
    if buf.Length == 0 {
        return Ok((Vec::new(), 0));
    }
    let kernel = thread::kernel();
    let mut mdl = buf.Mdl;
    let mut skip = buf.Offset as usize;
    let mut remaining = buf.Length;
    let mut out = Vec::new();
    let mut first = true;
    while remaining > 0 {
        if mdl.is_null() {
            return Err(STATUS_INVALID_PARAMETER);
        }
        if !kernel.mdls.is_live(mdl) {
            bugcheck(
                codes::DRIVER_VERIFIER_IOMANAGER_VIOLATION,
                [verifier::MDL_NOT_LIVE, mdl as usize, 0, 0],
                format!(
                    "WSK_BUF names MDL {:#x}, which is not allocated",
                    mdl as usize
                ),
            );
        }
        // SAFETY: a live MDL kemu allocated.
        let (va, count, next) = unsafe {
            let m: &MDL = &*mdl;
            let va = if m.MdlFlags & (MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL) != 0 {
                m.MappedSystemVa as usize
            } else {
                m.StartVa as usize + m.ByteOffset as usize
            };
            (va, m.ByteCount as usize, m.Next)
        };
        if first && skip >= count {
            return Err(STATUS_INVALID_PARAMETER);
        }
        first = false;
        let take = (count - skip).min(remaining);
        out.push(Segment {
            address: va + skip,
            length: take,
        });
        remaining -= take;
        skip = 0;
        mdl = next;
    }
    Ok((out, buf.Length))
}

fn scatter(segments: &[Segment], mut offset: usize, mut data: &[u8]) {
    for s in segments {
        if data.is_empty() {
            break;
        }
        if offset >= s.length {
            offset -= s.length;
            continue;
        }
        let n = (s.length - offset).min(data.len());
        // SAFETY: as in `gather`; the driver's receive buffer is writable.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), (s.address + offset) as *mut u8, n) };
        data = &data[n..];
        offset = 0;
    }
}

/// Runs completions decided under the lock: from a driver call (placement per fault plan) or
/// from the poller (at DISPATCH_LEVEL on the poller thread).
fn finish(completions: Vec<Done>, from_call: bool) {
    for c in completions {
        if c.drop_socket != 0 {
            drop_socket(c.drop_socket);
        }
        if c.irp == 0 {
            continue;
        }
        let irp = c.irp as *mut IRP;
        if from_call {
            let kernel = thread::kernel();
            let placement = kernel.faults.place(true, true);
            if placement.inline {
                let level = if placement.dispatch {
                    DISPATCH
                } else {
                    thread::irql()
                };
                thread::at_irql(level, || super::complete_now(irp, c.status, c.information));
            } else {
                let (status, info) = (c.status, c.information);
                kernel
                    .dpc
                    .submit(move || complete_at_dispatch(c.irp as *mut IRP, status, info));
            }
        } else {
            complete_at_dispatch(irp, c.status, c.information);
        }
    }
}

fn lookup_violation(routine: &str, socket: *mut WSK_SOCKET) -> ! {
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
fn arm(socket: usize, irp: usize) -> bool {
    mark_pending(irp as *mut IRP);
    rearm(socket, irp)
}

fn rearm(socket: usize, irp: usize) -> bool {
    thread::kernel().irps.set_cancel(
        irp as *mut IRP,
        Box::new(move |irp| cancel_pending(socket, irp as usize)),
    )
}

/// Cancel routine of a queued WSK IRP (runs at DISPATCH_LEVEL inside IoCancelIrp).
fn cancel_pending(socket: usize, irp: usize) {
    let kernel = thread::kernel();
    let orphaned = match kernel.netio.lock().sockets.get_mut(&socket) {
        Some(s) => {
            let socket_connect = s
                .connect
                .as_ref()
                .is_some_and(|c| c.irp == irp && c.socket_connect);
            s.remove_op(irp);
            socket_connect
        }
        None => false,
    };
    // A cancelled WskSocketConnect never hands its socket to the caller: free it.
    if orphaned {
        drop_socket(socket);
    }
    super::complete_now(irp as *mut IRP, STATUS_CANCELLED, 0);
}

/// Claims a queued IRP for completion; false if its cancel routine has it.
fn claim(irp: usize) -> bool {
    irp == 0 || thread::kernel().irps.clear_cancel(irp as *mut IRP)
}

/// Moves every queued operation of `socket` forward as far as the OS socket allows.
fn progress(state: &mut super::NetState, socket: usize, out: &mut Vec<Done>) {
    let kernel = thread::kernel();
    let registry = kernel.netio.poller.registry();
    let Some(s) = state.sockets.get_mut(&socket) else {
        return;
    };
    let mut accepted: Vec<(mio::net::TcpStream, SocketAddr, usize, usize, usize)> = Vec::new();
    match &mut s.io {
        Io::Listener(listener) => {
            while let Some(op) = s.accepts.pop_front() {
                if !claim(op.irp) {
                    continue;
                }
                match listener.accept() {
                    Ok((stream, peer)) => {
                        accepted.push((stream, peer, op.irp, op.local_out, op.remote_out))
                    }
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
            let mut buffer = vec![0u8; op.length - op.filled];
            match stream.read(&mut buffer) {
                Ok(0) => {
                    s.fin_received = true;
                    out.push(done(op.irp, STATUS_SUCCESS, op.filled));
                }
                Ok(n) => {
                    scatter(&op.segments, op.filled, &buffer[..n]);
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
    let (family, registration) = (s.family, s.registration);
    for (mut stream, peer, irp, local_out, remote_out) in accepted {
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
        let kernel = thread::kernel();
        state.sockets.insert(
            block as usize,
            Socket::new(
                Category::Connection,
                family,
                registration,
                token,
                Io::Stream(stream),
                Site::here(kernel.next_sequence()),
            ),
        );
        state.tokens.insert(token, block as usize);
        if let Some(r) = state.registrations.get_mut(&registration) {
            r.sockets += 1;
        }
        out.push(done(irp, STATUS_SUCCESS, block as usize));
    }
}

impl Socket {
    fn new(
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
            aborted: false,
            v6only: None,
            site,
        }
    }
}

/// The poller saw `token` ready.
pub(crate) fn on_ready(token: usize) {
    let kernel = thread::kernel();
    let mut out = Vec::new();
    {
        let mut state = kernel.netio.lock();
        if let Some(&socket) = state.tokens.get(&token) {
            progress(&mut state, socket, &mut out);
        }
    }
    finish(out, false);
}

/// Looks up an open socket, runs `f` under the provider lock, then completes what it decided.
fn with_socket<R>(
    routine: &str,
    socket: *mut WSK_SOCKET,
    f: impl FnOnce(&mut super::NetState, usize) -> R,
) -> R {
    let kernel = thread::kernel();
    let mut state = kernel.netio.lock();
    if !state.sockets.contains_key(&(socket as usize)) {
        drop(state);
        lookup_violation(routine, socket);
    }
    f(&mut state, socket as usize)
}

/// Queues an operation (already pushed by `push`) and runs the socket forward.
fn queue_and_progress(
    routine: &str,
    socket: *mut WSK_SOCKET,
    irp: *mut IRP,
    push: impl FnOnce(&mut Socket),
) -> NTSTATUS {
    let mut out = Vec::new();
    let armed = with_socket(routine, socket, |state, s| {
        if !arm(s, irp as usize) {
            return false;
        }
        if let Some(sock) = state.sockets.get_mut(&s) {
            push(sock);
        }
        progress(state, s, &mut out);
        true
    });
    if !armed {
        out.push(done(irp as usize, STATUS_CANCELLED, 0));
    }
    finish(out, true);
    STATUS_PENDING
}

fn domain_of(family: u16) -> Option<Domain> {
    match u32::from(family) {
        AF_INET => Some(Domain::IPV4),
        AF_INET6 => Some(Domain::IPV6),
        _ => None,
    }
}

/// Creates the OS socket and the WSK_SOCKET; Err is the status to complete with.
fn create(registration: usize, family: u16, category: Category) -> Result<usize, NTSTATUS> {
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
        Socket::new(
            category,
            family,
            registration,
            token,
            Io::Fresh(os),
            Site::here(kernel.next_sequence()),
        ),
    );
    state.tokens.insert(token, block as usize);
    if let Some(r) = state.registrations.get_mut(&registration) {
        r.sockets += 1;
    }
    Ok(block as usize)
}

/// WskSocket: listen and connection sockets over TCP; other kinds are STATUS_NOT_SUPPORTED.
unsafe extern "win64" fn wsk_socket(
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
unsafe extern "win64" fn wsk_socket_connect(
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
    let started = with_socket("WskSocketConnect", socket as *mut WSK_SOCKET, |state, s| {
        let sock = state.sockets.get_mut(&s).expect("just created");
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
unsafe extern "win64" fn wsk_get_name_info(
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

fn bind_os(sock: &mut Socket, local: SocketAddr) -> Result<(), NTSTATUS> {
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

fn start_connect(sock: &mut Socket, remote: SocketAddr) -> Result<(), NTSTATUS> {
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
fn drop_socket(socket: usize) {
    let kernel = thread::kernel();
    let removed = {
        let mut state = kernel.netio.lock();
        let removed = state.sockets.remove(&socket);
        if let Some(s) = &removed {
            state.tokens.remove(&s.token);
            if let Some(r) = state.registrations.get_mut(&s.registration) {
                r.sockets -= 1;
            }
        }
        removed
    };
    if let Some(mut s) = removed {
        deregister_io(&mut s.io);
        crate::io::free(socket as *mut u8, SOCKET_BLOCK);
    }
}

fn deregister_io(io: &mut Io) {
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
unsafe extern "win64" fn wsk_bind(
    socket: *mut WSK_SOCKET,
    local: *mut SOCKADDR,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskBind", DISPATCH);
    with_socket("WskBind", socket, |_, _| ());
    if let Err(s) = take_irp(irp) {
        return s;
    }
    // SAFETY: the driver's address (or NULL).
    let Some(local) = (unsafe { addr::read(local) }).filter(|_| flags == 0) else {
        return respond(irp, STATUS_INVALID_PARAMETER, 0);
    };
    let result = with_socket("WskBind", socket, |state, s| {
        bind_os(state.sockets.get_mut(&s).expect("checked"), local)
    });
    respond(irp, result.err().unwrap_or(STATUS_SUCCESS), 0)
}

/// WskConnect (the socket must be bound).
unsafe extern "win64" fn wsk_connect(
    socket: *mut WSK_SOCKET,
    remote: *mut SOCKADDR,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskConnect", DISPATCH);
    with_socket("WskConnect", socket, |_, _| ());
    if let Err(s) = take_irp(irp) {
        return s;
    }
    // SAFETY: the driver's address (or NULL).
    let Some(remote) = (unsafe { addr::read(remote) }).filter(|_| flags == 0) else {
        return respond(irp, STATUS_INVALID_PARAMETER, 0);
    };
    let started = with_socket("WskConnect", socket, |state, s| {
        start_connect(state.sockets.get_mut(&s).expect("checked"), remote)
    });
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
unsafe extern "win64" fn wsk_accept(
    socket: *mut WSK_SOCKET,
    flags: u32,
    _context: *mut c_void,
    _dispatch: *const WSK_CLIENT_CONNECTION_DISPATCH,
    local: *mut SOCKADDR,
    remote: *mut SOCKADDR,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskAccept", DISPATCH);
    let listening = with_socket("WskAccept", socket, |state, s| {
        matches!(state.sockets[&s].io, Io::Listener(_))
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
unsafe extern "win64" fn wsk_inspect_complete(
    socket: *mut WSK_SOCKET,
    _id: *mut c_void,
    _action: i32,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskInspectComplete", DISPATCH);
    with_socket("WskInspectComplete", socket, |_, _| ());
    if let Err(s) = take_irp(irp) {
        return s;
    }
    respond(irp, STATUS_NOT_SUPPORTED, 0)
}

fn get_address(
    routine: &str,
    socket: *mut WSK_SOCKET,
    out: *mut SOCKADDR,
    irp: *mut IRP,
    remote: bool,
) -> NTSTATUS {
    thread::require_at_most(routine, DISPATCH);
    with_socket(routine, socket, |_, _| ());
    if let Err(s) = take_irp(irp) {
        return s;
    }
    if out.is_null() {
        return respond(irp, STATUS_INVALID_PARAMETER, 0);
    }
    let found = with_socket(routine, socket, |state, s| {
        let sock = &state.sockets[&s];
        match (&sock.io, remote) {
            (Io::Bound(os), false) => os.local_addr().ok().and_then(|a| a.as_socket()),
            (Io::Listener(l), false) => l.local_addr().ok(),
            (Io::Connecting(st) | Io::Stream(st), false) => st.local_addr().ok(),
            (Io::Stream(st), true) => st.peer_addr().ok(),
            _ => None,
        }
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
unsafe extern "win64" fn wsk_get_local_address(
    socket: *mut WSK_SOCKET,
    out: *mut SOCKADDR,
    irp: *mut IRP,
) -> NTSTATUS {
    get_address("WskGetLocalAddress", socket, out, irp, false)
}

/// WskGetRemoteAddress.
unsafe extern "win64" fn wsk_get_remote_address(
    socket: *mut WSK_SOCKET,
    out: *mut SOCKADDR,
    irp: *mut IRP,
) -> NTSTATUS {
    get_address("WskGetRemoteAddress", socket, out, irp, true)
}

/// Why a data call cannot run on this socket now, if it cannot.
fn data_state(sock: &Socket, sending: bool) -> Option<NTSTATUS> {
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
unsafe extern "win64" fn wsk_send(
    socket: *mut WSK_SOCKET,
    buf: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskSend", DISPATCH);
    let state = with_socket("WskSend", socket, |state, s| {
        data_state(&state.sockets[&s], true)
    });
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
unsafe extern "win64" fn wsk_receive(
    socket: *mut WSK_SOCKET,
    buf: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskReceive", DISPATCH);
    let state = with_socket("WskReceive", socket, |state, s| {
        data_state(&state.sockets[&s], false)
    });
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
fn reset(sock: &mut Socket, out: &mut Vec<Done>) {
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
unsafe extern "win64" fn wsk_disconnect(
    socket: *mut WSK_SOCKET,
    buf: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskDisconnect", DISPATCH);
    let state = with_socket("WskDisconnect", socket, |state, s| {
        data_state(&state.sockets[&s], true)
    });
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
        with_socket("WskDisconnect", socket, |state, s| {
            reset(state.sockets.get_mut(&s).expect("checked"), &mut out)
        });
        finish(out, true);
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
unsafe extern "win64" fn wsk_release(
    socket: *mut WSK_SOCKET,
    _list: *mut WSK_DATA_INDICATION,
) -> NTSTATUS {
    thread::require_at_most("WskRelease", DISPATCH);
    with_socket("WskRelease", socket, |_, _| ());
    STATUS_NOT_SUPPORTED
}

fn read_u32(buf: *mut c_void, len: usize) -> Option<u32> {
    if buf.is_null() || len < 4 {
        return None;
    }
    // SAFETY: the driver's input buffer holds at least 4 bytes.
    Some(unsafe { std::ptr::read_unaligned(buf as *const u32) })
}

/// WskControlSocket: SO_KEEPALIVE, TCP_NODELAY and IPV6_V6ONLY (set and get); event callbacks
/// (SO_WSK_EVENT_CALLBACK) and ioctls are STATUS_NOT_SUPPORTED.
unsafe extern "win64" fn wsk_control_socket(
    socket: *mut WSK_SOCKET,
    request_type: i32,
    code: u32,
    level: u32,
    in_len: usize,
    in_buf: *mut c_void,
    out_len: usize,
    out_buf: *mut c_void,
    out_returned: *mut usize,
    irp: *mut IRP,
) -> NTSTATUS {
    thread::require_at_most("WskControlSocket", DISPATCH);
    with_socket("WskControlSocket", socket, |_, _| ());
    if !irp.is_null() {
        if let Err(s) = take_irp(irp) {
            return s;
        }
    }
    let value = read_u32(in_buf, in_len);
    let result: Result<Option<u32>, NTSTATUS> =
        with_socket("WskControlSocket", socket, |state, s| {
            let sock = state.sockets.get_mut(&s).expect("checked");
            let os: Option<socket2::SockRef<'_>> = match &sock.io {
                Io::Fresh(o) | Io::Bound(o) => Some(socket2::SockRef::from(o)),
                Io::Listener(l) => Some(socket2::SockRef::from(l)),
                Io::Connecting(st) | Io::Stream(st) => Some(socket2::SockRef::from(st)),
                Io::Dead => None,
            };
            match (request_type, level, code) {
                (_, SOL_SOCKET, SO_WSK_EVENT_CALLBACK) => Err(STATUS_NOT_SUPPORTED),
                (ksys::wsk::WSK_SET_OPTION, SOL_SOCKET, SO_KEEPALIVE) => {
                    let v = value.ok_or(STATUS_INVALID_PARAMETER)?;
                    os.ok_or(STATUS_INVALID_DEVICE_STATE)?
                        .set_keepalive(v != 0)
                        .map_err(|e| status_of(&e))?;
                    Ok(None)
                }
                (ksys::wsk::WSK_GET_OPTION, SOL_SOCKET, SO_KEEPALIVE) => Ok(Some(u32::from(
                    os.ok_or(STATUS_INVALID_DEVICE_STATE)?
                        .keepalive()
                        .map_err(|e| status_of(&e))?,
                ))),
                (ksys::wsk::WSK_SET_OPTION, IPPROTO_TCP, TCP_NODELAY) => {
                    let v = value.ok_or(STATUS_INVALID_PARAMETER)?;
                    os.ok_or(STATUS_INVALID_DEVICE_STATE)?
                        .set_nodelay(v != 0)
                        .map_err(|e| status_of(&e))?;
                    Ok(None)
                }
                (ksys::wsk::WSK_GET_OPTION, IPPROTO_TCP, TCP_NODELAY) => Ok(Some(u32::from(
                    os.ok_or(STATUS_INVALID_DEVICE_STATE)?
                        .nodelay()
                        .map_err(|e| status_of(&e))?,
                ))),
                (ksys::wsk::WSK_SET_OPTION, IPPROTO_IPV6, IPV6_V6ONLY) => {
                    let v = value.ok_or(STATUS_INVALID_PARAMETER)?;
                    if u32::from(sock.family) != AF_INET6 || !matches!(sock.io, Io::Fresh(_)) {
                        return Err(STATUS_INVALID_DEVICE_STATE);
                    }
                    sock.v6only = Some(v != 0);
                    Ok(None)
                }
                (ksys::wsk::WSK_GET_OPTION, IPPROTO_IPV6, IPV6_V6ONLY) => {
                    Ok(Some(u32::from(sock.v6only.unwrap_or(true))))
                }
                _ => Err(STATUS_NOT_SUPPORTED),
            }
        });
    let status = match result {
        Ok(Some(v)) => {
            if out_buf.is_null() || out_len < 4 {
                STATUS_BUFFER_TOO_SMALL
            } else {
                // SAFETY: the driver's output buffer holds at least 4 bytes.
                unsafe {
                    std::ptr::write_unaligned(out_buf as *mut u32, v);
                    if !out_returned.is_null() {
                        *out_returned = 4;
                    }
                }
                STATUS_SUCCESS
            }
        }
        Ok(None) => STATUS_SUCCESS,
        Err(status) => status,
    };
    if irp.is_null() {
        status
    } else {
        respond(irp, status, 0)
    }
}

/// WskCloseSocket: cancels pending IRPs, resets a connection unless both directions are shut,
/// frees the socket.
unsafe extern "win64" fn wsk_close_socket(socket: *mut WSK_SOCKET, irp: *mut IRP) -> NTSTATUS {
    thread::require_at_most("WskCloseSocket", DISPATCH);
    with_socket("WskCloseSocket", socket, |_, _| ());
    if let Err(s) = take_irp(irp) {
        return s;
    }
    let kernel = thread::kernel();
    let removed = {
        let mut state = kernel.netio.lock();
        let removed = state.sockets.remove(&(socket as usize));
        if let Some(s) = &removed {
            state.tokens.remove(&s.token);
        }
        removed
    };
    let Some(mut sock) = removed else {
        lookup_violation("WskCloseSocket", socket)
    };
    let mut out = Vec::new();
    for irp in sock.pending_irps() {
        if claim(irp) {
            out.push(done(irp, STATUS_CANCELLED, 0));
        }
    }
    deregister_io(&mut sock.io);
    if let Io::Stream(stream) | Io::Connecting(stream) = &sock.io {
        if !(sock.fin_sent && sock.fin_received) {
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
        }
    }
    drop(sock.io);
    {
        let mut state = kernel.netio.lock();
        if let Some(r) = state.registrations.get_mut(&sock.registration) {
            r.sockets -= 1;
        }
        retire(&mut state, socket as usize, sock.category);
    }
    finish(out, true);
    respond(irp, STATUS_SUCCESS, 0)
}
