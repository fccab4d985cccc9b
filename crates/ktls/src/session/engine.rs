//! The drain: what one run of the session's work item does — the handshake deadline, the
//! quiet watch, completions taken in order, then the phase moved on as far as it can go.

use super::*;

impl<O: Observer> Drain for Conn<O> {
    type Exclusive = Engine<O>;

    fn drain(worker: &Worker<Self>, engine: &mut Engine<O>, events: u32) {
        let conn = worker.target();
        engine.drain(conn, worker, events);
        conn.observer.changed();
    }
}

impl<O: Observer> Engine<O> {
    pub(super) fn drain(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>, events: u32) {
        if self.phase == Phase::Done {
            return;
        }
        let handshaking = matches!(
            self.phase,
            Phase::Resolving | Phase::Connecting | Phase::Handshaking
        );
        if handshaking && self.timer == Timer::Idle && self.handshake_timeout_ms > 0 {
            let armed = Deadline::arm(&self.deadline, worker.clone(), self.handshake_timeout_ms);
            if armed.is_ok() {
                self.timer = Timer::Handshake;
            }
        }
        if events & EV_TIMER != 0 && handshaking && self.deadline.expired() {
            self.fail_or_end(conn, Some(Error::net(STATUS_IO_TIMEOUT)));
        }
        if events & EV_TIMER != 0
            && self.phase == Phase::Releasing
            && self.ends_gracefully()
            && self.timer == Timer::End
            && self.deadline.expired()
        {
            // The alert, our FIN or the peer's FIN did not get through in time: reset.
            self.end_abruptly();
        }
        if events & EV_TIMER != 0 && self.phase == Phase::Open && self.deadline.expired() {
            if !self.released {
                self.quiet_check(conn, worker);
            } else if self.timer == Timer::Release {
                // The graceful close took too long (a peer that never reads or never closes).
                self.fail_or_end(conn, None);
            } else {
                self.arm_release(worker);
            }
        }
        if events & EV_SSPI != 0 && self.sspi_busy() {
            if let Some(op) = &self.sspi {
                let status = op.status();
                if status != SEC_I_ASYNC_CALL_PENDING {
                    match core::mem::replace(&mut self.sspi_call, SspiCall::Idle) {
                        // Whatever its status, the handle is gone.
                        SspiCall::DeletingContext => self.context.forget(),
                        SspiCall::Step { input } => {
                            self.sspi_status = status;
                            self.sspi_completed(conn, status, input);
                        }
                        SspiCall::Idle | SspiCall::AwaitingInput => {}
                    }
                }
            }
        }
        if let Some(status) = self.take_control() {
            self.control_completed(conn, status);
        }
        if let Some((status, _)) = self.send.take() {
            self.send_completed(conn, status);
        }
        if let Some((status, n)) = self.recv.take() {
            self.receive_completed(conn, status, n);
        }
        let (abort, shutdown, released) = {
            let m = conn.mailbox.lock();
            (m.abort_requested, m.shutdown_requested, m.released)
        };
        if abort && self.phase != Phase::Releasing {
            self.fail_or_end(conn, None);
        }
        if abort && self.ends_gracefully() && !released {
            self.end_abruptly();
        }
        if released && !self.released && self.phase == Phase::Open {
            self.released = true;
            self.timer = Timer::Idle;
            Deadline::disarm(&self.deadline);
            self.arm_release(worker);
        }
        self.advance(conn, worker, shutdown);
        let mut m = conn.mailbox.lock();
        m.counters.buffer_bytes = self.tx.len() + self.rx.len();
        m.counters.peak_buffer_bytes = self.peak_buffers;
        m.snapshot = Snapshot {
            phase: Some(self.phase),
            events,
            sspi_call: Some(self.sspi_call),
            exchange: Some(self.exchange),
            send_idle: self.send.is_idle(),
            recv_idle: self.recv.is_idle(),
            control: Some(self.control_kind),
            pending_token: self.pending_token,
            rx_len: self.rx_len,
            ending: Some(self.ending),
            inbound: Some(self.inbound),
            outbound: Some(self.outbound),
        };
    }

    /// Starts whatever can start now.
    pub(super) fn advance(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>, shutdown: bool) {
        let before = self.phase;
        self.advance_phase(conn, worker, shutdown);
        // A step that failed just now (an EncryptMessage, a call that could not be queued) must
        // start the teardown at once: no completion may be coming to run the drain again.
        if self.phase == Phase::Releasing && before != Phase::Releasing {
            self.release_step(conn, worker);
        }
    }

    pub(super) fn advance_phase(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>, shutdown: bool) {
        match self.phase {
            Phase::Resolving => {
                if self.control_kind == Control::None {
                    self.start_resolve(conn, worker);
                }
            }
            Phase::Connecting => {
                if self.control_kind == Control::None {
                    self.start_connect(worker);
                }
            }
            Phase::Handshaking => {
                if self.pending_token > 0 {
                    if self.send.is_idle() {
                        let len = core::mem::take(&mut self.pending_token);
                        self.start_send(worker, len);
                    }
                } else if !self.sspi_busy() && self.send.is_idle() {
                    if self.needs_input() {
                        self.start_receive(worker);
                    } else {
                        self.handshake_step(conn, worker);
                    }
                }
            }
            Phase::Open => {
                if self.pending_token > 0 {
                    // The last flight (TLS 1.3 tickets) or a KeyUpdate answer goes out first:
                    // the token lives in the send buffer, which the next step would overwrite.
                    if self.send.is_idle() {
                        let len = core::mem::take(&mut self.pending_token);
                        self.start_send(worker, len);
                    }
                } else if self.exchange == Exchange::PostHandshake {
                    if self.sspi_call == SspiCall::Idle && self.send.is_idle() {
                        self.handshake_step(conn, worker);
                    }
                } else if self.send.is_idle() && self.ending == Ending::Close {
                    self.fill_send(conn, worker);
                }
                if self.phase == Phase::Open && shutdown {
                    self.shutdown_step(conn, worker);
                }
                // While a post-handshake message is answered `rx` is ISC/ASC's input and is
                // compacted when it returns: receive only when that call asked for more.
                let receive = self.exchange != Exchange::PostHandshake || self.needs_input();
                // Released: nobody reads any more; after our FIN, receive (and drop) until
                // the peer's FIN, then close without a reset.
                let linger = self.released
                    && self.outbound == Outbound::Disconnected
                    && self.inbound != Inbound::Fin;
                if self.phase == Phase::Open
                    && (self.inbound == Inbound::Open || linger)
                    && receive
                    && (self.released || self.window_open(conn))
                {
                    self.start_receive(worker);
                }
                if self.phase == Phase::Open
                    && self.released
                    && self.outbound == Outbound::Disconnected
                    && self.inbound == Inbound::Fin
                {
                    self.fail_or_end(conn, None);
                }
                // Buffers beyond an idle connection's are given back once nothing moves.
                if self.phase == Phase::Open
                    && !self.released
                    && !matches!(self.timer, Timer::Quiet { .. })
                    && self.holds_more_than_idle()
                {
                    self.watch_quiet(conn, worker);
                }
            }
            Phase::Releasing => self.release_step(conn, worker),
            Phase::Done => {}
        }
    }

    /// Whether an SSPI call is in flight (the context and the buffers it was given are its).
    pub(super) fn sspi_busy(&self) -> bool {
        matches!(self.sspi_call, SspiCall::Step { .. } | SspiCall::DeletingContext)
    }

    /// Whether the next ISC/ASC step waits for bytes (no call is in flight then).
    pub(super) fn needs_input(&self) -> bool {
        self.sspi_call == SspiCall::AwaitingInput
    }

    /// More bytes arrived: a step that waited for them may go.
    pub(super) fn input_arrived(&mut self) {
        if self.sspi_call == SspiCall::AwaitingInput {
            self.sspi_call = SspiCall::Idle;
        }
    }

    /// The next step waits for bytes (called when no call is in flight).
    pub(super) fn await_input(&mut self) {
        if self.sspi_call == SspiCall::Idle {
            self.sspi_call = SspiCall::AwaitingInput;
        }
    }

    pub(super) fn window_open(&self, conn: &Conn<O>) -> bool {
        conn.mailbox.lock().incoming.len() < conn.receive_window
    }
}
