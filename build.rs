//! Kernel-image link configuration for the Windows target (host builds link normally).
//!
//! lld-link reads section flag letters its own way: `P` = not paged, `D` = discardable,
//! `E`/`R`/`W` = execute/read/write. `/RELEASE` writes the PE checksum the kernel loader verifies
//! for boot drivers and signing tools expect.

use std::env;
use std::path::PathBuf;

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
        // The version resource (what Explorer's Details tab and `Get-Item ... .VersionInfo`
        // show): lld-link takes a compiled .res as an input of its own.
        let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
        let res = out.join("wsktls-version.res");
        let version = env::var("CARGO_PKG_VERSION").expect("CARGO_PKG_VERSION");
        std::fs::write(&res, version_resource(&version)).expect("writing the version resource");
        println!("cargo:rustc-link-arg={}", res.display());
    }
}

/// A .res file (the format rc.exe writes) holding one VS_VERSIONINFO for a system driver.
fn version_resource(version: &str) -> Vec<u8> {
    let mut parts = version
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u16>().unwrap_or(0));
    let [major, minor, patch] = [(); 3].map(|()| parts.next().unwrap_or(0));
    let dotted = format!("{major}.{minor}.{patch}.0");
    let strings = [
        ("CompanyName", "wsktls"),
        (
            "FileDescription",
            "wsktls kernel TLS (KMDF, Schannel over WSK)",
        ),
        ("FileVersion", dotted.as_str()),
        ("InternalName", "wsktls.sys"),
        ("LegalCopyright", "wsktls authors"),
        ("OriginalFilename", "wsktls.sys"),
        ("ProductName", "wsktls"),
        ("ProductVersion", version),
    ];
    // VS_FIXEDFILEINFO: signature, structure version, file and product versions, flags mask,
    // flags, VOS_NT_WINDOWS32, VFT_DRV, VFT2_DRV_SYSTEM, no date.
    let ms = (u32::from(major) << 16) | u32::from(minor);
    let ls = u32::from(patch) << 16;
    let fixed: Vec<u8> = [
        0xFEEF_04BD,
        0x0001_0000,
        ms,
        ls,
        ms,
        ls,
        0x3F,
        0,
        0x0004_0004,
        3,
        7,
        0,
        0,
    ]
    .iter()
    .flat_map(|v: &u32| v.to_le_bytes())
    .collect();
    let table: Vec<u8> = strings
        .iter()
        .flat_map(|(key, value)| {
            let text = utf16z(value);
            version_block(key, 1, (text.len() / 2) as u16, &text, &[])
        })
        .collect();
    let string_table = version_block("040904B0", 1, 0, &[], &table);
    let string_file_info = version_block("StringFileInfo", 1, 0, &[], &string_table);
    // Translation: U.S. English, Unicode (matches the string table's name).
    let translation = [0x09u8, 0x04, 0xB0, 0x04];
    let var = version_block("Translation", 0, 4, &translation, &[]);
    let var_file_info = version_block("VarFileInfo", 1, 0, &[], &var);
    let mut children = string_file_info;
    children.extend(var_file_info);
    let info = version_block("VS_VERSION_INFO", 0, fixed.len() as u16, &fixed, &children);

    let mut res = Vec::new();
    // A .res file starts with an empty entry (DataSize 0, HeaderSize 32, type 0, name 0).
    res.extend(resource_header(0, 0, 0, 0));
    // RT_VERSION (16), name 1, U.S. English, MOVEABLE | PURE.
    res.extend(resource_header(info.len() as u32, 16, 1, 0x0409));
    res.extend(&info);
    pad4(&mut res);
    res
}

/// One resource entry's header with numeric type and name (0xFFFF, id each).
fn resource_header(data_size: u32, kind: u16, name: u16, language: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(32);
    h.extend(data_size.to_le_bytes());
    h.extend(32u32.to_le_bytes());
    for id in [kind, name] {
        h.extend(0xFFFFu16.to_le_bytes());
        h.extend(id.to_le_bytes());
    }
    h.extend(0u32.to_le_bytes()); // DataVersion
    let flags: u16 = if data_size == 0 { 0 } else { 0x0030 };
    h.extend(flags.to_le_bytes());
    h.extend(language.to_le_bytes());
    h.extend(0u32.to_le_bytes()); // Version
    h.extend(0u32.to_le_bytes()); // Characteristics
    h
}

/// One block of a version resource: length, value length, type (1 = text), key, padding,
/// value, padding, children.
fn version_block(
    key: &str,
    kind: u16,
    value_length: u16,
    value: &[u8],
    children: &[u8],
) -> Vec<u8> {
    let mut b = vec![0u8; 6];
    b[2..4].copy_from_slice(&value_length.to_le_bytes());
    b[4..6].copy_from_slice(&kind.to_le_bytes());
    b.extend(utf16z(key));
    pad4(&mut b);
    b.extend(value);
    if !children.is_empty() {
        pad4(&mut b);
        b.extend(children);
    }
    let length = b.len() as u16;
    b[0..2].copy_from_slice(&length.to_le_bytes());
    pad4(&mut b);
    b
}

fn utf16z(text: &str) -> Vec<u8> {
    text.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

fn pad4(bytes: &mut Vec<u8>) {
    while bytes.len() % 4 != 0 {
        bytes.push(0);
    }
}
