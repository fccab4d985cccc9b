//! Peers that misbehave, and owners that drop sessions at any moment: nothing leaks or hangs.

use super::*;

#[test]
fn peers_that_abort_mid_handshake_or_trickle_bytes_are_handled() {
    isolated(
        "hostile::peers_that_abort_mid_handshake_or_trickle_bytes_are_handled",
        || {
            let (kernel, pki) = boot("hostile");
            let thumbprint = pki.thumbprint;
            kernel
                .run("hostile", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let port = listener.local_port();
                    // 1. A peer that sends half a ClientHello and leaves.
                    let mut peer = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    peer.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                        .unwrap();
                    let server = changes.wait("an accepted session", || listener.next());
                    drop(peer);
                    let f = failure_of(&server, &changes).expect("a failure");
                    assert_eq!(f.status(), STATUS_CONNECTION_DISCONNECTED, "{f:?}");
                    drop(server);
                    // 2. Garbage instead of TLS that announces a long record and then stalls: either
                    //    Schannel rejects it at once or the handshake deadline (2 s here) ends it.
                    let mut peer = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    peer.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                        .unwrap();
                    let server = changes.wait("an accepted session", || listener.next());
                    let f = failure_of(&server, &changes).expect("a failure");
                    assert!(
                        f.status() == STATUS_TLS_FAILURE || f.status() == STATUS_IO_TIMEOUT,
                        "{f:?}"
                    );
                    drop(server);
                    drop(peer);
                    // 3. A peer that connects and says nothing: the deadline ends it.
                    let peer = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    let server = changes.wait("an accepted session", || listener.next());
                    let f = failure_of(&server, &changes).expect("a failure");
                    assert_eq!(f.status(), STATUS_IO_TIMEOUT, "{f:?}");
                    drop(server);
                    drop(peer);
                    // 4. A ktls client whose bytes reach the server one at a time is exercised by
                    //    the proxy below: every byte the client sends is forwarded alone.
                    let proxy = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
                    let proxy_port = proxy.local_addr().unwrap().port();
                    let forwarder = std::thread::spawn(move || {
                        let (mut from_client, _) = proxy.accept().unwrap();
                        let mut to_server =
                            std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                        to_server.set_nodelay(true).unwrap();
                        let mut back_client = from_client.try_clone().unwrap();
                        let mut back_server = to_server.try_clone().unwrap();
                        let reverse = std::thread::spawn(move || {
                            let _ = std::io::copy(&mut back_server, &mut back_client);
                            let _ = back_client.shutdown(std::net::Shutdown::Write);
                        });
                        let mut byte = [0u8; 1];
                        while let Ok(1) = from_client.read(&mut byte) {
                            if to_server.write_all(&byte).is_err() {
                                break;
                            }
                            std::thread::sleep(Duration::from_micros(50));
                        }
                        let _ = to_server.shutdown(std::net::Shutdown::Write);
                        reverse.join().unwrap();
                    });
                    let client = connect(
                        &provider,
                        client_credential(ALL, 0),
                        proxy_port,
                        "localhost",
                        b"",
                        &changes,
                    );
                    let server = changes.wait("an accepted session", || listener.next());
                    open(&client, &changes);
                    open(&server, &changes);
                    let data = pattern(3000, 7);
                    let got = echo(&client, &server, &changes, &data);
                    assert!(got == data, "trickled echo differs");
                    client.shutdown();
                    changes.wait("end of stream", || {
                        (server.recv(&mut [0u8; 1]) == Received::End).then_some(())
                    });
                    drop((client, server));
                    forwarder.join().unwrap();
                    finish(listener, &changes, provider);
                })
                .unwrap();
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn dropping_sessions_mid_handshake_and_mid_transfer_leaks_nothing() {
    isolated(
        "hostile::dropping_sessions_mid_handshake_and_mid_transfer_leaks_nothing",
        || {
            let (kernel, pki) = boot("drop");
            let thumbprint = pki.thumbprint;
            kernel
                .run("drop", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let credential = client_credential(ALL, 0);
                    // Handshakes abandoned at once, in flight.
                    for _ in 0..8 {
                        let c = connect(
                            &provider,
                            credential.clone(),
                            listener.local_port(),
                            "localhost",
                            b"",
                            &changes,
                        );
                        drop(c);
                    }
                    // A transfer abandoned halfway, from both sides.
                    let client = connect(
                        &provider,
                        credential.clone(),
                        listener.local_port(),
                        "localhost",
                        b"",
                        &changes,
                    );
                    open(&client, &changes);
                    // The listener, this client and its server side at least, all still live.
                    assert!(changes.1.live() >= 3, "census: {}", changes.1.live());
                    let big = pattern(512 * 1024, 3);
                    let mut sent = 0;
                    while sent < 200_000 {
                        sent += client.send(&big[sent..]).unwrap();
                    }
                    drop(client);
                    drop(credential);
                    // Whatever the listener accepted is dropped with it.
                    finish(listener, &changes, provider);
                })
                .unwrap();
            // Unload and the verifier's leak check run in shutdown.
            kernel.shutdown().unwrap();
        },
    );
}
