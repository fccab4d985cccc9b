//! `cargo xtask package [--cert PEM --key PEM]`: the ready-to-install Windows package, built
//! and test-signed on any machine, in `target/package/wsktls/`.
//!
//! The test certificate is made once per checkout in `.signing/` (never committed) unless the
//! caller passes their own. Signing uses osslsigncode (Debian) or, on Windows without it,
//! signtool with a PFX made from the same PEM files.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{
    DRIVER_TARGET, KMDF_VERSION, Profile, build_driver, cargo, run, today, workspace_root,
};

/// Target triple of the harness .exe (Debian's mingw-w64 links it).
const HARNESS_TARGET: &str = "x86_64-pc-windows-gnu";

/// The signing identity: a certificate and its private key, PEM.
struct Signer {
    cert: PathBuf,
    key: PathBuf,
}

/// Parses `--cert PEM --key PEM` (both or neither).
fn parse(args: &[String]) -> Result<Option<Signer>, String> {
    let mut cert = None;
    let mut key = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = it.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--cert" => cert = Some(PathBuf::from(value)),
            "--key" => key = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown argument {arg}\n{}", crate::USAGE)),
        }
    }
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(Signer { cert, key })),
        (None, None) => Ok(None),
        _ => Err("give both --cert and --key, or neither".into()),
    }
}

fn tool(name: &str) -> Result<Command, String> {
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .any(|d| d.join(name).is_file() || d.join(format!("{name}.exe")).is_file())
        })
        .unwrap_or(false);
    if found {
        Ok(Command::new(name))
    } else {
        Err(format!("{name} not found on PATH"))
    }
}

fn output(mut command: Command) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The checkout's own test certificate, made on first use: RSA-3072, code-signing EKU, two
/// years, in `.signing/` beside the sources (ignored by git).
fn checkout_signer() -> Result<Signer, String> {
    let dir = workspace_root().join(".signing");
    let signer = Signer {
        cert: dir.join("wsktls-test-signing.pem"),
        key: dir.join("wsktls-test-signing.key"),
    };
    if signer.cert.exists() && signer.key.exists() {
        return Ok(signer);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut command = tool("openssl")?;
    command.args([
        "req",
        "-x509",
        "-newkey",
        "rsa:3072",
        "-sha256",
        "-days",
        "730",
        "-nodes",
        "-subj",
        "/CN=wsktls test signing (not for production)",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-addext",
        "keyUsage=critical,digitalSignature",
        "-addext",
        "extendedKeyUsage=codeSigning",
        "-keyout",
    ]);
    command.arg(&signer.key).arg("-out").arg(&signer.cert);
    output(command)?;
    eprintln!(
        "xtask: made the checkout's test certificate {}",
        signer.cert.display()
    );
    Ok(signer)
}

/// Authenticode-signs `input` into `signed` (SHA-256; the PE checksum is recomputed).
fn sign(signer: &Signer, input: &Path, signed: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(signed);
    match tool("osslsigncode") {
        Ok(mut command) => {
            command.args(["sign", "-h", "sha256", "-n", "wsktls", "-certs"]);
            command.arg(&signer.cert).arg("-key").arg(&signer.key);
            command.arg("-in").arg(input).arg("-out").arg(signed);
            output(command).map(|_| ())
        }
        Err(missing) if cfg!(windows) => {
            let pfx = signer.cert.with_extension("pfx");
            let mut export = tool("openssl")?;
            export.args(["pkcs12", "-export", "-passout", "pass:", "-inkey"]);
            export
                .arg(&signer.key)
                .arg("-in")
                .arg(&signer.cert)
                .arg("-out")
                .arg(&pfx);
            output(export)?;
            std::fs::copy(input, signed).map_err(|e| e.to_string())?;
            let mut command = tool("signtool").map_err(|e| format!("{missing}; {e}"))?;
            command
                .args(["sign", "/fd", "SHA256", "/p", "", "/f"])
                .arg(&pfx)
                .arg(signed);
            output(command).map(|_| ())
        }
        Err(missing) => Err(format!("{missing} (Debian: apt-get install osslsigncode)")),
    }
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))
}

/// Builds `target/package/wsktls/`.
pub fn package(args: &[String]) -> Result<PathBuf, String> {
    let signer = match parse(args)? {
        Some(s) => s,
        None => checkout_signer()?,
    };
    let root = workspace_root();
    build_driver(&[Profile::Release])?;
    let mut exe = cargo();
    exe.current_dir(&root).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "wsktls-harness",
        "--target",
        HARNESS_TARGET,
    ]);
    run(exe).map_err(|e| format!("{e}\n(the harness .exe needs `rustup target add {HARNESS_TARGET}` and Debian's gcc-mingw-w64-x86-64)"))?;

    let out = root.join("target/package/wsktls");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let built = root.join("target").join(DRIVER_TARGET).join("release");
    sign(&signer, &built.join("wsktls.sys"), &out.join("wsktls.sys"))?;
    sign(
        &signer,
        &root
            .join("target")
            .join(HARNESS_TARGET)
            .join("release/wsktls.exe"),
        &out.join("wsktls.exe"),
    )?;
    copy(&built.join("wsktls.inf"), &out.join("wsktls.inf"))?;
    for script in ["common.ps1", "install.ps1", "uninstall.ps1", "validate.ps1"] {
        copy(&root.join("packaging").join(script), &out.join(script))?;
    }
    let mut der = tool("openssl")?;
    der.args(["x509", "-outform", "der", "-in"])
        .arg(&signer.cert)
        .arg("-out")
        .arg(out.join("wsktls.cer"));
    output(der)?;
    let mut fingerprint = tool("openssl")?;
    fingerprint
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
        .arg(&signer.cert);
    let sha1: String = output(fingerprint)?
        .split('=')
        .nth(1)
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    let (month, day, year) = today();
    let host = if cfg!(windows) { "Windows" } else { "Linux" };
    let readme = std::fs::read_to_string(root.join("packaging/README.txt"))
        .map_err(|e| format!("packaging/README.txt: {e}"))?
        .replace("$VERSION$", env!("CARGO_PKG_VERSION"))
        .replace("$DATE$", &format!("{year}-{month:02}-{day:02}"))
        .replace("$HOST$", host)
        .replace("$KMDF$", KMDF_VERSION)
        .replace("$CERT_SHA1$", &sha1)
        .replace("\r\n", "\n")
        .replace('\n', "\r\n");
    std::fs::write(out.join("README.txt"), readme).map_err(|e| e.to_string())?;
    eprintln!("xtask: package ready in {}", out.display());
    Ok(out)
}
