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

/// Linux's scheduling policy of thread `tid` of this process (field 41 of its stat line), or
/// None if it has ended meanwhile.
fn host_policy(tid: &str) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // The name may hold spaces and parentheses: the fields after it follow the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(38)?.parse().ok()
}

#[test]
fn kemus_own_threads_do_not_preempt_the_thread_that_wakes_them() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    let kernel = boot();
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
        let Some(policy) = host_policy(&tid) else {
            continue;
        };
        assert_eq!(policy, SCHED_BATCH, "{name} runs under policy {policy}");
        roles.push(name.splitn(3, '-').nth(2).unwrap_or_default().to_owned());
    }
    // (The WSK poller starts with the first WSK client; it is spawned the same way.)
    for role in ["dpc0", "dpc1", "lsa0", "worker0", "timer"] {
        assert!(
            roles.iter().any(|r| r.starts_with(role)),
            "no kemu thread for {role} among {roles:?}"
        );
    }
    // The host's own threads keep the default policy: the check tells them apart.
    let own = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let own_policy: u32 = own[own.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(38)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        own_policy, SCHED_OTHER,
        "the tests must start under the default policy (threads inherit theirs), or this one \
         cannot tell kemu's choice from the parent's"
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
