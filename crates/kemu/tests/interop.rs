//! kemu's kernel Schannel against TLS peers no one here wrote: openssl and gnutls (Debian
//! packages), both roles, TLS 1.3 and 1.2, with ALPN and SNI, over loopback.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kemu::testing::sspi::{CredentialSpec, Tls, acquire, free_credential};
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

/// A CA (trusted by the kernel) and a localhost server certificate, also written to files for
/// the peer programs.
struct Pki {
    dir: PathBuf,
    thumbprint: Thumbprint,
}

impl Pki {
    fn new(kernel: &Kernel, name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("kemu-interop-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa::generate("kemu interop CA").unwrap();
        let issued = ca.issue(&["localhost"], Validity::Current).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.join("chain.pem"), &issued.chain_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &issued.key_pem).unwrap();
        let store = kernel.cert_store();
        store.add_root_pem(ca.cert_pem().as_bytes()).unwrap();
        let thumbprint = store
            .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
            .unwrap();
        Pki { dir, thumbprint }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A peer process, killed when dropped.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn connect_when_listening(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A connect to a free port in the ephemeral range can pick that same port as its own
        // and connect to itself (TCP simultaneous open): that is nobody listening yet.
        if let Ok(s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            if s.local_addr().ok() != s.peer_addr().ok() {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
        }
        assert!(Instant::now() < deadline, "peer never listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
        || Command::new(program)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
}

/// kemu client: handshake with `target`, send an HTTP request, return (response, protocol, ALPN).
fn kemu_https_get(
    kernel: &Kernel,
    port: u16,
    disabled: u32,
    alpn: &'static [&'static str],
) -> (String, u32, Vec<u8>) {
    let mut io = connect_when_listening(port);
    kernel
        .run("client", move || {
            let cred = acquire(&CredentialSpec {
                disabled_protocols: disabled,
                ..Default::default()
            })
            .unwrap();
            let mut tls = Tls::client(cred, "localhost", alpn, 0);
            tls.handshake(&mut io)
                .unwrap_or_else(|e| panic!("handshake failed: {e:#x}"));
            let info: SecPkgContext_ConnectionInfo =
                tls.query(SECPKG_ATTR_CONNECTION_INFO).unwrap();
            let proto: SecPkgContext_ApplicationProtocol =
                tls.query(SECPKG_ATTR_APPLICATION_PROTOCOL).unwrap();
            io.write_all(
                &tls.encrypt(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    .unwrap(),
            )
            .unwrap();
            let mut response = Vec::new();
            while let Ok(Some(p)) = tls.read(&mut io) {
                response.extend_from_slice(&p);
            }
            tls.delete();
            free_credential(cred);
            (
                String::from_utf8_lossy(&response).into_owned(),
                info.dwProtocol,
                proto.ProtocolId[..proto.ProtocolIdSize as usize].to_vec(),
            )
        })
        .unwrap()
}

/// kemu server: accept one connection, read a line, answer "echo: <line>", close_notify.
fn kemu_echo_once(
    kernel: &Kernel,
    listener: TcpListener,
    thumbprint: Thumbprint,
    alpn: &'static [&'static str],
) -> (String, Vec<u8>) {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut io = loop {
        match listener.accept() {
            Ok((io, _)) => break io,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("the peer never connected: {e}"),
        }
    };
    io.set_nonblocking(false).unwrap();
    io.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    kernel
        .run("server", move || {
            let cred = acquire(&CredentialSpec {
                inbound: true,
                thumbprint: Some(thumbprint),
                ..Default::default()
            })
            .unwrap();
            let mut tls = Tls::server(cred, alpn, 0);
            tls.handshake(&mut io)
                .unwrap_or_else(|e| panic!("handshake failed: {e:#x}"));
            let proto: SecPkgContext_ApplicationProtocol =
                tls.query(SECPKG_ATTR_APPLICATION_PROTOCOL).unwrap();
            let mut line = Vec::new();
            while !line.contains(&b'\n') {
                match tls.read(&mut io) {
                    Ok(Some(p)) => line.extend_from_slice(&p),
                    other => panic!("client went away: {other:?}"),
                }
            }
            let mut reply = b"echo: ".to_vec();
            reply.extend_from_slice(&line);
            io.write_all(&tls.encrypt(&reply).unwrap()).unwrap();
            io.write_all(&tls.close_notify().unwrap()).unwrap();
            tls.delete();
            free_credential(cred);
            (
                String::from_utf8_lossy(&line).into_owned(),
                proto.ProtocolId[..proto.ProtocolIdSize as usize].to_vec(),
            )
        })
        .unwrap()
}

/// Runs a client program with `input` on stdin (kept open) until it exits or times out.
fn run_client(mut command: Command, input: &[u8]) -> String {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("peer program");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    format!("{out}\n--stderr--\n{err}")
}

#[test]
fn kemu_client_against_openssl_s_server() {
    let kernel = boot();
    let pki = Pki::new(&kernel, "ossl-server");
    for (flag, disabled, expected) in [
        ("-tls1_3", SP_PROT_TLS1_2_CLIENT, SP_PROT_TLS1_3_CLIENT),
        ("-tls1_2", SP_PROT_TLS1_3_CLIENT, SP_PROT_TLS1_2_CLIENT),
    ] {
        let port = free_port();
        let _server = Peer(
            Command::new("openssl")
                .args([
                    "s_server",
                    "-accept",
                    &format!("127.0.0.1:{port}"),
                    "-cert",
                    &pki.path("chain.pem"),
                    "-key",
                    &pki.path("key.pem"),
                    "-www",
                    "-alpn",
                    "http/1.1",
                    flag,
                    "-quiet",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("openssl s_server"),
        );
        let (response, protocol, alpn) = kemu_https_get(&kernel, port, disabled, &["http/1.1"]);
        assert!(
            response.starts_with("HTTP/1.0 200 ok"),
            "{flag}: {response}"
        );
        assert_eq!(protocol, expected, "{flag}");
        assert_eq!(alpn, b"http/1.1");
    }
    kernel.shutdown().unwrap();
}

#[test]
fn openssl_s_client_against_kemu_server() {
    let kernel = boot();
    let pki = Pki::new(&kernel, "ossl-client");
    for flag in ["-tls1_3", "-tls1_2"] {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::scope(|scope| {
            let server = scope
                .spawn(|| kemu_echo_once(&kernel, listener, pki.thumbprint, &["h2", "http/1.1"]));
            let mut command = Command::new("openssl");
            command.args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-CAfile",
                &pki.path("ca.pem"),
                "-servername",
                "localhost",
                "-verify_return_error",
                "-verify_hostname",
                "localhost",
                "-alpn",
                "h2",
                flag,
                "-quiet",
            ]);
            let output = run_client(command, b"hello from openssl\n");
            let (line, alpn) = server.join().unwrap();
            assert_eq!(line, "hello from openssl\n");
            assert_eq!(alpn, b"h2");
            assert!(
                output.contains("echo: hello from openssl"),
                "{flag}: {output}"
            );
        });
    }
    kernel.shutdown().unwrap();
}

#[test]
fn kemu_client_against_gnutls_serv() {
    if !have("gnutls-serv") {
        panic!("gnutls-serv is missing: install Debian's gnutls-bin (.ci/run does)");
    }
    let kernel = boot();
    let pki = Pki::new(&kernel, "gnutls-server");
    for (priority, disabled, expected) in [
        (
            "NORMAL:-VERS-ALL:+VERS-TLS1.3",
            SP_PROT_TLS1_2_CLIENT,
            SP_PROT_TLS1_3_CLIENT,
        ),
        (
            "NORMAL:-VERS-ALL:+VERS-TLS1.2",
            SP_PROT_TLS1_3_CLIENT,
            SP_PROT_TLS1_2_CLIENT,
        ),
    ] {
        let port = free_port();
        let _server = Peer(
            Command::new("gnutls-serv")
                .args([
                    "--http",
                    "--x509certfile",
                    &pki.path("chain.pem"),
                    "--x509keyfile",
                    &pki.path("key.pem"),
                    "--port",
                    &port.to_string(),
                    "--priority",
                    priority,
                    "--alpn",
                    "http/1.1",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("gnutls-serv"),
        );
        let (response, protocol, alpn) = kemu_https_get(&kernel, port, disabled, &["http/1.1"]);
        assert!(
            response.starts_with("HTTP/1.0 200 OK"),
            "{priority}: {response}"
        );
        assert!(response.contains("GnuTLS"), "{priority}: {response}");
        assert_eq!(protocol, expected, "{priority}");
        assert_eq!(alpn, b"http/1.1");
    }
    kernel.shutdown().unwrap();
}

#[test]
fn gnutls_cli_against_kemu_server() {
    if !have("gnutls-cli") {
        panic!("gnutls-cli is missing: install Debian's gnutls-bin (.ci/run does)");
    }
    let kernel = boot();
    let pki = Pki::new(&kernel, "gnutls-client");
    for priority in [
        "NORMAL:-VERS-ALL:+VERS-TLS1.3",
        "NORMAL:-VERS-ALL:+VERS-TLS1.2",
    ] {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::scope(|scope| {
            let server =
                scope.spawn(|| kemu_echo_once(&kernel, listener, pki.thumbprint, &["http/1.1"]));
            let mut command = Command::new("gnutls-cli");
            command.args([
                "--x509cafile",
                &pki.path("ca.pem"),
                "--port",
                &port.to_string(),
                "--priority",
                priority,
                "--alpn",
                "http/1.1",
                "--sni-hostname",
                "localhost",
                "--verify-hostname",
                "localhost",
                "127.0.0.1",
            ]);
            let output = run_client(command, b"hello from gnutls\n");
            let (line, alpn) = server.join().unwrap();
            assert_eq!(line, "hello from gnutls\n");
            assert_eq!(alpn, b"http/1.1");
            assert!(
                output.contains("echo: hello from gnutls"),
                "{priority}: {output}"
            );
        });
    }
    kernel.shutdown().unwrap();
}
