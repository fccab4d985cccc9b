//! `wsktls connect`: a TLS client in the driver, like `openssl s_client`: stdin goes out, what
//! arrives goes to stdout, the end of stdin shuts the connection down (unless `--ign-eof`), and
//! the server ending the stream ends the command (exit 0), whether stdin is still open or not.
//! The negotiated parameters go to stderr.

use std::io::{Read, Write};
use std::sync::{Arc, Weak};
use std::time::Duration;

use proto::session::*;

use crate::driver::{CALL_TIMEOUT, Driver, cipher_name, version_name};
use crate::errors::Failure;

/// Where and how to connect.
pub struct ConnectOptions {
    pub endpoint: Endpoint,
    pub host: Vec<u8>,
    pub sni: Vec<u8>,
    pub alpn: Vec<u8>,
    pub versions: VersionRange,
    pub validation: Validation,
    /// Keep reading after stdin ends (no SHUTDOWN then): the server decides when it is over.
    pub ignore_eof: bool,
    /// Thumbprint of the client certificate to present (in LocalMachine\My), if any.
    pub client_certificate: Option<[u8; 20]>,
    /// Print the server's chain (subject, issuer, validity, SHA-256 of each certificate).
    pub show_certificates: bool,
}

/// One line per certificate of a chain, leaf first: subject, issuer, validity, SHA-256.
pub fn describe_chain(chain: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for (i, der) in chain.iter().enumerate() {
        let digest = hex(&sha256(der));
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => {
                let validity = cert.validity();
                out += &format!(
                    "certificate {i}: subject {}\n  issuer {}\n  valid {} to {}\n  SHA-256 {digest}\n",
                    cert.subject(),
                    cert.issuer(),
                    validity.not_before,
                    validity.not_after,
                );
            }
            Err(e) => out += &format!("certificate {i}: not parsed ({e}); SHA-256 {digest}\n"),
        }
    }
    out
}

/// SHA-256 (the digest `--pin` takes).
fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Connects, then pumps stdin → connection → stdout until both directions ended.
pub fn run(driver: Arc<Driver>, options: &ConnectOptions) -> Result<(), Failure> {
    let info = driver
        .connect(&ConnectRequest {
            endpoint: options.endpoint,
            host: &options.host,
            sni: &options.sni,
            alpn: &options.alpn,
            versions: options.versions,
            validation: options.validation,
            client_certificate: options.client_certificate,
            keep_peer_certificates: options.show_certificates,
            full_handshake: false,
        })
        .and_then(|p| p.wait(CALL_TIMEOUT))
        .map_err(|e| e.failure("CONNECT"))?;
    eprintln!(
        "connected: {} {} ALPN {} server certificate SHA-256 {}{}",
        version_name(info.version),
        cipher_name(info.cipher_suite),
        String::from_utf8_lossy(info.alpn()),
        info.peer_certificate.map_or("-".to_string(), |d| hex(&d)),
        if info.resumed {
            " (resumed session)"
        } else {
            ""
        }
    );
    let id = info.id;
    if options.show_certificates {
        let chain = driver
            .peer_certificates(id)
            .map_err(|e| e.failure("PEER_CERTIFICATES"))?;
        eprint!("{}", describe_chain(&chain));
    }
    let ignore_eof = options.ignore_eof;
    let sender = {
        // Weak: a sender still blocked on stdin when the server has ended must not keep the
        // driver handle open.
        let driver: Weak<Driver> = Arc::downgrade(&driver);
        std::thread::spawn(move || -> Result<(), Failure> {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; MAX_SEND];
            loop {
                let n = stdin
                    .read(&mut buf)
                    .map_err(|e| Failure::usage(format!("stdin: {e}")))?;
                if n == 0 {
                    break;
                }
                let Some(driver) = driver.upgrade() else {
                    return Ok(());
                };
                driver.send(id, &buf[..n]).map_err(|e| e.failure("SEND"))?;
            }
            if ignore_eof {
                return Ok(());
            }
            match driver.upgrade() {
                Some(driver) => driver.shutdown(id).map_err(|e| e.failure("SHUTDOWN")),
                None => Ok(()),
            }
        })
    };
    let mut stdout = std::io::stdout().lock();
    let received = loop {
        match driver.recv(id, 65536, Duration::from_secs(24 * 3600)) {
            Ok(data) if data.is_empty() => break Ok(()),
            Ok(data) => {
                if stdout
                    .write_all(&data)
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    break Ok(());
                }
            }
            Err(e) => break Err(e.failure("RECV")),
        }
    };
    // The stream is over. If our side is still open (stdin not ended, or --ign-eof), end it
    // gracefully too — close_notify and FIN rather than a reset; a SHUTDOWN the sender already
    // made succeeds again.
    if received.is_ok() {
        let _ = driver.shutdown(id);
    }
    if sender.is_finished() {
        if let Ok(Err(e)) = sender.join() {
            eprintln!("wsktls connect: {e}");
        }
    }
    driver.close(id).map_err(|e| e.failure("CLOSE"))?;
    received
}
