//! The owner's side: what a driver calls on its [`Session`]. Every method only touches the
//! mailbox (under its spin lock) and signals the work item; none blocks or calls WSK or SSPI.

use super::*;
use super::handshake::alpn_blob;
use super::records::take_front;

impl<O: Observer> Session<O> {
    /// Starts a session: a client connects first, a server handshakes on its accepted socket.
    /// On error nothing was started (and a server's socket is still the caller's).
    ///
    /// # Safety
    /// `device` must be a live device object of the calling driver, kept until the session
    /// has finished (its work item references it); a server socket must be a connection socket
    /// no one else uses.
    pub unsafe fn start(
        device: *mut DEVICE_OBJECT,
        config: Config,
        credential: PoolArc<Credential>,
        observer: O,
    ) -> Result<Session<O>, NTSTATUS> {
        // SAFETY: per the contract.
        let session = unsafe { Self::create(device, config, credential, observer) }?;
        session.worker.signal(EV_USER);
        Ok(session)
    }

    /// As [`Self::start`], but the session's first run waits for the returned hold: dropped at
    /// PASSIVE_LEVEL with no lock held that the observer takes, it starts the connection on
    /// that thread (no hand-off to a system worker); dropped elsewhere, the work item does.
    ///
    /// # Safety
    /// As for [`Self::start`].
    pub unsafe fn start_held(
        device: *mut DEVICE_OBJECT,
        config: Config,
        credential: PoolArc<Credential>,
        observer: O,
    ) -> Result<(Session<O>, SessionHold<O>), NTSTATUS> {
        // SAFETY: per the contract.
        let session = unsafe { Self::create(device, config, credential, observer) }?;
        let hold = session.hold();
        session.worker.signal(EV_USER);
        Ok((session, hold))
    }

    /// The session, its work item and engine, not yet signalled.
    ///
    /// # Safety
    /// As for [`Self::start`].
    unsafe fn create(
        device: *mut DEVICE_OBJECT,
        config: Config,
        credential: PoolArc<Credential>,
        observer: O,
    ) -> Result<Session<O>, NTSTATUS> {
        let (server, socket, client, target) = match config.role {
            Role::Server { socket } => (true, socket, None, (Vec::new(), None)),
            Role::Client {
                npi,
                remote,
                target,
                resolve,
            } => {
                let local = SOCKADDR_STORAGE {
                    ss_family: remote.ss_family,
                    data: [0; 126],
                };
                (
                    false,
                    core::ptr::null_mut(),
                    Some((npi, local, remote)),
                    (target, resolve),
                )
            }
        };
        let (target, resolve) = target;
        let alpn_blob = alpn_blob(&config.alpn)?;
        let engine = Engine {
            phase: if server {
                Phase::Handshaking
            } else if resolve.is_some() {
                Phase::Resolving
            } else {
                Phase::Connecting
            },
            resolution: Resolution::try_new(resolve.unwrap_or_default())?,
            // SAFETY: per the contract, a server's socket is a connection socket nobody else
            // uses (a client's is NULL until it connects).
            socket: unsafe { ConnectionSocket::from_raw(socket) },
            client,
            send: IrpOp::try_new(EV_SEND, device)?,
            recv: IrpOp::try_new(EV_RECV, device)?,
            control: IrpOp::try_new(EV_CONTROL, device)?,
            control_kind: Control::None,
            tx: Buffer::try_new(TX_HANDSHAKE)?,
            rx: Buffer::try_new(RX_QUIET)?,
            peak_buffers: TX_HANDSHAKE + RX_QUIET,
            rx_wanted: RX_QUIET,
            shrinking: false,
            rx_len: 0,
            sspi: None,
            // The server's first step needs the client's hello.
            sspi_call: if server {
                SspiCall::AwaitingInput
            } else {
                SspiCall::Idle
            },
            sspi_status: SEC_E_OK,
            credential: Some(credential),
            context: SecurityContext::try_new(target, alpn_blob)?,
            exchange: Exchange::NotStarted,
            sizes: SecPkgContext_StreamSizes::default(),
            failure: None,
            outbound: Outbound::Open,
            inbound: Inbound::Open,
            pending_token: 0,
            ending: Ending::Close,
            deadline: Deadline::try_new(EV_TIMER)?,
            timer: Timer::Idle,
            handshake_timeout_ms: config.handshake_timeout_ms,
            pinned: config.pinned,
            keep_peer_certificates: config.keep_peer_certificates,
            peer_chain: Vec::new(),
            _census: config.census.as_ref().map(Census::enter),
            released: false,
        };
        let conn = Conn {
            mailbox: SpinLock::new(Mailbox {
                snapshot: Snapshot::default(),
                state: State::Handshaking,
                negotiated: None,
                failure: None,
                outgoing: VecDeque::new(),
                incoming: VecDeque::new(),
                peer_certificates: Vec::new(),
                peer_ended: false,
                shutdown_requested: false,
                shutdown_done: false,
                abort_requested: false,
                released: false,
                counters: Counters::default(),
            }),
            server,
            require_client_certificate: config.require_client_certificate,
            max_queued: config.max_queued.max(1),
            receive_window: config.receive_window.max(1),
            observer,
        };
        // SAFETY: per the contract.
        let worker = unsafe { Worker::try_new(device, conn, engine) }?;
        Ok(Session { worker })
    }

    /// Defers the session's work while the caller changes it under a lock of its own that its
    /// observer also takes (a driver's object lock around [`Self::send`] or [`Self::recv`]):
    /// drop the hold once that lock is released, and the work runs right there if the thread is
    /// at PASSIVE_LEVEL — a SEND's records are encrypted and handed to WSK on the caller's
    /// thread — else on the work item. Never blocks.
    pub fn hold(&self) -> SessionHold<O> {
        SessionHold {
            _held: self.worker.hold(),
        }
    }

    /// How many runs of the session's work went inline on a caller's thread (when a
    /// [`Self::hold`] was dropped) instead of a system worker.
    pub fn inline_runs(&self) -> u32 {
        self.worker.inline_runs()
    }

    /// Where the connection is.
    pub fn state(&self) -> State {
        self.worker.target().mailbox.lock().state
    }

    /// What was negotiated, once open.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.worker.target().mailbox.lock().negotiated
    }

    /// Lends the peer's certificate chain — `[u32 length][DER]` per certificate, leaf first, as
    /// SECPKG_ATTR_REMOTE_CERTIFICATES gives it — if [`crate::ClientConfigBuilder::keep_peer_certificates`] asked for
    /// it and the handshake finished (empty otherwise). Called under the session's lock: keep it
    /// short (a copy).
    pub fn with_peer_certificates<R>(&self, read: impl FnOnce(&[u8]) -> R) -> R {
        read(&self.worker.target().mailbox.lock().peer_certificates)
    }

    /// Why the connection failed, if it did.
    pub fn failure(&self) -> Option<Error> {
        self.worker.target().mailbox.lock().failure
    }

    /// Bytes moved so far, how many WSK calls carried them, and the buffer bytes held (as of
    /// the last drain).
    pub fn counters(&self) -> Counters {
        self.worker.target().mailbox.lock().counters
    }

    /// Queues plaintext: returns how many bytes were taken (0 when the queue is full — wait for
    /// [`Observer::changed`]). Err once the connection is closed, failed or shut down.
    pub fn send(&self, data: &[u8]) -> Result<usize, Error> {
        let conn = self.worker.target();
        let taken = {
            let mut m = conn.mailbox.lock();
            if let Some(f) = m.failure {
                return Err(f);
            }
            if m.state == State::Closed || m.shutdown_requested || m.abort_requested {
                return Err(Error::closed());
            }
            let room = conn.max_queued.saturating_sub(m.outgoing.len());
            let n = room.min(data.len());
            if m.outgoing.try_reserve(n).is_err() {
                return Err(Error::out_of_memory());
            }
            m.outgoing.extend(&data[..n]);
            n
        };
        if taken > 0 {
            self.worker.signal(EV_USER);
        }
        Ok(taken)
    }

    /// Plaintext accepted but not yet handed to WSK.
    pub fn queued(&self) -> usize {
        self.worker.target().mailbox.lock().outgoing.len()
    }

    /// Whether [`Self::recv`] would return something other than `Pending` (nothing is consumed).
    pub fn readable(&self) -> bool {
        let m = self.worker.target().mailbox.lock();
        !m.incoming.is_empty() || m.peer_ended || m.failure.is_some() || m.state == State::Closed
    }

    /// Copies received plaintext into `out`.
    pub fn recv(&self, out: &mut [u8]) -> Received {
        let conn = self.worker.target();
        let result = {
            let mut m = conn.mailbox.lock();
            if !m.incoming.is_empty() && !out.is_empty() {
                Received::Data(take_front(&mut m.incoming, out))
            } else if m.peer_ended {
                Received::End
            } else if let Some(f) = m.failure {
                Received::Failed(f)
            } else if m.state == State::Closed {
                Received::End
            } else {
                Received::Pending
            }
        };
        if matches!(result, Received::Data(_)) {
            // Room in the window: the drain may post a receive again.
            self.worker.signal(EV_USER);
        }
        result
    }

    /// Sends close_notify once everything queued is out, then disconnects gracefully; the
    /// peer may still send until it closes. [`Self::is_shut_down`] tells when it is done.
    pub fn shutdown(&self) {
        self.worker.target().mailbox.lock().shutdown_requested = true;
        self.worker.signal(EV_USER);
    }

    /// Whether close_notify and the graceful disconnect went out.
    pub fn is_shut_down(&self) -> bool {
        self.worker.target().mailbox.lock().shutdown_done
    }

    /// Lets the session go. One the owner shut down ([`Session::shutdown`]) finishes its graceful
    /// close on its own: the queued bytes drain, close_notify and the FIN go out, and the
    /// socket closes once the peer's FIN arrived — closing earlier would reset the connection
    /// and make the peer lose what it had not read yet. All of it is bounded (10 s), then the
    /// connection is reset; the census counts the session until it is gone. Any other session
    /// is aborted, as dropping it does.
    pub fn release(self) {
        let graceful = {
            let mut m = self.worker.target().mailbox.lock();
            // Shut down by the owner, or failed and already ending on its own (its alert and
            // FIN still on the way).
            let ending = m.failure.is_some() && m.state != State::Closed;
            m.released =
                !m.abort_requested && (ending || (m.shutdown_requested && m.state == State::Open));
            m.released
        };
        if graceful {
            self.worker.signal(EV_USER);
        }
    }

    /// Ends the connection now (pending calls cancelled, the socket reset if still connected).
    pub fn abort(&self) {
        self.worker.target().mailbox.lock().abort_requested = true;
        self.worker.signal(EV_USER);
    }

    /// One line on where the session stands: its state, queues and what its engine was
    /// waiting for when it last ran (for diagnostics of a request that waited too long).
    pub fn describe(&self) -> alloc::string::String {
        let (state, outgoing, incoming, snapshot) = {
            let m = self.worker.target().mailbox.lock();
            (m.state, m.outgoing.len(), m.incoming.len(), m.snapshot)
        };
        alloc::format!(
            "state {state:?}, {outgoing} byte(s) queued to send, {incoming} received unread, \
             runs {}, engine {snapshot:?}",
            self.worker.runs(),
        )
    }

    /// The owner-supplied observer.
    pub fn observer(&self) -> &O {
        &self.worker.target().observer
    }
}

impl<O: Observer> Drop for Session<O> {
    fn drop(&mut self) {
        if !self.worker.target().mailbox.lock().released {
            self.abort();
        }
    }
}
