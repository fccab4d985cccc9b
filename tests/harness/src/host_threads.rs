//! The bench's host scheduling: whether kemu's kernel-code threads (DPCs, the WSK poller,
//! timers, system workers) were let outrank the harness's own, as Windows ranks them. Without
//! it the driver's figures are lower (docs/performance.md), so the report says which it got.

/// The rank kemu's kernel threads run at, for the report.
#[cfg(not(windows))]
pub fn describe() -> String {
    match kemu::thread_ranks() {
        kemu::ThreadRanks::Granted => {
            format!(
                "kemu's kernel threads at nice {} (granted)",
                kemu::KERNEL_NICE
            )
        }
        kemu::ThreadRanks::Refused => format!(
            "kemu's kernel threads refused nice {} (no CAP_SYS_NICE or RLIMIT_NICE): the driver's figures run low",
            kemu::KERNEL_NICE
        ),
        kemu::ThreadRanks::NotTried => "kemu's kernel threads at the host's default".to_string(),
    }
}

/// On Windows the driver runs in the real kernel: its own scheduler ranks the threads.
#[cfg(windows)]
pub fn describe() -> String {
    "Windows's own".to_string()
}
