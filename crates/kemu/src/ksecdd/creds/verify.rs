//! How a credential's contexts check certificates as Schannel would: the chain against the
//! emulated Root store, names unless disabled, trusted self-signed certificates, proof of key,
//! Schannel's signature schemes, and a client that notes a server asked for a certificate.

use super::*;

pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(super) fn roots(store: &CertStore) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for r in store.roots() {
        let _ = roots.add(r);
    }
    roots
}

/// Server certificate checks: chain against the emulated Root store, name unless disabled, or
/// nothing at all (manual validation: the caller inspects the chain itself).
#[derive(Debug)]
pub(super) struct Verifier {
    pub(super) inner: Option<Arc<WebPkiServerVerifier>>,
    /// The Root store's certificates: one of them presented alone as the server's certificate
    /// is trusted even with CA:TRUE (see [`trusted_self_signed`]).
    pub(super) trusted: Vec<CertificateDer<'static>>,
    pub(super) check_name: bool,
    pub(super) provider: Arc<CryptoProvider>,
}

/// Schannel's chain engine accepts a trusted self-signed certificate as the whole chain even when
/// it says CA:TRUE (what `openssl req -x509` makes); webpki refuses a CA as an end entity. webpki
/// checks the validity period before the basic constraints, so CaUsedAsEndEntity means the time
/// was right; the name is checked here.
pub(super) fn trusted_self_signed(
    verifier: &Verifier,
    error: &Error,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    server_name: &ServerName<'_>,
) -> Option<Result<ServerCertVerified, Error>> {
    let Error::InvalidCertificate(CertificateError::Other(other)) = error else {
        return None;
    };
    let ca_as_leaf = matches!(
        other.0.downcast_ref::<webpki::Error>(),
        Some(webpki::Error::CaUsedAsEndEntity)
    );
    if !ca_as_leaf
        || !intermediates.is_empty()
        || !verifier
            .trusted
            .iter()
            .any(|r| r.as_ref() == end_entity.as_ref())
    {
        return None;
    }
    if !verifier.check_name {
        return Some(Ok(ServerCertVerified::assertion()));
    }
    let named = webpki::EndEntityCert::try_from(end_entity)
        .ok()
        .is_some_and(|c| c.verify_is_valid_for_subject_name(server_name).is_ok());
    Some(if named {
        Ok(ServerCertVerified::assertion())
    } else {
        Err(Error::InvalidCertificate(CertificateError::NotValidForName))
    })
}

/// The handshake signature (CertificateVerify / ServerKeyExchange) made with the certificate's
/// key: the proof of possession both verifiers check at once, whatever the chain's verdict.
pub(super) fn proof_of_key(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    tls13: bool,
) -> Result<HandshakeSignatureValid, Error> {
    let algorithms = &provider.signature_verification_algorithms;
    if tls13 {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    } else {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }
}

/// Signature schemes Schannel offers: no EdDSA (it neither serves nor accepts Ed25519/Ed448
/// certificates in TLS).
pub(super) fn schannel_schemes(provider: &CryptoProvider) -> Vec<SignatureScheme> {
    provider
        .signature_verification_algorithms
        .supported_schemes()
        .into_iter()
        .filter(|s| !matches!(s, SignatureScheme::ED25519 | SignatureScheme::ED448))
        .collect()
}

/// Whether a private key is one Schannel can serve with (not EdDSA).
pub(super) fn servable(key: &rustls::pki_types::PrivateKeyDer<'static>) -> bool {
    provider()
        .key_provider
        .load_private_key(key.clone_key())
        .is_ok_and(|k| {
            !matches!(
                k.algorithm(),
                rustls::SignatureAlgorithm::ED25519 | rustls::SignatureAlgorithm::ED448
            )
        })
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(inner) = &self.inner else {
            return Ok(ServerCertVerified::assertion());
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            Err(e) => trusted_self_signed(self, &e, end_entity, intermediates, server_name)
                .unwrap_or(Err(e)),
            ok => ok,
        }
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

/// A client credential with no certificate and without SCH_CRED_NO_DEFAULT_CREDS: Schannel may
/// look for a default client certificate, and tells the caller a server asked for one with
/// SEC_I_INCOMPLETE_CREDENTIALS. It offers none; this notes that a server asked.
#[derive(Debug, Default)]
pub(crate) struct CertificateAsked(pub std::sync::atomic::AtomicBool);

impl rustls::client::ResolvesClientCert for CertificateAsked {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}
