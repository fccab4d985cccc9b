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
    /// Reused buffer for the plaintext of the record being decrypted.
    scratch: Vec<u8>,
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
            scratch: Vec::new(),
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

    /// Puts rustls's view of the held bytes back at the front of a caller's input.
    fn restore_held(&self, input: &mut [u8]) -> Result<(), SECURITY_STATUS> {
        if input.len() < self.held.len() {
            return Err(SEC_E_INVALID_TOKEN);
        }
        input[..self.held.len()].copy_from_slice(&self.held);
        Ok(())
    }

    /// After a failure: what rustls queued up to and including its fatal alert (in TLS 1.3 a
    /// ServerHello may precede it). It is shown only the bytes it has already seen (the held
    /// view, where a partly processed record's remaining messages live).
    fn take_alert(&mut self, out: &mut Vec<u8>) {
        drain_queued(&mut self.conn, &self.held, out, true);
    }

    /// Moves what rustls has queued to send into `pending_output`; `seen` is what rustls has
    /// been shown and not discarded.
    fn flush_output(&mut self, seen: &[u8]) {
        drain_queued(&mut self.conn, seen, &mut self.pending_output, false);
    }

    /// One InitializeSecurityContext / AcceptSecurityContext step over `input` (modified in place
    /// by rustls, as Schannel may). Records are fed one at a time (more only while a handshake
    /// message spans records), so at any point every fed byte has been seen by rustls. Once the
    /// handshake is complete a call answers what DecryptMessage or ApplyControlToken left
    /// pending (see [`Session::after_handshake`]).
    pub fn handshake(&mut self, input: &mut [u8]) -> Step {
        let mut step = Step::default();
        if self.control.is_some() {
            // The alert of a failure is produced on a dead session too.
            return self.after_handshake(input);
        }
        if let Some(status) = self.dead {
            step.status = status;
            return step;
        }
        // The call repeated after SEC_I_INCOMPLETE_CREDENTIALS belongs to the handshake even
        // when rustls finished it in the call before.
        if !self.is_handshaking() && self.replay == 0 {
            return self.after_handshake(input);
        }
        let replay = std::mem::take(&mut self.replay);
        if input.len() < replay {
            step.status = SEC_E_INVALID_TOKEN;
            return step;
        }
        let mut step = self.handshake_records(&mut input[replay..]);
        step.consumed += replay;
        let asked = self
            .certificate_asked
            .take_if(|a| a.0.load(std::sync::atomic::Ordering::SeqCst));
        if asked.is_some() && step.status.is_success() {
            // A server asked for a certificate and this credential may have a default one:
            // Schannel stops and says so; the caller calls again with the same input (and
            // goes on without one). Nothing is handed out until then.
            self.pending_output = std::mem::take(&mut step.output);
            self.replay = step.consumed;
            step.consumed = 0;
            step.status = SEC_I_INCOMPLETE_CREDENTIALS;
        }
        step
    }

    /// The output did not fit the caller's buffer: keep it, and the `consumed` bytes the next
    /// call's input starts with, for the call repeated with a bigger buffer.
    pub fn defer(&mut self, output: Vec<u8>, consumed: usize) {
        self.pending_output = output;
        self.replay = consumed;
    }

    /// Handshake records of one call. Schannel buffers a handshake message that spans records
    /// itself: complete records are taken (consumed) even when their message is not complete
    /// yet, and the caller hands only what follows. kemu does the same with its own copy of
    /// what rustls has seen and not discarded (`held`, then owned by kemu), put in front of the
    /// next input here.
    fn handshake_records(&mut self, input: &mut [u8]) -> Step {
        let kept = if self.held_owned {
            std::mem::take(&mut self.held)
        } else {
            // The caller hands those bytes back itself (EXTRA of a finished step).
            if let Err(status) = self.restore_held(input) {
                return Step {
                    status,
                    ..Step::default()
                };
            }
            Vec::new()
        };
        let kept_len = kept.len();
        let mut work = kept;
        work.extend_from_slice(input);
        let mut step = self.feed_handshake(&mut work, kept_len);
        let blocked =
            step.status == SEC_I_CONTINUE_NEEDED || step.status == SEC_E_INCOMPLETE_MESSAGE;
        if blocked {
            // Everything rustls has seen is now kemu's: discarded, or held for the next call.
            self.held_owned = true;
            let taken = (step.consumed + self.held.len()).saturating_sub(kept_len);
            if taken == 0 && step.output.is_empty() {
                step.status = SEC_E_INCOMPLETE_MESSAGE;
                let from = step.consumed + self.held.len();
                step.missing = missing(&work[from + complete_records(&work[from..], false)..]);
            } else {
                step.status = SEC_I_CONTINUE_NEEDED;
            }
            step.consumed = taken;
        } else {
            // Done or failed: what rustls saw and did not discard comes back as EXTRA.
            self.held_owned = false;
            step.consumed = step.consumed.saturating_sub(kept_len);
        }
        step
    }

    /// The record loop of [`Session::handshake_records`] over `input`, whose first `seen` bytes
    /// rustls has been shown already; `consumed` in the result is what it discarded.
    fn feed_handshake(&mut self, input: &mut [u8], seen: usize) -> Step {
        let mut step = Step {
            output: std::mem::take(&mut self.pending_output),
            ..Step::default()
        };
        let mut consumed = 0;
        // input[..seen] has been shown to rustls (and may hold its rewritten view): record
        // boundaries are parsed only after it, and every call is given at least all of it.
        let mut seen = seen;
        let mut more_records = 0;
        loop {
            let handshaking = self.is_handshaking();
            let tls12 = self.version() == Some(ProtocolVersion::TLSv1_2);
            let from = seen.max(consumed);
            let available = if handshaking {
                from + complete_records(&input[from..], tls12)
            } else {
                from
            };
            let wanted = usize::from(seen <= consumed) + more_records;
            let mut limit = from;
            for _ in 0..wanted {
                match record_len(&input[limit..available]) {
                    Some(len) => limit += len,
                    None => break,
                }
            }
            seen = limit;
            enum Next {
                Continue,
                Blocked,
                Done,
                Failed(SECURITY_STATUS),
            }
            let (discard, next) = with_conn!(&mut self.conn, c => {
                let UnbufferedStatus { discard, state } = c.process_tls_records(&mut input[consumed..limit]);
                let next = match state {
                    Ok(ConnectionState::EncodeTlsData(mut e)) => match encode_all(&mut e, &mut step.output) {
                        Ok(()) => Next::Continue,
                        Err(s) => Next::Failed(s),
                    },
                    Ok(ConnectionState::TransmitTlsData(t)) => {
                        t.done();
                        Next::Continue
                    }
                    Ok(ConnectionState::BlockedHandshake) => Next::Blocked,
                    Ok(ConnectionState::WriteTraffic(_)) => Next::Done,
                    Ok(ConnectionState::ReadTraffic(_)) | Ok(ConnectionState::ReadEarlyData(_)) => Next::Failed(SEC_E_INTERNAL_ERROR),
                    Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => Next::Failed(SEC_E_CONTEXT_EXPIRED),
                    Ok(_) => Next::Failed(SEC_E_INTERNAL_ERROR),
                    Err(e) => Next::Failed(status_of(&e)),
                };
                (discard, next)
            });
            consumed += discard;
            self.held = input[consumed..seen.max(consumed)].to_vec();
            match next {
                Next::Continue => more_records = 0,
                Next::Done => {
                    step.status = SEC_E_OK;
                    step.consumed = consumed;
                    return step;
                }
                Next::Blocked if discard > 0 && consumed < available => more_records = 0,
                Next::Blocked if discard == 0 && limit < available => more_records += 1,
                Next::Blocked => {
                    // handshake_records decides between INCOMPLETE_MESSAGE and CONTINUE_NEEDED.
                    step.consumed = consumed;
                    step.status = SEC_I_CONTINUE_NEEDED;
                    return step;
                }
                Next::Failed(status) => {
                    self.take_alert(&mut step.output);
                    self.dead = Some(status);
                    step.status = status;
                    step.consumed = consumed;
                    return step;
                }
            }
        }
    }

    /// An ISC/ASC call on an established context. It answers, in this order: a control token
    /// (ApplyControlToken: the close_notify or alert record is the output); the post-handshake
    /// message DecryptMessage returned with SEC_I_RENEGOTIATE, which must be at the front of
    /// `input` (consumed; a KeyUpdate answer is the output; the rest is EXTRA). With nothing
    /// pending there is nothing to renegotiate (TLS 1.2 renegotiation is not offered).
    fn after_handshake(&mut self, input: &mut [u8]) -> Step {
        let mut step = Step::default();
        if let Some(control) = self.control.take() {
            let record = match control {
                Control::Shutdown => self.close_notify().map(<[u8]>::to_vec),
                Control::Alert(_) => Ok(std::mem::take(&mut self.failure_alert)),
            };
            match record {
                Ok(r) => {
                    step.output = r;
                    step.status = SEC_E_OK;
                }
                Err(status) => step.status = status,
            }
            step.consumed = input.len();
            return step;
        }
        let message = self.post_handshake.len();
        if message == 0 {
            step.status = SEC_E_INVALID_TOKEN;
            return step;
        }
        if input.len() < message || input[..message] != self.post_handshake[..] {
            // Not the bytes DecryptMessage handed back as EXTRA (an empty input among them).
            step.status = SEC_E_INVALID_TOKEN;
            return step;
        }
        self.post_handshake.clear();
        step.output = std::mem::take(&mut self.pending_output);
        step.consumed = message;
        step.status = SEC_E_OK;
        step
    }

    /// Encrypts `data` (≤ MAX_MESSAGE) into exactly one record.
    pub fn encrypt(&mut self, data: &[u8]) -> Result<&[u8], SECURITY_STATUS> {
        self.send_record(|w, out| w.encrypt(data, out), data.len())
    }

    /// Encrypts a close_notify alert into one record.
    pub fn close_notify(&mut self) -> Result<&[u8], SECURITY_STATUS> {
        self.send_record(|w, out| w.queue_close_notify(out), 2)
    }

    fn send_record(
        &mut self,
        mut write: impl FnMut(&mut dyn WriteRecord, &mut [u8]) -> Result<usize, EncryptError>,
        size_hint: usize,
    ) -> Result<&[u8], SECURITY_STATUS> {
        if let Some(status) = self.dead {
            return Err(status);
        }
        if !self.pending_output.is_empty() {
            // A KeyUpdate answer must reach the peer before records under the new key.
            return Err(SEC_E_OUT_OF_SEQUENCE);
        }
        let mut out = std::mem::take(&mut self.outbuf);
        if out.len() < size_hint + 64 {
            out.resize(size_hint + 64, 0);
        }
        for _ in 0..8 {
            let mut view = self.held.clone();
            let result = with_conn!(&mut self.conn, c => {
                let UnbufferedStatus { state, .. } = c.process_tls_records(&mut view);
                match state {
                    Ok(ConnectionState::WriteTraffic(mut w)) => Some(write(&mut w, &mut out)),
                    Ok(ConnectionState::EncodeTlsData(mut e)) => {
                        let _ = encode_all(&mut e, &mut self.pending_output);
                        None
                    }
                    Ok(ConnectionState::TransmitTlsData(t)) => {
                        t.done();
                        None
                    }
                    Ok(ConnectionState::PeerClosed) => None,
                    Ok(ConnectionState::Closed) => return Err(SEC_E_CONTEXT_EXPIRED),
                    Ok(ConnectionState::BlockedHandshake) => return Err(SEC_E_INVALID_HANDLE),
                    Ok(_) => return Err(SEC_E_INTERNAL_ERROR),
                    Err(e) => return Err(status_of(&e)),
                }
            });
            match result {
                Some(Ok(n)) => {
                    self.outbuf = out;
                    return Ok(&self.outbuf[..n]);
                }
                Some(Err(EncryptError::InsufficientSize(e))) => out.resize(e.required_size, 0),
                Some(Err(_)) => return Err(SEC_E_ENCRYPT_FAILURE),
                None => {
                    if !self.pending_output.is_empty() {
                        return Err(SEC_E_OUT_OF_SEQUENCE);
                    }
                }
            }
        }
        Err(SEC_E_INTERNAL_ERROR)
    }

    /// Decrypts the first application record of `buf` in place. A record that carries a
    /// post-handshake message instead (a TLS 1.3 NewSessionTicket or KeyUpdate, a TLS 1.2
    /// HelloRequest) is processed and reported as Schannel does: SEC_I_RENEGOTIATE, with EXTRA
    /// starting at that record, for the caller to hand to ISC/ASC.
    pub fn decrypt(&mut self, buf: &mut [u8]) -> Decrypted {
        let mut d = Decrypted::default();
        if let Some(status) = self.dead {
            d.status = status;
            return d;
        }
        if !self.post_handshake.is_empty() {
            // SEC_I_RENEGOTIATE is still waiting for its ISC/ASC call.
            d.status = SEC_E_OUT_OF_SEQUENCE;
            return d;
        }
        if let Err(status) = self.restore_held(buf) {
            d.status = status;
            return d;
        }
        let result = self.decrypt_records(buf);
        let fed = self.fed_end.min(buf.len());
        let after = result.consumed + self.post_handshake.len();
        self.held = buf[after.min(fed)..fed].to_vec();
        result
    }

    fn decrypt_records(&mut self, buf: &mut [u8]) -> Decrypted {
        let mut d = Decrypted::default();
        let tls12 = self.version() == Some(ProtocolVersion::TLSv1_2);
        // buf[..seen] has been shown to rustls already (the held view): records are parsed only
        // after it, and every call gets at least all of it.
        let mut seen = self.held.len();
        self.fed_end = seen;
        let mut consumed = 0;
        let mut more_records = 0;
        loop {
            let from = seen.max(consumed);
            let wanted = usize::from(seen <= consumed) + more_records;
            let (mut end, mut last, mut added) = (from, 0, 0);
            for _ in 0..wanted {
                match record_len(&buf[end..]) {
                    Some(len) => {
                        end += len;
                        last = len;
                        added += 1;
                    }
                    None => break,
                }
            }
            if added < wanted || end == consumed {
                // Not enough complete records for what rustls needs next.
                d.consumed = consumed;
                if consumed == 0 {
                    d.status = SEC_E_INCOMPLETE_MESSAGE;
                    d.missing = missing(&buf[end..]);
                } else {
                    d.status = SEC_E_OK;
                }
                return d;
            }
            enum Next {
                Data,
                Message,
                Progress,
                Closed,
                Failed(SECURITY_STATUS),
            }
            seen = end;
            self.fed_end = end;
            let first_type = buf[consumed];
            let scratch = &mut self.scratch;
            let (discard, next) = with_conn!(&mut self.conn, c => {
                let UnbufferedStatus { discard, state } = c.process_tls_records(&mut buf[consumed..end]);
                let next = match state {
                    Ok(ConnectionState::ReadTraffic(mut r)) => match r.next_record() {
                        Some(Ok(rec)) => {
                            scratch.clear();
                            scratch.extend_from_slice(rec.payload);
                            Next::Data
                        }
                        Some(Err(e)) => Next::Failed(status_of(&e)),
                        None => Next::Progress,
                    },
                    Ok(ConnectionState::EncodeTlsData(mut e)) => {
                        let _ = encode_all(&mut e, &mut self.pending_output);
                        Next::Message
                    }
                    Ok(ConnectionState::TransmitTlsData(t)) => {
                        t.done();
                        Next::Message
                    }
                    Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => Next::Closed,
                    Ok(ConnectionState::WriteTraffic(mut w)) if discard > 0 => {
                        // Records went in without data (a ticket, a KeyUpdate). rustls keeps a
                        // KeyUpdate answer until the next write; Schannel hands it out at once
                        // (SEC_I_RENEGOTIATE, then ISC/ASC). A write too big for an empty
                        // buffer moves a queued answer to the output without encrypting.
                        let _ = w.encrypt(&[0], &mut []);
                        Next::Message
                    }
                    Ok(ConnectionState::WriteTraffic(_)) | Ok(ConnectionState::BlockedHandshake) => Next::Progress,
                    Ok(_) => Next::Failed(SEC_E_INTERNAL_ERROR),
                    Err(e) => Next::Failed(status_of(&e)),
                };
                (discard, next)
            });
            match next {
                Next::Data => {
                    let plain = &self.scratch;
                    let (header, _) = self.framing();
                    let record = last.min(discard);
                    let start = consumed + discard - record;
                    consumed += discard;
                    let header = header.min(record);
                    let n = plain.len().min(record - header);
                    buf[start + header..start + header + n].copy_from_slice(&plain[..n]);
                    d.status = SEC_E_OK;
                    d.record_start = start;
                    d.header = header;
                    d.plaintext = n;
                    d.trailer = record - header - n;
                    d.consumed = consumed;
                    return d;
                }
                Next::Message if discard == 0 => {}
                // A TLS 1.2 record that is not a handshake message (a warning alert): no news.
                Next::Message if tls12 && first_type != CONTENT_HANDSHAKE => {
                    consumed += discard;
                    more_records = 0;
                    let seen_after = buf[consumed..end.max(consumed)].to_vec();
                    self.flush_output(&seen_after);
                }
                Next::Message => {
                    let seen_after = buf[consumed + discard..end.max(consumed + discard)].to_vec();
                    self.flush_output(&seen_after);
                    self.post_handshake = buf[consumed..consumed + discard].to_vec();
                    d.status = SEC_I_RENEGOTIATE;
                    d.consumed = consumed;
                    return d;
                }
                Next::Progress => {
                    if discard == 0 {
                        more_records += 1;
                    } else {
                        consumed += discard;
                        more_records = 0;
                    }
                }
                Next::Closed => {
                    consumed += discard;
                    d.status = SEC_I_CONTEXT_EXPIRED;
                    d.consumed = consumed;
                    return d;
                }
                Next::Failed(status) => {
                    // What rustls has seen and not discarded, for the alert it queued.
                    self.held = buf[consumed + discard..end.max(consumed + discard)].to_vec();
                    self.fail(status);
                    d.status = status;
                    d.consumed = consumed + discard;
                    return d;
                }
            }
        }
    }

    /// Records a fatal error: every later call fails with it, and the alert rustls queued for
    /// the peer is kept for the caller to fetch (ApplyControlToken + ISC/ASC, or EncryptMessage
    /// with SECQOP_WRAP_OOB_DATA).
    fn fail(&mut self, status: SECURITY_STATUS) {
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
