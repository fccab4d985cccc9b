//! ktls sessions and listeners under kemu: TLS server and client in the kernel, driven by async
//! kernel Schannel on WSK sockets and one work item each — against each other and against
//! openssl, with the verifier checking that nothing leaks.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kemu::testing::isolated;
use kemu::{Kernel, KernelConfig, TestCa, Thumbprint, Validity};
use ksys::ntdef::{STATUS_CONNECTION_DISCONNECTED, STATUS_IO_TIMEOUT};
use ksys::schannel::*;
use ksys::sspi::{SEC_E_CERT_EXPIRED, SEC_E_UNTRUSTED_ROOT, SEC_E_WRONG_PRINCIPAL};
use ksys::wsk::*;
use ktls::census::Census;
use ktls::credential::{Credential, CredentialSpec, Versions};
use ktls::listener::{ListenObserver, ListenState, Listener, ListenerConfig};
use ktls::session::{Config, Observer, Received, Role, Session, State};
use ktls::wsk::Provider;
use ktls::{Error, STATUS_PIN_MISMATCH, STATUS_TLS_FAILURE};
use testkit::Pki;

fn device() -> *mut ksys::io::DEVICE_OBJECT {
    testkit::test_driver::device()
}

/// Counts changes; waiters poll their condition after each. Carries the census every session
/// and listener of a test joins, so `finish` can wait until all of them released everything.
#[derive(Clone)]
struct Changes(Arc<(Mutex<u64>, Condvar)>, Census);

impl Observer for Changes {
    fn changed(&self) {
        *self.0.0.lock().unwrap() += 1;
        self.0.1.notify_all();
    }
}

impl ListenObserver for Changes {
    fn for_accepted(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl Changes {
    /// Made on a kernel thread (the census lives in pool).
    fn new() -> Changes {
        Changes(Arc::default(), Census::try_new().unwrap())
    }

    fn census(&self) -> Option<Census> {
        Some(self.1.clone())
    }

    /// Waits until `ready` gives Some (checked after every change), at most 30 s.
    fn wait<R>(&self, what: &str, mut ready: impl FnMut() -> Option<R>) -> R {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut guard = self.0.0.lock().unwrap();
        loop {
            drop(guard);
            if let Some(r) = ready() {
                return r;
            }
            guard = self.0.0.lock().unwrap();
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            guard = self
                .0
                .1
                .wait_timeout(guard, Duration::from_millis(20))
                .unwrap()
                .0;
        }
    }
}

fn boot(name: &str) -> (Kernel, Pki) {
    boot_with(name, KernelConfig::from_env())
}

/// [`boot`] with a kernel configuration of the test's own (a fault plan): the test PKI (a
/// localhost certificate) and the test driver whose device the sessions run on.
fn boot_with(name: &str, config: KernelConfig) -> (Kernel, Pki) {
    let kernel = testkit::boot(config);
    let pki = Pki::install(
        &kernel,
        "ktls session CA",
        &["localhost"],
        &format!("ktls-session-{name}"),
    );
    testkit::test_driver::load(&kernel, "ktlssession").unwrap();
    (kernel, pki)
}

fn v4(ip: [u8; 4], port: u16) -> SOCKADDR_STORAGE {
    let mut s = SOCKADDR_STORAGE {
        ss_family: AF_INET as u16,
        data: [0; 126],
    };
    s.data[0..2].copy_from_slice(&port.to_be_bytes());
    s.data[2..6].copy_from_slice(&ip);
    s
}

const ALL: Versions = Versions {
    tls12: true,
    tls13: true,
};

fn server_credential(thumbprint: Thumbprint) -> ktls::pool::PoolArc<Credential> {
    Credential::acquire(&CredentialSpec {
        inbound: true,
        thumbprint: Some(thumbprint.0),
        flags: 0,
        versions: ALL,
        require_client_certificate: false,
    })
    .unwrap()
}

fn client_credential(versions: Versions, flags: u32) -> ktls::pool::PoolArc<Credential> {
    Credential::acquire(&CredentialSpec {
        inbound: false,
        thumbprint: None,
        flags,
        versions,
        require_client_certificate: false,
    })
    .unwrap()
}

/// Starts a client session with every option spelled out.
fn connect_with(
    provider: &Provider,
    credential: ktls::pool::PoolArc<Credential>,
    port: u16,
    target: &str,
    pinned: Option<[u8; 32]>,
    changes: &Changes,
) -> Session<Changes> {
    connect_to(
        provider,
        credential,
        v4([127, 0, 0, 1], port),
        target,
        pinned,
        changes,
    )
}

/// [`connect_with`] to any address.
fn connect_to(
    provider: &Provider,
    credential: ktls::pool::PoolArc<Credential>,
    remote: SOCKADDR_STORAGE,
    target: &str,
    pinned: Option<[u8; 32]>,
    changes: &Changes,
) -> Session<Changes> {
    // SAFETY: as in `listen`.
    unsafe {
        Session::start(
            device(),
            Config {
                role: Role::Client {
                    npi: provider.npi(),
                    remote,
                    target: target.encode_utf16().collect(),
                    resolve: None,
                },
                alpn: Vec::new(),
                require_client_certificate: false,
                max_queued: 64 * 1024,
                receive_window: 64 * 1024,
                handshake_timeout_ms: 10_000,
                pinned,
                keep_peer_certificates: false,
                census: changes.census(),
            },
            credential,
            changes.clone(),
        )
    }
    .unwrap()
}

fn listen(
    provider: &Provider,
    credential: ktls::pool::PoolArc<Credential>,
    alpn: &[u8],
    changes: &Changes,
) -> Listener<Changes> {
    // SAFETY: the test driver's device and the captured provider outlive the listener.
    let listener = unsafe {
        Listener::start(
            device(),
            ListenerConfig {
                npi: provider.npi(),
                local: v4([127, 0, 0, 1], 0),
                alpn: alpn.to_vec(),
                require_client_certificate: false,
                max_queued: 256 * 1024,
                receive_window: 256 * 1024,
                backlog: 8,
                handshake_timeout_ms: 2000,
                census: changes.census(),
            },
            credential,
            changes.clone(),
        )
    }
    .unwrap();
    changes.wait("listening", || {
        (listener.state() == ListenState::Listening).then_some(())
    });
    listener
}

fn connect(
    provider: &Provider,
    credential: ktls::pool::PoolArc<Credential>,
    port: u16,
    target: &str,
    alpn: &[u8],
    changes: &Changes,
) -> Session<Changes> {
    // SAFETY: as in `listen`.
    unsafe {
        Session::start(
            device(),
            Config {
                role: Role::Client {
                    npi: provider.npi(),
                    remote: v4([127, 0, 0, 1], port),
                    target: target.encode_utf16().collect(),
                    resolve: None,
                },
                alpn: alpn.to_vec(),
                require_client_certificate: false,
                max_queued: 256 * 1024,
                receive_window: 256 * 1024,
                handshake_timeout_ms: 10_000,
                pinned: None,
                keep_peer_certificates: false,
                census: changes.census(),
            },
            credential,
            changes.clone(),
        )
    }
    .unwrap()
}

fn open(session: &Session<Changes>, changes: &Changes) {
    changes.wait("the handshake", || match session.state() {
        State::Handshaking => None,
        State::Open => Some(()),
        State::Closed => panic!("handshake failed: {:?}", session.failure()),
    });
}

/// Sends `data` from `client`, echoes it back through `server`, returns what came back; all
/// on this thread, non-blocking calls only, waiting for changes when nothing moved.
fn echo(
    client: &Session<Changes>,
    server: &Session<Changes>,
    changes: &Changes,
    data: &[u8],
) -> Vec<u8> {
    let mut to_send = data;
    let mut at_server: Vec<u8> = Vec::new();
    let mut got: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    changes.wait("echo", || {
        loop {
            let mut moved = false;
            if !to_send.is_empty() {
                let n = client.send(to_send).expect("client send");
                to_send = &to_send[n..];
                moved |= n > 0;
            }
            match server.recv(&mut buf) {
                Received::Data(n) => {
                    at_server.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Received::Pending => {}
                other => panic!("server receive: {other:?}"),
            }
            if !at_server.is_empty() {
                let n = server.send(&at_server).expect("server send");
                at_server.drain(..n);
                moved |= n > 0;
            }
            match client.recv(&mut buf) {
                Received::Data(n) => {
                    got.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Received::Pending => {}
                other => panic!("client receive: {other:?}"),
            }
            if got.len() >= data.len() {
                return Some(std::mem::take(&mut got));
            }
            if !moved {
                return None;
            }
        }
    })
}

/// A WSK registration, a change tracker, and a listener with the test server certificate and
/// no ALPN: what most tests serve with. Finish with [`finish`] after dropping the sessions.
fn plain_listener(thumbprint: Thumbprint) -> (Provider, Changes, Listener<Changes>) {
    let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
    let changes = Changes::new();
    let listener = listen(&provider, server_credential(thumbprint), b"", &changes);
    (provider, changes, listener)
}

/// A client connected to `listener`, both ends established (any version, no ALPN).
fn established_pair(
    provider: &Provider,
    listener: &Listener<Changes>,
    changes: &Changes,
) -> (Session<Changes>, Session<Changes>) {
    let client = connect(
        provider,
        client_credential(ALL, 0),
        listener.local_port(),
        "localhost",
        b"",
        changes,
    );
    let server = changes.wait("an accepted session", || listener.next());
    open(&client, changes);
    open(&server, changes);
    (client, server)
}

/// Streams `total` bytes of `chunk` repeated from `client` to `server`, handing each received
/// piece to `received` and calling `between` after every round; non-blocking calls only.
fn stream(
    client: &Session<Changes>,
    server: &Session<Changes>,
    changes: &Changes,
    total: usize,
    chunk: &[u8],
    mut received: impl FnMut(&[u8]),
    mut between: impl FnMut(),
) {
    let mut buf = vec![0u8; 256 * 1024];
    let (mut sent, mut got, mut from) = (0usize, 0usize, 0usize);
    changes.wait("the stream", || {
        loop {
            let mut moved = false;
            if sent < total {
                let want = (total - sent).min(chunk.len() - from);
                let n = client.send(&chunk[from..from + want]).unwrap();
                sent += n;
                from = (from + n) % chunk.len();
                moved |= n > 0;
            }
            match server.recv(&mut buf) {
                Received::Data(n) => {
                    received(&buf[..n]);
                    got += n;
                    moved = true;
                }
                Received::Pending => {}
                other => panic!("{other:?} after {got}"),
            }
            between();
            if got >= total {
                return Some(());
            }
            if !moved {
                return None;
            }
        }
    });
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

fn driver_to_driver(versions: Versions, expect_protocol: u32) {
    let (kernel, pki) = boot("driver-to-driver");
    let thumbprint = pki.thumbprint;
    kernel
        .run("driver-to-driver", move || {
            let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
            let changes = Changes::new();
            let listener = listen(
                &provider,
                server_credential(thumbprint),
                b"\x02h2",
                &changes,
            );
            let client = connect(
                &provider,
                client_credential(versions, 0),
                listener.local_port(),
                "localhost",
                b"\x08http/1.1\x02h2",
                &changes,
            );
            let server = changes.wait("an accepted session", || listener.next());
            open(&client, &changes);
            open(&server, &changes);
            let n = client.negotiated().unwrap();
            assert_eq!(n.protocol, expect_protocol);
            assert_eq!(n.alpn(), b"h2");
            assert_eq!(server.negotiated().unwrap().alpn(), b"h2");
            assert_ne!(n.cipher_suite, 0);
            // Echo sizes from 1 byte to 1 MiB through the server.
            for (i, len) in [1usize, 100, 16384, 16385, 100_000, 1 << 20]
                .into_iter()
                .enumerate()
            {
                let data = pattern(len, i as u8);
                let got = echo(&client, &server, &changes, &data);
                assert!(got == data, "length {len}: echo differs");
            }
            // Graceful close: the client's close_notify ends the server's stream.
            client.shutdown();
            changes.wait("client shutdown", || client.is_shut_down().then_some(()));
            changes.wait("end of stream", || {
                (server.recv(&mut [0u8; 16]) == Received::End).then_some(())
            });
            server.shutdown();
            changes.wait("end of stream", || {
                (client.recv(&mut [0u8; 16]) == Received::End).then_some(())
            });
            assert_eq!(client.counters().sent, server.counters().received);
            drop(client);
            drop(server);
            listener.close();
            changes.wait("listener closed", || {
                matches!(listener.state(), ListenState::Closed(_)).then_some(())
            });
            drop(listener);
            drop(provider);
        })
        .unwrap();
    kernel.shutdown().unwrap();
}

#[test]
fn driver_server_and_driver_client_tls13() {
    isolated("driver_server_and_driver_client_tls13", || {
        driver_to_driver(
            Versions {
                tls12: false,
                tls13: true,
            },
            SP_PROT_TLS1_3_CLIENT,
        )
    });
}

#[test]
fn driver_server_and_driver_client_tls12() {
    isolated("driver_server_and_driver_client_tls12", || {
        driver_to_driver(
            Versions {
                tls12: true,
                tls13: false,
            },
            SP_PROT_TLS1_2_CLIENT,
        )
    });
}

/// Tears down what a test started and checks the listener closed.
fn finish(listener: Listener<Changes>, changes: &Changes, provider: Provider) {
    listener.close();
    changes.wait("listener closed", || {
        matches!(listener.state(), ListenState::Closed(_)).then_some(())
    });
    drop(listener);
    changes.wait("every session and listener released", || {
        (changes.1.live() == 0).then_some(())
    });
    drop(provider);
}

/// Starts a peer program with `input` on its stdin (kept open).
fn spawn_peer(mut command: Command, input: &[u8]) -> std::process::Child {
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
fn collect_pipe(
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
fn collect(mut child: std::process::Child) -> String {
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

/// Receives until a newline.
fn recv_line(session: &Session<Changes>, changes: &Changes) -> Vec<u8> {
    let mut line = Vec::new();
    let mut buf = [0u8; 256];
    while !line.ends_with(b"\n") {
        let n = changes.wait("a line", || match session.recv(&mut buf) {
            Received::Data(n) => Some(n),
            Received::Pending => None,
            other => panic!("{other:?} after {line:?}"),
        });
        line.extend_from_slice(&buf[..n]);
    }
    line
}

#[test]
fn driver_server_with_openssl_s_client() {
    isolated("driver_server_with_openssl_s_client", || {
        let (kernel, pki) = boot("s_client");
        for flag in ["-tls1_3", "-tls1_2"] {
            let ca = pki.path("ca.pem");
            let thumbprint = pki.thumbprint;
            let output = kernel
                .run("server", move || {
                    let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
                    let changes = Changes::new();
                    let listener = listen(
                        &provider,
                        server_credential(thumbprint),
                        b"\x02h2",
                        &changes,
                    );
                    let mut command = Command::new("openssl");
                    command.args([
                        "s_client",
                        "-connect",
                        &format!("127.0.0.1:{}", listener.local_port()),
                        "-CAfile",
                        &ca,
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
                    let child = spawn_peer(command, b"hello from openssl\n");
                    let server = changes.wait("an accepted session", || listener.next());
                    open(&server, &changes);
                    assert_eq!(server.negotiated().unwrap().alpn(), b"h2");
                    let line = recv_line(&server, &changes);
                    assert_eq!(line, b"hello from openssl\n");
                    let mut reply = b"echo: ".to_vec();
                    reply.extend_from_slice(&line);
                    assert_eq!(server.send(&reply), Ok(reply.len()));
                    server.shutdown();
                    wait_shut_down(&server, &changes);
                    let output = collect(child);
                    drop(server);
                    finish(listener, &changes, provider);
                    output
                })
                .unwrap();
            assert!(
                output.contains("echo: hello from openssl"),
                "{flag}: {output}"
            );
        }
        kernel.shutdown().unwrap();
    });
}

#[test]
fn a_key_update_from_openssl_is_answered_and_the_records_behind_it_are_read() {
    isolated(
        "a_key_update_from_openssl_is_answered_and_the_records_behind_it_are_read",
        || {
            let (kernel, pki) = boot("key_update");
            let ca = pki.path("ca.pem");
            let thumbprint = pki.thumbprint;
            let output = kernel
                .run("server", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    // Without -quiet, s_client takes an input chunk starting with "K" as "send a
                    // KeyUpdate that asks for one back"; OpenSSL sends the KeyUpdate with its next
                    // write, so the data line that follows arrives right behind it.
                    let mut command = Command::new("openssl");
                    command.args([
                        "s_client",
                        "-connect",
                        &format!("127.0.0.1:{}", listener.local_port()),
                        "-CAfile",
                        &ca,
                        "-servername",
                        "localhost",
                        "-verify_return_error",
                        "-tls1_3",
                    ]);
                    let mut child = spawn_peer(command, b"K\n");
                    // s_client takes the rest of a chunk that starts with "K" as part of the
                    // command: the data line goes in only once it said KEYUPDATE.
                    let (stderr, reader) = collect_pipe(child.stderr.take().unwrap());
                    let server = changes.wait("an accepted session", || listener.next());
                    open(&server, &changes);
                    changes.wait("s_client's KEYUPDATE", || {
                        String::from_utf8_lossy(&stderr.lock().unwrap())
                            .contains("KEYUPDATE")
                            .then_some(())
                    });
                    let stdin = child.stdin.as_mut().unwrap();
                    if let Err(e) = stdin
                        .write_all(b"after the key update\n")
                        .and_then(|()| stdin.flush())
                    {
                        panic!("s_client is gone ({e}): {}", collect(child));
                    }
                    let line = recv_line(&server, &changes);
                    assert_eq!(line, b"after the key update\n");
                    let mut reply = b"echo: ".to_vec();
                    reply.extend_from_slice(&line);
                    assert_eq!(server.send(&reply), Ok(reply.len()));
                    server.shutdown();
                    wait_shut_down(&server, &changes);
                    let mut output = collect(child);
                    reader.join().unwrap();
                    output.push_str(&String::from_utf8_lossy(&stderr.lock().unwrap()));
                    drop(server);
                    finish(listener, &changes, provider);
                    output
                })
                .unwrap();
            assert!(output.contains("KEYUPDATE"), "{output}");
            assert!(output.contains("echo: after the key update"), "{output}");
            kernel.shutdown().unwrap();
        },
    );
}

/// A driver client holds a long TLS 1.3 conversation with openssl s_server, which issues five
/// tickets and then KeyUpdates (asking for one back, and not) between lines both ways. Each
/// ticket and KeyUpdate reaches the client as SEC_I_RENEGOTIATE, answered with ISC over the
/// EXTRA; a client that passed an empty input, or skipped the messages, stalls or fails here.
#[test]
fn a_long_conversation_with_tickets_and_key_updates_from_s_server() {
    isolated(
        "a_long_conversation_with_tickets_and_key_updates_from_s_server",
        || {
            let (kernel, pki) = boot("s_server_key_updates");
            let port = free_port();
            let mut command = Command::new("openssl");
            command.args([
                "s_server",
                "-accept",
                &format!("127.0.0.1:{port}"),
                "-cert",
                &pki.path("chain.pem"),
                "-key",
                &pki.path("key.pem"),
                "-tls1_3",
                "-num_tickets",
                "5",
            ]);
            let mut server = spawn_peer(command, b"");
            let (printed, reader) = collect_pipe(server.stdout.take().unwrap());
            wait_listening(port);
            let mut stdin = server.stdin.take().unwrap();
            let seen = printed.clone();
            let lines = kernel
                .run("client", move || {
                    let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
                    let changes = Changes::new();
                    let versions = Versions {
                        tls12: false,
                        tls13: true,
                    };
                    let client = connect(
                        &provider,
                        client_credential(versions, 0),
                        port,
                        "localhost",
                        b"",
                        &changes,
                    );
                    open(&client, &changes);
                    // The five tickets come right after the handshake; the first line's echo
                    // at s_server means they are all in.
                    let tickets = 5;
                    let printed_count = |needle: &str| {
                        String::from_utf8_lossy(&seen.lock().unwrap())
                            .matches(needle)
                            .count()
                    };
                    let mut received = Vec::new();
                    for round in 1..=6 {
                        let line = format!("client line {round}\n");
                        assert_eq!(client.send(line.as_bytes()), Ok(line.len()));
                        changes.wait("s_server printing the client's line", || {
                            (printed_count(line.trim_end()) == 1).then_some(())
                        });
                        if round == 1 {
                            changes.wait("five tickets", || {
                                (client.counters().post_handshake_messages == tickets).then_some(())
                            });
                        }
                        // s_server takes a line of one letter as a command: K asks for a
                        // KeyUpdate back, k does not.
                        let command = if round % 2 == 1 { "K\n" } else { "k\n" };
                        stdin.write_all(command.as_bytes()).unwrap();
                        stdin.flush().unwrap();
                        // The next line goes only once the KeyUpdate reached the client (in one
                        // read with the command, s_server would send both as data).
                        changes.wait("the KeyUpdate at the client", || {
                            let answered = client.counters().post_handshake_messages;
                            (answered == tickets + round as u64).then_some(())
                        });
                        let reply = format!("server line {round}\n");
                        stdin.write_all(reply.as_bytes()).unwrap();
                        stdin.flush().unwrap();
                        received.push(String::from_utf8(recv_line(&client, &changes)).unwrap());
                        assert_eq!(client.state(), State::Open, "round {round}");
                    }
                    client.shutdown();
                    wait_shut_down(&client, &changes);
                    drop(client);
                    drop(provider);
                    received
                })
                .unwrap();
            let _ = server.kill();
            let _ = server.wait();
            reader.join().unwrap();
            let expected: Vec<String> = (1..=6).map(|r| format!("server line {r}\n")).collect();
            assert_eq!(
                lines,
                expected,
                "{}",
                String::from_utf8_lossy(&printed.lock().unwrap())
            );
            kernel.shutdown().unwrap();
        },
    );
}

/// A peer (rustls over a host socket) that completes the handshake and then sends a record with
/// a broken tag: the ktls server answers with the fatal alert that names the error
/// (bad_record_mac, written with EncryptMessage(SECQOP_WRAP_OOB_DATA)) and a FIN, waits for the
/// peer's FIN and closes — no reset that could drop the alert.
#[test]
fn a_record_with_a_bad_tag_gets_the_alert_and_a_fin_not_a_reset() {
    isolated(
        "a_record_with_a_bad_tag_gets_the_alert_and_a_fin_not_a_reset",
        || {
            let (kernel, pki) = boot("bad_tag");
            let thumbprint = pki.thumbprint;
            let ca = pem::parse(std::fs::read(pki.path("ca.pem")).unwrap()).unwrap();
            let ca = ca.contents().to_vec();
            let (failure, alert, ending) = kernel
                .run("server", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let port = listener.local_port();
                    let peer = std::thread::spawn(move || tampering_peer(port, ca));
                    let server = changes.wait("an accepted session", || listener.next());
                    // The tampered record may arrive with the client's Finished: the session
                    // can fail before anyone sees it open.
                    let failure = failure_of(&server, &changes);
                    let (alert, ending) = peer.join().unwrap();
                    drop(server);
                    finish(listener, &changes, provider);
                    (failure, alert, ending)
                })
                .unwrap();
            assert_eq!(
                failure.map(|f| f.sspi()),
                Some(ksys::sspi::SEC_E_MESSAGE_ALTERED)
            );
            assert_eq!(
                alert,
                Some(rustls::AlertDescription::BadRecordMac),
                "{ending}"
            );
            assert_eq!(ending, "FIN");
            kernel.shutdown().unwrap();
        },
    );
}

/// A rustls client for "localhost" that trusts `ca` (DER): a peer no one here wrote.
fn rustls_client(ca: Vec<u8>) -> rustls::ClientConnection {
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
fn tampering_peer(port: u16, ca: Vec<u8>) -> (Option<rustls::AlertDescription>, String) {
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

/// A server certificate of about 40 KiB (2,000 names): the server's flight is bigger than the
/// send buffer (Schannel says how much it needs and the call is repeated with that much), and the
/// client's Certificate message spans three records while its receive buffer holds one
/// (Schannel takes the records piece by piece and keeps the partial message itself).
#[test]
fn a_forty_kilobyte_certificate_chain_goes_through() {
    isolated("a_forty_kilobyte_certificate_chain_goes_through", || {
        let (kernel, pki) = boot("big_chain");
        let mut names: Vec<String> = (0..2000)
            .map(|i| format!("host{i:04}.example.com"))
            .collect();
        names.insert(0, "localhost".into());
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let big = pki.ca.issue(&names, Validity::Current).unwrap();
        assert!(big.chain_pem.len() > 50_000, "{}", big.chain_pem.len());
        let thumbprint = kernel
            .cert_store()
            .import_pem(big.chain_pem.as_bytes(), big.key_pem.as_bytes())
            .unwrap();
        let echoed = kernel
            .run("big chain", move || {
                let (provider, changes, listener) = plain_listener(thumbprint);
                let (client, server) = established_pair(&provider, &listener, &changes);
                let got = echo(&client, &server, &changes, b"through a long chain");
                drop((client, server));
                finish(listener, &changes, provider);
                got
            })
            .unwrap();
        assert_eq!(echoed, b"through a long chain");
        kernel.shutdown().unwrap();
    });
}

/// A server whose certificate does not match its key fails every handshake; what reaches the
/// client is what Schannel really wrote — an alert at most, then the FIN — never the handshake
/// buffer (32 KiB of zeros went out when the output's cbBuffer was trusted on an error).
#[test]
fn a_server_whose_key_does_not_match_sends_no_garbage() {
    isolated("a_server_whose_key_does_not_match_sends_no_garbage", || {
        let (kernel, pki) = boot("mismatched_key");
        let other = pki.ca.issue(&["localhost"], Validity::Current).unwrap();
        let leaf = pem::parse(std::fs::read(pki.path("chain.pem")).unwrap()).unwrap();
        let leaf_pem = pem::encode(&leaf);
        let thumbprint = kernel
            .cert_store()
            .import_pem(leaf_pem.as_bytes(), other.key_pem.as_bytes())
            .unwrap();
        let ca = pem::parse(std::fs::read(pki.path("ca.pem")).unwrap()).unwrap();
        let ca = ca.contents().to_vec();
        let (failure, received) = kernel
            .run("server", move || {
                let (provider, changes, listener) = plain_listener(thumbprint);
                let port = listener.local_port();
                let peer = std::thread::spawn(move || {
                    let mut tls = rustls_client(ca);
                    let mut hello = Vec::new();
                    while tls.wants_write() {
                        tls.write_tls(&mut hello).unwrap();
                    }
                    let mut socket =
                        std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
                            .unwrap();
                    socket
                        .set_read_timeout(Some(Duration::from_secs(20)))
                        .unwrap();
                    socket.write_all(&hello).unwrap();
                    let mut received = Vec::new();
                    let _ = socket.read_to_end(&mut received);
                    received
                });
                let server = changes.wait("an accepted session", || listener.next());
                let failure = failure_of(&server, &changes);
                let received = peer.join().unwrap();
                drop(server);
                finish(listener, &changes, provider);
                (failure, received)
            })
            .unwrap();
        assert!(
            failure.is_some_and(|f| f.sspi() != ksys::sspi::SEC_E_OK),
            "{failure:?}"
        );
        assert!(
            received.len() < 64,
            "{} bytes reached the client: {:02x?}",
            received.len(),
            &received[..received.len().min(32)]
        );
        // Whatever came is whole TLS alert records.
        let mut at = 0;
        while at < received.len() {
            assert_eq!(received[at], 21, "an alert record: {received:02x?}");
            at += 5 + usize::from(u16::from_be_bytes([received[at + 3], received[at + 4]]));
        }
        assert_eq!(at, received.len());
        kernel.shutdown().unwrap();
    });
}

/// A listener on [::] takes IPv4 clients too: it sets IPV6_V6ONLY to FALSE before its bind, as
/// echosrv does (WSK sockets are IPv6-only by default); a ktls client reaches it over IPv4 and
/// over IPv6.
#[test]
fn a_listener_on_the_ipv6_any_address_takes_ipv4_clients_too() {
    isolated(
        "a_listener_on_the_ipv6_any_address_takes_ipv4_clients_too",
        || {
            let (kernel, pki) = boot("dual_stack");
            let thumbprint = pki.thumbprint;
            let states = kernel
                .run("dual stack", move || {
                    let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
                    let changes = Changes::new();
                    let any6 = SOCKADDR_STORAGE {
                        ss_family: AF_INET6 as u16,
                        data: [0; 126],
                    };
                    // SAFETY: the test driver's device and the captured provider outlive it.
                    let listener = unsafe {
                        Listener::start(
                            device(),
                            ListenerConfig {
                                npi: provider.npi(),
                                local: any6,
                                alpn: Vec::new(),
                                require_client_certificate: false,
                                max_queued: 64 * 1024,
                                receive_window: 64 * 1024,
                                backlog: 8,
                                handshake_timeout_ms: 5000,
                                census: changes.census(),
                            },
                            server_credential(thumbprint),
                            changes.clone(),
                        )
                    }
                    .unwrap();
                    changes.wait("listening", || {
                        (listener.state() == ListenState::Listening).then_some(())
                    });
                    let port = listener.local_port();
                    let mut states = Vec::new();
                    let mut loopback6 = SOCKADDR_STORAGE {
                        ss_family: AF_INET6 as u16,
                        data: [0; 126],
                    };
                    loopback6.data[0..2].copy_from_slice(&port.to_be_bytes());
                    loopback6.data[21] = 1; // ::1 (sin6_addr starts at byte 6 of data)
                    for remote in [v4([127, 0, 0, 1], port), loopback6] {
                        let client = connect_to(
                            &provider,
                            client_credential(ALL, 0),
                            remote,
                            "localhost",
                            None,
                            &changes,
                        );
                        let server = changes.wait("an accepted session", || listener.next());
                        open(&client, &changes);
                        open(&server, &changes);
                        states.push(client.state());
                        drop((client, server));
                    }
                    finish(listener, &changes, provider);
                    states
                })
                .unwrap();
            assert_eq!(states, [State::Open, State::Open]);
            kernel.shutdown().unwrap();
        },
    );
}

/// Accepts that keep failing (clients that reset before they were taken) do not make the
/// listener spin: after the second failure in a row each new WskAccept waits 1 ms, doubling —
/// ten failures take at least half a second — and the listener goes on serving afterwards.
#[test]
fn a_listener_backs_off_when_accepts_keep_failing() {
    isolated("a_listener_backs_off_when_accepts_keep_failing", || {
        let mut config = KernelConfig::from_env();
        config.faults.failing_accepts = 10;
        let (kernel, pki) = boot_with("accept_backoff", config);
        let thumbprint = pki.thumbprint;
        let started = Instant::now();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (waited, calls, echoed) = std::thread::scope(|scope| {
            let server = scope.spawn(|| {
                kernel
                    .run("listener", move || {
                        let (provider, changes, listener) = plain_listener(thumbprint);
                        port_tx.send(listener.local_port()).unwrap();
                        go_rx.recv().unwrap();
                        // Past the failures the listener serves as before.
                        let (client, server) = established_pair(&provider, &listener, &changes);
                        let echoed = echo(&client, &server, &changes, b"after the resets");
                        drop((client, server));
                        finish(listener, &changes, provider);
                        echoed
                    })
                    .unwrap()
            });
            port_rx.recv().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while kernel.accept_calls() < 11 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            let waited = started.elapsed();
            let calls = kernel.accept_calls();
            go_tx.send(()).unwrap();
            (waited, calls, server.join().unwrap())
        });
        assert!(calls >= 11, "{calls} accepts");
        // Pauses of 1, 2, 4, ... 256 ms after failures 2 to 10: at least 511 ms in all (a
        // lower bound: a slow machine only makes it longer).
        assert!(
            waited >= Duration::from_millis(500),
            "eleven accepts after ten failures came within {waited:?}: no backoff"
        );
        assert_eq!(echoed, b"after the resets");
        kernel.shutdown().unwrap();
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16) {
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

#[test]
fn driver_client_with_openssl_s_server() {
    isolated("driver_client_with_openssl_s_server", || {
        let (kernel, pki) = boot("s_server");
        for (flag, versions, protocol) in [
            (
                "-tls1_3",
                Versions {
                    tls12: false,
                    tls13: true,
                },
                SP_PROT_TLS1_3_CLIENT,
            ),
            (
                "-tls1_2",
                Versions {
                    tls12: true,
                    tls13: false,
                },
                SP_PROT_TLS1_2_CLIENT,
            ),
        ] {
            let port = free_port();
            let mut server = Command::new("openssl")
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
                .expect("openssl s_server");
            wait_listening(port);
            let (response, negotiated) = kernel
                .run("client", move || {
                    let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
                    let changes = Changes::new();
                    let client = connect(
                        &provider,
                        client_credential(versions, 0),
                        port,
                        "localhost",
                        b"\x08http/1.1",
                        &changes,
                    );
                    open(&client, &changes);
                    let request = b"GET / HTTP/1.0\r\n\r\n";
                    assert_eq!(client.send(request), Ok(request.len()));
                    let mut response = Vec::new();
                    let mut buf = [0u8; 4096];
                    changes.wait("the response", || {
                        loop {
                            match client.recv(&mut buf) {
                                Received::Data(n) => response.extend_from_slice(&buf[..n]),
                                Received::Pending => return None,
                                Received::End => return Some(()),
                                Received::Failed(f) => panic!("{f:?}"),
                            }
                        }
                    });
                    let negotiated = client.negotiated().unwrap();
                    drop(client);
                    drop(provider);
                    (String::from_utf8_lossy(&response).into_owned(), negotiated)
                })
                .unwrap();
            let _ = server.kill();
            let _ = server.wait();
            assert!(
                response.starts_with("HTTP/1.0 200 ok"),
                "{flag}: {response}"
            );
            assert_eq!(negotiated.protocol, protocol);
            assert_eq!(negotiated.alpn(), b"http/1.1");
        }
        kernel.shutdown().unwrap();
    });
}

/// Waits until close_notify and the disconnect went out — or the peer, done reading, closed
/// first (curl and s_client close as soon as they have the response).
fn wait_shut_down(session: &Session<Changes>, changes: &Changes) {
    changes.wait("shutdown", || {
        (session.is_shut_down() || session.state() == State::Closed).then_some(())
    });
}

/// A failure as the (NTSTATUS, SECURITY_STATUS) pair it carries.
fn pair(failure: Option<Error>) -> Option<(ksys::ntdef::NTSTATUS, ksys::sspi::SECURITY_STATUS)> {
    failure.map(|f| (f.status(), f.sspi()))
}

/// Waits until the session closed and returns its failure.
fn failure_of(session: &Session<Changes>, changes: &Changes) -> Option<Error> {
    changes.wait(&format!("close (state {:?})", session.state()), || {
        (session.state() == State::Closed).then_some(())
    });
    session.failure()
}

#[test]
fn a_wrong_name_fails_the_client_handshake_with_its_sspi_status() {
    isolated(
        "a_wrong_name_fails_the_client_handshake_with_its_sspi_status",
        || {
            let (kernel, pki) = boot("wrong-name");
            let thumbprint = pki.thumbprint;
            let (client_failure, server_failure) = kernel
                .run("wrong-name", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let client = connect(
                        &provider,
                        client_credential(ALL, 0),
                        listener.local_port(),
                        "not-localhost.example",
                        b"",
                        &changes,
                    );
                    let server = changes.wait("an accepted session", || listener.next());
                    let c = failure_of(&client, &changes);
                    let s = failure_of(&server, &changes);
                    drop((client, server));
                    finish(listener, &changes, provider);
                    (c, s)
                })
                .unwrap();
            assert_eq!(
                pair(client_failure),
                Some((STATUS_TLS_FAILURE, SEC_E_WRONG_PRINCIPAL))
            );
            // The client's alert reached the server, which failed too (never opened).
            assert!(server_failure.is_some(), "{server_failure:?}");
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn an_untrusted_server_fails_unless_validation_is_manual() {
    isolated(
        "an_untrusted_server_fails_unless_validation_is_manual",
        || {
            let (kernel, _) = boot("untrusted");
            // A server certificate from a CA the kernel does not trust.
            let rogue = TestCa::generate("rogue CA").unwrap();
            let issued = rogue.issue(&["localhost"], Validity::Current).unwrap();
            let thumbprint = kernel
                .cert_store()
                .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
                .unwrap();
            let (strict, manual) = kernel
                .run("untrusted", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let port = listener.local_port();
                    let strict = connect(
                        &provider,
                        client_credential(ALL, 0),
                        port,
                        "localhost",
                        b"",
                        &changes,
                    );
                    let strict_failure = failure_of(&strict, &changes);
                    let manual = connect(
                        &provider,
                        client_credential(ALL, SCH_CRED_MANUAL_CRED_VALIDATION),
                        port,
                        "localhost",
                        b"",
                        &changes,
                    );
                    open(&manual, &changes);
                    let manual_state = manual.state();
                    let sessions: Vec<_> = std::iter::from_fn(|| listener.next()).collect();
                    drop((strict, manual, sessions));
                    finish(listener, &changes, provider);
                    (strict_failure, manual_state)
                })
                .unwrap();
            assert_eq!(strict.map(|f| f.sspi()), Some(SEC_E_UNTRUSTED_ROOT));
            assert_eq!(manual, State::Open);
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn peers_that_abort_mid_handshake_or_trickle_bytes_are_handled() {
    isolated(
        "peers_that_abort_mid_handshake_or_trickle_bytes_are_handled",
        || {
            let (kernel, pki) = boot("hostile");
            let thumbprint = pki.thumbprint;
            kernel
                .run("hostile", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let port = listener.local_port();
                    // 1. A peer that sends half a ClientHello and leaves.
                    let mut peer = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    peer.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                        .unwrap();
                    let server = changes.wait("an accepted session", || listener.next());
                    drop(peer);
                    let f = failure_of(&server, &changes).expect("a failure");
                    assert_eq!(f.status(), STATUS_CONNECTION_DISCONNECTED, "{f:?}");
                    drop(server);
                    // 2. Garbage instead of TLS that announces a long record and then stalls: either
                    //    Schannel rejects it at once or the handshake deadline (2 s here) ends it.
                    let mut peer = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    peer.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                        .unwrap();
                    let server = changes.wait("an accepted session", || listener.next());
                    let f = failure_of(&server, &changes).expect("a failure");
                    assert!(
                        f.status() == STATUS_TLS_FAILURE || f.status() == STATUS_IO_TIMEOUT,
                        "{f:?}"
                    );
                    drop(server);
                    drop(peer);
                    // 3. A peer that connects and says nothing: the deadline ends it.
                    let peer = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    let server = changes.wait("an accepted session", || listener.next());
                    let f = failure_of(&server, &changes).expect("a failure");
                    assert_eq!(f.status(), STATUS_IO_TIMEOUT, "{f:?}");
                    drop(server);
                    drop(peer);
                    // 4. A ktls client whose bytes reach the server one at a time is exercised by
                    //    the proxy below: every byte the client sends is forwarded alone.
                    let proxy = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
                    let proxy_port = proxy.local_addr().unwrap().port();
                    let forwarder = std::thread::spawn(move || {
                        let (mut from_client, _) = proxy.accept().unwrap();
                        let mut to_server =
                            std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                        to_server.set_nodelay(true).unwrap();
                        let mut back_client = from_client.try_clone().unwrap();
                        let mut back_server = to_server.try_clone().unwrap();
                        let reverse = std::thread::spawn(move || {
                            let _ = std::io::copy(&mut back_server, &mut back_client);
                            let _ = back_client.shutdown(std::net::Shutdown::Write);
                        });
                        let mut byte = [0u8; 1];
                        while let Ok(1) = from_client.read(&mut byte) {
                            if to_server.write_all(&byte).is_err() {
                                break;
                            }
                            std::thread::sleep(Duration::from_micros(50));
                        }
                        let _ = to_server.shutdown(std::net::Shutdown::Write);
                        reverse.join().unwrap();
                    });
                    let client = connect(
                        &provider,
                        client_credential(ALL, 0),
                        proxy_port,
                        "localhost",
                        b"",
                        &changes,
                    );
                    let server = changes.wait("an accepted session", || listener.next());
                    open(&client, &changes);
                    open(&server, &changes);
                    let data = pattern(3000, 7);
                    let got = echo(&client, &server, &changes, &data);
                    assert!(got == data, "trickled echo differs");
                    client.shutdown();
                    changes.wait("end of stream", || {
                        (server.recv(&mut [0u8; 1]) == Received::End).then_some(())
                    });
                    drop((client, server));
                    forwarder.join().unwrap();
                    finish(listener, &changes, provider);
                })
                .unwrap();
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn dropping_sessions_mid_handshake_and_mid_transfer_leaks_nothing() {
    isolated(
        "dropping_sessions_mid_handshake_and_mid_transfer_leaks_nothing",
        || {
            let (kernel, pki) = boot("drop");
            let thumbprint = pki.thumbprint;
            kernel
                .run("drop", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let credential = client_credential(ALL, 0);
                    // Handshakes abandoned at once, in flight.
                    for _ in 0..8 {
                        let c = connect(
                            &provider,
                            credential.clone(),
                            listener.local_port(),
                            "localhost",
                            b"",
                            &changes,
                        );
                        drop(c);
                    }
                    // A transfer abandoned halfway, from both sides.
                    let client = connect(
                        &provider,
                        credential.clone(),
                        listener.local_port(),
                        "localhost",
                        b"",
                        &changes,
                    );
                    open(&client, &changes);
                    // The listener, this client and its server side at least, all still live.
                    assert!(changes.1.live() >= 3, "census: {}", changes.1.live());
                    let big = pattern(512 * 1024, 3);
                    let mut sent = 0;
                    while sent < 200_000 {
                        sent += client.send(&big[sent..]).unwrap();
                    }
                    drop(client);
                    drop(credential);
                    // Whatever the listener accepted is dropped with it.
                    finish(listener, &changes, provider);
                })
                .unwrap();
            // Unload and the verifier's leak check run in shutdown.
            kernel.shutdown().unwrap();
        },
    );
}

/// Serves one HTTP/1.1 request on `server` with `body`, then shuts down: the request line.
fn serve_one_http(server: &Session<Changes>, changes: &Changes, body: &str) -> String {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = changes.wait("an HTTP request", || match server.recv(&mut buf) {
            Received::Data(n) => Some(n),
            Received::Pending => None,
            other => panic!("{other:?} after {} request bytes", request.len()),
        });
        request.extend_from_slice(&buf[..n]);
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(server.send(response.as_bytes()), Ok(response.len()));
    server.shutdown();
    wait_shut_down(server, changes);
    String::from_utf8_lossy(&request)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn driver_server_answers_curl_over_https() {
    isolated("driver_server_answers_curl_over_https", || {
        let (kernel, pki) = boot("curl");
        for flags in [&["--tlsv1.3"][..], &["--tlsv1.2", "--tls-max", "1.2"][..]] {
            let ca = pki.path("ca.pem");
            let thumbprint = pki.thumbprint;
            let (output, request_line) = kernel
                .run("https", move || {
                    let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
                    let changes = Changes::new();
                    let listener = listen(
                        &provider,
                        server_credential(thumbprint),
                        b"\x08http/1.1",
                        &changes,
                    );
                    let mut command = Command::new("curl");
                    command
                        .args(["--silent", "--show-error", "--http1.1", "--cacert", &ca])
                        .args(flags)
                        .arg("--resolve")
                        .arg(format!("localhost:{}:127.0.0.1", listener.local_port()))
                        .arg(format!("https://localhost:{}/hello", listener.local_port()));
                    let child = spawn_peer(command, b"");
                    let server = changes.wait("an accepted session", || listener.next());
                    open(&server, &changes);
                    let line = serve_one_http(&server, &changes, "hello from the kernel\n");
                    let output = collect(child);
                    drop(server);
                    finish(listener, &changes, provider);
                    (output, line)
                })
                .unwrap();
            assert_eq!(request_line, "GET /hello HTTP/1.1", "{flags:?}");
            assert!(
                output.starts_with("hello from the kernel\n"),
                "{flags:?}: {output}"
            );
        }
        kernel.shutdown().unwrap();
    });
}

#[test]
fn driver_server_with_gnutls_cli_and_driver_client_with_gnutls_serv() {
    isolated(
        "driver_server_with_gnutls_cli_and_driver_client_with_gnutls_serv",
        || {
            let (kernel, pki) = boot("gnutls");
            // gnutls-cli → driver server (echo one line).
            let ca = pki.path("ca.pem");
            let thumbprint = pki.thumbprint;
            let output = kernel
                .run("gnutls-cli", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let mut command = Command::new("gnutls-cli");
                    command.args([
                        "--x509cafile",
                        &ca,
                        "--port",
                        &listener.local_port().to_string(),
                        "localhost",
                    ]);
                    let child = spawn_peer(command, b"hello from gnutls\n");
                    let server = changes.wait("an accepted session", || listener.next());
                    open(&server, &changes);
                    let line = recv_line(&server, &changes);
                    let mut reply = b"echo: ".to_vec();
                    reply.extend_from_slice(&line);
                    assert_eq!(server.send(&reply), Ok(reply.len()));
                    server.shutdown();
                    wait_shut_down(&server, &changes);
                    let output = collect(child);
                    drop(server);
                    finish(listener, &changes, provider);
                    output
                })
                .unwrap();
            assert!(output.contains("echo: hello from gnutls"), "{output}");
            // driver client → gnutls-serv --echo.
            let port = free_port();
            let mut server = Command::new("gnutls-serv")
                .args([
                    "--echo",
                    "--x509certfile",
                    &pki.path("chain.pem"),
                    "--x509keyfile",
                    &pki.path("key.pem"),
                    "--port",
                    &port.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("gnutls-serv");
            wait_listening(port);
            let echoed = kernel
                .run("gnutls-serv", move || {
                    let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
                    let changes = Changes::new();
                    let client = connect(
                        &provider,
                        client_credential(ALL, 0),
                        port,
                        "localhost",
                        b"",
                        &changes,
                    );
                    open(&client, &changes);
                    assert_eq!(client.send(b"ping over gnutls\n"), Ok(17));
                    let line = recv_line(&client, &changes);
                    drop(client);
                    drop(provider);
                    line
                })
                .unwrap();
            let _ = server.kill();
            let _ = server.wait();
            assert_eq!(echoed, b"ping over gnutls\n");
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn a_hundred_megabytes_arrive_intact() {
    isolated("a_hundred_megabytes_arrive_intact", || {
        let (kernel, pki) = boot("bulk");
        let thumbprint = pki.thumbprint;
        const TOTAL: usize = 100 * 1000 * 1000;
        let (sent, received, digest_sent, digest_received) = kernel
            .run("bulk", move || {
                let (provider, changes, listener) = plain_listener(thumbprint);
                let (client, server) = established_pair(&provider, &listener, &changes);
                // FNV-1a over what arrived and over what was sent (the chunk repeated); data
                // from a counter so every byte differs in position.
                const BASIS: u64 = 0xcbf2_9ce4_8422_2325;
                let fnv = |h: u64, b: u8| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
                let chunk: Vec<u8> = (0..65536u32).map(|i| (i * 7 + i / 251) as u8).collect();
                let (mut hr, mut received) = (BASIS, 0usize);
                let arrived = |bytes: &[u8]| {
                    hr = bytes.iter().fold(hr, |h, &b| fnv(h, b));
                    received += bytes.len();
                };
                stream(&client, &server, &changes, TOTAL, &chunk, arrived, || {});
                let hs = chunk
                    .iter()
                    .cycle()
                    .take(TOTAL)
                    .fold(BASIS, |h, &b| fnv(h, b));
                let sent = client.counters().sent as usize;
                drop((client, server));
                finish(listener, &changes, provider);
                (sent, received, hs, hr)
            })
            .unwrap();
        assert_eq!((sent, received), (TOTAL, TOTAL));
        assert_eq!(digest_sent, digest_received, "the bytes differ");
        kernel.shutdown().unwrap();
    });
}

/// What an idle established connection keeps for its I/O: a 4 KiB receive buffer and no send
/// buffer (after 200 ms with nothing moving).
const IDLE_BUFFERS: usize = 4096;
/// Both ends' buffers together once the sender's send buffer and the receiver's receive buffer
/// have both grown to four records (either alone, with the other at one record, stays below).
const BOTH_GROWN: usize = 2 * 4 * 16384;

#[test]
fn a_busy_connection_packs_records_and_gives_its_buffers_back_when_quiet() {
    isolated(
        "a_busy_connection_packs_records_and_gives_its_buffers_back_when_quiet",
        || {
            let (kernel, pki) = boot("packing");
            let thumbprint = pki.thumbprint;
            const TOTAL: usize = 4 << 20;
            let (quiet_before, busiest, quiet_after, client_counters, server_counters) = kernel
                .run("packing", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let (client, server) = established_pair(&provider, &listener, &changes);
                    let buffers =
                        || client.counters().buffer_bytes + server.counters().buffer_bytes;
                    // The handshake's buffers go once nothing has moved for a while.
                    let quiet_before = changes.wait("idle buffers after the handshake", || {
                        let b = buffers();
                        (b <= 2 * IDLE_BUFFERS).then_some(b)
                    });
                    let mut busiest = 0;
                    let chunk = pattern(64 * 1024, 3);
                    let watch = || busiest = busiest.max(buffers());
                    stream(&client, &server, &changes, TOTAL, &chunk, |_| {}, watch);
                    let quiet_after = changes.wait("buffers given back", || {
                        let b = buffers();
                        (b <= 2 * IDLE_BUFFERS).then_some(b)
                    });
                    let counters = (client.counters(), server.counters());
                    // The receives cancelled to shrink lost nothing: a megabyte both ways after.
                    let data = pattern(1 << 20, 9);
                    assert!(
                        echo(&client, &server, &changes, &data) == data,
                        "echo differs"
                    );
                    drop((client, server));
                    finish(listener, &changes, provider);
                    (quiet_before, busiest, quiet_after, counters.0, counters.1)
                })
                .unwrap();
            assert_eq!(client_counters.sent, TOTAL as u64);
            assert_eq!(server_counters.received, TOTAL as u64);
            // Four records per WskSend while the queue holds more than one: 256 records in at
            // most 64 + a few sends (two per send would take 128).
            assert!(
                client_counters.record_sends <= 80,
                "{} WskSends for 256 records",
                client_counters.record_sends
            );
            // The receive buffer grows while data streams in: fewer receives than records.
            assert!(
                server_counters.record_receives < 192,
                "{} WskReceives for 256 records",
                server_counters.record_receives
            );
            assert!(
                busiest >= BOTH_GROWN,
                "the buffers never grew: {busiest} bytes at most"
            );
            assert_eq!(quiet_before, quiet_after, "buffers not given back");
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn pinning_accepts_the_pinned_certificate_only_and_reports_the_peer_digest() {
    isolated(
        "pinning_accepts_the_pinned_certificate_only_and_reports_the_peer_digest",
        || {
            let (kernel, pki) = boot("pinning");
            let (thumbprint, digest) = (pki.thumbprint, pki.digest);
            let (reported, wrong) = kernel
                .run("pinning", move || {
                    let (provider, changes, listener) = plain_listener(thumbprint);
                    let port = listener.local_port();
                    let manual = client_credential(ALL, SCH_CRED_MANUAL_CRED_VALIDATION);
                    // The right pin, and a name that would not validate: pinning replaces both.
                    let good = connect_with(
                        &provider,
                        manual.clone(),
                        port,
                        "pinned.invalid",
                        Some(digest),
                        &changes,
                    );
                    open(&good, &changes);
                    let reported = good.negotiated().unwrap().peer_certificate;
                    let mut other = digest;
                    other[0] ^= 1;
                    let bad =
                        connect_with(&provider, manual, port, "localhost", Some(other), &changes);
                    let wrong = failure_of(&bad, &changes);
                    let sessions: Vec<_> = std::iter::from_fn(|| listener.next()).collect();
                    drop((good, bad, sessions));
                    finish(listener, &changes, provider);
                    (reported, wrong)
                })
                .unwrap();
            assert_eq!(reported, Some(digest));
            assert_eq!(
                pair(wrong),
                Some((STATUS_PIN_MISMATCH, SEC_E_UNTRUSTED_ROOT))
            );
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn an_expired_server_certificate_fails_validation() {
    isolated("an_expired_server_certificate_fails_validation", || {
        let (kernel, pki) = boot("expired");
        let issued = pki.ca.issue(&["localhost"], Validity::Expired).unwrap();
        let thumbprint = kernel
            .cert_store()
            .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
            .unwrap();
        let failure = kernel
            .run("expired", move || {
                let (provider, changes, listener) = plain_listener(thumbprint);
                let client = connect_with(
                    &provider,
                    client_credential(ALL, 0),
                    listener.local_port(),
                    "localhost",
                    None,
                    &changes,
                );
                let f = failure_of(&client, &changes);
                let sessions: Vec<_> = std::iter::from_fn(|| listener.next()).collect();
                drop((client, sessions));
                finish(listener, &changes, provider);
                f
            })
            .unwrap();
        assert_eq!(failure.map(|f| f.sspi()), Some(SEC_E_CERT_EXPIRED));
        kernel.shutdown().unwrap();
    });
}

#[test]
fn a_listener_that_requires_client_certificates_refuses_clients_without_one() {
    isolated(
        "a_listener_that_requires_client_certificates_refuses_clients_without_one",
        || {
            let (kernel, pki) = boot("mutual");
            let client_cert = pki
                .ca
                .issue(&["client.example"], Validity::Current)
                .unwrap();
            let client_thumbprint = kernel
                .cert_store()
                .import_pem(
                    client_cert.chain_pem.as_bytes(),
                    client_cert.key_pem.as_bytes(),
                )
                .unwrap();
            let client_leaf = pem::parse(client_cert.chain_pem.as_bytes()).unwrap();
            let client_digest = ktls::sha256::sha256(client_leaf.contents());
            let thumbprint = pki.thumbprint;
            let stranger = TestCa::generate("untrusted client CA")
                .unwrap()
                .issue(&["client.example"], Validity::Current)
                .unwrap();
            let stranger = kernel
                .cert_store()
                .import_pem(stranger.chain_pem.as_bytes(), stranger.key_pem.as_bytes())
                .unwrap();
            let (without, untrusted, with_state, seen_by_server) = kernel
                .run("mutual", move || {
                    let provider = Provider::register(WSK_INFINITE_WAIT).unwrap();
                    let changes = Changes::new();
                    // SAFETY: as in `listen`.
                    let listener = unsafe {
                        Listener::start(
                            device(),
                            ListenerConfig {
                                npi: provider.npi(),
                                local: v4([127, 0, 0, 1], 0),
                                alpn: Vec::new(),
                                require_client_certificate: true,
                                max_queued: 64 * 1024,
                                receive_window: 64 * 1024,
                                backlog: 8,
                                handshake_timeout_ms: 5000,
                                census: changes.census(),
                            },
                            Credential::acquire(&CredentialSpec {
                                inbound: true,
                                thumbprint: Some(thumbprint.0),
                                flags: 0,
                                versions: ALL,
                                require_client_certificate: true,
                            })
                            .unwrap(),
                            changes.clone(),
                        )
                    }
                    .unwrap();
                    changes.wait("listening", || {
                        (listener.state() == ListenState::Listening).then_some(())
                    });
                    let port = listener.local_port();
                    let anonymous = connect_with(
                        &provider,
                        client_credential(ALL, 0),
                        port,
                        "localhost",
                        None,
                        &changes,
                    );
                    let rejected = changes.wait("an accepted session", || listener.next());
                    let server_failure = failure_of(&rejected, &changes);
                    assert!(server_failure.is_some());
                    // The client may have finished its side (TLS 1.3) before the server's alert.
                    let _ = failure_of(&anonymous, &changes);
                    let with_stranger = Credential::acquire(&CredentialSpec {
                        inbound: false,
                        thumbprint: Some(stranger.0),
                        flags: 0,
                        versions: ALL,
                        require_client_certificate: false,
                    })
                    .unwrap();
                    let distrusted =
                        connect_with(&provider, with_stranger, port, "localhost", None, &changes);
                    let refused = changes.wait("an accepted session", || listener.next());
                    let untrusted = failure_of(&refused, &changes);
                    let _ = failure_of(&distrusted, &changes);
                    drop((distrusted, refused));
                    let with_cert = Credential::acquire(&CredentialSpec {
                        inbound: false,
                        thumbprint: Some(client_thumbprint.0),
                        flags: 0,
                        versions: ALL,
                        require_client_certificate: false,
                    })
                    .unwrap();
                    let client =
                        connect_with(&provider, with_cert, port, "localhost", None, &changes);
                    let server = changes.wait("an accepted session", || listener.next());
                    open(&client, &changes);
                    open(&server, &changes);
                    let seen = server.negotiated().unwrap().peer_certificate;
                    let state = client.state();
                    drop((anonymous, rejected, client, server));
                    finish(listener, &changes, provider);
                    (server_failure, untrusted, state, seen)
                })
                .unwrap();
            // Schannel completes the handshake without a certificate; the server's check of
            // the verdict fails it.
            assert_eq!(
                without.map(|f| (f.status(), f.sspi())),
                Some((STATUS_TLS_FAILURE, ksys::sspi::SEC_E_NO_CREDENTIALS))
            );
            assert_eq!(untrusted.map(|f| f.sspi()), Some(SEC_E_UNTRUSTED_ROOT));
            assert_eq!(with_state, State::Open);
            assert_eq!(seen_by_server, Some(client_digest));
            kernel.shutdown().unwrap();
        },
    );
}

#[test]
fn a_client_resolves_its_host_name_first() {
    isolated("a_client_resolves_its_host_name_first", || {
        let (kernel, pki) = boot("resolve");
        let thumbprint = pki.thumbprint;
        let state = kernel
            .run("resolve", move || {
                let (provider, changes, listener) = plain_listener(thumbprint);
                // Only the port of `remote` counts: the address comes from resolving the name.
                // SAFETY: as in `listen`.
                let client = unsafe {
                    Session::start(
                        device(),
                        Config {
                            role: Role::Client {
                                npi: provider.npi(),
                                remote: v4([0, 0, 0, 0], listener.local_port()),
                                target: "localhost".encode_utf16().collect(),
                                resolve: Some("localhost".encode_utf16().collect()),
                            },
                            alpn: Vec::new(),
                            require_client_certificate: false,
                            max_queued: 64 * 1024,
                            receive_window: 64 * 1024,
                            handshake_timeout_ms: 10_000,
                            pinned: None,
                            keep_peer_certificates: false,
                            census: changes.census(),
                        },
                        client_credential(ALL, 0),
                        changes.clone(),
                    )
                }
                .unwrap();
                let server = changes.wait("an accepted session", || listener.next());
                open(&client, &changes);
                let data = pattern(5000, 9);
                let got = echo(&client, &server, &changes, &data);
                assert!(got == data);
                let state = client.state();
                drop((client, server));
                finish(listener, &changes, provider);
                state
            })
            .unwrap();
        assert_eq!(state, State::Open);
        kernel.shutdown().unwrap();
    });
}

#[test]
fn five_hundred_concurrent_connections() {
    isolated("five_hundred_concurrent_connections", || {
        const N: usize = 500;
        let (kernel, pki) = boot("concurrent");
        let thumbprint = pki.thumbprint;
        let (opened, echoed) = kernel
            .run("concurrent", move || {
                let (provider, changes, listener) = plain_listener(thumbprint);
                let port = listener.local_port();
                let credential = client_credential(ALL, 0);
                let clients: Vec<Session<Changes>> = (0..N)
                    .map(|_| {
                        connect_with(
                            &provider,
                            credential.clone(),
                            port,
                            "localhost",
                            None,
                            &changes,
                        )
                    })
                    .collect();
                let mut servers: Vec<Session<Changes>> = Vec::with_capacity(N);
                changes.wait("every handshake", || {
                    while let Some(s) = listener.next() {
                        servers.push(s);
                    }
                    for s in clients.iter().chain(&servers) {
                        if s.state() == State::Closed {
                            panic!("a session failed: {:?}", s.failure());
                        }
                    }
                    (servers.len() == N
                        && clients
                            .iter()
                            .chain(&servers)
                            .all(|s| s.state() == State::Open))
                    .then_some(())
                });
                // Every client sends its number; every server echoes what it got.
                for (i, c) in clients.iter().enumerate() {
                    assert_eq!(c.send(&(i as u64).to_le_bytes()), Ok(8));
                }
                let mut got: Vec<Vec<u8>> = vec![Vec::new(); N];
                let mut buf = [0u8; 64];
                changes.wait("every echo", || {
                    for s in &servers {
                        if let Received::Data(n) = s.recv(&mut buf) {
                            assert_eq!(s.send(&buf[..n]), Ok(n));
                        }
                    }
                    for (i, c) in clients.iter().enumerate() {
                        if let Received::Data(n) = c.recv(&mut buf) {
                            got[i].extend_from_slice(&buf[..n]);
                        }
                    }
                    got.iter().all(|g| g.len() >= 8).then_some(())
                });
                let echoed = got
                    .iter()
                    .enumerate()
                    .filter(|(i, g)| g[..] == (*i as u64).to_le_bytes())
                    .count();
                let opened = clients.len() + servers.len();
                drop((clients, servers, credential));
                finish(listener, &changes, provider);
                (opened, echoed)
            })
            .unwrap();
        assert_eq!((opened, echoed), (2 * N, N));
        kernel.shutdown().unwrap();
    });
}
