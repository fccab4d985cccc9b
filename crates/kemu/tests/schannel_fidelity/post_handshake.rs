//! TLS 1.3 tickets and KeyUpdates: DecryptMessage says SEC_I_RENEGOTIATE and ISC answers them,
//! whole or spanning many records.

use super::*;

/// TLS 1.3 tickets and KeyUpdates come out of DecryptMessage as SEC_I_RENEGOTIATE with the
/// message in EXTRA; ISC with an empty input is refused, ISC with the EXTRA consumes it, and
/// DecryptMessage refuses to go on until it did.
#[test]
fn post_handshake_messages_are_answered_through_isc_with_the_extra() {
    in_kernel("tickets", move |thumbprint| {
        let (server_cred, client_cred) = credentials(thumbprint, SP_PROT_TLS1_2_CLIENT);
        let mut client = Tls::client(client_cred, "localhost", &[], 0);
        let mut server = Tls::server(server_cred, &[], 0);
        Tls::pump_handshake(&mut client, &mut server).unwrap();
        // The server's last flight carried its tickets; then one application record.
        let data = server.encrypt(b"after the tickets").unwrap();
        client.incoming.extend_from_slice(&data);
        let mut renegotiations = 0;
        let mut refused_empty = false;
        let plain = loop {
            match client.decrypt_buffered() {
                Ok(Some(p)) if !p.is_empty() => break p,
                Ok(Some(_)) => {}
                Err(SEC_I_RENEGOTIATE) => {
                    renegotiations += 1;
                    // DecryptMessage will not skip the message.
                    assert_eq!(client.decrypt_buffered(), Err(SEC_E_OUT_OF_SEQUENCE));
                    // An empty input is not the message.
                    let empty = client.step(&[]);
                    refused_empty |= empty.status == SEC_E_INVALID_TOKEN;
                    assert!(empty.output.is_empty());
                    let mut sink = Vec::new();
                    client.answer_post_handshake(&mut sink).unwrap();
                    assert!(sink.is_empty(), "a ticket needs no answer");
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(plain, b"after the tickets");
        assert!(renegotiations >= 1, "tickets were reported");
        assert!(refused_empty);
        client.delete();
        server.delete();
        free_credential(client_cred);
        free_credential(server_cred);
    });
}

/// A TLS 1.3 server (rustls) that cuts every record to 32 bytes of plaintext sends its tickets as
/// handshake messages spanning many records; delivered to DecryptMessage in pieces of every size,
/// each one still comes out as one SEC_I_RENEGOTIATE answered through ISC, and the data behind
/// them arrives intact. Broken copies of the same stream get statuses, never a bugcheck.
#[test]
fn post_handshake_messages_spanning_records_are_taken_in_pieces() {
    use rustls::crypto::ring::default_provider;
    let kernel = boot();
    let ca = TestCa::generate("fragmenting peer CA").unwrap();
    let issued = ca.issue(&["localhost"], Validity::Current).unwrap();
    kernel
        .cert_store()
        .add_root_pem(ca.cert_pem().as_bytes())
        .unwrap();
    let chain: Vec<_> = rustls_pemfile::certs(&mut issued.chain_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = rustls_pemfile::private_key(&mut issued.key_pem.as_bytes())
        .unwrap()
        .unwrap();
    kernel
        .run("fragmented tickets", move || {
            let mut config = rustls::ServerConfig::builder_with_provider(default_provider().into())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
            config.max_fragment_size = Some(32);
            config.send_tls13_tickets = 3;
            let config = std::sync::Arc::new(config);
            let mut tls = kemu::testing::sspi::client_tls_parameters(!SP_PROT_TLS1_3_CLIENT);
            let mut creds = kemu::testing::sspi::client_credentials(&mut tls);
            // SAFETY: the credentials and their parameters outlive the call.
            let cred = unsafe {
                kemu::testing::sspi::acquire_raw(
                    &mut creds as *mut SCH_CREDENTIALS as *mut std::ffi::c_void,
                )
            }
            .unwrap();
            let mut rng = fastrand::Rng::with_seed(7);
            for round in 0..12 {
                let mut peer = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut client = Tls::client(cred, "localhost", &[], 0);
                let mut to_peer = client.step(&[]).output;
                let mut after = Vec::new();
                for _ in 0..8 {
                    let mut input = &to_peer[..];
                    while !input.is_empty() {
                        peer.read_tls(&mut input).unwrap();
                    }
                    peer.process_new_packets().unwrap();
                    let mut from_peer = Vec::new();
                    if !peer.is_handshaking() {
                        peer.writer().write_all(b"behind the tickets").unwrap();
                    }
                    while peer.wants_write() {
                        peer.write_tls(&mut from_peer).unwrap();
                    }
                    if client.context.is_some() && client.sizes().cbMaximumMessage != 0 {
                        after = from_peer;
                        break;
                    }
                    let step = client.step(&from_peer);
                    assert!(step.status.is_success(), "{:#x}", step.status);
                    if step.status == SEC_E_OK {
                        let q: SecPkgContext_StreamSizes =
                            client.query(SECPKG_ATTR_STREAM_SIZES).unwrap();
                        assert!(q.cbMaximumMessage > 0);
                        // Tickets and data may already be in the rest of this flight.
                        after = from_peer[from_peer.len() - step.extra..].to_vec();
                        to_peer = step.output;
                        let mut input = &to_peer[..];
                        while !input.is_empty() {
                            peer.read_tls(&mut input).unwrap();
                        }
                        peer.process_new_packets().unwrap();
                        peer.writer().write_all(b"behind the tickets").unwrap();
                        while peer.wants_write() {
                            peer.write_tls(&mut after).unwrap();
                        }
                        break;
                    }
                    to_peer = step.output;
                }
                assert!(
                    after.len() > 300,
                    "tickets in 32-byte records: {}",
                    after.len()
                );
                let mut wire = after.clone();
                if round >= 8 {
                    // Broken copies: statuses only.
                    let at = rng.usize(..wire.len());
                    wire[at] ^= 0x10;
                }
                let mut plain = Vec::new();
                let mut renegotiations = 0;
                let mut at = 0;
                let mut failed = None;
                while at < wire.len() && failed.is_none() {
                    let n = rng.usize(1..=wire.len() - at).min(1 + round * 13);
                    client.incoming.extend_from_slice(&wire[at..at + n]);
                    at += n;
                    loop {
                        match client.decrypt_buffered() {
                            Ok(Some(p)) => {
                                plain.extend_from_slice(&p);
                                if client.incoming.is_empty() {
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(SEC_E_INCOMPLETE_MESSAGE) => break,
                            Err(SEC_I_RENEGOTIATE) => {
                                renegotiations += 1;
                                let mut sink = Vec::new();
                                if let Err(e) = client.answer_post_handshake(&mut sink) {
                                    failed = Some(e);
                                    break;
                                }
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                }
                if round < 8 {
                    assert_eq!(failed, None, "round {round}");
                    assert_eq!(plain, b"behind the tickets", "round {round}");
                    assert_eq!(renegotiations, 3, "one SEC_I_RENEGOTIATE per ticket");
                }
                client.delete();
            }
            free_credential(cred);
        })
        .unwrap();
    kernel.shutdown().unwrap();
}
