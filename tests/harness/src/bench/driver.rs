//! Through the driver: handshakes, bulk, echo (alone and beside idle connections) and the
//! pool an idle connection holds.

use super::peers::IdlePeers;
use super::*;

pub(super) struct DriverBench<'a> {
    machine: &'a dyn Machine,
    cert: &'a ServerCertificate,
    options: &'a BenchOptions,
}

impl DriverBench<'_> {
    pub(super) fn open(&self) -> Result<Driver, String> {
        Ok(Driver::new(self.machine.open().map_err(|e| e.to_string())?))
    }

    pub(super) fn listen(&self, server: &Driver) -> Result<ListenResponse, String> {
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

    pub(super) fn connect_request(port: u16) -> ConnectRequest<'static> {
        ConnectRequest {
            endpoint: Endpoint::loopback_v4(port),
            host: SERVER_NAME,
            sni: SERVER_NAME,
            alpn: b"",
            versions: tls13(),
            validation: Validation::SystemRoots,
            client_certificate: None,
            keep_peer_certificates: false,
            // Like for like: plain rustls resumes nothing either (Schannel would, by default,
            // and skip the certificate exchange).
            full_handshake: true,
        }
    }

    /// One established pair: (client id, server id, what the client negotiated).
    pub(super) fn pair(
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
    pub(super) fn handshakes(&self) -> Result<(f64, String, Option<Spent>), String> {
        let server = self.open()?;
        let listener = self.listen(&server)?;
        let stop = AtomicBool::new(false);
        let done = AtomicU64::new(0);
        let n = self.options.connections.max(1);
        let clients: Vec<Driver> = (0..n).map(|_| self.open()).collect::<Result<_, _>>()?;
        let mut negotiated = String::new();
        let started = Instant::now();
        let meter = Meter::start();
        let mut per_pair = None;
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
            per_pair = meter.per(done.load(Ordering::Relaxed) as f64);
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
        Ok((rate, format!("TLS 1.3, {negotiated}"), per_pair))
    }

    /// Bulk: the client sends for the phase's length; the server receives and counts. MB/s and
    /// what 64 KiB cost.
    pub(super) fn bulk(&self) -> Result<(f64, Option<Spent>), String> {
        let server = self.open()?;
        let client = self.open()?;
        let listener = self.listen(&server)?;
        let (c, s, _) = self.pair(&server, &client, &listener)?;
        let data = vec![0x5Au8; CHUNK];
        let phase = Duration::from_secs_f64(self.options.seconds);
        let meter = Meter::start();
        let (bytes, elapsed) = std::thread::scope(|scope| -> Result<(u64, Duration), String> {
            // Both sides keep IN_FLIGHT requests going, as an overlapped-I/O user would, and
            // take their results in the order they issued them.
            // Each side reuses its buffers, as a Windows caller would: a completed RECV's buffer
            // goes into the next RECV, a completed SEND's payload into the next SEND.
            let receiver = scope.spawn(|| -> Result<(u64, Instant), String> {
                let mut total = 0u64;
                let mut reads = VecDeque::new();
                let mut spare: Vec<Vec<u8>> = Vec::new();
                loop {
                    while reads.len() < IN_FLIGHT {
                        let mut buffer = spare.pop().unwrap_or_default();
                        buffer.resize(READ_SIZE, 0);
                        let read = server
                            .recv_async_into(s, buffer)
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
                    spare.push(got);
                }
            });
            let started = Instant::now();
            let mut sent = Ok(());
            let mut writes = VecDeque::new();
            let mut spare = vec![data; IN_FLIGHT];
            while sent.is_ok() && started.elapsed() < phase {
                let payload = spare.pop().unwrap_or_else(|| vec![0x5Au8; CHUNK]);
                sent = client
                    .send_async_owned(c, payload)
                    .map(|w| writes.push_back(w))
                    .map_err(e("client SEND"));
                if writes.len() >= IN_FLIGHT {
                    if let Some(w) = writes.pop_front() {
                        sent = sent.and_then(|()| {
                            let payload = w.wait(CALL_TIMEOUT).map_err(e("client SEND"))?;
                            if payload.len() == CHUNK {
                                spare.push(payload);
                            }
                            Ok(())
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
        let per_64k = meter.per(bytes as f64 / 65536.0);
        server.close(listener.id).map_err(e("CLOSE listener"))?;
        Ok((bytes as f64 / 1e6 / elapsed.as_secs_f64(), per_64k))
    }

    /// 1-byte echo round trips for the phase's length: (p50, p99) in microseconds.
    pub(super) fn echo(&self) -> Result<(f64, f64), String> {
        let server = self.open()?;
        let client = self.open()?;
        let listener = self.listen(&server)?;
        let figures = self.echo_on(&server, &client, &listener)?;
        server.close(listener.id).map_err(e("CLOSE listener"))?;
        Ok(figures)
    }

    /// The echo phase again with `idle` connections open beside it on the server's handle, each
    /// one waiting in a RECV as a server's would: what a busy server's other connections cost
    /// one of them. Their clients are plain rustls in a child process ([`IdlePeers`]).
    pub(super) fn echo_with_idle(&self, idle: usize) -> Result<(f64, f64), String> {
        let server = self.open()?;
        let client = self.open()?;
        let listener = self.listen(&server)?;
        let mut peers = IdlePeers::spawn(listener.port, idle, &self.cert.ca_pem)?;
        let mut accepts = VecDeque::new();
        let mut ids = Vec::with_capacity(idle);
        let mut waiting = Vec::with_capacity(idle);
        while ids.len() < idle {
            while accepts.len() < IDLE_WINDOW && ids.len() + accepts.len() < idle {
                accepts.push_back(server.accept(listener.id).map_err(e("ACCEPT"))?);
            }
            // The listener hands connections to ACCEPTs in the order they came.
            let oldest = accepts.front().expect("one in flight");
            match oldest.poll(Duration::from_millis(100)) {
                Ok(Some(info)) => {
                    accepts.pop_front();
                    ids.push(info.id);
                    waiting.push(server.recv_async(info.id, 1).map_err(e("idle RECV"))?);
                }
                Ok(None) => peers.check_running()?,
                Err(err) => {
                    let at = ids.len() + 1;
                    return Err(format!(
                        "idle connection {at} of {idle}: server handshake: {err}"
                    ));
                }
            }
        }
        let connected = peers.ready()?;
        if connected != idle {
            return Err(format!(
                "the idle peers made {connected} of {idle} connections"
            ));
        }
        let figures = self.echo_on(&server, &client, &listener)?;
        // Closing completes the waiting RECVs (cancelled).
        for s in ids {
            server.close(s).map_err(e("CLOSE idle server"))?;
        }
        drop(waiting);
        drop(peers);
        server.close(listener.id).map_err(e("CLOSE listener"))?;
        Ok(figures)
    }

    /// p50/p99 of a 1-byte echo on a fresh connection between these handles.
    pub(super) fn echo_on(
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
    pub(super) fn pool_per_connection(&self) -> Result<f64, String> {
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
    let (handshakes_per_second, negotiated, per_handshake) = bench.handshakes()?;
    bar.inc(1);
    bar.set_message(format!("bulk: {subject}"));
    let (bulk_mb_per_second, per_64k) = bench.bulk()?;
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
            per_handshake,
            per_64k,
        },
        pool_per_connection,
        echo_with_idle,
    })
}
