//! The commands on Windows: the installed driver through `\\.\WskTls`.

//! The commands on Windows, against the installed driver.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use super::{Globals, conclude};
use crate::args::Certificate;
use crate::bench::BenchOptions;
use crate::connect::ConnectOptions;
use crate::driver::Driver;
use crate::errors::{Failure, Kind};
use crate::machine::Machine;
use crate::serve::ServeOptions;
use crate::windows_machine::WindowsMachine;

fn no_image(driver: Option<PathBuf>) -> Result<(), Failure> {
    match driver {
        Some(_) => Err(Failure::usage(
            "--driver loads an image into kemu; on Windows the installed driver is used",
        )),
        None => Ok(()),
    }
}

fn machine() -> Result<WindowsMachine, Failure> {
    WindowsMachine::connect().map_err(|e| Failure::driver(e.to_string()))
}

fn open(machine: &WindowsMachine) -> Result<Arc<Driver>, Failure> {
    Ok(Arc::new(Driver::new(
        machine.open().map_err(|e| Failure::driver(e.to_string()))?,
    )))
}

pub fn selftest(
    _: &Globals,
    driver: Option<PathBuf>,
    thumbprint: Option<String>,
) -> Result<ExitCode, Failure> {
    no_image(driver)?;
    let thumbprint = thumbprint.ok_or_else(|| {
        Failure::usage(
            "give --thumbprint of a server certificate for \"localhost\" in LocalMachine\\My (see docs/windows.md)",
        )
    })?;
    let thumbprint = crate::args::thumbprint(&thumbprint)?;
    Ok(if crate::selftest::run(Box::new(machine()?), thumbprint) {
        ExitCode::SUCCESS
    } else {
        Kind::Check.exit_code()
    })
}

pub fn stats() -> Result<ExitCode, Failure> {
    let machine = machine()?;
    let driver = open(&machine)?;
    let stats = driver.stats().map_err(|e| e.failure("STATS"))?;
    out_part!("{}", super::stats_text(&stats));
    Ok(ExitCode::SUCCESS)
}

pub fn serve(
    _: &Globals,
    driver: Option<PathBuf>,
    certificate: Certificate,
    mut options: ServeOptions,
) -> Result<ExitCode, Failure> {
    no_image(driver)?;
    if options.client_ca.is_some() {
        return Err(Failure::usage(
            "--client-ca imports into kemu's Root store; on Windows trust the CA in LocalMachine\\Root and give --require-client-cert",
        ));
    }
    options.thumbprint = match certificate {
        Certificate::Thumbprint(t) => t,
        Certificate::Pem(..) => {
            return Err(Failure::usage(
                "--cert/--key import into kemu's store; on Windows import the certificate into LocalMachine\\My and give --thumbprint",
            ));
        }
    };
    let machine = machine()?;
    let stop = super::interrupt_flag()?;
    let driver = open(&machine)?;
    let result = crate::serve::run(driver.clone(), &options, &stop);
    if let Ok(s) = driver.stats() {
        eprint!("{}", super::stats_text(&s));
    }
    drop(driver);
    conclude(result, Box::new(machine).finish())
}

pub fn connect(
    _: &Globals,
    driver: Option<PathBuf>,
    ca: Option<PathBuf>,
    client: Option<Certificate>,
    mut options: ConnectOptions,
) -> Result<ExitCode, Failure> {
    no_image(driver)?;
    options.client_certificate = match client {
        Some(Certificate::Thumbprint(t)) => Some(t),
        Some(Certificate::Pem(..)) => {
            return Err(Failure::usage(
                "--cert/--key import into kemu's store; on Windows import the certificate into LocalMachine\\My and give --cert-thumbprint",
            ));
        }
        None => None,
    };
    if ca.is_some() {
        return Err(Failure::usage(
            "--ca imports into kemu's Root store; on Windows trust the CA in LocalMachine\\Root, or use --pin",
        ));
    }
    let machine = machine()?;
    let driver = open(&machine)?;
    let result = crate::connect::run(driver.clone(), &options);
    drop(driver);
    conclude(result, Box::new(machine).finish())
}

pub fn bench(
    _: &Globals,
    _: Option<PathBuf>,
    _: BenchOptions,
    _: bool,
) -> Result<ExitCode, Failure> {
    Err(Failure::usage(
        "bench runs under kemu (it needs the server key in PEM for its plain-rustls anchor); it is not built for Windows yet",
    ))
}
