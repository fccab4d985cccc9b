//! Where the driver runs — kemu or Windows — as the harness's commands see it.

use crate::device::{Device, DeviceError};

/// Where the driver runs: opens handles and, at the end, reports how it went.
pub trait Machine {
    /// Opens `\\.\WskTls`.
    fn open(&self) -> Result<Box<dyn Device>, DeviceError>;
    /// One line describing the machine (for reports).
    fn describe(&self) -> String;
    /// Closes handles and (under kemu) unloads the driver: Ok(verdict) or what went wrong.
    fn finish(self: Box<Self>) -> Result<String, DeviceError>;
}

/// A server certificate with its PEMs: the driver names it by thumbprint; plain rustls (the
/// benchmark's anchor) loads the same chain and key.
pub struct ServerCertificate {
    /// SHA-1 thumbprint: what LISTEN names.
    pub thumbprint: [u8; 20],
    /// The CA that issued it, trusted by clients.
    pub ca_pem: String,
    /// Leaf then CA.
    pub chain_pem: String,
    /// The leaf's PKCS#8 key.
    pub key_pem: String,
}
