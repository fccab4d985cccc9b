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
            full_handshake: false,
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

/// What `openssl s_server -www` says about one connection's session — its status page names it
/// "New" or "Reused" — and whether the driver's CONNECT said it resumed.
fn s_server_session(kernel: &Kernel, h: Handle, port: u16, full_handshake: bool) -> (String, bool) {
    let driver = support::client(kernel, h);
    let connection = driver
        .connect(&ConnectRequest {
            endpoint: Endpoint::loopback_v4(port),
            host: b"localhost",
            sni: b"localhost",
            alpn: b"",
            versions: VersionRange::ALL,
            validation: Validation::Insecure,
            client_certificate: None,
            keep_peer_certificates: false,
            full_handshake,
        })
        .and_then(|pending| pending.wait(WAIT))
        .unwrap_or_else(|e| panic!("CONNECT to s_server: {e}"));
    driver
        .send(connection.id, b"GET / HTTP/1.0\r\n\r\n")
        .unwrap();
    // The whole page: the session tickets come before it, so the next connection has them.
    let mut page = Vec::new();
    loop {
        let got = driver.recv(connection.id, 65536, WAIT).unwrap();
        if got.is_empty() {
            break;
        }
        page.extend_from_slice(&got);
    }
    driver.close(connection.id).unwrap();
    let page = String::from_utf8_lossy(&page).into_owned();
    for status in ["New", "Reused"] {
        if page.contains(&format!("\n{status}, ")) {
            return (status.to_owned(), connection.resumed);
        }
    }
    panic!("s_server's page names no session status: {page}");
}

#[test]
fn a_full_handshake_connect_never_resumes_where_the_default_does() {
    isolated(
        "connect::a_full_handshake_connect_never_resumes_where_the_default_does",
        || {
            let (kernel, _) = boot();
            let h = open(&kernel);
            let ca = kemu::TestCa::generate("s_server CA").unwrap();
            let issued = ca.issue(&["localhost"], kemu::Validity::Current).unwrap();
            let dir = std::env::temp_dir().join(format!("wsktls-s_server-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("chain.pem"), &issued.chain_pem).unwrap();
            std::fs::write(dir.join("key.pem"), &issued.key_pem).unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut server = std::process::Command::new("openssl")
                .args([
                    "s_server",
                    "-accept",
                    &format!("127.0.0.1:{port}"),
                    "-www",
                    "-tls1_3",
                    "-quiet",
                ])
                .arg("-cert")
                .arg(dir.join("chain.pem"))
                .arg("-key")
                .arg(dir.join("key.pem"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("openssl s_server (Debian's openssl package)");
            let started = std::time::Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(started.elapsed() < WAIT, "s_server never listened");
                std::thread::sleep(Duration::from_millis(50));
            }
            // Schannel's default: the second connection to the same name resumes.
            let default = [
                s_server_session(&kernel, h, port, false),
                s_server_session(&kernel, h, port, false),
            ];
            // full_handshake: a credential without a session cache, so never.
            let full = [
                s_server_session(&kernel, h, port, true),
                s_server_session(&kernel, h, port, true),
            ];
            let _ = server.kill();
            let _ = server.wait();
            let _ = std::fs::remove_dir_all(&dir);
            // The server's word and the driver's (SECPKG_ATTR_SESSION_INFO) agree.
            assert_eq!(
                default,
                [("New".to_string(), false), ("Reused".to_string(), true)]
            );
            assert_eq!(
                full,
                [("New".to_string(), false), ("New".to_string(), false)]
            );
            kernel.close(h).unwrap();
            kernel.shutdown().unwrap();
        },
    );
}
