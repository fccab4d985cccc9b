//! Certificate rules: self-signed CAs, EdDSA, the client certificate request, IP targets.

use super::*;

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
