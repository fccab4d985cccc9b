//! Driver server and driver client together: both protocols, long chains, a mismatched key,
//! dual-stack listeners, accept back-off, bulk, record packing and idle buffers, many connections.

use super::*;

#[test]
fn driver_server_and_driver_client_tls13() {
    isolated(
        "driver_to_driver::driver_server_and_driver_client_tls13",
        || {
            driver_to_driver(
                Versions {
                    tls12: false,
                    tls13: true,
                },
                SP_PROT_TLS1_3_CLIENT,
            )
        },
    );
}

#[test]
fn driver_server_and_driver_client_tls12() {
    isolated(
        "driver_to_driver::driver_server_and_driver_client_tls12",
        || {
            driver_to_driver(
                Versions {
                    tls12: true,
                    tls13: false,
                },
                SP_PROT_TLS1_2_CLIENT,
            )
        },
    );
}

/// A server certificate of about 40 KiB (2,000 names): the server's flight is bigger than the
/// send buffer (Schannel says how much it needs and the call is repeated with that much), and the
/// client's Certificate message spans three records while its receive buffer holds one
/// (Schannel takes the records piece by piece and keeps the partial message itself).
#[test]
fn a_forty_kilobyte_certificate_chain_goes_through() {
    isolated(
        "driver_to_driver::a_forty_kilobyte_certificate_chain_goes_through",
        || {
            let (kernel, pki) = boot("big_chain");
            let mut names: Vec<String> = (0..2000)
                .map(|i| format!("host{i:04}.example.com"))
                .collect();
            names.insert(0, "localhost".into());
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let big = pki.ca.issue(&names, Validity::Current).unwrap();
            assert!(big.chain_pem.len() > 50_000, "{}", big.chain_pem.len());
            let thumbprint = kernel
                .cert_store()
                .import_pem(big.chain_pem.as_bytes(), big.key_pem.as_bytes())
                .unwrap();
            let echoed = kernel
                .run("big chain", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let (client, server) = established_pair(&provider, &listener, &changes);
                    let got = echo(&client, &server, &changes, b"through a long chain");
                    drop((client, server));
                    finish(listener, &changes, provider);
                    got
                })
                .unwrap();
            assert_eq!(echoed, b"through a long chain");
            kernel.shutdown().unwrap();
        },
    );
}

/// A server whose certificate does not match its key fails every handshake; what reaches the
/// client is what Schannel really wrote — an alert at most, then the FIN — never the handshake
/// buffer (32 KiB of zeros went out when the output's cbBuffer was trusted on an error).
#[test]
fn a_server_whose_key_does_not_match_sends_no_garbage() {
    isolated(
        "driver_to_driver::a_server_whose_key_does_not_match_sends_no_garbage",
        || {
            let (kernel, pki) = boot("mismatched_key");
            let other = pki.ca.issue(&["localhost"], Validity::Current).unwrap();
            let leaf = pem::parse(std::fs::read(pki.path("chain.pem")).unwrap()).unwrap();
            let leaf_pem = pem::encode(&leaf);
            let thumbprint = kernel
                .cert_store()
                .import_pem(leaf_pem.as_bytes(), other.key_pem.as_bytes())
                .unwrap();
            let ca = pem::parse(std::fs::read(pki.path("ca.pem")).unwrap()).unwrap();
            let ca = ca.contents().to_vec();
            let (failure, received) = kernel
                .run("server", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let port = listener.local_port();
                    let peer = std::thread::spawn(move || {
                        let mut tls = rustls_client(ca);
                        let mut hello = Vec::new();
                        while tls.wants_write() {
                            tls.write_tls(&mut hello).unwrap();
                        }
                        let mut socket =
                            std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
                                .unwrap();
                        socket
                            .set_read_timeout(Some(Duration::from_secs(20)))
                            .unwrap();
                        socket.write_all(&hello).unwrap();
                        let mut received = Vec::new();
                        let _ = socket.read_to_end(&mut received);
                        received
                    });
                    let server = changes.wait("an accepted session", || listener.next());
                    let failure = failure_of(&server, &changes);
                    let received = peer.join().unwrap();
                    drop(server);
                    finish(listener, &changes, provider);
                    (failure, received)
                })
                .unwrap();
            assert!(
                failure.is_some_and(|f| f.sspi() != ksys::sspi::SEC_E_OK),
                "{failure:?}"
            );
            assert!(
                received.len() < 64,
                "{} bytes reached the client: {:02x?}",
                received.len(),
                &received[..received.len().min(32)]
            );
            // Whatever came is whole TLS alert records.
            let mut at = 0;
            while at < received.len() {
                assert_eq!(received[at], 21, "an alert record: {received:02x?}");
                at += 5 + usize::from(u16::from_be_bytes([received[at + 3], received[at + 4]]));
            }
            assert_eq!(at, received.len());
            kernel.shutdown().unwrap();
        },
    );
}

/// A listener on [::] takes IPv4 clients too: it sets IPV6_V6ONLY to FALSE before its bind, as
/// echosrv does (WSK sockets are IPv6-only by default); a ktls client reaches it over IPv4 and
/// over IPv6.
#[test]
fn a_listener_on_the_ipv6_any_address_takes_ipv4_clients_too() {
    isolated(
        "driver_to_driver::a_listener_on_the_ipv6_any_address_takes_ipv4_clients_too",
        || {
            let (kernel, pki) = boot("dual_stack");
            let thumbprint = pki.thumbprint;
            let states = kernel
                .run("dual stack", move || {
                    let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
                    let changes = Changes::new();
                    let any6 = SOCKADDR_STORAGE {
                        ss_family: AF_INET6 as u16,
                        data: [0; 126],
                    };
                    // SAFETY: the test driver's device and the captured provider outlive it.
                    let listener = unsafe {
                        Listener::start(
                            device(),
                            ListenerConfig {
                                npi: provider.npi(),
                                local: any6,
                                alpn: Vec::new(),
                                require_client_certificate: false,
                                max_queued: 64 * 1024,
                                receive_window: 64 * 1024,
                                backlog: 8,
                                handshake_timeout_ms: 5000,
                                census: changes.census(),
                            },
                            server_credential(thumbprint),
                            changes.clone(),
                        )
                    }
                    .unwrap();
                    changes.wait("listening", || {
                        (listener.state() == ListenState::Listening).then_some(())
                    });
                    let port = listener.local_port();
                    let mut states = Vec::new();
                    let mut loopback6 = SOCKADDR_STORAGE {
                        ss_family: AF_INET6 as u16,
                        data: [0; 126],
                    };
                    loopback6.data[0..2].copy_from_slice(&port.to_be_bytes());
                    loopback6.data[21] = 1; // ::1 (sin6_addr starts at byte 6 of data)
                    for remote in [v4([127, 0, 0, 1], port), loopback6] {
                        let credential = client_credential(ALL, 0);
                        let (client, server) =
                            pair_over(&provider, &listener, &changes, credential, remote);
                        states.push(client.state());
                        drop((client, server));
                    }
                    finish(listener, &changes, provider);
                    states
                })
                .unwrap();
            assert_eq!(states, [State::Open, State::Open]);
            kernel.shutdown().unwrap();
        },
    );
}

/// Accepts that keep failing (clients that reset before they were taken) do not make the
/// listener spin: after the second failure in a row each new WskAccept waits 1 ms, doubling —
/// ten failures take at least half a second — and the listener goes on serving afterwards.
#[test]
fn a_listener_backs_off_when_accepts_keep_failing() {
    isolated(
        "driver_to_driver::a_listener_backs_off_when_accepts_keep_failing",
        || {
            let mut config = KernelConfig::from_env();
            config.faults.failing_accepts = 10;
            let (kernel, pki) = boot_with("accept_backoff", config);
            let thumbprint = pki.thumbprint;
            let started = Instant::now();
            let (port_tx, port_rx) = std::sync::mpsc::channel();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let (waited, calls, echoed) = std::thread::scope(|scope| {
                let server = scope.spawn(|| {
                    kernel
                        .run("listener", move || {
                            let (provider, changes, listener) = plain_listener(thumbprint);
                            port_tx.send(listener.local_port()).unwrap();
                            go_rx.recv().unwrap();
                            // Past the failures the listener serves as before.
                            let (client, server) = established_pair(&provider, &listener, &changes);
                            let echoed = echo(&client, &server, &changes, b"after the resets");
                            drop((client, server));
                            finish(listener, &changes, provider);
                            echoed
                        })
                        .unwrap()
                });
                port_rx.recv().unwrap();
                let deadline = Instant::now() + Duration::from_secs(30);
                while kernel.accept_calls() < 11 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
                let waited = started.elapsed();
                let calls = kernel.accept_calls();
                go_tx.send(()).unwrap();
                (waited, calls, server.join().unwrap())
            });
            assert!(calls >= 11, "{calls} accepts");
            // Pauses of 1, 2, 4, ... 256 ms after failures 2 to 10: at least 511 ms in all (a
            // lower bound: a slow machine only makes it longer).
            assert!(
                waited >= Duration::from_millis(500),
                "eleven accepts after ten failures came within {waited:?}: no backoff"
            );
            assert_eq!(echoed, b"after the resets");
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn a_hundred_megabytes_arrive_intact() {
    isolated(
        "driver_to_driver::a_hundred_megabytes_arrive_intact",
        || {
            let (kernel, pki) = boot("bulk");
            let thumbprint = pki.thumbprint;
            const TOTAL: usize = 100 * 1000 * 1000;
            let (sent, received, digest_sent, digest_received) = kernel
                .run("bulk", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let (client, server) = established_pair(&provider, &listener, &changes);
                    // FNV-1a over what arrived and over what was sent (the chunk repeated); data
                    // from a counter so every byte differs in position.
                    const BASIS: u64 = 0xcbf2_9ce4_8422_2325;
                    let fnv = |h: u64, b: u8| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
                    let chunk: Vec<u8> = (0..65536u32).map(|i| (i * 7 + i / 251) as u8).collect();
                    let (mut hr, mut received) = (BASIS, 0usize);
                    let arrived = |bytes: &[u8]| {
                        hr = bytes.iter().fold(hr, |h, &b| fnv(h, b));
                        received += bytes.len();
                    };
                    stream(&client, &server, &changes, TOTAL, &chunk, arrived, || {});
                    let hs = chunk
                        .iter()
                        .cycle()
                        .take(TOTAL)
                        .fold(BASIS, |h, &b| fnv(h, b));
                    let sent = client.counters().sent as usize;
                    drop((client, server));
                    finish(listener, &changes, provider);
                    (sent, received, hs, hr)
                })
                .unwrap();
            assert_eq!((sent, received), (TOTAL, TOTAL));
            assert_eq!(digest_sent, digest_received, "the bytes differ");
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn a_busy_connection_packs_records_and_gives_its_buffers_back_when_quiet() {
    isolated(
        "driver_to_driver::a_busy_connection_packs_records_and_gives_its_buffers_back_when_quiet",
        || {
            let (kernel, pki) = boot("packing");
            let thumbprint = pki.thumbprint;
            const TOTAL: usize = 4 << 20;
            let (quiet_before, quiet_after, client_counters, server_counters) = kernel
                .run("packing", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let (client, server) = established_pair(&provider, &listener, &changes);
                    let buffers =
                        || client.counters().buffer_bytes + server.counters().buffer_bytes;
                    // The handshake's buffers go once nothing has moved for a while.
                    let quiet_before = changes.wait("idle buffers after the handshake", || {
                        let b = buffers();
                        (b <= 2 * IDLE_BUFFERS).then_some(b)
                    });
                    let chunk = pattern(64 * 1024, 3);
                    stream(&client, &server, &changes, TOTAL, &chunk, |_| {}, || {});
                    let quiet_after = changes.wait("buffers given back", || {
                        let b = buffers();
                        (b <= 2 * IDLE_BUFFERS).then_some(b)
                    });
                    let counters = (client.counters(), server.counters());
                    // The receives cancelled to shrink lost nothing: a megabyte both ways after.
                    let data = pattern(1 << 20, 9);
                    assert!(
                        echo(&client, &server, &changes, &data) == data,
                        "echo differs"
                    );
                    drop((client, server));
                    finish(listener, &changes, provider);
                    (quiet_before, quiet_after, counters.0, counters.1)
                })
                .unwrap();
            assert_eq!(client_counters.sent, TOTAL as u64);
            assert_eq!(server_counters.received, TOTAL as u64);
            // Up to sixteen records per WskSend while the queue holds more: 256 records in 16
            // sends and a few while the buffer grows (17-21 seen; eight per send would take 32).
            assert!(
                client_counters.record_sends < 32,
                "{} WskSends for 256 records",
                client_counters.record_sends
            );
            // The receive buffer grows (1, 4, 16 records) while data streams in: 20-24 seen;
            // one that stopped at four records would take at least 64.
            assert!(
                server_counters.record_receives < 48,
                "{} WskReceives for 256 records",
                server_counters.record_receives
            );
            // What those counts imply about the buffers' high-water marks: more than eight
            // records per send on average needs a send buffer of more than eight records, and
            // more than five per receive a receive buffer of sixteen (it grows 1, 4, 16).
            assert!(
                client_counters.peak_buffer_bytes >= SENDER_GROWN,
                "the send buffer never grew past eight records: {} bytes at most",
                client_counters.peak_buffer_bytes
            );
            assert!(
                server_counters.peak_buffer_bytes >= RECEIVER_GROWN,
                "the receive buffer never grew to sixteen records: {} bytes at most",
                server_counters.peak_buffer_bytes
            );
            assert_eq!(quiet_before, quiet_after, "buffers not given back");
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn five_hundred_concurrent_connections() {
    isolated(
        "driver_to_driver::five_hundred_concurrent_connections",
        || {
            const N: usize = 500;
            let (kernel, pki) = boot("concurrent");
            let thumbprint = pki.thumbprint;
            let (opened, echoed) = kernel
                .run("concurrent", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let port = listener.local_port();
                    let credential = client_credential(ALL, 0);
                    let clients: Vec<Session<Changes>> = (0..N)
                        .map(|_| {
                            connect_with(
                                &provider,
                                credential.clone(),
                                port,
                                "localhost",
                                None,
                                &changes,
                            )
                        })
                        .collect();
                    let mut servers: Vec<Session<Changes>> = Vec::with_capacity(N);
                    changes.wait("every handshake", || {
                        while let Some(s) = listener.next() {
                            servers.push(s);
                        }
                        for s in clients.iter().chain(&servers) {
                            if s.state() == State::Closed {
                                panic!("a session failed: {:?}", s.failure());
                            }
                        }
                        (servers.len() == N
                            && clients
                                .iter()
                                .chain(&servers)
                                .all(|s| s.state() == State::Open))
                        .then_some(())
                    });
                    // Every client sends its number; every server echoes what it got.
                    for (i, c) in clients.iter().enumerate() {
                        assert_eq!(c.send(&(i as u64).to_le_bytes()), Ok(8));
                    }
                    let mut got: Vec<Vec<u8>> = vec![Vec::new(); N];
                    let mut buf = [0u8; 64];
                    changes.wait("every echo", || {
                        for s in &servers {
                            if let Received::Data(n) = s.recv(&mut buf) {
                                assert_eq!(s.send(&buf[..n]), Ok(n));
                            }
                        }
                        for (i, c) in clients.iter().enumerate() {
                            if let Received::Data(n) = c.recv(&mut buf) {
                                got[i].extend_from_slice(&buf[..n]);
                            }
                        }
                        got.iter().all(|g| g.len() >= 8).then_some(())
                    });
                    let echoed = got
                        .iter()
                        .enumerate()
                        .filter(|(i, g)| g[..] == (*i as u64).to_le_bytes())
                        .count();
                    let opened = clients.len() + servers.len();
                    drop((clients, servers, credential));
                    finish(listener, &changes, provider);
                    (opened, echoed)
                })
                .unwrap();
            assert_eq!((opened, echoed), (2 * N, N));
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn a_second_connection_on_the_same_credential_resumes_and_both_ends_say_so() {
    isolated(
        "driver_to_driver::a_second_connection_on_the_same_credential_resumes_and_both_ends_say_so",
        || {
            let (kernel, pki) = boot("resumption");
            let thumbprint = pki.thumbprint;
            let seen = kernel
                .run("resumption", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let port = listener.local_port();
                    let caching = client_credential(ALL, 0);
                    let no_cache = client_credential(ALL, SCH_CRED_DISABLE_RECONNECTS);
                    let mut seen = Vec::new();
                    for credential in [&caching, &caching, &no_cache, &no_cache] {
                        let remote = v4([127, 0, 0, 1], port);
                        let (client, server) =
                            pair_over(&provider, &listener, &changes, credential.clone(), remote);
                        // Data both ways: a TLS 1.3 ticket reaches the client before the echo.
                        assert_eq!(echo(&client, &server, &changes, b"ticket?"), b"ticket?");
                        let resumed = |s: &Session<Changes>| s.negotiated().unwrap().resumed;
                        seen.push((resumed(&client), resumed(&server)));
                    }
                    finish(listener, &changes, provider);
                    seen
                })
                .unwrap();
            // The second connection on a caching credential resumes; one whose credential keeps
            // no sessions never does. Client and server report the same.
            assert_eq!(
                seen,
                [(false, false), (true, true), (false, false), (false, false)]
            );
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn a_client_started_held_connects_on_the_thread_that_drops_the_hold() {
    isolated(
        "driver_to_driver::a_client_started_held_connects_on_the_thread_that_drops_the_hold",
        || {
            let (kernel, pki) = boot("held");
            let thumbprint = pki.thumbprint;
            let (held_runs, plain_runs) = kernel
                .run("held", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let to = std::net::SocketAddr::from(([127, 0, 0, 1], listener.local_port()));
                    // SAFETY: the test driver's device, loaded by `boot` until shutdown; the
                    // Tls is shut down below, before that.
                    let tls = unsafe { ktls::Tls::new(device()) }.unwrap();
                    let config =
                        ktls::ClientConfig::builder(ktls::Verify::InsecureAcceptAnyCertificate)
                            .build()
                            .unwrap();
                    let client = tls.client(config).unwrap();
                    let (held, hold) = client
                        .connect_held(to, "localhost", changes.clone())
                        .unwrap();
                    // Nothing runs while held; dropping the hold here (PASSIVE_LEVEL, no lock)
                    // runs the first step on this thread.
                    let held_runs = (held.inline_runs(), {
                        drop(hold);
                        held.inline_runs()
                    });
                    let plain = client.connect(to, "localhost", changes.clone()).unwrap();
                    let plain_runs = plain.inline_runs();
                    let mut servers = Vec::new();
                    for session in [&held, &plain] {
                        open(session, &changes);
                        servers.push(changes.wait("an accepted session", || listener.next()));
                    }
                    for server in &servers {
                        open(server, &changes);
                    }
                    drop((held, plain, servers, client));
                    tls.shutdown();
                    finish(listener, &changes, provider);
                    (held_runs, plain_runs)
                })
                .unwrap();
            assert_eq!(held_runs, (0, 1), "inline runs before and after the hold");
            assert_eq!(plain_runs, 0, "a plain connect goes to the work item");
            kernel.shutdown().unwrap();
        },
    );
}
