//! The network side: resolving the host name (WskGetAddressInfo), connecting
//! (WskSocketConnect), and the receive, send and control IRPs with their completions.

use super::*;

impl<O: Observer> Engine<O> {
    pub(super) fn start_resolve(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>) {
        let Some((npi, _, _)) = self.client else {
            return;
        };
        let started = self.resolution.start(&npi, &self.control, worker.clone());
        match started {
            Ok(()) => self.control_kind = Control::Resolve,
            Err(status) if status == STATUS_INVALID_PARAMETER => {
                self.fail_or_end(conn, Some(Error::net(status)))
            }
            Err(_) => {}
        }
    }

    /// Takes the first IPv4 answer (else IPv6) into the remote address, keeping its port, and
    /// frees the list.
    pub(super) fn take_resolved(&mut self) -> bool {
        let Some((npi, local, remote)) = self.client.as_mut() else {
            return false;
        };
        let port = [remote.data[0], remote.data[1]];
        match self.resolution.take_address(npi, &self.control) {
            Some(mut s) => {
                s.data[0..2].copy_from_slice(&port);
                *remote = s;
                *local = SOCKADDR_STORAGE {
                    ss_family: s.ss_family,
                    data: [0; 126],
                };
                true
            }
            None => false,
        }
    }

    pub(super) fn start_connect(&mut self, worker: &Worker<Conn<O>>) {
        let Some((npi, local, remote)) = self.client else {
            return;
        };
        let connecting = self
            .socket
            .connect(&npi, &local, &remote, &self.control, worker.clone());
        if connecting.is_ok() {
            self.control_kind = Control::Connect;
        }
    }

    pub(super) fn start_receive(&mut self, worker: &Worker<Conn<O>>) {
        if !self.socket.is_open() || !self.recv.is_idle() {
            return;
        }
        self.size_receive_buffer();
        if self.rx_len >= self.rx.len() {
            return;
        }
        // The receive buffer is the call's until its result is taken (see `Buffer::lend`).
        let (at, len) = (self.rx_len, self.rx.len() - self.rx_len);
        let _ = self
            .socket
            .receive(&self.recv, worker.clone(), &self.rx, at, len);
    }

    pub(super) fn start_send(&mut self, worker: &Worker<Conn<O>>, len: usize) {
        let _ = self.socket.send(&self.send, worker.clone(), &self.tx, 0, len);
    }

    /// The control IRP's result, if its call completed (a connect's result brings the socket).
    pub(super) fn take_control(&mut self) -> Option<NTSTATUS> {
        match self.control_kind {
            Control::Connect => self.socket.take_connected(&self.control),
            _ => self.control.take().map(|(status, _)| status),
        }
    }

    pub(super) fn control_completed(&mut self, conn: &Conn<O>, status: NTSTATUS) {
        let kind = core::mem::replace(&mut self.control_kind, Control::None);
        match kind {
            Control::Resolve => {
                // Whatever the status, a list the provider returned is freed here.
                let found = self.take_resolved() && nt_success(status);
                if self.phase == Phase::Resolving {
                    if found {
                        self.phase = Phase::Connecting;
                    } else {
                        let why = if nt_success(status) {
                            STATUS_NOT_FOUND
                        } else {
                            status
                        };
                        self.fail_or_end(conn, Some(Error::net(why)));
                    }
                }
            }
            Control::Connect => {
                if nt_success(status) && self.socket.is_open() {
                    if self.phase == Phase::Connecting {
                        self.phase = Phase::Handshaking;
                    }
                } else if nt_success(status) {
                    self.fail_or_end(conn, Some(Error::net(STATUS_UNSUCCESSFUL)));
                } else if self.phase == Phase::Connecting {
                    self.fail_or_end(conn, Some(Error::net(status)));
                }
            }
            Control::Disconnect => {
                self.outbound = Outbound::Disconnected;
                if nt_success(status) {
                    conn.mailbox.lock().shutdown_done = true;
                } else {
                    self.fail_or_end(conn, Some(Error::net(status)));
                }
            }
            Control::Close => {
                // Closing always releases the socket, whatever the status says.
                self.socket.forget();
            }
            Control::None => {}
        }
    }

    pub(super) fn send_completed(&mut self, conn: &Conn<O>, status: NTSTATUS) {
        if !nt_success(status) {
            self.fail_or_end(conn, Some(Error::net(status)));
        }
    }

    pub(super) fn receive_completed(&mut self, conn: &Conn<O>, status: NTSTATUS, n: usize) {
        if self.phase == Phase::Releasing {
            // Ending: nothing is read any more; only the peer's FIN (or its loss) matters.
            self.rx_len = 0;
            if !nt_success(status) && status != STATUS_CANCELLED {
                // The peer is gone: no graceful end can reach it.
                self.give_up_graceful_end();
            } else if nt_success(status) && n == 0 {
                self.inbound = Inbound::Fin;
            }
            return;
        }
        if core::mem::take(&mut self.shrinking) && status == STATUS_CANCELLED {
            // Our own cancel (see `quiet_check`): the next receive gets a quiet buffer.
            return;
        }
        if !nt_success(status) {
            self.fail_or_end(conn, Some(Error::net(status)));
            return;
        }
        if n == 0 {
            self.inbound = Inbound::Fin;
            if self.phase != Phase::Open {
                // The peer left mid-handshake.
                self.fail_or_end(conn, Some(Error::net(STATUS_CONNECTION_DISCONNECTED)));
            } else {
                conn.mailbox.lock().peer_ended = true;
            }
            return;
        }
        // Streaming: the receive filled its room or brought more than a record. Quiet: it
        // brought a fraction of one. In between the buffer stays as it is (no flapping).
        let room = self.rx.len() - self.rx_len;
        if n >= room && self.rx.len() < RX_QUIET {
            // An idle buffer filled: at least a whole record's room.
            self.rx_wanted = RX_QUIET;
        } else if n >= room || n > RX_QUIET {
            // Four times larger per filling receive: a burst of a few records stops at four,
            // a sustained stream reaches sixteen.
            let grown = self.rx.len().saturating_mul(4).clamp(RX_QUIET, RX_BUSY);
            self.rx_wanted = self.rx_wanted.max(grown);
        } else if n < RX_QUIET / 4 && self.rx.len() > RX_QUIET {
            self.rx_wanted = RX_QUIET;
        }
        self.rx_len += n;
        match self.phase {
            Phase::Handshaking => self.input_arrived(),
            Phase::Open if self.released && self.inbound != Inbound::Open => {
                // After the peer's close_notify, with no owner: nothing more is read.
                self.rx_len = 0;
            }
            Phase::Open => {
                conn.mailbox.lock().counters.record_receives += 1;
                self.input_arrived();
                self.decrypt_all(conn);
                if self.released {
                    conn.mailbox.lock().incoming.clear();
                }
            }
            _ => {}
        }
    }
}
