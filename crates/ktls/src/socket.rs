//! A WSK connection socket and the calls a session makes with it, typed: connect, receive,
//! send, disconnect and close in IRP mode (each completing through an [`IrpOp`]), and resolving
//! a host name. The session's state machine calls these instead of WSK's dispatch tables.

use core::cell::UnsafeCell;
use core::ffi::c_void;

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
/// PASSIVE_LEVEL bookkeeping only the owner has). It is not `Sync`, so no two calls on it are
/// ever in progress at once (WskCloseSocket's rule; pending IRPs are fine).
#[derive(Debug)]
pub struct ConnectionSocket {
    socket: *mut WSK_SOCKET,
    pending: Pending,
}

/// A call whose completion changes what the socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    None,
    /// WskSocketConnect on the operation at this address: its result brings the socket.
    Connect(*const c_void),
    /// WskCloseSocket was issued: no more calls; the socket is gone once it completes.
    Close,
}

// SAFETY: a WSK socket is a kernel object usable from any thread.
unsafe impl Send for ConnectionSocket {}

impl ConnectionSocket {
    /// Takes ownership of a connection socket WskAccept or WskSocketConnect returned.
    ///
    /// # Safety
    /// `socket` is NULL or a live connection socket that nobody else closes.
    pub unsafe fn from_raw(socket: *mut WSK_SOCKET) -> ConnectionSocket {
        ConnectionSocket {
            socket,
            pending: Pending::None,
        }
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
        if !self.is_open() || self.pending == Pending::Close {
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

    /// WskCloseSocket (a reset, unless disconnected gracefully before; IRPs still pending on
    /// the socket complete with STATUS_CANCELLED). No call is accepted after it; the socket is
    /// gone once `op` completes, whatever its status: call [`Self::forget`] then.
    pub fn close<W: Wake>(&mut self, op: &PoolArc<IrpOp<W>>, waker: W) -> Result<(), NTSTATUS> {
        let close = self.dispatch_of(|d| d.Basic.WskCloseSocket)?;
        let socket = self.socket;
        IrpOp::start(op, waker, |irp| {
            // SAFETY: a live socket; no other call on it is in progress (not Sync) and none
            // will be made after this one (Pending::Close).
            unsafe { close(socket, irp) }
        })?;
        self.pending = Pending::Close;
        Ok(())
    }

    /// The close completed: there is no socket any more. (Called early, it only leaks the
    /// socket.)
    pub fn forget(&mut self) {
        self.socket = core::ptr::null_mut();
        self.pending = Pending::None;
    }

    /// WskSocketConnect from `local` to `remote` (WSK copies both during the call) for a
    /// socket that has none yet; [`Self::take_connected`] on the same `op` brings the new
    /// connection socket.
    pub fn connect<W: Wake>(
        &mut self,
        npi: &WSK_PROVIDER_NPI,
        local: &SOCKADDR_STORAGE,
        remote: &SOCKADDR_STORAGE,
        op: &PoolArc<IrpOp<W>>,
        waker: W,
    ) -> Result<(), NTSTATUS> {
        if self.is_open() || self.pending != Pending::None {
            return Err(STATUS_INVALID_DEVICE_STATE);
        }
        connect(npi, local, remote, op, waker)?;
        self.pending = Pending::Connect(op_address(op));
        Ok(())
    }

    /// The result of the connect issued on `op`, if it completed: on success the socket is
    /// this one's from now on. None if no connect is pending on `op` or it has not completed.
    pub fn take_connected<W: Wake>(&mut self, op: &PoolArc<IrpOp<W>>) -> Option<NTSTATUS> {
        if self.pending != Pending::Connect(op_address(op)) {
            return None;
        }
        let (status, information) = op.take()?;
        self.pending = Pending::None;
        if nt_success(status) && information != 0 {
            // A completed WskSocketConnect's information is the new socket, ours now.
            self.socket = information as *mut WSK_SOCKET;
        }
        Some(status)
    }
}

/// The identity of an operation (its address, stable for its life).
fn op_address<W: Wake>(op: &PoolArc<IrpOp<W>>) -> *const c_void {
    &**op as *const IrpOp<W> as *const c_void
}

/// WskSocketConnect from `local` to `remote` (WSK copies both during the call); `op` completes
/// with the new connection socket as its information.
fn connect<W: Wake>(
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

/// A host name being resolved with WskGetAddressInfo. What the provider reads and writes (the
/// name and the result pointer) lives in its own pool block, which the call has until
/// [`Self::take_address`] sees it completed; a resolution dropped while its call is pending
/// leaves the block to the provider.
pub(crate) struct Resolution {
    block: Option<PoolArc<ResolveBlock>>,
    /// The operation the call in flight was issued on.
    in_flight: Option<*const c_void>,
}

struct ResolveBlock(UnsafeCell<Lookup>);

struct Lookup {
    name: alloc::vec::Vec<u16>,
    node: UNICODE_STRING,
    result: *mut ADDRINFOEXW,
}

// SAFETY: the name, the string describing it and the provider's result list are usable from
// any thread; the block is reached only by its one Resolution (by `&mut`) or the provider
// during the call.
unsafe impl Send for ResolveBlock {}
// SAFETY: as above.
unsafe impl Sync for ResolveBlock {}
// SAFETY: the operation address is only compared.
unsafe impl Send for Resolution {}

impl Drop for Resolution {
    fn drop(&mut self) {
        if let (Some(_), Some(block)) = (self.in_flight, &self.block) {
            // The provider may still write the result: the block is never freed.
            core::mem::forget(block.clone());
        }
    }
}

impl Resolution {
    /// A resolution of `name` (UTF-16, at most 255 units; empty: nothing to resolve).
    pub fn try_new(name: alloc::vec::Vec<u16>) -> Result<Resolution, NTSTATUS> {
        let block = if name.is_empty() {
            None
        } else {
            Some(PoolArc::try_new(ResolveBlock(UnsafeCell::new(Lookup {
                name,
                node: UNICODE_STRING {
                    Length: 0,
                    MaximumLength: 0,
                    Buffer: core::ptr::null_mut(),
                },
                result: core::ptr::null_mut(),
            })))?)
        };
        Ok(Resolution {
            block,
            in_flight: None,
        })
    }

    /// The lookup, unless its call is in flight (the provider's then).
    fn lookup(&mut self) -> Option<&mut Lookup> {
        if self.in_flight.is_some() {
            return None;
        }
        // SAFETY: this resolution is the block's only user (`&mut self`) and no call is in
        // flight, so the provider does not touch it.
        self.block.as_ref().map(|b| unsafe { &mut *b.0.get() })
    }

    /// Starts WskGetAddressInfo on `op`. Err(STATUS_INVALID_PARAMETER) for an empty or overlong
    /// name, STATUS_INVALID_DEVICE_STATE while a call is in flight.
    pub fn start<W: Wake>(
        &mut self,
        npi: &WSK_PROVIDER_NPI,
        op: &PoolArc<IrpOp<W>>,
        waker: W,
    ) -> Result<(), NTSTATUS> {
        if self.in_flight.is_some() {
            return Err(STATUS_INVALID_DEVICE_STATE);
        }
        let Some(lookup) = self.lookup() else {
            return Err(STATUS_INVALID_PARAMETER);
        };
        if lookup.name.len() > 255 {
            return Err(STATUS_INVALID_PARAMETER);
        }
        // SAFETY: a captured provider's dispatch table.
        let get_address_info =
            unsafe { (*npi.Dispatch).WskGetAddressInfo }.ok_or(STATUS_NOT_SUPPORTED)?;
        let client = npi.Client;
        lookup.node = UNICODE_STRING {
            Length: (lookup.name.len() * 2) as u16,
            MaximumLength: (lookup.name.len() * 2) as u16,
            Buffer: lookup.name.as_mut_ptr(),
        };
        let node = &lookup.node as *const UNICODE_STRING;
        let result = &mut lookup.result as *mut *mut ADDRINFOEXW;
        IrpOp::start(op, waker, |irp| {
            // SAFETY: a captured provider; the name, its string and the result pointer are in
            // the block, which stays allocated and untouched until the call completed.
            unsafe {
                get_address_info(
                    client,
                    node,
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
        })?;
        self.in_flight = Some(op_address(op));
        Ok(())
    }

    /// Once the call on `op` completed: the first IPv4 answer (else IPv6), and the provider's
    /// list freed (whatever the call's status). None if the call is not over, there was no
    /// list, or no usable address in it.
    pub fn take_address<W: Wake>(
        &mut self,
        npi: &WSK_PROVIDER_NPI,
        op: &PoolArc<IrpOp<W>>,
    ) -> Option<SOCKADDR_STORAGE> {
        if self.in_flight != Some(op_address(op)) || op.is_pending() {
            return None;
        }
        self.in_flight = None;
        let lookup = self.lookup()?;
        let list = core::mem::replace(&mut lookup.result, core::ptr::null_mut());
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
}
