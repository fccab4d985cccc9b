//! The commands on kemu: each boots a kernel with the driver (native or a `.sys` image).

//! The commands on kemu: each boots its own kernel with the driver.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use super::{Globals, conclude};
use crate::args::Certificate;
use crate::bench::{self, BenchOptions};
use crate::connect::ConnectOptions;
use crate::driver::Driver;
use crate::errors::Failure;
use crate::kemu_machine::KemuMachine;
use crate::machine::Machine;
use crate::serve::ServeOptions;

fn boot(globals: &Globals, driver: Option<PathBuf>) -> Result<KemuMachine, Failure> {
    KemuMachine::boot(driver.as_deref(), globals)
        .map_err(|e| Failure::driver(format!("cannot start the driver under kemu: {e}")))
}

fn open(machine: &KemuMachine) -> Result<Arc<Driver>, Failure> {
    Ok(Arc::new(Driver::new(
        machine.open().map_err(|e| Failure::driver(e.to_string()))?,
    )))
}

/// Prints the stats, closes the handle and concludes with the verifier's verdict.
fn finish(
    machine: KemuMachine,
    driver: Arc<Driver>,
    result: Result<(), Failure>,
) -> Result<ExitCode, Failure> {
    if let Ok(s) = driver.stats() {
        eprint!("{}", super::stats_text(&s));
    }
    drop(sole_owner(driver).ok_or_else(|| Failure::driver("a connection is still in use"))?);
    conclude(result, Box::new(machine).finish())
}

/// The driver handle once no other thread holds it: a thread finishing its last call (the
/// stdin pump of `connect` sending or shutting down) lets go within a call's time; a thread
/// that still holds it after that is a defect (None).
fn sole_owner(mut driver: Arc<Driver>) -> Option<Driver> {
    let deadline = std::time::Instant::now() + crate::driver::CALL_TIMEOUT;
    loop {
        match Arc::try_unwrap(driver) {
            Ok(d) => return Some(d),
            Err(_) if std::time::Instant::now() > deadline => return None,
            Err(shared) => {
                driver = shared;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

pub fn selftest(
    globals: &Globals,
    driver: Option<PathBuf>,
    thumbprint: Option<String>,
) -> Result<ExitCode, Failure> {
    if thumbprint.is_some() {
        return Err(Failure::usage(
            "--thumbprint names a certificate of a Windows machine; under kemu the selftest makes its own",
        ));
    }
    let machine = boot(globals, driver)?;
    let made = machine
        .make_server_certificate(&["localhost"])
        .map_err(|e| Failure::driver(format!("cannot make the test certificate: {e}")))?;
    Ok(
        if crate::selftest::run(Box::new(machine), made.thumbprint) {
            ExitCode::SUCCESS
        } else {
            crate::errors::Kind::Check.exit_code()
        },
    )
}

pub fn stats() -> Result<ExitCode, Failure> {
    Err(Failure::usage(
        "under kemu every command boots its own kernel, so there is no running driver to ask; `wsktls serve` prints the stats when it stops",
    ))
}

pub fn serve(
    globals: &Globals,
    driver: Option<PathBuf>,
    certificate: Certificate,
    mut options: ServeOptions,
) -> Result<ExitCode, Failure> {
    let machine = boot(globals, driver)?;
    options.thumbprint = match certificate {
        Certificate::Pem(chain, key) => machine
            .import_certificate(&chain, &key)
            .map_err(|e| Failure::usage(format!("importing {}: {e}", chain.display())))?,
        Certificate::Thumbprint(t) => t,
    };
    if let Some(ca) = &options.client_ca {
        machine
            .trust(ca)
            .map_err(|e| Failure::usage(format!("trusting {}: {e}", ca.display())))?;
    }
    let stop = super::interrupt_flag()?;
    let driver = open(&machine)?;
    let result = crate::serve::run(driver.clone(), &options, &stop);
    finish(machine, driver, result)
}

pub fn connect(
    globals: &Globals,
    driver: Option<PathBuf>,
    ca: Option<PathBuf>,
    client: Option<Certificate>,
    mut options: ConnectOptions,
) -> Result<ExitCode, Failure> {
    let machine = boot(globals, driver)?;
    if let Some(ca) = ca {
        machine
            .trust(&ca)
            .map_err(|e| Failure::usage(format!("trusting {}: {e}", ca.display())))?;
    }
    options.client_certificate = match client {
        Some(Certificate::Pem(chain, key)) => Some(
            machine
                .import_certificate(&chain, &key)
                .map_err(|e| Failure::usage(format!("importing {}: {e}", chain.display())))?,
        ),
        Some(Certificate::Thumbprint(t)) => Some(t),
        None => None,
    };
    let driver = open(&machine)?;
    let result = crate::connect::run(driver.clone(), &options);
    finish(machine, driver, result)
}

/// Measures the image (if given) and the native driver, each in its own kernel, then plain
/// rustls; a kernel whose verifier objects fails the run.
pub fn bench(
    globals: &Globals,
    image: Option<PathBuf>,
    options: BenchOptions,
    json: bool,
) -> Result<ExitCode, Failure> {
    let subjects: Vec<Option<PathBuf>> = match image {
        Some(path) => vec![Some(path), None],
        None => vec![None],
    };
    // Four phases per subject and three for rustls in every round, the idle echo once.
    let per_round = 4 * subjects.len() as u64 + 3;
    let idle_phases = u64::from(options.idle > 0) * subjects.len() as u64;
    let bar = bench::progress(per_round * options.rounds as u64 + idle_phases);
    let mut certificate = None;
    let mut rounds = Vec::with_capacity(options.rounds);
    for round in 0..options.rounds {
        // The idle connections are made once: the first round.
        let options = BenchOptions {
            idle: if round == 0 { options.idle } else { 0 },
            ..options.clone()
        };
        let mut drivers = Vec::new();
        for subject in &subjects {
            let machine = boot(globals, subject.clone())?;
            let cert = match certificate.take() {
                None => machine
                    .make_server_certificate(&["localhost"])
                    .map_err(|e| Failure::driver(format!("making the test certificate: {e}")))?,
                Some(cert) => {
                    machine
                        .install(&cert)
                        .map_err(|e| Failure::driver(e.to_string()))?;
                    cert
                }
            };
            let measured = bench::measure_driver(&machine, &cert, &options, &bar);
            let verdict = Box::new(machine).finish();
            drivers.push(measured.map_err(Failure::driver)?);
            verdict.map_err(|e| Failure::driver(e.to_string()))?;
            certificate = Some(cert);
        }
        let cert = certificate.as_ref().expect("at least one subject");
        let anchor = bench::measure_rustls(cert, &options, &bar).map_err(Failure::driver)?;
        rounds.push(bench::Round { drivers, anchor });
    }
    bar.finish_and_clear();
    if json {
        out!("{}", bench::report_json(&rounds, &options));
    } else {
        out_part!("{}", bench::report_text(&rounds, &options));
    }
    Ok(ExitCode::SUCCESS)
}
