//! The TLS session IOCTLs: LISTEN, ACCEPT, CONNECT, SEND, RECV, SHUTDOWN, CLOSE, STATS.
//!
//! Every request starts with [`MAGIC`] and [`WIRE_VERSION`]; every response with [`MAGIC`] and
//! its byte size. Fixed fields come first, variable ones (names, ALPN, data) last, each with its
//! length in a fixed field. Decoding validates everything the driver will rely on and never
//! panics; a bad request is a precise [`WireError`] (→ NTSTATUS) and changes nothing.
//!
//! `requests` holds what the caller sends, `responses` what the driver answers.

mod requests;
mod responses;

pub use requests::*;
pub use responses::*;

use crate::{
    FILE_DEVICE_WSKTLS, FILE_READ_ACCESS, FILE_WRITE_ACCESS, MAGIC, METHOD_BUFFERED,
    METHOD_IN_DIRECT, METHOD_OUT_DIRECT, Reader, WIRE_VERSION, WireError, Writer, ctl_code,
};

const RW: u32 = FILE_READ_ACCESS | FILE_WRITE_ACCESS;
/// Starts a TLS listener.
pub const IOCTL_WSKTLS_LISTEN: u32 = ctl_code(FILE_DEVICE_WSKTLS, 0x801, METHOD_BUFFERED, RW);
/// Waits for the next handshaken connection of a listener.
pub const IOCTL_WSKTLS_ACCEPT: u32 = ctl_code(FILE_DEVICE_WSKTLS, 0x802, METHOD_BUFFERED, RW);
/// Connects and handshakes as a client.
pub const IOCTL_WSKTLS_CONNECT: u32 = ctl_code(FILE_DEVICE_WSKTLS, 0x803, METHOD_BUFFERED, RW);
/// Sends application data: the payload is the output buffer, read in place (direct I/O).
pub const IOCTL_WSKTLS_SEND: u32 = ctl_code(FILE_DEVICE_WSKTLS, 0x804, METHOD_IN_DIRECT, RW);
/// Receives application data into the output buffer, written in place (direct I/O).
pub const IOCTL_WSKTLS_RECV: u32 = ctl_code(FILE_DEVICE_WSKTLS, 0x805, METHOD_OUT_DIRECT, RW);
/// close_notify, then a graceful disconnect.
pub const IOCTL_WSKTLS_SHUTDOWN: u32 = ctl_code(FILE_DEVICE_WSKTLS, 0x806, METHOD_BUFFERED, RW);
/// Releases a listener or connection (abortively if needed).
pub const IOCTL_WSKTLS_CLOSE: u32 = ctl_code(FILE_DEVICE_WSKTLS, 0x807, METHOD_BUFFERED, RW);
/// The peer's certificate chain kept by a CONNECT that asked for it (input: [`IdRequest`];
/// output: `[u32 length][DER]` per certificate, leaf first).
pub const IOCTL_WSKTLS_PEER_CERTIFICATES: u32 =
    ctl_code(FILE_DEVICE_WSKTLS, 0x809, METHOD_BUFFERED, RW);
/// The driver's counters and limits.
pub const IOCTL_WSKTLS_STATS: u32 =
    ctl_code(FILE_DEVICE_WSKTLS, 0x808, METHOD_BUFFERED, FILE_READ_ACCESS);

/// Most bytes of an ALPN list (wire format: length-prefixed ids).
pub const MAX_ALPN: usize = 255;
/// Most bytes of a host or SNI name.
pub const MAX_NAME: usize = 253;
/// Most bytes one SEND carries.
pub const MAX_SEND: usize = 64 * 1024;
/// Most bytes one RECV may ask for.
pub const MAX_RECV: usize = 1 << 20;

const HEADER: usize = 8;

fn short(needed: usize, got: usize) -> WireError {
    WireError::TooShort { needed, got }
}

/// Reads and checks the request header.
fn request_header(r: &mut Reader<'_>, needed: usize, got: usize) -> Result<(), WireError> {
    let magic = r.u32().ok_or(short(needed, got))?;
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = r.u32().ok_or(short(needed, got))?;
    if version != WIRE_VERSION {
        return Err(WireError::BadSize {
            expected: WIRE_VERSION,
            declared: version,
        });
    }
    Ok(())
}

/// Checks a response header for `size` bytes.
fn response_header(r: &mut Reader<'_>, size: usize, got: usize) -> Result<(), WireError> {
    let magic = r.u32().ok_or(short(size, got))?;
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let declared = r.u32().ok_or(short(size, got))?;
    if declared as usize != size {
        return Err(WireError::BadSize {
            expected: size as u32,
            declared,
        });
    }
    Ok(())
}

/// A TLS protocol version on the wire (its record-layer number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2 (0x0303).
    Tls12,
    /// TLS 1.3 (0x0304).
    Tls13,
}

impl TlsVersion {
    /// The wire number.
    pub const fn code(self) -> u16 {
        match self {
            TlsVersion::Tls12 => 0x0303,
            TlsVersion::Tls13 => 0x0304,
        }
    }

    fn from_code(code: u16) -> Option<TlsVersion> {
        match code {
            0x0303 => Some(TlsVersion::Tls12),
            0x0304 => Some(TlsVersion::Tls13),
            _ => None,
        }
    }
}

/// Which versions a listener or connection accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    pub min: TlsVersion,
    pub max: TlsVersion,
}

impl VersionRange {
    /// TLS 1.2 and 1.3.
    pub const ALL: VersionRange = VersionRange {
        min: TlsVersion::Tls12,
        max: TlsVersion::Tls13,
    };

    fn read(r: &mut Reader<'_>, needed: usize, got: usize) -> Result<VersionRange, WireError> {
        let min = TlsVersion::from_code(r.u16().ok_or(short(needed, got))?)
            .ok_or(WireError::InvalidField("min_version"))?;
        let max = TlsVersion::from_code(r.u16().ok_or(short(needed, got))?)
            .ok_or(WireError::InvalidField("max_version"))?;
        if min > max {
            return Err(WireError::InvalidField("min_version"));
        }
        Ok(VersionRange { min, max })
    }
}

/// An IPv4 or IPv6 endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// IPv6 (else IPv4 in the first 4 bytes of `ip`).
    pub v6: bool,
    pub ip: [u8; 16],
    pub port: u16,
}

impl Endpoint {
    /// 127.0.0.1:`port`.
    pub const fn loopback_v4(port: u16) -> Endpoint {
        Endpoint {
            v6: false,
            ip: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port,
        }
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.u8(if self.v6 { 6 } else { 4 });
        w.u8(0);
        w.u16(self.port);
        w.bytes(&self.ip);
    }

    fn read(r: &mut Reader<'_>, needed: usize, got: usize) -> Result<Endpoint, WireError> {
        let family = r.u8().ok_or(short(needed, got))?;
        let reserved = r.u8().ok_or(short(needed, got))?;
        let port = r.u16().ok_or(short(needed, got))?;
        let ip: [u8; 16] = r.array().ok_or(short(needed, got))?;
        if reserved != 0 {
            return Err(WireError::InvalidField("reserved"));
        }
        let v6 = match family {
            4 => false,
            6 => true,
            _ => return Err(WireError::InvalidField("family")),
        };
        if !v6 && ip[4..].iter().any(|&b| b != 0) {
            return Err(WireError::InvalidField("ip"));
        }
        Ok(Endpoint { v6, ip, port })
    }
}

/// Checks an ALPN list in wire format: non-empty ids, lengths within the list.
pub fn validate_alpn(list: &[u8]) -> Result<(), WireError> {
    let mut rest = list;
    while let Some((&len, tail)) = rest.split_first() {
        if len == 0 || tail.len() < usize::from(len) {
            return Err(WireError::InvalidField("alpn"));
        }
        rest = &tail[usize::from(len)..];
    }
    Ok(())
}

/// Checks a host or SNI name: printable ASCII without spaces (DNS names, IP literals).
fn validate_name(name: &[u8], field: &'static str) -> Result<(), WireError> {
    if name.len() > MAX_NAME || name.iter().any(|&b| !b.is_ascii_graphic()) {
        return Err(WireError::InvalidField(field));
    }
    Ok(())
}
