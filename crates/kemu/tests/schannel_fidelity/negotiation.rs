//! What the server chooses and what the client cache resumes.

use super::*;

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
