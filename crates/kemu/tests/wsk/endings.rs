//! How a connection ends: graceful disconnect (FIN), abortive (RST), close without disconnect, a
//! peer's reset, and a pending receive cancelled.

use super::*;

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
