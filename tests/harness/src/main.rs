//! `wsktls`: how people use and check the driver. Under kemu (the default on Linux) it boots a
//! user-mode Windows kernel in this process and loads the driver into it; on Windows it talks to
//! the installed driver through `\\.\WskTls` — that backend is not written yet, so on Windows
//! the layers above the device compile but nothing reaches them.

#![cfg_attr(windows, allow(dead_code))]

mod device;
mod driver;
#[cfg(not(windows))]
mod kemu_machine;
mod selftest;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wsktls",
    version,
    about = "Kernel TLS over Winsock Kernel: check and use the wsktls driver"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Handshake a driver listener and a driver client (TLS 1.3 and 1.2), echo 1 B..1 MiB, shut
    /// down gracefully and report; exit 0 only if all of it held.
    Selftest {
        /// Load this wsktls.sys into kemu instead of the natively linked driver.
        #[arg(long)]
        driver: Option<PathBuf>,
        /// SHA-1 thumbprint (hex) of a server certificate in LocalMachine\MY (Windows only;
        /// under kemu a throwaway CA and certificate are made).
        #[arg(long)]
        thumbprint: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Selftest { driver, thumbprint } => selftest(driver, thumbprint),
    }
}

#[cfg(not(windows))]
fn selftest(driver: Option<PathBuf>, thumbprint: Option<String>) -> ExitCode {
    if thumbprint.is_some() {
        eprintln!(
            "wsktls: --thumbprint names a certificate of a Windows machine; under kemu the selftest makes its own"
        );
        return ExitCode::from(2);
    }
    let machine = match kemu_machine::KemuMachine::boot(driver.as_deref()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("wsktls: cannot start the driver under kemu: {e}");
            return ExitCode::from(2);
        }
    };
    let thumbprint = match machine.make_server_certificate(&["localhost"]) {
        Ok((t, _ca)) => t,
        Err(e) => {
            eprintln!("wsktls: cannot make the test certificate: {e}");
            return ExitCode::from(2);
        }
    };
    if selftest::run(Box::new(machine), thumbprint) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(windows)]
fn selftest(_driver: Option<PathBuf>, _thumbprint: Option<String>) -> ExitCode {
    eprintln!(
        "wsktls: the Windows device backend is not built yet; run the selftest under kemu on Linux"
    );
    ExitCode::from(2)
}
