//! The front door: one [`Tls`] per driver owns what every connection shares — the WSK
//! registration, the census that unload waits on, the cached client credentials — and turns
//! configurations into a [`Client`] that connects or a [`Server`] that listens.
//!
//! ```no_run
//! use core::net::SocketAddr;
//! use ktls::{ClientConfig, Observer, Received, Tls, Verify};
//!
//! struct Wake;
//! impl Observer for Wake {
//!     fn changed(&self) { /* queue a work item, complete a request, ... */ }
//! }
//!
//! # fn demo(device: *mut ksys::io::DEVICE_OBJECT) -> Result<(), ktls::Error> {
//! // SAFETY: in DriverEntry, with the driver's own device; unload drops `tls` (which waits).
//! let tls = unsafe { Tls::new(device) }?;
//! let config = ClientConfig::builder(Verify::SystemRoots)
//!     .alpn(["http/1.1"])
//!     .build()?;
//! let client = tls.client(config)?; // at PASSIVE_LEVEL; `acquire_client` never blocks
//! let to: SocketAddr = "192.0.2.10:443".parse().unwrap();
//! let session = client.connect(to, "example.com", Wake)?;
//! // Later, from `Wake::changed`:
//! session.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")?;
//! let mut buf = [0u8; 512];
//! if let Received::Data(n) = session.recv(&mut buf) { let _ = &buf[..n]; }
//! # Ok(()) }
//! ```

use alloc::vec::Vec;
use core::net::SocketAddr;

use ksys::io::DEVICE_OBJECT;
use ksys::wsk::{AF_INET, AF_INET6, SOCKADDR_STORAGE, WSK_INFINITE_WAIT, WSK_PROVIDER_NPI};

use crate::census::Census;
use crate::config::{ClientConfig, ServerConfig};
use crate::credential::{Acquisition, Credential, CredentialSpec};
use crate::error::Error;
use crate::listener::{ListenObserver, Listener, ListenerConfig};
use crate::pool::PoolArc;
use crate::session::{Config, Observer, Role, Session, SessionHold};
use crate::sync::SpinLock;
use crate::wsk::Provider;

/// What a credential cache entry is found by: the validation flags, versions and client
/// certificate of a [`ClientConfig`].
type ClientKey = (u32, crate::config::Versions, Option<[u8; 20]>);

/// What the [`Tls`], its clients, servers and pending acquisitions share.
#[doc(hidden)]
pub struct Shared {
    device: *mut DEVICE_OBJECT,
    provider: SpinLock<Option<Provider>>,
    census: Census,
    client_credentials: SpinLock<Vec<(ClientKey, PoolArc<Credential>)>>,
}

// SAFETY: the device object is a kernel object usable from any thread; the rest is locked.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// The captured WSK provider, registered at first use (PASSIVE_LEVEL; the capture waits
    /// for WSK to be ready).
    fn npi(&self) -> Result<WSK_PROVIDER_NPI, Error> {
        if let Some(p) = self.provider.lock().as_ref() {
            return Ok(p.npi());
        }
        let fresh = Provider::register(WSK_INFINITE_WAIT)?;
        let mut slot = self.provider.lock();
        if slot.is_none() {
            *slot = Some(fresh);
            return slot.as_ref().map(Provider::npi).ok_or_else(Error::invalid);
        }
        let npi = slot.as_ref().map(Provider::npi).ok_or_else(Error::invalid);
        // Another caller registered first: ours is released outside the lock.
        drop(slot);
        drop(fresh);
        npi
    }

    fn cached_client_credential(&self, key: &ClientKey) -> Option<PoolArc<Credential>> {
        self.client_credentials
            .lock()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, c)| c.clone())
    }

    /// Keeps a client credential for every later client with the same key (an acquisition is
    /// a round trip to the LSA). One acquired twice by racing callers goes with its sessions.
    fn cache_client_credential(&self, key: ClientKey, credential: &PoolArc<Credential>) {
        let mut cache = self.client_credentials.lock();
        if !cache.iter().any(|(k, _)| *k == key) && cache.try_reserve(1).is_ok() {
            cache.push((key, credential.clone()));
        }
    }
}

/// Kernel TLS for one driver: make one in DriverEntry, drop it (or call [`Tls::shutdown`]) in
/// the unload routine, which then waits until every connection and listener has released its
/// socket, IRPs and Schannel context, and deregisters from WSK.
pub struct Tls {
    shared: PoolArc<Shared>,
}

impl Tls {
    /// Kernel TLS whose work items run on `device` (WSK registers at the first connect or
    /// listen, which must be at PASSIVE_LEVEL).
    ///
    /// # Safety
    /// `device` is a live device object of the calling driver and stays so until this `Tls`
    /// is dropped; the `Tls` is dropped (or shut down) before the driver's unload routine
    /// returns — its drop is what keeps the image loaded while callbacks may still come.
    ///
    /// # Errors
    /// [`crate::ErrorKind::OutOfMemory`].
    pub unsafe fn new(device: *mut DEVICE_OBJECT) -> Result<Tls, Error> {
        let shared = PoolArc::try_new(Shared {
            device,
            provider: SpinLock::new(None),
            census: Census::try_new()?,
            client_credentials: SpinLock::new(Vec::new()),
        })?;
        Ok(Tls { shared })
    }

    /// A client for `config`, acquiring its Schannel credential if no earlier client with the
    /// same trust, versions and client certificate did: this waits for the LSA (PASSIVE_LEVEL;
    /// DriverEntry, a system thread). A dispatch routine uses [`Tls::acquire_client`].
    ///
    /// # Errors
    /// [`crate::ErrorKind::Credential`] (no such client certificate; no version allowed),
    /// [`crate::ErrorKind::OutOfMemory`].
    pub fn client(&self, config: ClientConfig) -> Result<Client, Error> {
        let key = config.credential_key();
        let credential = match self.shared.cached_client_credential(&key) {
            Some(credential) => credential,
            None => {
                let credential =
                    Credential::acquire_counted(&client_spec(&config), Some(&self.shared.census))
                        .map_err(Error::credential)?;
                self.shared.cache_client_credential(key, &credential);
                credential
            }
        };
        Ok(Client {
            shared: self.shared.clone(),
            config,
            credential,
        })
    }

    /// Starts making a client for `config` without blocking: `observer` hears when
    /// [`Pending::take`] has it (at once, if the credential is cached).
    ///
    /// # Errors
    /// [`crate::ErrorKind::OutOfMemory`] if it could not start.
    pub fn acquire_client<O: Observer>(
        &self,
        config: ClientConfig,
        observer: O,
    ) -> Result<Pending<Client, O>, Error> {
        let key = config.credential_key();
        if let Some(credential) = self.shared.cached_client_credential(&key) {
            let client = Client {
                shared: self.shared.clone(),
                config,
                credential,
            };
            return Ok(Pending {
                shared: self.shared.clone(),
                stage: Stage::Ready(Some(Ok(client))),
            });
        }
        let spec = client_spec(&config);
        self.pending(&spec, config, observer)
    }

    /// A server for `config`, acquiring its certificate's credential: this waits for the LSA
    /// (PASSIVE_LEVEL). A dispatch routine uses [`Tls::acquire_server`].
    ///
    /// # Errors
    /// [`crate::ErrorKind::Credential`] with STATUS_NOT_FOUND when the machine store has no
    /// such certificate (or no private key for it), [`crate::ErrorKind::OutOfMemory`].
    pub fn server(&self, config: ServerConfig) -> Result<Server, Error> {
        let credential =
            Credential::acquire_counted(&server_spec(&config), Some(&self.shared.census))
                .map_err(Error::credential)?;
        Ok(Server {
            shared: self.shared.clone(),
            config,
            credential,
        })
    }

    /// Starts making a server for `config` without blocking: `observer` hears when
    /// [`Pending::take`] has it.
    ///
    /// # Errors
    /// [`crate::ErrorKind::OutOfMemory`] if it could not start.
    pub fn acquire_server<O: Observer>(
        &self,
        config: ServerConfig,
        observer: O,
    ) -> Result<Pending<Server, O>, Error> {
        let spec = server_spec(&config);
        self.pending(&spec, config, observer)
    }

    fn pending<T: Acquired, O: Observer>(
        &self,
        spec: &CredentialSpec,
        config: <T as private::Sealed>::Config,
        observer: O,
    ) -> Result<Pending<T, O>, Error> {
        // SAFETY: the device outlives this Tls (its contract), and the Tls's drop waits (the
        // census) until the acquisition has finished.
        let acquisition = unsafe {
            Acquisition::start(
                self.shared.device,
                spec,
                Some(&self.shared.census),
                observer,
            )
        }
        .map_err(Error::credential)?;
        Ok(Pending {
            shared: self.shared.clone(),
            stage: Stage::Running(acquisition, Some(config)),
        })
    }

    /// Connections, listeners, acquisitions and credential frees that still hold kernel
    /// resources (what shutting down waits for).
    pub fn live(&self) -> usize {
        self.shared.census.live()
    }

    /// Waits (PASSIVE_LEVEL) until every connection, listener and acquisition made through
    /// this `Tls` has released everything, then deregisters from WSK. Clients, servers,
    /// sessions and listeners still held are waited for too: drop them first. A line every
    /// 10 s says what it waits for.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        // Cached credentials go once their last session lets go (taken out of the lock first:
        // freeing one is an SSPI call).
        let cached = core::mem::take(&mut *self.shared.client_credentials.lock());
        drop(cached);
        let mut waited_ms: u64 = 0;
        while self.shared.census.live() != 0 || PoolArc::references(&self.shared) > 1 {
            ksys::kmdf::sleep_ms(1);
            waited_ms += 1;
            if waited_ms % 10_000 == 0 {
                ksys::kmdf::debug_print_args(
                    ksys::kmdf::DPFLTR_WARNING_LEVEL,
                    format_args!(
                        "ktls: unload waits for {} connection(s) releasing and {} handle(s) \
                         still held ({} s)",
                        self.shared.census.live(),
                        PoolArc::references(&self.shared) - 1,
                        waited_ms / 1000
                    ),
                );
            }
        }
        // WskDeregister waits for any socket still closing.
        let provider = self.shared.provider.lock().take();
        drop(provider);
    }
}

fn client_spec(config: &ClientConfig) -> CredentialSpec {
    CredentialSpec {
        inbound: false,
        thumbprint: config.client_certificate,
        flags: config.credential_flags(),
        versions: config.versions,
        require_client_certificate: false,
    }
}

fn server_spec(config: &ServerConfig) -> CredentialSpec {
    CredentialSpec {
        inbound: true,
        thumbprint: Some(config.certificate),
        flags: 0,
        versions: config.versions,
        require_client_certificate: config.require_client_certificate,
    }
}

/// A client configuration with its acquired credential: it connects. Cheap to keep; every
/// session it starts shares the credential.
pub struct Client {
    shared: PoolArc<Shared>,
    config: ClientConfig,
    credential: PoolArc<Credential>,
}

impl Client {
    /// Connects to `to` and handshakes with `server_name` as SNI (and, with
    /// [`crate::Verify::SystemRoots`], the name the certificate must carry). Never blocks: the
    /// session reports to `observer` as it connects, handshakes and moves data.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] for a server name that is not ASCII, contains NUL
    /// or is longer than 253 bytes (an empty one names no server: no SNI is sent and Schannel
    /// has no name to check the certificate against);
    /// [`crate::ErrorKind::OutOfMemory`]; the network error if WSK cannot be registered.
    /// Failures of the connection itself arrive later, through [`Session::failure`].
    pub fn connect<O: Observer>(
        &self,
        to: SocketAddr,
        server_name: &str,
        observer: O,
    ) -> Result<Session<O>, Error> {
        let config = self.session_config(sockaddr(&to), server_name, None)?;
        self.start(config, observer)
    }

    /// As [`Self::connect`], but the session's first run — creating the socket and starting
    /// the connect — waits for the returned hold. Drop the hold at PASSIVE_LEVEL once the
    /// session is stored where its observer looks (and with no lock held that the observer
    /// takes): the connection then starts on that thread, not on a system worker a thread
    /// switch later. A hold dropped at DISPATCH_LEVEL queues the work item instead.
    ///
    /// # Errors
    /// As [`Self::connect`].
    pub fn connect_held<O: Observer>(
        &self,
        to: SocketAddr,
        server_name: &str,
        observer: O,
    ) -> Result<(Session<O>, SessionHold<O>), Error> {
        let config = self.session_config(sockaddr(&to), server_name, None)?;
        self.start_held(config, observer)
    }

    /// Resolves `host` (WskGetAddressInfo: IPv4 answers first, then IPv6), connects to its
    /// `port` and handshakes with `server_name` (usually `host` itself).
    ///
    /// # Errors
    /// As [`Client::connect`], and [`crate::ErrorKind::InvalidArgument`] for an empty host; a
    /// name that does not resolve fails the session later with [`crate::ErrorKind::Network`].
    pub fn connect_by_name<O: Observer>(
        &self,
        host: &str,
        port: u16,
        server_name: &str,
        observer: O,
    ) -> Result<Session<O>, Error> {
        let config = self.resolving_config(host, port, server_name)?;
        self.start(config, observer)
    }

    /// As [`Self::connect_by_name`], with the first run held as in [`Self::connect_held`].
    ///
    /// # Errors
    /// As [`Self::connect_by_name`].
    pub fn connect_by_name_held<O: Observer>(
        &self,
        host: &str,
        port: u16,
        server_name: &str,
        observer: O,
    ) -> Result<(Session<O>, SessionHold<O>), Error> {
        let config = self.resolving_config(host, port, server_name)?;
        self.start_held(config, observer)
    }

    /// The configuration this client connects with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    fn target(&self, server_name: &str) -> Result<Vec<u16>, Error> {
        let valid = server_name.len() <= 253 && server_name.bytes().all(|b| b.is_ascii() && b != 0);
        if !valid {
            return Err(Error::invalid());
        }
        utf16(server_name)
    }

    /// Starts a session with this client's credential; its work item runs it.
    fn start<O: Observer>(&self, config: Config, observer: O) -> Result<Session<O>, Error> {
        // SAFETY: the device outlives the Tls (its contract), whose drop waits (census) until
        // the session has released everything.
        let session = unsafe {
            Session::start(
                self.shared.device,
                config,
                self.credential.clone(),
                observer,
            )
        }?;
        Ok(session)
    }

    /// As [`Self::start`], the first run waiting for the returned hold.
    fn start_held<O: Observer>(
        &self,
        config: Config,
        observer: O,
    ) -> Result<(Session<O>, SessionHold<O>), Error> {
        // SAFETY: as in `start`.
        let started = unsafe {
            Session::start_held(
                self.shared.device,
                config,
                self.credential.clone(),
                observer,
            )
        }?;
        Ok(started)
    }

    /// A session's configuration for connecting to `host`'s `port` once it is resolved.
    fn resolving_config(&self, host: &str, port: u16, server_name: &str) -> Result<Config, Error> {
        if host.is_empty() || host.contains('\0') {
            return Err(Error::invalid());
        }
        let resolve = Some(utf16(host)?);
        let port_only = sockaddr(&SocketAddr::from(([0, 0, 0, 0], port)));
        self.session_config(port_only, server_name, resolve)
    }

    /// A client session's configuration: this client's settings, the server to reach.
    fn session_config(
        &self,
        remote: SOCKADDR_STORAGE,
        server_name: &str,
        resolve: Option<Vec<u16>>,
    ) -> Result<Config, Error> {
        let target = self.target(server_name)?;
        Ok(Config {
            role: Role::Client {
                npi: self.shared.npi()?,
                remote,
                target,
                resolve,
            },
            alpn: copy(&self.config.alpn)?,
            require_client_certificate: false,
            max_queued: self.config.limits.max_queued,
            receive_window: self.config.limits.receive_window,
            handshake_timeout_ms: self.config.limits.handshake_timeout_ms,
            pinned: self.config.pin(),
            keep_peer_certificates: self.config.keep_peer_certificates,
            census: Some(self.shared.census.clone()),
        })
    }
}

/// A server configuration with its acquired certificate credential: it listens.
pub struct Server {
    shared: PoolArc<Shared>,
    config: ServerConfig,
    credential: PoolArc<Credential>,
}

impl Server {
    /// Listens on `at` (port 0: any free port, see [`Listener::local_port`]; an IPv6
    /// unspecified address takes IPv4 clients too). Each accepted connection handshakes on its
    /// own and waits in [`Listener::next`]; `observer` hears of the listener's changes, and
    /// each accepted session reports to the observer [`ListenObserver::for_accepted`] makes.
    ///
    /// # Errors
    /// [`crate::ErrorKind::OutOfMemory`]; the network error if WSK cannot be registered. A
    /// port already in use fails the listener later ([`Listener::state`]).
    pub fn listen<O: ListenObserver>(
        &self,
        at: SocketAddr,
        observer: O,
    ) -> Result<Listener<O>, Error> {
        let config = ListenerConfig {
            npi: self.shared.npi()?,
            local: sockaddr(&at),
            alpn: copy(&self.config.alpn)?,
            require_client_certificate: self.config.require_client_certificate,
            max_queued: self.config.limits.max_queued,
            receive_window: self.config.limits.receive_window,
            backlog: self.config.backlog,
            handshake_timeout_ms: self.config.limits.handshake_timeout_ms,
            census: Some(self.shared.census.clone()),
        };
        // SAFETY: as in `Client::start`.
        let listener = unsafe {
            Listener::start(
                self.shared.device,
                config,
                self.credential.clone(),
                observer,
            )
        }?;
        Ok(listener)
    }

    /// The configuration this server listens with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }
}

/// What a [`Pending`] acquisition makes: a [`Client`] or a [`Server`].
pub trait Acquired: private::Sealed {}

impl Acquired for Client {}
impl Acquired for Server {}

mod private {
    use super::*;

    /// How an acquired credential becomes a client or a server (not implementable outside).
    pub trait Sealed: Sized {
        type Config: Send;
        fn make(
            shared: &PoolArc<Shared>,
            config: Self::Config,
            credential: PoolArc<Credential>,
        ) -> Self;
    }

    impl Sealed for Client {
        type Config = ClientConfig;
        fn make(
            shared: &PoolArc<Shared>,
            config: ClientConfig,
            credential: PoolArc<Credential>,
        ) -> Client {
            shared.cache_client_credential(config.credential_key(), &credential);
            Client {
                shared: shared.clone(),
                config,
                credential,
            }
        }
    }

    impl Sealed for Server {
        type Config = ServerConfig;
        fn make(
            shared: &PoolArc<Shared>,
            config: ServerConfig,
            credential: PoolArc<Credential>,
        ) -> Server {
            Server {
                shared: shared.clone(),
                config,
                credential,
            }
        }
    }
}

enum Stage<T: Acquired, O: Observer> {
    Running(Acquisition<O>, Option<<T as private::Sealed>::Config>),
    Ready(Option<Result<T, Error>>),
}

/// A [`Client`] or [`Server`] whose credential is being acquired
/// (SspiAcquireCredentialsHandleAsyncW from a work item: nobody blocks). Dropping it abandons
/// the acquisition (the call still finishes; the Tls waits for it at unload). Drop it at
/// PASSIVE_LEVEL (not under a spin lock).
pub struct Pending<T: Acquired, O: Observer> {
    shared: PoolArc<Shared>,
    stage: Stage<T, O>,
}

impl<T: Acquired, O: Observer> Pending<T, O> {
    /// The client or server once the credential is there (or why it is not); None while the
    /// acquisition runs — the observer hears when it finished. Taken once: later calls give
    /// None.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Credential`] (no such certificate, no version allowed),
    /// [`crate::ErrorKind::OutOfMemory`].
    pub fn take(&mut self) -> Option<Result<T, Error>> {
        match &mut self.stage {
            Stage::Ready(outcome) => outcome.take(),
            // The acquisition itself stays until the Pending goes: its last reference may free
            // an SSPI async context, which needs PASSIVE_LEVEL, and `take` may run under a
            // caller's spin lock.
            Stage::Running(acquisition, config) => {
                let outcome = acquisition.take()?;
                let config = config.take()?;
                Some(
                    outcome
                        .map(|credential| T::make(&self.shared, config, credential))
                        .map_err(Error::credential),
                )
            }
        }
    }
}

/// The Windows socket address of `addr` (SOCKADDR_IN or SOCKADDR_IN6 inside the storage).
pub(crate) fn sockaddr(addr: &SocketAddr) -> SOCKADDR_STORAGE {
    let mut s = SOCKADDR_STORAGE {
        ss_family: 0,
        data: [0; 126],
    };
    s.data[0..2].copy_from_slice(&addr.port().to_be_bytes());
    match addr {
        SocketAddr::V4(v4) => {
            s.ss_family = AF_INET as u16;
            s.data[2..6].copy_from_slice(&v4.ip().octets());
        }
        SocketAddr::V6(v6) => {
            s.ss_family = AF_INET6 as u16;
            // sin6_flowinfo, the address, sin6_scope_id.
            s.data[2..6].copy_from_slice(&v6.flowinfo().to_be_bytes());
            s.data[6..22].copy_from_slice(&v6.ip().octets());
            s.data[22..26].copy_from_slice(&v6.scope_id().to_le_bytes());
        }
    }
    s
}

fn utf16(text: &str) -> Result<Vec<u16>, Error> {
    let mut wide = Vec::new();
    wide.try_reserve_exact(text.len())
        .map_err(|_| Error::out_of_memory())?;
    wide.extend(text.encode_utf16());
    Ok(wide)
}

fn copy(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(bytes.len())
        .map_err(|_| Error::out_of_memory())?;
    v.extend_from_slice(bytes);
    Ok(v)
}
