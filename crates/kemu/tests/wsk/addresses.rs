//! Addresses: IPv6 sockets and dual stack, refused and in-use endpoints, name resolution.

use super::*;

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

/// WskControlSocket without an IRP (the synchronous form): `value` in, the 4-byte result out.
fn control(s: Sock, request: i32, code: u32, level: u32, input: Option<u32>) -> (NTSTATUS, u32) {
    let mut value = input.unwrap_or(0);
    let mut out = u32::MAX;
    let mut returned = 0usize;
    let in_len = if input.is_some() { 4 } else { 2 };
    // SAFETY: a live connection socket; every buffer outlives the call.
    let status = unsafe {
        conn(s).Basic.WskControlSocket.unwrap()(
            s.raw(),
            request,
            code,
            level,
            in_len,
            &mut value as *mut u32 as *mut c_void,
            4,
            &mut out as *mut u32 as *mut c_void,
            &mut returned,
            std::ptr::null_mut(),
        )
    };
    (status, out)
}

#[test]
fn keepalive_and_nodelay_are_set_and_read_back_on_the_host_socket() {
    let kernel = boot(CallbackSchedule::Random);
    let (s, _peer, client) = connected_pair(&kernel);
    kernel
        .run("options", move || {
            for (code, level) in [(SO_KEEPALIVE, SOL_SOCKET), (TCP_NODELAY, IPPROTO_TCP)] {
                for on in [1u32, 0, 1] {
                    let set = control(s, WSK_SET_OPTION, code, level, Some(on));
                    assert_eq!(set.0, STATUS_SUCCESS, "set {code}={on}");
                    assert_eq!(
                        control(s, WSK_GET_OPTION, code, level, None),
                        (STATUS_SUCCESS, on),
                        "read back {code}"
                    );
                }
                assert_eq!(
                    control(s, WSK_SET_OPTION, code, level, None).0,
                    STATUS_INVALID_PARAMETER,
                    "a value shorter than a ULONG"
                );
            }
            close(s);
        })
        .unwrap();
    client.finish(&kernel);
    kernel.shutdown().unwrap();
}
