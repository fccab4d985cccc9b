//! `wsktls bench`: what the driver costs, measured against plain rustls over loopback TCP in the
//! same run (same certificate, key exchange and cipher suite), so the ratios mean something on a
//! noisy machine. Three figures: full handshakes per second with N parallel clients, bulk MB/s on
//! one connection, and the p50/p99 latency of a 1-byte echo. Plus the non-paged pool one idle
//! established connection holds (from STATS). This measures; it asserts nothing.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use proto::session::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use crate::driver::{CALL_TIMEOUT, CallError, Driver, cipher_name};
use crate::machine::{Machine, ServerCertificate};

/// How long and how wide to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Parallel clients in the handshake phase.
    pub connections: usize,
    /// Length of each timed phase.
    pub seconds: f64,
    /// Idle connections held open (each waiting in a RECV, as a server's would) during a second
    /// echo phase; 0 skips it.
    pub idle: usize,
}

/// The three timed figures of one subject (the driver, or plain rustls).
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub handshakes_per_second: f64,
    pub bulk_mb_per_second: f64,
    pub echo_p50_us: f64,
    pub echo_p99_us: f64,
    /// What the handshakes negotiated ("TLS 1.3, TLS_AES_... , X25519").
    pub negotiated: String,
}

/// Everything one run measured through one driver, with the rustls anchor.
pub struct DriverFigures {
    /// "natively linked driver" or "image PATH".
    pub subject: String,
    pub figures: Figures,
    /// Non-paged pool per idle established connection (one TLS session), bytes.
    pub pool_per_connection: f64,
    /// Echo p50/p99 (µs) with `BenchOptions::idle` idle connections open beside it.
    pub echo_with_idle: Option<(f64, f64)>,
}

const NAME: &str = "localhost";
const SERVER_NAME: &[u8] = b"localhost";
const CHUNK: usize = MAX_SEND;
/// What one read asks for in the bulk phase, through the driver and with plain rustls alike: a
/// typical socket read. (A RECV's output length is the METHOD_BUFFERED system buffer the I/O
/// manager allocates, fills and frees for every request, so asking for 1 MiB to get one 16 KiB
/// record would measure the allocator.)
const READ_SIZE: usize = 64 * 1024;
/// SENDs (and RECVs) kept in flight on the bulk connection.
const IN_FLIGHT: usize = 4;
/// The most latency samples kept per subject.
const MAX_SAMPLES: usize = 200_000;
/// Idle connections opened to measure pool per connection.
const IDLE_CONNECTIONS: usize = 32;
/// Handshakes in flight while the idle connections of `--idle` are made.
const IDLE_WINDOW: usize = 64;

fn e(what: &'static str) -> impl Fn(CallError) -> String {
    move |err| format!("{what}: {err}")
}

fn tls13() -> VersionRange {
    VersionRange {
        min: TlsVersion::Tls13,
        max: TlsVersion::Tls13,
    }
}

/// A progress bar over all phases (hidden when stderr is not a terminal).
pub fn progress(phases: u64) -> ProgressBar {
    let bar = ProgressBar::new(phases);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at].as_secs_f64() * 1e6
}

// ---------------------------------------------------------------------------------------------
// Through the driver.

struct DriverBench<'a> {
    machine: &'a dyn Machine,
    cert: &'a ServerCertificate,
    options: &'a BenchOptions,
}

impl DriverBench<'_> {
    fn open(&self) -> Result<Driver, String> {
        Ok(Driver::new(self.machine.open().map_err(|e| e.to_string())?))
    }

    fn listen(&self, server: &Driver) -> Result<ListenResponse, String> {
        server
            .listen(&ListenRequest {
                endpoint: Endpoint::loopback_v4(0),
                thumbprint: self.cert.thumbprint,
                versions: tls13(),
                require_client_certificate: false,
                alpn: b"",
            })
            .map_err(e("LISTEN"))
    }

    fn connect_request(port: u16) -> ConnectRequest<'static> {
        ConnectRequest {
            endpoint: Endpoint::loopback_v4(port),
            host: SERVER_NAME,
            sni: SERVER_NAME,
            alpn: b"",
            versions: tls13(),
            validation: Validation::SystemRoots,
            client_certificate: None,
            keep_peer_certificates: false,
        }
    }

    /// One established pair: (client id, server id, what the client negotiated).
    fn pair(
        &self,
        server: &Driver,
        client: &Driver,
        listener: &ListenResponse,
    ) -> Result<(u64, u64, ConnectionInfo), String> {
        let accept = server.accept(listener.id).map_err(e("ACCEPT"))?;
        let connect = client
            .connect(&Self::connect_request(listener.port))
            .map_err(e("CONNECT"))?;
        let c = connect.wait(CALL_TIMEOUT).map_err(e("client handshake"))?;
        let s = accept.wait(CALL_TIMEOUT).map_err(e("server handshake"))?;
        Ok((c.id, s.id, c))
    }

    /// Full handshakes per second: N clients connect, shut down and close in a loop; N acceptors
    /// take each connection and close it. Counted when the server's handshake completes.
    fn handshakes(&self) -> Result<(f64, String), String> {
        let server = self.open()?;
        let listener = self.listen(&server)?;
        let stop = AtomicBool::new(false);
        let done = AtomicU64::new(0);
        let n = self.options.connections.max(1);
        let clients: Vec<Driver> = (0..n).map(|_| self.open()).collect::<Result<_, _>>()?;
        let mut negotiated = String::new();
        let started = Instant::now();
        let elapsed = std::thread::scope(|scope| -> Result<Duration, String> {
            let mut workers = Vec::new();
            for _ in 0..n {
                workers.push(scope.spawn(|| -> Result<(), String> {
                    while !stop.load(Ordering::Acquire) {
                        let accept = server.accept(listener.id).map_err(e("ACCEPT"))?;
                        loop {
                            match accept.poll(Duration::from_millis(100)) {
                                Ok(Some(info)) => {
                                    if !stop.load(Ordering::Acquire) {
                                        done.fetch_add(1, Ordering::Relaxed);
                                    }
                                    // The client shuts down at once: wait for its close_notify
                                    // so no reset races the end of its handshake.
                                    let _ = server.recv(info.id, 16, CALL_TIMEOUT);
                                    server.close(info.id).map_err(e("CLOSE server"))?;
                                    break;
                                }
                                Ok(None) if stop.load(Ordering::Acquire) => {
                                    accept.cancel();
                                    // It completes (cancelled, or just finished): close what came.
                                    if let Ok(Some(info)) = accept.poll(CALL_TIMEOUT) {
                                        server.close(info.id).map_err(e("CLOSE server"))?;
                                    }
                                    break;
                                }
                                Ok(None) => {}
                                // A handshake the client abandoned at the end; not counted.
                                Err(_) => break,
                            }
                        }
                    }
                    Ok(())
                }));
            }
            let mut drivers = Vec::new();
            for client in &clients {
                drivers.push(scope.spawn(|| -> Result<Option<String>, String> {
                    let mut first = None;
                    while !stop.load(Ordering::Acquire) {
                        let c = client
                            .connect(&Self::connect_request(listener.port))
                            .map_err(e("CONNECT"))?
                            .wait(CALL_TIMEOUT)
                            .map_err(e("client handshake"))?;
                        if first.is_none() {
                            first = Some(cipher_name(c.cipher_suite));
                        }
                        // The server closes once it reads close_notify, which may reset the
                        // connection before the FIN went out: SHUTDOWN may report that.
                        let _ = client.shutdown(c.id);
                        client.close(c.id).map_err(e("CLOSE client"))?;
                    }
                    Ok(first)
                }));
            }
            std::thread::sleep(Duration::from_secs_f64(self.options.seconds));
            let elapsed = started.elapsed();
            stop.store(true, Ordering::Release);
            let mut result = Ok(());
            for d in drivers {
                match d.join().map_err(|_| "a client thread panicked".to_string()) {
                    Ok(Ok(Some(n))) => negotiated = n,
                    Ok(Ok(None)) => {}
                    Ok(Err(x)) | Err(x) => result = Err(x),
                }
            }
            for w in workers {
                match w
                    .join()
                    .map_err(|_| "an acceptor thread panicked".to_string())
                {
                    Ok(Ok(())) => {}
                    Ok(Err(x)) | Err(x) => result = Err(x),
                }
            }
            result.map(|()| elapsed)
        })?;
        server.close(listener.id).map_err(e("CLOSE listener"))?;
        let rate = done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
        Ok((rate, format!("TLS 1.3, {negotiated}")))
    }

    /// Bulk: the client sends for the phase's length; the server receives and counts.
    fn bulk(&self) -> Result<f64, String> {
        let server = self.open()?;
        let client = self.open()?;
        let listener = self.listen(&server)?;
        let (c, s, _) = self.pair(&server, &client, &listener)?;
        let data = vec![0x5Au8; CHUNK];
        let phase = Duration::from_secs_f64(self.options.seconds);
        let (bytes, elapsed) = std::thread::scope(|scope| -> Result<(u64, Duration), String> {
            // Both sides keep IN_FLIGHT requests going, as an overlapped-I/O user would, and
            // take their results in the order they issued them.
            let receiver = scope.spawn(|| -> Result<(u64, Instant), String> {
                let mut total = 0u64;
                let mut reads = VecDeque::new();
                loop {
                    while reads.len() < IN_FLIGHT {
                        let read = server
                            .recv_async(s, READ_SIZE as u32)
                            .map_err(e("server RECV"))?;
                        reads.push_back(read);
                    }
                    let got = reads
                        .pop_front()
                        .expect("reads in flight")
                        .wait(CALL_TIMEOUT)
                        .map_err(e("server RECV"))?;
                    if got.is_empty() {
                        // The rest complete with the end of the stream too.
                        return Ok((total, Instant::now()));
                    }
                    total += got.len() as u64;
                }
            });
            let started = Instant::now();
            let mut sent = Ok(());
            let mut writes = VecDeque::new();
            while sent.is_ok() && started.elapsed() < phase {
                sent = client
                    .send_async(c, &data)
                    .map(|w| writes.push_back(w))
                    .map_err(e("client SEND"));
                if writes.len() >= IN_FLIGHT {
                    if let Some(w) = writes.pop_front() {
                        sent = sent.and_then(|()| {
                            w.wait(CALL_TIMEOUT).map(drop).map_err(e("client SEND"))
                        });
                    }
                }
            }
            while let Some(w) = writes.pop_front() {
                sent = sent.and_then(|()| w.wait(CALL_TIMEOUT).map(drop).map_err(e("client SEND")));
            }
            let ended = sent.and_then(|()| client.shutdown(c).map_err(e("client SHUTDOWN")));
            if ended.is_err() {
                // End the receiver's wait too, so both sides' reasons are reported.
                let _ = client.close(c);
            }
            let received = receiver
                .join()
                .map_err(|_| "the receiver panicked".to_string())?;
            match (ended, received) {
                (Ok(()), Ok((total, end))) => Ok((total, end - started)),
                (Err(sender), Err(receiver)) => Err(format!("{sender}; {receiver}")),
                (Err(why), _) | (_, Err(why)) => Err(why),
            }
        })?;
        client.close(c).map_err(e("CLOSE client"))?;
        server.close(s).map_err(e("CLOSE server"))?;
        server.close(listener.id).map_err(e("CLOSE listener"))?;
        Ok(bytes as f64 / 1e6 / elapsed.as_secs_f64())
    }

    /// 1-byte echo round trips for the phase's length: (p50, p99) in microseconds.
    fn echo(&self) -> Result<(f64, f64), String> {
        let server = self.open()?;
        let client = self.open()?;
        let listener = self.listen(&server)?;
        let figures = self.echo_on(&server, &client, &listener)?;
        server.close(listener.id).map_err(e("CLOSE listener"))?;
        Ok(figures)
    }

    /// The echo phase again with `idle` connections open on the same handles, every server end
    /// waiting in a RECV: what a busy server's other connections cost one of them.
    fn echo_with_idle(&self, idle: usize) -> Result<(f64, f64), String> {
        let server = self.open()?;
        let client = self.open()?;
        let listener = self.listen(&server)?;
        let mut ids = Vec::with_capacity(idle);
        let mut in_flight = VecDeque::new();
        while ids.len() < idle {
            while in_flight.len() < IDLE_WINDOW && ids.len() + in_flight.len() < idle {
                let accept = server.accept(listener.id).map_err(e("ACCEPT"))?;
                let connect = client
                    .connect(&Self::connect_request(listener.port))
                    .map_err(e("CONNECT"))?;
                in_flight.push_back((connect, accept));
            }
            let (connect, accept) = in_flight.pop_front().expect("one in flight");
            let at = ids.len() + 1;
            let c = connect.wait(CALL_TIMEOUT).map_err(|err| {
                format!("idle connection {at} of {idle}: client handshake: {err}")
            })?;
            let s = accept.wait(CALL_TIMEOUT).map_err(|err| {
                format!("idle connection {at} of {idle}: server handshake: {err}")
            })?;
            ids.push((c.id, s.id));
        }
        let waiting = ids
            .iter()
            .map(|&(_, s)| server.recv_async(s, 1))
            .collect::<Result<Vec<_>, _>>()
            .map_err(e("idle RECV"))?;
        let figures = self.echo_on(&server, &client, &listener)?;
        // Closing completes the waiting RECVs (cancelled).
        for (c, s) in ids {
            client.close(c).map_err(e("CLOSE idle client"))?;
            server.close(s).map_err(e("CLOSE idle server"))?;
        }
        drop(waiting);
        server.close(listener.id).map_err(e("CLOSE listener"))?;
        Ok(figures)
    }

    /// p50/p99 of a 1-byte echo on a fresh connection between these handles.
    fn echo_on(
        &self,
        server: &Driver,
        client: &Driver,
        listener: &ListenResponse,
    ) -> Result<(f64, f64), String> {
        let (c, s, _) = self.pair(server, client, listener)?;
        let phase = Duration::from_secs_f64(self.options.seconds);
        let mut samples = std::thread::scope(|scope| -> Result<Vec<Duration>, String> {
            let echo = scope.spawn(|| -> Result<(), String> {
                loop {
                    let got = server.recv(s, 1, CALL_TIMEOUT).map_err(e("server RECV"))?;
                    if got.is_empty() {
                        return Ok(());
                    }
                    server.send(s, &got).map_err(e("server SEND"))?;
                }
            });
            let mut samples = Vec::new();
            let started = Instant::now();
            while started.elapsed() < phase && samples.len() < MAX_SAMPLES {
                let t = Instant::now();
                client.send(c, b"x").map_err(e("client SEND"))?;
                let back = client.recv(c, 1, CALL_TIMEOUT).map_err(e("client RECV"))?;
                if back != b"x" {
                    return Err(format!("echo returned {back:?}"));
                }
                samples.push(t.elapsed());
            }
            client.shutdown(c).map_err(e("client SHUTDOWN"))?;
            echo.join()
                .map_err(|_| "the echo thread panicked".to_string())??;
            Ok(samples)
        })?;
        client.close(c).map_err(e("CLOSE client"))?;
        server.close(s).map_err(e("CLOSE server"))?;
        samples.sort();
        Ok((percentile(&samples, 0.5), percentile(&samples, 0.99)))
    }

    /// Pool held by one idle established connection: STATS before and after opening
    /// IDLE_CONNECTIONS pairs (2 sessions each), divided by the sessions.
    fn pool_per_connection(&self) -> Result<f64, String> {
        let server = self.open()?;
        let client = self.open()?;
        let listener = self.listen(&server)?;
        let before = server.stats().map_err(e("STATS"))?.pool_bytes;
        let mut pairs = Vec::new();
        for _ in 0..IDLE_CONNECTIONS {
            pairs.push(self.pair(&server, &client, &listener)?);
        }
        // Let post-handshake messages (tickets) arrive, and the connections go idle: a
        // connection gives its buffers back after 200 ms with nothing moving.
        std::thread::sleep(Duration::from_millis(800));
        let after = server.stats().map_err(e("STATS"))?.pool_bytes;
        for (c, s, _) in pairs {
            client.close(c).map_err(e("CLOSE client"))?;
            server.close(s).map_err(e("CLOSE server"))?;
        }
        server.close(listener.id).map_err(e("CLOSE listener"))?;
        Ok(after.saturating_sub(before) as f64 / (2 * IDLE_CONNECTIONS) as f64)
    }
}

/// Measures the driver on `machine`, advancing `bar` one step per phase (4 phases).
pub fn measure_driver(
    machine: &dyn Machine,
    cert: &ServerCertificate,
    options: &BenchOptions,
    bar: &ProgressBar,
) -> Result<DriverFigures, String> {
    let bench = DriverBench {
        machine,
        cert,
        options,
    };
    let subject = machine.describe();
    bar.set_message(format!("handshakes: {subject}"));
    let (handshakes_per_second, negotiated) = bench.handshakes()?;
    bar.inc(1);
    bar.set_message(format!("bulk: {subject}"));
    let bulk_mb_per_second = bench.bulk()?;
    bar.inc(1);
    bar.set_message(format!("1-byte echo: {subject}"));
    let (echo_p50_us, echo_p99_us) = bench.echo()?;
    bar.inc(1);
    bar.set_message(format!("idle pool: {subject}"));
    let pool_per_connection = bench.pool_per_connection()?;
    bar.inc(1);
    let echo_with_idle = match options.idle {
        0 => None,
        idle => {
            bar.set_message(format!(
                "1-byte echo beside {idle} idle connections: {subject}"
            ));
            let figures = bench.echo_with_idle(idle)?;
            bar.inc(1);
            Some(figures)
        }
    };
    Ok(DriverFigures {
        subject,
        figures: Figures {
            handshakes_per_second,
            bulk_mb_per_second,
            echo_p50_us,
            echo_p99_us,
            negotiated,
        },
        pool_per_connection,
        echo_with_idle,
    })
}

// ---------------------------------------------------------------------------------------------
// Plain rustls over loopback TCP: the anchor.

/// Client and server configurations as kemu's Schannel builds them (ring, TLS 1.3 only, the
/// same certificate), with resumption off so every handshake is a full one.
fn rustls_configs(
    cert: &ServerCertificate,
) -> Result<(Arc<ClientConfig>, Arc<ServerConfig>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|x| format!("certificate PEM: {x}"))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut cert.key_pem.as_bytes())
        .map_err(|x| format!("key PEM: {x}"))?
        .ok_or("key PEM holds no key")?;
    let mut roots = RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut cert.ca_pem.as_bytes()) {
        roots
            .add(ca.map_err(|x| format!("CA PEM: {x}"))?)
            .map_err(|x| format!("CA: {x}"))?;
    }
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|x| x.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|x| x.to_string())?;
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|x| x.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.resumption = rustls::client::Resumption::disabled();
    Ok((Arc::new(client), Arc::new(server)))
}

type ClientStream = rustls::StreamOwned<ClientConnection, TcpStream>;
type ServerStream = rustls::StreamOwned<ServerConnection, TcpStream>;

fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |err| format!("rustls {what}: {err}")
}

fn rustls_client(config: &Arc<ClientConfig>, port: u16) -> Result<ClientStream, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(io("connect"))?;
    tcp.set_nodelay(true).map_err(io("nodelay"))?;
    let name = ServerName::try_from(NAME).map_err(|x| x.to_string())?;
    let conn = ClientConnection::new(config.clone(), name).map_err(|x| x.to_string())?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(io("client handshake"))?;
    }
    Ok(stream)
}

fn rustls_server(config: &Arc<ServerConfig>, tcp: TcpStream) -> Result<ServerStream, String> {
    tcp.set_nodelay(true).map_err(io("nodelay"))?;
    let conn = ServerConnection::new(config.clone()).map_err(|x| x.to_string())?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(io("server handshake"))?;
    }
    Ok(stream)
}

/// Sends close_notify and a FIN, as SHUTDOWN does.
fn rustls_shutdown(stream: &mut ClientStream) -> Result<(), String> {
    stream.conn.send_close_notify();
    while stream.conn.wants_write() {
        stream
            .conn
            .write_tls(&mut stream.sock)
            .map_err(io("close_notify"))?;
    }
    stream
        .sock
        .shutdown(std::net::Shutdown::Write)
        .map_err(io("shutdown"))
}

/// Reads until close_notify or EOF, calling `each` with every piece.
fn drain(stream: &mut ServerStream, mut each: impl FnMut(&[u8], &mut ServerStream)) {
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => each(&buf[..n], stream),
        }
    }
}

fn rustls_handshakes(
    cert: &ServerCertificate,
    options: &BenchOptions,
) -> Result<(f64, String), String> {
    let (client_config, server_config) = rustls_configs(cert)?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
    let port = listener.local_addr().map_err(io("bind"))?.port();
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let n = options.connections.max(1);
    let mut negotiated = String::new();
    let started = Instant::now();
    let elapsed = std::thread::scope(|scope| -> Result<Duration, String> {
        // N acceptors share the listener, like the driver's N pending ACCEPTs.
        for _ in 0..n {
            let listener = &listener;
            let (server_config, stop, done) = (&server_config, &stop, &done);
            scope.spawn(move || {
                while let Ok((tcp, _)) = listener.accept() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    if let Ok(mut stream) = rustls_server(server_config, tcp) {
                        if !stop.load(Ordering::Acquire) {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        // As the driver's acceptors do: read to the client's close_notify.
                        drain(&mut stream, |_, _| {});
                    }
                }
            });
        }
        let mut clients = Vec::new();
        for _ in 0..n {
            let (client_config, stop) = (&client_config, &stop);
            clients.push(scope.spawn(move || -> Result<Option<String>, String> {
                let mut first = None;
                while !stop.load(Ordering::Acquire) {
                    let mut stream = match rustls_client(client_config, port) {
                        Ok(stream) => stream,
                        // Acceptors drop what arrives after the stop.
                        Err(_) if stop.load(Ordering::Acquire) => break,
                        Err(x) => return Err(x),
                    };
                    if first.is_none() {
                        let suite = stream.conn.negotiated_cipher_suite().map(|s| s.suite());
                        let group = stream
                            .conn
                            .negotiated_key_exchange_group()
                            .map(|g| g.name());
                        // The group's name as TLS spells it (X25519), not Rust's Some(X25519).
                        let group = group.map_or_else(
                            || "no key exchange group".to_string(),
                            |g| format!("{g:?}"),
                        );
                        first = Some(format!(
                            "{}, {group}",
                            cipher_name(suite.map(u16::from).unwrap_or(0)),
                        ));
                    }
                    let _ = rustls_shutdown(&mut stream);
                }
                Ok(first)
            }));
        }
        std::thread::sleep(Duration::from_secs_f64(options.seconds));
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Release);
        let mut result = Ok(());
        for c in clients {
            match c.join().map_err(|_| "a client thread panicked".to_string()) {
                Ok(Ok(Some(x))) => negotiated = x,
                Ok(Ok(None)) => {}
                Ok(Err(x)) | Err(x) => result = Err(x),
            }
        }
        // Wake every acceptor so it sees the stop.
        for _ in 0..n {
            let _ = TcpStream::connect(("127.0.0.1", port));
        }
        result.map(|()| elapsed)
    })?;
    let rate = done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
    Ok((rate, format!("TLS 1.3, {negotiated}")))
}

fn rustls_bulk(cert: &ServerCertificate, options: &BenchOptions) -> Result<f64, String> {
    let (client_config, server_config) = rustls_configs(cert)?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
    let port = listener.local_addr().map_err(io("bind"))?.port();
    let phase = Duration::from_secs_f64(options.seconds);
    std::thread::scope(|scope| -> Result<f64, String> {
        let receiver = scope.spawn(|| -> Result<(u64, Instant), String> {
            let (tcp, _) = listener.accept().map_err(io("accept"))?;
            let mut stream = rustls_server(&server_config, tcp)?;
            let mut total = 0u64;
            drain(&mut stream, |piece, _| total += piece.len() as u64);
            Ok((total, Instant::now()))
        });
        let mut stream = rustls_client(&client_config, port)?;
        let data = vec![0x5Au8; CHUNK];
        let started = Instant::now();
        while started.elapsed() < phase {
            stream.write_all(&data).map_err(io("write"))?;
        }
        rustls_shutdown(&mut stream)?;
        let (total, end) = receiver
            .join()
            .map_err(|_| "the receiver panicked".to_string())??;
        Ok(total as f64 / 1e6 / (end - started).as_secs_f64())
    })
}

fn rustls_echo(cert: &ServerCertificate, options: &BenchOptions) -> Result<(f64, f64), String> {
    let (client_config, server_config) = rustls_configs(cert)?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
    let port = listener.local_addr().map_err(io("bind"))?.port();
    let phase = Duration::from_secs_f64(options.seconds);
    let mut samples = std::thread::scope(|scope| -> Result<Vec<Duration>, String> {
        let echo = scope.spawn(|| -> Result<(), String> {
            let (tcp, _) = listener.accept().map_err(io("accept"))?;
            let mut stream = rustls_server(&server_config, tcp)?;
            drain(&mut stream, |piece, s| {
                let _ = s.write_all(piece);
            });
            Ok(())
        });
        let mut stream = rustls_client(&client_config, port)?;
        let mut samples = Vec::new();
        let mut back = [0u8; 1];
        let started = Instant::now();
        while started.elapsed() < phase && samples.len() < MAX_SAMPLES {
            let t = Instant::now();
            stream.write_all(b"x").map_err(io("write"))?;
            stream.read_exact(&mut back).map_err(io("read"))?;
            samples.push(t.elapsed());
        }
        rustls_shutdown(&mut stream)?;
        echo.join()
            .map_err(|_| "the echo thread panicked".to_string())??;
        Ok(samples)
    })?;
    samples.sort();
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.99)))
}

/// Measures plain rustls over loopback (3 phases on `bar`).
pub fn measure_rustls(
    cert: &ServerCertificate,
    options: &BenchOptions,
    bar: &ProgressBar,
) -> Result<Figures, String> {
    bar.set_message("handshakes: plain rustls");
    let (handshakes_per_second, negotiated) = rustls_handshakes(cert, options)?;
    bar.inc(1);
    bar.set_message("bulk: plain rustls");
    let bulk_mb_per_second = rustls_bulk(cert, options)?;
    bar.inc(1);
    bar.set_message("1-byte echo: plain rustls");
    let (echo_p50_us, echo_p99_us) = rustls_echo(cert, options)?;
    bar.inc(1);
    Ok(Figures {
        handshakes_per_second,
        bulk_mb_per_second,
        echo_p50_us,
        echo_p99_us,
        negotiated,
    })
}

// ---------------------------------------------------------------------------------------------
// The report.

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The report as text: one table, the anchor last, ratios against it.
pub fn report_text(drivers: &[DriverFigures], anchor: &Figures, options: &BenchOptions) -> String {
    let mut out = format!(
        "wsktls bench — {} parallel clients, {:.1} s per phase\n",
        options.connections, options.seconds
    );
    out += &format!(
        "{:<44} {:>12} {:>10} {:>12} {:>12} {:>14}\n",
        "subject", "handshakes/s", "bulk MB/s", "echo p50 µs", "echo p99 µs", "pool/conn KiB"
    );
    for d in drivers {
        out += &format!(
            "{:<44} {:>12.0} {:>10.0} {:>12.0} {:>12.0} {:>14.1}\n",
            d.subject,
            d.figures.handshakes_per_second,
            d.figures.bulk_mb_per_second,
            d.figures.echo_p50_us,
            d.figures.echo_p99_us,
            d.pool_per_connection / 1024.0
        );
    }
    out += &format!(
        "{:<44} {:>12.0} {:>10.0} {:>12.0} {:>12.0} {:>14}\n",
        "plain rustls over loopback TCP",
        anchor.handshakes_per_second,
        anchor.bulk_mb_per_second,
        anchor.echo_p50_us,
        anchor.echo_p99_us,
        "-"
    );
    for d in drivers {
        out += &format!(
            "ratio {} / rustls: handshakes {:.2}×, bulk {:.2}×, echo p50 {:.2}× the time\n",
            d.subject,
            ratio(
                d.figures.handshakes_per_second,
                anchor.handshakes_per_second
            ),
            ratio(d.figures.bulk_mb_per_second, anchor.bulk_mb_per_second),
            ratio(d.figures.echo_p50_us, anchor.echo_p50_us),
        );
    }
    for d in drivers {
        if let Some((p50, p99)) = d.echo_with_idle {
            out += &format!(
                "echo beside {} idle connections, {}: p50 {p50:.0} µs, p99 {p99:.0} µs ({:.2}× the p50 with none)\n",
                options.idle,
                d.subject,
                ratio(p50, d.figures.echo_p50_us),
            );
        }
    }
    if let [image, native] = drivers {
        out += &format!(
            "ratio image / native: handshakes {:.2}×, bulk {:.2}×, echo p50 {:.2}× the time\n",
            ratio(
                image.figures.handshakes_per_second,
                native.figures.handshakes_per_second
            ),
            ratio(
                image.figures.bulk_mb_per_second,
                native.figures.bulk_mb_per_second
            ),
            ratio(image.figures.echo_p50_us, native.figures.echo_p50_us),
        );
    }
    out += &format!(
        "negotiated: driver {}; rustls {}\n",
        drivers
            .first()
            .map(|d| d.figures.negotiated.as_str())
            .unwrap_or("-"),
        anchor.negotiated
    );
    out
}

fn figures_json(f: &Figures) -> serde_json::Value {
    serde_json::json!({
        "handshakes_per_second": f.handshakes_per_second,
        "bulk_mb_per_second": f.bulk_mb_per_second,
        "echo_p50_us": f.echo_p50_us,
        "echo_p99_us": f.echo_p99_us,
        "negotiated": f.negotiated,
    })
}

/// The report as JSON (for scripts and CI dashboards).
pub fn report_json(drivers: &[DriverFigures], anchor: &Figures, options: &BenchOptions) -> String {
    let drivers: Vec<_> = drivers
        .iter()
        .map(|d| {
            serde_json::json!({
                "subject": d.subject,
                "figures": figures_json(&d.figures),
                "pool_bytes_per_idle_connection": d.pool_per_connection,
                "echo_with_idle": d.echo_with_idle.map(|(p50, p99)| serde_json::json!({
                    "idle_connections": options.idle,
                    "echo_p50_us": p50,
                    "echo_p99_us": p99,
                    "p50_ratio_to_none": ratio(p50, d.figures.echo_p50_us),
                })),
                "ratio_to_rustls": {
                    "handshakes": ratio(d.figures.handshakes_per_second, anchor.handshakes_per_second),
                    "bulk": ratio(d.figures.bulk_mb_per_second, anchor.bulk_mb_per_second),
                    "echo_p50": ratio(d.figures.echo_p50_us, anchor.echo_p50_us),
                },
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "connections": options.connections,
        "seconds_per_phase": options.seconds,
        "drivers": drivers,
        "rustls": figures_json(anchor),
    }))
    .expect("JSON of plain values")
}
