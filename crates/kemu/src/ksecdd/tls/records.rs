//! Records: EncryptMessage and close_notify, DecryptMessage in place with EXTRA and
//! post-handshake messages reported as Schannel does.

use super::*;

impl Session {
    /// Encrypts `data` (≤ MAX_MESSAGE) into exactly one record.
    pub fn encrypt(&mut self, data: &[u8]) -> Result<&[u8], SECURITY_STATUS> {
        self.send_record(|w, out| w.encrypt(data, out), data.len())
    }

    /// Encrypts a close_notify alert into one record.
    pub fn close_notify(&mut self) -> Result<&[u8], SECURITY_STATUS> {
        self.send_record(|w, out| w.queue_close_notify(out), 2)
    }

    pub(super) fn send_record(
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

    pub(super) fn decrypt_records(&mut self, buf: &mut [u8]) -> Decrypted {
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
                /// A record's plaintext waits in rustls.
                Data,
                Message,
                Progress,
                Closed,
                Failed(SECURITY_STATUS),
            }
            seen = end;
            self.fed_end = end;
            let first_type = buf[consumed];
            let (discard, next) = with_conn!(&mut self.conn, c => {
                let UnbufferedStatus { discard, state } = c.process_tls_records(&mut buf[consumed..end]);
                let next = match state {
                    // rustls 0.23 shows ReadTraffic only with plaintext waiting (a copy it
                    // made of the record's), taken below once `buf` is free again.
                    Ok(ConnectionState::ReadTraffic(_)) => Next::Data,
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
                    let (header, _) = self.framing();
                    let record = last.min(discard);
                    let start = consumed + discard - record;
                    consumed += discard;
                    let header = header.min(record);
                    let (to, room) = (start + header, record - header);
                    // Asked again with no input, rustls hands over the plaintext it holds
                    // without borrowing `buf`: one copy, into the record where Schannel
                    // leaves it (not through a buffer of kemu's).
                    let mut no_input: [u8; 0] = [];
                    let copied = with_conn!(&mut self.conn, c => {
                        match c.process_tls_records(&mut no_input).state {
                            Ok(ConnectionState::ReadTraffic(mut r)) => match r.next_record() {
                                Some(Ok(rec)) => {
                                    let n = rec.payload.len().min(room);
                                    buf[to..to + n].copy_from_slice(&rec.payload[..n]);
                                    Ok(n)
                                }
                                Some(Err(e)) => Err(status_of(&e)),
                                None => Err(SEC_E_INTERNAL_ERROR),
                            },
                            Err(e) => Err(status_of(&e)),
                            Ok(_) => Err(SEC_E_INTERNAL_ERROR),
                        }
                    });
                    let n = match copied {
                        Ok(n) => n,
                        Err(status) => {
                            self.fail(status);
                            d.status = status;
                            d.consumed = consumed;
                            return d;
                        }
                    };
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
}
