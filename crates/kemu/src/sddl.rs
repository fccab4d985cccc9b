//! Device security descriptors: the SDDL subset device objects use (a protected DACL of allow and
//! deny ACEs over well-known SIDs) and the access check an open is subject to.

use std::fmt;

/// Who opens a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The local system account (services, the kernel itself).
    System,
    /// An elevated administrator.
    Administrator,
    /// An ordinary interactive user (a non-elevated process).
    User,
}

impl Caller {
    /// Well-known SID abbreviations in the caller's token.
    fn sids(self) -> &'static [&'static str] {
        match self {
            Caller::System => &["SY", "BA", "WD", "AU"],
            Caller::Administrator => &["BA", "WD", "AU", "BU", "IU"],
            Caller::User => &["WD", "AU", "BU", "IU"],
        }
    }
}

/// GENERIC_READ | GENERIC_WRITE as CreateFile asks, mapped to file rights.
pub const FILE_GENERIC_READ: u32 = 0x0012_0089;
/// FILE_GENERIC_WRITE.
pub const FILE_GENERIC_WRITE: u32 = 0x0012_0116;
/// FILE_GENERIC_EXECUTE.
pub const FILE_GENERIC_EXECUTE: u32 = 0x0012_00A0;
/// FILE_ALL_ACCESS.
pub const FILE_ALL_ACCESS: u32 = 0x001F_01FF;
/// FILE_READ_DATA (what METHOD_* IOCTLs with FILE_READ_ACCESS need).
pub const FILE_READ_DATA: u32 = 0x0001;
/// FILE_WRITE_DATA (what IOCTLs with FILE_WRITE_ACCESS need).
pub const FILE_WRITE_DATA: u32 = 0x0002;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ace {
    allow: bool,
    mask: u32,
    sid: String,
}

/// An access check found the desired access not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessDenied;

/// A parsed device security descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityDescriptor {
    aces: Vec<Ace>,
}

/// Why an SDDL string was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SddlError(pub String);

impl fmt::Display for SddlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid SDDL: {}", self.0)
    }
}

fn rights(text: &str) -> Result<u32, SddlError> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return u32::from_str_radix(hex, 16)
            .map_err(|_| SddlError(format!("bad access mask {text}")));
    }
    if text.len() % 2 != 0 {
        return Err(SddlError(format!("bad rights {text}")));
    }
    let mut mask = 0;
    for code in text.as_bytes().chunks(2) {
        mask |= match code {
            b"GA" | b"FA" => FILE_ALL_ACCESS,
            b"GR" | b"FR" => FILE_GENERIC_READ,
            b"GW" | b"FW" => FILE_GENERIC_WRITE,
            b"GX" | b"FX" => FILE_GENERIC_EXECUTE,
            b"RC" => 0x0002_0000,
            b"SD" => 0x0001_0000,
            b"WD" => 0x0004_0000,
            b"WO" => 0x0008_0000,
            b"CC" => 0x0001,
            b"DC" => 0x0002,
            b"LC" => 0x0004,
            b"SW" => 0x0008,
            b"RP" => 0x0010,
            b"WP" => 0x0020,
            b"DT" => 0x0040,
            b"LO" => 0x0080,
            b"CR" => 0x0100,
            _ => {
                return Err(SddlError(format!(
                    "unknown right {}",
                    String::from_utf8_lossy(code)
                )));
            }
        };
    }
    Ok(mask)
}

impl SecurityDescriptor {
    /// Parses `D:P(A;;GA;;;SY)(A;;GA;;;BA)`-style strings (owner/group parts are ignored).
    pub fn parse(sddl: &str) -> Result<SecurityDescriptor, SddlError> {
        let dacl = sddl
            .find("D:")
            .map(|i| &sddl[i + 2..])
            .ok_or_else(|| SddlError("no DACL (D:)".into()))?;
        let dacl = dacl.split("S:").next().unwrap_or(dacl);
        let body = dacl.trim_start_matches(|c: char| c.is_ascii_uppercase());
        let mut aces = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.find(')').map(|end| (&r[..end], &r[end + 1..])))
                .ok_or_else(|| SddlError(format!("malformed ACE list at {rest:?}")))?;
            let fields: Vec<&str> = inner.0.split(';').collect();
            if fields.len() != 6 {
                return Err(SddlError(format!("ACE {:?} needs 6 fields", inner.0)));
            }
            let allow = match fields[0] {
                "A" => true,
                "D" => false,
                other => return Err(SddlError(format!("unsupported ACE type {other}"))),
            };
            let sid = fields[5].to_owned();
            if sid.is_empty() {
                return Err(SddlError("ACE without SID".into()));
            }
            aces.push(Ace {
                allow,
                mask: rights(fields[2])?,
                sid,
            });
            rest = inner.1;
        }
        Ok(SecurityDescriptor { aces })
    }

    /// Windows' DACL walk: granted if every desired bit is allowed before being denied.
    pub fn access_check(&self, caller: Caller, desired: u32) -> Result<u32, AccessDenied> {
        let sids = caller.sids();
        let mut granted = 0u32;
        for ace in &self.aces {
            if !sids.contains(&ace.sid.as_str()) {
                continue;
            }
            let relevant = ace.mask & desired & !granted;
            if ace.allow {
                granted |= relevant;
            } else if relevant != 0 {
                return Err(AccessDenied);
            }
            if granted & desired == desired {
                return Ok(granted);
            }
        }
        if granted & desired == desired {
            Ok(granted)
        } else {
            Err(AccessDenied)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN_ONLY: &str = "D:P(A;;GA;;;SY)(A;;GA;;;BA)";
    const DESIRED: u32 = FILE_GENERIC_READ | FILE_GENERIC_WRITE;

    #[test]
    fn administrators_and_system_only() {
        let sd = SecurityDescriptor::parse(ADMIN_ONLY).unwrap();
        assert!(sd.access_check(Caller::Administrator, DESIRED).is_ok());
        assert!(sd.access_check(Caller::System, DESIRED).is_ok());
        assert!(sd.access_check(Caller::User, DESIRED).is_err());
    }

    #[test]
    fn world_read_write_and_deny_order() {
        let sd =
            SecurityDescriptor::parse("D:P(A;;GA;;;SY)(A;;GRGWGX;;;BA)(A;;GRGW;;;WD)(A;;GR;;;RC)")
                .unwrap();
        assert!(sd.access_check(Caller::User, DESIRED).is_ok());
        let deny = SecurityDescriptor::parse("D:P(D;;GW;;;BU)(A;;GA;;;WD)").unwrap();
        assert!(deny.access_check(Caller::User, DESIRED).is_err());
        assert!(
            deny.access_check(Caller::User, FILE_GENERIC_READ & !FILE_GENERIC_WRITE)
                .is_ok()
        );
    }

    #[test]
    fn malformed_strings_are_rejected() {
        for bad in [
            "",
            "D:P(A;;GA;;SY)",
            "D:P(X;;GA;;;SY)",
            "D:P(A;;QQ;;;SY)",
            "D:P(A;;GA;;;SY",
        ] {
            assert!(SecurityDescriptor::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
