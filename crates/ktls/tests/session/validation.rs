//! Trust decisions: names, roots, pins, expiry, client certificates, host name resolution.

use super::*;

#[test]
fn a_wrong_name_fails_the_client_handshake_with_its_sspi_status() {
    isolated(
        "validation::a_wrong_name_fails_the_client_handshake_with_its_sspi_status",
        || {
            let (kernel, pki) = boot("wrong-name");
            let thumbprint = pki.thumbprint;
            let (client_failure, server_failure) = kernel
                .run("wrong-name", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let client = connect(
                        &provider,
                        client_credential(ALL, 0),
                        listener.local_port(),
                        "not-localhost.example",
                        b"",
                        &changes,
                    );
                    let server = changes.wait("an accepted session", || listener.next());
                    let c = failure_of(&client, &changes);
                    let s = failure_of(&server, &changes);
                    drop((client, server));
                    finish(listener, &changes, provider);
                    (c, s)
                })
                .unwrap();
            assert_eq!(
                pair(client_failure),
                Some((STATUS_TLS_FAILURE, SEC_E_WRONG_PRINCIPAL))
            );
            // The client's alert reached the server, which failed too (never opened).
            assert!(server_failure.is_some(), "{server_failure:?}");
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn an_untrusted_server_fails_unless_validation_is_manual() {
    isolated(
        "validation::an_untrusted_server_fails_unless_validation_is_manual",
        || {
            let (kernel, _) = boot("untrusted");
            // A server certificate from a CA the kernel does not trust.
            let rogue = TestCa::generate("rogue CA").unwrap();
            let issued = rogue.issue(&["localhost"], Validity::Current).unwrap();
            let thumbprint = kernel
                .cert_store()
                .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
                .unwrap();
            let (strict, manual) = kernel
                .run("untrusted", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let port = listener.local_port();
                    let strict = connect(
                        &provider,
                        client_credential(ALL, 0),
                        port,
                        "localhost",
                        b"",
                        &changes,
                    );
                    let strict_failure = failure_of(&strict, &changes);
                    let manual = connect(
                        &provider,
                        client_credential(ALL, SCH_CRED_MANUAL_CRED_VALIDATION),
                        port,
                        "localhost",
                        b"",
                        &changes,
                    );
                    open(&manual, &changes);
                    let manual_state = manual.state();
                    let sessions: Vec<_> = std::iter::from_fn(|| listener.next()).collect();
                    drop((strict, manual, sessions));
                    finish(listener, &changes, provider);
                    (strict_failure, manual_state)
                })
                .unwrap();
            assert_eq!(strict.map(|f| f.sspi()), Some(SEC_E_UNTRUSTED_ROOT));
            assert_eq!(manual, State::Open);
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn pinning_accepts_the_pinned_certificate_only_and_reports_the_peer_digest() {
    isolated(
        "validation::pinning_accepts_the_pinned_certificate_only_and_reports_the_peer_digest",
        || {
            let (kernel, pki) = boot("pinning");
            let (thumbprint, digest) = (pki.thumbprint, pki.digest);
            let (reported, wrong) = kernel
                .run("pinning", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let port = listener.local_port();
                    let manual = client_credential(ALL, SCH_CRED_MANUAL_CRED_VALIDATION);
                    // The right pin, and a name that would not validate: pinning replaces both.
                    let good = connect_with(
                        &provider,
                        manual.clone(),
                        port,
                        "pinned.invalid",
                        Some(digest),
                        &changes,
                    );
                    open(&good, &changes);
                    let reported = good.negotiated().unwrap().peer_certificate;
                    let mut other = digest;
                    other[0] ^= 1;
                    let bad =
                        connect_with(&provider, manual, port, "localhost", Some(other), &changes);
                    let wrong = failure_of(&bad, &changes);
                    let sessions: Vec<_> = std::iter::from_fn(|| listener.next()).collect();
                    drop((good, bad, sessions));
                    finish(listener, &changes, provider);
                    (reported, wrong)
                })
                .unwrap();
            assert_eq!(reported, Some(digest));
            assert_eq!(
                pair(wrong),
                Some((STATUS_PIN_MISMATCH, SEC_E_UNTRUSTED_ROOT))
            );
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn an_expired_server_certificate_fails_validation() {
    isolated(
        "validation::an_expired_server_certificate_fails_validation",
        || {
            let (kernel, pki) = boot("expired");
            let issued = pki.ca.issue(&["localhost"], Validity::Expired).unwrap();
            let thumbprint = kernel
                .cert_store()
                .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
                .unwrap();
            let failure = kernel
                .run("expired", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let client = connect_with(
                        &provider,
                        client_credential(ALL, 0),
                        listener.local_port(),
                        "localhost",
                        None,
                        &changes,
                    );
                    let f = failure_of(&client, &changes);
                    let sessions: Vec<_> = std::iter::from_fn(|| listener.next()).collect();
                    drop((client, sessions));
                    finish(listener, &changes, provider);
                    f
                })
                .unwrap();
            assert_eq!(failure.map(|f| f.sspi()), Some(SEC_E_CERT_EXPIRED));
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn a_listener_that_requires_client_certificates_refuses_clients_without_one() {
    isolated(
        "validation::a_listener_that_requires_client_certificates_refuses_clients_without_one",
        || {
            let (kernel, pki) = boot("mutual");
            let client_cert = pki
                .ca
                .issue(&["client.example"], Validity::Current)
                .unwrap();
            let client_thumbprint = kernel
                .cert_store()
                .import_pem(
                    client_cert.chain_pem.as_bytes(),
                    client_cert.key_pem.as_bytes(),
                )
                .unwrap();
            let client_leaf = pem::parse(client_cert.chain_pem.as_bytes()).unwrap();
            let client_digest = ktls::sha256::sha256(client_leaf.contents());
            let thumbprint = pki.thumbprint;
            let stranger = TestCa::generate("untrusted client CA")
                .unwrap()
                .issue(&["client.example"], Validity::Current)
                .unwrap();
            let stranger = kernel
                .cert_store()
                .import_pem(stranger.chain_pem.as_bytes(), stranger.key_pem.as_bytes())
                .unwrap();
            let (without, untrusted, with_state, seen_by_server) = kernel
                .run("mutual", move || {
                    let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
                    let changes = Changes::new();
                    // SAFETY: as in `listen`.
                    let listener = unsafe {
                        Listener::start(
                            device(),
                            ListenerConfig {
                                npi: provider.npi(),
                                local: v4([127, 0, 0, 1], 0),
                                alpn: Vec::new(),
                                require_client_certificate: true,
                                max_queued: 64 * 1024,
                                receive_window: 64 * 1024,
                                backlog: 8,
                                handshake_timeout_ms: 5000,
                                census: changes.census(),
                            },
                            Credential::acquire(&CredentialSpec {
                                inbound: true,
                                thumbprint: Some(thumbprint.0),
                                flags: 0,
                                versions: ALL,
                                require_client_certificate: true,
                            })
                            .unwrap(),
                            changes.clone(),
                        )
                    }
                    .unwrap();
                    changes.wait("listening", || {
                        (listener.state() == ListenState::Listening).then_some(())
                    });
                    let port = listener.local_port();
                    let anonymous = connect_with(
                        &provider,
                        client_credential(ALL, 0),
                        port,
                        "localhost",
                        None,
                        &changes,
                    );
                    let rejected = changes.wait("an accepted session", || listener.next());
                    let server_failure = failure_of(&rejected, &changes);
                    assert!(server_failure.is_some());
                    // The client may have finished its side (TLS 1.3) before the server's alert.
                    let _ = failure_of(&anonymous, &changes);
                    let with_stranger = Credential::acquire(&CredentialSpec {
                        inbound: false,
                        thumbprint: Some(stranger.0),
                        flags: 0,
                        versions: ALL,
                        require_client_certificate: false,
                    })
                    .unwrap();
                    let distrusted =
                        connect_with(&provider, with_stranger, port, "localhost", None, &changes);
                    let refused = changes.wait("an accepted session", || listener.next());
                    let untrusted = failure_of(&refused, &changes);
                    let _ = failure_of(&distrusted, &changes);
                    drop((distrusted, refused));
                    let with_cert = Credential::acquire(&CredentialSpec {
                        inbound: false,
                        thumbprint: Some(client_thumbprint.0),
                        flags: 0,
                        versions: ALL,
                        require_client_certificate: false,
                    })
                    .unwrap();
                    let client =
                        connect_with(&provider, with_cert, port, "localhost", None, &changes);
                    let server = changes.wait("an accepted session", || listener.next());
                    open(&client, &changes);
                    open(&server, &changes);
                    let seen = server.negotiated().unwrap().peer_certificate;
                    let state = client.state();
                    drop((anonymous, rejected, client, server));
                    finish(listener, &changes, provider);
                    (server_failure, untrusted, state, seen)
                })
                .unwrap();
            // Schannel completes the handshake without a certificate; the server's check of
            // the verdict fails it.
            assert_eq!(
                without.map(|f| (f.status(), f.sspi())),
                Some((STATUS_TLS_FAILURE, ksys::sspi::SEC_E_NO_CREDENTIALS))
            );
            assert_eq!(untrusted.map(|f| f.sspi()), Some(SEC_E_UNTRUSTED_ROOT));
            assert_eq!(with_state, State::Open);
            assert_eq!(seen_by_server, Some(client_digest));
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn a_client_resolves_its_host_name_first() {
    isolated("validation::a_client_resolves_its_host_name_first", || {
        let (kernel, pki) = boot("resolve");
        let thumbprint = pki.thumbprint;
        let state = kernel
            .run("resolve", move || {
                let (provider, changes, listener) = plain_listener(thumbprint);
                // Only the port of `remote` counts: the address comes from resolving the name.
                // SAFETY: as in `listen`.
                let client = unsafe {
                    Session::start(
                        device(),
                        Config {
                            role: Role::Client {
                                npi: provider.npi(),
                                remote: v4([0, 0, 0, 0], listener.local_port()),
                                target: "localhost".encode_utf16().collect(),
                                resolve: Some("localhost".encode_utf16().collect()),
                            },
                            alpn: Vec::new(),
                            require_client_certificate: false,
                            max_queued: 64 * 1024,
                            receive_window: 64 * 1024,
                            handshake_timeout_ms: 10_000,
                            pinned: None,
                            keep_peer_certificates: false,
                            census: changes.census(),
                        },
                        client_credential(ALL, 0),
                        changes.clone(),
                    )
                }
                .unwrap();
                let server = changes.wait("an accepted session", || listener.next());
                open(&client, &changes);
                let data = pattern(5000, 9);
                let got = echo(&client, &server, &changes, &data);
                assert!(got == data);
                let state = client.state();
                drop((client, server));
                finish(listener, &changes, provider);
                state
            })
            .unwrap();
        assert_eq!(state, State::Open);
        kernel.shutdown().unwrap();
    });
}
