//! Application data: the receive path (DecryptMessage in place, post-handshake messages,
//! plaintext to the mailbox) and the send path (queued plaintext to records, EncryptMessage in
//! place, several records per WskSend).

use super::*;
use crate::context::Decrypted;

impl<O: Observer> Engine<O> {
    /// Decrypts every whole record in `rx`, then moves what is left (a partial record) to its
    /// front once — not after each record, which would move the rest of a 64 KiB receive
    /// again for every 16 KiB record in it.
    pub(super) fn decrypt_all(&mut self, conn: &Conn<O>) {
        let consumed = self.decrypt_records(conn).min(self.rx_len);
        if consumed > 0 {
            self.keep_extra(self.rx_len - consumed);
        }
    }

    /// Decrypts records from the front of `rx` in place until one is incomplete, the
    /// session cannot go on, or a post-handshake message takes over; returns how many bytes
    /// at the front are consumed (0 when `keep_message` already rebuilt the front).
    fn decrypt_records(&mut self, conn: &Conn<O>) -> usize {
        let mut start = 0;
        // While a post-handshake answer is being fetched the context is busy; what arrives
        // meanwhile waits in `rx` until the answer is out (see `sspi_completed`).
        while self.rx_len > start
            && self.phase == Phase::Open
            && self.exchange != Exchange::PostHandshake
        {
            let rx_len = self.rx_len;
            let Decrypted {
                status,
                data,
                nonempty_data,
                extra,
            } = self.context.decrypt_in_place(&mut self.rx.bytes()[start..rx_len]);
            let unread = rx_len - start;
            match status {
                SEC_E_OK | SEC_I_RENEGOTIATE | SEC_I_CONTEXT_EXPIRED => {
                    if status == SEC_E_OK {
                        if let Some((at, len)) = data {
                            if at.checked_add(len).is_none_or(|end| end > unread) {
                                self.fail_or_end(conn, Some(Error::tls(SEC_E_INTERNAL_ERROR)));
                                return start;
                            }
                            if len > 0 && !self.deliver(conn, start + at, len) {
                                return start;
                            }
                        }
                    }
                    let extra = extra.unwrap_or(0).min(unread);
                    if status == SEC_I_RENEGOTIATE {
                        // The message for ISC/ASC: EXTRA (kemu, curl's reading of Schannel),
                        // after any bytes Schannel handed back as DATA instead (.NET's).
                        let data = nonempty_data.map(|(at, n)| (start + at, n));
                        self.keep_message(data, extra);
                        self.exchange = Exchange::PostHandshake;
                        conn.mailbox.lock().counters.post_handshake_messages += 1;
                        return 0;
                    }
                    start = rx_len - extra;
                    if status == SEC_I_CONTEXT_EXPIRED {
                        self.inbound = self.inbound.max(Inbound::CloseNotify);
                        conn.mailbox.lock().peer_ended = true;
                        return start;
                    }
                }
                SEC_E_INCOMPLETE_MESSAGE => {
                    // Full only if the partial record fills the whole buffer from its front.
                    if unread >= self.rx.len() {
                        if self.rx.len() < RX_QUIET {
                            // An idle connection's buffer: room for a whole record first.
                            self.rx_wanted = self.rx_wanted.max(RX_QUIET);
                        } else {
                            self.fail_or_end(conn, Some(Error::tls(SEC_E_ILLEGAL_MESSAGE)));
                        }
                    }
                    return start;
                }
                error => {
                    self.fail_or_end(conn, Some(Error::tls(error)));
                    return start;
                }
            }
        }
        start
    }

    /// After SEC_I_RENEGOTIATE: `data` (if Schannel returned the message there) and then the
    /// last `extra` bytes of `rx` become the front of `rx`, the next ISC/ASC's input.
    pub(super) fn keep_message(&mut self, data: Option<(usize, usize)>, extra: usize) {
        let extra_at = self.rx_len - extra;
        let mut len = 0;
        if let Some((at, n)) = data.filter(|(at, n)| at + n <= extra_at) {
            self.rx.bytes().copy_within(at..at + n, 0);
            len = n;
        }
        self.rx.bytes().copy_within(extra_at..self.rx_len, len);
        self.rx_len = len + extra;
    }

    /// Moves decrypted bytes to the owner; false if the session failed.
    pub(super) fn deliver(&mut self, conn: &Conn<O>, at: usize, len: usize) -> bool {
        let bytes = &self.rx.bytes()[at..at + len];
        let mut m = conn.mailbox.lock();
        if m.incoming.try_reserve(len).is_err() {
            drop(m);
            self.fail_or_end(conn, Some(Error::net(STATUS_INSUFFICIENT_RESOURCES)));
            return false;
        }
        m.incoming.extend(bytes);
        m.counters.received += len as u64;
        true
    }

    /// Encrypts queued plaintext into as many records as the send buffer holds and sends them
    /// (the buffer is sized to what is queued first).
    pub(super) fn fill_send(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>) {
        if self.phase != Phase::Open {
            return;
        }
        // More than a record queued: a busy buffer; nothing queued: a quiet one; in between
        // the buffer stays as it is (no flapping at the tail of a burst).
        let queued = conn.mailbox.lock().outgoing.len();
        if queued > MAX_PLAINTEXT {
            // Room for every queued record, up to TX_BUSY; it only grows during a burst, so
            // the buffer is not reallocated as the queue drains.
            let wanted = queued
                .div_ceil(MAX_PLAINTEXT)
                .saturating_mul(TX_RECORD)
                .min(TX_BUSY);
            if wanted > self.tx.len() {
                self.size_send_buffer(wanted);
            }
        } else if queued == 0 {
            // Down to one record (an idle connection's goes entirely; see `quiet_check`).
            if self.tx.len() > TX_QUIET {
                self.size_send_buffer(TX_QUIET);
            }
            return;
        }
        if !self.send_room(TX_QUIET) {
            self.fail_or_end(conn, Some(Error::net(STATUS_INSUFFICIENT_RESOURCES)));
            return;
        }
        let (header, trailer) = (self.sizes.cbHeader as usize, self.sizes.cbTrailer as usize);
        let max = self.sizes.cbMaximumMessage as usize;
        let capacity = self.tx.len();
        let mut used = 0;
        let mut plain = 0u64;
        loop {
            if used + header + trailer + 1 > capacity {
                break;
            }
            let room = (capacity - used - header - trailer).min(max);
            let tx = self.tx.bytes();
            let n = {
                let mut m = conn.mailbox.lock();
                take_front(
                    &mut m.outgoing,
                    &mut tx[used + header..used + header + room],
                )
            };
            if n == 0 {
                break;
            }
            match self.encrypt_in_place(used, n, 0) {
                Ok(len) => {
                    used += len;
                    plain += n as u64;
                }
                Err(status) => {
                    self.fail_or_end(conn, Some(Error::tls(status)));
                    return;
                }
            }
        }
        if used > 0 {
            {
                let mut m = conn.mailbox.lock();
                m.counters.sent += plain;
                m.counters.record_sends += 1;
            }
            self.start_send(worker, used);
        }
    }

    /// EncryptMessage of `n` bytes already at `at + header` in `tx`: the record's wire length.
    pub(super) fn encrypt_in_place(
        &mut self,
        at: usize,
        n: usize,
        qop: u32,
    ) -> Result<usize, SECURITY_STATUS> {
        let (header, trailer) = (self.sizes.cbHeader as usize, self.sizes.cbTrailer as usize);
        self.context
            .encrypt_in_place(&mut self.tx.bytes()[at..], header, n, trailer, qop)
    }
}

/// Moves as many bytes as fit from the front of `queue` into `out` (two slice copies at most,
/// not a byte at a time: this is every byte sent and received).
pub(super) fn take_front(queue: &mut VecDeque<u8>, out: &mut [u8]) -> usize {
    let n = out.len().min(queue.len());
    let (first, second) = queue.as_slices();
    let a = n.min(first.len());
    out[..a].copy_from_slice(&first[..a]);
    out[a..n].copy_from_slice(&second[..n - a]);
    queue.drain(..n);
    n
}
