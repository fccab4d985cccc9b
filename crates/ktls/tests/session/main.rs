//! ktls sessions and listeners under kemu: TLS server and client in the kernel, driven by async
//! kernel Schannel on WSK sockets and one work item each — against each other and against
//! openssl, with the verifier checking that nothing leaks.

mod driver_to_driver;
mod hostile;
mod peers;
mod programs;
mod validation;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
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
use programs::*;
use testkit::Pki;

fn device() -> *mut ksys::io::DEVICE_OBJECT {
    testkit::test_driver::device()
}

/// Counts changes; waiters poll their condition after each. Carries the census every session
/// and listener of a test joins, so `finish` can wait until all of them released everything,
/// and counts notifications that came when the census was already empty (a driver's unload
/// would have freed what its observer reaches into by then).
#[derive(Clone)]
struct Changes(Arc<(Mutex<u64>, Condvar)>, Census, Arc<AtomicU64>);

impl Observer for Changes {
    fn changed(&self) {
        if self.1.live() == 0 {
            self.2.fetch_add(1, Ordering::SeqCst);
        }
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
        Changes(Arc::default(), Census::try_new().unwrap(), Arc::default())
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

/// A client on `credential` connected to `listener` at `remote` as "localhost", both ends
/// established.
fn pair_over(
    provider: &Provider,
    listener: &Listener<Changes>,
    changes: &Changes,
    credential: ktls::pool::PoolArc<Credential>,
    remote: SOCKADDR_STORAGE,
) -> (Session<Changes>, Session<Changes>) {
    let client = connect_to(provider, credential, remote, "localhost", None, changes);
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
    assert_eq!(
        changes.2.load(Ordering::SeqCst),
        0,
        "an observer was told of a change after its census let unload go"
    );
    drop(provider);
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

/// What an idle established connection keeps for its I/O: a 4 KiB receive buffer and no send
/// buffer (after 200 ms with nothing moving).
const IDLE_BUFFERS: usize = 4096;
/// A sender's buffers once its send buffer holds more than eight records: nine records and an
/// idle receive buffer at least (eight and a one-record receive buffer stay below).
const SENDER_GROWN: usize = 9 * 16384 + IDLE_BUFFERS;
/// A receiver's buffers once its receive buffer holds sixteen records.
const RECEIVER_GROWN: usize = 16 * 16384;
