//! A server certificate and key given as PEM files, checked before they reach the machine store:
//! a key that is not the certificate's, an encrypted key or an EdDSA certificate would only
//! show up later as every handshake failing, so `serve` refuses them at start, naming the file.

use std::path::Path;

use crate::errors::Failure;

/// Reads and checks `chain` (certificates, leaf first) and `key` (its private key).
///
/// # Errors
/// A usage failure that names the file at fault and says what to do.
pub fn check(chain: &Path, key: &Path) -> Result<(), Failure> {
    let chain_text = std::fs::read(chain)
        .map_err(|e| Failure::usage(format!("certificate {}: {e}", chain.display())))?;
    let key_text =
        std::fs::read(key).map_err(|e| Failure::usage(format!("key {}: {e}", key.display())))?;
    let certificates: Vec<_> = rustls_pemfile::certs(&mut &chain_text[..])
        .collect::<Result<_, _>>()
        .map_err(|e| Failure::usage(format!("certificate {}: {e}", chain.display())))?;
    if certificates.is_empty() {
        return Err(Failure::usage(format!(
            "certificate {}: no PEM certificate in it",
            chain.display()
        )));
    }
    let encrypted = String::from_utf8_lossy(&key_text);
    if encrypted.contains("ENCRYPTED PRIVATE KEY") || encrypted.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(Failure::usage(format!(
            "key {} is encrypted: the driver needs it in the clear, e.g. `openssl pkey -in {} -out key-plain.pem`",
            key.display(),
            key.display()
        )));
    }
    let private = rustls_pemfile::private_key(&mut &key_text[..])
        .map_err(|e| Failure::usage(format!("key {}: {e}", key.display())))?
        .ok_or_else(|| {
            Failure::usage(format!("key {}: no PEM private key in it", key.display()))
        })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private.clone_key())
        .map_err(|e| Failure::usage(format!("key {}: {e}", key.display())))?;
    if matches!(
        signing.algorithm(),
        rustls::SignatureAlgorithm::ED25519 | rustls::SignatureAlgorithm::ED448
    ) {
        return Err(Failure::usage(format!(
            "certificate {}: Schannel does not offer EdDSA (Ed25519/Ed448) certificates; use ECDSA P-256 or RSA",
            chain.display()
        )));
    }
    match rustls::sign::CertifiedKey::new(certificates, signing).keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(Failure::usage(format!(
                "key {} does not belong to certificate {} (their public keys differ)",
                key.display(),
                chain.display()
            )))
        }
        _ => Ok(()),
    }
}
