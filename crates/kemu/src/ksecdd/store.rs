//! The emulated machine certificate store: `MY` holds certificates with private keys (what a
//! server credential names by SHA-1 thumbprint), `Root` the trusted roots client validation uses.
//!
//! On disk it is a folder: `<dir>/MY/<THUMBPRINT>.pem` (the chain, leaf first),
//! `<dir>/MY/<THUMBPRINT>.key` (its PKCS#8 / SEC1 / PKCS#1 key), `<dir>/Root/<THUMBPRINT>.pem`.
//! Thumbprints are the upper-case hex SHA-1 of the leaf's DER, as `certutil` and PowerShell show.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate's SHA-1 thumbprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Thumbprint(pub [u8; 20]);

impl Thumbprint {
    /// The thumbprint of a DER certificate.
    pub fn of(der: &[u8]) -> Thumbprint {
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
        let mut t = [0u8; 20];
        t.copy_from_slice(digest.as_ref());
        Thumbprint(t)
    }

    /// Parses 40 hex digits (spaces and colons ignored).
    pub fn parse(text: &str) -> Option<Thumbprint> {
        let digits: Vec<u8> = text.bytes().filter(|b| !matches!(b, b' ' | b':')).collect();
        if digits.len() != 40 {
            return None;
        }
        let mut t = [0u8; 20];
        for (i, pair) in digits.chunks(2).enumerate() {
            t[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Thumbprint(t))
    }
}

impl fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thumbprint({self})")
    }
}

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// File system error.
    Io(io::Error),
    /// The PEM held no certificate, or no usable private key.
    Pem(String),
    /// Certificate generation failed.
    Generate(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io(e) => write!(f, "certificate store: {e}"),
            StoreError::Pem(e) => write!(f, "certificate store: {e}"),
            StoreError::Generate(e) => write!(f, "certificate generation: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        StoreError::Io(e)
    }
}

/// A certificate with its private key, as ACH finds it in `MY`.
#[derive(Debug)]
pub struct Identity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

/// The machine store (a folder; see the module documentation).
#[derive(Debug, Clone)]
pub struct CertStore {
    dir: PathBuf,
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(StoreError::Pem("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, StoreError> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| StoreError::Pem(e.to_string()))?
        .ok_or_else(|| StoreError::Pem("no private key block".into()))
}

/// Creates `dir` (and its parents) if needed and makes it readable by its owner only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes a private key: created readable and writable by its owner only (mode 0600).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // An existing file keeps its old mode through open(): set it.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)
}

impl CertStore {
    /// Opens (creating) the store in `dir`. The folders are the owner's alone (mode 0700): `MY`
    /// holds private keys.
    pub fn open(dir: impl Into<PathBuf>) -> Result<CertStore, StoreError> {
        let dir = dir.into();
        for folder in [dir.clone(), dir.join("MY"), dir.join("Root")] {
            private_dir(&folder)?;
        }
        Ok(CertStore { dir })
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Imports a chain (leaf first) and its key into `MY`; returns the leaf's thumbprint.
    pub fn import_pem(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<Thumbprint, StoreError> {
        let chain = certificates(chain_pem)?;
        private_key(key_pem)?;
        let thumbprint = Thumbprint::of(chain[0].as_ref());
        fs::write(
            self.dir.join("MY").join(format!("{thumbprint}.pem")),
            chain_pem,
        )?;
        write_private(
            &self.dir.join("MY").join(format!("{thumbprint}.key")),
            key_pem,
        )?;
        Ok(thumbprint)
    }

    /// Imports PEM files into `MY` (what `wsktls serve --cert --key` does).
    pub fn import_pem_files(&self, chain: &Path, key: &Path) -> Result<Thumbprint, StoreError> {
        self.import_pem(&fs::read(chain)?, &fs::read(key)?)
    }

    /// Trusts a root (or any CA) certificate for client-side validation.
    pub fn add_root_pem(&self, pem: &[u8]) -> Result<Thumbprint, StoreError> {
        let certs = certificates(pem)?;
        let thumbprint = Thumbprint::of(certs[0].as_ref());
        fs::write(self.dir.join("Root").join(format!("{thumbprint}.pem")), pem)?;
        Ok(thumbprint)
    }

    /// The certificate and key `MY` holds under `thumbprint`.
    pub fn find(&self, thumbprint: &Thumbprint) -> Option<Identity> {
        let base = self.dir.join("MY");
        let chain = certificates(&fs::read(base.join(format!("{thumbprint}.pem"))).ok()?).ok()?;
        let key = private_key(&fs::read(base.join(format!("{thumbprint}.key"))).ok()?).ok()?;
        Some(Identity { chain, key })
    }

    /// When the set of trusted roots last changed (the folder's modification time): what
    /// configurations built from the roots are keyed by.
    pub fn roots_changed(&self) -> Option<std::time::SystemTime> {
        fs::metadata(self.dir.join("Root"))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Every trusted root.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        let Ok(entries) = fs::read_dir(self.dir.join("Root")) else {
            return Vec::new();
        };
        let mut roots = Vec::new();
        for entry in entries.flatten() {
            if let Ok(pem) = fs::read(entry.path()) {
                if let Ok(mut certs) = certificates(&pem) {
                    roots.append(&mut certs);
                }
            }
        }
        roots
    }
}

/// A throwaway certificate authority for tests, the harness's selftest and `serve`.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TestCa({})", Thumbprint::of(self.cert.der()))
    }
}

/// What a [`TestCa`] issues: PEM chain (leaf, CA) and key.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Leaf then CA, PEM.
    pub chain_pem: String,
    /// The leaf's key, PEM (PKCS#8).
    pub key_pem: String,
}

/// Validity window of an issued leaf.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// Valid from yesterday for a year.
    Current,
    /// Expired a year ago.
    Expired,
}

impl TestCa {
    /// Generates a CA named `name`.
    pub fn generate(name: &str) -> Result<TestCa, StoreError> {
        let key = KeyPair::generate().map_err(|e| StoreError::Generate(e.to_string()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| StoreError::Generate(e.to_string()))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(|e| StoreError::Generate(e.to_string()))?;
        Ok(TestCa { cert, key })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Issues a leaf for `names` (DNS names or IP addresses), usable by servers and clients.
    pub fn issue(&self, names: &[&str], validity: Validity) -> Result<IssuedCert, StoreError> {
        let key = KeyPair::generate().map_err(|e| StoreError::Generate(e.to_string()))?;
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone())
            .map_err(|e| StoreError::Generate(e.to_string()))?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_else(|| "wsktls".into()),
        );
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        match validity {
            Validity::Current => {
                let now = time::OffsetDateTime::now_utc();
                params.not_before = now - time::Duration::days(1);
                params.not_after = now + time::Duration::days(365);
            }
            Validity::Expired => {
                params.not_before = rcgen::date_time_ymd(2001, 1, 1);
                params.not_after = rcgen::date_time_ymd(2002, 1, 1);
            }
        }
        let leaf = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| StoreError::Generate(e.to_string()))?;
        Ok(IssuedCert {
            chain_pem: format!("{}{}", leaf.pem(), self.cert.pem()),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod permission_tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_store_and_its_keys_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("kemu-store-perm-{}", std::process::id()));
        let store = CertStore::open(&dir).unwrap();
        let ca = TestCa::generate("perm CA").unwrap();
        let issued = ca.issue(&["localhost"], Validity::Current).unwrap();
        let thumbprint = store
            .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
            .unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for folder in [dir.clone(), dir.join("MY"), dir.join("Root")] {
            assert_eq!(mode(&folder), 0o700, "{}", folder.display());
        }
        let key = dir.join("MY").join(format!("{thumbprint}.key"));
        assert_eq!(mode(&key), 0o600);
        // Importing again over an existing key keeps it private.
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        store
            .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
            .unwrap();
        assert_eq!(mode(&key), 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }
}
