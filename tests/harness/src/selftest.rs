//! `wsktls selftest`: a driver listener and a driver client handshake over loopback with TLS 1.3
//! and with TLS 1.2, echo messages from 1 byte to 1 MiB, shut down gracefully, and the machine
//! reports its verdict. Exit status 0 only if every step held.

use std::time::{Duration, Instant};

use proto::session::*;

use crate::driver::{CALL_TIMEOUT, CallError, Driver, cipher_name, version_name};
use crate::machine::Machine;

/// Message sizes echoed on every connection.
pub const SIZES: [usize; 5] = [1, 1024, 16 * 1024 + 1, 256 * 1024, 1 << 20];
/// ALPN the selftest negotiates.
const ALPN: &[u8] = b"\x09wsktls/01";

/// What one TLS version's run measured.
pub struct VersionRun {
    pub version: Option<TlsVersion>,
    pub cipher_suite: u16,
    pub alpn: Vec<u8>,
    pub handshake: Duration,
    pub transfer: Duration,
    pub bytes: usize,
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(151)
                .wrapping_add(salt ^ (i >> 8) as u8)
        })
        .collect()
}

/// One connection at exactly `version`: handshake, echoes, graceful shutdown, close.
pub fn run_version(
    server: &Driver,
    client: &Driver,
    thumbprint: [u8; 20],
    version: TlsVersion,
) -> Result<VersionRun, String> {
    let range = VersionRange {
        min: version,
        max: version,
    };
    let e = |what: &str, err: CallError| format!("{what}: {err}");
    let listener = server
        .listen(&ListenRequest {
            endpoint: Endpoint::loopback_v4(0),
            thumbprint,
            versions: range,
            require_client_certificate: false,
            alpn: ALPN,
        })
        .map_err(|x| e("LISTEN", x))?;
    let started = Instant::now();
    let accept = server.accept(listener.id).map_err(|x| e("ACCEPT", x))?;
    let connect = client
        .connect(&ConnectRequest {
            endpoint: Endpoint::loopback_v4(listener.port),
            host: b"localhost",
            sni: b"localhost",
            alpn: ALPN,
            versions: range,
            validation: Validation::SystemRoots,
            client_certificate: None,
            keep_peer_certificates: false,
            full_handshake: false,
        })
        .map_err(|x| e("CONNECT", x))?;
    let c = connect
        .wait(CALL_TIMEOUT)
        .map_err(|x| e("client handshake", x))?;
    let handshake = started.elapsed();
    let s = accept
        .wait(CALL_TIMEOUT)
        .map_err(|x| e("server handshake", x))?;
    if c.version != Some(version) || s.version != Some(version) {
        return Err(format!(
            "negotiated {} / {}, asked for {}",
            version_name(c.version),
            version_name(s.version),
            version_name(Some(version))
        ));
    }
    if c.alpn() != &ALPN[1..] || s.alpn() != &ALPN[1..] {
        return Err(format!("ALPN {:?} / {:?}", c.alpn(), s.alpn()));
    }
    let transfer_started = Instant::now();
    let mut bytes = 0;
    std::thread::scope(|scope| -> Result<(), String> {
        // The server echoes until the client's close_notify, then shuts down itself.
        let echo = scope.spawn(|| -> Result<usize, String> {
            let mut echoed = 0;
            loop {
                let data = server
                    .recv(s.id, 65536, CALL_TIMEOUT)
                    .map_err(|x| e("server RECV", x))?;
                if data.is_empty() {
                    break;
                }
                server.send(s.id, &data).map_err(|x| e("server SEND", x))?;
                echoed += data.len();
            }
            server.shutdown(s.id).map_err(|x| e("server SHUTDOWN", x))?;
            Ok(echoed)
        });
        for (i, &len) in SIZES.iter().enumerate() {
            let message = pattern(len, i as u8);
            let back = std::thread::scope(|inner| -> Result<Vec<u8>, String> {
                let sender = inner.spawn(|| client.send(c.id, &message));
                let mut back = Vec::with_capacity(len);
                while back.len() < len {
                    let data = client
                        .recv(c.id, 65536, CALL_TIMEOUT)
                        .map_err(|x| e("client RECV", x))?;
                    if data.is_empty() {
                        return Err(format!("stream ended after {} of {len} bytes", back.len()));
                    }
                    back.extend_from_slice(&data);
                }
                sender
                    .join()
                    .map_err(|_| "sender panicked".to_string())?
                    .map_err(|x| e("client SEND", x))?;
                Ok(back)
            })?;
            if back != message {
                let at = back.iter().zip(&message).position(|(a, b)| a != b);
                return Err(format!("echo of {len} bytes differs (first at {at:?})"));
            }
            bytes += 2 * len;
        }
        client.shutdown(c.id).map_err(|x| e("client SHUTDOWN", x))?;
        let echoed = echo.join().map_err(|_| "echo panicked".to_string())??;
        if echoed != SIZES.iter().sum::<usize>() {
            return Err(format!("server echoed {echoed} bytes"));
        }
        let end = client
            .recv(c.id, 16, CALL_TIMEOUT)
            .map_err(|x| e("client RECV at end", x))?;
        if !end.is_empty() {
            return Err("data after the server's close_notify".into());
        }
        Ok(())
    })?;
    let transfer = transfer_started.elapsed();
    client.close(c.id).map_err(|x| e("CLOSE client", x))?;
    server.close(s.id).map_err(|x| e("CLOSE server", x))?;
    server
        .close(listener.id)
        .map_err(|x| e("CLOSE listener", x))?;
    Ok(VersionRun {
        version: c.version,
        cipher_suite: c.cipher_suite,
        alpn: c.alpn().to_vec(),
        handshake,
        transfer,
        bytes,
    })
}

/// Runs the whole selftest on `machine` and prints the report; true if everything held.
pub fn run(machine: Box<dyn Machine>, thumbprint: [u8; 20]) -> bool {
    out!("wsktls selftest — {}", machine.describe());
    let mut ok = true;
    let (server, client) = match (machine.open(), machine.open()) {
        (Ok(a), Ok(b)) => (Driver::new(a), Driver::new(b)),
        (Err(e), _) | (_, Err(e)) => {
            out!("  FAIL open \\\\.\\WskTls: {e}");
            return false;
        }
    };
    match server.version() {
        Ok(v) => out!(
            "  driver {}.{}.{}, wire format {}, KMDF {}.{}",
            v.driver.major,
            v.driver.minor,
            v.driver.patch,
            v.wire_version,
            v.kmdf_major,
            v.kmdf_minor
        ),
        Err(e) => {
            out!("  FAIL GET_VERSION: {e}");
            ok = false;
        }
    }
    for version in [TlsVersion::Tls13, TlsVersion::Tls12] {
        match run_version(&server, &client, thumbprint, version) {
            Ok(r) => {
                let mb = r.bytes as f64 / 1e6;
                out!(
                    "  ok   {}  {}  ALPN {}  handshake {:.1} ms  echo 1 B..1 MiB: {:.1} MB in {:.0} ms ({:.0} MB/s)",
                    version_name(r.version),
                    cipher_name(r.cipher_suite),
                    String::from_utf8_lossy(&r.alpn),
                    r.handshake.as_secs_f64() * 1e3,
                    mb,
                    r.transfer.as_secs_f64() * 1e3,
                    mb / r.transfer.as_secs_f64().max(1e-9)
                );
            }
            Err(e) => {
                out!("  FAIL {}: {e}", version_name(Some(version)));
                ok = false;
            }
        }
    }
    match server.stats() {
        Ok(s) => {
            out!(
                "  stats: {} handshakes ok, {} failed, {} B sent, {} B received, {} open, {} pending",
                s.handshakes_ok,
                s.handshakes_failed,
                s.bytes_sent,
                s.bytes_received,
                s.connections_open + s.listeners_open,
                s.pending_operations
            );
            if s.connections_open + s.listeners_open + s.pending_operations != 0 {
                out!("  FAIL objects left open after closing everything");
                ok = false;
            }
        }
        Err(e) => {
            out!("  FAIL STATS: {e}");
            ok = false;
        }
    }
    drop(server);
    drop(client);
    match machine.finish() {
        Ok(verdict) => out!("  {verdict}"),
        Err(e) => {
            out!("  FAIL {e}");
            ok = false;
        }
    }
    out!("{}", if ok { "PASS" } else { "FAIL" });
    ok
}
