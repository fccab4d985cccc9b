//! `cargo xtask <task>`: the project's build and test entry points.
//!
//! - `driver [--release | --debug]` — builds the kernel image for `x86_64-pc-windows-msvc` with
//!   rust-lld and leaves it at `target/x86_64-pc-windows-msvc/<profile>/wsktls.sys` (both
//!   profiles when neither flag is given).
//! - `test [ARGS...]` — builds both images, then runs `cargo test --workspace ARGS...` (the image
//!   tests check the images just built).

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
        Some("test") => {
            build_driver(&[Profile::Debug, Profile::Release]).and_then(|_| run_tests(&args[1..]))
        }
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

const USAGE: &str = "usage: cargo xtask driver [--release | --debug]\n       cargo xtask test [cargo test arguments]";

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
        command.current_dir(&root).args([
            "build",
            "--package",
            "wsktls",
            "--lib",
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
        eprintln!("xtask: built {}", sys.display());
        images.push(sys);
    }
    Ok(images)
}

fn run_tests(extra: &[String]) -> Result<(), String> {
    let mut command = cargo();
    command
        .current_dir(workspace_root())
        .args(["test", "--workspace"])
        .args(extra);
    run(command)
}
