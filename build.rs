//! Kernel-image link configuration for the Windows target (host builds link normally).
//!
//! lld-link reads section flag letters its own way: `P` = not paged, `D` = discardable,
//! `E`/`R`/`W` = execute/read/write. `/RELEASE` writes the PE checksum the kernel loader verifies
//! for boot drivers and signing tools expect.

use std::env;

const KERNEL_LINK_ARGS: &[&str] = &[
    "/DRIVER",
    "/SUBSYSTEM:NATIVE",
    "/ENTRY:FxDriverEntry",
    "/NODEFAULTLIB",
    "/INTEGRITYCHECK",
    "/RELEASE",
    "/DYNAMICBASE",
    "/NXCOMPAT",
    "/MANIFEST:NO",
    "/MERGE:.edata=.rdata",
    "/SECTION:.text,PRE",
    "/SECTION:.rdata,PR",
    "/SECTION:.data,PRW",
    "/SECTION:.pdata,PR",
    "/SECTION:INIT,DRE",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target = env::var("TARGET").unwrap_or_default();
    // For the Windows target the only thing this package links is the kernel image (`cargo
    // xtask driver` builds the lib as a cdylib); tests and the harness never link for it.
    if target == "x86_64-pc-windows-msvc" {
        for arg in KERNEL_LINK_ARGS {
            println!("cargo:rustc-link-arg={arg}");
        }
    }
}
