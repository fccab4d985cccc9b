//! The handshake: InitializeSecurityContext / AcceptSecurityContext through their
//! asynchronous forms, tokens in and out, and what is checked and recorded once it is done.

use super::*;
use crate::context::{Step, StepFailure, StepResult};

impl<O: Observer> Engine<O> {
    pub(super) fn handshake_step(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>) {
        if self.sspi.is_none() {
            let notify = signal_on_notify::<Conn<O>, EV_SSPI>;
            match AsyncOp::try_new(notify, worker.as_raw() as *mut c_void) {
                Ok(op) => self.sspi = Some(op),
                Err(status) => {
                    self.fail_or_end(conn, Some(Error::tls(status)));
                    return;
                }
            }
        }
        // The output token goes into the send buffer, which an idle connection has given back.
        let room = if self.phase == Phase::Handshaking {
            TX_HANDSHAKE
        } else {
            TX_QUIET
        };
        if !self.send_room(room) {
            self.fail_or_end(conn, Some(Error::net(STATUS_INSUFFICIENT_RESOURCES)));
            return;
        }
        let Some(credential) = self.credential.as_ref() else {
            return;
        };
        let first = self.exchange == Exchange::NotStarted;
        if first {
            self.exchange = Exchange::Handshake {
                without_certificate: false,
            };
        }
        // Handshaking: what has arrived. After the handshake: the post-handshake message
        // DecryptMessage returned (SEC_I_RENEGOTIATE) and what followed it, at the front of `rx`
        // (no receive runs meanwhile).
        let input_len = self.rx_len;
        let offer_alpn = self.phase == Phase::Handshaking && (conn.server || first);
        // The step has both buffers until its callback (see `Buffer::lend`).
        let step = Step {
            server: conn.server,
            credential,
            input: &self.rx,
            input_len,
            first_client_call: first && !conn.server,
            offer_alpn,
            output: &self.tx,
            mutual_auth: conn.require_client_certificate,
            use_supplied_credentials: self.exchange
                == Exchange::Handshake {
                    without_certificate: true,
                },
        };
        // The in-flight call holds a reference to the session until its callback.
        let (context, sspi) = (&mut self.context, &mut self.sspi);
        let issued = worker.lend(|| match sspi.as_mut() {
            Some(op) => context.start_step(op, &step),
            None => Err(StepFailure::NotReady(SEC_E_INTERNAL_ERROR)),
        });
        match issued {
            Ok(()) => self.sspi_call = SspiCall::Step { input: input_len },
            Err(StepFailure::NotReady(_)) => {
                self.fail_or_end(conn, Some(Error::net(STATUS_INSUFFICIENT_RESOURCES)))
            }
            Err(StepFailure::Refused(status)) => self.fail_or_end(conn, Some(Error::tls(status))),
        }
    }

    pub(super) fn sspi_completed(&mut self, conn: &Conn<O>, status: SECURITY_STATUS, input: usize) {
        let finished = self.sspi.as_ref().and_then(|op| self.context.finish_step(op, input));
        let Some(StepResult { written, extra }) = finished else {
            // Not the step's callback (cannot happen: the drain checked the call is over).
            self.fail_or_end(conn, Some(Error::tls(SEC_E_INTERNAL_ERROR)));
            return;
        };
        let capacity = self.tx.len();
        let consumed = input - extra.unwrap_or(0);
        match status {
            SEC_E_OK | SEC_I_CONTINUE_NEEDED | SEC_I_CONTINUE_NEEDED_MESSAGE_OK => {
                if let Exchange::Handshake { .. } = self.exchange {
                    self.exchange = Exchange::Handshake {
                        without_certificate: false,
                    };
                }
                self.consume_input(consumed);
                if written > 0 {
                    self.pending_token = written.min(capacity);
                }
                if status == SEC_E_OK {
                    if self.phase == Phase::Handshaking {
                        self.established(conn);
                    } else if self.exchange == Exchange::PostHandshake {
                        // Records that followed the post-handshake message wait in `rx`.
                        self.exchange = Exchange::Records;
                        self.decrypt_all(conn);
                    }
                } else if self.rx_len == 0 {
                    self.await_input();
                }
            }
            SEC_I_INCOMPLETE_CREDENTIALS
                if !conn.server
                    && self.exchange
                        == (Exchange::Handshake {
                            without_certificate: false,
                        }) =>
            {
                // The server asked for a certificate this credential does not have: call again
                // with the same input and go on without one (curl and MsQuic do the same).
                self.exchange = Exchange::Handshake {
                    without_certificate: true,
                };
            }
            too_small
                if (too_small == SEC_E_BUFFER_TOO_SMALL
                    || too_small.0 == ksys::ntdef::STATUS_BUFFER_TOO_SMALL.0)
                    && written > capacity
                    && written <= MAX_HANDSHAKE_TOKEN =>
            {
                // The flight is bigger than the send buffer (a long certificate chain):
                // Schannel consumed nothing and said how much room it needs; the same call
                // goes again with that much (MsQuic grows its buffer the same way).
                match Buffer::try_new(written) {
                    Ok(bigger) => {
                        self.tx = bigger;
                        self.note_buffers();
                    }
                    Err(_) => {
                        self.fail_or_end(conn, Some(Error::net(STATUS_INSUFFICIENT_RESOURCES)))
                    }
                }
            }
            SEC_E_INCOMPLETE_MESSAGE if self.rx_len >= self.rx.len() => {
                if self.rx.len() < RX_QUIET {
                    // An idle connection's buffer: room for a whole record first.
                    self.rx_wanted = self.rx_wanted.max(RX_QUIET);
                    self.await_input();
                } else {
                    // A handshake record larger than any legal one: more input cannot help.
                    self.fail_or_end(conn, Some(Error::tls(SEC_E_ILLEGAL_MESSAGE)));
                }
            }
            SEC_E_INCOMPLETE_MESSAGE => self.await_input(),
            error => {
                // Only what Schannel really wrote goes to the peer: a token shorter than the
                // buffer that parses as whole TLS records (the alert), never the buffer itself.
                let token = &self.tx.bytes()[..written.min(capacity)];
                if written > 0 && written < capacity && whole_records(token) {
                    self.pending_token = written;
                    if self.ending == Ending::Close {
                        self.ending = Ending::TokenThenClose;
                    }
                }
                self.fail_or_end(conn, Some(Error::tls(error)));
            }
        }
    }

    /// Drops the first `consumed` bytes of `rx` (what an ISC/ASC call used up); the rest,
    /// its EXTRA and anything received after, moves to the front.
    pub(super) fn consume_input(&mut self, consumed: usize) {
        let consumed = consumed.min(self.rx_len);
        self.rx.bytes().copy_within(consumed..self.rx_len, 0);
        self.rx_len -= consumed;
    }

    /// Drops the consumed front of `rx`, keeping its last `extra` bytes.
    pub(super) fn keep_extra(&mut self, extra: usize) {
        let start = self.rx_len - extra;
        self.rx.bytes().copy_within(start..self.rx_len, 0);
        self.rx_len = extra;
    }

    pub(super) fn established(&mut self, conn: &Conn<O>) {
        let sizes = match self.context.stream_sizes() {
            Ok(sizes)
                if sizes.cbMaximumMessage != 0
                    && (sizes.cbHeader + sizes.cbTrailer) as usize <= 64 =>
            {
                sizes
            }
            Ok(_) => {
                self.fail_or_end(conn, Some(Error::tls(SEC_E_INTERNAL_ERROR)));
                return;
            }
            Err(status) => {
                self.fail_or_end(conn, Some(Error::tls(status)));
                return;
            }
        };
        self.sizes = sizes;
        let mut negotiated = Negotiated {
            protocol: self.context.protocol(),
            cipher_suite: self.context.cipher_suite(),
            alpn_len: 0,
            alpn: [0; 255],
            peer_certificate: self.peer_certificate_digest(),
            stream_sizes: [
                self.sizes.cbHeader,
                self.sizes.cbTrailer,
                self.sizes.cbMaximumMessage,
            ],
            resumed: self.context.resumed(),
        };
        if let Some(pin) = self.pinned {
            if negotiated.peer_certificate != Some(pin) {
                self.fail_or_end(conn, Some(Error::pin_mismatch()));
                return;
            }
        }
        if conn.server && conn.require_client_certificate {
            if let Err(status) = self.client_certificate_verdict() {
                self.fail_or_end(conn, Some(Error::tls(status)));
                return;
            }
        }
        if let Some((id, len)) = self.context.application_protocol() {
            negotiated.alpn = id;
            negotiated.alpn_len = len;
        }
        self.phase = Phase::Open;
        self.exchange = Exchange::Records;
        self.input_arrived();
        Deadline::disarm(&self.deadline);
        self.timer = Timer::Idle;
        {
            let mut m = conn.mailbox.lock();
            m.state = State::Open;
            m.negotiated = Some(negotiated);
            m.peer_certificates = core::mem::take(&mut self.peer_chain);
        }
        // Application records that came with the last flight.
        if self.rx_len > 0 {
            self.decrypt_all(conn);
        }
    }

    /// ASC_REQ_MUTUAL_AUTH only asks for a client certificate: Schannel completes the handshake
    /// with none or with one that does not chain, and reports the verdict afterwards
    /// (SECPKG_ATTR_CERT_CHECK_RESULT_INPROC, as MsQuic reads it). No certificate is
    /// SEC_E_NO_CREDENTIALS; a chain the machine does not trust maps its HRESULT to the
    /// SECURITY_STATUS that names it.
    pub(super) fn client_certificate_verdict(&mut self) -> Result<(), SECURITY_STATUS> {
        let verdict = self.context.certificate_check_result()?;
        match verdict {
            0 => Ok(()),
            // CERT_E_UNTRUSTEDROOT, CERT_E_CHAINING
            0x800B_0109 | 0x800B_010A => Err(SEC_E_UNTRUSTED_ROOT),
            // CERT_E_EXPIRED
            0x800B_0101 => Err(SEC_E_CERT_EXPIRED),
            // CERT_E_WRONG_USAGE
            0x800B_0110 => Err(SEC_E_CERT_WRONG_USAGE),
            _ => Err(SEC_E_CERT_UNKNOWN),
        }
    }

    /// SHA-256 of the leaf of SECPKG_ATTR_REMOTE_CERTIFICATES ([u32 length][DER] repeated).
    pub(super) fn peer_certificate_digest(&mut self) -> Option<[u8; 32]> {
        let keep = self.keep_peer_certificates;
        let (digest, kept) = self.context.with_remote_certificates(|chain| {
            let digest = chain.get(..4).and_then(|len| {
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                chain.get(4..4 + len).map(crate::sha256::sha256)
            });
            let mut kept = Vec::new();
            // Kept only if the pool has room: the owner then sees no chain, never a cut one.
            if keep && kept.try_reserve_exact(chain.len()).is_ok() {
                kept.extend_from_slice(chain);
            }
            (digest, kept)
        })?;
        if !kept.is_empty() {
            self.peer_chain = kept;
        }
        digest
    }
}

/// The TLS alert (RFC 8446 §6.2) that tells the peer why the connection failed.
pub(super) fn alert_for(status: SECURITY_STATUS) -> u8 {
    match status {
        SEC_E_MESSAGE_ALTERED | SEC_E_DECRYPT_FAILURE => 20, // bad_record_mac
        SEC_E_ILLEGAL_MESSAGE | SEC_E_INVALID_TOKEN => 10,   // unexpected_message
        SEC_E_ALGORITHM_MISMATCH => 40,                      // handshake_failure
        SEC_E_CERT_EXPIRED => 45,                            // certificate_expired
        SEC_E_UNTRUSTED_ROOT => 48,                          // unknown_ca
        SEC_E_CERT_UNKNOWN | SEC_E_WRONG_PRINCIPAL | SEC_E_CERT_WRONG_USAGE => 42, // bad_certificate
        SEC_E_NO_CREDENTIALS => 116, // certificate_required
        SEC_E_APPLICATION_PROTOCOL_MISMATCH => 120, // no_application_protocol
        _ => 80,                     // internal_error
    }
}

/// Whether `bytes` is a run of whole TLS records (5-byte headers of a known content type and
/// version 3.x, each length within a record's limit, ending exactly at the end): how a token
/// Schannel really wrote looks, unlike a buffer it left untouched.
pub(super) fn whole_records(bytes: &[u8]) -> bool {
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 5) else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if !(20..=23).contains(&header[0]) || header[1] != 3 || len == 0 || len > MAX_RECORD {
            return false;
        }
        at += 5 + len;
    }
    at == bytes.len() && at > 0
}

pub(super) fn alpn_blob(wire: &[u8]) -> Result<Vec<u8>, NTSTATUS> {
    let mut blob = Vec::new();
    if wire.is_empty() {
        return Ok(blob);
    }
    if wire.len() > u16::MAX as usize {
        return Err(STATUS_INVALID_PARAMETER);
    }
    blob.try_reserve(10 + wire.len())
        .map_err(|_| STATUS_INSUFFICIENT_RESOURCES)?;
    blob.extend_from_slice(
        &((SEC_APPLICATION_PROTOCOL_LIST_HEADER + wire.len()) as u32).to_le_bytes(),
    );
    blob.extend_from_slice(&SEC_APPLICATION_PROTOCOL_NEGOTIATION_EXT_ALPN.to_le_bytes());
    blob.extend_from_slice(&(wire.len() as u16).to_le_bytes());
    blob.extend_from_slice(wire);
    Ok(blob)
}
