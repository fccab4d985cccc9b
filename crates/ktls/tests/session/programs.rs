//! The other end when it is not a ktls session: peer programs (openssl, curl) spawned and their
//! output collected, a rustls client, a peer that tampers with records, free ports.

use super::*;

/// Starts a peer program with `input` on its stdin (kept open).
pub(super) fn spawn_peer(mut command: Command, input: &[u8]) -> std::process::Child {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("peer program");
    child.stdin.as_mut().unwrap().write_all(input).unwrap();
    child
}

/// Collects what a peer writes to `pipe`, as it comes, on a thread of its own.
pub(super) fn collect_pipe(
    mut pipe: impl Read + Send + 'static,
) -> (Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
    let collected = Arc::new(Mutex::new(Vec::new()));
    let sink = collected.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    (collected, reader)
}

/// stdout + stderr of a peer once it exits (killed after 20 s).
pub(super) fn collect(mut child: std::process::Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    // A test that watches stderr itself has taken it already.
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut err).unwrap();
    }
    format!("{out}\n--stderr--\n{err}")
}

/// A rustls client for "localhost" that trusts `ca` (DER): a peer no one here wrote.
pub(super) fn rustls_client(ca: Vec<u8>) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.into()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap()
}

/// The peer of the test above: handshake, one tampered record, then read to the end.
pub(super) fn tampering_peer(port: u16, ca: Vec<u8>) -> (Option<rustls::AlertDescription>, String) {
    let mut tls = rustls_client(ca);
    let mut socket = std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut socket).unwrap();
    }
    tls.writer()
        .write_all(b"a record with a broken tag")
        .unwrap();
    let mut wire = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut wire).unwrap();
    }
    let last = wire.len() - 1;
    wire[last] ^= 0x80;
    socket.write_all(&wire).unwrap();
    let mut alert = None;
    let mut buf = [0u8; 4096];
    let ending = loop {
        match socket.read(&mut buf) {
            Ok(0) => break "FIN".to_string(),
            Ok(n) => {
                let _ = tls.read_tls(&mut &buf[..n]);
                if let Err(rustls::Error::AlertReceived(a)) = tls.process_new_packets() {
                    alert = Some(a);
                }
            }
            Err(e) => break format!("{e}"),
        }
    };
    (alert, ending)
}

pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(super) fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    // A probe that connected to itself (a free ephemeral port picked as its own source port,
    // TCP simultaneous open) found nobody listening.
    let listening = || {
        std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
            .and_then(|s| Ok(s.local_addr()? != s.peer_addr()?))
            .unwrap_or(false)
    };
    while !listening() {
        assert!(Instant::now() < deadline, "peer never listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
