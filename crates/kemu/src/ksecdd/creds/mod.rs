//! Credentials: SCH_CREDENTIALS (version 5) as kernel callers pass them, resolved against the
//! emulated store, and the rustls configurations a context is built from.

mod verify;

pub(crate) use verify::CertificateAsked;
use verify::*;

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, ProtocolVersion, RootCertStore,
    ServerConfig, SignatureScheme,
};

use ksys::schannel::*;
use ksys::sspi::*;

use super::store::{CertStore, Identity, Thumbprint};

/// Protocols below TLS 1.2 of each direction.
const LEGACY_SERVER: u32 = SP_PROT_PCT1_SERVER
    | SP_PROT_SSL2_SERVER
    | SP_PROT_SSL3_SERVER
    | SP_PROT_TLS1_0_SERVER
    | SP_PROT_TLS1_1_SERVER;
const LEGACY_CLIENT: u32 = SP_PROT_PCT1_CLIENT
    | SP_PROT_SSL2_CLIENT
    | SP_PROT_SSL3_CLIENT
    | SP_PROT_TLS1_0_CLIENT
    | SP_PROT_TLS1_1_CLIENT;

/// What an ACH call established.
pub(crate) struct Credential {
    pub inbound: bool,
    pub identity: Option<Arc<Identity>>,
    pub flags: u32,
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    pub alpn: Vec<Vec<u8>>,
    /// SECPKG_ATTR_CLIENT_CERT_POLICY's dwCertFlags, once SetCredentialsAttributesW set it
    /// (revocation flags: recorded, not modelled).
    pub client_cert_policy: Mutex<Option<u32>>,
    /// The rustls configurations built for this credential's contexts (as Schannel keeps its
    /// per-credential state): building one parses the key and the trusted roots, which would
    /// otherwise happen on every handshake.
    configs: ConfigCache,
}

/// Configurations a credential's contexts share, by what distinguishes them.
#[derive(Default)]
struct ConfigCache {
    client: Mutex<Vec<(ClientKey, Arc<ClientConfig>)>>,
    server: Mutex<Vec<(ServerKey, Arc<ServerConfig>)>>,
}

/// Configurations kept per credential (the oldest goes first).
const CACHED_CONFIGS: usize = 8;

#[derive(Clone, PartialEq, Eq)]
struct ClientKey {
    manual: bool,
    alpn: Vec<Vec<u8>>,
    /// When the trusted roots last changed (None: manual validation, roots unused).
    roots: Option<Option<SystemTime>>,
}

#[derive(Clone, PartialEq, Eq)]
struct ServerKey {
    mutual: bool,
    alpn: Vec<Vec<u8>>,
    roots: Option<Option<SystemTime>>,
}

fn cached<K: PartialEq, C>(
    cache: &Mutex<Vec<(K, Arc<C>)>>,
    key: K,
    build: impl FnOnce() -> Result<Arc<C>, SECURITY_STATUS>,
) -> Result<Arc<C>, SECURITY_STATUS> {
    if let Some((_, c)) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(k, _)| *k == key)
    {
        return Ok(c.clone());
    }
    // Built outside the lock (it parses keys and roots); a racing builder's copy wins.
    let config = build()?;
    let mut entries = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = entries.iter().find(|(k, _)| *k == key) {
        return Ok(c.clone());
    }
    if entries.len() >= CACHED_CONFIGS {
        entries.remove(0);
    }
    entries.push((key, config.clone()));
    Ok(config)
}

/// Reads the SCH_CREDENTIALS a caller passed and resolves its certificate.
///
/// # Safety
/// `auth` must be NULL or point to an SCH_CREDENTIALS whose pointers are valid.
pub(crate) unsafe fn parse(
    auth: *const SCH_CREDENTIALS,
    inbound: bool,
    store: &CertStore,
) -> Result<Credential, SECURITY_STATUS> {
    if auth.is_null() {
        if inbound {
            return Err(SEC_E_NO_CREDENTIALS);
        }
        super::violation(
            "SspiAcquireCredentialsHandleAsyncW: no SCH_CREDENTIALS leaves every protocol, TLS \
             1.0/1.1 included, at the system default"
                .into(),
            0,
        );
    }
    // SAFETY: per the contract.
    let c = unsafe { &*auth };
    if c.dwVersion != SCH_CREDENTIALS_VERSION {
        // SCHANNEL_CRED (version 4) cannot carry TLS 1.3 settings; kernel callers use version 5.
        return Err(SEC_E_UNKNOWN_CREDENTIALS);
    }
    let mut thumbprint = None;
    if c.cCreds > 0 {
        if c.paCred.is_null() || c.cCreds != 1 {
            return Err(SEC_E_UNKNOWN_CREDENTIALS);
        }
        let hash = match c.dwCredFormat {
            // SAFETY: for the hash formats paCred points straight at the hash structure.
            SCH_CRED_FORMAT_CERT_HASH => unsafe {
                (*(c.paCred as *const SCHANNEL_CERT_HASH)).ShaHash
            },
            SCH_CRED_FORMAT_CERT_HASH_STORE => {
                // SAFETY: as above.
                let h = unsafe { &*(c.paCred as *const SCHANNEL_CERT_HASH_STORE) };
                let name: String = String::from_utf16_lossy(
                    &h.pwszStoreName[..h
                        .pwszStoreName
                        .iter()
                        .position(|&u| u == 0)
                        .unwrap_or(SCH_CRED_MAX_STORE_NAME_SIZE)],
                );
                if !name.eq_ignore_ascii_case("MY") {
                    return Err(SEC_E_NO_CREDENTIALS);
                }
                h.ShaHash
            }
            // CERT_CONTEXT credentials do not exist in kernel mode.
            _ => return Err(SEC_E_UNKNOWN_CREDENTIALS),
        };
        thumbprint = Some(Thumbprint(hash));
    }
    let identity = match thumbprint {
        // A certificate whose key Schannel cannot sign with (EdDSA) gives no credential.
        Some(t) => Some(Arc::new(
            store
                .find(&t)
                .filter(|id| servable(&id.key))
                .ok_or(SEC_E_NO_CREDENTIALS)?,
        )),
        None if inbound => return Err(SEC_E_NO_CREDENTIALS),
        None => None,
    };
    let mut disabled = 0u32;
    let mut alpn = Vec::new();
    if c.cTlsParameters > 0 && !c.pTlsParameters.is_null() {
        // SAFETY: cTlsParameters entries at pTlsParameters.
        let params =
            unsafe { std::slice::from_raw_parts(c.pTlsParameters, c.cTlsParameters as usize) };
        for p in params {
            disabled |= p.grbitDisabledProtocols;
            if p.cAlpnIds > 0 && !p.rgstrAlpnIds.is_null() {
                // SAFETY: cAlpnIds UNICODE_STRINGs.
                let ids =
                    unsafe { std::slice::from_raw_parts(p.rgstrAlpnIds, p.cAlpnIds as usize) };
                for id in ids {
                    // SAFETY: a valid UNICODE_STRING.
                    if let Some(text) = unsafe { crate::rtl::unicode_text(id) } {
                        alpn.push(text.into_bytes());
                    }
                }
            }
        }
    }
    let (tls12, tls13, legacy) = if inbound {
        (SP_PROT_TLS1_2_SERVER, SP_PROT_TLS1_3_SERVER, LEGACY_SERVER)
    } else {
        (SP_PROT_TLS1_2_CLIENT, SP_PROT_TLS1_3_CLIENT, LEGACY_CLIENT)
    };
    if disabled & legacy != legacy {
        super::violation(
            format!(
                "SspiAcquireCredentialsHandleAsyncW: grbitDisabledProtocols {disabled:#x} leaves \
                 protocols below TLS 1.2 ({:#x}) at the system default, which enables TLS 1.0/1.1 \
                 on many Windows builds; disable every protocol not wanted (~wanted)",
                legacy & !disabled
            ),
            disabled as usize,
        );
    }
    let mut versions = Vec::new();
    if disabled & tls13 == 0 {
        versions.push(&rustls::version::TLS13);
    }
    if disabled & tls12 == 0 {
        versions.push(&rustls::version::TLS12);
    }
    if versions.is_empty() {
        return Err(SEC_E_ALGORITHM_MISMATCH);
    }
    Ok(Credential {
        inbound,
        identity,
        flags: c.dwFlags,
        versions,
        alpn,
        client_cert_policy: Mutex::new(None),
        configs: ConfigCache::default(),
    })
}

/// Whether contexts of this credential report SEC_I_INCOMPLETE_CREDENTIALS.
pub(crate) fn may_look_for_default_certificate(cred: &Credential) -> bool {
    !cred.inbound && cred.identity.is_none() && cred.flags & SCH_CRED_NO_DEFAULT_CREDS == 0
}

/// The client configuration of one ISC context (shared by the credential's contexts that ask
/// for the same validation and ALPN while the trusted roots stay the same). A credential that
/// may look for a default certificate gets a configuration of its own per context, with `asked`
/// as its certificate resolver.
pub(crate) fn client_config(
    cred: &Credential,
    store: &CertStore,
    requirements: u32,
    alpn: Vec<Vec<u8>>,
    asked: Option<Arc<CertificateAsked>>,
) -> Result<Arc<ClientConfig>, SECURITY_STATUS> {
    let manual = cred.flags & SCH_CRED_MANUAL_CRED_VALIDATION != 0
        || u64::from(requirements) & ISC_REQ_MANUAL_CRED_VALIDATION != 0;
    if let Some(asked) = asked {
        let mut config = (*build_client_config(cred, store, manual, alpn)?).clone();
        config.client_auth_cert_resolver = asked;
        return Ok(Arc::new(config));
    }
    let key = ClientKey {
        manual,
        alpn,
        roots: (!manual).then(|| store.roots_changed()),
    };
    cached(&cred.configs.client, key.clone(), || {
        build_client_config(cred, store, manual, key.alpn)
    })
}

fn build_client_config(
    cred: &Credential,
    store: &CertStore,
    manual: bool,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ClientConfig>, SECURITY_STATUS> {
    let provider = provider();
    let inner = if manual {
        None
    } else {
        let roots = Arc::new(roots(store));
        Some(
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|_| SEC_E_UNTRUSTED_ROOT)?,
        )
    };
    let verifier = Arc::new(Verifier {
        inner,
        trusted: if manual { Vec::new() } else { store.roots() },
        check_name: cred.flags & SCH_CRED_NO_SERVERNAME_CHECK == 0,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&cred.versions)
        .map_err(|_| SEC_E_ALGORITHM_MISMATCH)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &cred.identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|_| SEC_E_NO_CREDENTIALS)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if alpn.is_empty() {
        cred.alpn.clone()
    } else {
        alpn
    };
    // Schannel's client session cache: per credential (each credential's contexts share this
    // configuration) and target name (rustls keys its store by server name); off with
    // SCH_CRED_DISABLE_RECONNECTS.
    if cred.flags & SCH_CRED_DISABLE_RECONNECTS != 0 {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// ASC_REQ_MUTUAL_AUTH as Schannel does it: the server asks for a certificate (naming the
/// trusted roots) but completes the handshake whether one came or not and whatever its chain;
/// only the proof of possession (CertificateVerify) is checked now. The verdict comes later
/// through SECPKG_ATTR_CERT_CHECK_RESULT_INPROC ([`client_certificate_verdict`]).
#[derive(Debug)]
struct DeferredClientVerifier {
    hints: Vec<rustls::DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl rustls::server::danger::ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        proof_of_key(&self.provider, message, cert, dss, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        proof_of_key(&self.provider, message, cert, dss, true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schannel_schemes(&self.provider)
    }
}

/// CERT_TRUST_* bits and HRESULTs of a chain verdict (wincrypt.h / winerror.h values).
const CERT_TRUST_IS_NOT_TIME_VALID: u32 = 0x1;
const CERT_TRUST_IS_NOT_SIGNATURE_VALID: u32 = 0x8;
const CERT_TRUST_IS_NOT_VALID_FOR_USAGE: u32 = 0x10;
const CERT_TRUST_IS_UNTRUSTED_ROOT: u32 = 0x20;
const CERT_TRUST_IS_PARTIAL_CHAIN: u32 = 0x10000;
const CERT_E_EXPIRED: i32 = 0x800B_0101_u32 as i32;
const CERT_E_UNTRUSTEDROOT: i32 = 0x800B_0109_u32 as i32;
const CERT_E_CHAINING: i32 = 0x800B_010A_u32 as i32;
const CERT_E_WRONG_USAGE: i32 = 0x800B_0110_u32 as i32;
const TRUST_E_CERT_SIGNATURE: i32 = 0x8009_6004_u32 as i32;

/// SECPKG_ATTR_CERT_CHECK_RESULT_INPROC for a client's chain (leaf first): the Root store's
/// verdict on it as a client certificate, now.
pub(crate) fn client_certificate_verdict(
    store: &CertStore,
    chain: &[CertificateDer<'static>],
) -> SecPkgContext_CertificateValidationResult {
    let verdict = |status: u32, hr: i32| SecPkgContext_CertificateValidationResult {
        dwChainErrorStatus: status,
        hrVerifyChainStatus: hr,
    };
    let Some((leaf, intermediates)) = chain.split_first() else {
        return verdict(CERT_TRUST_IS_PARTIAL_CHAIN, CERT_E_CHAINING);
    };
    let verifier =
        match WebPkiClientVerifier::builder_with_provider(Arc::new(roots(store)), provider())
            .build()
        {
            Ok(v) => v,
            // No trusted root at all.
            Err(_) => return verdict(CERT_TRUST_IS_UNTRUSTED_ROOT, CERT_E_UNTRUSTEDROOT),
        };
    match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
        Ok(_) => verdict(0, 0),
        Err(Error::InvalidCertificate(e)) => match e {
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                verdict(CERT_TRUST_IS_NOT_TIME_VALID, CERT_E_EXPIRED)
            }
            CertificateError::UnknownIssuer => verdict(
                CERT_TRUST_IS_UNTRUSTED_ROOT | CERT_TRUST_IS_PARTIAL_CHAIN,
                CERT_E_UNTRUSTEDROOT,
            ),
            CertificateError::BadSignature => {
                verdict(CERT_TRUST_IS_NOT_SIGNATURE_VALID, TRUST_E_CERT_SIGNATURE)
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                verdict(CERT_TRUST_IS_NOT_VALID_FOR_USAGE, CERT_E_WRONG_USAGE)
            }
            _ => verdict(CERT_TRUST_IS_PARTIAL_CHAIN, CERT_E_CHAINING),
        },
        Err(_) => verdict(CERT_TRUST_IS_PARTIAL_CHAIN, CERT_E_CHAINING),
    }
}

/// The server configuration of one ASC context (shared like the client's).
pub(crate) fn server_config(
    cred: &Credential,
    store: &CertStore,
    mutual: bool,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ServerConfig>, SECURITY_STATUS> {
    let key = ServerKey {
        mutual,
        alpn,
        roots: mutual.then(|| store.roots_changed()),
    };
    cached(&cred.configs.server, key.clone(), || {
        build_server_config(cred, store, mutual, key.alpn)
    })
}

fn build_server_config(
    cred: &Credential,
    store: &CertStore,
    mutual: bool,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ServerConfig>, SECURITY_STATUS> {
    let provider = provider();
    let identity = cred.identity.as_ref().ok_or(SEC_E_NO_CREDENTIALS)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&cred.versions)
        .map_err(|_| SEC_E_ALGORITHM_MISMATCH)?;
    let builder = if mutual {
        let roots = roots(store);
        builder.with_client_cert_verifier(Arc::new(DeferredClientVerifier {
            hints: roots.subjects(),
            provider,
        }))
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|_| SEC_E_NO_CREDENTIALS)?;
    // Schannel picks the cipher suite by the server's priority list, not the client's order.
    config.ignore_client_order = true;
    config.alpn_protocols = if alpn.is_empty() {
        cred.alpn.clone()
    } else {
        alpn
    };
    Ok(Arc::new(config))
}

/// The server name an ISC target gives: SNI, name check and session-cache key.
pub(crate) fn server_name(target: &str) -> ServerName<'static> {
    if target.is_empty() {
        // No target: no SNI, and a name check that cannot pass.
        return ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
    }
    ServerName::try_from(target.to_owned())
        .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()))
}

/// Schannel's protocol bit for a version, as SecPkgContext_ConnectionInfo reports it.
pub(crate) fn protocol_bit(version: Option<ProtocolVersion>, inbound: bool) -> u32 {
    match (version, inbound) {
        (Some(ProtocolVersion::TLSv1_3), true) => SP_PROT_TLS1_3_SERVER,
        (Some(ProtocolVersion::TLSv1_3), false) => SP_PROT_TLS1_3_CLIENT,
        (Some(ProtocolVersion::TLSv1_2), true) => SP_PROT_TLS1_2_SERVER,
        (Some(ProtocolVersion::TLSv1_2), false) => SP_PROT_TLS1_2_CLIENT,
        _ => 0,
    }
}
