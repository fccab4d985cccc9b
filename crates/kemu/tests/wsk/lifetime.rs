//! Sockets' and the client's lifetime: deregistration waits for sockets, leaks and use after
//! close are caught, failed connects leave nothing, unsupported requests fail clearly.

use super::*;

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
