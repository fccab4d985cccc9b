//! The Windows package `cargo xtask package` leaves in target/package/wsktls/: every file there,
//! the driver and the harness Authenticode-signed by the package's own test certificate (a
//! tampered copy fails verification), the harness a PE32+ x86-64 console program, the README
//! stamped, the scripts doing what docs/windows.md says. (The signed image's PE rules and the
//! INF are checked by tests/image.rs and tests/inf.rs, which include the package's copies.)

use std::path::{Path, PathBuf};
use std::process::Command;

use object::LittleEndian as LE;
use object::pe::{
    IMAGE_FILE_MACHINE_AMD64, IMAGE_NT_OPTIONAL_HDR64_MAGIC, IMAGE_SUBSYSTEM_WINDOWS_CUI,
};
use object::read::pe::{ImageNtHeaders, PeFile64};

fn package() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/package/wsktls");
    if dir.join("wsktls.sys").exists() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI")
            .map(|v| v.is_empty() || v == "false" || v == "0")
            .unwrap_or(true),
        "no package: CI must run `cargo xtask package` (cargo xtask test does) first"
    );
    eprintln!("SKIPPED: no package yet (run `cargo xtask package`)");
    None
}

/// The package certificate as PEM (osslsigncode takes PEM trust anchors).
fn certificate_pem(dir: &Path, scratch: &Path) -> PathBuf {
    let pem = scratch.join("wsktls-cer.pem");
    let status = Command::new("openssl")
        .args(["x509", "-inform", "der", "-in"])
        .arg(dir.join("wsktls.cer"))
        .arg("-out")
        .arg(&pem)
        .status()
        .expect("openssl");
    assert!(status.success(), "wsktls.cer is not a DER certificate");
    pem
}

fn verify(file: &Path, ca: &Path) -> (bool, String) {
    let out = Command::new("osslsigncode")
        .args(["verify", "-in"])
        .arg(file)
        .arg("-CAfile")
        .arg(ca)
        .output()
        .expect("osslsigncode");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wsktls-package-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_package_holds_every_file() {
    let Some(dir) = package() else { return };
    for file in [
        "wsktls.sys",
        "wsktls.inf",
        "wsktls.cer",
        "wsktls.exe",
        "install.ps1",
        "uninstall.ps1",
        "validate.ps1",
        "common.ps1",
        "README.txt",
    ] {
        let meta = std::fs::metadata(dir.join(file)).unwrap_or_else(|_| panic!("{file} missing"));
        assert!(meta.len() > 0, "{file} is empty");
    }
}

#[test]
fn driver_and_harness_carry_a_valid_signature_and_tampering_breaks_it() {
    let Some(dir) = package() else { return };
    let tmp = scratch("verify");
    let ca = certificate_pem(&dir, &tmp);
    for file in ["wsktls.sys", "wsktls.exe"] {
        let (ok, text) = verify(&dir.join(file), &ca);
        assert!(ok, "{file}: {text}");
        assert!(
            text.contains("Signature verification: ok"),
            "{file}: {text}"
        );
    }
    // One byte changed inside the image's first section: the digest no longer matches.
    let mut data = std::fs::read(dir.join("wsktls.sys")).unwrap();
    let file = PeFile64::parse(&*data).unwrap();
    let text = file.section_table().iter().next().unwrap();
    let at = text.pointer_to_raw_data.get(LE) as usize + 64;
    data[at] ^= 0x55;
    let tampered = tmp.join("tampered.sys");
    std::fs::write(&tampered, &data).unwrap();
    let (ok, text) = verify(&tampered, &ca);
    assert!(!ok, "a tampered image verified:\n{text}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn the_harness_is_a_pe32_plus_x64_console_program() {
    let Some(dir) = package() else { return };
    let data = std::fs::read(dir.join("wsktls.exe")).unwrap();
    let file = PeFile64::parse(&*data).expect("a PE32+ image");
    let nt = file.nt_headers();
    assert_eq!(
        nt.optional_header().magic.get(LE),
        IMAGE_NT_OPTIONAL_HDR64_MAGIC
    );
    assert_eq!(nt.file_header().machine.get(LE), IMAGE_FILE_MACHINE_AMD64);
    assert_eq!(
        nt.optional_header().subsystem.get(LE),
        IMAGE_SUBSYSTEM_WINDOWS_CUI,
        "not a console program"
    );
}

#[test]
fn readme_and_scripts_are_stamped_and_do_what_the_docs_say() {
    let Some(dir) = package() else { return };
    let readme = std::fs::read_to_string(dir.join("README.txt")).unwrap();
    for placeholder in ["$VERSION$", "$DATE$", "$HOST$", "$KMDF$", "$CERT_SHA1$"] {
        assert!(
            !readme.contains(placeholder),
            "{placeholder} left in README.txt"
        );
    }
    assert!(readme.contains(env!("CARGO_PKG_VERSION")), "{readme}");
    // The README names the certificate the package really carries.
    let out = Command::new("openssl")
        .args([
            "x509",
            "-inform",
            "der",
            "-noout",
            "-fingerprint",
            "-sha1",
            "-in",
        ])
        .arg(dir.join("wsktls.cer"))
        .output()
        .unwrap();
    let sha1: String = String::from_utf8_lossy(&out.stdout)
        .split('=')
        .nth(1)
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    assert_eq!(sha1.len(), 40);
    assert!(readme.contains(&sha1), "README.txt does not name {sha1}");

    let install = std::fs::read_to_string(dir.join("install.ps1")).unwrap();
    for step in [
        "Cert:\\LocalMachine\\Root",
        "Cert:\\LocalMachine\\TrustedPublisher",
        "sc.exe create wsktls type= kernel",
        "sc.exe start wsktls",
        // The Windows floor, checked.
        "19041",
        // Test signing read from the registry, not from localized bcdedit output.
        "SystemStartOptions",
    ] {
        assert!(install.contains(step), "install.ps1 lacks {step:?}");
    }
    let uninstall = std::fs::read_to_string(dir.join("uninstall.ps1")).unwrap();
    for step in [
        "sc.exe stop wsktls",
        "sc.exe delete wsktls",
        "Remove-Item",
        "VerifyDrivers",
        "IHVDRIVER",
    ] {
        assert!(uninstall.contains(step), "uninstall.ps1 lacks {step:?}");
    }
    let validate = std::fs::read_to_string(dir.join("validate.ps1")).unwrap();
    for row in ["W1/W2", "W3/W8/W11", "W4", "W12", "W6/W13/W15", "W17"] {
        assert!(validate.contains(row), "validate.ps1 does not run {row}");
    }
    assert!(
        validate.contains("Set-Content -Path $path"),
        "validate.ps1 writes no report"
    );
    assert!(validate.is_ascii() && !validate.contains("Start-Sleep -Seconds"));
    let common = std::fs::read_to_string(dir.join("common.ps1")).unwrap();
    assert!(
        common.contains("IsInRole"),
        "common.ps1: no elevation check"
    );
    assert!(
        common.contains("1072") && common.contains("1061"),
        "common.ps1"
    );
    for (name, script) in [
        ("install.ps1", &install),
        ("uninstall.ps1", &uninstall),
        ("common.ps1", &common),
    ] {
        // Every script checks elevation (common.ps1's Assert-Administrator), explains the
        // service errors users meet, and waits for states instead of sleeping a fixed time.
        if name != "common.ps1" {
            assert!(
                script.contains("common.ps1") && script.contains("Assert-Administrator"),
                "{name}: no elevation check"
            );
        }
        assert!(
            !script.contains("Start-Sleep -Seconds"),
            "{name} sleeps a fixed time"
        );
        assert!(
            !script.contains("bcdedit /enum"),
            "{name} parses localized text"
        );
        // No install path through InstallHinfSection (it needs a catalog on 1903+).
        assert!(
            !script.contains("setupapi.dll,InstallHinfSection"),
            "{name}"
        );
        assert!(script.is_ascii(), "{name} is not ASCII");
    }
}
