//! The test PKI.

use std::path::PathBuf;

use kemu::{Kernel, TestCa, Thumbprint, Validity};

/// A CA the kernel trusts (LocalMachine\Root), a server certificate for some names in the
/// machine store (LocalMachine\My), and both as files.
pub struct Pki {
    /// The certificate's SHA-1 thumbprint (what LISTEN and `ServerConfig` name it by).
    pub thumbprint: Thumbprint,
    /// Where `ca.pem`, `chain.pem` and `key.pem` are.
    pub dir: PathBuf,
    /// The CA, to issue more certificates (client certificates, other names).
    pub ca: TestCa,
    /// SHA-256 of the server certificate (DER): what a pin names.
    pub digest: [u8; 32],
}

impl Pki {
    /// Generates a CA named `ca_name` and a server certificate for `names`, installs both in
    /// `kernel`'s store and writes them under a directory of this process named after `label`.
    ///
    /// # Panics
    /// If generating or writing fails (a test cannot go on without its PKI).
    pub fn install(kernel: &Kernel, ca_name: &str, names: &[&str], label: &str) -> Pki {
        let ca = TestCa::generate(ca_name).expect("a test CA");
        let issued = ca
            .issue(names, Validity::Current)
            .expect("a server certificate");
        let store = kernel.cert_store();
        let thumbprint = store
            .import_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
            .expect("importing the server certificate");
        store
            .add_root_pem(ca.cert_pem().as_bytes())
            .expect("trusting the CA");
        let dir = std::env::temp_dir().join(format!("{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the PKI directory");
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("ca.pem");
        std::fs::write(dir.join("chain.pem"), &issued.chain_pem).expect("chain.pem");
        std::fs::write(dir.join("key.pem"), &issued.key_pem).expect("key.pem");
        let leaf = pem::parse(issued.chain_pem.as_bytes()).expect("the leaf certificate");
        Pki {
            thumbprint,
            dir,
            ca,
            digest: ktls::sha256(leaf.contents()),
        }
    }

    /// The path of one of the PKI's files (`ca.pem`, `chain.pem`, `key.pem`); they go with
    /// the `Pki`.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
