//! `wsktls`: how people use and check the driver. Under kemu (the default on Linux) it boots a
//! user-mode Windows kernel in this process and loads the driver into it; on Windows it talks to
//! the installed driver through `\\.\WskTls`. Everything above the device layer is shared.

#![deny(unsafe_code)]
#![cfg_attr(windows, allow(dead_code))]

/// `println!` for results on stdout, ending the process quietly if stdout is a pipe whose
/// reader has gone (`wsktls selftest | head -1`) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*), "\n")
    };
}

/// As [`out!`], without the line end.
macro_rules! out_part {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*), "")
    };
}

mod args;
mod bench;
mod connect;
mod host_copy;
mod host_threads;
#[cfg(not(windows))]
mod kemu_machine;
mod machine;
mod selftest;
mod serve;
mod server_pem;
#[cfg(windows)]
mod windows_machine;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use wsktls_client::device::DeviceError;
use wsktls_client::{device, errors};

/// The client's typed calls; the harness's devices live as long as the command.
mod driver {
    pub use wsktls_client::driver::*;
    /// A client over a device the command owns.
    pub type Driver = wsktls_client::driver::Driver<'static>;
}
use crate::errors::Failure;

#[derive(Parser)]
#[command(
    name = "wsktls",
    version,
    about = "Kernel TLS over Winsock Kernel: check and use the wsktls driver"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    globals: Globals,
}

/// Options every command takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Globals {
    /// kemu's fault-injection seed (where callbacks run, at which IRQL); default KEMU_SEED or a
    /// fixed seed. Ignored on Windows.
    #[arg(long, global = true)]
    seed: Option<u64>,
    /// Which of the driver's DbgPrint lines to show at the end (kemu; on Windows use DebugView
    /// or WinDbg).
    #[arg(long, global = true, value_enum, default_value_t = LogLevel::Off)]
    log: LogLevel,
    /// Under kemu: a REG_DWORD in the driver's Parameters key before it loads, as NAME=VALUE
    /// (e.g. MaxConnections=40000; repeatable). On Windows use `reg add` (docs/windows.md).
    #[arg(long = "registry", global = true, value_name = "NAME=VALUE", value_parser = parse_registry)]
    registry: Vec<(String, u32)>,
    /// Under kemu: where completions that Windows may deliver either inline (before the call
    /// returns) or later (a DPC, a worker, LSA) are delivered: a seeded mix of both (the
    /// verifier's default), always inline, or always later. Ignored on Windows.
    #[arg(long, global = true, value_enum, default_value_t = Callbacks::Random)]
    callbacks: Callbacks,
}

/// Where kemu delivers completions that may come inline or later (`--callbacks`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Callbacks {
    Random,
    Inline,
    Deferred,
}

/// `NAME=VALUE` with a decimal (or 0x-hex) 32-bit value.
fn parse_registry(text: &str) -> Result<(String, u32), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: give NAME=VALUE"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{name:?}: a registry value name of letters and digits"
        ));
    }
    let value = match value.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => value.parse(),
    }
    .map_err(|_| format!("{value:?}: a 32-bit number (decimal or 0x-hex)"))?;
    Ok((name.to_string(), value))
}

/// DbgPrintEx levels, most severe first.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    Error,
    Warning,
    Trace,
    Info,
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
        /// Require a client certificate that chains to this CA (PEM; trusted in kemu's Root
        /// store). On Windows trust the CA in LocalMachine\Root and give --require-client-cert.
        #[arg(long)]
        client_ca: Option<PathBuf>,
        /// Require a client certificate that chains to a trusted root.
        #[arg(long)]
        require_client_cert: bool,
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
        /// Keep reading after stdin ends (no shutdown then); the server ends the connection.
        #[arg(long = "ign-eof")]
        ign_eof: bool,
        /// A client certificate chain (PEM, leaf first) to present if the server asks; imported
        /// into kemu's machine store. On Windows use --cert-thumbprint.
        #[arg(long, requires = "key", conflicts_with = "cert_thumbprint")]
        cert: Option<PathBuf>,
        /// The client certificate's private key, PEM.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// SHA-1 thumbprint (hex) of a client certificate in LocalMachine\My.
        #[arg(long)]
        cert_thumbprint: Option<String>,
        /// Print the server's certificate chain: subject, issuer, validity, SHA-256 of each.
        #[arg(long)]
        show_certs: bool,
        /// Load this wsktls.sys into kemu instead of the natively linked driver.
        #[arg(long)]
        driver: Option<PathBuf>,
    },
    /// The driver's counters and limits (Windows; under kemu every command starts its own
    /// kernel, so `serve` prints them when it stops).
    Stats,
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
        /// Repeat the echo phase with this many idle connections open beside it: the driver
        /// accepts them from plain TLS clients in a child process (one socket each in this
        /// process under kemu and one in the child: mind `ulimit -n`).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
        idle: u32,
        /// Measure N times, the driver and rustls alternating, and report every round's ratios
        /// and their median: on a shared or virtual machine one run's ratios can swing by a
        /// third, the median of several much less. The table shows the first round; --idle
        /// runs in it only.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
        rounds: u16,
    },
    /// The idle clients of `bench --idle` (run by bench itself): connects COUNT times over TLS
    /// 1.3 to 127.0.0.1:PORT, trusting the CA in WSKTLS_IDLE_PEERS_CA, prints `ready COUNT`,
    /// and holds the connections until stdin ends.
    #[command(hide = true)]
    IdlePeers {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        count: usize,
    },
}

/// Writes to stdout; a reader that went away (broken pipe) ends the process quietly, leaving no
/// emulated certificate store behind.
fn write_stdout(args: std::fmt::Arguments<'_>, end: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(end.as_bytes()))
        .and_then(|()| stdout.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            #[cfg(not(windows))]
            kemu::remove_temporary_stores();
            std::process::exit(0);
        }
    }
}

/// kemu's pool, IRPs and every kernel object live on the host's heap, allocated and freed from
/// many threads at once (as Windows' pool is, with per-processor lookaside lists): mimalloc's
/// thread-local free lists suit that where glibc's arenas spent a tenth of the handshake CPU.
/// Plain rustls in `bench` runs on the same allocator.
#[cfg(not(windows))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Bench { .. }) {
        host_copy::restart_with_vector_copies();
    }
    install_interrupt_handler();
    match run(cli.command, &cli.globals) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("wsktls: {failure}");
            failure.kind.exit_code()
        }
    }
}

fn run(command: Command, globals: &Globals) -> Result<ExitCode, Failure> {
    // Under kemu a seed that is not a number would silently become the default one.
    #[cfg(not(windows))]
    if globals.seed.is_none() {
        kemu::KernelConfig::try_from_env().map_err(Failure::usage)?;
    }
    match command {
        Command::Selftest { driver, thumbprint } => platform::selftest(globals, driver, thumbprint),
        Command::Stats => platform::stats(),
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
            client_ca,
            require_client_cert,
            driver,
        } => {
            if http && alpn.split(',').any(|id| id.trim() == "h2") {
                return Err(Failure::usage(
                    "--alpn h2 with --http: the server speaks HTTP/1.x only; offer http/1.1",
                ));
            }
            let alpn = args::alpn(&alpn)?;
            let mode = if http {
                serve::Mode::Http
            } else {
                serve::Mode::Echo
            };
            let certificate = match (cert, key, thumbprint) {
                (Some(c), Some(k), None) => {
                    server_pem::check(&c, &k)?;
                    args::Certificate::Pem(c, k)
                }
                (None, None, Some(t)) if store.eq_ignore_ascii_case("MY") => {
                    args::Certificate::Thumbprint(args::thumbprint(&t)?)
                }
                (None, None, Some(_)) => {
                    return Err(Failure::usage(format!(
                        "store {store:?}: only MY (LocalMachine\\My) is supported"
                    )));
                }
                _ => return Err(Failure::usage("give --cert and --key, or --thumbprint")),
            };
            platform::serve(
                globals,
                driver,
                certificate,
                serve::ServeOptions {
                    endpoint: args::endpoint(addr, port),
                    thumbprint: [0; 20],
                    alpn,
                    mode,
                    max_conns,
                    require_client_certificate: require_client_cert || client_ca.is_some(),
                    client_ca,
                },
            )
        }
        Command::Connect {
            target,
            sni,
            alpn,
            ca,
            pin,
            insecure,
            tls12,
            tls13,
            ign_eof,
            cert,
            key,
            cert_thumbprint,
            show_certs,
            driver,
        } => {
            let mut options =
                args::connect_options(&target, sni, &alpn, pin.as_deref(), insecure, tls12, tls13)?;
            options.ignore_eof = ign_eof;
            options.show_certificates = show_certs;
            let client = match (cert, key, cert_thumbprint) {
                (Some(c), Some(k), None) => {
                    server_pem::check(&c, &k)?;
                    Some(args::Certificate::Pem(c, k))
                }
                (None, None, Some(t)) => Some(args::Certificate::Thumbprint(args::thumbprint(&t)?)),
                _ => None,
            };
            platform::connect(globals, driver, ca, client, options)
        }
        Command::Bench {
            connections,
            seconds,
            json,
            driver,
            idle,
            rounds,
        } => {
            if !(0.05..=3600.0).contains(&seconds) {
                return Err(Failure::usage(format!(
                    "--seconds {seconds}: give 0.05 to 3600"
                )));
            }
            let options = bench::BenchOptions {
                connections: connections.into(),
                seconds,
                idle: idle as usize,
                rounds: rounds.into(),
            };
            platform::bench(globals, driver, options, json)
        }
        Command::IdlePeers { port, count } => match bench::run_idle_peers(port, count) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(why) => Err(Failure::driver(format!("idle peers: {why}"))),
        },
    }
}

/// The driver's counters and limits, one per line.
fn stats_text(s: &proto::session::Stats) -> String {
    [
        ("connections open", s.connections_open),
        ("listeners open", s.listeners_open),
        ("handshakes ok", s.handshakes_ok),
        ("handshakes failed", s.handshakes_failed),
        ("bytes sent", s.bytes_sent),
        ("bytes received", s.bytes_received),
        ("pending requests", s.pending_operations),
        ("requests re-examined", s.requests_examined),
        ("pool bytes in use", s.pool_bytes),
        ("limit: connections", s.max_connections),
        ("limit: per handle", s.max_connections_per_handle),
        ("limit: queued bytes", s.max_queued_bytes),
        ("limit: handshake ms", s.handshake_timeout_ms),
    ]
    .iter()
    .map(|(name, value)| format!("{name:<22}{value}\n"))
    .collect()
}

/// Ctrl+C and SIGTERM, counted for `serve`, which stops on its own (gracefully, then abortively).
static INTERRUPTS: std::sync::OnceLock<Arc<serve::Interrupts>> = std::sync::OnceLock::new();
/// Whether the running command handles interrupts itself (`serve`).
static HANDLES_INTERRUPTS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Exit status after an interrupt the command did not handle (128 + SIGINT, as shells report).
const INTERRUPTED: i32 = 130;

/// Installs the process's interrupt handler (once, at start): a command that does not handle
/// interrupts ends at once — under kemu after removing the emulated certificate stores, so no
/// private key is left in a temporary folder.
fn install_interrupt_handler() {
    let interrupts = INTERRUPTS.get_or_init(Arc::default).clone();
    let installed = ctrlc::set_handler(move || {
        interrupts.interrupt();
        if !HANDLES_INTERRUPTS.load(std::sync::atomic::Ordering::Acquire) {
            #[cfg(not(windows))]
            kemu::remove_temporary_stores();
            std::process::exit(INTERRUPTED);
        }
    });
    if let Err(e) = installed {
        eprintln!("wsktls: no interrupt handler ({e}): Ctrl+C ends the process abruptly");
    }
}

/// The interrupt counter, for a command that stops on its own when interrupted (`serve`).
fn interrupt_flag() -> Result<Arc<serve::Interrupts>, Failure> {
    HANDLES_INTERRUPTS.store(true, std::sync::atomic::Ordering::Release);
    Ok(INTERRUPTS.get_or_init(Arc::default).clone())
}

/// How a command that ran against the driver ends: its own failure (if any) decides the exit
/// status, else the machine's verdict.
fn conclude(
    result: Result<(), Failure>,
    verdict: Result<String, DeviceError>,
) -> Result<ExitCode, Failure> {
    match verdict {
        Ok(v) => eprintln!("{v}"),
        Err(e) => {
            result?;
            return Err(Failure::driver(e.to_string()));
        }
    }
    result.map(|()| ExitCode::SUCCESS)
}

#[cfg(not(windows))]
#[path = "platform_kemu.rs"]
mod platform;

#[cfg(windows)]
#[path = "platform_windows.rs"]
mod platform;
