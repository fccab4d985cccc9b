//! A WSK client written the way a driver uses WSK, for kemu's tests and benchmarks: IRPs from
//! IoAllocateIrp whose completion routine signals an event and returns
//! STATUS_MORE_PROCESSING_REQUIRED, nonpaged buffers described by MDLs. Every function must run
//! on a kernel thread (inside `Kernel::run`) after `exports::bind_native(IMPORT_DIRECTORY)`.

#![allow(missing_docs)]

use std::ffi::c_void;
use std::net::{Ipv4Addr, SocketAddrV4};

use ksys::imports::*;
use ksys::io::*;
use ksys::ntdef::*;
use ksys::wsk::*;

/// A WSK socket handed out by the provider (its address; `Send`, so tests can carry it between
/// kernel-thread calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sock(usize);

impl Sock {
    /// The WSK_SOCKET pointer.
    pub fn raw(self) -> *mut WSK_SOCKET {
        self.0 as *mut WSK_SOCKET
    }
}

/// Pool tag of the test buffers.
pub const TAG: u32 = u32::from_le_bytes(*b"WskT");

/// Completion routine of [`Call`] (and of a test's own IRPs): signals the KEVENT its context
/// points to, keeps the IRP.
///
/// # Safety
/// Called by the I/O manager with a context that is a live KEVENT.
pub unsafe extern "win64" fn signal_event(
    _device: *mut DEVICE_OBJECT,
    _irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: the context is the caller's live event.
    unsafe { KeSetEvent(context as *mut KEVENT, 0, 0) };
    STATUS_MORE_PROCESSING_REQUIRED
}

/// What [`Call`]'s completion routine sets: the event (first, so the context is also a KEVENT
/// pointer) and the name of the thread the routine ran on.
#[repr(C)]
struct Completion {
    event: KEVENT,
    ran_on: std::sync::OnceLock<String>,
}

/// Completion routine of [`Call`]: notes its thread, signals the event, keeps the IRP.
///
/// # Safety
/// Called by the I/O manager with a context that is a live [`Completion`].
unsafe extern "win64" fn note_thread_and_signal(
    _device: *mut DEVICE_OBJECT,
    _irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: the context is the Call's live Completion.
    let completion = unsafe { &*(context as *const Completion) };
    let name = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_owned();
    let _ = completion.ran_on.set(name);
    // SAFETY: the event is the Completion's first field; the Call keeps it alive.
    unsafe { KeSetEvent(context as *mut KEVENT, 0, 0) };
    STATUS_MORE_PROCESSING_REQUIRED
}

/// One in-flight WSK call: its IRP and the event its completion routine sets.
pub struct Call {
    irp: *mut IRP,
    completion: Box<Completion>,
    /// What the WSK routine returned.
    pub returned: NTSTATUS,
}

impl Call {
    pub fn start(f: impl FnOnce(*mut IRP) -> NTSTATUS) -> Call {
        // SAFETY: a fresh IRP and event; the completion routine only sets the event.
        unsafe {
            let irp = IoAllocateIrp(1, 0);
            assert!(!irp.is_null());
            let mut completion = Box::new(Completion {
                event: std::mem::zeroed(),
                ran_on: std::sync::OnceLock::new(),
            });
            KeInitializeEvent(&mut completion.event, NOTIFICATION_EVENT, 0);
            io_set_completion_routine(
                irp,
                Some(note_thread_and_signal),
                &mut *completion as *mut Completion as *mut c_void,
                true,
                true,
                true,
            );
            let returned = f(irp);
            Call {
                irp,
                completion,
                returned,
            }
        }
    }

    pub fn is_done(&mut self) -> bool {
        let zero = 0i64;
        // SAFETY: the event lives in self.
        unsafe {
            KeWaitForSingleObject(
                &mut self.completion.event as *mut KEVENT as *mut c_void,
                EXECUTIVE,
                KERNEL_MODE,
                0,
                &zero,
            ) == STATUS_SUCCESS
        }
    }

    pub fn cancel(&self) -> bool {
        // SAFETY: the IRP is ours and not freed before `wait`.
        unsafe { IoCancelIrp(self.irp) != 0 }
    }

    /// Waits for completion; returns (status, information) and checks the return contract.
    pub fn wait(self) -> (NTSTATUS, usize) {
        let (status, information, _) = self.wait_noting_thread();
        (status, information)
    }

    /// As [`Self::wait`], with the name of the thread the completion routine ran on (where
    /// kemu delivered it: the caller's, a DPC thread, the poller).
    pub fn wait_noting_thread(mut self) -> (NTSTATUS, usize, String) {
        // SAFETY: the event and IRP are ours; the completion always runs.
        unsafe {
            KeWaitForSingleObject(
                &mut self.completion.event as *mut KEVENT as *mut c_void,
                EXECUTIVE,
                KERNEL_MODE,
                0,
                std::ptr::null(),
            );
            let result = (
                (*self.irp).IoStatus.Status,
                (*self.irp).IoStatus.Information,
            );
            assert!(
                self.returned == STATUS_PENDING || self.returned == result.0,
                "returned {:#x}, completed {:#x}",
                self.returned,
                result.0
            );
            if self.returned == STATUS_PENDING {
                assert_ne!(
                    (*self.irp).PendingReturned,
                    0,
                    "STATUS_PENDING without a pending IRP"
                );
            }
            IoFreeIrp(self.irp);
            let ran_on = self.completion.ran_on.get().cloned().unwrap_or_default();
            (result.0, result.1, ran_on)
        }
    }
}

pub fn call(f: impl FnOnce(*mut IRP) -> NTSTATUS) -> (NTSTATUS, usize) {
    Call::start(f).wait()
}

/// A nonpaged buffer with its MDL, as a driver keeps one per direction.
pub struct Buffer {
    data: *mut u8,
    size: usize,
    mdl: *mut MDL,
}

impl Buffer {
    pub fn new(size: usize) -> Buffer {
        // SAFETY: plain pool and MDL allocations, freed in Drop.
        unsafe {
            let data = ExAllocatePool2(POOL_FLAG_NON_PAGED, size, TAG) as *mut u8;
            assert!(!data.is_null());
            let mdl = IoAllocateMdl(data as *mut c_void, size as u32, 0, 0, std::ptr::null_mut());
            MmBuildMdlForNonPagedPool(mdl);
            Buffer { data, size, mdl }
        }
    }

    pub fn wsk(&self, offset: u32, length: usize) -> WSK_BUF {
        WSK_BUF {
            Mdl: self.mdl,
            Offset: offset,
            Length: length,
        }
    }

    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `size` bytes of our pool block.
        unsafe { std::slice::from_raw_parts_mut(self.data, self.size) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, freed once.
        unsafe {
            IoFreeMdl(self.mdl);
            ExFreePoolWithTag(self.data as *mut c_void, TAG);
        }
    }
}

/// A registered, captured WSK client.
pub struct Client {
    /// The registration block (pinned until WskDeregister).
    pub registration: Box<WSK_REGISTRATION>,
    /// The captured provider NPI.
    pub npi: WSK_PROVIDER_NPI,
    /// The client dispatch and NPI (pinned until WskDeregister).
    pub client: Box<(WSK_CLIENT_DISPATCH, WSK_CLIENT_NPI)>,
}

impl Client {
    pub fn register() -> Client {
        let mut client = Box::new((
            WSK_CLIENT_DISPATCH {
                Version: make_wsk_version(1, 0),
                Reserved: 0,
                WskClientEvent: std::ptr::null(),
            },
            WSK_CLIENT_NPI {
                ClientContext: std::ptr::null_mut(),
                Dispatch: std::ptr::null(),
            },
        ));
        client.1.Dispatch = &client.0;
        // SAFETY: the registration and client NPI stay pinned in boxes until deregistration.
        unsafe {
            let mut registration: Box<WSK_REGISTRATION> = Box::new(std::mem::zeroed());
            assert_eq!(WskRegister(&client.1, &mut *registration), STATUS_SUCCESS);
            let mut npi: WSK_PROVIDER_NPI = std::mem::zeroed();
            assert_eq!(
                WskCaptureProviderNPI(&mut *registration, WSK_INFINITE_WAIT, &mut npi),
                STATUS_SUCCESS
            );
            Client {
                registration,
                npi,
                client,
            }
        }
    }

    pub fn dispatch(&self) -> &WSK_PROVIDER_DISPATCH {
        // SAFETY: the provider's table, valid while captured.
        unsafe { &*self.npi.Dispatch }
    }

    pub fn socket(&self, flags: u32) -> Result<Sock, NTSTATUS> {
        self.socket_of(AF_INET as u16, flags)
    }

    /// A TCP socket of `family` (AF_INET or AF_INET6).
    pub fn socket_of(&self, family: u16, flags: u32) -> Result<Sock, NTSTATUS> {
        let f = self.dispatch().WskSocket.unwrap();
        // SAFETY: a captured client; no context or dispatch (IRP mode).
        let (status, info) = call(|irp| unsafe {
            f(
                self.npi.Client,
                family,
                SOCK_STREAM as u16,
                IPPROTO_TCP,
                flags,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                irp,
            )
        });
        if status == STATUS_SUCCESS {
            Ok(Sock(info))
        } else {
            Err(status)
        }
    }

    pub fn finish(mut self) {
        // SAFETY: paired with the capture and registration above.
        unsafe {
            WskReleaseProviderNPI(&mut *self.registration);
            WskDeregister(&mut *self.registration);
        }
    }
}

pub fn sockaddr(addr: SocketAddrV4) -> SOCKADDR_IN {
    SOCKADDR_IN {
        sin_family: AF_INET as u16,
        sin_port: addr.port().to_be(),
        sin_addr: addr.ip().octets(),
        sin_zero: [0; 8],
    }
}

pub fn from_sockaddr(a: &SOCKADDR_IN) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(a.sin_addr), u16::from_be(a.sin_port))
}

pub fn loopback(port: u16) -> SOCKADDR_IN {
    sockaddr(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

pub fn listen_dispatch(s: Sock) -> &'static WSK_PROVIDER_LISTEN_DISPATCH {
    let s = s.raw();
    // SAFETY: a live listen socket's dispatch table.
    unsafe { &*((*s).Dispatch as *const WSK_PROVIDER_LISTEN_DISPATCH) }
}

pub fn conn(s: Sock) -> &'static WSK_PROVIDER_CONNECTION_DISPATCH {
    let s = s.raw();
    // SAFETY: a live connection socket's dispatch table.
    unsafe { &*((*s).Dispatch as *const WSK_PROVIDER_CONNECTION_DISPATCH) }
}

/// Listen socket bound to 127.0.0.1:0; returns it and its port.
pub fn listen(client: &Client) -> (Sock, u16) {
    let s = client.socket(WSK_FLAG_LISTEN_SOCKET).unwrap();
    let mut local = loopback(0);
    // SAFETY: a live listen socket and our address.
    let (status, _) = call(|irp| unsafe {
        listen_dispatch(s).WskBind.unwrap()(s.raw(), &mut local as *mut _ as *mut SOCKADDR, 0, irp)
    });
    assert_eq!(status, STATUS_SUCCESS);
    let mut bound = SOCKADDR_IN::default();
    // SAFETY: as above.
    let (status, _) = call(|irp| unsafe {
        listen_dispatch(s).WskGetLocalAddress.unwrap()(
            s.raw(),
            &mut bound as *mut _ as *mut SOCKADDR,
            irp,
        )
    });
    assert_eq!(status, STATUS_SUCCESS);
    (s, u16::from_be(bound.sin_port))
}

pub fn accept(listener: Sock) -> (Sock, SocketAddrV4) {
    let mut local = SOCKADDR_IN::default();
    let mut remote = SOCKADDR_IN::default();
    // SAFETY: a live listener; the address buffers outlive the call.
    let (status, info) = call(|irp| unsafe {
        listen_dispatch(listener).WskAccept.unwrap()(
            listener.raw(),
            0,
            std::ptr::null_mut(),
            std::ptr::null(),
            &mut local as *mut _ as *mut SOCKADDR,
            &mut remote as *mut _ as *mut SOCKADDR,
            irp,
        )
    });
    assert_eq!(status, STATUS_SUCCESS);
    assert_eq!(remote.sin_family as u32, AF_INET);
    (Sock(info), from_sockaddr(&remote))
}

pub fn connect(client: &Client, port: u16) -> Result<Sock, NTSTATUS> {
    let s = client.socket(WSK_FLAG_CONNECTION_SOCKET).unwrap();
    let mut local = loopback(0);
    let mut remote = loopback(port);
    // SAFETY: a live connection socket and our addresses.
    unsafe {
        let (status, _) = call(|irp| {
            conn(s).WskBind.unwrap()(s.raw(), &mut local as *mut _ as *mut SOCKADDR, 0, irp)
        });
        assert_eq!(status, STATUS_SUCCESS);
        let (status, _) = call(|irp| {
            conn(s).WskConnect.unwrap()(s.raw(), &mut remote as *mut _ as *mut SOCKADDR, 0, irp)
        });
        if status != STATUS_SUCCESS {
            close(s);
            return Err(status);
        }
    }
    Ok(s)
}

pub fn send(s: Sock, buffer: &Buffer, length: usize) -> (NTSTATUS, usize) {
    let mut wsk = buffer.wsk(0, length);
    // SAFETY: a live connection socket; the buffer outlives the call.
    call(|irp| unsafe { conn(s).WskSend.unwrap()(s.raw(), &mut wsk, 0, irp) })
}

pub fn receive(s: Sock, buffer: &Buffer, length: usize) -> (NTSTATUS, usize) {
    let mut wsk = buffer.wsk(0, length);
    // SAFETY: as above.
    call(|irp| unsafe { conn(s).WskReceive.unwrap()(s.raw(), &mut wsk, 0, irp) })
}

pub fn disconnect(s: Sock, flags: u32) -> NTSTATUS {
    // SAFETY: a live connection socket.
    call(|irp| unsafe { conn(s).WskDisconnect.unwrap()(s.raw(), std::ptr::null_mut(), flags, irp) })
        .0
}

pub fn close(s: Sock) {
    // SAFETY: a live socket (any category: Basic is first in every table).
    let (status, _) = call(|irp| unsafe {
        (*((*s.raw()).Dispatch as *const WSK_PROVIDER_BASIC_DISPATCH))
            .WskCloseSocket
            .unwrap()(s.raw(), irp)
    });
    assert_eq!(status, STATUS_SUCCESS);
}
