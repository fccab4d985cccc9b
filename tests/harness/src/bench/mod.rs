//! `wsktls bench`: what the driver costs, measured against plain rustls over loopback TCP in the
//! same run (same certificate, key exchange and cipher suite), so the ratios mean something on a
//! noisy machine. Three figures: full handshakes per second with N parallel clients, bulk MB/s on
//! one connection, and the p50/p99 latency of a 1-byte echo. Plus the non-paged pool one idle
//! established connection holds (from STATS). This measures; it asserts nothing.

mod anchor;
mod driver;
mod peers;
mod report;

// The Windows harness does not bench (kemu only): nothing uses these there.
#[cfg_attr(windows, allow(unused_imports))]
pub use anchor::measure_rustls;
#[cfg_attr(windows, allow(unused_imports))]
pub use driver::measure_driver;
pub use peers::run_idle_peers;
#[cfg_attr(windows, allow(unused_imports))]
pub use report::{report_json, report_text};

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use proto::session::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use crate::driver::{CALL_TIMEOUT, CallError, Driver, cipher_name};
use crate::machine::{Machine, ServerCertificate};

/// How long and how wide to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Parallel clients in the handshake phase.
    pub connections: usize,
    /// Length of each timed phase.
    pub seconds: f64,
    /// Idle connections held open (each waiting in a RECV, as a server's would) during a second
    /// echo phase; 0 skips it.
    pub idle: usize,
    /// How many times to measure everything (see [`Round`]).
    pub rounds: usize,
}

/// One measurement of every subject and the rustls anchor, taken one after the other: the
/// ratios of a round compare figures taken minutes apart at most.
pub struct Round {
    pub drivers: Vec<DriverFigures>,
    pub anchor: Figures,
}

/// The three timed figures of one subject (the driver, or plain rustls).
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub handshakes_per_second: f64,
    pub bulk_mb_per_second: f64,
    pub echo_p50_us: f64,
    pub echo_p99_us: f64,
    /// What the handshakes negotiated ("TLS 1.3, TLS_AES_... , X25519").
    pub negotiated: String,
    /// What the whole process (every kemu and harness thread) spent per handshake pair in the
    /// handshake phase, and per 64 KiB in the bulk phase; None where not counted.
    pub per_handshake: Option<Spent>,
    pub per_64k: Option<Spent>,
}

/// Everything one run measured through one driver, with the rustls anchor.
pub struct DriverFigures {
    /// "natively linked driver" or "image PATH".
    pub subject: String,
    pub figures: Figures,
    /// Non-paged pool per idle established connection (one TLS session), bytes.
    pub pool_per_connection: f64,
    /// Echo p50/p99 (µs) with `BenchOptions::idle` idle connections open beside it.
    pub echo_with_idle: Option<(f64, f64)>,
}

const NAME: &str = "localhost";
const SERVER_NAME: &[u8] = b"localhost";
const CHUNK: usize = MAX_SEND;
/// What one read asks for in the bulk phase, through the driver and with plain rustls alike: a
/// typical socket read. (A RECV's output length is the METHOD_BUFFERED system buffer the I/O
/// manager allocates, fills and frees for every request, so asking for 1 MiB to get one 16 KiB
/// record would measure the allocator.)
const READ_SIZE: usize = 64 * 1024;
/// SENDs (and RECVs) kept in flight on the bulk connection.
const IN_FLIGHT: usize = 4;
/// The most latency samples kept per subject.
const MAX_SAMPLES: usize = 200_000;
/// Idle connections opened to measure pool per connection.
const IDLE_CONNECTIONS: usize = 32;
/// Handshakes in flight while the idle connections of `--idle` are made.
const IDLE_WINDOW: usize = 64;

fn e(what: &'static str) -> impl Fn(CallError) -> String {
    move |err| format!("{what}: {err}")
}

fn tls13() -> VersionRange {
    VersionRange {
        min: TlsVersion::Tls13,
        max: TlsVersion::Tls13,
    }
}

/// A progress bar over all phases (hidden when stderr is not a terminal).
pub fn progress(phases: u64) -> ProgressBar {
    let bar = ProgressBar::new(phases);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Context switches and CPU time per unit of work.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spent {
    /// Thread hand-offs, counted as `perf stat -e context-switches` counts them.
    pub switches: f64,
    /// User and system CPU of all threads, µs (`perf stat -e task-clock`): unlike a rate it
    /// does not depend on how a busy machine scheduled the threads.
    pub cpu_us: f64,
}

/// What this process spends from a starting point (all threads, ended ones included).
struct Meter(Option<Usage>);

#[derive(Clone, Copy)]
struct Usage {
    switches: u64,
    cpu: Duration,
}

impl Meter {
    fn start() -> Meter {
        Meter(process_usage())
    }

    /// What was spent since the start per `units` of work (None if not counted or no units).
    fn per(&self, units: f64) -> Option<Spent> {
        let (start, now) = (self.0?, process_usage()?);
        (units > 0.0).then(|| Spent {
            switches: now.switches.saturating_sub(start.switches) as f64 / units,
            cpu_us: now.cpu.saturating_sub(start.cpu).as_secs_f64() * 1e6 / units,
        })
    }
}

#[cfg(not(windows))]
fn process_usage() -> Option<Usage> {
    let u = kemu::process_usage();
    Some(Usage {
        switches: u.context_switches,
        cpu: u.cpu,
    })
}

/// The Windows harness does not bench; nothing counts there.
#[cfg(windows)]
fn process_usage() -> Option<Usage> {
    None
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at].as_secs_f64() * 1e6
}
