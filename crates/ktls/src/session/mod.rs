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
//!
//! Where things are: this file holds the types (configuration, mailbox, engine state); `owner`
//! the [`Session`] methods; `engine` the drain and its phases; `transport` resolving,
//! connecting and the WSK IRPs; `handshake` ISC/ASC and what is checked at its end; `records`
//! the receive and send paths; `buffers` how large the buffers are and when they shrink;
//! `teardown` every way a connection ends.

mod buffers;
mod engine;
mod handshake;
mod owner;
mod records;
mod teardown;
mod transport;

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::ffi::c_void;

use ksys::io::DEVICE_OBJECT;
use ksys::ntdef::*;
use ksys::sspi::*;
use ksys::wsk::*;

use crate::census::{Census, Entry};
use crate::context::SecurityContext;
use crate::socket::{ConnectionSocket, Resolution};
use crate::credential::Credential;
use crate::deadline::Deadline;
use crate::error::Error;
use crate::pool::PoolArc;
use crate::sspi::AsyncOp;
use crate::sync::SpinLock;
use crate::work::{Drain, Held, Worker, signal_on_notify};
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
/// Largest receive buffer, reached while data streams in: each receive that fills all the room
/// it had (or brings more than a record) makes the buffer four times larger, up to sixteen
/// records per WskReceive (a sustained stream costs a sixteenth of the completions; measured in
/// docs/performance.md).
const RX_BUSY: usize = 16 * MAX_RECORD;
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
/// Largest send buffer: while more than a record is queued the buffer grows to hold what is
/// queued, up to sixteen records per WskSend (it shrinks when the queue empties).
const TX_BUSY: usize = 16 * TX_RECORD;
/// How long a released connection may take to finish its graceful close (drain its queue,
/// close_notify, FIN, the peer's FIN) before it is reset.
const RELEASE_TIMEOUT_MS: u32 = 10_000;
/// How long a failed connection may take to deliver its alert and FIN and see the peer's FIN
/// before it is reset.
const END_TIMEOUT_MS: u32 = 5_000;
/// Largest handshake token the send buffer grows to when Schannel says it needs more.
const MAX_HANDSHAKE_TOKEN: usize = 256 * 1024;

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
    /// The handshake resumed a cached session (SECPKG_ATTR_SESSION_INFO): no certificate was
    /// exchanged this time, so a caller counting full handshakes or auditing can tell.
    pub resumed: bool,
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
    /// The most the send and receive buffers held together at once: what a busy connection
    /// costs in pool at its peak.
    pub peak_buffer_bytes: usize,
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
    sspi_call: Option<SspiCall>,
    exchange: Option<Exchange>,
    send_idle: bool,
    recv_idle: bool,
    control: Option<Control>,
    pending_token: usize,
    rx_len: usize,
    ending: Option<Ending>,
    inbound: Option<Inbound>,
    outbound: Option<Outbound>,
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

/// What the session's one deadline is armed for: it serves each phase in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    /// Nothing (a stale expiry may still be on its way).
    Idle,
    /// Connecting plus handshaking must finish in time.
    Handshake,
    /// Open: look at the buffers after [`QUIET_AFTER_MS`]; the record receives and sends
    /// counted when it was armed (unchanged then: nothing moved).
    Quiet { receives: u64, sends: u64 },
    /// Released after SHUTDOWN: the graceful close must finish in time.
    Release,
    /// A failure's graceful end (alert, FIN, the peer's FIN) must finish in time.
    End,
}

/// The SSPI call in flight on a session's asynchronous operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SspiCall {
    /// None: the operation may issue the next.
    Idle,
    /// None, and the next ISC/ASC step needs more bytes than `rx` holds: a receive first.
    AwaitingInput,
    /// An ISC/ASC step, given this many bytes at the front of `rx` as input.
    Step { input: usize },
    /// SspiDeleteSecurityContextAsync (teardown): the handle is gone once it returns.
    DeletingContext,
}

/// Where the token exchange with ISC/ASC stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exchange {
    /// No ISC/ASC call yet: the client's first one has no input and offers ALPN.
    NotStarted,
    /// Handshake steps under way. `without_certificate`: ISC returned
    /// SEC_I_INCOMPLETE_CREDENTIALS (the server asked for a client certificate this credential
    /// lacks), so the repeated call goes on without one.
    Handshake { without_certificate: bool },
    /// Established: application records go through DecryptMessage/EncryptMessage.
    Records,
    /// DecryptMessage returned SEC_I_RENEGOTIATE: the post-handshake message at the front of
    /// `rx` goes to ISC/ASC before anything else is decrypted or encrypted.
    PostHandshake,
}

/// Our direction of the connection, in the order it closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outbound {
    /// Records may go.
    Open,
    /// close_notify went (SHUTDOWN); the FIN follows.
    CloseNotifySent,
    /// Our FIN went (WskDisconnect completed).
    Disconnected,
}

/// The peer's direction of the connection, in the order it closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Inbound {
    /// Records may come.
    Open,
    /// The peer's close_notify was read; its FIN may follow.
    CloseNotify,
    /// A receive returned 0 bytes: the peer's FIN (nothing more can come).
    Fin,
}

/// How a releasing connection ends (chosen when it fails or is aborted; a failed handshake
/// step that wrote an alert token chooses first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Cancel what is in flight and close: a reset unless our FIN went out.
    Close,
    /// Schannel's alert token for a failed step waits in `tx` (`pending_token`): send it, then
    /// close.
    TokenThenClose,
    /// A TLS failure ends as TLS says: the alert, our FIN, the peer's FIN, then the close,
    /// within [`END_TIMEOUT_MS`].
    Graceful { alert: Alert },
}

/// The fatal alert of a graceful end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alert {
    /// None to send (the failure came before there were keys to write one), or it is already
    /// written and queued as the pending token.
    None,
    /// Schannel wrote it with the failed handshake step: it is the pending token.
    Token,
    /// To write with EncryptMessage(SECQOP_WRAP_OOB_DATA): its description.
    Write(u8),
}

type Op<O> = PoolArc<IrpOp<Worker<Conn<O>>>>;

/// The state only the drain touches (see [`crate::work::Drain::Exclusive`]).
pub struct Engine<O: Observer> {
    phase: Phase,
    socket: ConnectionSocket,
    client: Option<(WSK_PROVIDER_NPI, SOCKADDR_STORAGE, SOCKADDR_STORAGE)>,
    /// The host name to resolve first (none wanted: the address is given).
    resolution: Resolution,
    send: Op<O>,
    recv: Op<O>,
    control: Op<O>,
    control_kind: Control,
    tx: Buffer,
    rx: Buffer,
    /// The most `tx` and `rx` held together (noted whenever either is replaced).
    peak_buffers: usize,
    /// What the receive buffer should be (see [`Engine::size_receive_buffer`]).
    rx_wanted: usize,
    /// The receive in flight was cancelled to shrink its buffer (its STATUS_CANCELLED is ours).
    shrinking: bool,
    rx_len: usize,
    sspi: Option<AsyncOp>,
    /// The call in flight on `sspi`, if any.
    sspi_call: SspiCall,
    sspi_status: SECURITY_STATUS,
    credential: Option<PoolArc<Credential>>,
    context: SecurityContext,
    /// Where ISC/ASC stands: handshake, records, or a post-handshake message.
    exchange: Exchange,
    sizes: SecPkgContext_StreamSizes,
    failure: Option<Error>,
    /// How far our side has closed.
    outbound: Outbound,
    /// How far the peer's side has closed.
    inbound: Inbound,
    /// Send the handshake token waiting in `tx` (this many bytes) before anything else.
    pending_token: usize,
    /// How the connection ends once it is releasing.
    ending: Ending,
    deadline: PoolArc<Deadline<Worker<Conn<O>>>>,
    /// What `deadline` is armed for.
    timer: Timer,
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
}

/// The session's shared state: the owner's mailbox and the drain's engine.
pub struct Conn<O: Observer> {
    mailbox: SpinLock<Mailbox>,
    server: bool,
    require_client_certificate: bool,
    max_queued: usize,
    receive_window: usize,
    observer: O,
}


/// The owner's handle to a TLS connection. Dropping it aborts the connection if it is still up.
pub struct Session<O: Observer> {
    worker: Worker<Conn<O>>,
}

/// A hold on a session's work ([`Session::hold`]); dropping it runs what was deferred.
#[must_use = "dropping the hold at once defers nothing"]
pub struct SessionHold<O: Observer> {
    _held: Held<Conn<O>>,
}
