//! Windows socket addresses at the edge: SOCKADDR_IN (AF_INET 2) and SOCKADDR_IN6 (AF_INET6 23 on
//! Windows, 10 on Linux) to and from the host's `SocketAddr`. WSK passes no lengths: the family
//! decides how many bytes are read or written.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use ksys::wsk::{AF_INET, AF_INET6, SOCKADDR, SOCKADDR_IN, SOCKADDR_IN6};

/// Reads a Windows SOCKADDR; None for a NULL pointer or a family WSK does not carry.
///
/// # Safety
/// `p` must be NULL or point to a SOCKADDR_IN / SOCKADDR_IN6 as its family says.
pub(crate) unsafe fn read(p: *const SOCKADDR) -> Option<SocketAddr> {
    if p.is_null() {
        return None;
    }
    // SAFETY: per the contract, the family field is readable.
    let family = unsafe { std::ptr::read_unaligned(p as *const u16) } as u32;
    if family == AF_INET {
        // SAFETY: an AF_INET address is a SOCKADDR_IN.
        let a = unsafe { std::ptr::read_unaligned(p as *const SOCKADDR_IN) };
        Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(a.sin_addr),
            u16::from_be(a.sin_port),
        )))
    } else if family == AF_INET6 {
        // SAFETY: an AF_INET6 address is a SOCKADDR_IN6.
        let a = unsafe { std::ptr::read_unaligned(p as *const SOCKADDR_IN6) };
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(a.sin6_addr),
            u16::from_be(a.sin6_port),
            a.sin6_flowinfo,
            a.sin6_scope_id,
        )))
    } else {
        None
    }
}

/// Writes `addr` as a Windows SOCKADDR_IN / SOCKADDR_IN6.
///
/// # Safety
/// `p` must be NULL or point to writable storage large enough for the family of `addr`
/// (16 bytes for IPv4, 28 for IPv6).
pub(crate) unsafe fn write(p: *mut SOCKADDR, addr: SocketAddr) {
    if p.is_null() {
        return;
    }
    match addr {
        SocketAddr::V4(a) => {
            let raw = SOCKADDR_IN {
                sin_family: AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: a.ip().octets(),
                sin_zero: [0; 8],
            };
            // SAFETY: per the contract, 16 bytes are writable.
            unsafe { std::ptr::write_unaligned(p as *mut SOCKADDR_IN, raw) };
        }
        SocketAddr::V6(a) => {
            let raw = SOCKADDR_IN6 {
                sin6_family: AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: a.ip().octets(),
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: per the contract, 28 bytes are writable.
            unsafe { std::ptr::write_unaligned(p as *mut SOCKADDR_IN6, raw) };
        }
    }
}

/// The Windows family of a host address.
pub(crate) fn family_of(addr: &SocketAddr) -> u16 {
    if addr.is_ipv4() {
        AF_INET as u16
    } else {
        AF_INET6 as u16
    }
}
