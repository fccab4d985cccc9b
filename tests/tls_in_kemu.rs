//! The driver's TLS IOCTLs, linked natively, in kemu: LISTEN/ACCEPT/CONNECT/SEND/RECV/SHUTDOWN/
//! CLOSE/STATS between handles, ownership of ids, cancellation of every kind of pending request,
//! handle close and unload with live connections — all ending with zero leaks.
//!
//! `WSKTLS_IMAGE=path/to/wsktls.sys` runs the same suite against the shipped image loaded by
//! kemu's PE loader (`cargo xtask test` does so for the debug and release images).

use std::time::Duration;

use kemu::testing::isolated;
use kemu::{Caller, Handle, Kernel, PendingIo, Thumbprint};
use ksys::ntdef::*;
use proto::session::*;

mod support;
use support::*;

#[test]
fn driver_server_and_client_echo_through_ioctls() {
    isolated("driver_server_and_client_echo_through_ioctls", || {
        let (kernel, thumbprint) = boot();
        let server_handle = open(&kernel);
        let client_handle = open(&kernel);
        let listener = listen(&kernel, server_handle, thumbprint, b"\x02h2");
        assert_ne!(listener.port, 0);
        let accept = accept_async(&kernel, server_handle, listener.id);
        let connect = connect_async(
            &kernel,
            client_handle,
            listener.port,
            b"localhost",
            b"\x02h2",
        );
        let client = info(connect);
        let server = info(accept);
        assert_eq!((client.status, client.sspi_status), (STATUS_SUCCESS.0, 0));
        assert_eq!(client.version, Some(TlsVersion::Tls13));
        assert_eq!(client.alpn(), b"h2");
        assert_eq!(server.alpn(), b"h2");
        assert_ne!(client.cipher_suite, 0);
        // Ids belong to the handle that made them.
        assert_eq!(
            id_call(&kernel, client_handle, IOCTL_WSKTLS_CLOSE, server.id),
            STATUS_INVALID_HANDLE
        );
        assert_eq!(
            send(&kernel, server_handle, client.id, b"x"),
            STATUS_INVALID_HANDLE
        );
        // Echo through the server, several sizes up to 256 KiB.
        for (i, len) in [1usize, 1000, 65536, 256 * 1024].into_iter().enumerate() {
            let data = pattern(len, i as u8);
            for chunk in data.chunks(MAX_SEND) {
                assert_eq!(
                    send(&kernel, client_handle, client.id, chunk),
                    STATUS_SUCCESS
                );
            }
            let at_server = recv_exact(&kernel, server_handle, server.id, len);
            assert!(at_server == data, "server received different bytes ({len})");
            for chunk in at_server.chunks(MAX_SEND) {
                assert_eq!(
                    send(&kernel, server_handle, server.id, chunk),
                    STATUS_SUCCESS
                );
            }
            let back = recv_exact(&kernel, client_handle, client.id, len);
            assert!(back == data, "client received different bytes ({len})");
        }
        let s = stats(&kernel, server_handle);
        assert_eq!((s.connections_open, s.listeners_open), (2, 1));
        assert!(s.handshakes_ok >= 2, "{s:?}");
        assert!(s.bytes_sent >= 2 * (1 + 1000 + 65536 + 256 * 1024), "{s:?}");
        assert!(s.pool_bytes > 0);
        // Graceful close: SHUTDOWN completes after close_notify and the disconnect; the server
        // then reads the end of the stream (0 bytes).
        assert_eq!(
            id_call(&kernel, client_handle, IOCTL_WSKTLS_SHUTDOWN, client.id),
            STATUS_SUCCESS
        );
        let end = recv_async(&kernel, server_handle, server.id, 16)
            .wait()
            .unwrap();
        assert_eq!((end.status, end.information), (STATUS_SUCCESS, 0));
        assert_eq!(
            id_call(&kernel, server_handle, IOCTL_WSKTLS_CLOSE, server.id),
            STATUS_SUCCESS
        );
        assert_eq!(
            id_call(&kernel, client_handle, IOCTL_WSKTLS_CLOSE, client.id),
            STATUS_SUCCESS
        );
        assert_eq!(
            id_call(&kernel, server_handle, IOCTL_WSKTLS_CLOSE, listener.id),
            STATUS_SUCCESS
        );
        assert_eq!(
            id_call(&kernel, server_handle, IOCTL_WSKTLS_CLOSE, listener.id),
            STATUS_INVALID_HANDLE,
            "closed ids are gone"
        );
        kernel.close(server_handle).unwrap();
        kernel.close(client_handle).unwrap();
        kernel.unload().unwrap();
        // Teardown never waits on the LSA: both contexts and both credentials were released
        // with the asynchronous calls.
        for (sync, asynchronous) in [
            ("DeleteSecurityContext", "SspiDeleteSecurityContextAsync"),
            ("FreeCredentialsHandle", "SspiFreeCredentialsHandleAsync"),
        ] {
            assert_eq!(
                (
                    kernel.sspi_release_calls(sync),
                    kernel.sspi_release_calls(asynchronous)
                ),
                (0, 2),
                "{sync} / {asynchronous}"
            );
        }
        kernel.shutdown().unwrap();
    });
}

#[test]
fn every_pending_request_kind_can_be_cancelled_and_handle_close_cleans_up() {
    isolated(
        "every_pending_request_kind_can_be_cancelled_and_handle_close_cleans_up",
        || {
            let (kernel, thumbprint) = boot();
            let a = open(&kernel);
            let b = open(&kernel);
            let listener = listen(&kernel, a, thumbprint, b"");
            // ACCEPT with nobody connecting: cancel.
            let accept = accept_async(&kernel, a, listener.id);
            std::thread::sleep(Duration::from_millis(20));
            assert!(!accept.is_complete());
            accept.cancel().unwrap();
            assert_eq!(accept.wait().unwrap().status, STATUS_CANCELLED);
            // A connection; RECV with nothing to read: cancel.
            let accept = accept_async(&kernel, a, listener.id);
            let client = info(connect_async(&kernel, b, listener.port, b"localhost", b""));
            let server = info(accept);
            let recv = recv_async(&kernel, b, client.id, 100);
            std::thread::sleep(Duration::from_millis(20));
            assert!(!recv.is_complete());
            recv.cancel().unwrap();
            assert_eq!(recv.wait().unwrap().status, STATUS_CANCELLED);
            // The connection still works after a cancelled RECV.
            assert_eq!(send(&kernel, a, server.id, b"still here"), STATUS_SUCCESS);
            assert_eq!(recv_exact(&kernel, b, client.id, 10), b"still here");
            // CONNECT to a listener that never answers ACCEPT... handshakes anyway (the listener
            // handshakes before ACCEPT); so cancel a CONNECT to a silent TCP server instead.
            let silent = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
            let silent_port = silent.local_addr().unwrap().port();
            let connect = connect_async(&kernel, b, silent_port, b"localhost", b"");
            std::thread::sleep(Duration::from_millis(50));
            assert!(!connect.is_complete());
            connect.cancel().unwrap();
            assert_eq!(connect.wait().unwrap().status, STATUS_CANCELLED);
            // Closing a handle with parked requests completes them and releases its objects.
            let pending_recv = recv_async(&kernel, b, client.id, 100);
            let pending_accept = accept_async(&kernel, a, listener.id);
            std::thread::sleep(Duration::from_millis(20));
            kernel.close(b).unwrap();
            assert_eq!(pending_recv.wait().unwrap().status, STATUS_CANCELLED);
            // The server side sees its peer go away.
            let end = recv_async(&kernel, a, server.id, 100).wait().unwrap();
            assert!(
                end.status != STATUS_SUCCESS || end.information == 0,
                "after the client's handle closed: {:#x} {}",
                end.status,
                end.information
            );
            kernel.close(a).unwrap();
            assert_eq!(pending_accept.wait().unwrap().status, STATUS_CANCELLED);
            drop(silent);
            kernel.shutdown().unwrap();
        },
    );
}

/// Live connections with traffic queued, RECVs parked, a handshake in flight and an ACCEPT
/// waiting, on two handles.
fn busy(kernel: &Kernel, thumbprint: Thumbprint) -> (Handle, Handle, Vec<PendingIo>) {
    let a = open(kernel);
    let b = open(kernel);
    let listener = listen(kernel, a, thumbprint, b"");
    let mut pending = Vec::new();
    for _ in 0..4 {
        let accept = accept_async(kernel, a, listener.id);
        let client = info(connect_async(kernel, b, listener.port, b"localhost", b""));
        let _server = info(accept);
        assert_eq!(
            send(kernel, b, client.id, &pattern(MAX_SEND, 1)),
            STATUS_SUCCESS
        );
        pending.push(recv_async(kernel, b, client.id, 1000));
    }
    pending.push(accept_async(kernel, a, listener.id));
    pending.push(connect_async(kernel, b, listener.port, b"localhost", b""));
    (a, b, pending)
}

#[test]
fn process_exit_with_live_connections_then_unload_leaks_nothing() {
    isolated(
        "process_exit_with_live_connections_then_unload_leaks_nothing",
        || {
            let (kernel, thumbprint) = boot();
            let (a, b, pending) = busy(&kernel, thumbprint);
            // The process exits: both handles close with everything still open.
            kernel.close(b).unwrap();
            kernel.close(a).unwrap();
            for io in pending {
                let r = io
                    .wait_timeout(Duration::from_secs(30))
                    .unwrap()
                    .expect("completes");
                assert!(
                    r.status == STATUS_CANCELLED || r.status == STATUS_SUCCESS,
                    "{:#x}",
                    r.status
                );
            }
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn unload_with_open_handles_and_live_connections_leaks_nothing() {
    isolated(
        "unload_with_open_handles_and_live_connections_leaks_nothing",
        || {
            let (kernel, thumbprint) = boot();
            let (_a, _b, _pending) = busy(&kernel, thumbprint);
            // `sc stop` while a process still holds both handles: the driver aborts everything,
            // WskDeregister returns, and the only things left are the caller's two handles (which
            // Windows would keep the driver loaded for).
            match kernel.shutdown() {
                Err(kemu::KernelError::Leaks(report)) => {
                    assert_eq!(report.leaks.len(), 2, "{report:?}");
                    assert!(
                        report
                            .leaks
                            .iter()
                            .all(|l| l.kind == kemu::LeakKind::Handle),
                        "{report:?}"
                    );
                }
                other => panic!("expected exactly the two open handles to be reported: {other:?}"),
            }
        },
    );
}

#[test]
fn malformed_and_unauthorised_requests_change_nothing() {
    isolated("malformed_and_unauthorised_requests_change_nothing", || {
        let (kernel, thumbprint) = boot();
        let h = open(&kernel);
        let call =
            |code: u32, input: &[u8], out: usize| kernel.ioctl(h, code, input, out).unwrap().status;
        // LISTEN: short, wrong magic, unknown certificate, output too small.
        assert_eq!(
            call(IOCTL_WSKTLS_LISTEN, &[1, 2, 3], 64),
            STATUS_BUFFER_TOO_SMALL
        );
        let mut good = vec![0u8; ListenRequest::FIXED];
        let n = ListenRequest {
            endpoint: Endpoint::loopback_v4(0),
            thumbprint: thumbprint.0,
            versions: VersionRange::ALL,
            require_client_certificate: false,
            alpn: b"",
        }
        .encode(&mut good)
        .unwrap();
        let mut bad_magic = good[..n].to_vec();
        bad_magic[0] ^= 0xFF;
        assert_eq!(
            call(IOCTL_WSKTLS_LISTEN, &bad_magic, 64),
            STATUS_REVISION_MISMATCH
        );
        let mut unknown = vec![0u8; ListenRequest::FIXED];
        let m = ListenRequest {
            endpoint: Endpoint::loopback_v4(0),
            thumbprint: [0xAB; 20],
            versions: VersionRange::ALL,
            require_client_certificate: false,
            alpn: b"",
        }
        .encode(&mut unknown)
        .unwrap();
        assert_eq!(
            call(IOCTL_WSKTLS_LISTEN, &unknown[..m], 64),
            STATUS_NOT_FOUND
        );
        assert_eq!(
            call(IOCTL_WSKTLS_LISTEN, &good[..n], 4),
            STATUS_BUFFER_TOO_SMALL
        );
        // Unknown ids, id 0, oversized and empty requests.
        for code in [
            IOCTL_WSKTLS_ACCEPT,
            IOCTL_WSKTLS_SHUTDOWN,
            IOCTL_WSKTLS_CLOSE,
            IOCTL_WSKTLS_PEER_CERTIFICATES,
        ] {
            assert_eq!(
                call(code, &IdRequest { id: 777 }.encode(), ConnectionInfo::SIZE),
                STATUS_INVALID_HANDLE,
                "{code:#x}"
            );
            assert_eq!(
                call(code, &[], ConnectionInfo::SIZE),
                STATUS_BUFFER_TOO_SMALL,
                "{code:#x}"
            );
        }
        assert_eq!(
            call(
                IOCTL_WSKTLS_RECV,
                &RecvRequest { id: 777, max: 10 }.encode(),
                10
            ),
            STATUS_INVALID_HANDLE
        );
        assert_eq!(
            call(
                IOCTL_WSKTLS_RECV,
                &RecvRequest { id: 777, max: 10 }.encode(),
                0
            ),
            STATUS_BUFFER_TOO_SMALL
        );
        // SEND: the header is the input, the payload the (direct) output buffer.
        let header = SendRequest { id: 777 }.encode();
        assert_eq!(
            call(IOCTL_WSKTLS_SEND, &header, MAX_SEND + 1),
            STATUS_INVALID_BUFFER_SIZE,
            "a payload over MAX_SEND"
        );
        assert_eq!(
            call(IOCTL_WSKTLS_SEND, &header, 0),
            STATUS_INVALID_PARAMETER,
            "an empty payload"
        );
        assert_eq!(call(IOCTL_WSKTLS_SEND, &header, 10), STATUS_INVALID_HANDLE);
        assert_eq!(
            call(IOCTL_WSKTLS_SEND, &[header.as_slice(), &[0]].concat(), 10),
            STATUS_INVALID_BUFFER_SIZE,
            "a longer header"
        );
        assert_eq!(
            call(IOCTL_WSKTLS_STATS, &[0], Stats::SIZE),
            STATUS_INVALID_BUFFER_SIZE
        );
        assert_eq!(call(IOCTL_WSKTLS_STATS, &[], 8), STATUS_BUFFER_TOO_SMALL);
        // CONNECT: an unspecified address needs a host name to resolve.
        let mut unresolved = ConnectRequest {
            endpoint: Endpoint::loopback_v4(443),
            host: b"",
            sni: b"",
            alpn: b"",
            versions: VersionRange::ALL,
            validation: Validation::SystemRoots,
            client_certificate: None,
            keep_peer_certificates: false,
        };
        unresolved.endpoint.ip = [0; 16];
        let mut buf = vec![0u8; ConnectRequest::FIXED];
        let n = unresolved.encode(&mut buf).unwrap();
        assert_eq!(
            call(IOCTL_WSKTLS_CONNECT, &buf[..n], ConnectionInfo::SIZE),
            STATUS_INVALID_PARAMETER
        );
        // Nothing was created by any of it.
        let s = stats(&kernel, h);
        assert_eq!(
            (s.connections_open, s.listeners_open, s.pending_operations),
            (0, 0, 0)
        );
        // A caller that is not an administrator cannot open the device at all.
        assert!(kernel.open(DEVICE_PATH, Caller::User).is_err());
        kernel.close(h).unwrap();
        kernel.shutdown().unwrap();
    });
}

#[test]
fn pinned_connects_report_the_peer_certificate_and_refuse_other_certificates() {
    isolated(
        "pinned_connects_report_the_peer_certificate_and_refuse_other_certificates",
        || {
            let (kernel, thumbprint) = boot();
            let digest = *SERVER_DIGEST.lock().unwrap();
            let a = open(&kernel);
            let b = open(&kernel);
            let listener = listen(&kernel, a, thumbprint, b"");
            let accept = accept_async(&kernel, a, listener.id);
            let pinned =
                connect_request(listener.port, b"any.name", b"", Validation::Pinned(digest));
            let good = info(
                kernel
                    .ioctl_async(b, IOCTL_WSKTLS_CONNECT, &pinned, ConnectionInfo::SIZE)
                    .unwrap(),
            );
            assert_eq!(good.peer_certificate, Some(digest));
            let server = info(accept);
            assert_eq!(
                server.peer_certificate, None,
                "the client sent no certificate"
            );
            let mut other = digest;
            other[31] ^= 0x80;
            let wrong =
                connect_request(listener.port, b"localhost", b"", Validation::Pinned(other));
            let bad = info(
                kernel
                    .ioctl_async(b, IOCTL_WSKTLS_CONNECT, &wrong, ConnectionInfo::SIZE)
                    .unwrap(),
            );
            // A failed handshake completes CONNECT with the failure inside ConnectionInfo; a
            // pin mismatch has its own NTSTATUS (not an untrusted chain's).
            assert_eq!(
                (bad.status, bad.sspi_status),
                (
                    ktls::STATUS_PIN_MISMATCH.0,
                    ksys::sspi::SEC_E_UNTRUSTED_ROOT.0
                )
            );
            assert_eq!(
                id_call(&kernel, b, IOCTL_WSKTLS_CLOSE, bad.id),
                STATUS_SUCCESS
            );
            let s = stats(&kernel, a);
            assert!(s.handshakes_failed >= 1, "{s:?}");
            kernel.close(a).unwrap();
            kernel.close(b).unwrap();
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn connect_by_host_name_resolves_it() {
    isolated("connect_by_host_name_resolves_it", || {
        let (kernel, thumbprint) = boot();
        let a = open(&kernel);
        let b = open(&kernel);
        let listener = listen(&kernel, a, thumbprint, b"");
        let accept = accept_async(&kernel, a, listener.id);
        let mut request = ConnectRequest {
            endpoint: Endpoint::loopback_v4(listener.port),
            host: b"localhost",
            sni: b"",
            alpn: b"",
            versions: VersionRange::ALL,
            validation: Validation::SystemRoots,
            client_certificate: None,
            keep_peer_certificates: false,
        };
        request.endpoint.ip = [0; 16];
        let mut buf = vec![0u8; ConnectRequest::FIXED + 9];
        let n = request.encode(&mut buf).unwrap();
        let client = info(
            kernel
                .ioctl_async(b, IOCTL_WSKTLS_CONNECT, &buf[..n], ConnectionInfo::SIZE)
                .unwrap(),
        );
        let server = info(accept);
        assert_eq!(client.status, STATUS_SUCCESS.0);
        assert_eq!(send(&kernel, b, client.id, b"by name"), STATUS_SUCCESS);
        assert_eq!(recv_exact(&kernel, a, server.id, 7), b"by name");
        kernel.close(a).unwrap();
        kernel.close(b).unwrap();
        kernel.shutdown().unwrap();
    });
}

#[test]
fn send_and_shutdown_pend_on_a_full_queue_and_can_be_cancelled() {
    isolated(
        "send_and_shutdown_pend_on_a_full_queue_and_can_be_cancelled",
        || {
            let (kernel, a, b, client, _server) = connected_pair();
            // The server never reads: the client's queue (1 MiB) fills after the receive window
            // and the socket buffers, and a SEND then waits.
            let chunk = pattern(MAX_SEND, 5);
            let header = SendRequest { id: client.id }.encode();
            // Nothing moves any more once the socket buffers and the server's receive window
            // are full behind the queue (on a busy machine that takes a while).
            let settle = || {
                let mut moved = stats(&kernel, a).bytes_sent;
                for _ in 0..100 {
                    std::thread::sleep(Duration::from_millis(300));
                    let now = stats(&kernel, a).bytes_sent;
                    if now == moved {
                        return;
                    }
                    moved = now;
                }
            };
            let mut parked = None;
            for _ in 0..2000 {
                let io = kernel
                    .ioctl_async_with(b, IOCTL_WSKTLS_SEND, &header, chunk.clone())
                    .unwrap();
                if io
                    .wait_timeout(Duration::from_millis(300))
                    .unwrap()
                    .is_none()
                {
                    settle();
                    if !io.is_complete() {
                        parked = Some(io);
                        break;
                    }
                }
                // It found room (maybe while everything settled).
                assert_eq!(io.wait().unwrap().status, STATUS_SUCCESS);
            }
            let send = parked.expect("a SEND pends once the queue is full");
            assert_eq!(stats(&kernel, a).pending_operations, 1);
            send.cancel().unwrap();
            assert_eq!(send.wait().unwrap().status, STATUS_CANCELLED);
            // SHUTDOWN waits for the queue to drain, which it cannot: cancel it too.
            let shutdown = kernel
                .ioctl_async(
                    b,
                    IOCTL_WSKTLS_SHUTDOWN,
                    &IdRequest { id: client.id }.encode(),
                    0,
                )
                .unwrap();
            assert!(
                shutdown
                    .wait_timeout(Duration::from_millis(300))
                    .unwrap()
                    .is_none()
            );
            shutdown.cancel().unwrap();
            assert_eq!(shutdown.wait().unwrap().status, STATUS_CANCELLED);
            assert_eq!(stats(&kernel, a).pending_operations, 0);
            kernel.close(a).unwrap();
            kernel.close(b).unwrap();
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn sends_and_receives_in_flight_together_keep_their_order() {
    isolated(
        "sends_and_receives_in_flight_together_keep_their_order",
        || {
            let (kernel, a, b, client, server) = connected_pair();
            // The server does not read yet: SENDs of 64 KiB (distinct contents, so overtaking
            // shows) until seven wait for room together — the client's queue, the server's
            // receive window and the socket buffers are full.
            let send_async = |k: usize| {
                let chunk = pattern(MAX_SEND, k as u8);
                let io = kernel
                    .ioctl_async_with(
                        b,
                        IOCTL_WSKTLS_SEND,
                        &SendRequest { id: client.id }.encode(),
                        chunk.clone(),
                    )
                    .unwrap();
                (chunk, io)
            };
            // Issued without waiting: each SEND that fits completes at once, and once the
            // queue is full they wait — until seven wait together (room that opens meanwhile
            // only means more SENDs).
            let mut chunks = Vec::new();
            let mut sends = Vec::new();
            let mut most_waiting = 0;
            while sends.len() < 2000 && most_waiting < 7 {
                let (chunk, io) = send_async(chunks.len());
                chunks.push(chunk);
                sends.push(io);
                most_waiting = most_waiting.max(stats(&kernel, a).pending_operations);
            }
            assert!(most_waiting >= 7, "seven SENDs never waited together");
            // The server keeps four RECVs in flight and takes their results in the order it
            // issued them, as an overlapped reader does.
            let expected: Vec<u8> = chunks.concat();
            let mut received = Vec::with_capacity(expected.len());
            let mut in_flight: std::collections::VecDeque<PendingIo> = (0..4)
                .map(|_| recv_async(&kernel, a, server.id, 48 * 1024))
                .collect();
            while received.len() < expected.len() {
                let r = in_flight
                    .pop_front()
                    .unwrap()
                    .wait_timeout(Duration::from_secs(30))
                    .unwrap()
                    .expect("RECV completes");
                assert_eq!(r.status, STATUS_SUCCESS, "RECV: {:#x}", r.status);
                assert!(r.information > 0, "end of stream at {}", received.len());
                received.extend_from_slice(&r.output[..r.information]);
                if received.len() < expected.len() {
                    in_flight.push_back(recv_async(&kernel, a, server.id, 48 * 1024));
                }
            }
            for (k, send) in sends.into_iter().enumerate() {
                let r = send
                    .wait_timeout(Duration::from_secs(30))
                    .unwrap()
                    .expect("SEND completes");
                assert_eq!(r.status, STATUS_SUCCESS, "SEND {k}: {:#x}", r.status);
            }
            if let Some(at) = (0..expected.len()).find(|&i| received.get(i) != Some(&expected[i])) {
                panic!(
                    "the stream differs at byte {at} (in SEND {}): requests overtook one another",
                    at / MAX_SEND
                );
            }
            assert_eq!(received.len(), expected.len());
            // The RECVs still in flight end with the connection.
            assert_eq!(
                id_call(&kernel, a, IOCTL_WSKTLS_CLOSE, server.id),
                STATUS_SUCCESS
            );
            for io in in_flight {
                let r = io.wait_timeout(Duration::from_secs(30)).unwrap().unwrap();
                assert_eq!(r.status, STATUS_CANCELLED);
            }
            kernel.close(a).unwrap();
            kernel.close(b).unwrap();
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn connection_limits_come_from_the_registry_are_reported_and_enforced() {
    isolated(
        "connection_limits_come_from_the_registry_are_reported_and_enforced",
        || {
            let (kernel, thumbprint) =
                boot_with_parameters(&[("MaxConnections", 3), ("maxconnectionsperhandle", 2)]);
            let a = open(&kernel);
            let b = open(&kernel);
            let s = stats(&kernel, a);
            assert_eq!(
                (s.max_connections, s.max_connections_per_handle),
                (3, 2),
                "{s:?}"
            );
            let listen_status = |h| {
                let request = ListenRequest {
                    endpoint: Endpoint::loopback_v4(0),
                    thumbprint: thumbprint.0,
                    versions: VersionRange::ALL,
                    require_client_certificate: false,
                    alpn: b"",
                };
                let mut buf = vec![0u8; ListenRequest::FIXED];
                let n = request.encode(&mut buf).unwrap();
                let r = kernel
                    .ioctl(h, IOCTL_WSKTLS_LISTEN, &buf[..n], ListenResponse::SIZE)
                    .unwrap();
                (r.status == STATUS_SUCCESS)
                    .then(|| {
                        ListenResponse::decode(&r.output[..r.information])
                            .unwrap()
                            .id
                    })
                    .ok_or(r.status)
            };
            let first = listen_status(a).unwrap();
            listen_status(a).unwrap();
            assert_eq!(listen_status(a), Err(STATUS_QUOTA_EXCEEDED), "per handle");
            listen_status(b).unwrap();
            assert_eq!(listen_status(b), Err(STATUS_QUOTA_EXCEEDED), "in all");
            // A CONNECT at the limit fails the same way, before any connection is made.
            let connect = connect_async(&kernel, b, 1, b"localhost", b"")
                .wait_timeout(Duration::from_secs(30))
                .unwrap()
                .expect("completes");
            assert_eq!(connect.status, STATUS_QUOTA_EXCEEDED);
            assert_eq!(
                id_call(&kernel, a, IOCTL_WSKTLS_CLOSE, first),
                STATUS_SUCCESS
            );
            listen_status(b).unwrap();
            kernel.close(a).unwrap();
            kernel.close(b).unwrap();
            kernel.shutdown().unwrap();

            // Values that make no sense leave the defaults.
            let (kernel, _) = boot_with_parameters(&[("MaxConnections", 0)]);
            let h = open(&kernel);
            let s = stats(&kernel, h);
            assert_eq!(
                (s.max_connections, s.max_connections_per_handle),
                (16_384, 16_384)
            );
            kernel.close(h).unwrap();
            kernel.shutdown().unwrap();
        },
    );
}

fn listen_request(thumbprint: [u8; 20]) -> Vec<u8> {
    let request = ListenRequest {
        endpoint: Endpoint::loopback_v4(0),
        thumbprint,
        versions: VersionRange::ALL,
        require_client_certificate: false,
        alpn: b"",
    };
    let mut buf = vec![0u8; ListenRequest::FIXED];
    let n = request.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn credential_acquisition_never_blocks_a_caller_and_can_fail_or_be_cancelled_while_pending() {
    isolated(
        "credential_acquisition_never_blocks_a_caller_and_can_fail_or_be_cancelled_while_pending",
        || {
            // The LSA takes 3 s over every acquisition.
            let (kernel, thumbprint) = boot_with(&[], |config| {
                config.faults.credential_delay = Duration::from_secs(3);
            });
            let h = open(&kernel);
            // LISTEN returns to its caller pending while the credential is acquired (a
            // dispatch routine that waited would have completed it before returning)...
            let pending_listen = kernel
                .ioctl_async(
                    h,
                    IOCTL_WSKTLS_LISTEN,
                    &listen_request(thumbprint.0),
                    ListenResponse::SIZE,
                )
                .unwrap();
            assert!(!pending_listen.is_complete(), "LISTEN waited for the LSA");
            // ... as does a CONNECT that needs a client credential.
            let connect = connect_async(&kernel, h, 9, b"localhost", b"");
            assert!(!connect.is_complete(), "CONNECT waited for the LSA");
            let s = stats(&kernel, h);
            assert_eq!(s.pending_operations, 2, "{s:?}");
            // Both can be cancelled while the LSA still works: they complete at once and leave
            // nothing behind.
            assert!(pending_listen.cancel().unwrap());
            assert!(connect.cancel().unwrap());
            for io in [pending_listen, connect] {
                let r = io
                    .wait_timeout(Duration::from_secs(1))
                    .unwrap()
                    .expect("a cancelled request completes at once");
                assert_eq!(r.status, STATUS_CANCELLED);
            }
            let s = stats(&kernel, h);
            assert_eq!(
                (s.connections_open, s.listeners_open, s.pending_operations),
                (0, 0, 0),
                "{s:?}"
            );
            // A certificate that is not in the store fails through the same path, precisely,
            // and leaves no listener behind.
            let unknown = kernel
                .ioctl(
                    h,
                    IOCTL_WSKTLS_LISTEN,
                    &listen_request([0x5A; 20]),
                    ListenResponse::SIZE,
                )
                .unwrap();
            assert_eq!(unknown.status, STATUS_NOT_FOUND);
            // And a LISTEN left to finish listens.
            let listener = listen(&kernel, h, thumbprint, b"");
            assert_ne!(listener.port, 0);
            let s = stats(&kernel, h);
            assert_eq!((s.listeners_open, s.pending_operations), (1, 0), "{s:?}");
            kernel.close(h).unwrap();
            // Unload waits for the abandoned acquisitions to finish and frees their credentials.
            kernel.shutdown().unwrap();
        },
    );
}
