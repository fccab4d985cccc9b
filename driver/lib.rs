//! wsktls: kernel-mode TLS over Winsock Kernel, driven by asynchronous kernel Schannel.
//!
//! This crate is the KMDF driver. Built for `x86_64-pc-windows-msvc` it is the kernel image
//! `wsktls.sys` (entry `FxDriverEntry`, see `ksys::wdf::bind`); built for the host it is the
//! same source linked natively into kemu, the user-mode Windows kernel the tests run it in.
//!
//! Driver code is `no_std` + `alloc`, safe Rust on top of `ksys::kmdf`; all `unsafe` lives in ksys.

#![no_std]

// Host builds (kemu native mode) take std's panic handler and allocator; the driver's own code
// still sees only core (and, later, alloc).
#[cfg(not(windows))]
extern crate std;

extern crate alloc;

mod device;
#[cfg(windows)]
mod image;
mod ioctl;
mod objects;
mod service;

pub use device::{DEVICE_NAME, DOS_DEVICE_NAME, SDDL_SYSTEM_AND_ADMINISTRATORS};

ksys::kmdf_driver_entry!(device::driver_entry);

/// The driver's version, as GET_VERSION reports it.
pub const DRIVER_VERSION: proto::DriverVersion = proto::DriverVersion {
    major: parse_u16(env!("CARGO_PKG_VERSION_MAJOR")),
    minor: parse_u16(env!("CARGO_PKG_VERSION_MINOR")),
    patch: parse_u16(env!("CARGO_PKG_VERSION_PATCH")),
};

const fn parse_u16(s: &str) -> u16 {
    let bytes = s.as_bytes();
    let mut value: u16 = 0;
    let mut i = 0;
    while i < bytes.len() {
        value = value * 10 + (bytes[i] - b'0') as u16;
        i += 1;
    }
    value
}
