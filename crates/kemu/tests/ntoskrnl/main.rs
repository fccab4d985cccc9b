//! kemu's ntoskrnl subset, called the way a driver calls it (through ksys's import wrappers on
//! kernel threads), including every verifier stop. Each test boots its own kernel; kernels in
//! one process are independent (their threads know which kernel they belong to).

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kemu::{Bugcheck, FaultPlan, Kernel, KernelConfig, KernelError, codes, verifier};
use ksys::imports::*;
use ksys::io::*;
use ksys::ktimer::{KDPC, KTIMER};
use ksys::ntdef::*;

mod events_and_timers;
mod irps_and_mdls;
mod irql;
mod pool;

const TAG: u32 = u32::from_le_bytes(*b"Test");

fn boot() -> Kernel {
    boot_with(FaultPlan::default())
}

fn boot_with(faults: FaultPlan) -> Kernel {
    kemu::exports::bind_native(IMPORT_DIRECTORY);
    Kernel::boot(KernelConfig {
        faults,
        ..KernelConfig::from_env()
    })
}

fn expect_bugcheck<R: std::fmt::Debug>(result: Result<R, KernelError>, code: u32) -> Bugcheck {
    match result {
        Err(KernelError::Bugcheck(b)) => {
            assert_eq!(b.code, code, "wrong bugcheck: {b}");
            b
        }
        other => panic!("expected bugcheck {code:#x}, got {other:?}"),
    }
}

/// A value a kernel thread may carry across (the test owns the memory behind it).
#[derive(Clone, Copy, Debug)]
struct Addr(usize);

#[test]
fn debug_print_formats_into_the_kernel_log() {
    let kernel = boot();
    kernel
        .run("print", || {
            let wide: Vec<u16> = "wide".encode_utf16().chain([0]).collect();
            let args: [usize; 6] = [
                (-5i32) as u32 as usize,
                0xBEEF,
                3,
                b"abcdef".as_ptr() as usize,
                wide.as_ptr() as usize,
                42,
            ];
            // SAFETY: the format's conversions match the argument slots.
            unsafe {
                vDbgPrintEx(
                    77,
                    3,
                    c"n=%d x=%04X s=%.*s w=%ws %5u|\n".as_ptr() as *const u8,
                    args.as_ptr(),
                )
            };
        })
        .unwrap();
    let log = kernel.debug_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].text, "n=-5 x=BEEF s=abc w=wide    42|");
    assert_eq!((log[0].component, log[0].level), (77, 3));
    kernel.shutdown().unwrap();
}

#[test]
fn the_debug_log_keeps_the_newest_lines_and_says_how_many_went() {
    let kernel = boot();
    let total = kemu::LOG_LINES + 10;
    kernel
        .run("print", move || {
            for i in 0..total {
                let args: [usize; 1] = [i];
                // SAFETY: one %u conversion, one argument slot.
                unsafe { vDbgPrintEx(77, 3, c"line %u\n".as_ptr() as *const u8, args.as_ptr()) };
            }
        })
        .unwrap();
    let log = kernel.debug_log();
    assert_eq!(
        log.len(),
        kemu::LOG_LINES + 1,
        "the kept lines and one note"
    );
    assert!(
        log[0].text.contains("10 earlier line(s) dropped"),
        "{:?}",
        log[0]
    );
    assert_eq!(log[1].text, "line 10", "the oldest kept line");
    assert_eq!(log[log.len() - 1].text, format!("line {}", total - 1));
    kernel.shutdown().unwrap();
}

/// Field `n` (1-based, as proc(5) numbers them) of the stat line of thread `tid` of this
/// process, or None if it has ended meanwhile.
fn host_stat_field(tid: &str, n: usize) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // The name may hold spaces and parentheses: the fields after it (from the third) follow the
    // last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(n - 3)?.parse().ok()
}

/// Scheduling policy (proc(5) field 41).
fn host_policy(tid: &str) -> Option<i64> {
    host_stat_field(tid, 41)
}

/// Nice value (proc(5) field 19).
fn host_nice(tid: &str) -> Option<i64> {
    host_stat_field(tid, 19)
}

/// Whether the host lets this process raise a thread's priority (CAP_SYS_NICE or RLIMIT_NICE):
/// tried on a thread of its own that ends at once.
fn host_grants_negative_nice() -> bool {
    std::thread::spawn(|| {
        // SAFETY: who = 0 is the calling thread, which ends right after; no memory is passed.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -1) == 0 }
    })
    .join()
    .unwrap()
}

#[test]
fn kemus_threads_do_not_preempt_their_wakers_and_kernel_ones_outrank_the_application() {
    const SCHED_OTHER: i64 = 0;
    const SCHED_BATCH: i64 = 3;
    let kernel = boot();
    let raised = host_grants_negative_nice();
    // This kernel's threads are named kemu-<its id>-<role>; other tests' kernels run beside it,
    // so look at every kemu thread of the process and require this one's roles among them.
    let mut roles = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let tid = task.unwrap().file_name().into_string().unwrap();
        let Ok(name) = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")) else {
            continue;
        };
        let name = name.trim_end().to_owned();
        if !name.starts_with("kemu-") {
            continue;
        }
        let (Some(policy), Some(nice)) = (host_policy(&tid), host_nice(&tid)) else {
            continue;
        };
        assert_eq!(policy, SCHED_BATCH, "{name} runs under policy {policy}");
        let role = name.splitn(3, '-').nth(2).unwrap_or_default().to_owned();
        // (Host thread names stop at 15 bytes: "kemu-18-wsk-pol".)
        // Kernel code (DPCs, the network stack's completions, timers, system workers) outranks
        // the application's threads; LSA and a user thread's call into the kernel do not.
        let kernel_rank = ["dpc", "wsk-p", "timer", "worker"]
            .iter()
            .any(|r| role.starts_with(r));
        match (kernel_rank, raised) {
            (true, true) => assert!(
                nice < 0,
                "{name} runs at nice {nice}, no higher than the application"
            ),
            _ => assert_eq!(nice, 0, "{name} runs at nice {nice}"),
        }
        roles.push(role);
    }
    // (The WSK poller starts with the first WSK client; it is spawned the same way.)
    for role in ["dpc0", "dpc1", "lsa0", "worker0", "timer"] {
        assert!(
            roles.iter().any(|r| r.starts_with(role)),
            "no kemu thread for {role} among {roles:?}"
        );
    }
    // The host's own threads keep the default policy and nice value: the checks tell them apart.
    // (Fields from the third on; the state, not a number, reads as -1.)
    let own = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let own: Vec<i64> = own[own.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(-1))
        .collect();
    assert_eq!(
        (own[38], own[16]),
        (SCHED_OTHER, 0),
        "the tests must start under the default policy and nice 0 (threads inherit theirs), or \
         this one cannot tell kemu's choice from the parent's"
    );
    kernel.shutdown().unwrap();
}

#[test]
fn time_moves_forward() {
    let kernel = boot();
    let (a, b) = kernel
        .run("time", || {
            // SAFETY: plain queries and a short delay at PASSIVE_LEVEL.
            unsafe {
                let a = KeQueryUnbiasedInterruptTime();
                let delay = -20_000i64;
                KeDelayExecutionThread(0, 0, &delay);
                (a, KeQueryUnbiasedInterruptTime())
            }
        })
        .unwrap();
    assert!(b >= a + 20_000, "{a} -> {b}");
    kernel.shutdown().unwrap();
}

#[test]
fn a_panic_on_a_kernel_thread_is_a_bugcheck() {
    let kernel = boot();
    let r = kernel.run("panicking", || {
        let v: Vec<u8> = Vec::new();
        v[3]
    });
    let b = expect_bugcheck(r, codes::KMODE_EXCEPTION_NOT_HANDLED);
    assert!(b.message.contains("index out of bounds"), "{b}");
    assert!(b.thread.contains("panicking"), "{b}");
}
