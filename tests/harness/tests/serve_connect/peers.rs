//! Programs no one here wrote (curl, openssl, gnutls) against `serve` and `connect`, for every
//! driver build.

use super::*;

#[test]
fn curl_fetches_a_page_from_serve_http() {
    let dir = pki("http");
    let server = serve(&dir, &["--http", "--alpn", "http/1.1"]);
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--http1.1", "--cacert"])
        .arg(dir.join("ca.pem"))
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", server.port))
        .arg(format!("https://localhost:{}/index.html", server.port))
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("wsktls: TLS in the Windows kernel"), "{body}");
    assert!(body.contains("request: GET /index.html HTTP/1.1"), "{body}");
    let (code, _, err) = finish(Server::into_child(server));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("verifier clean"), "{err}");
}

/// The drivers to run against: the natively linked one, and each image `cargo xtask` built.
fn drivers() -> Vec<Option<PathBuf>> {
    let mut drivers = vec![None];
    for profile in ["debug", "release"] {
        let image = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/x86_64-pc-windows-msvc")
            .join(profile)
            .join("wsktls.sys");
        if image.exists() {
            drivers.push(Some(image));
        } else {
            assert!(
                std::env::var_os("CI").is_none(),
                "{} not built in CI",
                image.display()
            );
        }
    }
    drivers
}

#[test]
fn openssl_gnutls_and_curl_talk_to_every_driver_build() {
    let dir = pki("interop");
    let ca = dir.join("ca.pem");
    for driver in drivers() {
        let what = driver
            .as_ref()
            .map_or("native".to_string(), |p| p.display().to_string());
        let mut extra = vec!["--http".to_string(), "--alpn".into(), "http/1.1".into()];
        if let Some(image) = &driver {
            extra.extend(["--driver".to_string(), image.display().to_string()]);
        }
        let mut server = serve(&dir, &extra.iter().map(String::as_str).collect::<Vec<_>>());
        // serve --max-conns 1 in `serve`: one client per server, so restart for each peer.
        let peers: Vec<(&str, Vec<String>)> = vec![
            (
                "curl",
                vec![
                    "--silent".into(),
                    "--show-error".into(),
                    "--cacert".into(),
                    ca.display().to_string(),
                    "--resolve".into(),
                    format!("localhost:{}:127.0.0.1", server.port),
                    format!("https://localhost:{}/interop", server.port),
                ],
            ),
            (
                "gnutls-cli",
                vec![
                    "--x509cafile".into(),
                    ca.display().to_string(),
                    "--port".into(),
                    String::new(),
                    "localhost".into(),
                ],
            ),
            (
                "openssl",
                vec![
                    "s_client".into(),
                    "-quiet".into(),
                    "-verify_return_error".into(),
                    "-CAfile".into(),
                    ca.display().to_string(),
                    "-servername".into(),
                    "localhost".into(),
                    "-connect".into(),
                    String::new(),
                ],
            ),
        ];
        for (i, (peer, args)) in peers.into_iter().enumerate() {
            if i > 0 {
                server = serve(&dir, &extra.iter().map(String::as_str).collect::<Vec<_>>());
            }
            let port = server.port.to_string();
            let args: Vec<String> = args
                .into_iter()
                .map(|a| match (peer, a.is_empty()) {
                    ("gnutls-cli", true) => port.clone(),
                    ("openssl", true) => format!("127.0.0.1:{port}"),
                    _ => a,
                })
                .collect();
            let mut child = Command::new(peer)
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("{peer}: {e}"));
            let out = if peer == "curl" {
                finish(child).1
            } else {
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(b"GET /interop HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    .unwrap();
                // Read until the page arrived, then end the peer (it would wait for more input).
                let mut stdout = child.stdout.take().unwrap();
                let reader = std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stdout.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        if String::from_utf8_lossy(&seen).contains("cipher:") {
                            break;
                        }
                    }
                    String::from_utf8_lossy(&seen).into_owned()
                });
                let deadline = Instant::now() + Duration::from_secs(30);
                while !reader.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
                reader.join().unwrap()
            };
            assert!(
                out.contains("request: GET /interop HTTP/1.1"),
                "{peer} against {what}: {out}"
            );
            let (code, _, err) = finish(server.into_child());
            assert_eq!(code, 0, "{peer} against {what}: {err}");
            assert!(
                err.contains("verifier clean"),
                "{peer} against {what}: {err}"
            );
            server = Server {
                child: Command::new("true").spawn().unwrap(),
                port: 0,
            };
        }
        drop(server);
    }
}

/// A client sends 5 MB to `serve --echo`, half-closes (stdin ends: close_notify and FIN) and
/// reads the echo to the end, 20 times: every byte comes back. The server shuts down after the
/// client's close_notify and closes while its echo may still be in flight; a close that reset
/// the connection made the client lose the tail ("the peer reset the connection").
#[test]
fn five_megabytes_echoed_with_half_close_arrive_whole_every_time() {
    let dir = pki("half_close");
    let ca = dir.join("ca.pem").display().to_string();
    let runs = 20;
    let server = serve_many(&dir, runs, &["--echo"]);
    let target = format!("127.0.0.1:{}", server.port);
    let payload: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    for run in 0..runs {
        let mut child = wsktls()
            .args(["connect", &target, "--sni", "localhost", "--ca", &ca])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wsktls connect");
        let mut stdin = child.stdin.take().unwrap();
        let input = payload.clone();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let mut echoed = Vec::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut echoed)
            .unwrap();
        writer.join().unwrap();
        let (code, _, err) = finish(child);
        assert_eq!((code, echoed.len()), (0, payload.len()), "run {run}: {err}");
        assert!(echoed == payload, "run {run}: the echo differs");
    }
}
