//! Pool: tags, zeroing, accounting, injected failures and the verifier's stops on misuse.

use super::*;

#[test]
fn pool_is_tagged_zeroed_and_accounted() {
    let kernel = boot();
    kernel
        .run("test", || {
            // SAFETY: well-formed pool calls at PASSIVE_LEVEL.
            unsafe {
                let p = ExAllocatePool2(POOL_FLAG_NON_PAGED, 100, TAG) as *mut u8;
                assert!(!p.is_null());
                assert!(
                    (0..100).all(|i| *p.add(i) == 0),
                    "ExAllocatePool2 zeroes by default"
                );
                assert_eq!(p as usize % 16, 0);
                let q = ExAllocatePool2(POOL_FLAG_NON_PAGED | POOL_FLAG_UNINITIALIZED, 8, TAG)
                    as *mut u8;
                ExFreePoolWithTag(p as *mut c_void, TAG);
                ExFreePool(q as *mut c_void);
            }
        })
        .unwrap();
    let usage = kernel.pool_usage()["Test"];
    assert_eq!(
        (
            usage.allocations,
            usage.frees,
            usage.live_blocks,
            usage.live_bytes
        ),
        (2, 2, 0, 0)
    );
    kernel.shutdown().unwrap();
}

#[test]
fn nth_allocation_fails_when_asked() {
    let kernel = boot_with(FaultPlan {
        fail_allocation: Some(2),
        ..FaultPlan::default()
    });
    let results = kernel
        .run("test", || {
            // SAFETY: well-formed pool calls; non-NULL blocks are freed.
            unsafe {
                let r: Vec<usize> = (0..3)
                    .map(|_| ExAllocatePool2(POOL_FLAG_NON_PAGED, 8, TAG) as usize)
                    .collect();
                for &p in &r {
                    if p != 0 {
                        ExFreePoolWithTag(p as *mut c_void, TAG);
                    }
                }
                r
            }
        })
        .unwrap();
    assert!(
        results[0] != 0 && results[1] == 0 && results[2] != 0,
        "{results:x?}"
    );
    assert_eq!(kernel.pool_usage()["Test"].failures, 1);
    kernel.shutdown().unwrap();
}

#[test]
fn double_free_is_a_bugcheck() {
    let kernel = boot();
    let r = kernel.run("test", || {
        // SAFETY: deliberately freeing twice; kemu stops before touching the memory again.
        unsafe {
            let p = ExAllocatePool2(POOL_FLAG_NON_PAGED, 8, TAG);
            ExFreePoolWithTag(p, TAG);
            ExFreePoolWithTag(p, TAG);
        }
    });
    let b = expect_bugcheck(r, codes::BAD_POOL_CALLER);
    assert_eq!(b.parameters[0], 0x07);
}

#[test]
fn freeing_with_the_wrong_tag_is_a_bugcheck() {
    let kernel = boot();
    let r = kernel.run("test", || {
        // SAFETY: a live block freed with a mismatched tag; kemu stops first.
        unsafe {
            ExFreePoolWithTag(
                ExAllocatePool2(POOL_FLAG_NON_PAGED, 8, TAG),
                u32::from_le_bytes(*b"Othr"),
            )
        }
    });
    assert_eq!(
        expect_bugcheck(r, codes::BAD_POOL_CALLER).parameters[0],
        0x0A
    );
}

#[test]
fn writing_past_a_block_is_caught_at_free() {
    let kernel = boot();
    let r = kernel.run("test", || {
        // SAFETY: the write lands in kemu's guard bytes right after the 8-byte block.
        unsafe {
            let p = ExAllocatePool2(POOL_FLAG_NON_PAGED, 8, TAG) as *mut u8;
            *p.add(8) = 1;
            ExFreePool(p as *mut c_void);
        }
    });
    expect_bugcheck(r, codes::SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION);
}

#[test]
fn paged_pool_at_dispatch_is_a_bugcheck() {
    let kernel = boot();
    let r = kernel.run("test", || {
        let mut lock: KSPIN_LOCK = 0;
        // SAFETY: a valid lock; the paged allocation at DISPATCH_LEVEL is the bug under test.
        unsafe {
            let _old = KeAcquireSpinLockRaiseToDpc(&mut lock);
            ExAllocatePool2(POOL_FLAG_PAGED, 8, TAG);
        }
    });
    assert_eq!(
        expect_bugcheck(r, codes::BAD_POOL_CALLER).parameters[0],
        0x08
    );
}

#[test]
fn leaked_pool_is_reported_at_shutdown_with_tag_and_site() {
    let kernel = boot();
    kernel
        .run("allocating test", || {
            // SAFETY: a plain allocation, deliberately never freed.
            unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, 40, TAG) }.is_null()
        })
        .unwrap();
    match kernel.shutdown() {
        Err(KernelError::Leaks(report)) => {
            assert_eq!(report.leaks.len(), 1, "{report}");
            let leak = &report.leaks[0];
            assert_eq!(
                (leak.kind, leak.tag.as_str(), leak.size),
                (kemu::LeakKind::Pool, "Test", 40)
            );
            assert_eq!(&*leak.site.activity, "allocating test");
        }
        other => panic!("expected a leak report, got {other:?}"),
    }
}
