//! The idle connections of `bench --idle`: plain rustls clients in a child process (this same
//! program, run as `wsktls idle-peers`), as a server's clients would be other programs. The
//! driver holds only the server end of each, so this process keeps one socket per idle
//! connection and the child the other: 10,000 connections fit a 20,000-descriptor limit.
//!
//! The child reads the CA it trusts from [`CA_VARIABLE`], connects `count` times to
//! 127.0.0.1:`port` with [`CONNECTORS`] threads, completes each handshake, prints
//! `ready COUNT` on stdout, and keeps every connection open until its stdin ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use super::*;

/// The environment variable carrying the CA certificate (PEM) the child trusts.
const CA_VARIABLE: &str = "WSKTLS_IDLE_PEERS_CA";
/// Threads in the child making connections; the driver accepts IDLE_WINDOW at once.
const CONNECTORS: usize = 8;

/// The child's side: make the connections, say so, hold them until stdin ends.
pub fn run_idle_peers(port: u16, count: usize) -> Result<(), String> {
    let ca = std::env::var(CA_VARIABLE).map_err(|_| format!("{CA_VARIABLE} is not set"))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_bytes()) {
        roots
            .add(cert.map_err(|x| format!("CA PEM: {x}"))?)
            .map_err(|x| format!("CA: {x}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|x| x.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);
    let next = AtomicUsize::new(0);
    let held = Mutex::new(Vec::with_capacity(count));
    std::thread::scope(|scope| -> Result<(), String> {
        let workers: Vec<_> = (0..CONNECTORS)
            .map(|_| {
                scope.spawn(|| -> Result<(), String> {
                    loop {
                        let at = next.fetch_add(1, Ordering::Relaxed);
                        if at >= count {
                            return Ok(());
                        }
                        let stream = anchor::rustls_client(&config, port)
                            .map_err(|x| format!("idle connection {} of {count}: {x}", at + 1))?;
                        held.lock().expect("not poisoned").push(stream);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| "a connecting thread panicked".to_string())??;
        }
        Ok(())
    })?;
    let held = held.into_inner().expect("not poisoned");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready {}", held.len())
        .and_then(|()| stdout.flush())
        .map_err(|x| format!("stdout: {x}"))?;
    // Held until the parent is done (its end of our stdin closes).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(held);
    Ok(())
}

/// The parent's handle on the child: ends it when dropped.
pub(super) struct IdlePeers {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl IdlePeers {
    /// Starts the child connecting `count` times to `port`, trusting `ca_pem`.
    pub(super) fn spawn(port: u16, count: usize, ca_pem: &str) -> Result<IdlePeers, String> {
        let program = std::env::current_exe().map_err(|x| format!("this program's path: {x}"))?;
        let mut child = Command::new(program)
            .args(["idle-peers", "--port", &port.to_string()])
            .args(["--count", &count.to_string()])
            .env(CA_VARIABLE, ca_pem)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|x| format!("starting the idle peers: {x}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(IdlePeers {
            child,
            stdin,
            stdout,
        })
    }

    /// Err if the child has already ended (it failed: its stderr says why).
    pub(super) fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "the idle peers ended ({status}) before they were ready (stderr above)"
            )),
            Err(x) => Err(format!("idle peers: {x}")),
        }
    }

    /// Waits for the child's `ready COUNT`; Err with what it said or how it ended otherwise.
    pub(super) fn ready(&mut self) -> Result<usize, String> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|x| format!("idle peers: {x}"))?;
        match line.trim().strip_prefix("ready ").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(n),
            _ => {
                let status = self.child.wait().map_err(|x| x.to_string())?;
                Err(format!(
                    "the idle peers ended ({status}) before they were ready (stderr above)"
                ))
            }
        }
    }
}

impl Drop for IdlePeers {
    fn drop(&mut self) {
        // Closing its stdin tells the child to go; it closes every connection as it exits.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}
