//! `wsktls serve`: a TLS server in the driver. `--echo` echoes, `--http` answers each request
//! with a small HTTP/1.1 response (for curl, browsers, scanners). One thread per connection on
//! the harness side; the driver does the TLS. Stops after `--max-conns` connections or when
//! interrupted (Ctrl+C or SIGTERM): it stops accepting, closes the open connections gracefully
//! (close_notify and FIN, a few seconds at most), aborts them on a second interrupt, then prints
//! the driver's stats.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::session::*;

use crate::driver::{CallError, Driver, cipher_name, version_name};
use crate::errors::Failure;

/// How many times the user interrupted: once to stop, twice to abort.
#[derive(Default, Debug)]
pub struct Interrupts {
    count: AtomicU32,
}

impl Interrupts {
    /// One more Ctrl+C or SIGTERM.
    pub fn interrupt(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// Asked to stop (gracefully).
    pub fn stopping(&self) -> bool {
        self.count.load(Ordering::Acquire) >= 1
    }

    /// Asked again: abort what is left.
    pub fn aborting(&self) -> bool {
        self.count.load(Ordering::Acquire) >= 2
    }
}

/// How long open connections get to close gracefully after an interrupt.
const GRACE: Duration = Duration::from_secs(5);

/// What the server does with each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Send back every byte.
    Echo,
    /// Answer each HTTP/1.1 request with a small text page.
    Http,
}

/// How to serve.
pub struct ServeOptions {
    pub endpoint: Endpoint,
    pub thumbprint: [u8; 20],
    pub alpn: Vec<u8>,
    pub mode: Mode,
    pub max_conns: Option<u64>,
    /// Ask every client for a certificate and refuse those without a valid one.
    pub require_client_certificate: bool,
    /// Under kemu: the CA client certificates chain to (trusted in the machine's Root store).
    pub client_ca: Option<std::path::PathBuf>,
}

fn handle(driver: &Driver, info: &ConnectionInfo, mode: Mode) -> Result<u64, CallError> {
    let mut bytes = 0u64;
    let mut request = Vec::new();
    loop {
        let data = driver.recv(info.id, 65536, Duration::from_secs(3600))?;
        if data.is_empty() {
            break;
        }
        bytes += data.len() as u64;
        match mode {
            Mode::Echo => driver.send(info.id, &data)?,
            Mode::Http => {
                request.extend_from_slice(&data);
                let mut last = false;
                while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head: Vec<u8> = request.drain(..end + 4).collect();
                    let answer = http_response(&String::from_utf8_lossy(&head), info);
                    driver.send(info.id, answer.response.as_bytes())?;
                    if answer.close {
                        last = true;
                        break;
                    }
                }
                if last {
                    // Connection: close (or HTTP/1.0): this side ends after the response.
                    break;
                }
            }
        }
    }
    // The peer ended its side: close_notify and FIN back, then release.
    let _ = driver.shutdown(info.id);
    driver.close(info.id)?;
    Ok(bytes)
}

/// One HTTP response and whether the connection ends after it.
struct HttpAnswer {
    response: String,
    close: bool,
}

/// The answer to one request head: a small text page (no body for HEAD); the connection closes
/// after it for HTTP/1.0 (unless keep-alive was asked) and for `Connection: close`.
fn http_response(head: &str, info: &ConnectionInfo) -> HttpAnswer {
    let mut lines = head.lines();
    let line = lines.next().unwrap_or_default().to_string();
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let version = parts.nth(1).unwrap_or("HTTP/1.1");
    let connection = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("connection"))
        .map(|(_, value)| value.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let http10 = version.eq_ignore_ascii_case("HTTP/1.0");
    let close = connection.split(',').any(|t| t.trim() == "close")
        || (http10 && !connection.split(',').any(|t| t.trim() == "keep-alive"));
    let body = format!(
        "wsktls: TLS in the Windows kernel\nrequest: {line}\nprotocol: {}\ncipher: {}\n",
        version_name(info.version),
        cipher_name(info.cipher_suite)
    );
    let status_version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let connection_header = match (close, http10) {
        (true, _) => "Connection: close\r\n",
        (false, true) => "Connection: keep-alive\r\n",
        (false, false) => "",
    };
    let mut response = format!(
        "{status_version} 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{connection_header}\r\n",
        body.len()
    );
    if !method.eq_ignore_ascii_case("HEAD") {
        response.push_str(&body);
    }
    HttpAnswer { response, close }
}

/// Runs the server until interrupted or `max_conns` connections were served.
pub fn run(driver: Arc<Driver>, options: &ServeOptions, stop: &Interrupts) -> Result<(), Failure> {
    let listener = driver
        .listen(&ListenRequest {
            endpoint: options.endpoint,
            thumbprint: options.thumbprint,
            versions: VersionRange::ALL,
            require_client_certificate: options.require_client_certificate,
            alpn: &options.alpn,
        })
        .map_err(|e| e.failure("LISTEN"))?;
    let ip = if options.endpoint.v6 {
        format!("[{}]", std::net::Ipv6Addr::from(options.endpoint.ip))
    } else {
        let [a, b, c, d, ..] = options.endpoint.ip;
        format!("{a}.{b}.{c}.{d}")
    };
    // The first stdout line is machine-readable for scripts and tests.
    out!("listening on {ip}:{}", listener.port);
    let mut served = 0u64;
    let mut workers = Vec::new();
    // Connections still being served (their handler thread removes them).
    let open: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    while !stop.stopping() && options.max_conns.is_none_or(|m| served < m) {
        let accept = driver
            .accept(listener.id)
            .map_err(|e| e.failure("ACCEPT"))?;
        // Wake up now and then to notice an interrupt.
        let info = loop {
            match accept.poll(Duration::from_millis(200)) {
                Ok(Some(info)) => break Some(info),
                Ok(None) if stop.stopping() => {
                    accept.cancel();
                    break None;
                }
                Ok(None) => continue,
                Err(e) => {
                    eprintln!("wsktls serve: {e}");
                    break None;
                }
            }
        };
        let Some(info) = info else {
            continue;
        };
        served += 1;
        eprintln!(
            "connection {}: {} {} ALPN {}{}",
            info.id,
            version_name(info.version),
            cipher_name(info.cipher_suite),
            String::from_utf8_lossy(info.alpn()),
            if info.resumed { " (resumed)" } else { "" }
        );
        open.lock().unwrap().insert(info.id);
        let d = driver.clone();
        let mode = options.mode;
        let mine = open.clone();
        workers.push(std::thread::spawn(move || {
            match handle(&d, &info, mode) {
                Ok(bytes) => eprintln!("connection {}: closed after {bytes} bytes", info.id),
                Err(e) => {
                    eprintln!("connection {}: {e}", info.id);
                    let _ = d.close(info.id);
                }
            }
            mine.lock().unwrap().remove(&info.id);
        }));
    }
    // Stop accepting first.
    driver.close(listener.id).map_err(|e| e.failure("CLOSE"))?;
    if stop.stopping() {
        wind_down(&driver, &open, stop);
    }
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// After an interrupt: every open connection gets close_notify and FIN (its client then ends
/// its side and the handler finishes), for [`GRACE`] at most; what is left then, or at a second
/// interrupt, is closed abortively (its waiting RECV completes cancelled).
fn wind_down(driver: &Driver, open: &Mutex<BTreeSet<u64>>, stop: &Interrupts) {
    let ids: Vec<u64> = open.lock().unwrap().iter().copied().collect();
    if ids.is_empty() {
        return;
    }
    eprintln!(
        "wsktls serve: stopping; closing {} open connection(s) gracefully (Ctrl+C again to abort)",
        ids.len()
    );
    // A connection already ending refuses it: its handler is closing it anyway. The requests
    // are kept until the end (on Windows dropping one waits for it).
    let shutdowns: Vec<_> = ids
        .iter()
        .filter_map(|&id| driver.shutdown_async(id).ok())
        .collect();
    let started = Instant::now();
    while !open.lock().unwrap().is_empty() && started.elapsed() < GRACE && !stop.aborting() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u64> = open.lock().unwrap().iter().copied().collect();
    if !left.is_empty() {
        eprintln!(
            "wsktls serve: aborting {} connection(s) that did not close in time",
            left.len()
        );
        for id in left {
            let _ = driver.close(id);
        }
    }
    drop(shutdowns);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            status: 0,
            sspi_status: 0,
            id: 1,
            version: Some(TlsVersion::Tls13),
            cipher_suite: 0x1302,
            peer_certificate: None,
            alpn_len: 0,
            alpn: [0; 255],
            resumed: false,
        }
    }

    #[test]
    fn http_answers_follow_the_request_version_method_and_connection_header() {
        let get = http_response("GET / HTTP/1.1\r\nHost: x\r\n\r\n", &info());
        assert!(!get.close);
        assert!(get.response.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(get.response.contains("request: GET / HTTP/1.1"));

        let head = http_response("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", &info());
        assert!(!head.close);
        let (headers, body) = head.response.split_once("\r\n\r\n").unwrap();
        assert!(headers.contains("Content-Length: "), "{headers}");
        assert_eq!(body, "", "HEAD has no body");

        let closing = http_response("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n", &info());
        assert!(closing.close);
        assert!(closing.response.contains("Connection: close\r\n"));

        let old = http_response("GET / HTTP/1.0\r\n\r\n", &info());
        assert!(old.close, "HTTP/1.0 closes by default");
        assert!(old.response.starts_with("HTTP/1.0 200 OK\r\n"));

        let kept = http_response("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &info());
        assert!(!kept.close);
        assert!(kept.response.contains("Connection: keep-alive\r\n"));
    }
}
