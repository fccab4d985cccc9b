//! Parsing the command line's values into wire structures, with errors that say what is wrong.

use std::net::IpAddr;
use std::path::PathBuf;

use proto::session::*;

use crate::connect::ConnectOptions;

/// Which server certificate `serve` uses.
pub enum Certificate {
    /// PEM chain and key, imported into kemu's store.
    Pem(PathBuf, PathBuf),
    /// A certificate already in the machine store.
    Thumbprint([u8; 20]),
}

fn hex_bytes<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let clean: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    if clean.len() != 2 * N || !clean.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{what}: expected {N} bytes of hex, got {text:?}"));
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&clean[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// A SHA-1 thumbprint in hex (spaces and colons allowed).
pub fn thumbprint(text: &str) -> Result<[u8; 20], String> {
    hex_bytes(text, "thumbprint")
}

/// "h2,http/1.1" → the ALPN wire list.
pub fn alpn(list: &str) -> Result<Vec<u8>, String> {
    let mut wire = Vec::new();
    for id in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if id.len() > 255 {
            return Err(format!("ALPN id {id:?} is longer than 255 bytes"));
        }
        wire.push(id.len() as u8);
        wire.extend_from_slice(id.as_bytes());
    }
    if wire.len() > MAX_ALPN {
        return Err(format!(
            "ALPN list is {} bytes, at most {MAX_ALPN}",
            wire.len()
        ));
    }
    Ok(wire)
}

/// An address and port as the wire carries them.
pub fn endpoint(addr: IpAddr, port: u16) -> Endpoint {
    let mut ip = [0u8; 16];
    let v6 = match addr {
        IpAddr::V4(a) => {
            ip[..4].copy_from_slice(&a.octets());
            false
        }
        IpAddr::V6(a) => {
            ip = a.octets();
            true
        }
    };
    Endpoint { v6, ip, port }
}

/// `connect`'s arguments → what CONNECT needs.
pub fn connect_options(
    target: &str,
    sni: Option<String>,
    alpn_list: &str,
    pin: Option<&str>,
    insecure: bool,
    tls12: bool,
    tls13: bool,
) -> Result<ConnectOptions, String> {
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| format!("{target:?}: expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{target:?}: bad port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let (endpoint, name) = match host.parse::<IpAddr>() {
        Ok(ip) => (endpoint(ip, port), Vec::new()),
        Err(_) => {
            // The driver resolves the name: an unspecified address carries only the port.
            let mut e = endpoint(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port);
            e.ip = [0; 16];
            (e, host.as_bytes().to_vec())
        }
    };
    let sni = match sni {
        Some(s) => s.into_bytes(),
        None => name.clone(),
    };
    let validation = match (pin, insecure) {
        (Some(p), false) => Validation::Pinned(hex_bytes(p, "--pin")?),
        (None, true) => Validation::Insecure,
        (None, false) => Validation::SystemRoots,
        (Some(_), true) => return Err("--pin and --insecure exclude each other".into()),
    };
    let versions = match (tls12, tls13) {
        (true, false) => VersionRange {
            min: TlsVersion::Tls12,
            max: TlsVersion::Tls12,
        },
        (false, true) => VersionRange {
            min: TlsVersion::Tls13,
            max: TlsVersion::Tls13,
        },
        _ => VersionRange::ALL,
    };
    Ok(ConnectOptions {
        endpoint,
        host: name,
        sni,
        alpn: alpn(alpn_list)?,
        versions,
        validation,
        ignore_eof: false,
        client_certificate: None,
        show_certificates: false,
    })
}
