//! Schannel's stream-TLS semantics on rustls's unbuffered API.
//!
//! kemu frames records itself (5-byte headers) so it always knows which bytes a call consumed:
//! a handshake call only feeds complete records (and, in TLS 1.2, never application-data records),
//! stops feeding once the handshake is complete, and reports the rest as SECBUFFER_EXTRA; a
//! decrypt call feeds one record at a time and hands back its plaintext in place.

use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{AlertDescription, CertificateError, Error, ProtocolVersion};

use std::sync::Arc;

use ksys::sspi::*;

/// Largest plaintext per record (and per EncryptMessage).
pub(crate) const MAX_MESSAGE: usize = 16 * 1024;
const HEADER: usize = 5;
const CONTENT_APPLICATION_DATA: u8 = 23;
const CONTENT_HANDSHAKE: u8 = 22;

/// A client or server connection.
pub(crate) enum Conn {
    Client(Box<UnbufferedClientConnection>),
    Server(Box<UnbufferedServerConnection>),
}

/// Runs `$body` with `$c` bound to whichever connection this is.
macro_rules! with_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            Conn::Client($c) => $body,
            Conn::Server($c) => $body,
        }
    };
}

/// Encodes into `out` what rustls has queued to send, showing it (a copy of) `seen` — bytes it
/// has processed already, so nothing new is taken in. With `until_alert` (after a failure) it
/// stops once the fatal alert is out: asking rustls again would make it parse the offending bytes
/// a second time and raise a second fatal alert (an assertion in its debug builds).
fn drain_queued(conn: &mut Conn, seen: &[u8], out: &mut Vec<u8>, until_alert: bool) {
    for _ in 0..16 {
        let mut view = seen.to_vec();
        let start = out.len();
        let more = with_conn!(&mut *conn, c => {
            let UnbufferedStatus { state, .. } = c.process_tls_records(&mut view);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => encode_all(&mut e, out).is_ok(),
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    true
                }
                _ => false,
            }
        });
        if !more || (until_alert && ends_with_alert(&out[start..])) {
            break;
        }
    }
}

/// Whether the last record of `records` is an alert: content type 21 (plaintext, or TLS 1.2
/// encrypted), or a TLS 1.3 record whose inner plaintext is two bytes (only an alert is; every
/// TLS 1.3 suite has a 16-byte tag and rustls does not pad).
fn ends_with_alert(records: &[u8]) -> bool {
    let mut at = 0;
    let mut last = None;
    while let Some(len) = record_len(&records[at..]) {
        last = Some((records[at], len - HEADER));
        at += len;
    }
    matches!(last, Some((21, _)) | Some((CONTENT_APPLICATION_DATA, 19)))
}

/// Outcome of one ISC/ASC step.
#[derive(Debug, Default)]
pub(crate) struct Step {
    pub status: SECURITY_STATUS,
    /// Bytes to send (handshake flight, or an alert after a failure).
    pub output: Vec<u8>,
    /// Input bytes consumed (the rest is SECBUFFER_EXTRA).
    pub consumed: usize,
    /// SEC_E_INCOMPLETE_MESSAGE: how many more bytes the next record needs.
    pub missing: usize,
}

/// Outcome of one DecryptMessage.
#[derive(Debug, Default)]
pub(crate) struct Decrypted {
    pub status: SECURITY_STATUS,
    /// Offset of the record whose plaintext is returned.
    pub record_start: usize,
    pub header: usize,
    pub plaintext: usize,
    pub trailer: usize,
    /// Input bytes consumed (the rest is SECBUFFER_EXTRA).
    pub consumed: usize,
    pub missing: usize,
}

/// Length of the complete record at the front of `buf`, if there is one.
fn record_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < HEADER {
        return None;
    }
    let len = HEADER + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    (buf.len() >= len).then_some(len)
}

/// Bytes the record at the front of `buf` still needs.
fn missing(buf: &[u8]) -> usize {
    if buf.len() < HEADER {
        return HEADER - buf.len();
    }
    (HEADER + usize::from(u16::from_be_bytes([buf[3], buf[4]])))
        .saturating_sub(buf.len())
        .max(1)
}

/// Length of the run of complete records at the front of `buf` (stopping before application
/// data when `stop_at_app_data`).
fn complete_records(buf: &[u8], stop_at_app_data: bool) -> usize {
    let mut at = 0;
    while let Some(len) = record_len(&buf[at..]) {
        if stop_at_app_data && buf[at] == CONTENT_APPLICATION_DATA {
            break;
        }
        at += len;
    }
    at
}

/// Maps a rustls error to the SECURITY_STATUS Schannel reports for it.
pub(crate) fn status_of(e: &Error) -> SECURITY_STATUS {
    match e {
        Error::InvalidCertificate(c) => {
            match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    SEC_E_UNTRUSTED_ROOT
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => SEC_E_WRONG_PRINCIPAL,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => SEC_E_CERT_EXPIRED,
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => SEC_E_CERT_WRONG_USAGE,
                _ => SEC_E_CERT_UNKNOWN,
            }
        }
        Error::NoApplicationProtocol => SEC_E_APPLICATION_PROTOCOL_MISMATCH,
        Error::PeerIncompatible(_) => SEC_E_ALGORITHM_MISMATCH,
        Error::AlertReceived(a) => match a {
            AlertDescription::NoApplicationProtocol => SEC_E_APPLICATION_PROTOCOL_MISMATCH,
            AlertDescription::HandshakeFailure
            | AlertDescription::ProtocolVersion
            | AlertDescription::InsufficientSecurity => SEC_E_ALGORITHM_MISMATCH,
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired => SEC_E_CERT_UNKNOWN,
            _ => SEC_E_ILLEGAL_MESSAGE,
        },
        Error::DecryptError => SEC_E_MESSAGE_ALTERED,
        Error::NoCertificatesPresented => SEC_E_CERT_UNKNOWN,
        Error::EncryptError => SEC_E_ENCRYPT_FAILURE,
        _ => SEC_E_ILLEGAL_MESSAGE,
    }
}

fn encode_all<D>(
    state: &mut rustls::unbuffered::EncodeTlsData<'_, D>,
    out: &mut Vec<u8>,
) -> Result<(), SECURITY_STATUS> {
    let start = out.len();
    let mut room = 4096;
    loop {
        out.resize(start + room, 0);
        match state.encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(e)) => room = e.required_size,
            Err(_) => {
                out.truncate(start);
                return Err(SEC_E_INTERNAL_ERROR);
            }
        }
    }
}

/// One TLS session and what it still owes the peer.
pub(crate) struct Session {
    pub conn: Conn,
    /// Post-handshake bytes (a KeyUpdate answer) the next ISC/ASC hands out.
    pub pending_output: Vec<u8>,
    /// The session failed or was closed: every further call fails.
    pub dead: Option<SECURITY_STATUS>,
    /// Bytes at the front of the next input that rustls has already seen (and may have
    /// decrypted in place) but not discarded — a handshake message spanning records. Schannel
    /// callers hand the original bytes back; kemu substitutes rustls's view of them.
    held: Vec<u8>,
    /// During a decrypt: end of the bytes fed to rustls so far.
    fed_end: usize,
    /// Reused buffer for the record being encrypted.
    outbuf: Vec<u8>,
    /// The post-handshake message DecryptMessage reported with SEC_I_RENEGOTIATE (rustls's view
    /// of its records, already processed): the next ISC/ASC input must start with it.
    post_handshake: Vec<u8>,
    /// What ApplyControlToken asked for.
    control: Option<Control>,
    /// After a fatal error: the alert record rustls queued for the peer.
    failure_alert: Vec<u8>,
    /// A client that may look for a default certificate: set when a server asked for one.
    pub certificate_asked: Option<Arc<super::creds::CertificateAsked>>,
    /// `held` is kemu's own copy (taken from the caller, put in front of the next handshake
    /// input); otherwise the caller hands those bytes back at the front of its next input.
    held_owned: bool,
    /// SEC_I_INCOMPLETE_CREDENTIALS was returned: the caller hands the same input again, whose
    /// first `replay` bytes were consumed already (their output waits in `pending_output`).
    replay: usize,
}

impl Session {
    pub fn new(conn: Conn) -> Session {
        Session {
            conn,
            pending_output: Vec::new(),
            dead: None,
            held: Vec::new(),
            fed_end: 0,
            outbuf: Vec::new(),
            post_handshake: Vec::new(),
            control: None,
            failure_alert: Vec::new(),
            certificate_asked: None,
            held_owned: false,
            replay: 0,
        }
    }

    pub fn is_handshaking(&self) -> bool {
        with_conn!(&self.conn, c => c.is_handshaking())
    }

    pub fn version(&self) -> Option<ProtocolVersion> {
        with_conn!(&self.conn, c => c.protocol_version())
    }

    pub fn suite(&self) -> Option<rustls::SupportedCipherSuite> {
        with_conn!(&self.conn, c => c.negotiated_cipher_suite())
    }

    /// Whether the handshake resumed a cached session.
    pub fn resumed(&self) -> bool {
        with_conn!(&self.conn, c => c.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
    }

    pub fn alpn(&self) -> Option<Vec<u8>> {
        with_conn!(&self.conn, c => c.alpn_protocol().map(|p| p.to_vec()))
    }

    pub fn peer_certificates(&self) -> Vec<Vec<u8>> {
        with_conn!(&self.conn, c => c.peer_certificates().map(|v| v.iter().map(|d| d.as_ref().to_vec()).collect()).unwrap_or_default())
    }

    /// Bytes before and after the plaintext in one record of the negotiated suite.
    pub fn framing(&self) -> (usize, usize) {
        let tls12 = self.version() == Some(ProtocolVersion::TLSv1_2);
        let chacha = self
            .suite()
            .is_some_and(|s| format!("{:?}", s.suite()).contains("CHACHA20"));
        match (tls12, chacha) {
            (true, false) => (HEADER + 8, 16),
            (true, true) => (HEADER, 16),
            (false, _) => (HEADER, 17),
        }
    }

    /// Records a fatal error: every later call fails with it, and the alert rustls queued for
    /// the peer is kept for the caller to fetch (ApplyControlToken + ISC/ASC, or EncryptMessage
    /// with SECQOP_WRAP_OOB_DATA).
    pub(super) fn fail(&mut self, status: SECURITY_STATUS) {
        let mut alert = Vec::new();
        self.take_alert(&mut alert);
        self.failure_alert = alert;
        self.dead = Some(status);
    }

    /// ApplyControlToken: the next ISC/ASC call produces a close_notify or the fatal alert.
    pub fn apply_control(&mut self, control: Control) -> SECURITY_STATUS {
        match control {
            Control::Shutdown if self.dead.is_none() && !self.is_handshaking() => {
                self.control = Some(control);
                SEC_E_OK
            }
            Control::Alert(_) if self.dead.is_some() && !self.failure_alert.is_empty() => {
                self.control = Some(control);
                SEC_E_OK
            }
            // An alert kemu cannot produce (rustls writes only the alert of its own failure).
            Control::Alert(_) if self.dead.is_none() => SEC_E_UNSUPPORTED_FUNCTION,
            _ => SEC_E_INVALID_TOKEN,
        }
    }

    /// EncryptMessage with SECQOP_WRAP_OOB_DATA and a fatal {2, description}: the alert record
    /// of the failure (see [`Session::fail`]).
    pub fn take_failure_alert(&mut self) -> Option<Vec<u8>> {
        (!self.failure_alert.is_empty()).then(|| std::mem::take(&mut self.failure_alert))
    }
}

/// What ApplyControlToken asked the next ISC/ASC call for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// SCHANNEL_SHUTDOWN: a close_notify.
    Shutdown,
    /// SCHANNEL_ALERT (fatal, with its description): the alert of the failure.
    Alert(u8),
}

/// The two record writers of WriteTraffic, behind one signature.
pub(crate) trait WriteRecord {
    fn encrypt(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, EncryptError>;
    fn queue_close_notify(&mut self, out: &mut [u8]) -> Result<usize, EncryptError>;
}

impl<D> WriteRecord for rustls::unbuffered::WriteTraffic<'_, D> {
    fn encrypt(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, EncryptError> {
        rustls::unbuffered::WriteTraffic::encrypt(self, data, out)
    }
    fn queue_close_notify(&mut self, out: &mut [u8]) -> Result<usize, EncryptError> {
        rustls::unbuffered::WriteTraffic::queue_close_notify(self, out)
    }
}

// After the macros above: they are in scope for these by textual order.
mod handshake;
mod records;
