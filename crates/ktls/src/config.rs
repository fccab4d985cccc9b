//! What a client or a server wants of its connections, built once and shared by all of them:
//! plain data with defaults and builders, checked when built, holding no kernel resource.
//!
//! The choices that must agree with each other are made in one place: a [`Verify`] sets both
//! the Schannel credential's validation flags and the check the session makes after the
//! handshake.

use alloc::vec::Vec;

use crate::error::Error;

/// TLS versions a connection may negotiate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Versions {
    /// TLS 1.2 allowed.
    pub tls12: bool,
    /// TLS 1.3 allowed (kernel Schannel offers it from Windows build 20348).
    pub tls13: bool,
}

impl Versions {
    /// TLS 1.2 and 1.3: what Schannel negotiates best.
    pub const ALL: Versions = Versions {
        tls12: true,
        tls13: true,
    };
    /// TLS 1.2 only.
    pub const TLS12: Versions = Versions {
        tls12: true,
        tls13: false,
    };
    /// TLS 1.3 only.
    pub const TLS13: Versions = Versions {
        tls12: false,
        tls13: true,
    };
}

impl Default for Versions {
    fn default() -> Versions {
        Versions::ALL
    }
}

/// How a client decides to trust the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verify {
    /// Schannel validates the chain against the machine's trusted roots and the certificate's
    /// name against the server name given to connect.
    SystemRoots,
    /// Only a server certificate whose SHA-256 (of its DER) is this one is accepted; the chain
    /// and name are not validated (a self-signed certificate works). A different certificate
    /// fails with [`crate::ErrorKind::PinMismatch`].
    Pinned([u8; 32]),
    /// Nothing is validated: any certificate is accepted. For tests against throw-away
    /// certificates only — anyone on the path can read and change the traffic.
    InsecureAcceptAnyCertificate,
}

/// The settings both builders share (versions, ALPN, limits), written once; `$alpn_doc` says
/// what the ALPN list means for that side.
macro_rules! common_settings {
    ($alpn_doc:expr) => {
        /// Which TLS versions may be negotiated (default: 1.2 and 1.3).
        pub fn versions(mut self, versions: Versions) -> Self {
            self.config.versions = versions;
            self
        }

        #[doc = $alpn_doc]
        pub fn alpn<I, P>(mut self, protocols: I) -> Self
        where
            I: IntoIterator<Item = P>,
            P: AsRef<[u8]>,
        {
            match alpn_wire(protocols) {
                Some(wire) => self.config.alpn = wire,
                None => self.alpn_valid = false,
            }
            self
        }

        /// Connecting (clients) plus handshaking must finish within this many milliseconds
        /// (0: no limit; default 10,000).
        pub fn handshake_timeout_ms(mut self, ms: u32) -> Self {
            self.config.limits.handshake_timeout_ms = ms;
            self
        }

        /// Plaintext [`crate::Session::send`] accepts beyond what went out (default 1 MiB).
        pub fn max_queued(mut self, bytes: usize) -> Self {
            self.config.limits.max_queued = bytes;
            self
        }

        /// Plaintext received and unread before receiving pauses (default 1 MiB).
        pub fn receive_window(mut self, bytes: usize) -> Self {
            self.config.limits.receive_window = bytes;
            self
        }
    };
}

/// Default limit of plaintext queued to send and not yet sent, per connection.
pub const DEFAULT_MAX_QUEUED: usize = 1 << 20;
/// Default limit of plaintext received and not yet read, per connection.
pub const DEFAULT_RECEIVE_WINDOW: usize = 1 << 20;
/// Default limit on connecting plus handshaking.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u32 = 10_000;
/// Default number of accepted connections a listener keeps waiting to be taken.
pub const DEFAULT_BACKLOG: usize = 64;

/// Limits every connection of a configuration keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_queued: usize,
    pub receive_window: usize,
    pub handshake_timeout_ms: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_queued: DEFAULT_MAX_QUEUED,
            receive_window: DEFAULT_RECEIVE_WINDOW,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
        }
    }
}

/// A client's configuration: how it trusts servers, what it offers. Make one with
/// [`ClientConfig::builder`]; [`crate::Tls::client`] turns it into a [`crate::Client`] that
/// connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    pub(crate) verify: Verify,
    pub(crate) versions: Versions,
    pub(crate) alpn: Vec<u8>,
    pub(crate) client_certificate: Option<[u8; 20]>,
    pub(crate) keep_peer_certificates: bool,
    pub(crate) resume_sessions: bool,
    pub(crate) limits: Limits,
}

impl ClientConfig {
    /// Starts a configuration: the given trust decision, TLS 1.2 and 1.3, no ALPN, no client
    /// certificate, 1 MiB queues each way, a 10 s handshake limit.
    pub fn builder(verify: Verify) -> ClientConfigBuilder {
        ClientConfigBuilder {
            config: ClientConfig {
                verify,
                versions: Versions::ALL,
                alpn: Vec::new(),
                client_certificate: None,
                keep_peer_certificates: false,
                resume_sessions: true,
                limits: Limits::default(),
            },
            alpn_valid: true,
        }
    }

    /// The trust decision.
    pub fn verify(&self) -> Verify {
        self.verify
    }

    /// The SCH_CRED_* flags the trust decision and session reuse need on the credential.
    pub(crate) fn credential_flags(&self) -> u32 {
        // Schannel resumes by default; the credential's session cache is what is switched off.
        let reconnects = if self.resume_sessions {
            0
        } else {
            ksys::schannel::SCH_CRED_DISABLE_RECONNECTS
        };
        reconnects
            | match self.verify {
                Verify::SystemRoots => 0,
                // The chain is not validated; the session compares the certificate's SHA-256, or
                // nothing at all.
                Verify::Pinned(_) | Verify::InsecureAcceptAnyCertificate => {
                    ksys::schannel::SCH_CRED_MANUAL_CRED_VALIDATION
                        | ksys::schannel::SCH_CRED_NO_SERVERNAME_CHECK
                }
            }
    }

    /// The pin the session checks, if any.
    pub(crate) fn pin(&self) -> Option<[u8; 32]> {
        match self.verify {
            Verify::Pinned(digest) => Some(digest),
            _ => None,
        }
    }

    /// What tells apart the credentials two configurations need: equal keys share one.
    pub(crate) fn credential_key(&self) -> (u32, Versions, Option<[u8; 20]>) {
        (
            self.credential_flags(),
            self.versions,
            self.client_certificate,
        )
    }
}

/// Builds a [`ClientConfig`]; every setting has a default.
#[derive(Clone, Debug)]
pub struct ClientConfigBuilder {
    config: ClientConfig,
    alpn_valid: bool,
}

impl ClientConfigBuilder {
    common_settings!(
        "ALPN protocol ids to offer, most preferred first (e.g. `[\"h2\", \"http/1.1\"]`)."
    );

    /// Whether a connection may resume a session an earlier one with the same server name
    /// left in the credential's cache (default: yes, as Schannel does — the handshake then
    /// skips the certificate exchange). No gives a full handshake every time
    /// (SCH_CRED_DISABLE_RECONNECTS on its own credential).
    pub fn resume_sessions(mut self, resume: bool) -> Self {
        self.config.resume_sessions = resume;
        self
    }

    /// Presents the certificate with this SHA-1 thumbprint from the machine store "MY" when a
    /// server asks for one (default: none; a server that requires one then fails the handshake).
    pub fn client_certificate(mut self, thumbprint: [u8; 20]) -> Self {
        self.config.client_certificate = Some(thumbprint);
        self
    }

    /// Keeps the server's certificate chain after the handshake, for
    /// [`crate::Session::with_peer_certificates`] (default: off — it costs pool).
    pub fn keep_peer_certificates(mut self, keep: bool) -> Self {
        self.config.keep_peer_certificates = keep;
        self
    }

    /// The configuration.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] if no TLS version is allowed, an ALPN id is empty
    /// or longer than 255 bytes (or the list longer than 65,535), or a queue limit is 0.
    pub fn build(self) -> Result<ClientConfig, Error> {
        check(
            self.alpn_valid,
            self.config.versions,
            &self.config.limits,
            usize::MAX,
        )?;
        Ok(self.config)
    }
}

/// A server's configuration: its certificate and what it offers. Make one with
/// [`ServerConfig::builder`]; [`crate::Tls::server`] turns it into a [`crate::Server`] that
/// listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub(crate) certificate: [u8; 20],
    pub(crate) versions: Versions,
    pub(crate) alpn: Vec<u8>,
    pub(crate) require_client_certificate: bool,
    pub(crate) backlog: usize,
    pub(crate) limits: Limits,
}

impl ServerConfig {
    /// Starts a configuration for the certificate with this SHA-1 thumbprint in the machine
    /// store "MY" (LocalMachine\My, with its private key): TLS 1.2 and 1.3, no ALPN, no client
    /// certificates asked for, 64 connections waiting to be taken, 1 MiB queues, a 10 s
    /// handshake limit.
    pub fn builder(certificate: [u8; 20]) -> ServerConfigBuilder {
        ServerConfigBuilder {
            config: ServerConfig {
                certificate,
                versions: Versions::ALL,
                alpn: Vec::new(),
                require_client_certificate: false,
                backlog: DEFAULT_BACKLOG,
                limits: Limits::default(),
            },
            alpn_valid: true,
        }
    }
}

/// Builds a [`ServerConfig`]; every setting but the certificate has a default.
#[derive(Clone, Debug)]
pub struct ServerConfigBuilder {
    config: ServerConfig,
    alpn_valid: bool,
}

impl ServerConfigBuilder {
    common_settings!(
        "ALPN protocol ids the server accepts, most preferred first; a client offering none of \
         them fails the handshake (no_application_protocol)."
    );

    /// Asks every client for a certificate and fails the handshake of one that sends none or
    /// one Windows does not trust (default: off).
    pub fn require_client_certificate(mut self, require: bool) -> Self {
        self.config.require_client_certificate = require;
        self
    }

    /// Accepted connections kept waiting to be taken before accepting pauses (default 64).
    pub fn backlog(mut self, connections: usize) -> Self {
        self.config.backlog = connections;
        self
    }

    /// The configuration.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidArgument`] as for [`ClientConfigBuilder::build`], or a backlog
    /// of 0.
    pub fn build(self) -> Result<ServerConfig, Error> {
        check(
            self.alpn_valid,
            self.config.versions,
            &self.config.limits,
            self.config.backlog,
        )?;
        Ok(self.config)
    }
}

fn check(
    alpn_valid: bool,
    versions: Versions,
    limits: &Limits,
    backlog: usize,
) -> Result<(), Error> {
    let ok = alpn_valid
        && (versions.tls12 || versions.tls13)
        && limits.max_queued > 0
        && limits.receive_window > 0
        && backlog > 0;
    if ok { Ok(()) } else { Err(Error::invalid()) }
}

/// ALPN ids in TLS wire format (each prefixed by its length); None if one is empty, longer than
/// 255 bytes, or the list does not fit the extension's 16-bit length.
pub(crate) fn alpn_wire<I, P>(protocols: I) -> Option<Vec<u8>>
where
    I: IntoIterator<Item = P>,
    P: AsRef<[u8]>,
{
    let mut wire = Vec::new();
    for protocol in protocols {
        let id = protocol.as_ref();
        let len = u8::try_from(id.len()).ok().filter(|&n| n > 0)?;
        wire.try_reserve(1 + id.len()).ok()?;
        wire.push(len);
        wire.extend_from_slice(id);
    }
    (wire.len() <= usize::from(u16::MAX) - 16).then_some(wire)
}
