//! What a user types and sees: failures in words with exit codes, help per command, bad
//! certificate files named, mutual TLS and the server's chain.

use super::*;

#[test]
fn failures_are_told_in_words_with_distinct_exit_codes() {
    // Nothing listens on a port just released: a connection error (3).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let (code, _, err) = connect(&[&target, "--insecure"], b"");
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("refused") && err.contains("STATUS_CONNECTION_REFUSED, 0xC0000236"),
        "{err}"
    );
    // An untrusted server: a TLS error (4).
    let dir = pki("untrusted");
    let server = serve(&dir, &["--echo"]);
    let target = format!("127.0.0.1:{}", server.port);
    let (code, _, err) = connect(&[&target, "--sni", "localhost"], b"x");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("SEC_E_UNTRUSTED_ROOT, 0x80090325"), "{err}");
    drop(server);
    // A usage error (2), and `stats` under kemu says where the stats are.
    let (code, _, err) = connect(&["no-port-here"], b"");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("expected HOST:PORT"), "{err}");
    let out = wsktls().arg("stats").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("serve"));
    // An unknown server certificate is named as such (not as a host name that was not found),
    // and the error comes last, after the driver's stats.
    let out = wsktls()
        .args(["serve", "--port", "0", "--echo", "--thumbprint"])
        .arg("01".repeat(20))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("no certificate with that thumbprint") && !err.contains("host name"),
        "{err}"
    );
}

/// `serve` refuses at start what would only fail every handshake later, naming the file: a key
/// that is not the certificate's, an encrypted key (with how to decrypt it), an Ed25519
/// certificate, and a key file that is not there.
#[test]
fn serve_refuses_a_bad_certificate_or_key_at_start_naming_the_file() {
    let dir = pki("bad_pem");
    let chain = dir.join("chain.pem");
    let key = dir.join("key.pem");
    // Another key of the same kind.
    let other = TestCa::generate("other")
        .unwrap()
        .issue(&["localhost"], Validity::Current)
        .unwrap();
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let encrypted = dir.join("encrypted-key.pem");
    let made = Command::new("openssl")
        .args(["pkey", "-aes256", "-passout", "pass:secret", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&encrypted)
        .status()
        .expect("openssl");
    assert!(made.success());
    let ed_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed_cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&ed_key)
        .unwrap();
    let (ed_chain, ed_key_path) = (dir.join("ed-chain.pem"), dir.join("ed-key.pem"));
    std::fs::write(&ed_chain, ed_cert.pem()).unwrap();
    std::fs::write(&ed_key_path, ed_key.serialize_pem()).unwrap();
    let missing = dir.join("missing.pem");
    for (chain, key, words, names) in [
        (
            &chain,
            &other_key,
            "does not belong to certificate",
            &other_key,
        ),
        (&chain, &encrypted, "is encrypted", &encrypted),
        (&ed_chain, &ed_key_path, "EdDSA", &ed_chain),
        (&chain, &missing, "key ", &missing),
    ] {
        let out = wsktls()
            .args(["serve", "--port", "0", "--echo", "--cert"])
            .arg(chain)
            .arg("--key")
            .arg(key)
            .output()
            .expect("wsktls serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(words), "{words}: {err}");
        assert!(
            err.contains(&names.display().to_string()),
            "names {}: {err}",
            names.display()
        );
    }
}

/// Each command's `--help` describes that command (`stats` showed the bench text once).
#[test]
fn each_command_has_its_own_help() {
    for (command, words) in [
        ("stats", "counters and limits"),
        ("bench", "against plain rustls"),
        ("serve", "--cert"),
        ("connect", "--pin"),
    ] {
        let out = wsktls().args([command, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{command}: {text}");
        assert!(text.contains(words), "{command} --help: {text}");
    }
    let stats = wsktls().args(["stats", "--help"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&stats.stdout).contains("rustls"));
}

#[test]
fn mutual_tls_from_the_command_line() {
    let dir = pki("mutual");
    // Client certificates come from a CA of their own, which the server is told to trust.
    let ca = TestCa::generate("client CA").unwrap();
    let client = ca.issue(&["wsktls client"], Validity::Current).unwrap();
    std::fs::write(dir.join("client-ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.join("client.pem"), &client.chain_pem).unwrap();
    std::fs::write(dir.join("client.key"), &client.key_pem).unwrap();
    let client_ca = dir.join("client-ca.pem").display().to_string();
    // One connection served: the refused one never counts (ACCEPT only hands out good ones).
    let server = serve_many(&dir, 1, &["--echo", "--client-ca", &client_ca]);
    let target = format!("localhost:{}", server.port);
    let ca = dir.join("ca.pem").display().to_string();
    // Without a certificate: refused.
    let (code, out, err) = connect(&[&target, "--ca", &ca], b"no certificate");
    assert_ne!(
        code, 0,
        "a client without a certificate got through: {out}{err}"
    );
    assert!(out.is_empty(), "{out}");
    // With a certificate the server trusts: the echo comes back.
    let (code, out, err) = connect(
        &[
            &target,
            "--ca",
            &ca,
            "--cert",
            &dir.join("client.pem").display().to_string(),
            "--key",
            &dir.join("client.key").display().to_string(),
        ],
        b"mutual hello",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "mutual hello");
    let (code, _, err) = finish(server.into_child());
    assert_eq!(code, 0, "serve: {err}");
}

#[test]
fn connect_shows_the_servers_chain() {
    let dir = pki("show-certs");
    let server = serve(&dir, &["--echo"]);
    let target = format!("localhost:{}", server.port);
    let ca = dir.join("ca.pem").display().to_string();
    let (code, out, err) = connect(&[&target, "--ca", &ca, "--show-certs"], b"x");
    assert_eq!((code, out.as_str()), (0, "x"), "{err}");
    // The leaf (its SHA-256 is the one the driver reports), then the CA that issued it.
    let digest = err
        .split("server certificate SHA-256 ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in {err}"));
    let leaf = err
        .split("certificate 0: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no chain in {err}"));
    assert!(leaf.starts_with("subject CN="), "{err}");
    assert!(leaf.contains("issuer CN=harness CA"), "{err}");
    assert!(leaf.contains("valid "), "{err}");
    assert!(leaf.contains(&format!("SHA-256 {digest}")), "{err}");
    assert!(
        err.contains("certificate 1: subject CN=harness CA"),
        "{err}"
    );
    drop(server);
}
