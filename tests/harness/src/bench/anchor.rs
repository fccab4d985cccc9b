//! Plain rustls over loopback TCP: the anchor every driver figure is divided by.

use super::*;

/// Client and server configurations as kemu's Schannel builds them (ring, TLS 1.3 only, the
/// same certificate), with resumption off so every handshake is a full one.
pub(super) fn rustls_configs(
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

pub(super) type ClientStream = rustls::StreamOwned<ClientConnection, TcpStream>;
pub(super) type ServerStream = rustls::StreamOwned<ServerConnection, TcpStream>;

pub(super) fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |err| format!("rustls {what}: {err}")
}

pub(super) fn rustls_client(config: &Arc<ClientConfig>, port: u16) -> Result<ClientStream, String> {
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

pub(super) fn rustls_server(
    config: &Arc<ServerConfig>,
    tcp: TcpStream,
) -> Result<ServerStream, String> {
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
pub(super) fn rustls_shutdown(stream: &mut ClientStream) -> Result<(), String> {
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
pub(super) fn drain(stream: &mut ServerStream, mut each: impl FnMut(&[u8], &mut ServerStream)) {
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => each(&buf[..n], stream),
        }
    }
}

pub(super) fn rustls_handshakes(
    cert: &ServerCertificate,
    options: &BenchOptions,
) -> Result<(f64, String, Option<Spent>), String> {
    let (client_config, server_config) = rustls_configs(cert)?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
    let port = listener.local_addr().map_err(io("bind"))?.port();
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let n = options.connections.max(1);
    let mut negotiated = String::new();
    let started = Instant::now();
    let meter = Meter::start();
    let mut per_pair = None;
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
        per_pair = meter.per(done.load(Ordering::Relaxed) as f64);
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
    Ok((rate, format!("TLS 1.3, {negotiated}"), per_pair))
}

/// Bulk MB/s and what 64 KiB cost.
pub(super) fn rustls_bulk(
    cert: &ServerCertificate,
    options: &BenchOptions,
) -> Result<(f64, Option<Spent>), String> {
    let (client_config, server_config) = rustls_configs(cert)?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
    let port = listener.local_addr().map_err(io("bind"))?.port();
    let phase = Duration::from_secs_f64(options.seconds);
    std::thread::scope(|scope| -> Result<(f64, Option<Spent>), String> {
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
        let meter = Meter::start();
        while started.elapsed() < phase {
            stream.write_all(&data).map_err(io("write"))?;
        }
        rustls_shutdown(&mut stream)?;
        let (total, end) = receiver
            .join()
            .map_err(|_| "the receiver panicked".to_string())??;
        Ok((
            total as f64 / 1e6 / (end - started).as_secs_f64(),
            meter.per(total as f64 / 65536.0),
        ))
    })
}

pub(super) fn rustls_echo(
    cert: &ServerCertificate,
    options: &BenchOptions,
) -> Result<(f64, f64), String> {
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
    let (handshakes_per_second, negotiated, per_handshake) = rustls_handshakes(cert, options)?;
    bar.inc(1);
    bar.set_message("bulk: plain rustls");
    let (bulk_mb_per_second, per_64k) = rustls_bulk(cert, options)?;
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
        per_handshake,
        per_64k,
    })
}
