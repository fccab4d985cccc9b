//! `wsktls serve` and `wsktls connect` as separate processes — two machines, each its own kemu
//! kernel with its own copy of the driver, talking TLS over loopback; and curl against `serve`.

#![cfg(not(windows))]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kemu::{TestCa, Validity};

mod command_line;
mod endings;
mod peers;

fn wsktls() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wsktls"))
}

/// A CA and a localhost certificate as PEM files.
fn pki(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wsktls-harness-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = TestCa::generate("harness CA").unwrap();
    let issued = ca.issue(&["localhost"], Validity::Current).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.join("chain.pem"), &issued.chain_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &issued.key_pem).unwrap();
    dir
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, extra: &[&str]) -> Server {
    serve_many(dir, 1, extra)
}

/// `serve` that stops after `conns` connections.
fn serve_many(dir: &Path, conns: u32, extra: &[&str]) -> Server {
    let conns = conns.to_string();
    let mut args = vec!["--max-conns", &conns];
    args.extend_from_slice(extra);
    spawn_server(dir, &args)
}

/// `serve --port 0` with the test certificate and `args`, once it printed its address.
fn spawn_server(dir: &Path, args: &[&str]) -> Server {
    let mut child = wsktls()
        .args(["serve", "--port", "0", "--cert"])
        .arg(dir.join("chain.pem"))
        .arg("--key")
        .arg(dir.join("key.pem"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wsktls serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("serve printed {line:?}"));
    Server { child, port }
}

/// Waits for a process (at most 60 s): exit code, stdout, stderr.
fn finish(mut child: Child) -> (i32, String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out).unwrap();
    }
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        s.read_to_string(&mut err).unwrap();
    }
    (child.wait().unwrap().code().unwrap_or(-1), out, err)
}

/// `wsktls connect ARGS` with every stream piped.
fn spawn_connect(args: &[&str]) -> Child {
    wsktls()
        .arg("connect")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wsktls connect")
}

fn connect(args: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut child = spawn_connect(args);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    finish(child)
}

#[test]
fn serve_and_connect_in_two_processes() {
    let dir = pki("echo");
    let ca = dir.join("ca.pem").display().to_string();
    let server = serve(&dir, &["--echo"]);
    let target = format!("127.0.0.1:{}", server.port);
    let (code, out, err) = connect(
        &[&target, "--sni", "localhost", "--ca", &ca, "--tls13"],
        b"hello across kernels\n",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hello across kernels\n", "{err}");
    assert!(err.contains("connected: TLS 1.3"), "{err}");
    assert!(err.contains("verifier clean"), "{err}");
    let digest = err
        .split("SHA-256 ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the server certificate's digest")
        .to_string();
    // The server stops after one connection and reports a clean unload.
    let (code, _, err) = finish(server.into_child());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("verifier clean"), "{err}");

    // Pinning by the digest just seen, with a host name the driver resolves.
    let server = serve(&dir, &["--echo"]);
    let target = format!("localhost:{}", server.port);
    let (code, out, err) = connect(&[&target, "--pin", &digest, "--tls12"], b"pinned\n");
    assert_eq!((code, out.as_str()), (0, "pinned\n"), "{err}");
    assert!(err.contains("connected: TLS 1.2"), "{err}");
    drop(server);

    // A wrong pin fails with both statuses named.
    let server = serve(&dir, &["--echo"]);
    let target = format!("127.0.0.1:{}", server.port);
    let mut wrong = digest.into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let (code, _, err) = connect(&[&target, "--pin", &wrong], b"x");
    assert_eq!(code, 4, "a TLS failure exits with 4: {err}");
    assert!(
        err.contains("not the pinned one (STATUS_PIN_MISMATCH, 0xE0000001)"),
        "{err}"
    );
}

impl Server {
    fn into_child(mut self) -> Child {
        std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
    }
}
