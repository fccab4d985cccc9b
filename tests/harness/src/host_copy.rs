//! The bench's host copies: glibc (2.36 here) copies large blocks with `rep movsb`, which on the
//! AMD EPYC processors of this project's machines runs 20–30× slower (7 µs instead of 0.3 µs per
//! 16 KiB) when the destination sits 1–31 bytes past the source modulo 4 KiB — as it does when a
//! TLS record's payload, 5 bytes into the record, is copied to or from a page-aligned buffer.
//! Which copies hit it depends on where the allocator put the buffers, so it swung plain
//! rustls's bulk figure between 0.8 and 2.4 GB/s from run to run, and it costs kemu's Schannel
//! model copies Windows' own memcpy would not. `bench` therefore runs with glibc's
//! `rep movsb` threshold raised above any block it copies (its vector loop instead), for both
//! subjects alike.

/// The glibc tunable and the value `bench` gives it.
const TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold";
const THRESHOLD: u32 = 4 << 20;

/// Restarts this process (same arguments, same PID) with the tunable set, unless
/// `GLIBC_TUNABLES` already names it (the caller's choice stands). glibc reads tunables only at
/// start-up. If the restart fails the bench goes on as it is.
#[cfg(target_os = "linux")]
pub fn restart_with_vector_copies() {
    use std::os::unix::process::CommandExt;
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.contains(TUNABLE) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let setting = format!("{TUNABLE}={THRESHOLD}");
    let tunables = if current.is_empty() {
        setting
    } else {
        format!("{current}:{setting}")
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    // Returns only if the exec failed.
    let error = command.args(args).env("GLIBC_TUNABLES", tunables).exec();
    eprintln!("wsktls: bench goes on with glibc's default copies ({error})");
}

#[cfg(not(target_os = "linux"))]
pub fn restart_with_vector_copies() {}

/// How this process copies, for the report: the tunable's setting, or "glibc default".
#[cfg(target_os = "linux")]
pub fn describe() -> String {
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    current
        .split(':')
        .find(|s| s.starts_with(TUNABLE))
        .map_or_else(|| "glibc default".to_string(), str::to_string)
}

/// Elsewhere there is no glibc: the platform's own copies.
#[cfg(not(target_os = "linux"))]
pub fn describe() -> String {
    "the platform's own (no glibc)".to_string()
}
