//! What the host process spent: the figures a benchmark divides by its units of work to compare
//! kemu's thread hand-offs and CPU with a plain user-mode program's in the same process.

use std::time::Duration;

/// What this whole process (every thread, including those already ended) has spent so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    /// Context switches: voluntary (a thread slept: a wait, a futex, a poll) plus involuntary
    /// (preempted) — the counts `perf stat -e context-switches` sums over a process's threads.
    pub context_switches: u64,
    /// CPU time, user and system: what `perf stat -e task-clock` sums. Unlike a throughput
    /// figure it does not depend on how the scheduler placed the threads on a busy machine.
    pub cpu: Duration,
}

/// Reads getrusage(RUSAGE_SELF); all zero if the call fails (it cannot for RUSAGE_SELF).
pub fn process_usage() -> ProcessUsage {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the buffer it is given, which is ours and sized
    // for it; RUSAGE_SELF is always a valid `who`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return ProcessUsage::default();
    }
    // SAFETY: getrusage succeeded, so it filled the struct (and it was zeroed before).
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    ProcessUsage {
        context_switches: (usage.ru_nvcsw.max(0) as u64) + (usage.ru_nivcsw.max(0) as u64),
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
    }
}
