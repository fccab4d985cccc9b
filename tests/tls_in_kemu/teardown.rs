//! Pending requests cancelled, handles closed, the process gone and the driver unloaded with live
//! connections: each cleans up and leaks nothing.

use super::*;

#[test]
fn every_pending_request_kind_can_be_cancelled_and_handle_close_cleans_up() {
    isolated(
        "teardown::every_pending_request_kind_can_be_cancelled_and_handle_close_cleans_up",
        || {
            let (kernel, thumbprint) = boot();
            let a = open(&kernel);
            let b = open(&kernel);
            let listener = listen(&kernel, a, thumbprint, b"");
            // ACCEPT with nobody connecting: cancel.
            let accept = accept_async(&kernel, a, listener.id);
            std::thread::sleep(Duration::from_millis(20));
            assert!(!accept.is_complete());
            accept.cancel();
            assert_eq!(request_status(accept.wait(WAIT)), STATUS_CANCELLED);
            // A connection; RECV with nothing to read: cancel.
            let accept = accept_async(&kernel, a, listener.id);
            let client = info(connect_async(&kernel, b, listener.port, b"localhost", b""));
            let server = info(accept);
            let recv = recv_async(&kernel, b, client.id, 100);
            std::thread::sleep(Duration::from_millis(20));
            assert!(!recv.is_complete());
            recv.cancel();
            assert_eq!(status_of(recv.wait(WAIT)), STATUS_CANCELLED);
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
            connect.cancel();
            assert_eq!(request_status(connect.wait(WAIT)), STATUS_CANCELLED);
            // Closing a handle with parked requests completes them and releases its objects.
            let pending_recv = recv_async(&kernel, b, client.id, 100);
            let pending_accept = accept_async(&kernel, a, listener.id);
            std::thread::sleep(Duration::from_millis(20));
            kernel.close(b).unwrap();
            assert_eq!(status_of(pending_recv.wait(WAIT)), STATUS_CANCELLED);
            // The server side sees its peer go away: the end of the stream or a failure.
            let end = recv_async(&kernel, a, server.id, 100).wait(WAIT);
            assert!(
                end.as_ref().is_ok_and(|got| got.is_empty())
                    || end.as_ref().is_err_and(|e| e.status().is_some()),
                "after the client's handle closed: {end:?}"
            );
            kernel.close(a).unwrap();
            assert_eq!(request_status(pending_accept.wait(WAIT)), STATUS_CANCELLED);
            drop(silent);
            kernel.shutdown().unwrap();
        },
    );
}

/// Live connections with traffic queued, RECVs parked, a handshake in flight and an ACCEPT
/// waiting, on two handles.
struct Busy {
    a: Handle,
    b: Handle,
    recvs: Vec<PendingTransfer>,
    handshakes: Vec<PendingHandshake>,
}

fn busy(kernel: &Kernel, thumbprint: Thumbprint) -> Busy {
    let a = open(kernel);
    let b = open(kernel);
    let listener = listen(kernel, a, thumbprint, b"");
    let mut recvs = Vec::new();
    for _ in 0..4 {
        let accept = accept_async(kernel, a, listener.id);
        let client = info(connect_async(kernel, b, listener.port, b"localhost", b""));
        let _server = info(accept);
        assert_eq!(
            send(kernel, b, client.id, &pattern(MAX_SEND, 1)),
            STATUS_SUCCESS
        );
        recvs.push(recv_async(kernel, b, client.id, 1000));
    }
    let handshakes = vec![
        accept_async(kernel, a, listener.id),
        connect_async(kernel, b, listener.port, b"localhost", b""),
    ];
    Busy {
        a,
        b,
        recvs,
        handshakes,
    }
}

#[test]
fn process_exit_with_live_connections_then_unload_leaks_nothing() {
    isolated(
        "teardown::process_exit_with_live_connections_then_unload_leaks_nothing",
        || {
            let (kernel, thumbprint) = boot();
            let busy = busy(&kernel, thumbprint);
            // The process exits: both handles close with everything still open.
            kernel.close(busy.b).unwrap();
            kernel.close(busy.a).unwrap();
            let statuses = busy
                .recvs
                .into_iter()
                .map(|io| status_of(io.wait(WAIT)))
                .chain(
                    busy.handshakes
                        .into_iter()
                        .map(|io| request_status(io.wait(WAIT))),
                );
            for status in statuses {
                assert!(
                    status == STATUS_CANCELLED || status == STATUS_SUCCESS,
                    "{status:?}"
                );
            }
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn unload_with_open_handles_and_live_connections_leaks_nothing() {
    isolated(
        "teardown::unload_with_open_handles_and_live_connections_leaks_nothing",
        || {
            let (kernel, thumbprint) = boot();
            let _busy = busy(&kernel, thumbprint);
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
