//! IOCTL_WSKTLS_GET_VERSION: which driver is loaded and which wire format it speaks.

use crate::{MAGIC, Reader, WIRE_VERSION, WireError, Writer};

/// A semantic version (the driver crate's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverVersion {
    /// Incompatible changes.
    pub major: u16,
    /// Compatible additions.
    pub minor: u16,
    /// Fixes.
    pub patch: u16,
}

/// Output of GET_VERSION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetVersionResponse {
    /// Wire format the driver speaks ([`WIRE_VERSION`] of the driver's build).
    pub wire_version: u32,
    /// The driver's own version.
    pub driver: DriverVersion,
    /// KMDF version the driver bound, major.
    pub kmdf_major: u16,
    /// KMDF version the driver bound, minor.
    pub kmdf_minor: u16,
}

impl GetVersionResponse {
    /// Encoded size: magic, size, wire version, driver major/minor/patch, reserved, KMDF major/minor.
    pub const SIZE: usize = 4 + 4 + 4 + 2 + 2 + 2 + 2 + 2 + 2;

    /// The little-endian wire form.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        let mut w = Writer::new(&mut out);
        w.u32(MAGIC);
        w.u32(Self::SIZE as u32);
        w.u32(self.wire_version);
        w.u16(self.driver.major);
        w.u16(self.driver.minor);
        w.u16(self.driver.patch);
        w.u16(0);
        w.u16(self.kmdf_major);
        w.u16(self.kmdf_minor);
        out
    }

    /// Parses and validates the wire form (exactly [`Self::SIZE`] bytes of a matching version).
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() < Self::SIZE {
            return Err(WireError::TooShort {
                needed: Self::SIZE,
                got: bytes.len(),
            });
        }
        if bytes.len() > Self::SIZE {
            return Err(WireError::TooLong {
                allowed: Self::SIZE,
                got: bytes.len(),
            });
        }
        let mut r = Reader::new(bytes);
        let short = WireError::TooShort {
            needed: Self::SIZE,
            got: bytes.len(),
        };
        let magic = r.u32().ok_or(short)?;
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let declared = r.u32().ok_or(short)?;
        if declared != Self::SIZE as u32 {
            return Err(WireError::BadSize {
                expected: Self::SIZE as u32,
                declared,
            });
        }
        let wire_version = r.u32().ok_or(short)?;
        if wire_version == 0 {
            return Err(WireError::InvalidField("wire_version"));
        }
        let driver = DriverVersion {
            major: r.u16().ok_or(short)?,
            minor: r.u16().ok_or(short)?,
            patch: r.u16().ok_or(short)?,
        };
        if r.u16().ok_or(short)? != 0 {
            return Err(WireError::InvalidField("reserved"));
        }
        let kmdf_major = r.u16().ok_or(short)?;
        let kmdf_minor = r.u16().ok_or(short)?;
        Ok(GetVersionResponse {
            wire_version,
            driver,
            kmdf_major,
            kmdf_minor,
        })
    }

    /// Whether a harness built with this crate can talk to the driver that sent this.
    pub fn is_compatible(&self) -> bool {
        self.wire_version == WIRE_VERSION
    }
}

/// GET_VERSION takes no input: any input bytes are an error.
pub fn validate_get_version_input(input_length: usize) -> Result<(), WireError> {
    if input_length == 0 {
        Ok(())
    } else {
        Err(WireError::TooLong {
            allowed: 0,
            got: input_length,
        })
    }
}
