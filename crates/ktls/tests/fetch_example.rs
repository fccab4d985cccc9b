//! The `fetch` example driver, run the way its doc says (`fetch https://127.0.0.1:PORT/ --ca
//! CA.pem`), against openssl s_server: it must print the server's response and exit 0; without
//! the CA it must say the chain is untrusted and exit 1.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kemu::{TestCa, Validity};

/// The example's binary (`cargo test` builds examples beside the test binaries).
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join("fetch");
    assert!(
        path.exists(),
        "{} missing: build it with `cargo build -p ktls --example fetch`",
        path.display()
    );
    path
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// openssl s_server -www on a free port with a certificate for localhost and 127.0.0.1.
fn openssl_server(dir: &std::path::Path, ca: &TestCa) -> (Server, u16) {
    let issued = ca
        .issue(&["localhost", "127.0.0.1"], Validity::Current)
        .unwrap();
    std::fs::write(dir.join("chain.pem"), &issued.chain_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &issued.key_pem).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args(["s_server", "-www", "-quiet", "-accept"])
        .arg(port.to_string())
        .arg("-cert")
        .arg(dir.join("chain.pem"))
        .arg("-key")
        .arg(dir.join("key.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl (apt-get install openssl)");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

#[test]
fn fetch_prints_the_response_of_openssl_s_server() {
    let dir = std::env::temp_dir().join(format!("ktls-fetch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = TestCa::generate("ktls fetch CA").unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    let (_server, port) = openssl_server(&dir, &ca);
    let url = format!("https://127.0.0.1:{port}/");

    let trusted = Command::new(example())
        .arg(&url)
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .env("KEMU_QUIET", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&trusted.stdout);
    let stderr = String::from_utf8_lossy(&trusted.stderr);
    assert!(trusted.status.success(), "{stdout}\n{stderr}");
    // s_server -www answers with a status page that names the negotiated cipher.
    assert!(stdout.starts_with("HTTP/1.0 200 ok"), "{stdout}");
    assert!(stdout.contains("Cipher"), "{stdout}");
    assert!(stderr.contains("done ("), "{stderr}");

    let untrusted = Command::new(example())
        .arg(&url)
        .env("KEMU_QUIET", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(1), "{stderr}");
    // SEC_E_UNTRUSTED_ROOT.
    assert!(stderr.contains("failed: TLS failure"), "{stderr}");
    assert!(stderr.contains("0x80090325"), "{stderr}");
    assert!(untrusted.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
