//! A TLS connection in the kernel: a WSK connection socket, kernel Schannel driven through its
//! asynchronous calls, and one work item that advances both.
//!
//! Shape:
//! - [`Session`] is the owner's handle (an IOCTL layer, a test). Its methods only touch the
//!   *mailbox* (a spin-locked queue of plaintext each way plus requests) and signal the work item;
//!   they never block and never call WSK or SSPI.
//! - The *engine* (socket, IRPs, buffers, security context) is touched only by the work item's
//!   drain, which never runs twice at once; completions (WSK IRPs at ≤ DISPATCH_LEVEL, SSPI notify
//!   callbacks, maybe inline) only record a result and signal it.
//! - Every in-flight call holds a reference to the session, so the owner may drop its handle at
//!   any moment: that aborts the connection, and the last reference goes once every call has come
//!   back. Resources that need PASSIVE_LEVEL (security context, async context, credential, socket)
//!   are released by the drain itself, never by a completion.
//!
//! Handshake: the client connects, then calls InitializeSecurityContext (target name = SNI) with
//! no input; the server calls AcceptSecurityContext on what the peer sent. Each step: send the
//! output token, keep SECBUFFER_EXTRA at the front of the receive buffer, receive more on
//! SEC_E_INCOMPLETE_MESSAGE, and on failure send the alert token before closing. Records:
//! EncryptMessage per ≤ cbMaximumMessage chunk (up to four records per WskSend), DecryptMessage in
//! place with EXTRA carried over, TLS 1.3 post-handshake messages, close_notify via
//! EncryptMessage(SECQOP_WRAP_OOB_DATA, {1, 0}) then a graceful WskDisconnect.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ffi::c_void;

use ksys::imports::*;
use ksys::io::{DEVICE_OBJECT, IRP};
use ksys::ntdef::*;
use ksys::schannel::{
    SecPkgContext_Certificates, SecPkgContext_CipherInfo, SecPkgContext_ConnectionInfo,
};
use ksys::sspi::*;
use ksys::wsk::*;

use crate::census::{Census, Entry};
use crate::credential::Credential;
use crate::deadline::Deadline;
use crate::error::Error;
use crate::pool::PoolArc;
use crate::sspi::AsyncOp;
use crate::sync::SpinLock;
use crate::work::{Drain, Worker};
use crate::wsk::{Buffer, IrpOp};

/// Event bits of a session's work item.
const EV_SSPI: u32 = 1;
const EV_SEND: u32 = 2;
const EV_RECV: u32 = 4;
const EV_CONTROL: u32 = 8;
const EV_USER: u32 = 16;
const EV_TIMER: u32 = 32;

/// Most plaintext one TLS record carries.
const MAX_PLAINTEXT: usize = 16384;
/// Most ciphertext one TLS record takes on the wire (16 KiB + 256 expansion + 5 header).
const MAX_RECORD: usize = MAX_PLAINTEXT + 256 + 5;
/// Room one record takes in the send buffer (its plaintext, header and trailer).
const TX_RECORD: usize = MAX_PLAINTEXT + 64;
/// Receive buffer of a handshaking or quiet connection: one maximum record with its header and
/// trailer (records are decrypted in place; the start of the next one moves to the front).
const RX_QUIET: usize = MAX_RECORD;
/// Receive buffer while data streams in (a receive filled all the room it had): up to four
/// records per WskReceive, so a busy connection costs a quarter of the completions.
const RX_BUSY: usize = 4 * MAX_RECORD;
/// Receive buffer of an idle connection: its receive is reposted with this once nothing has come
/// or gone for [`QUIET_AFTER_MS`]; a record that does not fit makes the buffer grow again.
const RX_IDLE: usize = 4096;
/// After this long with nothing received or sent, an established connection gives its buffers
/// back: the send buffer entirely, the receive buffer down to [`RX_IDLE`] (its receive is
/// cancelled and reposted). Idle connections hold little pool.
const QUIET_AFTER_MS: u32 = 200;
/// Send buffer while handshaking: room for a flight with a long certificate chain.
const TX_HANDSHAKE: usize = 2 * TX_RECORD;
/// Send buffer of an established connection with nothing queued: one record (close_notify, a
/// KeyUpdate answer, TLS 1.3 tickets).
const TX_QUIET: usize = TX_RECORD;
/// Send buffer while more than a record is queued: four records per WskSend.
const TX_BUSY: usize = 4 * TX_RECORD;
/// How long a released connection may take to finish its graceful close (drain its queue,
/// close_notify, FIN, the peer's FIN) before it is reset.
const RELEASE_TIMEOUT_MS: u32 = 10_000;
/// How long a failed connection may take to deliver its alert and FIN and see the peer's FIN
/// before it is reset.
const END_TIMEOUT_MS: u32 = 5_000;
/// Largest handshake token the send buffer grows to when Schannel says it needs more.
const MAX_HANDSHAKE_TOKEN: usize = 256 * 1024;
/// Room for an alert SSPI may return separately from the token.
const ALERT_CAPACITY: usize = 64;

/// Hears that something the owner can see changed (called from the work item, PASSIVE_LEVEL).
pub trait Observer: Send + Sync + 'static {
    /// Handshake finished or failed, data arrived, send room opened, or the connection closed.
    fn changed(&self);
}

/// Which side of the handshake.
pub enum Role {
    /// AcceptSecurityContext on an accepted socket.
    Server {
        /// The socket WskAccept returned (the session owns and closes it).
        socket: *mut WSK_SOCKET,
    },
    /// WskSocketConnect, then InitializeSecurityContext.
    Client {
        /// The provider to connect through.
        npi: WSK_PROVIDER_NPI,
        /// Where to connect (SOCKADDR_IN or SOCKADDR_IN6, Windows layout).
        remote: SOCKADDR_STORAGE,
        /// The target name (SNI and the name validated), UTF-16 without NUL; may be empty.
        target: Vec<u16>,
        /// A host name to resolve (WskGetAddressInfo) before connecting; `remote` then only
        /// supplies the port. IPv4 answers are preferred, then IPv6.
        resolve: Option<Vec<u16>>,
    },
}

// SAFETY: the socket and NPI pointers are kernel objects usable from any thread.
unsafe impl Send for Role {}

/// How a session behaves.
pub struct Config {
    /// Server or client, with what each needs.
    pub role: Role,
    /// ALPN protocol ids in wire format (length-prefixed), empty for none.
    pub alpn: Vec<u8>,
    /// Server: require a client certificate (ASC_REQ_MUTUAL_AUTH).
    pub require_client_certificate: bool,
    /// Plaintext bytes accepted by [`Session::send`] and not yet sent.
    pub max_queued: usize,
    /// Plaintext bytes received and not yet read before receiving pauses.
    pub receive_window: usize,
    /// Connect plus handshake must finish within this many milliseconds (0: no limit);
    /// otherwise the session fails with STATUS_IO_TIMEOUT.
    pub handshake_timeout_ms: u32,
    /// Client: accept only a server certificate with this SHA-256 (the credential should then
    /// skip chain validation, SCH_CRED_MANUAL_CRED_VALIDATION); a different one fails the
    /// session with [`STATUS_PIN_MISMATCH`] (and SEC_E_UNTRUSTED_ROOT).
    pub pinned: Option<[u8; 32]>,
    /// Keep the peer's certificate chain after the handshake (see
    /// [`Session::with_peer_certificates`]); off, nothing is kept (it costs pool).
    pub keep_peer_certificates: bool,
    /// Counts the session until it has released every kernel resource (see [`Census`]).
    pub census: Option<Census>,
}

/// What the handshake settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// SP_PROT_* of the protocol (SECPKG_ATTR_CONNECTION_INFO).
    pub protocol: u32,
    /// IANA cipher suite (SECPKG_ATTR_CIPHER_INFO).
    pub cipher_suite: u32,
    /// Bytes of `alpn` in use.
    pub alpn_len: u8,
    /// The negotiated ALPN id.
    pub alpn: [u8; 255],
    /// SHA-256 of the peer's certificate (its leaf), if it presented one.
    pub peer_certificate: Option<[u8; 32]>,
    /// Schannel's stream sizes (SECPKG_ATTR_STREAM_SIZES): header, trailer, maximum message —
    /// a value kemu can only model, reported so real Windows shows its own.
    pub stream_sizes: [u32; 3],
}

impl Negotiated {
    /// The negotiated ALPN id (empty if none).
    pub fn alpn(&self) -> &[u8] {
        &self.alpn[..self.alpn_len as usize]
    }
}

/// Where the connection is, as its owner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Connecting or handshaking.
    Handshaking,
    /// Application data flows.
    Open,
    /// Ended (gracefully, or with the failure [`Session::failure`] reports); resources released.
    Closed,
}

/// Result of [`Session::recv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// This many plaintext bytes were copied out.
    Data(usize),
    /// Nothing yet: wait for [`Observer::changed`].
    Pending,
    /// The peer ended its side (close_notify or TCP FIN) and every byte was read.
    End,
    /// The connection failed.
    Failed(Error),
}

/// Counters of one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Plaintext bytes encrypted and handed to WSK.
    pub sent: u64,
    /// Plaintext bytes decrypted.
    pub received: u64,
    /// WskSend calls that carried records (how well records are packed per call).
    pub record_sends: u64,
    /// WskReceive completions with data once open.
    pub record_receives: u64,
    /// Bytes the send and receive buffers hold now: pool a connection keeps for its I/O.
    pub buffer_bytes: usize,
    /// Post-handshake messages answered (TLS 1.3 tickets and KeyUpdates: each one a
    /// SEC_I_RENEGOTIATE and an ISC/ASC call).
    pub post_handshake_messages: u64,
}

/// What the engine looked like when its drain last finished: for reports about a request
/// that waited too long (see [`Session::describe`]).
#[derive(Clone, Copy, Debug, Default)]
#[allow(dead_code)] // read through Debug
struct Snapshot {
    phase: Option<Phase>,
    events: u32,
    sspi_pending: bool,
    renegotiate: bool,
    need_input: bool,
    send_idle: bool,
    recv_idle: bool,
    control: Option<Control>,
    pending_token: usize,
    rx_len: usize,
    release_after_send: bool,
    peer_ended: bool,
}

struct Mailbox {
    snapshot: Snapshot,
    state: State,
    negotiated: Option<Negotiated>,
    failure: Option<Error>,
    outgoing: VecDeque<u8>,
    incoming: VecDeque<u8>,
    /// The peer's chain as SECPKG_ATTR_REMOTE_CERTIFICATES gives it, if asked to keep it.
    peer_certificates: Vec<u8>,
    peer_ended: bool,
    shutdown_requested: bool,
    shutdown_done: bool,
    abort_requested: bool,
    /// The owner let go of a session it had shut down (see [`Session::release`]).
    released: bool,
    counters: Counters,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Resolving,
    Connecting,
    Handshaking,
    Open,
    /// Tearing down: waiting for calls in flight, then closing the socket.
    Releasing,
    Done,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Control {
    None,
    Resolve,
    Connect,
    Disconnect,
    Close,
}

/// The storage one ISC/ASC call writes at completion: it must stay put until the callback.
struct SspiCall {
    input: [SecBuffer; 3],
    input_desc: SecBufferDesc,
    output: [SecBuffer; 3],
    output_desc: SecBufferDesc,
    new_context: SecHandle,
    attributes: u32,
    expiry: TimeStamp,
    target: UNICODE_STRING,
    alert: [u8; ALERT_CAPACITY],
}

type Op<O> = PoolArc<IrpOp<Worker<Conn<O>>>>;

struct Engine<O: Observer> {
    phase: Phase,
    socket: *mut WSK_SOCKET,
    client: Option<(WSK_PROVIDER_NPI, SOCKADDR_STORAGE, SOCKADDR_STORAGE)>,
    target: Vec<u16>,
    /// Host name to resolve first (empty: none).
    resolve_name: Vec<u16>,
    /// WskGetAddressInfo's result while the call is in flight (freed at completion).
    resolved: *mut ADDRINFOEXW,
    alpn_blob: Vec<u8>,
    send: Op<O>,
    recv: Op<O>,
    control: Op<O>,
    control_kind: Control,
    tx: Buffer,
    rx: Buffer,
    /// What the receive buffer should be (see [`Engine::size_receive_buffer`]).
    rx_wanted: usize,
    /// Open: the deadline watches the buffers (see [`QUIET_AFTER_MS`]); the record receives and
    /// sends counted when it was armed.
    quiet_watch: Option<(u64, u64)>,
    /// The receive in flight was cancelled to shrink its buffer (its STATUS_CANCELLED is ours).
    shrinking: bool,
    rx_len: usize,
    sspi: Option<AsyncOp>,
    sspi_pending: bool,
    /// The SSPI call in flight is SspiDeleteSecurityContextAsync (teardown).
    deleting_context: bool,
    sspi_status: SECURITY_STATUS,
    credential: Option<PoolArc<Credential>>,
    context: SecHandle,
    call: SspiCall,
    handshake_started: bool,
    /// The handshake needs more bytes than `rx` holds.
    need_input: bool,
    /// DecryptMessage returned SEC_I_RENEGOTIATE: the post-handshake message at the front of
    /// `rx` goes to ISC/ASC before anything else is decrypted or encrypted.
    renegotiate: bool,
    /// Bytes of `rx` the ISC/ASC call in flight was given.
    call_input: usize,
    /// ISC returned SEC_I_INCOMPLETE_CREDENTIALS once; the repeated call goes on without a
    /// client certificate.
    incomplete_credentials: bool,
    sizes: SecPkgContext_StreamSizes,
    failure: Option<Error>,
    close_notify_sent: bool,
    disconnected: bool,
    peer_ended: bool,
    /// Send the handshake token waiting in `tx` (this many bytes) before anything else.
    pending_token: usize,
    /// Send the pending token (an alert) before releasing.
    release_after_send: bool,
    deadline: PoolArc<Deadline<Worker<Conn<O>>>>,
    deadline_armed: bool,
    handshake_timeout_ms: u32,
    pinned: Option<[u8; 32]>,
    keep_peer_certificates: bool,
    /// The chain kept at the handshake's end, on its way to the mailbox.
    peer_chain: Vec<u8>,
    /// Held until the session's memory goes (the last reference: the owner's handle, a work
    /// item, a call in flight), so a driver's unload waits for all of it. Only its drop matters.
    _census: Option<Entry>,
    /// The owner released the session after SHUTDOWN: finish the graceful close alone.
    released: bool,
    /// The release timeout is armed on the deadline.
    release_armed: bool,
    /// The graceful end's timeout is armed on the deadline.
    deadline_armed_for_end: bool,
    /// A receive returned 0 bytes: the peer's FIN.
    fin_received: bool,
    /// A TLS failure ends like TLS says: the fatal alert, our FIN, the peer's FIN, then the
    /// close (bounded by [`END_TIMEOUT_MS`]); cleared when the peer is gone or the owner aborts.
    graceful_end: bool,
    /// The fatal alert (its description) still to write with EncryptMessage(OOB) and send.
    alert_due: Option<u8>,
}

/// The session's shared state: the owner's mailbox and the drain's engine.
pub struct Conn<O: Observer> {
    mailbox: SpinLock<Mailbox>,
    engine: UnsafeCell<Engine<O>>,
    server: bool,
    require_client_certificate: bool,
    max_queued: usize,
    receive_window: usize,
    observer: O,
}

// SAFETY: the mailbox is behind a spin lock; the engine is only touched by the drain, which the
// worker never runs twice at once.
unsafe impl<O: Observer> Send for Conn<O> {}
// SAFETY: as above.
unsafe impl<O: Observer> Sync for Conn<O> {}

/// The owner's handle to a TLS connection. Dropping it aborts the connection if it is still up.
pub struct Session<O: Observer> {
    worker: Worker<Conn<O>>,
}

unsafe extern "win64" fn sspi_done<O: Observer>(
    _context: *mut SspiAsyncContext,
    data: *mut c_void,
) {
    // SAFETY: the reference the issuing drain gave up for this call (one per queued call).
    let worker = unsafe { Worker::<Conn<O>>::from_raw(data) };
    worker.signal(EV_SSPI);
}

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
            resolve_name: resolve.unwrap_or_default(),
            resolved: core::ptr::null_mut(),
            socket,
            client,
            target,
            alpn_blob,
            send: IrpOp::try_new(EV_SEND, device)?,
            recv: IrpOp::try_new(EV_RECV, device)?,
            control: IrpOp::try_new(EV_CONTROL, device)?,
            control_kind: Control::None,
            tx: Buffer::try_new(TX_HANDSHAKE)?,
            rx: Buffer::try_new(RX_QUIET)?,
            rx_wanted: RX_QUIET,
            quiet_watch: None,
            shrinking: false,
            rx_len: 0,
            sspi: None,
            sspi_pending: false,
            deleting_context: false,
            sspi_status: SEC_E_OK,
            credential: Some(credential),
            context: SecHandle::INVALID,
            call: SspiCall {
                input: [SecBuffer::EMPTY; 3],
                input_desc: SecBufferDesc {
                    ulVersion: SECBUFFER_VERSION,
                    cBuffers: 0,
                    pBuffers: core::ptr::null_mut(),
                },
                output: [SecBuffer::EMPTY; 3],
                output_desc: SecBufferDesc {
                    ulVersion: SECBUFFER_VERSION,
                    cBuffers: 0,
                    pBuffers: core::ptr::null_mut(),
                },
                new_context: SecHandle::INVALID,
                attributes: 0,
                expiry: 0,
                target: UNICODE_STRING {
                    Length: 0,
                    MaximumLength: 0,
                    Buffer: core::ptr::null_mut(),
                },
                alert: [0; ALERT_CAPACITY],
            },
            handshake_started: false,
            need_input: server,
            renegotiate: false,
            call_input: 0,
            incomplete_credentials: false,
            sizes: SecPkgContext_StreamSizes::default(),
            failure: None,
            close_notify_sent: false,
            disconnected: false,
            peer_ended: false,
            pending_token: 0,
            release_after_send: false,
            deadline: Deadline::try_new(EV_TIMER)?,
            deadline_armed: false,
            handshake_timeout_ms: config.handshake_timeout_ms,
            pinned: config.pinned,
            keep_peer_certificates: config.keep_peer_certificates,
            peer_chain: Vec::new(),
            _census: config.census.as_ref().map(Census::enter),
            released: false,
            release_armed: false,
            deadline_armed_for_end: false,
            fin_received: false,
            graceful_end: false,
            alert_due: None,
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
            engine: UnsafeCell::new(engine),
            server,
            require_client_certificate: config.require_client_certificate,
            max_queued: config.max_queued.max(1),
            receive_window: config.receive_window.max(1),
            observer,
        };
        // SAFETY: per the contract.
        let worker = unsafe { Worker::try_new(device, conn) }?;
        worker.signal(EV_USER);
        Ok(Session { worker })
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
    /// SECPKG_ATTR_REMOTE_CERTIFICATES gives it — if [`Config::keep_peer_certificates`] asked for
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

/// SEC_APPLICATION_PROTOCOLS for an ALPN wire list (empty stays empty).
/// The TLS alert (RFC 8446 §6.2) that tells the peer why the connection failed.
fn alert_for(status: SECURITY_STATUS) -> u8 {
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
fn whole_records(bytes: &[u8]) -> bool {
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

/// Moves as many bytes as fit from the front of `queue` into `out` (two slice copies at most,
/// not a byte at a time: this is every byte sent and received).
fn take_front(queue: &mut VecDeque<u8>, out: &mut [u8]) -> usize {
    let n = out.len().min(queue.len());
    let (first, second) = queue.as_slices();
    let a = n.min(first.len());
    out[..a].copy_from_slice(&first[..a]);
    out[a..n].copy_from_slice(&second[..n - a]);
    queue.drain(..n);
    n
}

fn alpn_blob(wire: &[u8]) -> Result<Vec<u8>, NTSTATUS> {
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

impl<O: Observer> Drain for Conn<O> {
    fn drain(worker: &Worker<Self>, events: u32) {
        let conn = worker.target();
        // SAFETY: only the drain touches the engine, and the worker never runs it concurrently.
        let e = unsafe { &mut *conn.engine.get() };
        e.drain(conn, worker, events);
        conn.observer.changed();
    }
}

impl<O: Observer> Engine<O> {
    fn drain(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>, events: u32) {
        if self.phase == Phase::Done {
            return;
        }
        let handshaking = matches!(
            self.phase,
            Phase::Resolving | Phase::Connecting | Phase::Handshaking
        );
        if handshaking && !self.deadline_armed && self.handshake_timeout_ms > 0 {
            self.deadline_armed =
                Deadline::arm(&self.deadline, worker.clone(), self.handshake_timeout_ms).is_ok();
        }
        if events & EV_TIMER != 0 && handshaking && self.deadline.expired() {
            self.fail_or_end(conn, Some(Error::net(STATUS_IO_TIMEOUT)));
        }
        if events & EV_TIMER != 0
            && self.phase == Phase::Releasing
            && self.graceful_end
            && self.deadline_armed_for_end
            && self.deadline.expired()
        {
            // The alert, our FIN or the peer's FIN did not get through in time: reset.
            self.end_abruptly();
        }
        if events & EV_TIMER != 0 && self.phase == Phase::Open && self.deadline.expired() {
            if !self.released {
                self.quiet_check(conn, worker);
            } else if self.release_armed {
                // The graceful close took too long (a peer that never reads or never closes).
                self.fail_or_end(conn, None);
            } else {
                self.arm_release(worker);
            }
        }
        if events & EV_SSPI != 0 && self.sspi_pending {
            if let Some(op) = &self.sspi {
                let status = op.status();
                if status != SEC_I_ASYNC_CALL_PENDING {
                    self.sspi_pending = false;
                    if core::mem::take(&mut self.deleting_context) {
                        // Whatever its status, the handle is gone.
                        self.context = SecHandle::INVALID;
                    } else {
                        self.sspi_status = status;
                        self.sspi_completed(conn, status);
                    }
                }
            }
        }
        if let Some((status, n)) = self.control.take() {
            self.control_completed(conn, status, n);
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
        if abort && self.graceful_end && !released {
            self.end_abruptly();
        }
        if released && !self.released && self.phase == Phase::Open {
            self.released = true;
            self.quiet_watch = None;
            Deadline::disarm(&self.deadline);
            self.arm_release(worker);
        }
        self.advance(conn, worker, shutdown);
        let mut m = conn.mailbox.lock();
        m.counters.buffer_bytes = self.tx.len() + self.rx.len();
        m.snapshot = Snapshot {
            phase: Some(self.phase),
            events,
            sspi_pending: self.sspi_pending,
            renegotiate: self.renegotiate,
            need_input: self.need_input,
            send_idle: self.send.is_idle(),
            recv_idle: self.recv.is_idle(),
            control: Some(self.control_kind),
            pending_token: self.pending_token,
            rx_len: self.rx_len,
            release_after_send: self.release_after_send,
            peer_ended: self.peer_ended,
        };
    }

    /// Starts whatever can start now.
    fn advance(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>, shutdown: bool) {
        let before = self.phase;
        self.advance_phase(conn, worker, shutdown);
        // A step that failed just now (an EncryptMessage, a call that could not be queued) must
        // start the teardown at once: no completion may be coming to run the drain again.
        if self.phase == Phase::Releasing && before != Phase::Releasing {
            self.release_step(conn, worker);
        }
    }

    fn advance_phase(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>, shutdown: bool) {
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
                } else if !self.sspi_pending && self.send.is_idle() {
                    if self.need_input {
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
                } else if self.renegotiate {
                    if !self.sspi_pending && self.send.is_idle() && !self.need_input {
                        self.handshake_step(conn, worker);
                    }
                } else if self.send.is_idle() && !self.release_after_send {
                    self.fill_send(conn, worker);
                }
                if self.phase == Phase::Open && shutdown {
                    self.shutdown_step(conn, worker);
                }
                // While a post-handshake message is answered `rx` is ISC/ASC's input and is
                // compacted when it returns: receive only when that call asked for more.
                let receive = !self.renegotiate || (self.need_input && !self.sspi_pending);
                // Released: nobody reads any more; after our FIN, receive (and drop) until
                // the peer's FIN, then close without a reset.
                let linger = self.released && self.disconnected && !self.fin_received;
                if self.phase == Phase::Open
                    && (!self.peer_ended || linger)
                    && receive
                    && (self.released || self.window_open(conn))
                {
                    self.start_receive(worker);
                }
                if self.phase == Phase::Open
                    && self.released
                    && self.disconnected
                    && self.fin_received
                {
                    self.fail_or_end(conn, None);
                }
                // Buffers beyond an idle connection's are given back once nothing moves.
                if self.phase == Phase::Open
                    && !self.released
                    && self.quiet_watch.is_none()
                    && self.holds_more_than_idle()
                {
                    self.watch_quiet(conn, worker);
                }
            }
            Phase::Releasing => self.release_step(conn, worker),
            Phase::Done => {}
        }
    }

    fn window_open(&self, conn: &Conn<O>) -> bool {
        conn.mailbox.lock().incoming.len() < conn.receive_window
    }

    // ---- the socket -------------------------------------------------------------------

    fn start_resolve(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>) {
        let Some((npi, _, _)) = self.client else {
            return;
        };
        if self.resolve_name.is_empty() || self.resolve_name.len() > 255 {
            self.fail_or_end(conn, Some(Error::net(STATUS_INVALID_PARAMETER)));
            return;
        }
        // The name lives in the engine; the provider reads it during the call.
        let node = UNICODE_STRING {
            Length: (self.resolve_name.len() * 2) as u16,
            MaximumLength: (self.resolve_name.len() * 2) as u16,
            Buffer: self.resolve_name.as_mut_ptr(),
        };
        let result = &mut self.resolved as *mut *mut ADDRINFOEXW;
        self.start_control(worker, Control::Resolve, |irp| {
            // SAFETY: a captured provider; `node` and `result` outlive the call (the result
            // pointer lives in the pool-resident engine until completion).
            unsafe {
                (*npi.Dispatch).WskGetAddressInfo.unwrap()(
                    npi.Client,
                    &node,
                    core::ptr::null(),
                    0,
                    core::ptr::null_mut(),
                    core::ptr::null(),
                    result,
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    irp,
                )
            }
        });
    }

    /// Takes the first IPv4 answer (else IPv6) into the remote address, keeping its port, and
    /// frees the list.
    fn take_resolved(&mut self) -> bool {
        let Some((npi, local, remote)) = self.client.as_mut() else {
            return false;
        };
        let list = core::mem::replace(&mut self.resolved, core::ptr::null_mut());
        if list.is_null() {
            return false;
        }
        let port = [remote.data[0], remote.data[1]];
        let mut chosen: Option<SOCKADDR_STORAGE> = None;
        for wanted in [AF_INET as u16, AF_INET6 as u16] {
            let mut node = list;
            while !node.is_null() && chosen.is_none() {
                // SAFETY: a node of the provider's list, alive until WskFreeAddressInfo below.
                let n = unsafe { &*node };
                let len = n.ai_addrlen.min(core::mem::size_of::<SOCKADDR_STORAGE>());
                if !n.ai_addr.is_null() && len >= 4 {
                    let mut s = SOCKADDR_STORAGE {
                        ss_family: 0,
                        data: [0; 126],
                    };
                    // SAFETY: `len` bytes of the node's address into our storage (as large).
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            n.ai_addr as *const u8,
                            &mut s as *mut SOCKADDR_STORAGE as *mut u8,
                            len,
                        )
                    };
                    if s.ss_family == wanted {
                        chosen = Some(s);
                    }
                }
                node = n.ai_next;
            }
        }
        // SAFETY: the list WskGetAddressInfo returned, freed once.
        unsafe { (*npi.Dispatch).WskFreeAddressInfo.unwrap()(npi.Client, list) };
        match chosen {
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

    fn start_connect(&mut self, worker: &Worker<Conn<O>>) {
        let Some((npi, mut local, mut remote)) = self.client else {
            return;
        };
        self.control_kind = Control::Connect;
        let local_ptr = &mut local as *mut SOCKADDR_STORAGE as *mut SOCKADDR;
        let remote_ptr = &mut remote as *mut SOCKADDR_STORAGE as *mut SOCKADDR;
        let started = IrpOp::start(&self.control, worker.clone(), |irp| {
            // SAFETY: a captured provider; WSK copies both addresses during the call; IRP mode.
            unsafe {
                (*npi.Dispatch).WskSocketConnect.unwrap()(
                    npi.Client,
                    SOCK_STREAM as u16,
                    IPPROTO_TCP,
                    local_ptr,
                    remote_ptr,
                    0,
                    core::ptr::null_mut(),
                    core::ptr::null(),
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    irp,
                )
            }
        });
        if started.is_err() {
            self.control_kind = Control::None;
        }
    }

    fn dispatch(&self) -> &'static WSK_PROVIDER_CONNECTION_DISPATCH {
        // SAFETY: a live connection socket's dispatch table (provider-owned, static).
        unsafe { &*((*self.socket).Dispatch as *const WSK_PROVIDER_CONNECTION_DISPATCH) }
    }

    fn start_receive(&mut self, worker: &Worker<Conn<O>>) {
        if self.socket.is_null() || !self.recv.is_idle() {
            return;
        }
        self.size_receive_buffer();
        if self.rx_len >= self.rx.len() {
            return;
        }
        let socket = self.socket;
        let receive = self.dispatch().WskReceive.unwrap();
        let mut buf = self.rx.wsk(self.rx_len, self.rx.len() - self.rx_len);
        let _ = IrpOp::start(&self.recv, worker.clone(), |irp| {
            // SAFETY: a live connection socket; the buffer lives in the engine until completion
            // (the drain never touches this range while the receive is in flight).
            unsafe { receive(socket, &mut buf, 0, irp) }
        });
    }

    /// Whether the buffers hold more than an idle connection keeps.
    fn holds_more_than_idle(&self) -> bool {
        self.rx.len() > RX_IDLE || !self.tx.is_empty()
    }

    /// SspiDeleteSecurityContextAsync on the session's async operation: no thread waits on the
    /// LSA for it. False if it could not be queued (no callback comes; the context is intact).
    fn delete_context_async(&mut self, worker: &Worker<Conn<O>>) -> bool {
        let Some(op) = self.sspi.as_mut() else {
            return false;
        };
        let Ok(async_context) = op.begin() else {
            return false;
        };
        // The call holds a reference to the session until its callback.
        let reference = worker.clone().into_raw();
        // SAFETY: our valid context; the handle is copied by the call.
        let queued = unsafe { SspiDeleteSecurityContextAsync(async_context, &mut self.context) };
        if op.issued(queued).is_err() {
            // SAFETY: the reference given up above, never handed to a callback.
            drop(unsafe { Worker::<Conn<O>>::from_raw(reference) });
            return false;
        }
        self.sspi_pending = true;
        self.deleting_context = true;
        true
    }

    /// Arms the deadline for [`RELEASE_TIMEOUT_MS`] (if a quiet watch's DPC is still running,
    /// its EV_TIMER comes first and arms it then).
    fn arm_release(&mut self, worker: &Worker<Conn<O>>) {
        self.release_armed =
            Deadline::arm(&self.deadline, worker.clone(), RELEASE_TIMEOUT_MS).is_ok();
    }

    /// Arms the deadline to look at the buffers in [`QUIET_AFTER_MS`].
    fn watch_quiet(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>) {
        let traffic = {
            let m = conn.mailbox.lock();
            (m.counters.record_receives, m.counters.record_sends)
        };
        if Deadline::arm(&self.deadline, worker.clone(), QUIET_AFTER_MS).is_ok() {
            self.quiet_watch = Some(traffic);
        }
    }

    /// The quiet deadline expired. With nothing received or sent the whole time, the buffers
    /// go back to an idle connection's: the send buffer is freed (if nothing uses it) and a
    /// receive waiting with a bigger buffer is cancelled and reposted with [`RX_IDLE`].
    /// Otherwise look again later.
    fn quiet_check(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>) {
        let Some(armed_at) = self.quiet_watch.take() else {
            return;
        };
        if self.phase != Phase::Open || !self.holds_more_than_idle() {
            return;
        }
        let (traffic, queued) = {
            let m = conn.mailbox.lock();
            (
                (m.counters.record_receives, m.counters.record_sends),
                m.outgoing.len(),
            )
        };
        if traffic != armed_at {
            self.watch_quiet(conn, worker);
            return;
        }
        if !self.tx.is_empty()
            && self.send.is_idle()
            && self.pending_token == 0
            && queued == 0
            && !self.renegotiate
        {
            self.tx = Buffer::EMPTY;
        }
        if self.rx.len() > RX_IDLE
            && self.rx_len <= RX_IDLE
            && self.recv.is_pending()
            && !self.renegotiate
        {
            self.shrinking = true;
            self.rx_wanted = RX_IDLE;
            self.recv.cancel();
        } else if self.holds_more_than_idle() && self.recv.is_pending() {
            // A record half in, or a send still going: look again later.
            self.watch_quiet(conn, worker);
        }
        // Otherwise the next receive arms the watch again.
    }

    /// Makes the send buffer at least `at_least` bytes (an idle connection has none); false if
    /// it is smaller and cannot grow now (a send or token still uses it, or no pool).
    fn send_room(&mut self, at_least: usize) -> bool {
        if self.tx.len() < at_least {
            self.size_send_buffer(at_least);
        }
        self.tx.len() >= at_least
    }

    /// Grows the receive buffer while data streams in and shrinks it once the stream pauses
    /// (only between receives, and never while SSPI may be reading it). A failed allocation
    /// keeps the buffer there is: sizing is an optimisation, never a failure.
    fn size_receive_buffer(&mut self) {
        if self.phase != Phase::Open || self.sspi_pending {
            return;
        }
        let wanted = self.rx_wanted;
        // While a post-handshake message is answered `rx` is ISC/ASC's input: it may only grow
        // (the message needs more room than an idle buffer has).
        if self.renegotiate && wanted < self.rx.len() {
            return;
        }
        if wanted == self.rx.len() || self.rx_len > wanted {
            return;
        }
        if let Ok(mut bigger_or_smaller) = Buffer::try_new(wanted) {
            let kept = self.rx_len;
            bigger_or_smaller.bytes()[..kept].copy_from_slice(&self.rx.bytes()[..kept]);
            self.rx = bigger_or_smaller;
        }
    }

    /// As [`Self::size_receive_buffer`], for the send buffer: `wanted` bytes, only while no
    /// send or token uses it.
    fn size_send_buffer(&mut self, wanted: usize) {
        if wanted == self.tx.len() || !self.send.is_idle() || self.pending_token > 0 {
            return;
        }
        if let Ok(buffer) = Buffer::try_new(wanted) {
            self.tx = buffer;
        }
    }

    fn start_send(&mut self, worker: &Worker<Conn<O>>, len: usize) {
        let socket = self.socket;
        let send = self.dispatch().WskSend.unwrap();
        let mut buf = self.tx.wsk(0, len);
        let _ = IrpOp::start(&self.send, worker.clone(), |irp| {
            // SAFETY: as in start_receive, for the send buffer.
            unsafe { send(socket, &mut buf, 0, irp) }
        });
    }

    fn start_control(
        &mut self,
        worker: &Worker<Conn<O>>,
        kind: Control,
        call: impl FnOnce(*mut IRP) -> NTSTATUS,
    ) {
        if IrpOp::start(&self.control, worker.clone(), call).is_ok() {
            self.control_kind = kind;
        }
    }

    fn control_completed(&mut self, conn: &Conn<O>, status: NTSTATUS, information: usize) {
        let kind = core::mem::replace(&mut self.control_kind, Control::None);
        match kind {
            Control::Resolve => {
                let found = nt_success(status) && self.take_resolved();
                if !self.resolved.is_null() {
                    // Failed call that still returned a list (not expected): free it anyway.
                    self.take_resolved();
                }
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
                if nt_success(status) && information != 0 {
                    self.socket = information as *mut WSK_SOCKET;
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
                self.disconnected = true;
                if nt_success(status) {
                    conn.mailbox.lock().shutdown_done = true;
                } else {
                    self.fail_or_end(conn, Some(Error::net(status)));
                }
            }
            Control::Close => {
                // Closing always releases the socket, whatever the status says.
                self.socket = core::ptr::null_mut();
            }
            Control::None => {}
        }
    }

    fn send_completed(&mut self, conn: &Conn<O>, status: NTSTATUS) {
        if !nt_success(status) {
            self.fail_or_end(conn, Some(Error::net(status)));
        }
    }

    fn receive_completed(&mut self, conn: &Conn<O>, status: NTSTATUS, n: usize) {
        if self.phase == Phase::Releasing {
            // Ending: nothing is read any more; only the peer's FIN (or its loss) matters.
            self.rx_len = 0;
            if !nt_success(status) && status != STATUS_CANCELLED {
                self.graceful_end = false;
            } else if nt_success(status) && n == 0 {
                self.fin_received = true;
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
            self.fin_received = true;
            self.peer_ended = true;
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
            self.rx_wanted = RX_BUSY;
        } else if n < RX_QUIET / 4 && self.rx.len() > RX_QUIET {
            self.rx_wanted = RX_QUIET;
        }
        self.rx_len += n;
        match self.phase {
            Phase::Handshaking => self.need_input = false,
            Phase::Open if self.released && self.peer_ended => {
                // After the peer's close_notify, with no owner: nothing more is read.
                self.rx_len = 0;
            }
            Phase::Open => {
                conn.mailbox.lock().counters.record_receives += 1;
                self.need_input = false;
                self.decrypt_all(conn);
                if self.released {
                    conn.mailbox.lock().incoming.clear();
                }
            }
            _ => {}
        }
    }

    // ---- the handshake ----------------------------------------------------------------

    fn handshake_step(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>) {
        if self.sspi.is_none() {
            match AsyncOp::try_new(sspi_done::<O>, worker.as_raw() as *mut c_void) {
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
        let Some(Ok(async_context)) = self.sspi.as_mut().map(AsyncOp::begin) else {
            self.fail_or_end(conn, Some(Error::net(STATUS_INSUFFICIENT_RESOURCES)));
            return;
        };
        let Some(credential) = self.credential.as_ref().map(|c| c.handle()) else {
            return;
        };
        let first = !self.handshake_started;
        self.handshake_started = true;
        let rx = self.rx.bytes().as_mut_ptr();
        // Handshaking: what has arrived. After the handshake: the post-handshake message
        // DecryptMessage returned (SEC_I_RENEGOTIATE) and what followed it, at the front of `rx`
        // (no receive runs meanwhile).
        let input_len = self.rx_len;
        self.call_input = input_len;
        let c = &mut self.call;
        c.input = [
            SecBuffer::new(SECBUFFER_TOKEN, rx as *mut c_void, input_len as u32),
            SecBuffer::EMPTY,
            SecBuffer::EMPTY,
        ];
        let mut inputs = 2;
        let offer_alpn = !self.alpn_blob.is_empty()
            && self.phase == Phase::Handshaking
            && (conn.server || first);
        if offer_alpn {
            c.input[2] = SecBuffer::new(
                SECBUFFER_APPLICATION_PROTOCOLS,
                self.alpn_blob.as_mut_ptr() as *mut c_void,
                self.alpn_blob.len() as u32,
            );
            inputs = 3;
        }
        c.input_desc = SecBufferDesc {
            ulVersion: SECBUFFER_VERSION,
            cBuffers: inputs,
            pBuffers: c.input.as_mut_ptr(),
        };
        let tx = self.tx.bytes().as_mut_ptr();
        c.output = [
            SecBuffer::new(SECBUFFER_TOKEN, tx as *mut c_void, self.tx.len() as u32),
            SecBuffer::new(
                SECBUFFER_ALERT,
                c.alert.as_mut_ptr() as *mut c_void,
                ALERT_CAPACITY as u32,
            ),
            SecBuffer::EMPTY,
        ];
        c.output_desc = SecBufferDesc {
            ulVersion: SECBUFFER_VERSION,
            cBuffers: 3,
            pBuffers: c.output.as_mut_ptr(),
        };
        c.new_context = SecHandle::INVALID;
        c.attributes = 0;
        c.expiry = 0;
        // No name is an empty string {0, 0, NULL} (never a NULL UNICODE_STRING, and never
        // an empty Vec's dangling pointer).
        c.target = UNICODE_STRING {
            Length: (self.target.len() * 2) as u16,
            MaximumLength: (self.target.len() * 2) as u16,
            Buffer: if self.target.is_empty() {
                core::ptr::null_mut()
            } else {
                self.target.as_mut_ptr()
            },
        };
        let existing: *mut SecHandle = if self.context.is_valid() {
            &mut self.context
        } else {
            core::ptr::null_mut()
        };
        let input_desc: *mut SecBufferDesc = if first && !conn.server && !offer_alpn {
            core::ptr::null_mut()
        } else {
            &mut c.input_desc
        };
        // The in-flight call holds a reference to the session until its callback.
        let reference = worker.clone().into_raw();
        self.sspi_pending = true;
        let queued = if conn.server {
            let mut requirements = (ASC_REQ_REPLAY_DETECT
                | ASC_REQ_SEQUENCE_DETECT
                | ASC_REQ_CONFIDENTIALITY
                | ASC_REQ_EXTENDED_ERROR
                | ASC_REQ_STREAM) as u32;
            if conn.require_client_certificate {
                requirements |= ASC_REQ_MUTUAL_AUTH as u32;
            }
            // SAFETY: every buffer, descriptor and out-parameter lives in the pool-resident
            // engine, untouched until the callback; the credential is held by the engine.
            unsafe {
                SspiAcceptSecurityContextAsync(
                    async_context,
                    credential,
                    existing,
                    input_desc,
                    requirements,
                    0,
                    &mut c.new_context,
                    &mut c.output_desc,
                    &mut c.attributes,
                    &mut c.expiry,
                )
            }
        } else {
            let mut requirements = (ISC_REQ_REPLAY_DETECT
                | ISC_REQ_SEQUENCE_DETECT
                | ISC_REQ_CONFIDENTIALITY
                | ISC_REQ_EXTENDED_ERROR
                | ISC_REQ_STREAM) as u32;
            if self.incomplete_credentials {
                requirements |= ISC_REQ_USE_SUPPLIED_CREDS as u32;
            }
            // SAFETY: as above; the target name is never NULL (an empty name is an empty string).
            unsafe {
                SspiInitializeSecurityContextAsyncW(
                    async_context,
                    credential,
                    existing,
                    &c.target,
                    requirements,
                    0,
                    SECURITY_NATIVE_DREP,
                    input_desc,
                    0,
                    &mut c.new_context,
                    &mut c.output_desc,
                    &mut c.attributes,
                    &mut c.expiry,
                )
            }
        };
        let issued = self.sspi.as_mut().map(|op| op.issued(queued));
        if let Some(Err(status)) = issued {
            // No callback will come: take back its reference.
            // SAFETY: the reference given up above, never handed to a callback.
            drop(unsafe { Worker::<Conn<O>>::from_raw(reference) });
            self.sspi_pending = false;
            self.fail_or_end(conn, Some(Error::tls(status)));
        }
    }

    fn sspi_completed(&mut self, conn: &Conn<O>, status: SECURITY_STATUS) {
        let c = &self.call;
        if c.new_context.is_valid() && !self.context.is_valid() {
            self.context = c.new_context;
        }
        let capacity = self.tx.len();
        let written = if c.output[0].kind() == SECBUFFER_TOKEN {
            c.output[0].cbBuffer as usize
        } else {
            0
        };
        let mut extra = None;
        for b in &c.input {
            if b.kind() == SECBUFFER_EXTRA {
                extra = Some((b.cbBuffer as usize).min(self.call_input));
            }
        }
        let consumed = self.call_input - extra.unwrap_or(0);
        match status {
            SEC_E_OK | SEC_I_CONTINUE_NEEDED | SEC_I_CONTINUE_NEEDED_MESSAGE_OK => {
                self.incomplete_credentials = false;
                self.consume_input(consumed);
                if written > 0 {
                    self.pending_token = written.min(capacity);
                }
                if status == SEC_E_OK {
                    if self.phase == Phase::Handshaking {
                        self.established(conn);
                    } else if self.renegotiate {
                        // Records that followed the post-handshake message wait in `rx`.
                        self.renegotiate = false;
                        self.decrypt_all(conn);
                    }
                } else {
                    self.need_input = self.rx_len == 0;
                }
            }
            SEC_I_INCOMPLETE_CREDENTIALS if !conn.server && !self.incomplete_credentials => {
                // The server asked for a certificate this credential does not have: call again
                // with the same input and go on without one (curl and MsQuic do the same).
                self.incomplete_credentials = true;
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
                    Ok(bigger) => self.tx = bigger,
                    Err(_) => {
                        self.fail_or_end(conn, Some(Error::net(STATUS_INSUFFICIENT_RESOURCES)))
                    }
                }
            }
            SEC_E_INCOMPLETE_MESSAGE if self.rx_len >= self.rx.len() => {
                if self.rx.len() < RX_QUIET {
                    // An idle connection's buffer: room for a whole record first.
                    self.rx_wanted = self.rx_wanted.max(RX_QUIET);
                    self.need_input = true;
                } else {
                    // A handshake record larger than any legal one: more input cannot help.
                    self.fail_or_end(conn, Some(Error::tls(SEC_E_ILLEGAL_MESSAGE)));
                }
            }
            SEC_E_INCOMPLETE_MESSAGE => self.need_input = true,
            error => {
                // Only what Schannel really wrote goes to the peer: a token shorter than the
                // buffer that parses as whole TLS records (the alert), never the buffer itself.
                let token = &self.tx.bytes()[..written.min(capacity)];
                if written > 0 && written < capacity && whole_records(token) {
                    self.pending_token = written;
                    self.release_after_send = true;
                }
                self.fail_or_end(conn, Some(Error::tls(error)));
            }
        }
    }

    /// Drops the first `consumed` bytes of `rx` (what an ISC/ASC call used up); the rest,
    /// its EXTRA and anything received after, moves to the front.
    fn consume_input(&mut self, consumed: usize) {
        let consumed = consumed.min(self.rx_len);
        self.rx.bytes().copy_within(consumed..self.rx_len, 0);
        self.rx_len -= consumed;
    }

    /// Drops the consumed front of `rx`, keeping its last `extra` bytes.
    fn keep_extra(&mut self, extra: usize) {
        let start = self.rx_len - extra;
        self.rx.bytes().copy_within(start..self.rx_len, 0);
        self.rx_len = extra;
    }

    fn established(&mut self, conn: &Conn<O>) {
        let mut sizes = SecPkgContext_StreamSizes::default();
        let mut info = SecPkgContext_ConnectionInfo::default();
        // SAFETY: an established context; each structure is the one its attribute fills.
        let status = unsafe {
            QueryContextAttributesW(
                &mut self.context,
                SECPKG_ATTR_STREAM_SIZES,
                &mut sizes as *mut _ as *mut c_void,
            )
        };
        if status != SEC_E_OK
            || sizes.cbMaximumMessage == 0
            || (sizes.cbHeader + sizes.cbTrailer) as usize > 64
        {
            self.fail_or_end(
                conn,
                Some(Error::tls(if status == SEC_E_OK {
                    SEC_E_INTERNAL_ERROR
                } else {
                    status
                })),
            );
            return;
        }
        self.sizes = sizes;
        // SAFETY: as above.
        unsafe {
            QueryContextAttributesW(
                &mut self.context,
                SECPKG_ATTR_CONNECTION_INFO,
                &mut info as *mut _ as *mut c_void,
            )
        };
        // SAFETY: plain data, filled by the query.
        let mut cipher: SecPkgContext_CipherInfo = unsafe { core::mem::zeroed() };
        cipher.dwVersion = 1;
        // SAFETY: as above.
        unsafe {
            QueryContextAttributesW(
                &mut self.context,
                SECPKG_ATTR_CIPHER_INFO,
                &mut cipher as *mut _ as *mut c_void,
            )
        };
        let mut negotiated = Negotiated {
            protocol: info.dwProtocol,
            cipher_suite: cipher.dwCipherSuite,
            alpn_len: 0,
            alpn: [0; 255],
            peer_certificate: self.peer_certificate_digest(),
            stream_sizes: [
                self.sizes.cbHeader,
                self.sizes.cbTrailer,
                self.sizes.cbMaximumMessage,
            ],
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
        // SAFETY: plain data, filled by the query.
        let mut protocol: SecPkgContext_ApplicationProtocol = unsafe { core::mem::zeroed() };
        // SAFETY: as above.
        let alpn_status = unsafe {
            QueryContextAttributesW(
                &mut self.context,
                SECPKG_ATTR_APPLICATION_PROTOCOL,
                &mut protocol as *mut _ as *mut c_void,
            )
        };
        if alpn_status == SEC_E_OK
            && protocol.ProtoNegoStatus == SEC_APPLICATION_PROTOCOL_NEGOTIATION_STATUS_SUCCESS
        {
            negotiated.alpn_len = protocol.ProtocolIdSize;
            negotiated.alpn = protocol.ProtocolId;
        }
        self.phase = Phase::Open;
        self.need_input = false;
        Deadline::disarm(&self.deadline);
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
    fn client_certificate_verdict(&mut self) -> Result<(), SECURITY_STATUS> {
        let mut verdict = ksys::schannel::SecPkgContext_CertificateValidationResult::default();
        // SAFETY: an established context; the structure is the one the attribute fills.
        let status = unsafe {
            QueryContextAttributesW(
                &mut self.context,
                SECPKG_ATTR_CERT_CHECK_RESULT_INPROC,
                &mut verdict as *mut _ as *mut c_void,
            )
        };
        if status != SEC_E_OK {
            return Err(status);
        }
        match verdict.hrVerifyChainStatus as u32 {
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
    fn peer_certificate_digest(&mut self) -> Option<[u8; 32]> {
        let mut certs = SecPkgContext_Certificates {
            cCertificates: 0,
            cbCertificateChain: 0,
            pbCertificateChain: core::ptr::null_mut(),
        };
        // SAFETY: an established context; the structure is the one the attribute fills.
        let status = unsafe {
            QueryContextAttributesW(
                &mut self.context,
                SECPKG_ATTR_REMOTE_CERTIFICATES,
                &mut certs as *mut _ as *mut c_void,
            )
        };
        if status != SEC_E_OK || certs.pbCertificateChain.is_null() {
            return None;
        }
        // SAFETY: SSPI allocated `cbCertificateChain` bytes at `pbCertificateChain`; they stay
        // valid until FreeContextBuffer below.
        let chain = unsafe {
            core::slice::from_raw_parts(certs.pbCertificateChain, certs.cbCertificateChain as usize)
        };
        let digest = chain.get(..4).and_then(|len| {
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            chain.get(4..4 + len).map(crate::sha256::sha256)
        });
        if self.keep_peer_certificates {
            let mut kept = Vec::new();
            // Kept only if the pool has room: the owner then sees no chain, never a cut one.
            if kept.try_reserve_exact(chain.len()).is_ok() {
                kept.extend_from_slice(chain);
                self.peer_chain = kept;
            }
        }
        // SAFETY: the buffer SSPI allocated for this query, freed once.
        unsafe { FreeContextBuffer(certs.pbCertificateChain as *mut c_void) };
        digest
    }

    // ---- records ----------------------------------------------------------------------

    fn decrypt_all(&mut self, conn: &Conn<O>) {
        // While a post-handshake answer is being fetched the context is busy; what arrives
        // meanwhile waits in `rx` until the answer is out (see `sspi_completed`).
        while self.rx_len > 0 && self.phase == Phase::Open && !self.renegotiate {
            let base = self.rx.bytes().as_mut_ptr();
            let mut buffers = [
                SecBuffer::new(SECBUFFER_DATA, base as *mut c_void, self.rx_len as u32),
                SecBuffer::EMPTY,
                SecBuffer::EMPTY,
                SecBuffer::EMPTY,
            ];
            let mut desc = SecBufferDesc {
                ulVersion: SECBUFFER_VERSION,
                cBuffers: 4,
                pBuffers: buffers.as_mut_ptr(),
            };
            // SAFETY: an established context; the buffers describe `rx`, which stays put.
            let status =
                unsafe { DecryptMessage(&mut self.context, &mut desc, 0, core::ptr::null_mut()) };
            let offset = |b: &SecBuffer| (b.pvBuffer as usize).wrapping_sub(base as usize);
            let extra = buffers
                .iter()
                .find(|b| b.kind() == SECBUFFER_EXTRA)
                .map(|b| (b.cbBuffer as usize).min(self.rx_len));
            match status {
                SEC_E_OK | SEC_I_RENEGOTIATE | SEC_I_CONTEXT_EXPIRED => {
                    if status == SEC_E_OK {
                        if let Some(data) = buffers.iter().find(|b| b.kind() == SECBUFFER_DATA) {
                            let (at, len) = (offset(data), data.cbBuffer as usize);
                            if at.checked_add(len).is_none_or(|end| end > self.rx_len) {
                                self.fail_or_end(conn, Some(Error::tls(SEC_E_INTERNAL_ERROR)));
                                return;
                            }
                            if len > 0 && !self.deliver(conn, at, len) {
                                return;
                            }
                        }
                    }
                    if status == SEC_I_RENEGOTIATE {
                        // The message for ISC/ASC: EXTRA (kemu, curl's reading of Schannel),
                        // after any bytes Schannel handed back as DATA instead (.NET's).
                        let data = buffers
                            .iter()
                            .find(|b| b.kind() == SECBUFFER_DATA && b.cbBuffer > 0)
                            .map(|b| (offset(b), b.cbBuffer as usize));
                        self.keep_message(data, extra.unwrap_or(0));
                        self.renegotiate = true;
                        conn.mailbox.lock().counters.post_handshake_messages += 1;
                        return;
                    }
                    self.keep_extra(extra.unwrap_or(0));
                    if status == SEC_I_CONTEXT_EXPIRED {
                        self.peer_ended = true;
                        conn.mailbox.lock().peer_ended = true;
                        return;
                    }
                }
                SEC_E_INCOMPLETE_MESSAGE => {
                    if self.rx_len >= self.rx.len() {
                        if self.rx.len() < RX_QUIET {
                            // An idle connection's buffer: room for a whole record first.
                            self.rx_wanted = self.rx_wanted.max(RX_QUIET);
                        } else {
                            self.fail_or_end(conn, Some(Error::tls(SEC_E_ILLEGAL_MESSAGE)));
                        }
                    }
                    return;
                }
                error => {
                    self.fail_or_end(conn, Some(Error::tls(error)));
                    return;
                }
            }
        }
    }

    /// After SEC_I_RENEGOTIATE: `data` (if Schannel returned the message there) and then the
    /// last `extra` bytes of `rx` become the front of `rx`, the next ISC/ASC's input.
    fn keep_message(&mut self, data: Option<(usize, usize)>, extra: usize) {
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
    fn deliver(&mut self, conn: &Conn<O>, at: usize, len: usize) -> bool {
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
    fn fill_send(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>) {
        if self.phase != Phase::Open {
            return;
        }
        // More than a record queued: a busy buffer; nothing queued: a quiet one; in between
        // the buffer stays as it is (no flapping at the tail of a burst).
        let queued = conn.mailbox.lock().outgoing.len();
        if queued > MAX_PLAINTEXT {
            self.size_send_buffer(TX_BUSY);
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
    fn encrypt_in_place(
        &mut self,
        at: usize,
        n: usize,
        qop: u32,
    ) -> Result<usize, SECURITY_STATUS> {
        let (header, trailer) = (self.sizes.cbHeader as usize, self.sizes.cbTrailer as usize);
        let base = self.tx.bytes()[at..].as_mut_ptr();
        // SAFETY: the three regions lie inside `tx` (the caller checked the room).
        let mut buffers = unsafe {
            [
                SecBuffer::new(SECBUFFER_STREAM_HEADER, base as *mut c_void, header as u32),
                SecBuffer::new(SECBUFFER_DATA, base.add(header) as *mut c_void, n as u32),
                SecBuffer::new(
                    SECBUFFER_STREAM_TRAILER,
                    base.add(header + n) as *mut c_void,
                    trailer as u32,
                ),
                SecBuffer::EMPTY,
            ]
        };
        let mut desc = SecBufferDesc {
            ulVersion: SECBUFFER_VERSION,
            cBuffers: 4,
            pBuffers: buffers.as_mut_ptr(),
        };
        // SAFETY: an established context; the descriptor and buffers outlive the call.
        let status = unsafe { EncryptMessage(&mut self.context, qop, &mut desc, 0) };
        if status != SEC_E_OK {
            return Err(status);
        }
        let len = (buffers[0].cbBuffer + buffers[1].cbBuffer + buffers[2].cbBuffer) as usize;
        Ok(len.min(header + n + trailer))
    }

    /// close_notify after the queue drained, then the graceful disconnect.
    fn shutdown_step(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>) {
        if !self.send.is_idle() || self.pending_token > 0 || self.renegotiate {
            return;
        }
        if !conn.mailbox.lock().outgoing.is_empty() {
            return;
        }
        if !self.close_notify_sent {
            if !self.send_room(TX_QUIET) {
                self.fail_or_end(conn, Some(Error::net(STATUS_INSUFFICIENT_RESOURCES)));
                return;
            }
            self.close_notify_sent = true;
            let header = self.sizes.cbHeader as usize;
            self.tx.bytes()[header..header + 2].copy_from_slice(&[1, 0]);
            match self.encrypt_in_place(0, 2, SECQOP_WRAP_OOB_DATA) {
                Ok(len) => self.start_send(worker, len),
                Err(status) => self.fail_or_end(conn, Some(Error::tls(status))),
            }
            return;
        }
        if !self.disconnected && self.control_kind == Control::None && !self.socket.is_null() {
            let socket = self.socket;
            let disconnect = self.dispatch().WskDisconnect.unwrap();
            self.start_control(worker, Control::Disconnect, |irp| {
                // SAFETY: a live connection socket; no final buffer.
                unsafe { disconnect(socket, core::ptr::null_mut(), 0, irp) }
            });
        }
    }

    // ---- the end ----------------------------------------------------------------------

    /// Ends the connection: `Some(failure)` records why (the first reason wins). A TLS failure
    /// on a live socket ends gracefully — the fatal alert (the handshake's alert token, or one
    /// written now with EncryptMessage(SECQOP_WRAP_OOB_DATA)), then our FIN and the peer's —
    /// while a network failure or the owner's abort resets.
    fn fail_or_end(&mut self, conn: &Conn<O>, failure: Option<Error>) {
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
            if !self.socket.is_null() && !self.peer_gone() {
                self.graceful_end = true;
                // After the handshake (or a check of its result), the alert is written now.
                let established = self.sizes.cbMaximumMessage != 0;
                if established && !self.release_after_send {
                    self.alert_due = Some(alert_for(f.sspi()));
                }
            }
        }
        self.phase = Phase::Releasing;
    }

    /// Whether the peer already closed its side completely (FIN) — nothing more to tell it.
    fn peer_gone(&self) -> bool {
        self.fin_received
    }

    /// Gives up the graceful end: what is in flight is cancelled and the socket reset.
    fn end_abruptly(&mut self) {
        self.graceful_end = false;
        self.alert_due = None;
        self.release_after_send = false;
        self.pending_token = 0;
    }

    /// Steps of a graceful end (see [`Self::fail_or_end`]); true while one is under way.
    fn end_gracefully(&mut self, worker: &Worker<Conn<O>>) -> bool {
        if !self.graceful_end || self.socket.is_null() {
            return false;
        }
        if !self.deadline_armed_for_end {
            Deadline::disarm(&self.deadline);
            self.deadline_armed_for_end =
                Deadline::arm(&self.deadline, worker.clone(), END_TIMEOUT_MS).is_ok();
        }
        if let Some(description) = self.alert_due {
            if !self.send.is_idle() || self.pending_token > 0 {
                return true;
            }
            self.alert_due = None;
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
        if !self.disconnected {
            if self.control_kind == Control::None {
                let socket = self.socket;
                let disconnect = self.dispatch().WskDisconnect.unwrap();
                self.start_control(worker, Control::Disconnect, |irp| {
                    // SAFETY: a live connection socket; no final buffer.
                    unsafe { disconnect(socket, core::ptr::null_mut(), 0, irp) }
                });
            }
            return true;
        }
        if !self.fin_received {
            // Closing before the peer's FIN would reset (and lose our alert at the peer).
            if self.recv.is_idle() && self.rx_len < self.rx.len() {
                let socket = self.socket;
                let receive = self.dispatch().WskReceive.unwrap();
                let mut buf = self.rx.wsk(0, self.rx.len());
                let _ = IrpOp::start(&self.recv, worker.clone(), |irp| {
                    // SAFETY: a live connection socket; the buffer lives in the engine until
                    // completion and nothing else uses it while ending.
                    unsafe { receive(socket, &mut buf, 0, irp) }
                });
            }
            return !self.fin_received && self.graceful_end;
        }
        self.graceful_end = false;
        false
    }

    fn release_step(&mut self, conn: &Conn<O>, worker: &Worker<Conn<O>>) {
        if self.end_gracefully(worker) {
            return;
        }
        if self.release_after_send {
            if self.pending_token > 0 && self.send.is_idle() && !self.socket.is_null() {
                let len = core::mem::take(&mut self.pending_token);
                self.start_send(worker, len);
            }
            if self.pending_token == 0 && self.send.is_idle() {
                self.release_after_send = false;
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
        if !self.send.is_idle() || !self.recv.is_idle() || self.sspi_pending {
            return;
        }
        if self.control_kind != Control::None {
            return;
        }
        if !self.socket.is_null() {
            let socket = self.socket;
            let close = self.dispatch().Basic.WskCloseSocket.unwrap();
            self.start_control(worker, Control::Close, |irp| {
                // SAFETY: a live socket with nothing in flight; closing it resets the connection
                // unless it was disconnected gracefully.
                unsafe { close(socket, irp) }
            });
            return;
        }
        if self.context.is_valid() {
            if self.delete_context_async(worker) {
                // Its callback brings the drain back here.
                return;
            }
            // It could not be queued: delete it here (the LSA answers at once).
            // SAFETY: our context, deleted once at PASSIVE_LEVEL.
            unsafe { DeleteSecurityContext(&mut self.context) };
            self.context = SecHandle::INVALID;
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
