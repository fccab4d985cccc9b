//! What the host process spent: the figures a benchmark divides by its units of work to compare
//! kemu's thread hand-offs with a plain user-mode program's in the same process.

/// Context switches of this whole process so far (every thread, including those already
/// ended): voluntary (a thread slept: a wait, a futex, a poll) plus involuntary (preempted).
/// Read with getrusage(RUSAGE_SELF), the same counts `perf stat -e context-switches` sums over
/// a process's threads.
pub fn process_context_switches() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the buffer it is given, which is ours and sized
    // for it; RUSAGE_SELF is always a valid `who`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: getrusage succeeded, so it filled the struct (and it was zeroed before).
    let usage = unsafe { usage.assume_init() };
    (usage.ru_nvcsw.max(0) as u64) + (usage.ru_nivcsw.max(0) as u64)
}
