//! Against peers no one here wrote: openssl s_client/s_server (key updates, tickets, a tampered
//! record), curl, gnutls.

use super::*;

#[test]
fn driver_server_with_openssl_s_client() {
    isolated("peers::driver_server_with_openssl_s_client", || {
        let (kernel, pki) = boot("s_client");
        for flag in ["-tls1_3", "-tls1_2"] {
            let ca = pki.path("ca.pem");
            let thumbprint = pki.thumbprint;
            let output = kernel
                .run("server", move || {
                    let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
                    let changes = Changes::new();
                    let listener = listen(
                        &provider,
                        server_credential(thumbprint),
                        b"\x02h2",
                        &changes,
                    );
                    let mut command = Command::new("openssl");
                    command.args([
                        "s_client",
                        "-connect",
                        &format!("127.0.0.1:{}", listener.local_port()),
                        "-CAfile",
                        &ca,
                        "-servername",
                        "localhost",
                        "-verify_return_error",
                        "-verify_hostname",
                        "localhost",
                        "-alpn",
                        "h2",
                        flag,
                        "-quiet",
                    ]);
                    let child = spawn_peer(command, b"hello from openssl\n");
                    let server = changes.wait("an accepted session", || listener.next());
                    open(&server, &changes);
                    assert_eq!(server.negotiated().unwrap().alpn(), b"h2");
                    let line = recv_line(&server, &changes);
                    assert_eq!(line, b"hello from openssl\n");
                    let mut reply = b"echo: ".to_vec();
                    reply.extend_from_slice(&line);
                    assert_eq!(server.send(&reply), Ok(reply.len()));
                    server.shutdown();
                    wait_shut_down(&server, &changes);
                    let output = collect(child);
                    drop(server);
                    finish(listener, &changes, provider);
                    output
                })
                .unwrap();
            assert!(
                output.contains("echo: hello from openssl"),
                "{flag}: {output}"
            );
        }
        kernel.shutdown().unwrap();
    });
}

#[test]
fn a_key_update_from_openssl_is_answered_and_the_records_behind_it_are_read() {
    isolated(
        "peers::a_key_update_from_openssl_is_answered_and_the_records_behind_it_are_read",
        || {
            let (kernel, pki) = boot("key_update");
            let ca = pki.path("ca.pem");
            let thumbprint = pki.thumbprint;
            let output = kernel
                .run("server", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    // Without -quiet, s_client takes an input chunk starting with "K" as "send a
                    // KeyUpdate that asks for one back"; OpenSSL sends the KeyUpdate with its next
                    // write, so the data line that follows arrives right behind it.
                    let mut command = Command::new("openssl");
                    command.args([
                        "s_client",
                        "-connect",
                        &format!("127.0.0.1:{}", listener.local_port()),
                        "-CAfile",
                        &ca,
                        "-servername",
                        "localhost",
                        "-verify_return_error",
                        "-tls1_3",
                    ]);
                    let mut child = spawn_peer(command, b"K\n");
                    // s_client takes the rest of a chunk that starts with "K" as part of the
                    // command: the data line goes in only once it said KEYUPDATE.
                    let (stderr, reader) = collect_pipe(child.stderr.take().unwrap());
                    let server = changes.wait("an accepted session", || listener.next());
                    open(&server, &changes);
                    changes.wait("s_client's KEYUPDATE", || {
                        String::from_utf8_lossy(&stderr.lock().unwrap())
                            .contains("KEYUPDATE")
                            .then_some(())
                    });
                    let stdin = child.stdin.as_mut().unwrap();
                    if let Err(e) = stdin
                        .write_all(b"after the key update\n")
                        .and_then(|()| stdin.flush())
                    {
                        panic!("s_client is gone ({e}): {}", collect(child));
                    }
                    let line = recv_line(&server, &changes);
                    assert_eq!(line, b"after the key update\n");
                    let mut reply = b"echo: ".to_vec();
                    reply.extend_from_slice(&line);
                    assert_eq!(server.send(&reply), Ok(reply.len()));
                    server.shutdown();
                    wait_shut_down(&server, &changes);
                    let mut output = collect(child);
                    reader.join().unwrap();
                    output.push_str(&String::from_utf8_lossy(&stderr.lock().unwrap()));
                    drop(server);
                    finish(listener, &changes, provider);
                    output
                })
                .unwrap();
            assert!(output.contains("KEYUPDATE"), "{output}");
            assert!(output.contains("echo: after the key update"), "{output}");
            kernel.shutdown().unwrap();
        },
    );
}

/// A driver client holds a long TLS 1.3 conversation with openssl s_server, which issues five
/// tickets and then KeyUpdates (asking for one back, and not) between lines both ways. Each
/// ticket and KeyUpdate reaches the client as SEC_I_RENEGOTIATE, answered with ISC over the
/// EXTRA; a client that passed an empty input, or skipped the messages, stalls or fails here.
#[test]
fn a_long_conversation_with_tickets_and_key_updates_from_s_server() {
    isolated(
        "peers::a_long_conversation_with_tickets_and_key_updates_from_s_server",
        || {
            let (kernel, pki) = boot("s_server_key_updates");
            let port = free_port();
            let mut command = Command::new("openssl");
            command.args([
                "s_server",
                "-accept",
                &format!("127.0.0.1:{port}"),
                "-cert",
                &pki.path("chain.pem"),
                "-key",
                &pki.path("key.pem"),
                "-tls1_3",
                "-num_tickets",
                "5",
            ]);
            let mut server = spawn_peer(command, b"");
            let (printed, reader) = collect_pipe(server.stdout.take().unwrap());
            wait_listening(port);
            let mut stdin = server.stdin.take().unwrap();
            let seen = printed.clone();
            let lines = kernel
                .run("client", move || {
                    let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
                    let changes = Changes::new();
                    let versions = Versions {
                        tls12: false,
                        tls13: true,
                    };
                    let client = connect(
                        &provider,
                        client_credential(versions, 0),
                        port,
                        "localhost",
                        b"",
                        &changes,
                    );
                    open(&client, &changes);
                    // The five tickets come right after the handshake; the first line's echo
                    // at s_server means they are all in.
                    let tickets = 5;
                    let printed_count = |needle: &str| {
                        String::from_utf8_lossy(&seen.lock().unwrap())
                            .matches(needle)
                            .count()
                    };
                    let mut received = Vec::new();
                    for round in 1..=6 {
                        let line = format!("client line {round}\n");
                        assert_eq!(client.send(line.as_bytes()), Ok(line.len()));
                        changes.wait("s_server printing the client's line", || {
                            (printed_count(line.trim_end()) == 1).then_some(())
                        });
                        if round == 1 {
                            changes.wait("five tickets", || {
                                (client.counters().post_handshake_messages == tickets).then_some(())
                            });
                        }
                        // s_server takes a line of one letter as a command: K asks for a
                        // KeyUpdate back, k does not.
                        let command = if round % 2 == 1 { "K\n" } else { "k\n" };
                        stdin.write_all(command.as_bytes()).unwrap();
                        stdin.flush().unwrap();
                        // The next line goes only once the KeyUpdate reached the client (in one
                        // read with the command, s_server would send both as data).
                        changes.wait("the KeyUpdate at the client", || {
                            let answered = client.counters().post_handshake_messages;
                            (answered == tickets + round as u64).then_some(())
                        });
                        let reply = format!("server line {round}\n");
                        stdin.write_all(reply.as_bytes()).unwrap();
                        stdin.flush().unwrap();
                        received.push(String::from_utf8(recv_line(&client, &changes)).unwrap());
                        assert_eq!(client.state(), State::Open, "round {round}");
                    }
                    client.shutdown();
                    wait_shut_down(&client, &changes);
                    drop(client);
                    drop(provider);
                    received
                })
                .unwrap();
            let _ = server.kill();
            let _ = server.wait();
            reader.join().unwrap();
            let expected: Vec<String> = (1..=6).map(|r| format!("server line {r}\n")).collect();
            assert_eq!(
                lines,
                expected,
                "{}",
                String::from_utf8_lossy(&printed.lock().unwrap())
            );
            kernel.shutdown().unwrap();
        },
    );
}

/// A peer (rustls over a host socket) that completes the handshake and then sends a record with
/// a broken tag: the ktls server answers with the fatal alert that names the error
/// (bad_record_mac, written with EncryptMessage(SECQOP_WRAP_OOB_DATA)) and a FIN, waits for the
/// peer's FIN and closes — no reset that could drop the alert.
#[test]
fn a_record_with_a_bad_tag_gets_the_alert_and_a_fin_not_a_reset() {
    isolated(
        "peers::a_record_with_a_bad_tag_gets_the_alert_and_a_fin_not_a_reset",
        || {
            let (kernel, pki) = boot("bad_tag");
            let thumbprint = pki.thumbprint;
            let ca = pem::parse(std::fs::read(pki.path("ca.pem")).unwrap()).unwrap();
            let ca = ca.contents().to_vec();
            let (failure, alert, ending) = kernel
                .run("server", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let port = listener.local_port();
                    let peer = std::thread::spawn(move || tampering_peer(port, ca));
                    let server = changes.wait("an accepted session", || listener.next());
                    // The tampered record may arrive with the client's Finished: the session
                    // can fail before anyone sees it open.
                    let failure = failure_of(&server, &changes);
                    let (alert, ending) = peer.join().unwrap();
                    drop(server);
                    finish(listener, &changes, provider);
                    (failure, alert, ending)
                })
                .unwrap();
            assert_eq!(
                failure.map(|f| f.sspi()),
                Some(ksys::sspi::SEC_E_MESSAGE_ALTERED)
            );
            assert_eq!(
                alert,
                Some(rustls::AlertDescription::BadRecordMac),
                "{ending}"
            );
            assert_eq!(ending, "FIN");
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn driver_client_with_openssl_s_server() {
    isolated("peers::driver_client_with_openssl_s_server", || {
        let (kernel, pki) = boot("s_server");
        for (flag, versions, protocol) in [
            (
                "-tls1_3",
                Versions {
                    tls12: false,
                    tls13: true,
                },
                SP_PROT_TLS1_3_CLIENT,
            ),
            (
                "-tls1_2",
                Versions {
                    tls12: true,
                    tls13: false,
                },
                SP_PROT_TLS1_2_CLIENT,
            ),
        ] {
            let port = free_port();
            let mut server = Command::new("openssl")
                .args([
                    "s_server",
                    "-accept",
                    &format!("127.0.0.1:{port}"),
                    "-cert",
                    &pki.path("chain.pem"),
                    "-key",
                    &pki.path("key.pem"),
                    "-www",
                    "-alpn",
                    "http/1.1",
                    flag,
                    "-quiet",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("openssl s_server");
            wait_listening(port);
            let (response, negotiated) = kernel
                .run("client", move || {
                    let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
                    let changes = Changes::new();
                    let client = connect(
                        &provider,
                        client_credential(versions, 0),
                        port,
                        "localhost",
                        b"\x08http/1.1",
                        &changes,
                    );
                    open(&client, &changes);
                    let request = b"GET / HTTP/1.0\r\n\r\n";
                    assert_eq!(client.send(request), Ok(request.len()));
                    let mut response = Vec::new();
                    let mut buf = [0u8; 4096];
                    changes.wait("the response", || {
                        loop {
                            match client.recv(&mut buf) {
                                Received::Data(n) => response.extend_from_slice(&buf[..n]),
                                Received::Pending => return None,
                                Received::End => return Some(()),
                                Received::Failed(f) => panic!("{f:?}"),
                            }
                        }
                    });
                    let negotiated = client.negotiated().unwrap();
                    drop(client);
                    drop(provider);
                    (String::from_utf8_lossy(&response).into_owned(), negotiated)
                })
                .unwrap();
            let _ = server.kill();
            let _ = server.wait();
            assert!(
                response.starts_with("HTTP/1.0 200 ok"),
                "{flag}: {response}"
            );
            assert_eq!(negotiated.protocol, protocol);
            assert_eq!(negotiated.alpn(), b"http/1.1");
        }
        kernel.shutdown().unwrap();
    });
}

#[test]
fn driver_server_answers_curl_over_https() {
    isolated("peers::driver_server_answers_curl_over_https", || {
        let (kernel, pki) = boot("curl");
        for flags in [&["--tlsv1.3"][..], &["--tlsv1.2", "--tls-max", "1.2"][..]] {
            let ca = pki.path("ca.pem");
            let thumbprint = pki.thumbprint;
            let (output, request_line) = kernel
                .run("https", move || {
                    let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
                    let changes = Changes::new();
                    let listener = listen(
                        &provider,
                        server_credential(thumbprint),
                        b"\x08http/1.1",
                        &changes,
                    );
                    let mut command = Command::new("curl");
                    command
                        .args(["--silent", "--show-error", "--http1.1", "--cacert", &ca])
                        .args(flags)
                        .arg("--resolve")
                        .arg(format!("localhost:{}:127.0.0.1", listener.local_port()))
                        .arg(format!("https://localhost:{}/hello", listener.local_port()));
                    let child = spawn_peer(command, b"");
                    let server = changes.wait("an accepted session", || listener.next());
                    open(&server, &changes);
                    let line = serve_one_http(&server, &changes, "hello from the kernel\n");
                    let output = collect(child);
                    drop(server);
                    finish(listener, &changes, provider);
                    (output, line)
                })
                .unwrap();
            assert_eq!(request_line, "GET /hello HTTP/1.1", "{flags:?}");
            assert!(
                output.starts_with("hello from the kernel\n"),
                "{flags:?}: {output}"
            );
        }
        kernel.shutdown().unwrap();
    });
}

#[test]
fn driver_server_with_gnutls_cli_and_driver_client_with_gnutls_serv() {
    isolated(
        "peers::driver_server_with_gnutls_cli_and_driver_client_with_gnutls_serv",
        || {
            let (kernel, pki) = boot("gnutls");
            // gnutls-cli → driver server (echo one line).
            let ca = pki.path("ca.pem");
            let thumbprint = pki.thumbprint;
            let output = kernel
                .run("gnutls-cli", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let mut command = Command::new("gnutls-cli");
                    command.args([
                        "--x509cafile",
                        &ca,
                        "--port",
                        &listener.local_port().to_string(),
                        "localhost",
                    ]);
                    let child = spawn_peer(command, b"hello from gnutls\n");
                    let server = changes.wait("an accepted session", || listener.next());
                    open(&server, &changes);
                    let line = recv_line(&server, &changes);
                    let mut reply = b"echo: ".to_vec();
                    reply.extend_from_slice(&line);
                    assert_eq!(server.send(&reply), Ok(reply.len()));
                    server.shutdown();
                    wait_shut_down(&server, &changes);
                    let output = collect(child);
                    drop(server);
                    finish(listener, &changes, provider);
                    output
                })
                .unwrap();
            assert!(output.contains("echo: hello from gnutls"), "{output}");
            // driver client → gnutls-serv --echo.
            let port = free_port();
            let mut server = Command::new("gnutls-serv")
                .args([
                    "--echo",
                    "--x509certfile",
                    &pki.path("chain.pem"),
                    "--x509keyfile",
                    &pki.path("key.pem"),
                    "--port",
                    &port.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("gnutls-serv");
            wait_listening(port);
            let echoed = kernel
                .run("gnutls-serv", move || {
                    let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
                    let changes = Changes::new();
                    let client = connect(
                        &provider,
                        client_credential(ALL, 0),
                        port,
                        "localhost",
                        b"",
                        &changes,
                    );
                    open(&client, &changes);
                    assert_eq!(client.send(b"ping over gnutls\n"), Ok(17));
                    let line = recv_line(&client, &changes);
                    drop(client);
                    drop(provider);
                    line
                })
                .unwrap();
            let _ = server.kill();
            let _ = server.wait();
            assert_eq!(echoed, b"ping over gnutls\n");
            kernel.shutdown().unwrap();
        },
    );
}
