//! ktls: TLS inside a Windows kernel driver — asynchronous kernel Schannel on Winsock Kernel
//! sockets, every step finished by a work item, nothing ever blocking a caller. `no_std` +
//! `alloc`; safe to use.
//!
//! # The front door
//! - [`Tls`]: one per driver. Made in DriverEntry from the driver's device object, dropped in
//!   its unload routine — which waits until every connection has released its socket, IRPs and
//!   security context, then deregisters from WSK.
//! - [`ClientConfig`] / [`ServerConfig`]: what connections want (trust as one [`Verify`]
//!   choice, versions, ALPN, limits), built with defaults.
//! - [`Tls::client`] / [`Tls::server`] (or their non-blocking `acquire_*` forms, which give a
//!   [`Pending`]) acquire the Schannel credential once; [`Client::connect`] and
//!   [`Server::listen`] start connections that never block: a [`Session`] reports every change
//!   to your [`Observer`], and its `send`/`recv` only touch queues.
//! - [`Error`]: one error type with an [`ErrorKind`] to branch on and the NTSTATUS /
//!   SECURITY_STATUS pair Windows gave.
//!
//! ```no_run
//! use ktls::{ClientConfig, Observer, Received, State, Tls, Verify};
//!
//! struct Log;
//! impl Observer for Log {
//!     fn changed(&self) {}
//! }
//!
//! # fn demo(device: *mut ksys::io::DEVICE_OBJECT) -> Result<(), ktls::Error> {
//! // SAFETY: the driver's own device; the unload routine drops `tls`.
//! let tls = unsafe { Tls::new(device) }?;
//! let client = tls.client(ClientConfig::builder(Verify::SystemRoots).build()?)?;
//! let session = client.connect("192.0.2.1:443".parse().unwrap(), "example.com", Log)?;
//! if session.state() == State::Open {
//!     session.send(b"hello")?;
//! }
//! let mut buf = [0u8; 256];
//! match session.recv(&mut buf) {
//!     Received::Data(n) => { let _reply = &buf[..n]; }
//!     Received::Pending => { /* wait for Observer::changed */ }
//!     Received::End => {}
//!     Received::Failed(error) => return Err(error),
//! }
//! # Ok(()) }
//! ```
//!
//! `examples/fetch.rs` is a whole driver that fetches a URL at load; `cargo run -p ktls
//! --example fetch -- https://127.0.0.1:PORT/` runs it under kemu.
//!
//! # Inside
//! Connections are state machines advanced by one I/O work item each (`work`), over pool-backed
//! reference counting (`pool`) so the last completion frees what it must whatever order they
//! arrive in, an asynchronous SSPI operation that survives inline completion (`sspi`), WSK IRPs
//! and buffers (`wsk`), and a census unload waits on (`census`). The `internals` feature makes
//! those modules public for ktls's own tests; nothing outside should need them.

#![no_std]

extern crate alloc;

/// Declares modules public with the `internals` feature (ktls's own tests), private otherwise.
macro_rules! internal_modules {
    ($($name:ident),* $(,)?) => {
        $(
            #[cfg(feature = "internals")]
            #[doc(hidden)]
            pub mod $name;
            #[cfg(not(feature = "internals"))]
            #[allow(dead_code)]
            mod $name;
        )*
    };
}

internal_modules!(
    census, context, credential, deadline, listener, pool, session, sha256, socket, sspi, sync,
    work, wsk,
);

mod config;
mod error;
mod tls;

pub use config::{
    ClientConfig, ClientConfigBuilder, DEFAULT_BACKLOG, DEFAULT_HANDSHAKE_TIMEOUT_MS,
    DEFAULT_MAX_QUEUED, DEFAULT_RECEIVE_WINDOW, ServerConfig, ServerConfigBuilder, Verify,
    Versions,
};
pub use error::{Error, ErrorKind, STATUS_PIN_MISMATCH, STATUS_TLS_FAILURE};
pub use listener::{ListenObserver, ListenState, Listener};
pub use pool::PoolArc;
pub use session::{Counters, Negotiated, Observer, Received, Session, SessionHold, State};
pub use sha256::sha256;
pub use sync::{SpinGuard, SpinLock};
pub use tls::{Acquired, Client, Pending, Server, Tls};

/// Pool tag of everything ktls allocates ("kTLS" in poolmon).
pub const POOL_TAG: [u8; 4] = *b"kTLS";
