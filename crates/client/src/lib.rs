//! A client of the wsktls driver: the device interface ([`device::Device`], implemented over a
//! kemu handle in [`kemu`] and over `\\.\WskTls` by the harness on Windows), the IOCTLs as typed
//! calls with decoded answers ([`driver::Driver`]), and failures named the way a user reads them
//! ([`errors`]). The `wsktls` command and the test suites use this one client.

pub mod device;
pub mod driver;
pub mod errors;
#[cfg(not(windows))]
pub mod kemu;
