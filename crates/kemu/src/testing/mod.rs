//! Test support: running a test body in its own process.
//!
//! A natively linked driver has process-wide statics, so every test that loads one (or that
//! expects a bugcheck, which parks threads for good) runs in a child process: the test binary
//! re-executes itself filtered to that one test, and the parent checks the child's outcome.

use std::process::Command;

pub mod sspi;
pub mod wsk;

const CHILD_ENV: &str = "KEMU_ISOLATED_TEST";

/// Runs `body` in a fresh process and returns how that process ended, whatever it was (for a
/// test whose body ends the process on purpose); None in the child itself.
pub fn isolated_outcome(name: &str, body: impl FnOnce()) -> Option<std::process::Output> {
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        body();
        return None;
    }
    let exe = std::env::current_exe().expect("test executable path");
    let output = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .env("KEMU_QUIET", "1")
        .output()
        .expect("spawning the isolated test process");
    Some(output)
}

/// Runs `body` in a fresh process. `name` must be the test's full path as libtest knows it
/// (e.g. `module::test_name`, or just `test_name` at the crate root).
pub fn isolated(name: &str, body: impl FnOnce()) {
    let Some(output) = isolated_outcome(name, body) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "isolated test {name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "isolated test {name} did not run exactly one test:\n{stdout}"
    );
}
