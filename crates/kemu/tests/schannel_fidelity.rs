//! kemu's Schannel against what Windows Schannel does where rustls behaves otherwise:
//! post-handshake messages through SEC_I_RENEGOTIATE, input buffering across records (and no
//! panic on any input), output buffers on failure, control tokens, certificate rules.

use std::io::Write;

use kemu::testing::sspi::{CredentialSpec, Step, Tls, acquire, free_credential};
use kemu::{CallbackSchedule, FaultPlan, Kernel, KernelConfig, TestCa, Thumbprint, Validity};
use ksys::schannel::*;
use ksys::sspi::*;

fn boot() -> Kernel {
    kemu::exports::bind_native(ksys::imports::IMPORT_DIRECTORY);
    Kernel::boot(KernelConfig {
        faults: FaultPlan {
            callbacks: CallbackSchedule::Random,
            ..FaultPlan::default()
        },
        ..KernelConfig::from_env()
    })
}

/// A trusted CA and a "localhost" server certificate in MY.
fn server_identity(kernel: &Kernel) -> Thumbprint {
    let ca = TestCa::generate("kemu fidelity CA").unwrap();
    let issued = ca.issue(&["localhost"], Validity::Current).unwrap();
    let store = kernel.cert_store();
    store.add_root_pem(ca.cert_pem().as_bytes()).unwrap();
    store
        .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
        .unwrap()
}

/// Boots a kernel with a trusted "localhost" server certificate, runs `body` on a kernel thread
/// with its thumbprint, and requires a clean shutdown (nothing leaked).
fn in_kernel(name: &str, body: impl FnOnce(Thumbprint) + Send + 'static) {
    let kernel = boot();
    let thumbprint = server_identity(&kernel);
    kernel.run(name, move || body(thumbprint)).unwrap();
    kernel.shutdown().unwrap();
}

/// Reads what the client has buffered (TLS 1.3 tickets after the handshake), answering each
/// post-handshake message through ISC.
fn answer_tickets(client: &mut Tls) {
    let mut sink = Vec::new();
    while !client.incoming.is_empty() {
        match client.decrypt_buffered() {
            Err(SEC_I_RENEGOTIATE) => client.answer_post_handshake(&mut sink).unwrap(),
            Ok(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

fn credentials(thumbprint: Thumbprint, client_disabled: u32) -> (SecHandle, SecHandle) {
    let server = acquire(&CredentialSpec {
        inbound: true,
        thumbprint: Some(thumbprint),
        ..Default::default()
    })
    .unwrap();
    let client = acquire(&CredentialSpec {
        disabled_protocols: client_disabled,
        ..Default::default()
    })
    .unwrap();
    (server, client)
}

/// Re-frames every handshake record (type 22) of `wire` into records of at most `size` bytes
/// of payload: the same messages, spanning many records.
fn fragment_handshake(wire: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= wire.len() {
        let len = usize::from(u16::from_be_bytes([wire[at + 3], wire[at + 4]]));
        let record = &wire[at..at + 5 + len];
        if record[0] == 22 {
            for piece in record[5..].chunks(size) {
                out.extend_from_slice(&record[..3]);
                out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
                out.extend_from_slice(piece);
            }
        } else {
            out.extend_from_slice(record);
        }
        at += 5 + len;
    }
    out.extend_from_slice(&wire[at..]);
    out
}

/// Drives one side as a driver does: bytes arrive in `chunks`; each arrival calls ISC/ASC on
/// everything not yet consumed. Returns the last status and the outputs.
fn feed(tls: &mut Tls, chunks: &[&[u8]]) -> (SECURITY_STATUS, Vec<u8>) {
    let mut pending = Vec::new();
    let mut output = Vec::new();
    let mut status = SEC_E_INCOMPLETE_MESSAGE;
    for chunk in chunks {
        if chunk.is_empty() {
            // Nothing arrived: a driver does not call again.
            continue;
        }
        pending.extend_from_slice(chunk);
        loop {
            let Step {
                status: s,
                output: o,
                extra,
                ..
            } = tls.step(&pending);
            output.extend_from_slice(&o);
            status = s;
            match s {
                SEC_I_CONTINUE_NEEDED => {
                    pending = pending[pending.len() - extra.min(pending.len())..].to_vec();
                    if pending.is_empty() {
                        break;
                    }
                }
                SEC_E_OK => {
                    tls.incoming = pending[pending.len() - extra.min(pending.len())..].to_vec();
                    return (s, output);
                }
                _ => break,
            }
        }
        if status.is_error() && status != SEC_E_INCOMPLETE_MESSAGE {
            return (status, output);
        }
    }
    (status, output)
}

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

/// A ClientHello (TLS 1.3 and 1.2) and a TLS 1.2 server flight re-framed into small records and
/// delivered cut at every point: Schannel buffers the pieces itself, so each handshake
/// completes; kemu never hands rustls less than it has seen (the 0x1E bugcheck of hostile runs).
#[test]
fn handshake_messages_spanning_records_are_accepted_at_every_cut() {
    in_kernel("fragments", move |thumbprint| {
        for (disabled, sizes) in [
            (SP_PROT_TLS1_2_CLIENT, [3usize, 64]),
            (SP_PROT_TLS1_3_CLIENT, [5, 200]),
        ] {
            let (server_cred, client_cred) = credentials(thumbprint, disabled);
            for size in sizes {
                // The client's first flight, fragmented, against a fresh server each cut.
                let mut probe = Tls::client(client_cred, "localhost", &[], 0);
                let hello = fragment_handshake(&probe.step(&[]).output, size);
                probe.delete();
                let step = if size < 10 { 7 } else { 1 };
                for cut in (0..=hello.len()).step_by(step) {
                    let mut server = Tls::server(server_cred, &[], 0);
                    let (status, output) = feed(&mut server, &[&hello[..cut], &hello[cut..]]);
                    assert_eq!(
                        status, SEC_I_CONTINUE_NEEDED,
                        "size {size} cut {cut}: {status:#x}"
                    );
                    assert!(!output.is_empty());
                    server.delete();
                }
            }
            if disabled == SP_PROT_TLS1_3_CLIENT {
                // TLS 1.2: the server's flight (certificate included) is plaintext.
                for cut in (0..2400).step_by(29) {
                    let mut client = Tls::client(client_cred, "localhost", &[], 0);
                    let mut server = Tls::server(server_cred, &[], 0);
                    let hello = client.step(&[]).output;
                    let flight = fragment_handshake(&server.step(&hello).output, 11);
                    let cut = cut.min(flight.len());
                    let (status, output) = feed(&mut client, &[&flight[..cut], &flight[cut..]]);
                    assert_eq!(status, SEC_I_CONTINUE_NEEDED, "cut {cut}: {status:#x}");
                    assert!(!output.is_empty());
                    client.delete();
                    server.delete();
                }
            }
            free_credential(client_cred);
            free_credential(server_cred);
        }
    });
}

/// Hostile byte streams: real flights with bytes flipped, cut anywhere, and garbage records
/// after the handshake. Every call returns a status; the kernel never stops.
#[test]
fn hostile_input_gets_a_status_never_a_bugcheck() {
    in_kernel("hostile", move |thumbprint| {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for disabled in [SP_PROT_TLS1_2_CLIENT, SP_PROT_TLS1_3_CLIENT] {
            let (server_cred, client_cred) = credentials(thumbprint, disabled);
            let mut probe = Tls::client(client_cred, "localhost", &[], 0);
            let hello = probe.step(&[]).output;
            probe.delete();
            for round in 0..150 {
                let mut wire = fragment_handshake(&hello, 1 + round % 40);
                for _ in 0..1 + rng.usize(..4) {
                    let at = rng.usize(..wire.len());
                    wire[at] ^= 1 << rng.u8(..8);
                }
                let cut = rng.usize(..=wire.len());
                let mut server = Tls::server(server_cred, &[], 0);
                let _ = feed(&mut server, &[&wire[..cut], &wire[cut..]]);
                server.delete();
            }
            // After the handshake: garbage, truncated and replayed records.
            let mut client = Tls::client(client_cred, "localhost", &[], 0);
            let mut server = Tls::server(server_cred, &[], 0);
            Tls::pump_handshake(&mut client, &mut server).unwrap();
            let record = server.encrypt(b"a record to break").unwrap();
            for round in 0..200 {
                let mut bytes = record.clone();
                match round % 4 {
                    0 => {
                        let at = rng.usize(..bytes.len());
                        bytes[at] ^= 0x40;
                    }
                    1 => bytes.truncate(rng.usize(..bytes.len())),
                    2 => bytes = (0..rng.usize(1..64)).map(|_| rng.u8(..)).collect(),
                    _ => {
                        let len = rng.usize(..300) as u16;
                        bytes = vec![23, 3, 3];
                        bytes.extend_from_slice(&len.to_be_bytes());
                        bytes.extend((0..len).map(|_| rng.u8(..)));
                    }
                }
                let mut c = Tls::client(client_cred, "localhost", &[], 0);
                let mut s = Tls::server(server_cred, &[], 0);
                Tls::pump_handshake(&mut c, &mut s).unwrap();
                c.incoming.clear();
                c.incoming.extend_from_slice(&bytes);
                for _ in 0..4 {
                    let r = c.decrypt_buffered();
                    if r.is_err() || c.incoming.is_empty() {
                        break;
                    }
                }
                c.delete();
                s.delete();
            }
            client.delete();
            server.delete();
            free_credential(client_cred);
            free_credential(server_cred);
        }
    });
}

/// A server whose certificate does not match its key fails the handshake; the output TOKEN then
/// says what was written (nothing, or an alert), never the caller's buffer size — a driver that
/// sent cbBuffer bytes sent 32 KiB of zeros.
#[test]
fn output_buffers_say_what_was_written_on_failure() {
    let kernel = boot();
    let ca = TestCa::generate("mismatch CA").unwrap();
    let a = ca.issue(&["localhost"], Validity::Current).unwrap();
    let b = ca.issue(&["localhost"], Validity::Current).unwrap();
    let store = kernel.cert_store();
    store.add_root_pem(ca.cert_pem().as_bytes()).unwrap();
    let thumbprint = store
        .import_pem(a.chain_pem.as_bytes(), b.key_pem.as_bytes())
        .unwrap();
    kernel
        .run("mismatch", move || {
            let (server_cred, client_cred) = credentials(thumbprint, SP_PROT_TLS1_2_CLIENT);
            let mut client = Tls::client(client_cred, "localhost", &[], 0);
            let hello = client.step(&[]).output;
            let mut server = Tls::server(server_cred, &[], 0);
            let step = server.step(&hello);
            assert!(step.status.is_error(), "{:#x}", step.status);
            assert!(
                step.output.len() < 64,
                "output TOKEN cbBuffer {} after {:#x}",
                step.output.len(),
                step.status
            );
            client.delete();
            server.delete();
            free_credential(client_cred);
            free_credential(server_cred);
        })
        .unwrap();
    kernel.shutdown().unwrap();
}

/// ApplyControlToken(token) on an established context.
fn apply(tls: &mut Tls, token: &mut [u32]) -> SECURITY_STATUS {
    let mut buffer = SecBuffer::new(
        SECBUFFER_TOKEN,
        token.as_mut_ptr() as *mut std::ffi::c_void,
        (token.len() * 4) as u32,
    );
    let mut desc = SecBufferDesc {
        ulVersion: SECBUFFER_VERSION,
        cBuffers: 1,
        pBuffers: &mut buffer,
    };
    let mut context = tls.context.unwrap();
    // SAFETY: a live context and a descriptor that outlives the call.
    unsafe { ksys::imports::ApplyControlToken(&mut context, &mut desc) }
}

/// SCHANNEL_SHUTDOWN then ISC gives the close_notify the peer reads as SEC_I_CONTEXT_EXPIRED;
/// after a record failure, SCHANNEL_ALERT then ASC gives the failure's fatal alert, which the
/// peer reads as an error. An alert with nothing failed is refused.
#[test]
fn control_tokens_produce_close_notify_and_the_failure_alert() {
    in_kernel("control tokens", move |thumbprint| {
        for disabled in [SP_PROT_TLS1_2_CLIENT, SP_PROT_TLS1_3_CLIENT] {
            let (server_cred, client_cred) = credentials(thumbprint, disabled);
            let mut client = Tls::client(client_cred, "localhost", &[], 0);
            let mut server = Tls::server(server_cred, &[], 0);
            Tls::pump_handshake(&mut client, &mut server).unwrap();
            // Tickets first (TLS 1.3), so the client's context is idle.
            answer_tickets(&mut client);
            assert_eq!(
                apply(&mut client, &mut [SCHANNEL_ALERT, TLS1_ALERT_FATAL, 10]),
                SEC_E_UNSUPPORTED_FUNCTION,
                "nothing failed: kemu has no such alert to write"
            );
            assert_eq!(apply(&mut client, &mut [SCHANNEL_SHUTDOWN]), SEC_E_OK);
            let close = client.step(&[]);
            assert_eq!(close.status, SEC_E_OK);
            server.incoming = close.output;
            assert_eq!(server.decrypt_buffered(), Ok(None), "close_notify");

            // A record with a broken tag: the server fails, then sends its alert.
            let mut c = Tls::client(client_cred, "localhost", &[], 0);
            let mut s = Tls::server(server_cred, &[], 0);
            Tls::pump_handshake(&mut c, &mut s).unwrap();
            let mut record = c.encrypt(b"tampered").unwrap();
            let last = record.len() - 1;
            record[last] ^= 1;
            s.incoming = record;
            assert_eq!(s.decrypt_buffered(), Err(SEC_E_MESSAGE_ALTERED));
            assert_eq!(
                apply(&mut s, &mut [SCHANNEL_ALERT, TLS1_ALERT_FATAL, 20]),
                SEC_E_OK
            );
            let alert = s.step(&[]);
            assert_eq!(alert.status, SEC_E_OK);
            assert!(!alert.output.is_empty() && alert.output.len() < 64);
            let mut sink = Vec::new();
            loop {
                match c.decrypt_buffered() {
                    Err(SEC_I_RENEGOTIATE) => c.answer_post_handshake(&mut sink).unwrap(),
                    Err(SEC_E_INCOMPLETE_MESSAGE) | Ok(_) if c.incoming.is_empty() => break,
                    Ok(_) => {}
                    other => panic!("{other:?}"),
                }
            }
            c.incoming = alert.output;
            let got = c.decrypt_buffered();
            assert!(
                matches!(got, Err(e) if e.is_error()),
                "the peer reads the alert as a failure: {got:?}"
            );
            for t in [&mut client, &mut server, &mut c, &mut s] {
                t.delete();
            }
            free_credential(client_cred);
            free_credential(server_cred);
        }
    });
}

/// A rustls client offering ChaCha20 before AES-128 gets AES-128 from a kemu server: Schannel
/// chooses by the server's list (AES-256, AES-128, ChaCha20), not the client's order.
#[test]
fn the_server_picks_the_suite_by_its_own_order() {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    let kernel = boot();
    let thumbprint = server_identity(&kernel);
    let ca_roots = kernel.cert_store().roots();
    let suite = kernel
        .run("suite order", move || {
            let (server_cred, client_cred) = credentials(thumbprint, SP_PROT_TLS1_2_CLIENT);
            let provider = rustls::crypto::CryptoProvider {
                cipher_suites: vec![
                    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
                    cipher_suite::TLS13_AES_128_GCM_SHA256,
                ],
                ..default_provider()
            };
            let mut roots = rustls::RootCertStore::empty();
            for r in ca_roots {
                roots.add(r).unwrap();
            }
            let config = rustls::ClientConfig::builder_with_provider(provider.into())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let mut peer = rustls::ClientConnection::new(
                std::sync::Arc::new(config),
                "localhost".try_into().unwrap(),
            )
            .unwrap();
            let mut server = Tls::server(server_cred, &[], 0);
            let mut to_server = Vec::new();
            for _ in 0..8 {
                to_server.clear();
                while peer.wants_write() {
                    peer.write_tls(&mut to_server).unwrap();
                }
                if to_server.is_empty() && !peer.is_handshaking() {
                    break;
                }
                let step = server.step(&to_server);
                assert!(step.status.is_success(), "{:#x}", step.status);
                let mut reply = &step.output[..];
                while !reply.is_empty() {
                    peer.read_tls(&mut reply).unwrap();
                }
                peer.process_new_packets().unwrap();
            }
            let suite = peer.negotiated_cipher_suite().map(|s| s.suite());
            server.delete();
            free_credential(client_cred);
            free_credential(server_cred);
            suite
        })
        .unwrap();
    assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
    kernel.shutdown().unwrap();
}

/// `openssl req -x509` makes a self-signed certificate with CA:TRUE: trusted in Root, Schannel
/// accepts it as the whole chain (its name still checked). An Ed25519 certificate gives no
/// server credential: Schannel does not serve EdDSA.
#[test]
fn a_trusted_self_signed_ca_certificate_serves_and_ed25519_does_not() {
    let kernel = boot();
    let store = kernel.cert_store();
    let self_signed = |alg: &'static rcgen::SignatureAlgorithm| {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (ca_leaf, ca_key) = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
    store.add_root_pem(ca_leaf.as_bytes()).unwrap();
    let thumbprint = store
        .import_pem(ca_leaf.as_bytes(), ca_key.as_bytes())
        .unwrap();
    let (ed_cert, ed_key) = self_signed(&rcgen::PKCS_ED25519);
    let ed = store
        .import_pem(ed_cert.as_bytes(), ed_key.as_bytes())
        .unwrap();
    kernel
        .run("self-signed", move || {
            let (server_cred, client_cred) = credentials(thumbprint, SP_PROT_TLS1_2_CLIENT);
            for (target, expected) in [
                ("localhost", Ok(())),
                ("other.example", Err(SEC_E_WRONG_PRINCIPAL)),
            ] {
                let mut client = Tls::client(client_cred, target, &[], 0);
                let mut server = Tls::server(server_cred, &[], 0);
                let r = Tls::pump_handshake(&mut client, &mut server);
                assert_eq!(r, expected, "{target}");
                client.delete();
                server.delete();
            }
            free_credential(client_cred);
            free_credential(server_cred);
            let refused = acquire(&CredentialSpec {
                inbound: true,
                thumbprint: Some(ed),
                ..Default::default()
            });
            assert_eq!(refused, Err(SEC_E_NO_CREDENTIALS));
        })
        .unwrap();
    kernel.shutdown().unwrap();
}

/// A client credential without a certificate and without SCH_CRED_NO_DEFAULT_CREDS, against a
/// server that asks for one: ISC stops with SEC_I_INCOMPLETE_CREDENTIALS and no output; the same
/// input handed again goes on without a certificate. With SCH_CRED_NO_DEFAULT_CREDS it never
/// stops.
#[test]
fn a_server_asking_for_a_certificate_gives_incomplete_credentials_without_no_default_creds() {
    in_kernel("incomplete credentials", move |thumbprint| {
        for (disabled, no_default) in [
            (SP_PROT_TLS1_2_CLIENT, false),
            (SP_PROT_TLS1_3_CLIENT, false),
            (SP_PROT_TLS1_2_CLIENT, true),
        ] {
            let server_cred = acquire(&CredentialSpec {
                inbound: true,
                thumbprint: Some(thumbprint),
                ..Default::default()
            })
            .unwrap();
            let mut tls =
                kemu::testing::sspi::client_tls_parameters(disabled | SP_PROT_BELOW_TLS1_2);
            let mut creds = kemu::testing::sspi::client_credentials(&mut tls);
            if !no_default {
                creds.dwFlags &= !SCH_CRED_NO_DEFAULT_CREDS;
            }
            // SAFETY: the credentials and their parameters outlive the call.
            let client_cred = unsafe {
                kemu::testing::sspi::acquire_raw(
                    &mut creds as *mut SCH_CREDENTIALS as *mut std::ffi::c_void,
                )
            }
            .unwrap();
            let mut client = Tls::client(client_cred, "localhost", &[], 0);
            let mut server = Tls::server(server_cred, &[], ASC_REQ_MUTUAL_AUTH as u32);
            let hello = client.step(&[]).output;
            let flight = server.step(&hello).output;
            let mut answer = client.step(&flight);
            if !no_default {
                assert_eq!(answer.status, SEC_I_INCOMPLETE_CREDENTIALS);
                assert!(answer.output.is_empty(), "nothing goes out yet");
                answer = client.step(&flight);
            }
            assert!(
                answer.status == SEC_E_OK || answer.status == SEC_I_CONTINUE_NEEDED,
                "{:#x}",
                answer.status
            );
            assert!(!answer.output.is_empty());
            let done = server.step(&answer.output);
            assert_eq!(done.status, SEC_E_OK);
            let verdict = server.query::<SecPkgContext_CertificateValidationResult>(
                SECPKG_ATTR_CERT_CHECK_RESULT_INPROC,
            );
            assert_eq!(verdict.err(), Some(SEC_E_NO_CREDENTIALS));
            client.delete();
            server.delete();
            free_credential(client_cred);
            free_credential(server_cred);
        }
    });
}

/// Schannel's client session cache is keyed by credential and target name: a second handshake
/// to the same name resumes (SECPKG_ATTR_SESSION_INFO says SSL_SESSION_RECONNECT) and still
/// reports the server's certificates; another name, or SCH_CRED_DISABLE_RECONNECTS, does not.
#[test]
fn a_second_handshake_to_the_same_target_resumes_and_says_so() {
    let kernel = boot();
    let ca = TestCa::generate("resumption CA").unwrap();
    let issued = ca
        .issue(&["localhost", "other.localhost"], Validity::Current)
        .unwrap();
    let store = kernel.cert_store();
    store.add_root_pem(ca.cert_pem().as_bytes()).unwrap();
    let thumbprint = store
        .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
        .unwrap();
    kernel
        .run("resumption", move || {
            for (disabled, flags) in [
                (SP_PROT_TLS1_2_CLIENT, 0),
                (SP_PROT_TLS1_3_CLIENT, 0),
                (SP_PROT_TLS1_2_CLIENT, SCH_CRED_DISABLE_RECONNECTS),
            ] {
                let server_cred = acquire(&CredentialSpec {
                    inbound: true,
                    thumbprint: Some(thumbprint),
                    ..Default::default()
                })
                .unwrap();
                let client_cred = acquire(&CredentialSpec {
                    disabled_protocols: disabled,
                    flags,
                    ..Default::default()
                })
                .unwrap();
                let mut resumed = Vec::new();
                for target in ["localhost", "localhost", "other.localhost"] {
                    let mut client = Tls::client(client_cred, target, &[], 0);
                    let mut server = Tls::server(server_cred, &[], 0);
                    Tls::pump_handshake(&mut client, &mut server).unwrap();
                    // TLS 1.3 tickets reach the client's cache once it reads them.
                    answer_tickets(&mut client);
                    let info: SecPkgContext_SessionInfo =
                        client.query(SECPKG_ATTR_SESSION_INFO).unwrap();
                    let certs: SecPkgContext_Certificates =
                        client.query(SECPKG_ATTR_REMOTE_CERTIFICATES).unwrap();
                    assert!(
                        certs.cCertificates > 0,
                        "the chain is known after resuming too"
                    );
                    // SAFETY: the chain SSPI allocated for this query, freed once.
                    unsafe { ksys::imports::FreeContextBuffer(certs.pbCertificateChain as *mut _) };
                    resumed.push(info.dwFlags & SSL_SESSION_RECONNECT != 0);
                    client.delete();
                    server.delete();
                }
                let expected = if flags & SCH_CRED_DISABLE_RECONNECTS != 0 {
                    vec![false, false, false]
                } else {
                    // The same name again resumes; another name starts afresh.
                    vec![false, true, false]
                };
                assert_eq!(resumed, expected, "disabled {disabled:#x} flags {flags:#x}");
                free_credential(client_cred);
                free_credential(server_cred);
            }
        })
        .unwrap();
    kernel.shutdown().unwrap();
}

/// A target that is an IP address is checked against the certificate's IP SANs (Schannel does
/// so for a numeric target name), not taken as a DNS name.
#[test]
fn an_ip_target_matches_the_certificates_ip_san() {
    let kernel = boot();
    let ca = TestCa::generate("IP SAN CA").unwrap();
    let issued = ca.issue(&["127.0.0.1", "::1"], Validity::Current).unwrap();
    let store = kernel.cert_store();
    store.add_root_pem(ca.cert_pem().as_bytes()).unwrap();
    let thumbprint = store
        .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
        .unwrap();
    kernel
        .run("ip san", move || {
            let (server_cred, client_cred) = credentials(thumbprint, SP_PROT_TLS1_2_CLIENT);
            for (target, expected) in [
                ("127.0.0.1", Ok(())),
                ("::1", Ok(())),
                ("127.0.0.2", Err(SEC_E_WRONG_PRINCIPAL)),
                ("localhost", Err(SEC_E_WRONG_PRINCIPAL)),
            ] {
                let mut client = Tls::client(client_cred, target, &[], 0);
                let mut server = Tls::server(server_cred, &[], 0);
                assert_eq!(
                    Tls::pump_handshake(&mut client, &mut server),
                    expected,
                    "{target}"
                );
                client.delete();
                server.delete();
            }
            free_credential(client_cred);
            free_credential(server_cred);
        })
        .unwrap();
    kernel.shutdown().unwrap();
}

/// An output TOKEN too small for the flight: the call fails with the size needed in cbBuffer and
/// consumes nothing; the same call with a buffer that big produces the flight and the handshake
/// goes on (what MsQuic does on SEC_E_BUFFER_TOO_SMALL; the status is W13's question).
#[test]
fn a_too_small_output_buffer_says_the_size_and_the_call_can_be_repeated() {
    in_kernel("too small", move |thumbprint| {
        let too_small = SECURITY_STATUS(ksys::ntdef::STATUS_BUFFER_TOO_SMALL.0);
        for disabled in [SP_PROT_TLS1_2_CLIENT, SP_PROT_TLS1_3_CLIENT] {
            let (server_cred, client_cred) = credentials(thumbprint, disabled);
            let mut client = Tls::client(client_cred, "localhost", &[], 0);
            let mut server = Tls::server(server_cred, &[], 0);
            let small = client.step_sized(&[], 16);
            assert_eq!(small.status, too_small);
            assert!(small.needed > 16);
            let hello = client.step_sized(&[], small.needed);
            assert_eq!(hello.status, SEC_I_CONTINUE_NEEDED);
            assert_eq!(hello.output.len(), small.needed);
            let small = server.step_sized(&hello.output, 100);
            assert_eq!(small.status, too_small);
            let flight = server.step_sized(&hello.output, small.needed);
            assert!(flight.status.is_success(), "{:#x}", flight.status);
            assert_eq!(flight.output.len(), small.needed);
            // The rest of the handshake as usual.
            let answer = client.step(&flight.output);
            assert!(answer.status.is_success(), "{:#x}", answer.status);
            if !answer.output.is_empty() {
                let last = server.step(&answer.output);
                assert!(last.status.is_success(), "{:#x}", last.status);
                if answer.status != SEC_E_OK {
                    assert_eq!(client.step(&last.output).status, SEC_E_OK);
                }
            }
            client.delete();
            server.delete();
            free_credential(client_cred);
            free_credential(server_cred);
        }
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
