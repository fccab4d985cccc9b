//! The TLS session IOCTLs: LISTEN, ACCEPT, CONNECT, SEND, RECV, SHUTDOWN, CLOSE, STATS.
//!
//! Every request starts with [`MAGIC`] and [`WIRE_VERSION`]; every response with [`MAGIC`] and
//! its byte size. Fixed fields come first, variable ones (names, ALPN, data) last, each with its
//! length in a fixed field. Decoding validates everything the driver will rely on and never
//! panics; a bad request is a precise [`WireError`] (→ NTSTATUS) and changes nothing.
//!
//! The driver side of this contract is not implemented yet: until it is, the driver completes
//! these codes with STATUS_INVALID_DEVICE_REQUEST.

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

/// LISTEN: where, with which certificate, which ALPN ids and versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenRequest<'a> {
    pub endpoint: Endpoint,
    /// SHA-1 thumbprint of a certificate with its key in the machine store "MY".
    pub thumbprint: [u8; 20],
    pub versions: VersionRange,
    pub require_client_certificate: bool,
    /// ALPN ids the server accepts, wire format (empty: no ALPN).
    pub alpn: &'a [u8],
}

impl<'a> ListenRequest<'a> {
    /// Fixed part: header, endpoint, thumbprint, store, flags, versions, ALPN length.
    pub const FIXED: usize = HEADER + 20 + 20 + 1 + 1 + 4 + 1;

    /// Encodes into `out` (at least `FIXED + alpn.len()` bytes); returns the length.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let len = Self::FIXED + self.alpn.len();
        if out.len() < len || self.alpn.len() > MAX_ALPN {
            return None;
        }
        let mut w = Writer::new(out);
        w.u32(MAGIC);
        w.u32(WIRE_VERSION);
        self.endpoint.write(&mut w);
        w.bytes(&self.thumbprint);
        w.u8(0);
        w.u8(u8::from(self.require_client_certificate));
        w.u16(self.versions.min.code());
        w.u16(self.versions.max.code());
        w.u8(self.alpn.len() as u8);
        w.bytes(self.alpn);
        Some(w.written())
    }

    /// Decodes and validates a LISTEN request.
    pub fn decode(bytes: &'a [u8]) -> Result<ListenRequest<'a>, WireError> {
        let got = bytes.len();
        let mut r = Reader::new(bytes);
        request_header(&mut r, Self::FIXED, got)?;
        let endpoint = Endpoint::read(&mut r, Self::FIXED, got)?;
        let thumbprint: [u8; 20] = r.array().ok_or(short(Self::FIXED, got))?;
        let store = r.u8().ok_or(short(Self::FIXED, got))?;
        let flags = r.u8().ok_or(short(Self::FIXED, got))?;
        let versions = VersionRange::read(&mut r, Self::FIXED, got)?;
        let alpn_len = usize::from(r.u8().ok_or(short(Self::FIXED, got))?);
        if store != 0 {
            return Err(WireError::InvalidField("store"));
        }
        if flags & !1 != 0 {
            return Err(WireError::InvalidField("flags"));
        }
        if thumbprint == [0; 20] {
            return Err(WireError::InvalidField("thumbprint"));
        }
        let alpn = r
            .bytes(alpn_len)
            .ok_or(short(Self::FIXED + alpn_len, got))?;
        if r.remaining() != 0 {
            return Err(WireError::TooLong {
                allowed: Self::FIXED + alpn_len,
                got,
            });
        }
        validate_alpn(alpn)?;
        Ok(ListenRequest {
            endpoint,
            thumbprint,
            versions,
            require_client_certificate: flags & 1 != 0,
            alpn,
        })
    }
}

/// How a client checks the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Chain to the machine's trusted roots, name checked against the SNI / host name.
    SystemRoots,
    /// Only a server certificate whose SHA-256 is this.
    Pinned([u8; 32]),
    /// No check at all; the request must say so explicitly.
    Insecure,
}

/// CONNECT: where, which names, ALPN, versions and validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest<'a> {
    /// The server; an unspecified address (all zero) means "resolve `host`".
    pub endpoint: Endpoint,
    pub host: &'a [u8],
    /// Server name for SNI and the name check (empty: the host name).
    pub sni: &'a [u8],
    pub alpn: &'a [u8],
    pub versions: VersionRange,
    pub validation: Validation,
    /// A client certificate to present if the server asks for one: the SHA-1 thumbprint of a
    /// certificate (with its private key) in LocalMachine\My.
    pub client_certificate: Option<[u8; 20]>,
    /// Keep the server's certificate chain for [`IOCTL_WSKTLS_PEER_CERTIFICATES`].
    pub keep_peer_certificates: bool,
}

/// Flag of [`ConnectRequest`]: a client certificate thumbprint follows.
const CONNECT_CLIENT_CERTIFICATE: u8 = 1;
/// Flag of [`ConnectRequest`]: keep the server's chain.
const CONNECT_KEEP_CERTIFICATES: u8 = 2;

impl<'a> ConnectRequest<'a> {
    /// Fixed part: header, endpoint, versions, validation, pin, three lengths, flags, client
    /// certificate thumbprint.
    pub const FIXED: usize = HEADER + 20 + 4 + 1 + 32 + 3 + 1 + 20;

    /// Encodes into `out`; returns the length.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let len = Self::FIXED + self.host.len() + self.sni.len() + self.alpn.len();
        if out.len() < len
            || self.host.len() > MAX_NAME
            || self.sni.len() > MAX_NAME
            || self.alpn.len() > MAX_ALPN
        {
            return None;
        }
        let (mode, pin) = match self.validation {
            Validation::SystemRoots => (0u8, [0u8; 32]),
            Validation::Pinned(p) => (1, p),
            Validation::Insecure => (2, [0; 32]),
        };
        let mut w = Writer::new(out);
        w.u32(MAGIC);
        w.u32(WIRE_VERSION);
        self.endpoint.write(&mut w);
        w.u16(self.versions.min.code());
        w.u16(self.versions.max.code());
        w.u8(mode);
        w.bytes(&pin);
        w.u8(self.host.len() as u8);
        w.u8(self.sni.len() as u8);
        w.u8(self.alpn.len() as u8);
        let mut flags = 0;
        if self.client_certificate.is_some() {
            flags |= CONNECT_CLIENT_CERTIFICATE;
        }
        if self.keep_peer_certificates {
            flags |= CONNECT_KEEP_CERTIFICATES;
        }
        w.u8(flags);
        w.bytes(&self.client_certificate.unwrap_or([0; 20]));
        w.bytes(self.host);
        w.bytes(self.sni);
        w.bytes(self.alpn);
        Some(w.written())
    }

    /// Decodes and validates a CONNECT request.
    pub fn decode(bytes: &'a [u8]) -> Result<ConnectRequest<'a>, WireError> {
        let got = bytes.len();
        let mut r = Reader::new(bytes);
        request_header(&mut r, Self::FIXED, got)?;
        let endpoint = Endpoint::read(&mut r, Self::FIXED, got)?;
        let versions = VersionRange::read(&mut r, Self::FIXED, got)?;
        let mode = r.u8().ok_or(short(Self::FIXED, got))?;
        let pin: [u8; 32] = r.array().ok_or(short(Self::FIXED, got))?;
        let host_len = usize::from(r.u8().ok_or(short(Self::FIXED, got))?);
        let sni_len = usize::from(r.u8().ok_or(short(Self::FIXED, got))?);
        let alpn_len = usize::from(r.u8().ok_or(short(Self::FIXED, got))?);
        let flags = r.u8().ok_or(short(Self::FIXED, got))?;
        let thumbprint: [u8; 20] = r.array().ok_or(short(Self::FIXED, got))?;
        if flags & !(CONNECT_CLIENT_CERTIFICATE | CONNECT_KEEP_CERTIFICATES) != 0 {
            return Err(WireError::InvalidField("flags"));
        }
        let client_certificate = match flags & CONNECT_CLIENT_CERTIFICATE {
            0 if thumbprint == [0; 20] => None,
            0 => return Err(WireError::InvalidField("client certificate")),
            _ => Some(thumbprint),
        };
        let keep_peer_certificates = flags & CONNECT_KEEP_CERTIFICATES != 0;
        let total = Self::FIXED + host_len + sni_len + alpn_len;
        let host = r.bytes(host_len).ok_or(short(total, got))?;
        let sni = r.bytes(sni_len).ok_or(short(total, got))?;
        let alpn = r.bytes(alpn_len).ok_or(short(total, got))?;
        if r.remaining() != 0 {
            return Err(WireError::TooLong {
                allowed: total,
                got,
            });
        }
        let validation = match mode {
            0 => Validation::SystemRoots,
            1 if pin != [0; 32] => Validation::Pinned(pin),
            2 => Validation::Insecure,
            _ => return Err(WireError::InvalidField("validation")),
        };
        if !matches!(validation, Validation::Pinned(_)) && pin != [0; 32] {
            return Err(WireError::InvalidField("pin"));
        }
        if endpoint.port == 0 {
            return Err(WireError::InvalidField("port"));
        }
        validate_name(host, "host")?;
        validate_name(sni, "sni")?;
        if host.is_empty() && endpoint.ip == [0; 16] {
            return Err(WireError::InvalidField("host"));
        }
        validate_alpn(alpn)?;
        Ok(ConnectRequest {
            endpoint,
            host,
            sni,
            alpn,
            versions,
            validation,
            client_certificate,
            keep_peer_certificates,
        })
    }
}

/// ACCEPT, SHUTDOWN and CLOSE: one listener or connection id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRequest {
    pub id: u64,
}

impl IdRequest {
    /// Size on the wire.
    pub const SIZE: usize = HEADER + 8;

    /// Encodes the request.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        let mut w = Writer::new(&mut out);
        w.u32(MAGIC);
        w.u32(WIRE_VERSION);
        w.u64(self.id);
        out
    }

    /// Decodes and validates (id 0 is never issued).
    pub fn decode(bytes: &[u8]) -> Result<IdRequest, WireError> {
        let got = bytes.len();
        if got > Self::SIZE {
            return Err(WireError::TooLong {
                allowed: Self::SIZE,
                got,
            });
        }
        let mut r = Reader::new(bytes);
        request_header(&mut r, Self::SIZE, got)?;
        let id = r.u64().ok_or(short(Self::SIZE, got))?;
        if id == 0 {
            return Err(WireError::InvalidField("id"));
        }
        Ok(IdRequest { id })
    }
}

/// SEND (METHOD_IN_DIRECT): the input is this header, and the payload — 1 to [`MAX_SEND`]
/// bytes — is the caller's output buffer, which the driver reads in place through its MDL (no
/// copy into a system buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendRequest {
    pub id: u64,
}

impl SendRequest {
    /// Size of the header on the wire.
    pub const SIZE: usize = HEADER + 8;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        IdRequest { id: self.id }.encode()
    }

    /// Decodes and validates the header.
    pub fn decode(bytes: &[u8]) -> Result<SendRequest, WireError> {
        IdRequest::decode(bytes).map(|r| SendRequest { id: r.id })
    }

    /// Validates the payload's length (the caller's output buffer).
    pub fn check_payload(len: usize) -> Result<(), WireError> {
        match len {
            0 => Err(WireError::InvalidField("payload")),
            n if n > MAX_SEND => Err(WireError::TooLong {
                allowed: MAX_SEND,
                got: n,
            }),
            _ => Ok(()),
        }
    }
}

/// RECV: an id and how many bytes at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvRequest {
    pub id: u64,
    pub max: u32,
}

impl RecvRequest {
    /// Size on the wire.
    pub const SIZE: usize = HEADER + 8 + 4;

    /// Encodes the request.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        let mut w = Writer::new(&mut out);
        w.u32(MAGIC);
        w.u32(WIRE_VERSION);
        w.u64(self.id);
        w.u32(self.max);
        out
    }

    /// Decodes and validates (1..=MAX_RECV).
    pub fn decode(bytes: &[u8]) -> Result<RecvRequest, WireError> {
        let got = bytes.len();
        if got > Self::SIZE {
            return Err(WireError::TooLong {
                allowed: Self::SIZE,
                got,
            });
        }
        let mut r = Reader::new(bytes);
        request_header(&mut r, Self::SIZE, got)?;
        let id = r.u64().ok_or(short(Self::SIZE, got))?;
        let max = r.u32().ok_or(short(Self::SIZE, got))?;
        if id == 0 {
            return Err(WireError::InvalidField("id"));
        }
        if max == 0 || max as usize > MAX_RECV {
            return Err(WireError::InvalidField("max"));
        }
        Ok(RecvRequest { id, max })
    }
}

/// What a handshake produced (ACCEPT and CONNECT responses): the connection, or a failure with
/// both the NTSTATUS and the SECURITY_STATUS behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// STATUS_SUCCESS, or why the connection failed.
    pub status: i32,
    /// SEC_E_OK, or Schannel's verdict.
    pub sspi_status: i32,
    pub id: u64,
    pub version: Option<TlsVersion>,
    /// IANA cipher suite number.
    pub cipher_suite: u16,
    /// SHA-256 of the peer's certificate, if it presented one.
    pub peer_certificate: Option<[u8; 32]>,
    pub alpn_len: u8,
    pub alpn: [u8; 255],
}

impl ConnectionInfo {
    /// Size on the wire.
    pub const SIZE: usize = HEADER + 4 + 4 + 8 + 2 + 2 + 1 + 1 + 2 + 32 + 255 + 1;

    /// The negotiated ALPN id (empty if none).
    pub fn alpn(&self) -> &[u8] {
        &self.alpn[..usize::from(self.alpn_len)]
    }

    /// Encodes the response.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        let mut w = Writer::new(&mut out);
        w.u32(MAGIC);
        w.u32(Self::SIZE as u32);
        w.u32(self.status as u32);
        w.u32(self.sspi_status as u32);
        w.u64(self.id);
        w.u16(self.version.map_or(0, TlsVersion::code));
        w.u16(self.cipher_suite);
        w.u8(u8::from(self.peer_certificate.is_some()));
        w.u8(self.alpn_len);
        w.u16(0);
        w.bytes(&self.peer_certificate.unwrap_or([0; 32]));
        w.bytes(&self.alpn);
        w.u8(0);
        out
    }

    /// Decodes and validates a response.
    pub fn decode(bytes: &[u8]) -> Result<ConnectionInfo, WireError> {
        let got = bytes.len();
        if got != Self::SIZE {
            return Err(if got < Self::SIZE {
                short(Self::SIZE, got)
            } else {
                WireError::TooLong {
                    allowed: Self::SIZE,
                    got,
                }
            });
        }
        let mut r = Reader::new(bytes);
        response_header(&mut r, Self::SIZE, got)?;
        let e = short(Self::SIZE, got);
        let status = r.u32().ok_or(e)? as i32;
        let sspi_status = r.u32().ok_or(e)? as i32;
        let id = r.u64().ok_or(e)?;
        let version_code = r.u16().ok_or(e)?;
        let cipher_suite = r.u16().ok_or(e)?;
        let has_peer = r.u8().ok_or(e)?;
        let alpn_len = r.u8().ok_or(e)?;
        let _reserved = r.u16().ok_or(e)?;
        let peer: [u8; 32] = r.array().ok_or(e)?;
        let alpn: [u8; 255] = r.array().ok_or(e)?;
        let version = match version_code {
            0 => None,
            c => Some(TlsVersion::from_code(c).ok_or(WireError::InvalidField("version"))?),
        };
        if has_peer > 1 {
            return Err(WireError::InvalidField("has_peer_certificate"));
        }
        if status == 0 && (id == 0 || version.is_none()) {
            return Err(WireError::InvalidField("id"));
        }
        Ok(ConnectionInfo {
            status,
            sspi_status,
            id,
            version,
            cipher_suite,
            peer_certificate: (has_peer == 1).then_some(peer),
            alpn_len,
            alpn,
        })
    }
}

/// A response carrying one object id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdResponse {
    pub id: u64,
}

impl IdResponse {
    /// Size on the wire.
    pub const SIZE: usize = HEADER + 8;

    /// Encodes the response.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        let mut w = Writer::new(&mut out);
        w.u32(MAGIC);
        w.u32(Self::SIZE as u32);
        w.u64(self.id);
        out
    }

    /// Decodes and validates.
    pub fn decode(bytes: &[u8]) -> Result<IdResponse, WireError> {
        let got = bytes.len();
        if got > Self::SIZE {
            return Err(WireError::TooLong {
                allowed: Self::SIZE,
                got,
            });
        }
        let mut r = Reader::new(bytes);
        response_header(&mut r, Self::SIZE, got)?;
        let id = r.u64().ok_or(short(Self::SIZE, got))?;
        if id == 0 {
            return Err(WireError::InvalidField("id"));
        }
        Ok(IdResponse { id })
    }
}

/// LISTEN's response: the listener id and the port it bound (useful when the request asked
/// for port 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenResponse {
    pub id: u64,
    /// Host byte order.
    pub port: u16,
}

impl ListenResponse {
    /// Size on the wire (id, port, 6 reserved zero bytes).
    pub const SIZE: usize = HEADER + 16;

    /// Encodes the response.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        let mut w = Writer::new(&mut out);
        w.u32(MAGIC);
        w.u32(Self::SIZE as u32);
        w.u64(self.id);
        w.u16(self.port);
        out
    }

    /// Decodes and validates.
    pub fn decode(bytes: &[u8]) -> Result<ListenResponse, WireError> {
        let got = bytes.len();
        if got > Self::SIZE {
            return Err(WireError::TooLong {
                allowed: Self::SIZE,
                got,
            });
        }
        let mut r = Reader::new(bytes);
        response_header(&mut r, Self::SIZE, got)?;
        let id = r.u64().ok_or(short(Self::SIZE, got))?;
        let port = r.u16().ok_or(short(Self::SIZE, got))?;
        let reserved: [u8; 6] = r.array().ok_or(short(Self::SIZE, got))?;
        if id == 0 || port == 0 {
            return Err(WireError::InvalidField(if id == 0 { "id" } else { "port" }));
        }
        if reserved != [0; 6] {
            return Err(WireError::InvalidField("reserved"));
        }
        Ok(ListenResponse { id, port })
    }
}

/// STATS: the driver's counters and limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections_open: u64,
    pub listeners_open: u64,
    pub handshakes_ok: u64,
    pub handshakes_failed: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub pending_operations: u64,
    pub pool_bytes: u64,
    pub max_connections: u64,
    pub max_connections_per_handle: u64,
    pub max_queued_bytes: u64,
    pub handshake_timeout_ms: u64,
    /// Parked requests the driver has looked at again after a change (wire version 2): grows
    /// with a connection's own traffic, never with how many other connections wait.
    pub requests_examined: u64,
}

impl Stats {
    const FIELDS: usize = 13;
    /// Size on the wire.
    pub const SIZE: usize = HEADER + 8 * Self::FIELDS;

    fn fields(&self) -> [u64; Self::FIELDS] {
        [
            self.connections_open,
            self.listeners_open,
            self.handshakes_ok,
            self.handshakes_failed,
            self.bytes_sent,
            self.bytes_received,
            self.pending_operations,
            self.pool_bytes,
            self.max_connections,
            self.max_connections_per_handle,
            self.max_queued_bytes,
            self.handshake_timeout_ms,
            self.requests_examined,
        ]
    }

    /// Encodes the response.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        let mut w = Writer::new(&mut out);
        w.u32(MAGIC);
        w.u32(Self::SIZE as u32);
        for f in self.fields() {
            w.u64(f);
        }
        out
    }

    /// Decodes a response.
    pub fn decode(bytes: &[u8]) -> Result<Stats, WireError> {
        let got = bytes.len();
        if got > Self::SIZE {
            return Err(WireError::TooLong {
                allowed: Self::SIZE,
                got,
            });
        }
        let mut r = Reader::new(bytes);
        response_header(&mut r, Self::SIZE, got)?;
        let mut f = [0u64; Self::FIELDS];
        for v in f.iter_mut() {
            *v = r.u64().ok_or(short(Self::SIZE, got))?;
        }
        Ok(Stats {
            connections_open: f[0],
            listeners_open: f[1],
            handshakes_ok: f[2],
            handshakes_failed: f[3],
            bytes_sent: f[4],
            bytes_received: f[5],
            pending_operations: f[6],
            pool_bytes: f[7],
            max_connections: f[8],
            max_connections_per_handle: f[9],
            max_queued_bytes: f[10],
            handshake_timeout_ms: f[11],
            requests_examined: f[12],
        })
    }
}
