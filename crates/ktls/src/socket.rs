//! A WSK connection socket and the calls a session makes with it, typed: connect, receive,
//! send, disconnect and close in IRP mode (each completing through an [`IrpOp`]), and resolving
//! a host name. The session's state machine calls these instead of WSK's dispatch tables.

use ksys::io::IRP;
use ksys::ntdef::*;
use ksys::wsk::*;

use crate::pool::PoolArc;
use crate::wsk::{Buffer, IrpOp, Wake};

/// WskSend's and WskReceive's shared signature.
type SendReceive =
    unsafe extern "win64" fn(*mut WSK_SOCKET, *mut WSK_BUF, u32, *mut IRP) -> NTSTATUS;

/// A connection-oriented WSK socket, or none (before connecting, after closing). Its owner
/// closes it with [`Self::close`]; dropping it does nothing (a close needs an IRP and
/// PASSIVE_LEVEL bookkeeping only the owner has).
#[derive(Debug)]
pub(crate) struct ConnectionSocket {
    socket: *mut WSK_SOCKET,
}

// SAFETY: a WSK socket is a kernel object usable from any thread.
unsafe impl Send for ConnectionSocket {}

impl ConnectionSocket {
    /// Takes ownership of a connection socket WskAccept or WskSocketConnect returned.
    ///
    /// # Safety
    /// `socket` is NULL or a live connection socket that nobody else closes.
    pub unsafe fn from_raw(socket: *mut WSK_SOCKET) -> ConnectionSocket {
        ConnectionSocket { socket }
    }

    /// Whether there is a socket.
    pub fn is_open(&self) -> bool {
        !self.socket.is_null()
    }

    fn dispatch(&self) -> &'static WSK_PROVIDER_CONNECTION_DISPATCH {
        // SAFETY: a live connection socket's dispatch table (provider-owned, static).
        unsafe { &*((*self.socket).Dispatch as *const WSK_PROVIDER_CONNECTION_DISPATCH) }
    }

    /// WskReceive into `buffer[offset..offset + len]`, which `op` borrows until its result is
    /// taken; `op` completes with the byte count (0: the peer's FIN). Err if there is no
    /// socket, `op` is busy or the buffer is already lent.
    pub fn receive<W: Wake>(
        &self,
        op: &PoolArc<IrpOp<W>>,
        waker: W,
        buffer: &Buffer,
        offset: usize,
        len: usize,
    ) -> Result<(), NTSTATUS> {
        let receive = self.dispatch_of(|d| d.WskReceive)?;
        self.transfer(receive, op, waker, buffer, offset, len)
    }

    /// WskSend of `buffer[offset..offset + len]` (borrowed as for [`Self::receive`]).
    pub fn send<W: Wake>(
        &self,
        op: &PoolArc<IrpOp<W>>,
        waker: W,
        buffer: &Buffer,
        offset: usize,
        len: usize,
    ) -> Result<(), NTSTATUS> {
        let send = self.dispatch_of(|d| d.WskSend)?;
        self.transfer(send, op, waker, buffer, offset, len)
    }

    /// A connection dispatch routine, if there is a socket and the provider has it.
    fn dispatch_of<F>(
        &self,
        pick: impl FnOnce(&WSK_PROVIDER_CONNECTION_DISPATCH) -> Option<F>,
    ) -> Result<F, NTSTATUS> {
        if !self.is_open() {
            return Err(STATUS_INVALID_DEVICE_STATE);
        }
        pick(self.dispatch()).ok_or(STATUS_NOT_SUPPORTED)
    }

    /// WskSend or WskReceive (same signature) over a range of `buffer`, lent to `op`.
    fn transfer<W: Wake>(
        &self,
        routine: SendReceive,
        op: &PoolArc<IrpOp<W>>,
        waker: W,
        buffer: &Buffer,
        offset: usize,
        len: usize,
    ) -> Result<(), NTSTATUS> {
        let loan = buffer.lend(offset, len)?;
        let socket = self.socket;
        IrpOp::start_with(op, waker, Some(loan), |wsk_buf, irp| {
            // SAFETY: a live connection socket; the range (and its WSK_BUF) is lent to `op`
            // until its result is taken, so nothing else touches it and it stays allocated.
            unsafe { routine(socket, wsk_buf, 0, irp) }
        })
    }

    /// WskDisconnect, gracefully: our FIN goes after what was sent.
    pub fn disconnect<W: Wake>(&self, op: &PoolArc<IrpOp<W>>, waker: W) -> Result<(), NTSTATUS> {
        let disconnect = self.dispatch_of(|d| d.WskDisconnect)?;
        let socket = self.socket;
        IrpOp::start(op, waker, |irp| {
            // SAFETY: a live connection socket; no final buffer.
            unsafe { disconnect(socket, core::ptr::null_mut(), 0, irp) }
        })
    }

    /// WskCloseSocket (a reset, unless disconnected gracefully before). The socket is gone
    /// once `op` completes, whatever its status: call [`Self::forget`] then.
    ///
    /// # Safety
    /// Nothing else is in flight on the socket.
    pub unsafe fn close<W: Wake>(&self, op: &PoolArc<IrpOp<W>>, waker: W) -> Result<(), NTSTATUS> {
        let close = self.dispatch_of(|d| d.Basic.WskCloseSocket)?;
        let socket = self.socket;
        IrpOp::start(op, waker, |irp| {
            // SAFETY: a live socket with nothing in flight, per the contract.
            unsafe { close(socket, irp) }
        })
    }

    /// The close completed: there is no socket any more.
    pub fn forget(&mut self) {
        self.socket = core::ptr::null_mut();
    }
}

/// WskSocketConnect from `local` to `remote` (WSK copies both during the call); `op` completes
/// with the new connection socket as its information (take it with
/// [`ConnectionSocket::from_raw`]).
pub(crate) fn connect<W: Wake>(
    npi: &WSK_PROVIDER_NPI,
    local: &SOCKADDR_STORAGE,
    remote: &SOCKADDR_STORAGE,
    op: &PoolArc<IrpOp<W>>,
    waker: W,
) -> Result<(), NTSTATUS> {
    let (mut local, mut remote) = (*local, *remote);
    let local_ptr = &mut local as *mut SOCKADDR_STORAGE as *mut SOCKADDR;
    let remote_ptr = &mut remote as *mut SOCKADDR_STORAGE as *mut SOCKADDR;
    let client = npi.Client;
    // SAFETY: a captured provider's dispatch table.
    let socket_connect = unsafe { (*npi.Dispatch).WskSocketConnect }.ok_or(STATUS_NOT_SUPPORTED)?;
    IrpOp::start(op, waker, |irp: *mut IRP| {
        // SAFETY: a captured provider; WSK copies both addresses during the call; IRP mode.
        unsafe {
            socket_connect(
                client,
                SOCK_STREAM as u16,
                IPPROTO_TCP,
                local_ptr,
                remote_ptr,
                0,
                core::ptr::null_mut(),
                core::ptr::null(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                irp,
            )
        }
    })
}

/// A host name being resolved with WskGetAddressInfo: the name and the result pointer the
/// provider writes stay here (pool-resident in their owner) until the call completes.
#[derive(Debug)]
pub(crate) struct Resolution {
    name: alloc::vec::Vec<u16>,
    result: *mut ADDRINFOEXW,
}

// SAFETY: the result list is a provider allocation usable from any thread.
unsafe impl Send for Resolution {}

impl Resolution {
    /// A resolution of `name` (UTF-16, at most 255 units; empty: nothing to resolve).
    pub fn new(name: alloc::vec::Vec<u16>) -> Resolution {
        Resolution {
            name,
            result: core::ptr::null_mut(),
        }
    }


    /// Starts WskGetAddressInfo. Err(STATUS_INVALID_PARAMETER) for an empty or overlong name.
    ///
    /// # Safety
    /// The resolution stays where it is (pool-resident, not moved) until `op` completes.
    pub unsafe fn start<W: Wake>(
        &mut self,
        npi: &WSK_PROVIDER_NPI,
        op: &PoolArc<IrpOp<W>>,
        waker: W,
    ) -> Result<(), NTSTATUS> {
        if self.name.is_empty() || self.name.len() > 255 {
            return Err(STATUS_INVALID_PARAMETER);
        }
        // SAFETY: a captured provider's dispatch table.
        let get_address_info =
            unsafe { (*npi.Dispatch).WskGetAddressInfo }.ok_or(STATUS_NOT_SUPPORTED)?;
        let client = npi.Client;
        let node = UNICODE_STRING {
            Length: (self.name.len() * 2) as u16,
            MaximumLength: (self.name.len() * 2) as u16,
            Buffer: self.name.as_mut_ptr(),
        };
        let result = &mut self.result as *mut *mut ADDRINFOEXW;
        IrpOp::start(op, waker, |irp| {
            // SAFETY: a captured provider; the name is read during the call and the result
            // pointer stays put until completion (the contract).
            unsafe {
                get_address_info(
                    client,
                    &node,
                    core::ptr::null(),
                    0,
                    core::ptr::null_mut(),
                    core::ptr::null(),
                    result,
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    irp,
                )
            }
        })
    }

    /// After completion: the first IPv4 answer (else IPv6), and the provider's list freed.
    /// None if there was no list or no usable address in it.
    pub fn take_address(&mut self, npi: &WSK_PROVIDER_NPI) -> Option<SOCKADDR_STORAGE> {
        let list = core::mem::replace(&mut self.result, core::ptr::null_mut());
        if list.is_null() {
            return None;
        }
        let mut chosen: Option<SOCKADDR_STORAGE> = None;
        for wanted in [AF_INET as u16, AF_INET6 as u16] {
            let mut node = list;
            while !node.is_null() && chosen.is_none() {
                // SAFETY: a node of the provider's list, alive until WskFreeAddressInfo below.
                let n = unsafe { &*node };
                let len = n.ai_addrlen.min(core::mem::size_of::<SOCKADDR_STORAGE>());
                if !n.ai_addr.is_null() && len >= 4 {
                    let mut s = SOCKADDR_STORAGE {
                        ss_family: 0,
                        data: [0; 126],
                    };
                    // SAFETY: `len` bytes of the node's address into our storage (as large).
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            n.ai_addr as *const u8,
                            &mut s as *mut SOCKADDR_STORAGE as *mut u8,
                            len,
                        )
                    };
                    if s.ss_family == wanted {
                        chosen = Some(s);
                    }
                }
                node = n.ai_next;
            }
        }
        // SAFETY: the list WskGetAddressInfo returned, freed once.
        if let Some(free) = unsafe { (*npi.Dispatch).WskFreeAddressInfo } {
            // SAFETY: as above.
            unsafe { free(npi.Client, list) };
        }
        chosen
    }

    /// Whether a list is still held (a failed call that returned one anyway).
    pub fn holds_result(&self) -> bool {
        !self.result.is_null()
    }
}
