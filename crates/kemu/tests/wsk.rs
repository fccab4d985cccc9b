//! kemu's WSK provider driven by a test-only client written the way a driver uses WSK: IRPs
//! from IoAllocateIrp with a completion routine that signals an event and returns
//! STATUS_MORE_PROCESSING_REQUIRED, nonpaged buffers described by MDLs, real loopback peers
//! (std TCP) on the other side.

use std::ffi::c_void;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use kemu::{CallbackSchedule, FaultPlan, Kernel, KernelConfig, KernelError};
use ksys::imports::*;
use ksys::ntdef::*;
use ksys::wsk::*;

use kemu::testing::wsk::*;

fn boot(callbacks: CallbackSchedule) -> Kernel {
    kemu::exports::bind_native(IMPORT_DIRECTORY);
    Kernel::boot(KernelConfig {
        faults: FaultPlan {
            callbacks,
            ..FaultPlan::default()
        },
        ..KernelConfig::from_env()
    })
}

/// Every schedule the provider may complete with.
const SCHEDULES: [CallbackSchedule; 3] = [
    CallbackSchedule::Inline,
    CallbackSchedule::Deferred,
    CallbackSchedule::Random,
];

#[test]
fn echo_server_serves_std_clients_under_every_schedule() {
    for schedule in SCHEDULES {
        let kernel = boot(schedule);
        let (tx, rx) = std::sync::mpsc::channel::<u16>();
        std::thread::scope(|scope| {
            let server = scope.spawn(|| {
                kernel.run("echo server", move || {
                    let client = Client::register();
                    let (listener, port) = listen(&client);
                    tx.send(port).unwrap();
                    let mut served = 0;
                    for _ in 0..3 {
                        let (s, peer) = accept(listener);
                        assert_eq!(*peer.ip(), Ipv4Addr::LOCALHOST);
                        let buffer = Buffer::new(4096);
                        loop {
                            let (status, n) = receive(s, &buffer, 4096);
                            assert_eq!(status, STATUS_SUCCESS);
                            if n == 0 {
                                break;
                            }
                            assert_eq!(send(s, &buffer, n), (STATUS_SUCCESS, n));
                            served += n;
                        }
                        assert_eq!(disconnect(s, 0), STATUS_SUCCESS);
                        close(s);
                    }
                    close(listener);
                    client.finish();
                    served
                })
            });
            let port = rx.recv().unwrap();
            let mut total = 0;
            for i in 0..3u32 {
                let mut peer = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
                let message: Vec<u8> = (0..10_000u32).map(|b| (b * 7 + i) as u8).collect();
                peer.write_all(&message).unwrap();
                peer.shutdown(std::net::Shutdown::Write).unwrap();
                let mut echoed = Vec::new();
                peer.read_to_end(&mut echoed).unwrap();
                assert_eq!(echoed, message, "schedule {schedule:?}");
                total += message.len();
            }
            assert_eq!(server.join().unwrap().unwrap(), total);
        });
        kernel
            .shutdown()
            .unwrap_or_else(|e| panic!("{schedule:?}: {e}"));
    }
}

#[test]
fn client_sends_and_receives_a_megabyte_through_a_std_echo_peer() {
    for schedule in SCHEDULES {
        let kernel = boot(schedule);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 65536];
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).unwrap();
            }
        });
        const TOTAL: usize = 1 << 20;
        let received = kernel
            .run("client", move || {
                let client = Client::register();
                let s = connect(&client, port).unwrap();
                let mut out = Buffer::new(TOTAL);
                for (i, b) in out.bytes().iter_mut().enumerate() {
                    *b = (i * 31 % 251) as u8;
                }
                let sent = send(s, &out, TOTAL);
                assert_eq!(sent, (STATUS_SUCCESS, TOTAL), "no partial sends");
                let mut input = Buffer::new(TOTAL);
                let mut got = 0;
                while got < TOTAL {
                    let mut wsk = input.wsk(got as u32, TOTAL - got);
                    // SAFETY: a live connection socket; the buffer outlives the call.
                    let (status, n) = call(|irp| unsafe {
                        conn(s).WskReceive.unwrap()(s.raw(), &mut wsk, 0, irp)
                    });
                    assert_eq!(status, STATUS_SUCCESS);
                    assert!(n > 0, "early FIN");
                    got += n;
                }
                let same = input.bytes() == out.bytes();
                assert_eq!(disconnect(s, 0), STATUS_SUCCESS);
                let (status, n) = receive(s, &input, 16);
                assert_eq!(
                    (status, n),
                    (STATUS_SUCCESS, 0),
                    "the peer's FIN after our FIN"
                );
                close(s);
                client.finish();
                same
            })
            .unwrap();
        assert!(received, "echoed bytes differ");
        peer.join().unwrap();
        kernel.shutdown().unwrap();
    }
}

/// A registered client kept across kernel-thread calls of one test.
#[derive(Clone, Copy, Debug)]
struct ClientRef(usize);

impl ClientRef {
    /// Releases, deregisters and frees the client (on a kernel thread).
    fn finish(self, kernel: &Kernel) {
        kernel
            .run("deregister", move || {
                // SAFETY: made by Box::into_raw in `connected_pair`, finished once.
                unsafe { Box::from_raw(self.0 as *mut Client) }.finish()
            })
            .unwrap();
    }
}

/// Connects to a std listener: the kernel socket, the peer's stream and the client.
fn connected_pair(kernel: &Kernel) -> (Sock, TcpStream, ClientRef) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (s, client) = kernel
        .run("connect", move || {
            let client = Client::register();
            let s = connect(&client, port).unwrap();
            (s, ClientRef(Box::into_raw(Box::new(client)) as usize))
        })
        .unwrap();
    let (peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (s, peer, client)
}

#[test]
fn graceful_disconnect_is_a_fin_and_abortive_is_a_reset() {
    let kernel = boot(CallbackSchedule::Random);
    let (s, mut peer, client) = connected_pair(&kernel);
    assert_eq!(
        kernel.run("disconnect", move || disconnect(s, 0)).unwrap(),
        STATUS_SUCCESS
    );
    let mut buf = [0u8; 8];
    assert_eq!(peer.read(&mut buf).unwrap(), 0, "graceful disconnect: FIN");
    peer.write_all(b"late").unwrap();
    let (status, n) = kernel
        .run("half-closed receive", move || {
            let b = Buffer::new(16);
            receive(s, &b, 16)
        })
        .unwrap();
    assert_eq!(
        (status, n),
        (STATUS_SUCCESS, 4),
        "receiving still works after our FIN"
    );
    kernel.run("close", move || close(s)).unwrap();
    client.finish(&kernel);

    let (s, mut peer, client) = connected_pair(&kernel);
    assert_eq!(
        kernel
            .run("abort", move || disconnect(s, WSK_FLAG_ABORTIVE))
            .unwrap(),
        STATUS_SUCCESS
    );
    assert_eq!(
        peer.read(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionReset
    );
    let status = kernel
        .run("send after abort", move || send(s, &Buffer::new(4), 4).0)
        .unwrap();
    assert_eq!(status, STATUS_CONNECTION_ABORTED);
    kernel.run("close", move || close(s)).unwrap();
    client.finish(&kernel);
    kernel.shutdown().unwrap();
}

#[test]
fn closing_without_disconnect_resets_and_peer_reset_is_reported() {
    let kernel = boot(CallbackSchedule::Random);
    let (s, mut peer, client) = connected_pair(&kernel);
    kernel.run("close", move || close(s)).unwrap();
    client.finish(&kernel);
    let mut buf = [0u8; 8];
    assert_eq!(
        peer.read(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionReset
    );

    let (s, peer, client) = connected_pair(&kernel);
    socket2::SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(peer);
    let status = kernel
        .run("receive", move || {
            let b = Buffer::new(16);
            let r = receive(s, &b, 16).0;
            close(s);
            r
        })
        .unwrap();
    assert_eq!(status, STATUS_CONNECTION_RESET);
    client.finish(&kernel);
    kernel.shutdown().unwrap();
}

/// A WSK socket bound to [::] is IPv6-only (Windows' default, unlike Linux's dual stack) until
/// IPV6_V6ONLY is set to FALSE before the bind, as echosrv does.
#[test]
fn an_ipv6_socket_is_ipv6_only_unless_told_otherwise() {
    let kernel = boot(CallbackSchedule::Random);
    for dual_stack in [false, true] {
        let port = kernel
            .run("v6 listener", move || {
                let client = Client::register();
                let s = client
                    .socket_of(AF_INET6 as u16, WSK_FLAG_LISTEN_SOCKET)
                    .unwrap();
                if dual_stack {
                    let mut off = 0u32;
                    // SAFETY: a live listen socket; the value outlives the call.
                    let (status, _) = call(|irp| unsafe {
                        listen_dispatch(s).Basic.WskControlSocket.unwrap()(
                            s.raw(),
                            WSK_SET_OPTION,
                            IPV6_V6ONLY,
                            IPPROTO_IPV6,
                            4,
                            &mut off as *mut u32 as *mut c_void,
                            0,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            irp,
                        )
                    });
                    assert_eq!(status, STATUS_SUCCESS);
                }
                let mut any = SOCKADDR_IN6 {
                    sin6_family: AF_INET6 as u16,
                    ..Default::default()
                };
                // SAFETY: a live listen socket and our address.
                let (status, _) = call(|irp| unsafe {
                    listen_dispatch(s).WskBind.unwrap()(
                        s.raw(),
                        &mut any as *mut _ as *mut SOCKADDR,
                        0,
                        irp,
                    )
                });
                assert_eq!(status, STATUS_SUCCESS);
                let mut bound = SOCKADDR_IN6::default();
                // SAFETY: as above.
                let (status, _) = call(|irp| unsafe {
                    listen_dispatch(s).WskGetLocalAddress.unwrap()(
                        s.raw(),
                        &mut bound as *mut _ as *mut SOCKADDR,
                        irp,
                    )
                });
                assert_eq!(status, STATUS_SUCCESS);
                // The socket stays open while the host probes it.
                std::mem::forget(client);
                (u16::from_be(bound.sin6_port), s.raw() as usize)
            })
            .unwrap();
        let v4 = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port.0)),
            Duration::from_secs(5),
        );
        let v6 = TcpStream::connect_timeout(
            &SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port.0)),
            Duration::from_secs(5),
        );
        assert!(v6.is_ok(), "IPv6 clients always reach [::]");
        assert_eq!(
            v4.is_ok(),
            dual_stack,
            "IPv4 reaches [::] only with IPV6_V6ONLY = FALSE"
        );
    }
}

#[test]
fn refused_and_address_in_use_are_reported_as_windows_does() {
    let kernel = boot(CallbackSchedule::Random);
    let closed_port = {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let (refused, in_use) = kernel
        .run("errors", move || {
            let client = Client::register();
            let refused = connect(&client, closed_port).unwrap_err();
            let s = client.socket(WSK_FLAG_LISTEN_SOCKET).unwrap();
            let mut local = loopback(taken_port);
            // SAFETY: a live listen socket and our address.
            let (in_use, _) = call(|irp| unsafe {
                listen_dispatch(s).WskBind.unwrap()(
                    s.raw(),
                    &mut local as *mut _ as *mut SOCKADDR,
                    0,
                    irp,
                )
            });
            close(s);
            client.finish();
            (refused, in_use)
        })
        .unwrap();
    assert_eq!(refused, STATUS_CONNECTION_REFUSED);
    assert_eq!(in_use, STATUS_ADDRESS_ALREADY_EXISTS);
    drop(taken);
    kernel.shutdown().unwrap();
}

#[test]
fn cancelling_a_pending_receive_completes_it_with_status_cancelled() {
    for schedule in SCHEDULES {
        let kernel = boot(schedule);
        let (s, mut peer, client) = connected_pair(&kernel);
        let status = kernel
            .run("cancel", move || {
                let b = Buffer::new(64);
                let mut wsk = b.wsk(0, 64);
                // SAFETY: a live connection socket; the buffer outlives the call.
                let mut pending = Call::start(|irp| unsafe {
                    conn(s).WskReceive.unwrap()(s.raw(), &mut wsk, 0, irp)
                });
                assert_eq!(pending.returned, STATUS_PENDING);
                assert!(!pending.is_done());
                assert!(pending.cancel());
                let (status, _) = pending.wait();
                assert_eq!(disconnect(s, 0), STATUS_SUCCESS);
                close(s);
                status
            })
            .unwrap();
        assert_eq!(status, STATUS_CANCELLED);
        let mut buf = [0u8; 4];
        assert_eq!(
            peer.read(&mut buf).unwrap(),
            0,
            "graceful disconnect after the cancel"
        );
        client.finish(&kernel);
        kernel
            .shutdown()
            .unwrap_or_else(|e| panic!("{schedule:?}: {e}"));
    }
}

#[test]
fn deregister_waits_for_the_last_socket() {
    let kernel = boot(CallbackSchedule::Random);
    let (reg, s) = kernel
        .run("open", || {
            let client = Client::register();
            let s = client.socket(WSK_FLAG_CONNECTION_SOCKET).unwrap();
            let mut client = client;
            // SAFETY: paired with the capture in `register`; the socket stays usable.
            unsafe { WskReleaseProviderNPI(&mut *client.registration) };
            let reg = Box::into_raw(client.registration) as usize;
            std::mem::forget(client.client);
            (reg, s)
        })
        .unwrap();
    let deregistered = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            // SAFETY: the registration box leaked above; deregistered once.
            kernel
                .run("deregister", move || unsafe {
                    WskDeregister(reg as *mut WSK_REGISTRATION)
                })
                .unwrap();
            deregistered.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !deregistered.load(std::sync::atomic::Ordering::SeqCst),
            "WskDeregister returned with a socket open"
        );
        kernel.run("close", move || close(s)).unwrap();
        waiter.join().unwrap();
        assert!(deregistered.load(std::sync::atomic::Ordering::SeqCst));
    });
    kernel.shutdown().unwrap();
}

#[test]
fn a_thousand_concurrent_loopback_connections() {
    rlimit::increase_nofile_limit(8192).unwrap();
    const N: usize = 1000;
    let kernel = boot(CallbackSchedule::Random);
    let (tx, rx) = std::sync::mpsc::channel::<u16>();
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            kernel.run("server", move || {
                let client = Client::register();
                let (listener, port) = listen(&client);
                tx.send(port).unwrap();
                let sockets: Vec<Sock> = (0..N).map(|_| accept(listener).0).collect();
                // Every connection is open at once; each gets its index back.
                let buffer = Buffer::new(8);
                for &s in &sockets {
                    let (status, n) = receive(s, &buffer, 8);
                    assert_eq!((status, n), (STATUS_SUCCESS, 8));
                    assert_eq!(send(s, &buffer, 8), (STATUS_SUCCESS, 8));
                }
                for s in sockets {
                    assert_eq!(disconnect(s, 0), STATUS_SUCCESS);
                    close(s);
                }
                close(listener);
                client.finish();
            })
        });
        let port = rx.recv().unwrap();
        let mut peers: Vec<TcpStream> = (0..N)
            .map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap())
            .collect();
        for (i, p) in peers.iter_mut().enumerate() {
            p.write_all(&(i as u64).to_le_bytes()).unwrap();
        }
        for (i, p) in peers.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            p.read_exact(&mut b).unwrap();
            assert_eq!(u64::from_le_bytes(b), i as u64);
        }
        server.join().unwrap().unwrap();
    });
    kernel.shutdown().unwrap();
}

#[test]
fn a_socket_left_open_is_a_leak_and_use_after_close_is_a_bugcheck() {
    let kernel = boot(CallbackSchedule::Random);
    kernel
        .run("leak", || {
            let client = Client::register();
            client.socket(WSK_FLAG_CONNECTION_SOCKET).unwrap();
            std::mem::forget(client);
        })
        .unwrap();
    match kernel.shutdown() {
        Err(KernelError::Leaks(r)) => {
            assert!(
                r.leaks.iter().any(|l| l.kind == kemu::LeakKind::Socket),
                "{r}"
            );
            assert!(
                r.leaks
                    .iter()
                    .any(|l| l.kind == kemu::LeakKind::WskRegistration),
                "{r}"
            );
        }
        other => panic!("{other:?}"),
    }
    let kernel = boot(CallbackSchedule::Random);
    let r = kernel.run("use after close", || {
        let client = Client::register();
        let s = client.socket(WSK_FLAG_CONNECTION_SOCKET).unwrap();
        close(s);
        let b = Buffer::new(4);
        send(s, &b, 4)
    });
    match r {
        Err(KernelError::Bugcheck(b)) => assert_eq!(
            b.code,
            kemu::codes::DRIVER_VERIFIER_DETECTED_VIOLATION,
            "{b}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unsupported_kinds_and_event_callbacks_fail_clearly() {
    let kernel = boot(CallbackSchedule::Random);
    let (datagram, events) = kernel
        .run("unsupported", || {
            let client = Client::register();
            let datagram = client.socket(WSK_FLAG_DATAGRAM_SOCKET).unwrap_err();
            let (s, _) = listen(&client);
            let mut control = WSK_EVENT_CALLBACK_CONTROL {
                NpiId: &NPI_WSK_INTERFACE_ID,
                EventMask: WSK_EVENT_ACCEPT,
            };
            // SAFETY: a live listen socket; enabling events takes no IRP.
            let events = unsafe {
                listen_dispatch(s).Basic.WskControlSocket.unwrap()(
                    s.raw(),
                    WSK_SET_OPTION,
                    SO_WSK_EVENT_CALLBACK,
                    SOL_SOCKET,
                    16,
                    &mut control as *mut _ as *mut c_void,
                    0,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            close(s);
            client.finish();
            (datagram, events)
        })
        .unwrap();
    assert_eq!(datagram, STATUS_NOT_SUPPORTED);
    assert_eq!(events, STATUS_NOT_SUPPORTED);
    kernel.shutdown().unwrap();
}

#[test]
fn address_info_resolves_localhost_and_must_be_freed() {
    let kernel = boot(CallbackSchedule::Random);
    let addresses = kernel
        .run("resolve", || {
            let client = Client::register();
            let node: Vec<u16> = "localhost".encode_utf16().collect();
            let service: Vec<u16> = "443".encode_utf16().collect();
            let node = UNICODE_STRING {
                Length: (node.len() * 2) as u16,
                MaximumLength: (node.len() * 2) as u16,
                Buffer: node.as_ptr() as *mut u16,
            };
            let service = UNICODE_STRING {
                Length: (service.len() * 2) as u16,
                MaximumLength: (service.len() * 2) as u16,
                Buffer: service.as_ptr() as *mut u16,
            };
            let mut result: *mut ADDRINFOEXW = std::ptr::null_mut();
            let f = client.dispatch().WskGetAddressInfo.unwrap();
            // SAFETY: a captured client; the strings and out-pointer outlive the call.
            let (status, _) = call(|irp| unsafe {
                f(
                    client.npi.Client,
                    &node,
                    &service,
                    0,
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    &mut result,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    irp,
                )
            });
            assert_eq!(status, STATUS_SUCCESS);
            let mut found = Vec::new();
            let mut p = result;
            while !p.is_null() {
                // SAFETY: the provider's list.
                unsafe {
                    let a = (*p).ai_addr;
                    if (*a).sa_family as u32 == AF_INET {
                        found.push(SocketAddr::V4(from_sockaddr(&*(a as *const SOCKADDR_IN))));
                    }
                    p = (*p).ai_next;
                }
            }
            // SAFETY: the list WskGetAddressInfo returned, freed once.
            unsafe { client.dispatch().WskFreeAddressInfo.unwrap()(client.npi.Client, result) };
            client.finish();
            found
        })
        .unwrap();
    assert!(
        addresses.contains(&SocketAddr::from((Ipv4Addr::LOCALHOST, 443))),
        "{addresses:?}"
    );
    kernel.shutdown().unwrap();
}

#[test]
fn a_failed_socket_connect_leaves_no_socket_behind() {
    for schedule in SCHEDULES {
        let kernel = boot(schedule);
        let closed_port = {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let (status, information) = kernel
            .run("socket-connect", move || {
                let client = Client::register();
                let mut local = loopback(0);
                let mut remote = loopback(closed_port);
                let npi_client = client.npi.Client;
                let dispatch = client.dispatch();
                // SAFETY: a registered client; addresses outlive the call.
                let result = call(|irp| unsafe {
                    dispatch.WskSocketConnect.unwrap()(
                        npi_client,
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
                // WskDeregister returns only once no socket is left.
                client.finish();
                result
            })
            .unwrap();
        assert_eq!(
            (status, information),
            (STATUS_CONNECTION_REFUSED, 0),
            "{schedule:?}"
        );
        kernel
            .shutdown()
            .unwrap_or_else(|e| panic!("{schedule:?}: {e}"));
    }
}
