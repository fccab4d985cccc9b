//! `wsktls`: how people use and check the driver. Under kemu (the default on Linux) it boots a
//! user-mode Windows kernel in this process and loads the driver into it; on Windows it talks to
//! the installed driver through `\\.\WskTls` — that backend is not written yet, so on Windows
//! the layers above the device compile but nothing reaches them.

#![cfg_attr(windows, allow(dead_code))]

mod args;
mod bench;
mod connect;
mod device;
mod driver;
#[cfg(not(windows))]
mod kemu_machine;
mod selftest;
mod serve;

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
    /// A TLS server in the driver; prints "listening on ADDR:PORT" first. Runs until interrupted
    /// (or --max-conns connections), then closes everything and prints the driver's stats.
    Serve {
        /// Port (0: any free port).
        #[arg(long)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        addr: std::net::IpAddr,
        /// Certificate chain PEM (leaf first) imported into kemu's machine store.
        #[arg(long, requires = "key", conflicts_with = "thumbprint")]
        cert: Option<PathBuf>,
        /// The certificate's private key, PEM.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// SHA-1 thumbprint (hex) of a certificate already in the machine store "MY".
        #[arg(long)]
        thumbprint: Option<String>,
        /// Store of --thumbprint (only "MY" is supported).
        #[arg(long, default_value = "MY")]
        store: String,
        /// ALPN ids to accept, comma-separated (e.g. h2,http/1.1).
        #[arg(long, default_value = "")]
        alpn: String,
        /// Echo every byte back.
        #[arg(long, conflicts_with = "http")]
        echo: bool,
        /// Answer each HTTP/1.1 request with a small text page.
        #[arg(long)]
        http: bool,
        /// Stop after this many connections.
        #[arg(long)]
        max_conns: Option<u64>,
        /// Load this wsktls.sys into kemu instead of the natively linked driver.
        #[arg(long)]
        driver: Option<PathBuf>,
    },
    /// A TLS client in the driver, like `openssl s_client`: stdin goes out, what arrives goes to
    /// stdout, end of stdin shuts down; the negotiated parameters go to stderr.
    Connect {
        /// HOST:PORT (a name is resolved by the driver).
        target: String,
        /// Server name for SNI and validation (default: the host).
        #[arg(long)]
        sni: Option<String>,
        /// ALPN ids to offer, comma-separated.
        #[arg(long, default_value = "")]
        alpn: String,
        /// Trust this CA (PEM) for the server's chain (imported into kemu's Root store).
        #[arg(long, conflicts_with_all = ["pin", "insecure"])]
        ca: Option<PathBuf>,
        /// Accept only the server certificate with this SHA-256 (hex).
        #[arg(long, conflicts_with = "insecure")]
        pin: Option<String>,
        /// Do not validate the server at all.
        #[arg(long)]
        insecure: bool,
        /// TLS 1.2 only.
        #[arg(long, conflicts_with = "tls13")]
        tls12: bool,
        /// TLS 1.3 only.
        #[arg(long)]
        tls13: bool,
        /// Load this wsktls.sys into kemu instead of the natively linked driver.
        #[arg(long)]
        driver: Option<PathBuf>,
    },
    /// Measure the driver against plain rustls over loopback in the same run: full handshakes/s
    /// with N parallel clients, bulk MB/s on one connection, p50/p99 of a 1-byte echo, and the
    /// pool one idle connection holds. With --driver, the image and the natively linked driver
    /// are both measured.
    Bench {
        /// Parallel clients in the handshake phase.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
        connections: u16,
        /// Seconds per timed phase.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Print the figures as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Also measure this wsktls.sys loaded into kemu, beside the natively linked driver.
        #[arg(long)]
        driver: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Selftest { driver, thumbprint } => return selftest(driver, thumbprint),
        Command::Serve {
            port,
            addr,
            cert,
            key,
            thumbprint,
            store,
            alpn,
            echo: _,
            http,
            max_conns,
            driver,
        } => args::alpn(&alpn).and_then(|alpn| {
            let mode = if http {
                serve::Mode::Http
            } else {
                serve::Mode::Echo
            };
            let certificate = match (cert, key, thumbprint) {
                (Some(c), Some(k), None) => args::Certificate::Pem(c, k),
                (None, None, Some(t)) if store.eq_ignore_ascii_case("MY") => {
                    args::Certificate::Thumbprint(args::thumbprint(&t)?)
                }
                (None, None, Some(_)) => {
                    return Err(format!("store {store:?}: only MY is supported"));
                }
                _ => return Err("give --cert and --key, or --thumbprint".into()),
            };
            platform::serve(
                driver,
                certificate,
                serve::ServeOptions {
                    endpoint: args::endpoint(addr, port),
                    thumbprint: [0; 20],
                    alpn,
                    mode,
                    max_conns,
                },
            )
        }),
        Command::Connect {
            target,
            sni,
            alpn,
            ca,
            pin,
            insecure,
            tls12,
            tls13,
            driver,
        } => args::connect_options(&target, sni, &alpn, pin.as_deref(), insecure, tls12, tls13)
            .and_then(|options| platform::connect(driver, ca, options)),
        Command::Bench {
            connections,
            seconds,
            json,
            driver,
        } => {
            if !(0.05..=3600.0).contains(&seconds) {
                Err(format!("--seconds {seconds}: give 0.05 to 3600"))
            } else {
                platform::bench(
                    driver,
                    bench::BenchOptions {
                        connections: connections.into(),
                        seconds,
                    },
                    json,
                )
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wsktls: {e}");
            ExitCode::from(2)
        }
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
        Ok(made) => made.thumbprint,
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

#[cfg(not(windows))]
mod platform {
    //! serve and connect on kemu.

    use std::path::PathBuf;
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::args::Certificate;
    use crate::bench::{self, BenchOptions};
    use crate::connect::ConnectOptions;
    use crate::device::Machine;
    use crate::driver::Driver;
    use crate::kemu_machine::KemuMachine;
    use crate::serve::ServeOptions;

    fn boot(driver: Option<PathBuf>) -> Result<KemuMachine, String> {
        KemuMachine::boot(driver.as_deref())
            .map_err(|e| format!("cannot start the driver under kemu: {e}"))
    }

    /// Prints the stats, closes the handle and reports the verifier's verdict.
    fn finish(machine: KemuMachine, driver: Arc<Driver>, ok: bool) -> Result<ExitCode, String> {
        if let Ok(s) = driver.stats() {
            eprintln!(
                "stats: {} handshakes ok, {} failed, {} B sent, {} B received",
                s.handshakes_ok, s.handshakes_failed, s.bytes_sent, s.bytes_received
            );
        }
        drop(Arc::try_unwrap(driver).map_err(|_| "a connection is still in use".to_string())?);
        let verdict = Box::new(machine).finish().map_err(|e| e.to_string())?;
        eprintln!("{verdict}");
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    pub fn serve(
        driver: Option<PathBuf>,
        certificate: Certificate,
        mut options: ServeOptions,
    ) -> Result<ExitCode, String> {
        let machine = boot(driver)?;
        options.thumbprint = match certificate {
            Certificate::Pem(chain, key) => machine
                .import_certificate(&chain, &key)
                .map_err(|e| format!("importing {}: {e}", chain.display()))?,
            Certificate::Thumbprint(t) => t,
        };
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = stop.clone();
            ctrlc::set_handler(move || stop.store(true, Ordering::Release))
                .map_err(|e| format!("installing the interrupt handler: {e}"))?;
        }
        let driver = Arc::new(Driver::new(machine.open().map_err(|e| e.to_string())?));
        let result = crate::serve::run(driver.clone(), &options, &stop);
        if let Err(e) = &result {
            eprintln!("wsktls serve: {e}");
        }
        finish(machine, driver, result.is_ok())
    }

    /// Measures the image (if given) and the native driver, each in its own kernel, then plain
    /// rustls; the kernels' verifiers must be clean for the figures to count.
    pub fn bench(
        image: Option<PathBuf>,
        options: BenchOptions,
        json: bool,
    ) -> Result<ExitCode, String> {
        let subjects: Vec<Option<PathBuf>> = match image {
            Some(path) => vec![Some(path), None],
            None => vec![None],
        };
        let bar = bench::progress(4 * subjects.len() as u64 + 3);
        let mut certificate = None;
        let mut drivers = Vec::new();
        for subject in subjects {
            let machine = boot(subject)?;
            let cert = match certificate.take() {
                None => machine
                    .make_server_certificate(&["localhost"])
                    .map_err(|e| format!("making the test certificate: {e}"))?,
                Some(cert) => {
                    machine.install(&cert).map_err(|e| e.to_string())?;
                    cert
                }
            };
            let measured = bench::measure_driver(&machine, &cert, &options, &bar);
            let verdict = Box::new(machine).finish();
            drivers.push(measured?);
            verdict.map_err(|e| e.to_string())?;
            certificate = Some(cert);
        }
        let cert = certificate.expect("at least one subject");
        let anchor = bench::measure_rustls(&cert, &options, &bar)?;
        bar.finish_and_clear();
        if json {
            println!("{}", bench::report_json(&drivers, &anchor, &options));
        } else {
            print!("{}", bench::report_text(&drivers, &anchor, &options));
        }
        Ok(ExitCode::SUCCESS)
    }

    pub fn connect(
        driver: Option<PathBuf>,
        ca: Option<PathBuf>,
        options: ConnectOptions,
    ) -> Result<ExitCode, String> {
        let machine = boot(driver)?;
        if let Some(ca) = ca {
            machine
                .trust(&ca)
                .map_err(|e| format!("trusting {}: {e}", ca.display()))?;
        }
        let driver = Arc::new(Driver::new(machine.open().map_err(|e| e.to_string())?));
        let result = crate::connect::run(driver.clone(), &options);
        if let Err(e) = &result {
            eprintln!("wsktls connect: {e}");
        }
        finish(machine, driver, result.is_ok())
    }
}

#[cfg(windows)]
mod platform {
    //! The Windows device backend is not written yet.

    use std::path::PathBuf;
    use std::process::ExitCode;

    use crate::args::Certificate;
    use crate::connect::ConnectOptions;
    use crate::serve::ServeOptions;

    const MISSING: &str = "the Windows device backend is not built yet";

    pub fn serve(_: Option<PathBuf>, _: Certificate, _: ServeOptions) -> Result<ExitCode, String> {
        Err(MISSING.into())
    }

    pub fn connect(
        _: Option<PathBuf>,
        _: Option<PathBuf>,
        _: ConnectOptions,
    ) -> Result<ExitCode, String> {
        Err(MISSING.into())
    }

    pub fn bench(
        _: Option<PathBuf>,
        _: crate::bench::BenchOptions,
        _: bool,
    ) -> Result<ExitCode, String> {
        Err(MISSING.into())
    }
}
