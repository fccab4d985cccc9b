//! CONNECT's choices: a pinned certificate and a host name to resolve.

use super::*;

#[test]
fn pinned_connects_report_the_peer_certificate_and_refuse_other_certificates() {
    isolated(
        "connect::pinned_connects_report_the_peer_certificate_and_refuse_other_certificates",
        || {
            let (kernel, thumbprint) = boot();
            let digest = *SERVER_DIGEST.lock().unwrap();
            let a = open(&kernel);
            let b = open(&kernel);
            let listener = listen(&kernel, a, thumbprint, b"");
            let accept = accept_async(&kernel, a, listener.id);
            let good = info(connect_validating(
                &kernel,
                b,
                listener.port,
                b"any.name",
                b"",
                Validation::Pinned(digest),
            ));
            assert_eq!(good.peer_certificate, Some(digest));
            let server = info(accept);
            assert_eq!(
                server.peer_certificate, None,
                "the client sent no certificate"
            );
            let mut other = digest;
            other[31] ^= 0x80;
            let bad = connect_validating(
                &kernel,
                b,
                listener.port,
                b"localhost",
                b"",
                Validation::Pinned(other),
            )
            .wait(WAIT);
            // A failed handshake completes CONNECT with the failure inside ConnectionInfo; a
            // pin mismatch has its own NTSTATUS (not an untrusted chain's). The failed
            // connection keeps its id until CLOSE.
            let Err(CallError::Handshake {
                status,
                sspi,
                connection,
            }) = bad
            else {
                panic!("a wrong pin connected: {bad:?}");
            };
            assert_eq!(
                (status, sspi),
                (
                    ktls::STATUS_PIN_MISMATCH.0,
                    ksys::sspi::SEC_E_UNTRUSTED_ROOT.0
                )
            );
            assert_eq!(close_object(&kernel, b, connection), STATUS_SUCCESS);
            let s = stats(&kernel, a);
            assert!(s.handshakes_failed >= 1, "{s:?}");
            kernel.close(a).unwrap();
            kernel.close(b).unwrap();
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn connect_by_host_name_resolves_it() {
    isolated("connect::connect_by_host_name_resolves_it", || {
        let (kernel, thumbprint) = boot();
        let a = open(&kernel);
        let b = open(&kernel);
        let listener = listen(&kernel, a, thumbprint, b"");
        let accept = accept_async(&kernel, a, listener.id);
        let mut request = ConnectRequest {
            endpoint: Endpoint::loopback_v4(listener.port),
            host: b"localhost",
            sni: b"",
            alpn: b"",
            versions: VersionRange::ALL,
            validation: Validation::SystemRoots,
            client_certificate: None,
            keep_peer_certificates: false,
        };
        request.endpoint.ip = [0; 16];
        let client = info(
            support::client(&kernel, b)
                .connect(&request)
                .unwrap_or_else(|e| panic!("CONNECT: {e}")),
        );
        let server = info(accept);
        assert_eq!(client.status, STATUS_SUCCESS.0);
        assert_eq!(send(&kernel, b, client.id, b"by name"), STATUS_SUCCESS);
        assert_eq!(recv_exact(&kernel, a, server.id, 7), b"by name");
        kernel.close(a).unwrap();
        kernel.close(b).unwrap();
        kernel.shutdown().unwrap();
    });
}
