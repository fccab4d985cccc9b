//! ktls's WSK layer under kemu against std TCP peers: reusable IRP operations whose completion
//! only records and signals, non-paged buffers with MDLs, registration and clean deregistration.

use std::ffi::c_void;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;

use kemu::{CallbackSchedule, FaultPlan, Kernel};
use ksys::imports::*;
use ksys::io::{EXECUTIVE, KERNEL_MODE, KEVENT, SYNCHRONIZATION_EVENT};
use ksys::ntdef::*;
use ksys::wsk::*;
use ktls::pool::PoolArc;
use ktls::wsk::{Buffer, IrpOp, Provider, Wake};

fn boot(callbacks: CallbackSchedule) -> Kernel {
    testkit::boot_with_faults(FaultPlan {
        callbacks,
        ..FaultPlan::default()
    })
}

/// A KEVENT the completion sets (shared so the in-flight call keeps it alive while it signals).
struct Event(Box<KEVENT>);

// SAFETY: a KEVENT is meant to be signalled from any thread.
unsafe impl Send for Event {}
// SAFETY: as above.
unsafe impl std::marker::Sync for Event {}

impl Event {
    fn raw(&self) -> *mut KEVENT {
        &*self.0 as *const KEVENT as *mut KEVENT
    }
}

#[derive(Clone)]
struct Waker(Arc<Event>);

impl Wake for Waker {
    fn wake(&self, _bit: u32) {
        // SAFETY: the event lives while this waker does.
        unsafe { KeSetEvent(self.0.raw(), 0, 0) };
    }
}

/// An IrpOp plus the event its completion sets; `run` starts a call and waits for its result.
struct Sync {
    op: PoolArc<IrpOp<Waker>>,
    waker: Waker,
}

impl Sync {
    fn new() -> Sync {
        // SAFETY: KEVENT is plain data, initialized next.
        let event = Event(Box::new(unsafe { std::mem::zeroed() }));
        // SAFETY: the boxed event never moves.
        unsafe { KeInitializeEvent(event.raw(), SYNCHRONIZATION_EVENT, 0) };
        Sync {
            op: IrpOp::try_new(1, std::ptr::null_mut()).unwrap(),
            waker: Waker(Arc::new(event)),
        }
    }

    fn start(&self, call: impl FnOnce(*mut ksys::io::IRP) -> NTSTATUS) -> Result<(), NTSTATUS> {
        IrpOp::start(&self.op, self.waker.clone(), call)
    }

    /// Waits for the completion's signal, then takes the result.
    fn wait(&self) -> (NTSTATUS, usize) {
        loop {
            // SAFETY: our event.
            unsafe {
                KeWaitForSingleObject(
                    self.waker.0.raw() as *mut c_void,
                    EXECUTIVE,
                    KERNEL_MODE,
                    0,
                    std::ptr::null(),
                )
            };
            if let Some(r) = self.op.take() {
                return r;
            }
        }
    }

    fn run(&self, call: impl FnOnce(*mut ksys::io::IRP) -> NTSTATUS) -> (NTSTATUS, usize) {
        self.start(call).unwrap();
        self.wait()
    }
}

fn conn(s: usize) -> &'static WSK_PROVIDER_CONNECTION_DISPATCH {
    // SAFETY: a live connection socket's dispatch.
    unsafe { &*((*(s as *mut WSK_SOCKET)).Dispatch as *const WSK_PROVIDER_CONNECTION_DISPATCH) }
}

fn listen_dispatch(s: usize) -> &'static WSK_PROVIDER_LISTEN_DISPATCH {
    // SAFETY: a live listen socket's dispatch.
    unsafe { &*((*(s as *mut WSK_SOCKET)).Dispatch as *const WSK_PROVIDER_LISTEN_DISPATCH) }
}

#[test]
fn echo_server_through_ktls_operations() {
    for schedule in [
        CallbackSchedule::Inline,
        CallbackSchedule::Deferred,
        CallbackSchedule::Random,
    ] {
        let kernel = boot(schedule);
        let (tx, rx) = std::sync::mpsc::channel::<u16>();
        std::thread::scope(|scope| {
            let server = scope.spawn(|| {
                kernel
                    .run("server", move || {
                        let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
                        let npi = provider.npi();
                        // SAFETY: the captured provider's dispatch.
                        let dispatch = unsafe { &*npi.Dispatch };
                        let op = Sync::new();
                        // SAFETY: a captured client; IRP mode (no dispatch/context).
                        let (status, listener) = op.run(|irp| unsafe {
                            dispatch.WskSocket.unwrap()(
                                npi.Client,
                                AF_INET as u16,
                                SOCK_STREAM as u16,
                                IPPROTO_TCP,
                                WSK_FLAG_LISTEN_SOCKET,
                                std::ptr::null_mut(),
                                std::ptr::null(),
                                std::ptr::null_mut(),
                                std::ptr::null_mut(),
                                std::ptr::null_mut(),
                                irp,
                            )
                        });
                        assert_eq!(status, STATUS_SUCCESS);
                        let mut local = SOCKADDR_IN {
                            sin_family: AF_INET as u16,
                            sin_port: 0,
                            sin_addr: [127, 0, 0, 1],
                            sin_zero: [0; 8],
                        };
                        // SAFETY: a live listen socket; our address.
                        assert_eq!(
                            // SAFETY: a live socket; buffers and addresses outlive the call.
                            op.run(|irp| unsafe {
                                listen_dispatch(listener).WskBind.unwrap()(
                                    listener as *mut WSK_SOCKET,
                                    &mut local as *mut _ as *mut SOCKADDR,
                                    0,
                                    irp,
                                )
                            })
                            .0,
                            STATUS_SUCCESS
                        );
                        let mut bound = SOCKADDR_IN::default();
                        // SAFETY: as above.
                        assert_eq!(
                            // SAFETY: a live socket; buffers and addresses outlive the call.
                            op.run(|irp| unsafe {
                                listen_dispatch(listener).WskGetLocalAddress.unwrap()(
                                    listener as *mut WSK_SOCKET,
                                    &mut bound as *mut _ as *mut SOCKADDR,
                                    irp,
                                )
                            })
                            .0,
                            STATUS_SUCCESS
                        );
                        tx.send(u16::from_be(bound.sin_port)).unwrap();
                        // SAFETY: as above; no address buffers wanted.
                        let (status, s) = op.run(|irp| unsafe {
                            listen_dispatch(listener).WskAccept.unwrap()(
                                listener as *mut WSK_SOCKET,
                                0,
                                std::ptr::null_mut(),
                                std::ptr::null(),
                                std::ptr::null_mut(),
                                std::ptr::null_mut(),
                                irp,
                            )
                        });
                        assert_eq!(status, STATUS_SUCCESS);
                        let mut buffer = Buffer::try_new(4096).unwrap();
                        let mut total = 0;
                        loop {
                            let loan = buffer.lend(0, 4096).unwrap();
                            let mut wsk = loan.wsk();
                            // SAFETY: a live connection socket; the buffer outlives the call.
                            let (status, n) = op.run(|irp| unsafe {
                                conn(s).WskReceive.unwrap()(s as *mut WSK_SOCKET, &mut wsk, 0, irp)
                            });
                            assert!(buffer.bytes().is_empty(), "lent bytes are the call's");
                            drop(loan);
                            assert_eq!(status, STATUS_SUCCESS);
                            if n == 0 {
                                break;
                            }
                            buffer.bytes()[..n].reverse();
                            let loan = buffer.lend(0, n).unwrap();
                            let mut out = loan.wsk();
                            // SAFETY: as above.
                            assert_eq!(
                                // SAFETY: a live socket; buffers and addresses outlive the call.
                                op.run(|irp| unsafe {
                                    conn(s).WskSend.unwrap()(s as *mut WSK_SOCKET, &mut out, 0, irp)
                                }),
                                (STATUS_SUCCESS, n)
                            );
                            drop(loan);
                            total += n;
                        }
                        // SAFETY: graceful disconnect, then close both sockets.
                        unsafe {
                            assert_eq!(
                                op.run(|irp| conn(s).WskDisconnect.unwrap()(
                                    s as *mut WSK_SOCKET,
                                    std::ptr::null_mut(),
                                    0,
                                    irp
                                ))
                                .0,
                                STATUS_SUCCESS
                            );
                            assert_eq!(
                                op.run(|irp| conn(s).Basic.WskCloseSocket.unwrap()(
                                    s as *mut WSK_SOCKET,
                                    irp
                                ))
                                .0,
                                STATUS_SUCCESS
                            );
                            assert_eq!(
                                op.run(|irp| listen_dispatch(listener)
                                    .Basic
                                    .WskCloseSocket
                                    .unwrap()(
                                    listener as *mut WSK_SOCKET, irp
                                ))
                                .0,
                                STATUS_SUCCESS
                            );
                        }
                        drop(buffer);
                        drop(op);
                        drop(provider);
                        total
                    })
                    .unwrap()
            });
            let port = rx.recv().unwrap();
            let mut peer = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
            peer.write_all(b"abc").unwrap();
            let mut got = [0u8; 3];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"cba");
            peer.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            peer.read_to_end(&mut rest).unwrap();
            assert_eq!(server.join().unwrap(), 3);
        });
        kernel
            .shutdown()
            .unwrap_or_else(|e| panic!("{schedule:?}: {e}"));
    }
}

#[test]
fn a_pending_receive_is_cancelled_and_the_irp_reused() {
    let kernel = boot(CallbackSchedule::Random);
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = std::thread::spawn(move || listener.accept().unwrap().0);
    let (first, second) = kernel
        .run("client", move || {
            let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
            let npi = provider.npi();
            let op = Sync::new();
            let mut local = SOCKADDR_IN {
                sin_family: AF_INET as u16,
                sin_port: 0,
                sin_addr: [127, 0, 0, 1],
                sin_zero: [0; 8],
            };
            let mut remote = SOCKADDR_IN {
                sin_family: AF_INET as u16,
                sin_port: port.to_be(),
                sin_addr: [127, 0, 0, 1],
                sin_zero: [0; 8],
            };
            // SAFETY: a captured client; addresses outlive the call.
            let (status, s) = op.run(|irp| unsafe {
                (*npi.Dispatch).WskSocketConnect.unwrap()(
                    npi.Client,
                    SOCK_STREAM as u16,
                    IPPROTO_TCP,
                    &mut local as *mut _ as *mut SOCKADDR,
                    &mut remote as *mut _ as *mut SOCKADDR,
                    0,
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    irp,
                )
            });
            assert_eq!(status, STATUS_SUCCESS);
            let buffer = Buffer::try_new(64).unwrap();
            let loan = buffer.lend(0, 64).unwrap();
            assert!(buffer.lend(0, 1).is_err(), "one loan at a time");
            let mut wsk = loan.wsk();
            // SAFETY: a live connection socket; the buffer outlives the call.
            op.start(|irp| unsafe {
                conn(s).WskReceive.unwrap()(s as *mut WSK_SOCKET, &mut wsk, 0, irp)
            })
            .unwrap();
            assert!(
                op.start(|_| STATUS_SUCCESS).is_err(),
                "one call in flight per operation"
            );
            op.op.cancel();
            let first = op.wait().0;
            // The same IRP serves the close.
            // SAFETY: as above.
            let second = op
                .run(|irp| unsafe {
                    conn(s).Basic.WskCloseSocket.unwrap()(s as *mut WSK_SOCKET, irp)
                })
                .0;
            drop(buffer);
            drop(op);
            drop(provider);
            (first, second)
        })
        .unwrap();
    assert_eq!((first, second), (STATUS_CANCELLED, STATUS_SUCCESS));
    drop(peer.join().unwrap());
    kernel.shutdown().unwrap();
}
