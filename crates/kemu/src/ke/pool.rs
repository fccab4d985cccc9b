//! Pool: ExAllocatePool2 / ExFreePoolWithTag / ExFreePool with tags, per-tag accounting, guard
//! bytes (special-pool style overrun detection), poisoning, and the owner of each block.

use std::alloc::Layout;
use std::collections::BTreeMap;

// Keys are addresses: a fast non-cryptographic hash (no peer chooses them).
use rustc_hash::FxHashMap as HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

use ksys::ntdef::{
    POOL_FLAG_NON_PAGED, POOL_FLAG_NON_PAGED_EXECUTE, POOL_FLAG_PAGED, POOL_FLAG_RAISE_ON_FAILURE,
    POOL_FLAG_UNINITIALIZED,
};

use crate::bugcheck::{bugcheck, codes};
use crate::leaks::{Leak, LeakKind, Site, tag_text};
use crate::thread::{self, APC, DISPATCH};

const GUARD_BYTES: usize = 16;
const GUARD_PATTERN: u8 = 0xBD;
const UNINITIALIZED_PATTERN: u8 = 0xA5;
const FREED_PATTERN: u8 = 0xDF;
/// A machine word of freed pool (what a spin lock in freed memory reads as until reused).
pub(crate) const FREED_WORD: usize = usize::from_ne_bytes([FREED_PATTERN; 8]);
const ALIGNMENT: usize = 16;

/// Who must free a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// The driver (ExAllocatePool2, or framework memory charged to it).
    Driver,
    /// kemu itself (system buffers, IRPs of host I/O): never the driver's to free.
    Kernel,
}

struct Block {
    size: usize,
    tag: u32,
    paged: bool,
    owner: Owner,
    site: Site,
}

/// Per-tag usage, as `!poolused` would show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagUsage {
    /// Blocks currently allocated.
    pub live_blocks: u64,
    /// Bytes currently allocated.
    pub live_bytes: u64,
    /// Allocations since boot.
    pub allocations: u64,
    /// Frees since boot.
    pub frees: u64,
    /// Allocations that returned NULL (injected failures).
    pub failures: u64,
}

#[derive(Default)]
struct PoolState {
    blocks: HashMap<usize, Block>,
    usage: BTreeMap<u32, TagUsage>,
}

/// The pool of one kernel.
#[derive(Default)]
pub(crate) struct Pool {
    state: Mutex<PoolState>,
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size + GUARD_BYTES, ALIGNMENT).expect("pool block layout")
}

impl Pool {
    /// Allocates a block. `counted`: subject to fault injection. Returns NULL on (injected)
    /// failure. IRQL and flag rules are the caller's to check.
    pub fn allocate(
        &self,
        size: usize,
        tag: u32,
        zero: bool,
        paged: bool,
        owner: Owner,
        counted: bool,
    ) -> *mut u8 {
        let kernel = thread::kernel();
        if counted && kernel.faults.allocation_fails() {
            let mut state = self.state.lock().unwrap();
            state.usage.entry(tag).or_default().failures += 1;
            return std::ptr::null_mut();
        }
        // SAFETY: the layout has a non-zero size (guard bytes are always present).
        let p = unsafe { std::alloc::alloc(layout(size)) };
        if p.is_null() {
            return p;
        }
        // SAFETY: `p` is a fresh allocation of size + GUARD_BYTES bytes.
        unsafe {
            std::ptr::write_bytes(p, if zero { 0 } else { UNINITIALIZED_PATTERN }, size);
            std::ptr::write_bytes(p.add(size), GUARD_PATTERN, GUARD_BYTES);
        }
        let site = Site::here(kernel.next_sequence());
        let mut state = self.state.lock().unwrap();
        state.blocks.insert(
            p as usize,
            Block {
                size,
                tag,
                paged,
                owner,
                site,
            },
        );
        let usage = state.usage.entry(tag).or_default();
        usage.live_blocks += 1;
        usage.live_bytes += size as u64;
        usage.allocations += 1;
        p
    }

    /// Frees a block after checking it: unknown address, wrong tag, wrong owner, overrun and
    /// freeing at too high an IRQL are bugchecks.
    pub fn free(&self, p: *mut u8, tag: Option<u32>, by: Owner, routine: &str) {
        let address = p as usize;
        let checked = {
            let state = self.state.lock().unwrap();
            match state.blocks.get(&address) {
                None => Err((
                    0x07,
                    0,
                    format!(
                        "{routine}: {address:#x} is not an allocated pool block (double free?)"
                    ),
                )),
                Some(b) if tag.is_some_and(|t| t != b.tag) => Err((
                    0x0A,
                    b.tag as usize,
                    format!(
                        "{routine}: block {address:#x} has tag '{}' but is freed with tag '{}'",
                        tag_text(b.tag),
                        tag_text(tag.unwrap_or(0))
                    ),
                )),
                Some(b) if b.owner != by => Err((
                    0x07,
                    b.tag as usize,
                    format!("{routine}: block {address:#x} belongs to the kernel, not the driver"),
                )),
                Some(b) => Ok((b.size, b.tag, b.paged)),
            }
        };
        let (size, block_tag, paged) = match checked {
            Ok(v) => v,
            Err((sub, p2, message)) => {
                bugcheck(codes::BAD_POOL_CALLER, [sub, p2, 0, address], message)
            }
        };
        let max = if paged { APC } else { DISPATCH };
        if thread::irql() > max {
            bugcheck(
                codes::BAD_POOL_CALLER,
                [0x09, thread::irql() as usize, block_tag as usize, address],
                format!(
                    "{routine}: {} pool freed at IRQL {}",
                    if paged { "paged" } else { "non-paged" },
                    thread::irql()
                ),
            );
        }
        // SAFETY: the block is live with `size` + GUARD_BYTES bytes.
        let guard = unsafe { std::slice::from_raw_parts(p.add(size), GUARD_BYTES) };
        if guard.iter().any(|&b| b != GUARD_PATTERN) {
            bugcheck(
                codes::SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION,
                [address, size, block_tag as usize, 0],
                format!(
                    "{routine}: bytes written past the end of the {size}-byte block {address:#x} ('{}')",
                    tag_text(block_tag)
                ),
            );
        }
        let kernel = thread::kernel();
        kernel.check_free_range(address, size);
        kernel.timers.forget_in(address, size);
        {
            let mut state = self.state.lock().unwrap();
            state.blocks.remove(&address);
            let usage = state.usage.entry(block_tag).or_default();
            usage.live_blocks -= 1;
            usage.live_bytes -= size as u64;
            usage.frees += 1;
        }
        // SAFETY: the block was allocated with this layout and is no longer tracked.
        unsafe {
            std::ptr::write_bytes(p, FREED_PATTERN, size);
            std::alloc::dealloc(p, layout(size));
        }
    }

    /// Per-tag usage.
    pub fn usage(&self) -> BTreeMap<u32, TagUsage> {
        self.state.lock().unwrap().usage.clone()
    }

    /// Live blocks of `owner`, as leaks.
    pub fn leaks(&self, owner: Owner) -> Vec<Leak> {
        let state = self.state.lock().unwrap();
        state
            .blocks
            .iter()
            .filter(|(_, b)| b.owner == owner)
            .map(|(&address, b)| Leak {
                kind: LeakKind::Pool,
                address,
                tag: tag_text(b.tag),
                size: b.size,
                site: b.site.clone(),
            })
            .collect()
    }
}

/// ntoskrnl!ExAllocatePool2.
pub(crate) unsafe extern "win64" fn ex_allocate_pool2(
    flags: u64,
    size: usize,
    tag: u32,
) -> *mut c_void {
    let known = POOL_FLAG_NON_PAGED
        | POOL_FLAG_PAGED
        | POOL_FLAG_NON_PAGED_EXECUTE
        | POOL_FLAG_UNINITIALIZED
        | POOL_FLAG_RAISE_ON_FAILURE
        | 0x1
        | 0x8;
    let kinds = [
        POOL_FLAG_NON_PAGED,
        POOL_FLAG_PAGED,
        POOL_FLAG_NON_PAGED_EXECUTE,
    ]
    .iter()
    .filter(|&&k| flags & k != 0)
    .count();
    if flags & !known != 0 || kinds != 1 {
        bugcheck(
            codes::BAD_POOL_CALLER,
            [0x9C, flags as usize, size, tag as usize],
            format!("ExAllocatePool2: flags {flags:#x} must name exactly one pool type"),
        );
    }
    if tag == 0 {
        bugcheck(
            codes::BAD_POOL_CALLER,
            [0x9B, flags as usize, size, 0],
            "ExAllocatePool2: tag 0".into(),
        );
    }
    if size == 0 {
        bugcheck(
            codes::BAD_POOL_CALLER,
            [0x00, flags as usize, 0, tag as usize],
            "ExAllocatePool2: size 0".into(),
        );
    }
    let paged = flags & POOL_FLAG_PAGED != 0;
    let max = if paged { APC } else { DISPATCH };
    if thread::irql() > max {
        bugcheck(
            codes::BAD_POOL_CALLER,
            [0x08, thread::irql() as usize, flags as usize, tag as usize],
            format!(
                "ExAllocatePool2 ({}) at IRQL {}",
                if paged { "paged" } else { "non-paged" },
                thread::irql()
            ),
        );
    }
    let zero = flags & POOL_FLAG_UNINITIALIZED == 0;
    thread::kernel()
        .pool
        .allocate(size, tag, zero, paged, Owner::Driver, true) as *mut c_void
}

/// ntoskrnl!ExFreePoolWithTag.
pub(crate) unsafe extern "win64" fn ex_free_pool_with_tag(p: *mut c_void, tag: u32) {
    thread::kernel()
        .pool
        .free(p as *mut u8, Some(tag), Owner::Driver, "ExFreePoolWithTag");
}

/// ntoskrnl!ExFreePool.
pub(crate) unsafe extern "win64" fn ex_free_pool(p: *mut c_void) {
    thread::kernel()
        .pool
        .free(p as *mut u8, None, Owner::Driver, "ExFreePool");
}
