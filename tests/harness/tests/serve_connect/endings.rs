//! How the commands end: a signal, the server closing first, an interrupted connect.

use super::*;

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
