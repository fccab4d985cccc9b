//! The driver's IOCTLs as typed calls over a [`Device`], with errors that name the NTSTATUS.

use std::time::Duration;

use proto::session::*;
use proto::{GetVersionResponse, IOCTL_WSKTLS_GET_VERSION};

use crate::device::{Device, DeviceError, Pending};
use crate::errors::{self, Failure, Kind};

/// Longest a call the harness expects to finish promptly may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A driver call that failed, with the NTSTATUS (and SECURITY_STATUS for handshakes).
#[derive(Debug)]
pub enum CallError {
    /// The device layer failed.
    Device(DeviceError),
    /// The request completed with this NTSTATUS.
    Status { what: &'static str, status: i32 },
    /// A handshake failed. The driver keeps the failed connection's id (`connection`) until
    /// it is CLOSEd or its handle closes.
    Handshake {
        status: i32,
        sspi: i32,
        connection: u64,
    },
    /// The response did not decode.
    Wire(proto::WireError),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Device(e) => write!(f, "device: {e}"),
            // LISTEN names its certificate by thumbprint: "not found" is about that, not a host.
            CallError::Status { what, status }
                if *what == "LISTEN" && *status as u32 == errors::NOT_FOUND =>
            {
                write!(
                    f,
                    "{what} failed: no certificate with that thumbprint (and a private key) in \
                     LocalMachine\\My (STATUS_NOT_FOUND, {:#010X})",
                    *status as u32
                )
            }
            // LISTEN's bind refused: a privileged or reserved port, not the caller's rights.
            CallError::Status { what, status }
                if *what == "LISTEN" && *status as u32 == errors::ACCESS_DENIED =>
            {
                write!(
                    f,
                    "{what} failed: the address cannot be bound here (STATUS_ACCESS_DENIED, {:#010X}): \
                     under kemu on Linux ports below 1024 need root or CAP_NET_BIND_SERVICE; on \
                     Windows the port may be reserved (netsh int ipv4 show excludedportrange \
                     protocol=tcp). Use another --port",
                    *status as u32
                )
            }
            CallError::Status { what, status } => {
                write!(f, "{what} failed: {}", errors::ntstatus(*status).0)
            }
            CallError::Handshake { status, .. } if *status as u32 == errors::PIN_MISMATCH => {
                write!(
                    f,
                    "handshake failed: the server's certificate is not the pinned one \
                     (STATUS_PIN_MISMATCH, {:#010X})",
                    errors::PIN_MISMATCH
                )
            }
            CallError::Handshake { status, sspi, .. } if *sspi != 0 => write!(
                f,
                "handshake failed: {} [{}]",
                errors::security_status(*sspi),
                errors::ntstatus(*status).0
            ),
            CallError::Handshake { status, .. } => {
                write!(f, "handshake failed: {}", errors::ntstatus(*status).0)
            }
            CallError::Wire(e) => write!(f, "malformed response: {e}"),
        }
    }
}

impl CallError {
    /// The NTSTATUS the request completed with, when it completed (a handshake's failure
    /// gives the connection's status); None for failures of the device layer or the wire.
    pub fn status(&self) -> Option<i32> {
        match self {
            CallError::Status { status, .. } | CallError::Handshake { status, .. } => Some(*status),
            CallError::Device(_) | CallError::Wire(_) => None,
        }
    }

    /// Which exit status this failure gives.
    pub fn kind(&self) -> Kind {
        match self {
            CallError::Device(_) | CallError::Wire(_) => Kind::Driver,
            CallError::Status { status, .. } => errors::ntstatus(*status).1,
            CallError::Handshake { sspi, .. } if *sspi != 0 => Kind::Tls,
            CallError::Handshake { status, .. } => errors::ntstatus(*status).1,
        }
    }

    /// "CONNECT: the peer reset the connection (...)" with its kind.
    pub fn failure(&self, context: &str) -> Failure {
        Failure::new(self.kind(), format!("{context}: {self}"))
    }
}

impl std::error::Error for CallError {}

impl From<DeviceError> for CallError {
    fn from(e: DeviceError) -> Self {
        CallError::Device(e)
    }
}

fn ok(what: &'static str, status: i32) -> Result<(), CallError> {
    if status == 0 {
        Ok(())
    } else {
        Err(CallError::Status { what, status })
    }
}

/// A handshake in flight (ACCEPT or CONNECT).
pub struct PendingHandshake {
    io: Box<dyn Pending>,
}

impl PendingHandshake {
    /// Waits for the handshake: the connection's parameters, or why it failed.
    pub fn wait(self, timeout: Duration) -> Result<ConnectionInfo, CallError> {
        match self.poll(timeout)? {
            Some(info) => Ok(info),
            None => {
                self.cancel();
                Err(CallError::Device(DeviceError(format!(
                    "no handshake within {timeout:?} (cancelled)"
                ))))
            }
        }
    }

    /// Waits up to `timeout`: None if the handshake is still going.
    pub fn poll(&self, timeout: Duration) -> Result<Option<ConnectionInfo>, CallError> {
        let Some(c) = self.io.wait(timeout)? else {
            return Ok(None);
        };
        ok("handshake", c.status)?;
        let info = ConnectionInfo::decode(&c.output).map_err(CallError::Wire)?;
        if info.status != 0 {
            return Err(CallError::Handshake {
                status: info.status,
                sspi: info.sspi_status,
                connection: info.id,
            });
        }
        Ok(Some(info))
    }

    /// Cancels the request (it completes as cancelled).
    pub fn cancel(&self) {
        let _ = self.io.cancel();
    }

    /// Whether the handshake has finished (either way), without waiting.
    pub fn is_complete(&self) -> bool {
        matches!(self.io.wait(Duration::ZERO), Ok(Some(_)))
    }
}

/// A SEND or RECV in flight (overlapped I/O: several may be, on one connection; the driver
/// finishes them in the order they were issued).
pub struct PendingTransfer {
    io: Box<dyn Pending>,
    what: &'static str,
}

impl PendingTransfer {
    /// Waits for it: what a RECV received (empty at the end of the stream), a SEND's payload
    /// (the caller's buffer, handed back).
    /// On timeout it is cancelled. (Under kemu the buffer moves back, it is not copied.)
    pub fn wait(self, timeout: Duration) -> Result<Vec<u8>, CallError> {
        match self.io.take(timeout)? {
            Some(c) => {
                ok(self.what, c.status)?;
                Ok(c.output)
            }
            None => {
                let _ = self.io.cancel();
                Err(CallError::Device(DeviceError(format!(
                    "{} did not complete within {timeout:?} (cancelled)",
                    self.what
                ))))
            }
        }
    }

    /// Waits up to `timeout` without cancelling: None if it is still in flight.
    pub fn poll(&self, timeout: Duration) -> Result<Option<Vec<u8>>, CallError> {
        let Some(c) = self.io.wait(timeout)? else {
            return Ok(None);
        };
        ok(self.what, c.status)?;
        Ok(Some(c.output))
    }

    /// Asks for cancellation; it still completes (usually as STATUS_CANCELLED).
    pub fn cancel(&self) {
        let _ = self.io.cancel();
    }

    /// Whether it has completed, without waiting.
    pub fn is_complete(&self) -> bool {
        matches!(self.io.wait(Duration::ZERO), Ok(Some(_)))
    }
}

/// Room asked for a peer's chain (a long chain with large keys stays well below).
const PEER_CERTIFICATES_ROOM: usize = 256 * 1024;

/// Typed calls on one handle.
pub struct Driver<'d> {
    device: Box<dyn Device + 'd>,
}

impl<'d> Driver<'d> {
    /// Wraps an open handle.
    pub fn new(device: Box<dyn Device + 'd>) -> Driver<'d> {
        Driver { device }
    }

    /// GET_VERSION.
    pub fn version(&self) -> Result<GetVersionResponse, CallError> {
        let c = self.device.call(
            IOCTL_WSKTLS_GET_VERSION,
            &[],
            GetVersionResponse::SIZE,
            CALL_TIMEOUT,
        )?;
        ok("GET_VERSION", c.status)?;
        GetVersionResponse::decode(&c.output).map_err(CallError::Wire)
    }

    /// LISTEN.
    pub fn listen(&self, request: &ListenRequest<'_>) -> Result<ListenResponse, CallError> {
        let mut buf = vec![0u8; ListenRequest::FIXED + request.alpn.len()];
        let n = request
            .encode(&mut buf)
            .ok_or(CallError::Wire(proto::WireError::InvalidField("alpn")))?;
        let c = self.device.call(
            IOCTL_WSKTLS_LISTEN,
            &buf[..n],
            ListenResponse::SIZE,
            CALL_TIMEOUT,
        )?;
        ok("LISTEN", c.status)?;
        ListenResponse::decode(&c.output).map_err(CallError::Wire)
    }

    /// ACCEPT (returns at once; wait on the result).
    pub fn accept(&self, listener: u64) -> Result<PendingHandshake, CallError> {
        let io = self.device.submit(
            IOCTL_WSKTLS_ACCEPT,
            &IdRequest { id: listener }.encode(),
            ConnectionInfo::SIZE,
        )?;
        Ok(PendingHandshake { io })
    }

    /// CONNECT (returns at once; wait on the result).
    pub fn connect(&self, request: &ConnectRequest<'_>) -> Result<PendingHandshake, CallError> {
        let mut buf =
            vec![
                0u8;
                ConnectRequest::FIXED + request.host.len() + request.sni.len() + request.alpn.len()
            ];
        let n = request
            .encode(&mut buf)
            .ok_or(CallError::Wire(proto::WireError::InvalidField("connect")))?;
        let io = self
            .device
            .submit(IOCTL_WSKTLS_CONNECT, &buf[..n], ConnectionInfo::SIZE)?;
        Ok(PendingHandshake { io })
    }

    /// SEND all of `data` (in MAX_SEND pieces; each completes once queued in the driver).
    pub fn send(&self, id: u64, data: &[u8]) -> Result<(), CallError> {
        for chunk in data.chunks(MAX_SEND) {
            self.send_async(id, chunk)?.wait(CALL_TIMEOUT)?;
        }
        Ok(())
    }

    /// SEND of one piece (1 to MAX_SEND bytes) without waiting for it: the header is the input,
    /// the payload the output buffer the driver reads in place (METHOD_IN_DIRECT).
    pub fn send_async(&self, id: u64, data: &[u8]) -> Result<PendingTransfer, CallError> {
        self.send_async_owned(id, data.to_vec())
    }

    /// As [`Self::send_async`] with a buffer the caller hands over: no copy is made, and the
    /// completed SEND's `wait` gives the whole payload back (its byte count is the payload's
    /// length), so a sender can reuse its buffers as it would on Windows.
    pub fn send_async_owned(&self, id: u64, data: Vec<u8>) -> Result<PendingTransfer, CallError> {
        SendRequest::check_payload(data.len()).map_err(CallError::Wire)?;
        let io =
            self.device
                .submit_buffer(IOCTL_WSKTLS_SEND, &SendRequest { id }.encode(), data)?;
        Ok(PendingTransfer { io, what: "SEND" })
    }

    /// RECV of up to `max` bytes without waiting for it.
    pub fn recv_async(&self, id: u64, max: u32) -> Result<PendingTransfer, CallError> {
        self.recv_async_into(id, vec![0; max as usize])
    }

    /// As [`Self::recv_async`], into a buffer the caller hands over (up to its length): what a
    /// receiver reuses instead of a fresh, zeroed buffer per RECV. `wait` gives it back holding
    /// what was received.
    pub fn recv_async_into(&self, id: u64, buffer: Vec<u8>) -> Result<PendingTransfer, CallError> {
        let max = u32::try_from(buffer.len())
            .map_err(|_| CallError::Wire(proto::WireError::InvalidField("recv length")))?;
        let io = self.device.submit_buffer(
            IOCTL_WSKTLS_RECV,
            &RecvRequest { id, max }.encode(),
            buffer,
        )?;
        Ok(PendingTransfer { io, what: "RECV" })
    }

    /// RECV up to `max` bytes; an empty result is the end of the stream.
    pub fn recv(&self, id: u64, max: u32, timeout: Duration) -> Result<Vec<u8>, CallError> {
        let c = self.device.call(
            IOCTL_WSKTLS_RECV,
            &RecvRequest { id, max }.encode(),
            max as usize,
            timeout,
        )?;
        ok("RECV", c.status)?;
        Ok(c.output)
    }

    /// SHUTDOWN: close_notify, then a graceful disconnect.
    pub fn shutdown(&self, id: u64) -> Result<(), CallError> {
        let c = self.device.call(
            IOCTL_WSKTLS_SHUTDOWN,
            &IdRequest { id }.encode(),
            0,
            CALL_TIMEOUT,
        )?;
        ok("SHUTDOWN", c.status)
    }

    /// SHUTDOWN without waiting for it (it completes once close_notify and the FIN are out).
    pub fn shutdown_async(&self, id: u64) -> Result<PendingTransfer, CallError> {
        let io = self
            .device
            .submit(IOCTL_WSKTLS_SHUTDOWN, &IdRequest { id }.encode(), 0)?;
        Ok(PendingTransfer {
            io,
            what: "SHUTDOWN",
        })
    }

    /// The peer's certificates a connection kept (its CONNECT asked for them), leaf first,
    /// each as DER.
    pub fn peer_certificates(&self, id: u64) -> Result<Vec<Vec<u8>>, CallError> {
        let c = self.device.call(
            IOCTL_WSKTLS_PEER_CERTIFICATES,
            &IdRequest { id }.encode(),
            PEER_CERTIFICATES_ROOM,
            CALL_TIMEOUT,
        )?;
        ok("PEER_CERTIFICATES", c.status)?;
        let mut chain = Vec::new();
        let mut rest = c.output.as_slice();
        while let Some((len, after)) = rest.split_first_chunk::<4>() {
            let len = u32::from_le_bytes(*len) as usize;
            let der = after
                .get(..len)
                .ok_or(CallError::Wire(proto::WireError::InvalidField(
                    "certificates",
                )))?;
            chain.push(der.to_vec());
            rest = &after[len..];
        }
        Ok(chain)
    }

    /// CLOSE a listener or connection.
    pub fn close(&self, id: u64) -> Result<(), CallError> {
        let c = self.device.call(
            IOCTL_WSKTLS_CLOSE,
            &IdRequest { id }.encode(),
            0,
            CALL_TIMEOUT,
        )?;
        ok("CLOSE", c.status)
    }

    /// STATS.
    pub fn stats(&self) -> Result<Stats, CallError> {
        let c = self
            .device
            .call(IOCTL_WSKTLS_STATS, &[], Stats::SIZE, CALL_TIMEOUT)?;
        ok("STATS", c.status)?;
        Stats::decode(&c.output).map_err(CallError::Wire)
    }
}

/// A readable cipher suite name (IANA number otherwise).
pub fn cipher_name(suite: u16) -> String {
    let name = match suite {
        0x1301 => "TLS_AES_128_GCM_SHA256",
        0x1302 => "TLS_AES_256_GCM_SHA384",
        0x1303 => "TLS_CHACHA20_POLY1305_SHA256",
        0xC02B => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        0xC02C => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        0xC02F => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        0xC030 => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        0xCCA8 => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        0xCCA9 => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        _ => return format!("cipher suite {suite:#06x}"),
    };
    format!("{name} ({suite:#06x})")
}

/// "TLS 1.3" / "TLS 1.2".
pub fn version_name(v: Option<TlsVersion>) -> &'static str {
    match v {
        Some(TlsVersion::Tls13) => "TLS 1.3",
        Some(TlsVersion::Tls12) => "TLS 1.2",
        None => "unknown version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_failures_name_their_real_cause() {
        let unknown = CallError::Status {
            what: "LISTEN",
            status: errors::NOT_FOUND as i32,
        }
        .to_string();
        assert!(
            unknown.contains("no certificate with that thumbprint"),
            "{unknown}"
        );
        assert!(!unknown.contains("host name"), "{unknown}");
        let refused = CallError::Status {
            what: "LISTEN",
            status: errors::ACCESS_DENIED as i32,
        }
        .to_string();
        assert!(refused.contains("ports below 1024"), "{refused}");
        assert!(!refused.contains("Administrator"), "{refused}");
        // Elsewhere the same codes keep their general meaning.
        let connect = CallError::Status {
            what: "CONNECT",
            status: errors::NOT_FOUND as i32,
        }
        .to_string();
        assert!(connect.contains("host name"), "{connect}");
    }
}
