//! Listen and connection sockets: the provider dispatch tables and every socket call.
//!
//! Each call validates its socket and IRP, then either answers at once ([`crate::netio::respond`]:
//! inline or deferred completion) or queues an operation that the poller (or the next call on
//! the socket) moves forward. Queued operations carry a cancel routine: IoCancelIrp completes
//! them with STATUS_CANCELLED. Whoever clears the cancel routine owns the IRP's completion.

mod calls;
mod data;
mod dispatch;
mod operations;
mod options;

use calls::*;
use data::*;
pub(crate) use dispatch::*;
pub(crate) use operations::*;
use options::*;

use std::collections::VecDeque;
use std::ffi::c_void;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ksys::io::{IRP, MDL, MDL_MAPPED_TO_SYSTEM_VA, MDL_SOURCE_IS_NONPAGED_POOL};
use ksys::ntdef::*;
use ksys::wsk::*;
use mio::{Interest, Token};
use socket2::{Domain, Protocol, Type};

use crate::bugcheck::{bugcheck, codes, verifier};
use crate::leaks::Site;
use crate::netio::{
    addr, check_client, complete_at_dispatch, mark_pending, respond, take_irp, wsk_violation,
};
use crate::thread::{self, DISPATCH};

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

/// The (address, length) ranges of `segments` past their first `done` bytes.
fn past(segments: &[Segment], done: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut skip = done;
    segments.iter().filter_map(move |seg| {
        if skip >= seg.length {
            skip -= seg.length;
            return None;
        }
        let range = (seg.address + skip, seg.length - skip);
        skip = 0;
        Some(range)
    })
}

impl ReceiveOp {
    /// The part of the driver's buffer still to fill, as I/O slices over its memory: the
    /// socket reads straight into it (no staging buffer to zero and copy from, as on Windows,
    /// where the transport copies into the locked pages).
    fn unfilled(&mut self) -> Vec<std::io::IoSliceMut<'_>> {
        past(&self.segments, self.filled)
            .map(|(address, length)| {
                // SAFETY: the range lies in memory a live MDL describes, which the driver keeps
                // (and leaves alone) until this receive completes; segments do not overlap.
                let bytes = unsafe { std::slice::from_raw_parts_mut(address as *mut u8, length) };
                std::io::IoSliceMut::new(bytes)
            })
            .collect()
    }
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
        past(&self.segments, self.written)
            .map(|(address, length)| {
                // SAFETY: the range lies in memory a live MDL describes; the driver keeps it
                // until this send completes.
                let bytes = unsafe { std::slice::from_raw_parts(address as *const u8, length) };
                std::io::IoSlice::new(bytes)
            })
            .collect()
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
    /// Data may be waiting: false after a read found nothing, true again once the poller sees
    /// the socket ready (mio reports readiness as edges, so no read can succeed in between and
    /// a receive posted meanwhile just queues, without a system call).
    readable: bool,
    aborted: bool,
    /// WskCloseSocket ran: a thread that found the socket before it left the provider's map
    /// must treat it as gone (a call then is the driver's use after close).
    closed: bool,
    v6only: Option<bool>,
    pub site: Site,
}

/// One socket's state behind its own lock. The provider lock only finds it: a call or poller
/// event on one socket (and the host send, receive or connect it makes) holds this lock, so
/// the sockets of different connections move forward on different threads at once, as a
/// Windows transport serves each connection under its own lock. Order: provider lock, then a
/// socket's, never the other way round.
pub(crate) type SocketCell = Arc<Mutex<Socket>>;

/// Locks one socket (a panic on another thread does not make it unusable for reports).
pub(crate) fn lock_socket(cell: &SocketCell) -> MutexGuard<'_, Socket> {
    cell.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Marks the socket closed (a thread that finds it afterwards treats it as gone), takes
    /// it off its poller and hands back its queued IRPs and host socket.
    fn shut(&mut self) -> (Vec<usize>, Io) {
        self.closed = true;
        let mut irps: Vec<usize> = self.accepts.drain(..).map(|o| o.irp).collect();
        irps.extend(self.receives.drain(..).map(|o| o.irp));
        irps.extend(self.sends.drain(..).map(|o| o.irp).filter(|&i| i != 0));
        irps.extend(self.connect.take().map(|c| c.irp));
        irps.extend(self.disconnect.take());
        let mut io = std::mem::replace(&mut self.io, Io::Dead);
        deregister_io(&mut io);
        (irps, io)
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
