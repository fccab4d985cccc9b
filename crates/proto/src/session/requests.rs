//! Requests: LISTEN, CONNECT, the id-only requests (ACCEPT, SHUTDOWN, CLOSE, PEER_CERTIFICATES),
//! SEND and RECV.

use super::*;

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
    /// Always a full handshake: never resume a session cached from an earlier connection to
    /// the same server (Schannel's SCH_CRED_DISABLE_RECONNECTS). By default a client resumes,
    /// as Schannel does, skipping the certificate exchange.
    pub full_handshake: bool,
}

/// Flag of [`ConnectRequest`]: a client certificate thumbprint follows.
pub(super) const CONNECT_CLIENT_CERTIFICATE: u8 = 1;
/// Flag of [`ConnectRequest`]: keep the server's chain.
pub(super) const CONNECT_KEEP_CERTIFICATES: u8 = 2;
/// Flag of [`ConnectRequest`]: no session resumption.
pub(super) const CONNECT_FULL_HANDSHAKE: u8 = 4;

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
        if self.full_handshake {
            flags |= CONNECT_FULL_HANDSHAKE;
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
        if flags
            & !(CONNECT_CLIENT_CERTIFICATE | CONNECT_KEEP_CERTIFICATES | CONNECT_FULL_HANDSHAKE)
            != 0
        {
            return Err(WireError::InvalidField("flags"));
        }
        let client_certificate = match flags & CONNECT_CLIENT_CERTIFICATE {
            0 if thumbprint == [0; 20] => None,
            0 => return Err(WireError::InvalidField("client certificate")),
            _ => Some(thumbprint),
        };
        let keep_peer_certificates = flags & CONNECT_KEEP_CERTIFICATES != 0;
        let full_handshake = flags & CONNECT_FULL_HANDSHAKE != 0;
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
            full_handshake,
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
