//! `wsktls serve` and `wsktls connect` as separate processes — two machines, each its own kemu
//! kernel with its own copy of the driver, talking TLS over loopback; and curl against `serve`.

#![cfg(not(windows))]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kemu::{TestCa, Validity};

fn wsktls() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wsktls"))
}

/// A CA and a localhost certificate as PEM files.
fn pki(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wsktls-harness-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = TestCa::generate("harness CA").unwrap();
    let issued = ca.issue(&["localhost"], Validity::Current).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.join("chain.pem"), &issued.chain_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &issued.key_pem).unwrap();
    dir
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, extra: &[&str]) -> Server {
    serve_many(dir, 1, extra)
}

/// `serve` that stops after `conns` connections.
fn serve_many(dir: &Path, conns: u32, extra: &[&str]) -> Server {
    let conns = conns.to_string();
    let mut args = vec!["--max-conns", &conns];
    args.extend_from_slice(extra);
    spawn_server(dir, &args)
}

/// `serve --port 0` with the test certificate and `args`, once it printed its address.
fn spawn_server(dir: &Path, args: &[&str]) -> Server {
    let mut child = wsktls()
        .args(["serve", "--port", "0", "--cert"])
        .arg(dir.join("chain.pem"))
        .arg("--key")
        .arg(dir.join("key.pem"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wsktls serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("serve printed {line:?}"));
    Server { child, port }
}

/// Waits for a process (at most 60 s): exit code, stdout, stderr.
fn finish(mut child: Child) -> (i32, String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out).unwrap();
    }
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        s.read_to_string(&mut err).unwrap();
    }
    (child.wait().unwrap().code().unwrap_or(-1), out, err)
}

/// `wsktls connect ARGS` with every stream piped.
fn spawn_connect(args: &[&str]) -> Child {
    wsktls()
        .arg("connect")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wsktls connect")
}

fn connect(args: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut child = spawn_connect(args);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    finish(child)
}

#[test]
fn serve_and_connect_in_two_processes() {
    let dir = pki("echo");
    let ca = dir.join("ca.pem").display().to_string();
    let server = serve(&dir, &["--echo"]);
    let target = format!("127.0.0.1:{}", server.port);
    let (code, out, err) = connect(
        &[&target, "--sni", "localhost", "--ca", &ca, "--tls13"],
        b"hello across kernels\n",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hello across kernels\n", "{err}");
    assert!(err.contains("connected: TLS 1.3"), "{err}");
    assert!(err.contains("verifier clean"), "{err}");
    let digest = err
        .split("SHA-256 ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the server certificate's digest")
        .to_string();
    // The server stops after one connection and reports a clean unload.
    let (code, _, err) = finish(server.into_child());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("verifier clean"), "{err}");

    // Pinning by the digest just seen, with a host name the driver resolves.
    let server = serve(&dir, &["--echo"]);
    let target = format!("localhost:{}", server.port);
    let (code, out, err) = connect(&[&target, "--pin", &digest, "--tls12"], b"pinned\n");
    assert_eq!((code, out.as_str()), (0, "pinned\n"), "{err}");
    assert!(err.contains("connected: TLS 1.2"), "{err}");
    drop(server);

    // A wrong pin fails with both statuses named.
    let server = serve(&dir, &["--echo"]);
    let target = format!("127.0.0.1:{}", server.port);
    let mut wrong = digest.into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let (code, _, err) = connect(&[&target, "--pin", &wrong], b"x");
    assert_eq!(code, 4, "a TLS failure exits with 4: {err}");
    assert!(
        err.contains("not the pinned one (STATUS_PIN_MISMATCH, 0xE0000001)"),
        "{err}"
    );
}

#[test]
fn failures_are_told_in_words_with_distinct_exit_codes() {
    // Nothing listens on a port just released: a connection error (3).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let (code, _, err) = connect(&[&target, "--insecure"], b"");
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("refused") && err.contains("STATUS_CONNECTION_REFUSED, 0xC0000236"),
        "{err}"
    );
    // An untrusted server: a TLS error (4).
    let dir = pki("untrusted");
    let server = serve(&dir, &["--echo"]);
    let target = format!("127.0.0.1:{}", server.port);
    let (code, _, err) = connect(&[&target, "--sni", "localhost"], b"x");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("SEC_E_UNTRUSTED_ROOT, 0x80090325"), "{err}");
    drop(server);
    // A usage error (2), and `stats` under kemu says where the stats are.
    let (code, _, err) = connect(&["no-port-here"], b"");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("expected HOST:PORT"), "{err}");
    let out = wsktls().arg("stats").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("serve"));
    // An unknown server certificate is named as such (not as a host name that was not found),
    // and the error comes last, after the driver's stats.
    let out = wsktls()
        .args(["serve", "--port", "0", "--echo", "--thumbprint"])
        .arg("01".repeat(20))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("no certificate with that thumbprint") && !err.contains("host name"),
        "{err}"
    );
}

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

impl Server {
    fn into_child(mut self) -> Child {
        std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
    }
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

/// `serve` refuses at start what would only fail every handshake later, naming the file: a key
/// that is not the certificate's, an encrypted key (with how to decrypt it), an Ed25519
/// certificate, and a key file that is not there.
#[test]
fn serve_refuses_a_bad_certificate_or_key_at_start_naming_the_file() {
    let dir = pki("bad_pem");
    let chain = dir.join("chain.pem");
    let key = dir.join("key.pem");
    // Another key of the same kind.
    let other = TestCa::generate("other")
        .unwrap()
        .issue(&["localhost"], Validity::Current)
        .unwrap();
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let encrypted = dir.join("encrypted-key.pem");
    let made = Command::new("openssl")
        .args(["pkey", "-aes256", "-passout", "pass:secret", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&encrypted)
        .status()
        .expect("openssl");
    assert!(made.success());
    let ed_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed_cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&ed_key)
        .unwrap();
    let (ed_chain, ed_key_path) = (dir.join("ed-chain.pem"), dir.join("ed-key.pem"));
    std::fs::write(&ed_chain, ed_cert.pem()).unwrap();
    std::fs::write(&ed_key_path, ed_key.serialize_pem()).unwrap();
    let missing = dir.join("missing.pem");
    for (chain, key, words, names) in [
        (
            &chain,
            &other_key,
            "does not belong to certificate",
            &other_key,
        ),
        (&chain, &encrypted, "is encrypted", &encrypted),
        (&ed_chain, &ed_key_path, "EdDSA", &ed_chain),
        (&chain, &missing, "key ", &missing),
    ] {
        let out = wsktls()
            .args(["serve", "--port", "0", "--echo", "--cert"])
            .arg(chain)
            .arg("--key")
            .arg(key)
            .output()
            .expect("wsktls serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(words), "{words}: {err}");
        assert!(
            err.contains(&names.display().to_string()),
            "names {}: {err}",
            names.display()
        );
    }
}

/// Each command's `--help` describes that command (`stats` showed the bench text once).
#[test]
fn each_command_has_its_own_help() {
    for (command, words) in [
        ("stats", "counters and limits"),
        ("bench", "against plain rustls"),
        ("serve", "--cert"),
        ("connect", "--pin"),
    ] {
        let out = wsktls().args([command, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{command}: {text}");
        assert!(text.contains(words), "{command} --help: {text}");
    }
    let stats = wsktls().args(["stats", "--help"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&stats.stdout).contains("rustls"));
}

/// `serve` with no connection limit (it runs until interrupted).
fn serve_until_stopped(dir: &Path) -> Server {
    spawn_server(dir, &["--echo"])
}

/// An openssl client that stays connected (its stdin stays open) until the server ends the
/// connection; returns once its handshake is done.
fn idle_openssl_client(dir: &Path, port: u16) -> Child {
    let mut child = Command::new("openssl")
        .args(["s_client", "-verify_return_error", "-CAfile"])
        .arg(dir.join("ca.pem"))
        .args(["-servername", "localhost", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 && !line.contains("Verify return code") {
        line.clear();
    }
    assert!(line.contains("Verify return code: 0"), "s_client: {line}");
    // Keep reading in the background so the client never blocks on its output.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    child
}

#[test]
fn serve_stops_on_sigterm_closing_its_connections_gracefully() {
    let dir = pki("sigterm");
    let server = serve_until_stopped(&dir);
    let clients: Vec<Child> = (0..2)
        .map(|_| idle_openssl_client(&dir, server.port))
        .collect();
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, _, err) = finish(server.into_child());
    assert_eq!(code, 0, "serve after SIGTERM: {err}");
    assert!(
        err.contains("closing 2 open connection(s) gracefully"),
        "serve said: {err}"
    );
    assert!(
        !err.contains("aborting"),
        "the clients closed in time: {err}"
    );
    // Both clients saw the server end the connection (close_notify, FIN) and exited.
    for client in clients {
        let (code, _, _) = finish(client);
        assert_ne!(code, -1, "s_client was still running");
    }
}

#[test]
fn connect_ends_with_exit_0_when_the_server_closes_first_even_with_stdin_open() {
    let dir = pki("server-closes");
    for extra in [&[][..], &["--ign-eof"][..]] {
        let server = serve_many(&dir, 1, &["--http"]);
        let ca = dir.join("ca.pem").display().to_string();
        let target = format!("localhost:{}", server.port);
        let mut args = vec![target.as_str(), "--ca", &ca];
        args.extend_from_slice(extra);
        let mut child = spawn_connect(&args);
        // The request goes out; stdin stays open (held below) while the server answers an
        // HTTP/1.0 request and closes.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"GET /bye HTTP/1.0\r\n\r\n").unwrap();
        stdin.flush().unwrap();
        let (code, out, err) = finish(child);
        drop(stdin);
        assert_eq!(code, 0, "{extra:?}: {err}");
        assert!(out.starts_with("HTTP/1.0 200 OK"), "{out}");
        assert!(out.contains("request: GET /bye HTTP/1.0"), "{out}");
        let (code, _, err) = finish(server.into_child());
        assert_eq!(code, 0, "serve: {err}");
    }
}

#[test]
fn an_interrupted_connect_leaves_no_private_key_behind() {
    let dir = pki("interrupted");
    let server = serve_many(&dir, 1, &["--echo"]);
    let target = format!("localhost:{}", server.port);
    let ca = dir.join("ca.pem").display().to_string();
    let mut child = spawn_connect(&[&target, "--ca", &ca]);
    let pid = child.id();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("connected:") {
        line.clear();
    }
    assert!(line.contains("connected:"), "connect said {line:?}");
    // While connected, kemu's store (with the server certificate's trust, and any key) exists.
    let stores = || -> Vec<PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("kemu-store-{pid}-")))
            })
            .collect()
    };
    assert!(!stores().is_empty(), "no kemu store while connected");
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(130), "interrupted connect");
    assert_eq!(stores(), Vec::<PathBuf>::new(), "stores left behind");
}

#[test]
fn mutual_tls_from_the_command_line() {
    let dir = pki("mutual");
    // Client certificates come from a CA of their own, which the server is told to trust.
    let ca = TestCa::generate("client CA").unwrap();
    let client = ca.issue(&["wsktls client"], Validity::Current).unwrap();
    std::fs::write(dir.join("client-ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.join("client.pem"), &client.chain_pem).unwrap();
    std::fs::write(dir.join("client.key"), &client.key_pem).unwrap();
    let client_ca = dir.join("client-ca.pem").display().to_string();
    // One connection served: the refused one never counts (ACCEPT only hands out good ones).
    let server = serve_many(&dir, 1, &["--echo", "--client-ca", &client_ca]);
    let target = format!("localhost:{}", server.port);
    let ca = dir.join("ca.pem").display().to_string();
    // Without a certificate: refused.
    let (code, out, err) = connect(&[&target, "--ca", &ca], b"no certificate");
    assert_ne!(
        code, 0,
        "a client without a certificate got through: {out}{err}"
    );
    assert!(out.is_empty(), "{out}");
    // With a certificate the server trusts: the echo comes back.
    let (code, out, err) = connect(
        &[
            &target,
            "--ca",
            &ca,
            "--cert",
            &dir.join("client.pem").display().to_string(),
            "--key",
            &dir.join("client.key").display().to_string(),
        ],
        b"mutual hello",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "mutual hello");
    let (code, _, err) = finish(server.into_child());
    assert_eq!(code, 0, "serve: {err}");
}

#[test]
fn connect_shows_the_servers_chain() {
    let dir = pki("show-certs");
    let server = serve(&dir, &["--echo"]);
    let target = format!("localhost:{}", server.port);
    let ca = dir.join("ca.pem").display().to_string();
    let (code, out, err) = connect(&[&target, "--ca", &ca, "--show-certs"], b"x");
    assert_eq!((code, out.as_str()), (0, "x"), "{err}");
    // The leaf (its SHA-256 is the one the driver reports), then the CA that issued it.
    let digest = err
        .split("server certificate SHA-256 ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in {err}"));
    let leaf = err
        .split("certificate 0: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no chain in {err}"));
    assert!(leaf.starts_with("subject CN="), "{err}");
    assert!(leaf.contains("issuer CN=harness CA"), "{err}");
    assert!(leaf.contains("valid "), "{err}");
    assert!(leaf.contains(&format!("SHA-256 {digest}")), "{err}");
    assert!(
        err.contains("certificate 1: subject CN=harness CA"),
        "{err}"
    );
    drop(server);
}
