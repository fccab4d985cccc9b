//! The handshake on rustls, as Schannel's ISC/ASC present it: input records held and
//! restored, output and alerts, what a step consumed, post-handshake messages.

use super::*;

impl Session {
    /// Puts rustls's view of the held bytes back at the front of a caller's input.
    pub(super) fn restore_held(&self, input: &mut [u8]) -> Result<(), SECURITY_STATUS> {
        if input.len() < self.held.len() {
            return Err(SEC_E_INVALID_TOKEN);
        }
        input[..self.held.len()].copy_from_slice(&self.held);
        Ok(())
    }

    /// After a failure: what rustls queued up to and including its fatal alert (in TLS 1.3 a
    /// ServerHello may precede it). It is shown only the bytes it has already seen (the held
    /// view, where a partly processed record's remaining messages live).
    pub(super) fn take_alert(&mut self, out: &mut Vec<u8>) {
        drain_queued(&mut self.conn, &self.held, out, true);
    }

    /// Moves what rustls has queued to send into `pending_output`; `seen` is what rustls has
    /// been shown and not discarded.
    pub(super) fn flush_output(&mut self, seen: &[u8]) {
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
    pub(super) fn handshake_records(&mut self, input: &mut [u8]) -> Step {
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
    pub(super) fn feed_handshake(&mut self, input: &mut [u8], seen: usize) -> Step {
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
    pub(super) fn after_handshake(&mut self, input: &mut [u8]) -> Step {
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
}
