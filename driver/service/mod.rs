//! The driver's TLS service: listeners and connections (ktls) owned by file handles, and the
//! IOCTLs that wait on them.
//!
//! - The object table ([`crate::objects`]) finds a listener or connection by id in one step.
//!   Each object keeps its own waiting requests behind its own spin lock: SENDs and RECVs each in
//!   arrival order, ACCEPT/CONNECT/SHUTDOWN beside them.
//! - Each ktls session and listener reports its changes to a [`Notify`] naming its object, and
//!   only that object's requests are re-examined (`service`), so one connection's traffic never
//!   walks another's requests. A request that can finish when it arrives (a SEND that fits, a
//!   RECV with data waiting) completes in the dispatch routine; only the rest park.
//! - Readiness is decided under the object's lock; a parked request is taken back from the
//!   cancel machinery (WdfRequestUnmarkCancelable) before it is completed, so a cancel racing
//!   with completion completes it exactly once. A parked request carries its object's id as a
//!   KMDF context, so its cancel routine finds it without a search.
//! - A handle's objects close when the handle is cleaned up; unload closes everything and waits
//!   until every session and listener — those still in the table and those closed earlier that
//!   are still releasing — has released its socket and security context before releasing WSK.
//!
//! Where things are: `object` (the table of objects, what each holds, its observer, releasing
//! it), `pending` (waiting requests: parking, serving, cancelling, completing), `handlers`
//! (LISTEN, CONNECT, CLOSE, PEER_CERTIFICATES, cleanup, load and unload), `stats` (counters).

mod handlers;
mod object;
mod pending;
mod stats;

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::net::{IpAddr, SocketAddr};
use core::sync::atomic::{AtomicU64, Ordering};

use ksys::kmdf::{ParkedRequest, Request};
use ksys::ntdef::*;
use ksys::wdf::types::{WDFFILEOBJECT, WDFREQUEST};
use ktls::{
    Client, ClientConfig, Error, ListenObserver, ListenState, Listener, Observer, Pending, PoolArc,
    Received, Server, ServerConfig, Session, SessionHold, SpinLock, State, Tls, Verify, Versions,
};
use proto::session::{
    ConnectRequest, ConnectionInfo, Endpoint, ListenRequest, ListenResponse, Stats, TlsVersion,
    Validation, VersionRange,
};

use ksys::wdf::types::{WDFDEVICE, WDFDRIVER};

use crate::objects::{Limits, Objects};

pub use handlers::*;
pub use object::*;
pub use pending::*;
pub use stats::*;

/// Everything the driver keeps — its objects, limits, kernel TLS and counters — in the control
/// device's context: dispatch routines reach it through the device their queue or file object
/// belongs to, observers through the device handle they keep, unload through the driver
/// object's context that names the device.
pub struct Service {
    /// The control device whose context this is.
    device: WDFDEVICE,
    /// Objects by id.
    table: SpinLock<Objects<PoolArc<Object>>>,
    /// Limits read from the registry at load.
    limits: Limits,
    /// The driver's kernel TLS (a counted reference per user: unload waits for them).
    tls: SpinLock<Option<PoolArc<Tls>>>,
    /// What STATS reports beyond the live objects.
    counters: Counters,
}

ksys::kmdf_context! {
    /// The service, in the control device's context.
    static SERVICE: Service;
}

/// The control device, in the driver object's context (for unload, which only gets the
/// driver).
struct ControlDevice(WDFDEVICE);

ksys::kmdf_context! {
    /// The control device, in the driver object's context.
    static CONTROL_DEVICE: ControlDevice;
}

/// Runs `use_it` with the service of `device` (None if the device has none: not ours).
pub(crate) fn on_device<R>(device: WDFDEVICE, use_it: impl FnOnce(&Service) -> R) -> Option<R> {
    SERVICE.with(device.as_object(), use_it)
}

/// Connections (and listeners) the driver holds at most, unless the registry says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// Connections and listeners one handle may hold, unless the registry says otherwise.
pub const DEFAULT_MAX_CONNECTIONS_PER_HANDLE: usize = 16_384;

/// Plaintext a connection queues for sending before SEND pends.
pub const MAX_QUEUED_BYTES: usize = 1 << 20;

/// Plaintext a connection buffers for RECV before it stops reading the socket.
pub const RECEIVE_WINDOW: usize = 1 << 20;

/// Connect plus handshake limit.
pub const HANDSHAKE_TIMEOUT_MS: u32 = 10_000;

/// Accepted connections a listener holds (handshaking or waiting for ACCEPT) before it pauses.
pub const LISTEN_BACKLOG: usize = 64;
