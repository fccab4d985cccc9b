//! The end of a connection: close_notify and the graceful disconnect, failures with their
//! alert, aborts, the bounded waits for the peer, and releasing the socket and the security
//! context (asynchronously where Windows allows).

use super::*;
use super::handshake::alert_for;

impl<O: Observer> Engine<O> {
    /// SspiDeleteSecurityContextAsync on the session's async operation: no thread waits on the
    /// LSA for it. False if it could not be queued (no callback comes; the context is intact).
    pub(super) fn delete_context_async(&mut self, worker: &Worker<Conn<O>>) -> bool {
        let Some(op) = self.sspi.as_mut() else {
            return false;
        };
        // The call holds a reference to the session until its callback.
        let context = &mut self.context;
        if worker.lend(|| context.delete_async(op)).is_err() {
            return false;
        }
        self.sspi_call = SspiCall::DeletingContext;
        true
    }

    /// WskDisconnect (graceful) on the control IRP.
    pub(super) fn start_disconnect(&mut self, worker: &Worker<Conn<O>>) {
        if self.socket.disconnect(&self.control, worker.clone()).is_ok() {
            self.control_kind = Control::Disconnect;
        }
    }

    /// Arms the deadline for [`RELEASE_TIMEOUT_MS`] (if a quiet watch's DPC is still running,
    /// its EV_TIMER comes first and arms it then).
    pub(super) fn arm_release(&mut self, worker: &Worker<Conn<O>>) {
        if Deadline::arm(&self.deadline, worker.clone(), RELEASE_TIMEOUT_MS).is_ok() {
            self.timer = Timer::Release;
        }
    }

    /// close_notify after the queue drained, then the graceful disconnect.
    pub(super) fn shutdown_step(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>) {
        if !self.send.is_idle()
            || self.pending_token > 0
            || self.exchange == Exchange::PostHandshake
        {
            return;
        }
        if !conn.mailbox.lock().outgoing.is_empty() {
            return;
        }
        if self.outbound == Outbound::Open {
            if !self.send_room(TX_QUIET) {
                self.fail_or_end(conn, Some(Error::net(STATUS_INSUFFICIENT_RESOURCES)));
                return;
            }
            self.outbound = Outbound::CloseNotifySent;
            let header = self.sizes.cbHeader as usize;
            self.tx.bytes()[header..header + 2].copy_from_slice(&[1, 0]);
            match self.encrypt_in_place(0, 2, SECQOP_WRAP_OOB_DATA) {
                Ok(len) => self.start_send(worker, len),
                Err(status) => self.fail_or_end(conn, Some(Error::tls(status))),
            }
            return;
        }
        if self.outbound < Outbound::Disconnected
            && self.control_kind == Control::None
            && self.socket.is_open()
        {
            self.start_disconnect(worker);
        }
    }

    /// Ends the connection: `Some(failure)` records why (the first reason wins). A TLS failure
    /// on a live socket ends gracefully — the fatal alert (the handshake's alert token, or one
    /// written now with EncryptMessage(SECQOP_WRAP_OOB_DATA)), then our FIN and the peer's —
    /// while a network failure or the owner's abort resets.
    pub(super) fn fail_or_end(&mut self, conn: &Conn<O>, failure: Option<Error>) {
        if let Some(f) = failure {
            if self.failure.is_none() {
                self.failure = Some(f);
                conn.mailbox.lock().failure = Some(f);
            }
        }
        if self.phase == Phase::Releasing || self.phase == Phase::Done {
            return;
        }
        if let Some(f) = failure.filter(|f| f.sspi() != SEC_E_OK) {
            if self.socket.is_open() && !self.peer_gone() {
                // Schannel's own alert token goes if it wrote one; otherwise after the
                // handshake (or a check of its result) the alert is written now.
                let established = self.sizes.cbMaximumMessage != 0;
                let alert = if self.ending == Ending::TokenThenClose {
                    Alert::Token
                } else if established {
                    Alert::Write(alert_for(f.sspi()))
                } else {
                    Alert::None
                };
                self.ending = Ending::Graceful { alert };
            }
        }
        self.phase = Phase::Releasing;
    }

    /// Whether the peer already closed its side completely (FIN) — nothing more to tell it.
    pub(super) fn peer_gone(&self) -> bool {
        self.inbound == Inbound::Fin
    }

    /// Whether the end under way is a graceful one (alert, FINs) still going.
    pub(super) fn ends_gracefully(&self) -> bool {
        matches!(self.ending, Ending::Graceful { .. })
    }

    /// The graceful end cannot reach the peer any more: only Schannel's alert token, if it is
    /// still waiting, goes before the close.
    pub(super) fn give_up_graceful_end(&mut self) {
        self.ending = match self.ending {
            Ending::Graceful {
                alert: Alert::Token,
            } => Ending::TokenThenClose,
            Ending::Graceful { .. } => Ending::Close,
            other => other,
        };
    }

    /// Gives up the graceful end: what is in flight is cancelled and the socket reset.
    pub(super) fn end_abruptly(&mut self) {
        self.ending = Ending::Close;
        self.pending_token = 0;
    }

    /// Steps of a graceful end (see [`Self::fail_or_end`]); true while one is under way.
    pub(super) fn end_gracefully(&mut self, worker: &Worker<Conn<O>>) -> bool {
        let Ending::Graceful { alert } = self.ending else {
            return false;
        };
        if !self.socket.is_open() {
            return false;
        }
        if self.timer != Timer::End {
            Deadline::disarm(&self.deadline);
            self.timer = match Deadline::arm(&self.deadline, worker.clone(), END_TIMEOUT_MS) {
                Ok(()) => Timer::End,
                Err(_) => Timer::Idle,
            };
        }
        if let Alert::Write(description) = alert {
            if !self.send.is_idle() || self.pending_token > 0 {
                return true;
            }
            self.ending = Ending::Graceful { alert: Alert::None };
            // Without room for it (no pool), only the FIN goes.
            if self.send_room(TX_QUIET) {
                let header = self.sizes.cbHeader as usize;
                self.tx.bytes()[header..header + 2]
                    .copy_from_slice(&[ksys::schannel::TLS1_ALERT_FATAL as u8, description]);
                // A package that cannot write this alert (kemu outside its own failures)
                // leaves only the FIN.
                if let Ok(len) = self.encrypt_in_place(0, 2, SECQOP_WRAP_OOB_DATA) {
                    self.pending_token = len;
                }
            }
        }
        if self.pending_token > 0 {
            if self.send.is_idle() {
                let len = core::mem::take(&mut self.pending_token);
                self.start_send(worker, len);
            }
            return true;
        }
        if !self.send.is_idle() {
            return true;
        }
        if self.outbound < Outbound::Disconnected {
            if self.control_kind == Control::None {
                self.start_disconnect(worker);
            }
            return true;
        }
        if self.inbound != Inbound::Fin {
            // Closing before the peer's FIN would reset (and lose our alert at the peer).
            if self.recv.is_idle() && self.rx_len < self.rx.len() {
                let len = self.rx.len();
                let _ = self
                    .socket
                    .receive(&self.recv, worker.clone(), &self.rx, 0, len);
            }
            return self.inbound != Inbound::Fin && self.ends_gracefully();
        }
        // Done: the peer has everything; what remains is the close.
        self.ending = Ending::Close;
        false
    }

    pub(super) fn release_step(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>) {
        if self.end_gracefully(worker) {
            return;
        }
        if self.ending == Ending::TokenThenClose {
            if self.pending_token > 0 && self.send.is_idle() && self.socket.is_open() {
                let len = core::mem::take(&mut self.pending_token);
                self.start_send(worker, len);
            }
            if self.pending_token == 0 && self.send.is_idle() {
                self.ending = Ending::Close;
            } else {
                return;
            }
        }
        // Cancel what is in flight and wait for it to come back.
        self.send.cancel();
        self.recv.cancel();
        if matches!(
            self.control_kind,
            Control::Resolve | Control::Connect | Control::Disconnect
        ) {
            self.control.cancel();
        }
        if !self.send.is_idle() || !self.recv.is_idle() || self.sspi_busy() {
            return;
        }
        if self.control_kind != Control::None {
            return;
        }
        if self.socket.is_open() {
            // Closing resets the connection unless it was disconnected gracefully.
            if self.socket.close(&self.control, worker.clone()).is_ok() {
                self.control_kind = Control::Close;
            }
            return;
        }
        if self.context.is_valid() {
            if self.delete_context_async(worker) {
                // Its callback brings the drain back here.
                return;
            }
            // It could not be queued: delete it here (the LSA answers at once).
            self.context.delete();
        }
        Deadline::disarm(&self.deadline);
        self.sspi = None;
        self.credential = None;
        self.phase = Phase::Done;
        {
            let mut m = conn.mailbox.lock();
            m.state = State::Closed;
            m.outgoing.clear();
        }
        // The census entry is not given back here but with the session's memory, when the
        // last reference goes — maybe at the end of the SSPI notify callback or WSK completion
        // that held it: an unload waiting for the census cannot overtake driver code that is
        // still running for this session.
    }
}
