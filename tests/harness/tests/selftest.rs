//! The `wsktls` command as a user runs it: the selftest passes under kemu (natively linked driver,
//! and the shipped image when one is built), and bad arguments are refused clearly.

#![cfg(not(windows))]

use std::path::PathBuf;
use std::process::Command;

fn wsktls() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wsktls"))
}

fn run(command: &mut Command) -> (i32, String) {
    let out = command.output().expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn selftest_passes_on_the_natively_linked_driver() {
    let (code, text) = run(wsktls().args(["--log", "info", "selftest"]));
    assert_eq!(code, 0, "{text}");
    for expected in [
        // The driver's per-handshake trace, shown by --log info.
        "[driver] wsktls: connection",
        "stream sizes header 5 trailer 17 max message 16384",
        "ok   TLS 1.3",
        "ok   TLS 1.2",
        "ALPN wsktls/01",
        "verifier clean",
        "PASS",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("FAIL"), "{text}");
}

#[test]
fn selftest_passes_on_the_shipped_image_when_built() {
    for profile in ["debug", "release"] {
        let image = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/x86_64-pc-windows-msvc")
            .join(profile)
            .join("wsktls.sys");
        if !image.exists() {
            // `cargo xtask test` builds both images first; a plain `cargo test` may not have.
            assert!(
                std::env::var_os("CI").is_none(),
                "{} not built in CI",
                image.display()
            );
            continue;
        }
        let (code, text) = run(wsktls().arg("selftest").arg("--driver").arg(&image));
        assert_eq!(code, 0, "{profile}: {text}");
        assert!(text.contains("PASS") && text.contains("image"), "{text}");
    }
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let (code, text) = run(wsktls().args(["selftest", "--thumbprint", "00"]));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--thumbprint"), "{text}");
    let (code, text) = run(wsktls().args(["selftest", "--driver", "/nonexistent/wsktls.sys"]));
    assert_eq!(
        code, 5,
        "a driver that cannot load is a driver error: {text}"
    );
    assert!(text.contains("cannot start the driver"), "{text}");
    let (code, _) = run(wsktls().arg("no-such-command"));
    assert_eq!(code, 2);
    let (code, text) = run(wsktls().args(["bench", "--seconds", "0"]));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--seconds"), "{text}");
    let (code, text) =
        run(wsktls().args(["serve", "--port", "0", "--http", "--alpn", "h2,http/1.1"]));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("h2"), "{text}");
    let (code, text) = run(wsktls().args(["--registry", "MaxConnections", "stats"]));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("NAME=VALUE"), "{text}");
    let (code, text) = run(wsktls().arg("stats").env("KEMU_SEED", "banana"));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("KEMU_SEED"), "{text}");
}

#[test]
fn bench_measures_the_driver_and_rustls_and_reports_json() {
    let out = wsktls()
        .args(["bench", "--seconds", "0.3", "--connections", "2", "--json"])
        .args(["--idle", "40", "--rounds", "2"])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).expect("JSON on stdout");
    let driver = &report["drivers"][0];
    assert!(
        driver["subject"]
            .as_str()
            .unwrap()
            .contains("natively linked")
    );
    for subject in [&driver["figures"], &report["rustls"]] {
        for figure in ["handshakes_per_second", "bulk_mb_per_second", "echo_p50_us"] {
            let value = subject[figure].as_f64().unwrap_or(0.0);
            assert!(value > 0.0, "{figure} = {value} in {text}");
        }
        assert!(subject["negotiated"].as_str().unwrap().contains("TLS 1.3"));
    }
    assert!(driver["ratio_to_rustls"]["handshakes"].as_f64().unwrap() > 0.0);
    // The idle connections came from the child process and were all held during the echo.
    let idle = &driver["echo_with_idle"];
    assert_eq!(idle["idle_connections"].as_u64(), Some(40), "{text}");
    assert!(idle["echo_p50_us"].as_f64().unwrap_or(0.0) > 0.0, "{text}");
    // Both subjects copied with glibc's vector loop, not its `rep movsb` (host_copy.rs).
    let copies = report["host_copies"].as_str().unwrap_or_default();
    assert!(
        copies.starts_with("glibc.cpu.x86_rep_movsb_threshold="),
        "{text}"
    );
    // Two rounds, each with its ratios, and their medians (of two: the mean).
    let rounds = report["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2, "{text}");
    let bulk = |r: &serde_json::Value| r[0]["ratio_to_rustls"]["bulk"].as_f64().unwrap();
    let (first, second) = (bulk(&rounds[0]), bulk(&rounds[1]));
    assert!(first > 0.0 && second > 0.0, "{text}");
    let median = report["medians"][0]["median_ratio_to_rustls"]["bulk"]
        .as_f64()
        .unwrap();
    assert!((median - (first + second) / 2.0).abs() < 1e-9, "{text}");
    assert_eq!(
        rounds[0][0]["ratio_to_rustls"]["handshakes"].as_f64(),
        driver["ratio_to_rustls"]["handshakes"].as_f64(),
        "the table is the first round's: {text}"
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = wsktls()
        .arg("selftest")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    // Read the first line, then close the pipe, as `| head -1` does.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("wsktls selftest"), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
