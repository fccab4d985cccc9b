//! Responses: a connection's handshake outcome, an id, a bound listener, the driver's
//! counters.

use super::*;

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
    /// The handshake resumed a cached session (Schannel's SSL_SESSION_RECONNECT): bit 0 of
    /// the flags word, which older drivers left zero.
    pub resumed: bool,
}

/// `ConnectionInfo` flags: the handshake resumed a cached session.
const INFO_RESUMED: u16 = 1;

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
        w.u16(if self.resumed { INFO_RESUMED } else { 0 });
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
        let flags = r.u16().ok_or(e)?;
        let peer: [u8; 32] = r.array().ok_or(e)?;
        let alpn: [u8; 255] = r.array().ok_or(e)?;
        let version = match version_code {
            0 => None,
            c => Some(TlsVersion::from_code(c).ok_or(WireError::InvalidField("version"))?),
        };
        if has_peer > 1 {
            return Err(WireError::InvalidField("has_peer_certificate"));
        }
        if flags & !INFO_RESUMED != 0 {
            return Err(WireError::InvalidField("flags"));
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
            resumed: flags & INFO_RESUMED != 0,
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
