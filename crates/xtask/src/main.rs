//! `cargo xtask <task>`: the project's build and test entry points.
//!
//! - `driver [--release | --debug]` — builds the kernel image for `x86_64-pc-windows-msvc` with
//!   rust-lld and leaves it at `target/x86_64-pc-windows-msvc/<profile>/wsktls.sys` (both
//!   profiles when neither flag is given).
//! - `test [ARGS...]` — builds both images and the package, then runs `cargo test --workspace ARGS...` (the image
//!   tests check the images just built); without ARGS, the kemu suites run again under each seed
//!   of `KEMU_SEEDS` (default 1,2,3), `wsktls selftest` runs on the native driver and on both
//!   images, and the TLS suite runs against both images.
//! - `package [--cert PEM --key PEM]` — the test-signed Windows package in
//!   `target/package/wsktls/` (see `package.rs`).

mod package;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Target triple of the kernel image.
const DRIVER_TARGET: &str = "x86_64-pc-windows-msvc";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("driver") => {
            parse_profiles(&args[1..]).and_then(|profiles| build_driver(&profiles).map(|_| ()))
        }
        Some("package") => package::package(&args[1..]).map(|_| ()),
        Some("test") => build_driver(&[Profile::Debug, Profile::Release])
            .and_then(|_| package::package(&[]))
            .and_then(|_| run_tests(&args[1..])),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask driver [--release | --debug]\n       cargo xtask test [cargo test arguments]\n       cargo xtask package [--cert PEM --key PEM]";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Profile {
    Debug,
    Release,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

fn parse_profiles(args: &[String]) -> Result<Vec<Profile>, String> {
    match args {
        [] => Ok(vec![Profile::Debug, Profile::Release]),
        [flag] if flag == "--release" => Ok(vec![Profile::Release]),
        [flag] if flag == "--debug" => Ok(vec![Profile::Debug]),
        _ => Err(USAGE.to_string()),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(mut command: Command) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed with {status}"))
    }
}

/// Builds the image for each profile and renames `wsktls.dll` to `wsktls.sys` (the PDB keeps
/// its name; its path is recorded in the image).
fn build_driver(profiles: &[Profile]) -> Result<Vec<PathBuf>, String> {
    let root = workspace_root();
    let mut images = Vec::new();
    for &profile in profiles {
        let mut command = cargo();
        // The package's lib is an rlib (what kemu links natively); the kernel image is the same
        // crate built as a cdylib for the Windows target.
        command.current_dir(&root).args([
            "rustc",
            "--package",
            "wsktls",
            "--lib",
            "--crate-type",
            "cdylib",
            "--target",
            DRIVER_TARGET,
        ]);
        if profile == Profile::Release {
            command.arg("--release");
        }
        run(command)?;
        let out_dir = root.join("target").join(DRIVER_TARGET).join(profile.dir());
        let dll = out_dir.join("wsktls.dll");
        let sys = out_dir.join("wsktls.sys");
        std::fs::copy(&dll, &sys)
            .map_err(|e| format!("cannot copy {} to {}: {e}", dll.display(), sys.display()))?;
        let inf = out_dir.join("wsktls.inf");
        stamp_inf(&root.join("inf/wsktls.inx"), &inf)?;
        eprintln!("xtask: built {} and {}", sys.display(), inf.display());
        images.push(sys);
    }
    Ok(images)
}

/// KMDF version the driver binds (ksys::wdf::types::KMDF_VERSION_*; checked by tests/inf.rs).
const KMDF_VERSION: &str = "1.15";

/// What stampinf does: architecture, KMDF version and DriverVer (date, four-part version).
fn stamp_inf(inx: &Path, inf: &Path) -> Result<(), String> {
    let source = std::fs::read_to_string(inx).map_err(|e| format!("{}: {e}", inx.display()))?;
    let (month, day, year) = today();
    let version = format!("{}.0", env!("CARGO_PKG_VERSION"));
    let stamped = source
        .replace("$ARCH$", "amd64")
        .replace("$KMDFVERSION$", KMDF_VERSION)
        .replace(
            "DriverVer   = 01/01/1970,0.0.0.0",
            &format!("DriverVer   = {month:02}/{day:02}/{year},{version}"),
        );
    // INF files are read as UTF-16 or ANSI; plain ASCII with CRLF line ends suits every tool.
    let stamped = stamped.replace("\r\n", "\n").replace('\n', "\r\n");
    std::fs::write(inf, stamped).map_err(|e| format!("{}: {e}", inf.display()))
}

/// Today's civil date (UTC) from the system clock.
fn today() -> (u32, u32, i64) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (month, day, year)
}

/// Seeds the kemu suites are rerun under after the full run (`KEMU_SEEDS`, comma-separated).
const DEFAULT_EXTRA_SEEDS: &str = "1,2,3";

fn run_tests(extra: &[String]) -> Result<(), String> {
    let mut command = cargo();
    command
        .current_dir(workspace_root())
        .args(["test", "--workspace"])
        .args(extra);
    run(command)?;
    if !extra.is_empty() {
        return Ok(());
    }
    // Fault injection is seeded: every kemu suite again under other seeds (other inline/deferred
    // and PASSIVE/DISPATCH schedules).
    let seeds = std::env::var("KEMU_SEEDS").unwrap_or_else(|_| DEFAULT_EXTRA_SEEDS.to_string());
    for seed in seeds.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        for selection in [
            &["-p", "kemu", "--tests"][..],
            &["-p", "ktls", "--tests"][..],
            &["-p", "wsktls", "--test", "driver_in_kemu"][..],
            &["-p", "wsktls", "--test", "tls_in_kemu"][..],
        ] {
            println!(
                "xtask: kemu suites with KEMU_SEED={seed}: cargo test {}",
                selection.join(" ")
            );
            let mut command = cargo();
            command
                .current_dir(workspace_root())
                .env("KEMU_SEED", seed)
                .arg("test")
                .args(selection)
                .arg("--quiet");
            run(command)?;
        }
    }
    // The main job, as README.md runs it: on the natively linked driver, on both images and on
    // the package's signed image.
    for driver in [None, Some("debug"), Some("release"), Some("package")] {
        let mut command = cargo();
        command.current_dir(workspace_root()).args([
            "run",
            "--quiet",
            "-p",
            "wsktls-harness",
            "--bin",
            "wsktls",
            "--",
            "selftest",
        ]);
        if let Some(profile) = driver {
            let image = if profile == "package" {
                workspace_root().join("target/package/wsktls/wsktls.sys")
            } else {
                workspace_root()
                    .join("target/x86_64-pc-windows-msvc")
                    .join(profile)
                    .join("wsktls.sys")
            };
            command.arg("--driver").arg(image);
        }
        println!("xtask: wsktls selftest ({})", driver.unwrap_or("native"));
        run(command)?;
    }
    // The TLS suite once more against each shipped image (what Windows would load).
    for profile in ["debug", "release"] {
        let image = workspace_root()
            .join("target/x86_64-pc-windows-msvc")
            .join(profile)
            .join("wsktls.sys");
        println!(
            "xtask: TLS suite against {}: cargo test -p wsktls --test tls_in_kemu",
            image.display()
        );
        let mut command = cargo();
        command
            .current_dir(workspace_root())
            .env("WSKTLS_IMAGE", &image)
            .args(["test", "-p", "wsktls", "--test", "tls_in_kemu", "--quiet"]);
        run(command)?;
    }
    Ok(())
}
